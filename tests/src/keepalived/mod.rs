//! Two network nodes running **real keepalived** with Neutron's configuration, behind a ToR
//! Linux bridge with an MLD querier, and (optionally) `hagw run` on each node.
//!
//! Topology (one [`Lab`], everything removed on drop):
//!
//! ```text
//!  remote (198.51.100.2) ── ext (203.0.113.1, upstream gateway, forwards) ── br-tor (ToR)
//!                                                                 │ MLD querier, MLDv2, 3 s
//!                             t1 ─ node1 (OVS br-int/br-ex, or a brq bridge) ─ qg (q1)
//!                             t2 ─ node2 (same)                               ─ qg (q2)
//!  br-ha (HA network, in the ToR namespace): h1 ─ ha-… (q1), h2 ─ ha-… (q2), 169.254.192.x/18
//! ```
//!
//! The L2 of each node comes from the other harnesses: [`OvsLab`] (own ovsdb-server and
//! ovs-vswitchd per node, hagw holds with the dead VLAN: `l2-hold`) or [`LbLab`] (a `brq`
//! bridge per node, the gateway a veth whose `tap` end the emulated Linuxbridge agent puts into
//! it; hagw holds with its nftables set, `l2-hold`, or — the `generic` wiring — knows nothing
//! about the L2 and keeps the standby's link down, `link-down`). A veth straight from `qg` into
//! the ToR would take the ToR port, and the capture on it, away with every re-plug, so even the
//! generic wiring has the node's own plain bridge in between; hagw is not told about it.
//!
//! Each router namespace has a distinct name (`q1-<lab>`, `q2-<lab>`), so each node's hagw gets
//! its own `routers.yaml` with `haDevice` + `primaryVip` (the role comes from keepalived's
//! primary VIP) rather than `--neutron` (whose namespace name is always `qrouter-<id>`). The
//! keepalived.conf is Neutron's layout, written to `<node>/ha_confs/<router_id>/keepalived.conf`,
//! except `advert_int 1` (Neutron: 2) to keep the tests short: master-down ≈ 3.8 s.
//! keepalived runs as Neutron runs it, plus `-n -l -G` (foreground, console log): see
//! `../shared/brief/testbed.md`.
//!
//! Observation, from [`KaLab::build`] until the report: tcpdump `-Q in` on both nodes' ToR ports
//! (what each node put on the wire), `ip monitor address` in both router namespaces (when the
//! primary VIP appears and leaves), and `bridge monitor fdb` on the ToR. A frame with the
//! gateway MAC from a node's port while that node does not hold the primary VIP is a leak,
//! except while no node holds it: right after the node lost it (demotion) or within the VIP
//! monitor's lag before it was seen getting it (promotion), both reported, not judged.

use std::fmt;
use std::path::PathBuf;
use std::process::Child;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};

use crate::gateway::{EXTERNAL_IP, GATEWAY_IP};
use crate::lab::{Lab, sh};
use crate::linuxbridge::LbLab;
use crate::ovs::OvsLab;

mod config;
mod first_round;
mod node;
mod observe;
mod power;
mod report;
mod setup;

pub use config::{keepalived_conf, neutron_keepalived_conf};
pub use first_round::{BURST_ROUNDS, FirstRound, ROUND2_DUE_MS};
pub use node::KaNode;
use node::kill_child;
pub use observe::Event;
use observe::Events;
pub use report::{Leak, Report, Takeover};

/// Neutron router id (the ha_confs directory name).
pub const ROUTER_ID: &str = "5d7f3a1c-2b4e-4c6d-8e9f-0a1b2c3d4e5f";
pub const VRID: u8 = 1;
/// keepalived's `virtual_ipaddress`: on the HA device of the primary only.
pub const PRIMARY_VIP: &str = "169.254.0.1/24";
/// A floating IP on the gateway port (`virtual_ipaddress_excluded`).
pub const FIP: &str = "203.0.113.50";
/// The gateway port's link-local address, which Neutron adds as a VIP too.
pub const GATEWAY_LLA: &str = "fe80::f816:3eff:fe00:1/64";
/// A host beyond the upstream gateway: reachable from the router only by its default route.
pub const REMOTE_IP: &str = "198.51.100.2";
/// The HA device in every router namespace (Neutron: `ha-` + port id, 14 characters).
pub const HA_DEV: &str = "ha-1a2b3c4d-5e";
/// keepalived's advertisement interval here (Neutron: 2 s).
pub const ADVERT_INT: u32 = 1;

/// How a node's gateway port reaches the ToR, and so which hagw backend/strategy protects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wiring {
    /// Real OVS per node (br-int, br-ex), hagw `ovs` backend, `l2-hold` (dead VLAN).
    Ovs,
    /// A Linuxbridge `brq` per node, hagw `linuxbridge` backend, `l2-hold` (nftables set).
    Linuxbridge,
    /// The same plain bridge per node, hagw `generic` backend (no L2 hold), `link-down`.
    Generic,
}

impl fmt::Display for Wiring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Wiring::Ovs => "ovs (l2-hold)",
            Wiring::Linuxbridge => "linuxbridge (l2-hold)",
            Wiring::Generic => "generic (link-down)",
        })
    }
}

impl Wiring {
    /// The strategy hagw uses on this wiring unless a test picks another.
    pub fn strategy(self) -> &'static str {
        match self {
            Wiring::Ovs | Wiring::Linuxbridge => "l2-hold",
            Wiring::Generic => "link-down",
        }
    }
}

impl FromStr for Wiring {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Wiring> {
        Ok(match s {
            "ovs" => Wiring::Ovs,
            "linuxbridge" => Wiring::Linuxbridge,
            "generic" => Wiring::Generic,
            _ => bail!("unknown wiring {s} (ovs, linuxbridge, generic)"),
        })
    }
}

enum Base {
    Ovs(OvsLab),
    Lb(LbLab),
}

pub(super) fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The two-node testbed.
pub struct KaLab {
    pub wiring: Wiring,
    /// Whether `hagw run` serves each node from the host; a node without it is served by
    /// someone else (the Helm-installed pod in tests/tests/pod.rs) or by nothing.
    pub host_hagw: [bool; 2],
    /// IPv6 forwarding on in the router namespaces, as pre-Zed L3 agents leave it (a standby
    /// then answers every MLD query): the worst case, on by default.
    pub legacy: bool,
    /// Routers without IPv6 addresses (no link-local VIP): nothing but ARP tells the ToR
    /// where a new primary is, so its first announcement round is what moves the FDB.
    pub ipv4_only: bool,
    /// hagw's strategy on both nodes: the wiring's own ([`Wiring::strategy`]) unless built
    /// with [`KaLab::build_ipv4_only_with`].
    pub strategy: &'static str,
    pub nodes: Vec<KaNode>,
    pub tor: String,
    pub external: String,
    pub remote: String,
    pub started: f64,
    events: Events,
    fdb_monitor: Option<Child>,
    // Declared last: dropped after the nodes' processes.
    base: Base,
}

impl KaLab {
    /// Builds the testbed, starts the observers and (if `with_hagw`) both agents, plugs both
    /// routers the way the agents do, starts keepalived on node1 and then on node2, and
    /// waits until node1 is primary.
    pub fn build(wiring: Wiring, with_hagw: bool) -> Result<KaLab> {
        let mut lab = KaLab::prepare(wiring, [with_hagw; 2])?;
        lab.boot()?;
        Ok(lab)
    }

    /// The testbed up to the moment the routers are plugged: nodes, observers and the host
    /// agents named in `host_hagw`, so that another agent can be started before [`KaLab::boot`].
    pub fn prepare(wiring: Wiring, host_hagw: [bool; 2]) -> Result<KaLab> {
        KaLab::prepare_routers(wiring, host_hagw, false, wiring.strategy())
    }

    /// [`KaLab::prepare`] on OVS with node 2's router laid out as Neutron names it, for
    /// Neutron discovery to find it: its namespace `qrouter-<id>` (the lab id), its files
    /// under `ha_confs/<id>`, and its gateway `qg-…` itself the OVS port (no `ovs_use_veth`
    /// name of its own; the veth's two ends share the name, in different namespaces).
    pub fn prepare_discoverable(host_hagw: [bool; 2]) -> Result<KaLab> {
        let mut base = OvsLab::build(2)?;
        let qrouter = base.lab.netns("qrouter")?;
        let node = &mut base.nodes[1];
        sh(&format!("ip netns del {}", node.qrouter))?;
        node.qrouter = qrouter;
        node.port = node.qg.clone();
        KaLab::with_base(Wiring::Ovs, Base::Ovs(base), host_hagw, false, Wiring::Ovs.strategy())
    }

    /// [`KaLab::build`] with IPv4-only routers.
    pub fn build_ipv4_only(wiring: Wiring) -> Result<KaLab> {
        KaLab::build_ipv4_only_with(wiring, wiring.strategy())
    }

    /// [`KaLab::build_ipv4_only`] with hagw's `strategy` instead of the wiring's own (on OVS:
    /// `l2-hold`, `link-down` or `silence-only`, all three on the same dead-VLAN backend).
    pub fn build_ipv4_only_with(wiring: Wiring, strategy: &'static str) -> Result<KaLab> {
        let mut lab = KaLab::prepare_routers(wiring, [true; 2], true, strategy)?;
        lab.boot()?;
        Ok(lab)
    }

    fn prepare_routers(
        wiring: Wiring,
        host_hagw: [bool; 2],
        ipv4_only: bool,
        strategy: &'static str,
    ) -> Result<KaLab> {
        let base = match wiring {
            Wiring::Ovs => Base::Ovs(OvsLab::build(2)?),
            Wiring::Linuxbridge => Base::Lb(LbLab::build(2, "l2-hold")?),
            Wiring::Generic => Base::Lb(LbLab::build(2, "link-down")?),
        };
        KaLab::with_base(wiring, base, host_hagw, ipv4_only, strategy)
    }

    fn with_base(
        wiring: Wiring,
        base: Base,
        host_hagw: [bool; 2],
        ipv4_only: bool,
        strategy: &'static str,
    ) -> Result<KaLab> {
        let (tor, external) = match &base {
            Base::Ovs(l) => (l.tor.clone(), l.external.clone()),
            Base::Lb(l) => (l.tor.clone(), l.external.clone()),
        };
        let mut lab = KaLab {
            wiring,
            host_hagw,
            legacy: true,
            ipv4_only,
            strategy,
            nodes: Vec::new(),
            tor,
            external,
            remote: String::new(),
            started: now(),
            events: Arc::default(),
            fdb_monitor: None,
            base,
        };
        lab.build_rest()?;
        Ok(lab)
    }

    /// The OVS run directory of node `i` (0-based): its OVSDB socket and bridge management
    /// sockets; `None` on the Linux bridge wirings.
    pub fn ovs_dir(&self, i: usize) -> Option<&std::path::Path> {
        match &self.base {
            Base::Ovs(l) => Some(&l.nodes[i].ovs.dir),
            Base::Lb(_) => None,
        }
    }

    pub fn lab(&self) -> &Lab {
        match &self.base {
            Base::Ovs(l) => &l.lab,
            Base::Lb(l) => &l.lab,
        }
    }

    fn lab_mut(&mut self) -> &mut Lab {
        match &mut self.base {
            Base::Ovs(l) => &mut l.lab,
            Base::Lb(l) => &mut l.lab,
        }
    }

    /// Index (0-based) of the node holding the primary VIP, if exactly one does.
    pub fn primary(&self) -> Option<usize> {
        let holders: Vec<usize> =
            (0..self.nodes.len()).filter(|&i| self.nodes[i].has_vip()).collect();
        (holders.len() == 1).then(|| holders[0])
    }

    /// Waits until node `i` (0-based) alone holds the primary VIP.
    pub fn wait_primary(&self, i: usize, within: Duration) -> Result<Duration> {
        let start = Instant::now();
        while self.primary() != Some(i) {
            if start.elapsed() > within {
                bail!("{} did not become the only primary within {within:?}", self.nodes[i].name());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(start.elapsed())
    }

    /// Adds the HA port and the gateway port of node `i` the way Neutron's agents do, with
    /// The standby reboots: keepalived dies with it, its HA and gateway ports disappear, and
    /// the agents re-create them (the L2 agent's wiring racing the L3 agent's link up and
    /// IPv6 flush), then keepalived starts again as BACKUP. hagw keeps running throughout.
    pub fn reboot_router(&mut self, i: usize, rng: &mut Rng) -> Result<()> {
        self.nodes[i].crash_keepalived();
        {
            let node = &self.nodes[i];
            let lab = self.lab();
            match &self.base {
                Base::Ovs(l) => l.nodes[i].unplug(lab)?,
                Base::Lb(l) => l.nodes[i].delete_veth(lab)?,
            }
            lab.exec(&node.qrouter, &format!("ip link del {HA_DEV} 2>/dev/null || true"))?;
        }
        std::thread::sleep(rng.below_ms(500));
        self.plug_router(i, rng)?;
        self.nodes[i].start_keepalived()
    }

    /// The standby (node 2) reboots racing the agents while node 1 is primary; a few MLD query
    /// intervals later keepalived crashes on node 1 (VIPs left behind) and node 2 takes over;
    /// traffic is checked before, between and after. Returns how long VRRP took.
    pub fn reboot_then_crash(&mut self, rng: &mut Rng) -> Result<Duration> {
        self.check_traffic(0)?;
        self.reboot_router(1, rng)?;
        // Three MLD queries: a standby that answers them would leak each time.
        std::thread::sleep(Duration::from_secs(7));
        self.check_traffic(0)?;
        self.nodes[0].crash_keepalived();
        let start = Instant::now();
        while !self.nodes[1].has_vip() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("node2 never took over");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = start.elapsed();
        self.check_traffic(1)?;
        Ok(took)
    }

    /// `ip link set ha-… down|up` on node `i`: keepalived goes to FAULT and drops its VIPs.
    pub fn ha_link(&self, i: usize, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.nodes[i].router(&format!("ip link set {HA_DEV} {state}"))?;
        Ok(())
    }

    fn ping_from(&self, ns: &str, target: &str, tries: u32) -> Result<u32> {
        for attempt in 1..=tries {
            if self.lab().exec(ns, &format!("ping -q -c 1 -W 1 {target} >/dev/null")).is_ok() {
                return Ok(attempt);
            }
        }
        bail!("{target} not reachable from {ns} in {tries} tries")
    }

    /// Traffic after a takeover: external host → gateway address and → floating IP, remote
    /// host → floating IP (the reply leaves by the router's default route), and the router →
    /// remote host (its default route). Also checks that the primary has its default route.
    pub fn check_traffic(&self, primary: usize) -> Result<()> {
        let node = &self.nodes[primary];
        // Right after the VIP appears the takeover pass may still be adding the route (it
        // runs on the same loaded cores as keepalived): wait for it as the pings below retry.
        let want = format!("via {EXTERNAL_IP}");
        let start = Instant::now();
        let mut route = node.default_route();
        while !route.contains(&want) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
            route = node.default_route();
        }
        if !route.contains(&want) {
            bail!("{} has no default route via {EXTERNAL_IP}: {route:?}", node.name());
        }
        self.ping_from(&self.external, GATEWAY_IP, 10)?;
        self.ping_from(&self.external, FIP, 5)?;
        self.ping_from(&self.remote, FIP, 5)?;
        self.ping_from(&node.qrouter, REMOTE_IP, 5)?;
        Ok(())
    }
}

impl Drop for KaLab {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill_hagw();
            node.stop_keepalived();
            node.kill_l3_agent();
            kill_child(&mut node.vip_monitor);
            node.capture.take();
        }
        kill_child(&mut self.fdb_monitor);
        // HAGW_KEEP_LOGS=DIR keeps every node's keepalived and hagw logs and captures.
        if let Ok(keep) = std::env::var("HAGW_KEEP_LOGS") {
            let dest = PathBuf::from(keep).join(&self.lab().id);
            let _ = sh(&format!(
                "mkdir -p {d} && cp -r {src}/node* {d}/",
                d = dest.display(),
                src = self.lab().dir.path().display()
            ));
            let events = self.events.lock().unwrap().clone();
            let text: String = events
                .iter()
                .map(|(t, e)| format!("{:.6} +{:.3} {e:?}\n", t, t - self.started))
                .collect();
            let _ = std::fs::write(dest.join("events.txt"), text);
        }
    }
}

/// xorshift64*: enough randomness for agent timing; the seed is printed for replays.
pub struct Rng(pub u64);

impl Rng {
    /// From `HAGW_SEED`, else the clock.
    pub fn seeded() -> Rng {
        let seed = std::env::var("HAGW_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| (now() * 1e6) as u64 | 1);
        Rng(seed)
    }

    pub fn below_ms(&mut self, max_ms: u64) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        Duration::from_millis(self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % max_ms.max(1))
    }
}
