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
//! gateway MAC from a node's port while that node does not hold the primary VIP is a leak.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::capture::Capture;
use crate::gateway::{EXTERNAL_IP, GATEWAY_CIDR, GATEWAY_IP, GATEWAY_MAC};
use crate::lab::{Lab, hagw_bin, sh};
use crate::linuxbridge::{self, LbLab};
use crate::ovs::OvsLab;

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

/// One network node: its router namespace, keepalived and hagw.
pub struct KaNode {
    /// 1 or 2.
    pub index: usize,
    /// The node's own namespace (OVS daemons, brq, hagw).
    pub ns: String,
    pub qrouter: String,
    pub qg: String,
    pub tor_port: String,
    /// `<node>/ha_confs`: Neutron's layout.
    pub ha_confs: PathBuf,
    /// hagw's routers.yaml for this node.
    pub config: PathBuf,
    keepalived: Option<Child>,
    hagw: Option<Child>,
    vip_monitor: Option<Child>,
    capture: Option<Capture>,
    pcap: PathBuf,
    dir: PathBuf,
}

impl KaNode {
    pub fn name(&self) -> String {
        format!("node{}", self.index)
    }

    fn conf_dir(&self) -> PathBuf {
        self.ha_confs.join(ROUTER_ID)
    }

    /// Whether keepalived's primary VIP is on this node's HA device right now.
    pub fn has_vip(&self) -> bool {
        sh(&format!("ip -n {} -o addr show dev {HA_DEV} 2>/dev/null", self.qrouter))
            .map(|out| out.contains(PRIMARY_VIP))
            .unwrap_or(false)
    }

    pub fn router(&self, cmd: &str) -> Result<String> {
        sh(&format!("ip netns exec {} bash -c '{}'", self.qrouter, cmd.replace('\'', r"'\''")))
    }

    /// Starts keepalived the way the L3 agent does (plus foreground and console log).
    pub fn start_keepalived(&mut self) -> Result<()> {
        self.stop_keepalived();
        let dir = self.conf_dir();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("keepalived.log"))?;
        let conf = dir.join("keepalived.conf");
        let pid = self.ha_confs.join(format!("{ROUTER_ID}.pid.keepalived"));
        let vrrp = self.ha_confs.join(format!("{ROUTER_ID}.pid.keepalived-vrrp"));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.qrouter, "keepalived", "-n", "-l", "-G", "-P", "-f"])
            .arg(&conf)
            .arg("-p")
            .arg(&pid)
            .arg("-r")
            .arg(&vrrp)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting keepalived")?;
        self.keepalived = Some(child);
        Ok(())
    }

    /// Stops keepalived as an operator or a package upgrade would (SIGTERM): it sends a
    /// priority-0 advertisement and removes its VIPs, so the peer takes over at once.
    pub fn stop_keepalived(&mut self) {
        if let Some(mut child) = self.keepalived.take() {
            let _ = sh(&format!("kill -TERM {}", child.id()));
            let _ = child.wait();
        }
    }

    /// keepalived crashes (SIGKILL to the VRRP child and the parent): the VIPs and addresses
    /// stay behind; the peer takes over after the master-down interval. (SIGKILL to the
    /// parent alone is a clean stop: the child gets SIGTERM from its parent-death signal.)
    pub fn crash_keepalived(&mut self) {
        let vrrp = self.ha_confs.join(format!("{ROUTER_ID}.pid.keepalived-vrrp"));
        if let Ok(pid) = std::fs::read_to_string(&vrrp) {
            let _ = sh(&format!("kill -KILL {} 2>/dev/null", pid.trim()));
        }
        if let Some(mut child) = self.keepalived.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The orphaned VRRP child may linger as a zombie (nobody in a container need reap
        // it), and keepalived refuses to start while its pid file names a live pid: remove the
        // pid files, as a reboot clears /run.
        let _ = std::fs::remove_file(&vrrp);
        let _ = std::fs::remove_file(self.ha_confs.join(format!("{ROUTER_ID}.pid.keepalived")));
    }

    /// Starts `hagw run -c <routers.yaml>` in the node namespace; its log goes to
    /// `<lab>/node<i>/hagw.log`.
    pub fn start_hagw(&mut self) -> Result<()> {
        self.kill_hagw();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("hagw.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(hagw_bin())
            .arg("run")
            .arg("-c")
            .arg(&self.config)
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting hagw")?;
        self.hagw = Some(child);
        Ok(())
    }

    pub fn kill_hagw(&mut self) {
        if let Some(mut child) = self.hagw.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn hagw_running(&self) -> bool {
        self.hagw.is_some()
    }

    /// The default route in the router namespace, if any.
    pub fn default_route(&self) -> String {
        self.router("ip route show default").unwrap_or_default().trim().to_owned()
    }
}

fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// What the monitors saw, each with the wall-clock time it was read.
#[derive(Debug, Clone)]
pub enum Event {
    VipUp(usize),
    VipDown(usize),
    /// The ToR learned the gateway MAC on this port (`None`: the entry was deleted).
    Fdb(Option<String>),
}

type Events = Arc<Mutex<Vec<(f64, Event)>>>;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The two-node testbed.
pub struct KaLab {
    pub wiring: Wiring,
    pub with_hagw: bool,
    /// IPv6 forwarding on in the router namespaces, as pre-Zed L3 agents leave it (a standby
    /// then answers every MLD query): the worst case, on by default.
    pub legacy: bool,
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
        let base = match wiring {
            Wiring::Ovs => Base::Ovs(OvsLab::build(2)?),
            Wiring::Linuxbridge => Base::Lb(LbLab::build(2, "l2-hold")?),
            Wiring::Generic => Base::Lb(LbLab::build(2, "link-down")?),
        };
        let (tor, external) = match &base {
            Base::Ovs(l) => (l.tor.clone(), l.external.clone()),
            Base::Lb(l) => (l.tor.clone(), l.external.clone()),
        };
        let mut lab = KaLab {
            wiring,
            with_hagw,
            legacy: true,
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

    fn build_rest(&mut self) -> Result<()> {
        let tor = self.tor.clone();
        let ext = self.external.clone();
        // The remote network beyond the upstream gateway.
        self.remote = self.lab_mut().netns("rm")?;
        let remote = self.remote.clone();
        let lab = self.lab();
        lab.veth((&ext, "eth1"), (&remote, "eth0"))?;
        lab.exec(
            &ext,
            "ip addr add 198.51.100.1/24 dev eth1 && ip link set eth1 up && \
             sysctl -qw net.ipv4.ip_forward=1",
        )?;
        lab.exec(
            &remote,
            &format!(
                "ip addr add {REMOTE_IP}/24 dev eth0 && ip link set eth0 up && \
                 ip route add default via 198.51.100.1"
            ),
        )?;
        // The HA network.
        lab.bridge(&tor, "br-ha")?;
        // The MLD querier: MLDv2, a query every 3 s; it needs a non-tentative link-local
        // address on the bridge, else it sends nothing.
        lab.exec(
            &tor,
            "ip link set br-tor type bridge mcast_snooping 1 mcast_querier 1 \
             mcast_mld_version 2 mcast_query_interval 300 mcast_query_response_interval 100 \
             mcast_startup_query_interval 100",
        )?;

        let router_nodes: Vec<(String, String, String, String)> = match &self.base {
            Base::Ovs(l) => l
                .nodes
                .iter()
                .map(|n| (n.ns.clone(), n.qrouter.clone(), n.qg.clone(), n.tor_port.clone()))
                .collect(),
            Base::Lb(l) => l
                .nodes
                .iter()
                .map(|n| {
                    (n.ns.clone(), n.qrouter.clone(), linuxbridge::QG.into(), n.tor_port.clone())
                })
                .collect(),
        };
        for (i, (ns, qrouter, qg, tor_port)) in router_nodes.into_iter().enumerate() {
            let index = i + 1;
            let dir = self.lab().dir.path().join(format!("node{index}"));
            let ha_confs = dir.join("ha_confs");
            std::fs::create_dir_all(ha_confs.join(ROUTER_ID))?;
            std::fs::write(ha_confs.join(ROUTER_ID).join("keepalived.conf"), keepalived_conf(&qg))?;
            let config = dir.join("routers.yaml");
            std::fs::write(&config, self.hagw_config(index, &qrouter, &qg, &ha_confs))?;
            let r = &qrouter;
            self.lab().exec(
                r,
                "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=0 \
                 net.ipv6.conf.default.forwarding=0",
            )?;
            if self.legacy {
                self.lab().exec(
                    r,
                    "sysctl -qw net.ipv6.conf.all.forwarding=1 net.ipv6.conf.default.forwarding=1",
                )?;
            }
            let pcap = dir.join("tor-port.pcap");
            self.nodes.push(KaNode {
                index,
                ns,
                qrouter,
                qg,
                tor_port,
                ha_confs,
                config,
                keepalived: None,
                hagw: None,
                vip_monitor: None,
                capture: None,
                pcap,
                dir,
            });
        }
        self.wait_querier()?;
        self.start_observers()?;
        if self.with_hagw {
            for node in &mut self.nodes {
                node.start_hagw()?;
            }
            // Let the agents start and watch the (still empty) router namespaces.
            std::thread::sleep(Duration::from_millis(300));
        }
        for i in 0..self.nodes.len() {
            self.plug_router(i, &mut Rng::seeded())?;
        }
        self.nodes[0].start_keepalived()?;
        std::thread::sleep(Duration::from_millis(500));
        self.nodes[1].start_keepalived()?;
        self.wait_primary(0, Duration::from_secs(10))?;
        Ok(())
    }

    fn hagw_config(
        &self,
        index: usize,
        qrouter: &str,
        qg: &str,
        ha_confs: &std::path::Path,
    ) -> String {
        let (ovsdb, backend, strategy) = match (&self.base, self.wiring) {
            (Base::Ovs(l), _) => {
                let node = &l.nodes[index - 1];
                (
                    format!("ovsdb: {}\n", node.ovs.endpoint()),
                    format!("{{ovs: {{port: {}}}}}", node.port),
                    "l2-hold",
                )
            }
            (Base::Lb(_), Wiring::Linuxbridge) => (
                String::new(),
                format!(
                    "{{linuxbridge: {{port: {}, bridge: {}}}}}",
                    linuxbridge::TAP,
                    linuxbridge::BRQ
                ),
                "l2-hold",
            ),
            (Base::Lb(_), _) => (String::new(), "generic".to_owned(), "link-down"),
        };
        format!(
            "{ovsdb}routers:\n\
             \x20 - id: {ROUTER_ID}\n\
             \x20   namespace: {qrouter}\n\
             \x20   gatewayDevice: {qg}\n\
             \x20   haDevice: {HA_DEV}\n\
             \x20   primaryVip: {PRIMARY_VIP}\n\
             \x20   gatewayAddresses: [{GATEWAY_CIDR}, {FIP}/32, \"{GATEWAY_LLA}\"]\n\
             \x20   routes:\n\
             \x20     - destination: 0.0.0.0/0\n\
             \x20       via: {EXTERNAL_IP}\n\
             \x20   backend: {backend}\n\
             \x20   strategy: {strategy}\n\
             \x20   role: {{stateFile: {state}}}\n",
            state = ha_confs.join(ROUTER_ID).join("state").display(),
        )
    }

    fn wait_querier(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = self.lab().exec(&self.tor, "ip -6 -o addr show dev br-tor scope link")?;
            if out.contains("fe80") && !out.contains("tentative") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("br-tor got no usable link-local address for its MLD querier: {out}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_observers(&mut self) -> Result<()> {
        self.started = now();
        for node in &mut self.nodes {
            node.capture = Some(Capture::start(&self.tor, &node.tor_port, node.pcap.clone())?);
            let mut child = Command::new("ip")
                .args(["-n", &node.qrouter, "monitor", "address"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting ip monitor")?;
            let out = child.stdout.take().context("ip monitor stdout")?;
            let events = self.events.clone();
            let index = node.index;
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let t = now();
                    if line.contains(PRIMARY_VIP) {
                        let event = if line.starts_with("Deleted") {
                            Event::VipDown(index)
                        } else {
                            Event::VipUp(index)
                        };
                        events.lock().unwrap().push((t, event));
                    }
                }
            });
            node.vip_monitor = Some(child);
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.tor, "stdbuf", "-oL", "bridge", "monitor", "fdb"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bridge monitor")?;
        let out = child.stdout.take().context("bridge monitor stdout")?;
        let events = self.events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let t = now();
                let deleted = line.starts_with("Deleted");
                let line = line.trim_start_matches("Deleted ");
                if !line.starts_with(GATEWAY_MAC) || !line.contains("master br-tor") {
                    continue;
                }
                let port = line.split_whitespace().skip_while(|w| *w != "dev").nth(1);
                let owner = if deleted { None } else { port.map(str::to_owned) };
                events.lock().unwrap().push((t, Event::Fdb(owner)));
            }
        });
        self.fdb_monitor = Some(child);
        // Give the monitors a moment to subscribe.
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
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
    /// the L2 agent's wiring racing the L3 agent's steps (random delays).
    fn plug_router(&self, i: usize, rng: &mut Rng) -> Result<()> {
        let node = &self.nodes[i];
        let lab = self.lab();
        let (q, qg) = (&node.qrouter, &node.qg);
        // HA port: on the HA network, its fixed IP, up (the L3 agent).
        let hp = format!("h{}", node.index);
        lab.veth((q, HA_DEV), (&self.tor, &hp))?;
        lab.attach(&self.tor, &hp, "br-ha")?;
        lab.exec(
            q,
            &format!(
                "ip addr add 169.254.192.{}/18 dev {HA_DEV} && ip link set {HA_DEV} up",
                node.index
            ),
        )?;
        // Gateway port: created down with the port's MAC (and, on OVS, in the dead VLAN).
        match &self.base {
            Base::Ovs(l) => l.nodes[i].plug(lab)?,
            Base::Lb(l) => {
                l.nodes[i].create_veth(lab, self.legacy)?;
            }
        }
        let l2_delay = rng.below_ms(400);
        let l3_delay = rng.below_ms(400);
        std::thread::scope(|s| -> Result<()> {
            let l2 = s.spawn(|| -> Result<()> {
                std::thread::sleep(l2_delay);
                self.l2_agent_wire(i)
            });
            std::thread::sleep(l3_delay);
            // The L3 agent: link up, IPv6 addresses flushed on a (not yet known) backup.
            lab.exec(q, &format!("ip link set {qg} up"))?;
            std::thread::sleep(Duration::from_millis(300));
            lab.exec(q, &format!("ip -6 addr flush dev {qg} 2>/dev/null || true"))?;
            l2.join().expect("l2 agent thread")?;
            Ok(())
        })
    }

    /// The L2 agent wires the gateway port: OVS sets the local VLAN, Linuxbridge puts the tap
    /// into brq and up. Waits for the port to exist, as the agents' polling does.
    fn l2_agent_wire(&self, i: usize) -> Result<()> {
        let lab = self.lab();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let exists = match &self.base {
                Base::Ovs(l) => l.nodes[i].port_vlan().is_ok(),
                Base::Lb(l) => {
                    l.nodes[i].node(lab, &format!("ip link show {}", linuxbridge::TAP)).is_ok()
                }
            };
            if exists {
                break;
            }
            if Instant::now() > deadline {
                bail!("gateway port of node{} never appeared", i + 1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match &self.base {
            Base::Ovs(l) => l.nodes[i].agent_wire(),
            Base::Lb(l) => l.nodes[i].plug(lab),
        }
    }

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
        let route = node.default_route();
        if !route.contains(&format!("via {EXTERNAL_IP}")) {
            bail!("{} has no default route via {EXTERNAL_IP}: {route:?}", node.name());
        }
        self.ping_from(&self.external, GATEWAY_IP, 10)?;
        self.ping_from(&self.external, FIP, 5)?;
        self.ping_from(&self.remote, FIP, 5)?;
        self.ping_from(&node.qrouter, REMOTE_IP, 5)?;
        Ok(())
    }

    /// Frames with the gateway MAC received at node `i`'s ToR port so far, with their
    /// capture timestamps (tcpdump `-tt`).
    fn frames(&self, i: usize) -> Vec<(f64, String)> {
        let cmd = format!(
            "tcpdump -tt -e -nn -r {} 'ether src {GATEWAY_MAC}' 2>/dev/null || true",
            self.nodes[i].pcap.display()
        );
        sh(&cmd)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (t, rest) = l.split_once(' ')?;
                Some((t.parse().ok()?, rest.to_owned()))
            })
            .collect()
    }

    /// The intervals during which node `index` (1-based) held the primary VIP.
    fn primary_intervals(&self, events: &[(f64, Event)], index: usize) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        let mut up: Option<f64> = None;
        for (t, e) in events {
            match e {
                Event::VipUp(n) if *n == index && up.is_none() => up = Some(*t),
                Event::VipDown(n) if *n == index => {
                    if let Some(u) = up.take() {
                        out.push((u, *t));
                    }
                }
                _ => {}
            }
        }
        if let Some(u) = up {
            out.push((u, f64::INFINITY));
        }
        out
    }

    /// Everything observed so far.
    pub fn report(&self) -> Report {
        // Let tcpdump's buffered writes and the monitors catch up.
        std::thread::sleep(Duration::from_millis(300));
        let events = self.events.lock().unwrap().clone();
        let mut leaks = Vec::new();
        let mut demotion = Vec::new();
        let mut takeovers = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let frames = self.frames(i);
            let intervals = self.primary_intervals(&events, node.index);
            for (t, line) in &frames {
                if intervals.iter().any(|(a, b)| t >= a && t <= b) {
                    continue;
                }
                let leak = Leak { node: node.index, at: t - self.started, frame: line.clone() };
                let other_primary = self.nodes.iter().any(|o| {
                    o.index != node.index
                        && self
                            .primary_intervals(&events, o.index)
                            .iter()
                            .any(|(a, b)| t >= a && t <= b)
                });
                if !other_primary && in_demotion(&events, node.index, *t) {
                    demotion.push(leak);
                } else {
                    leaks.push(leak);
                }
            }
            for (a, _) in &intervals {
                let garp = frames.iter().find(|(t, l)| t >= a && is_garp(l)).map(|(t, _)| *t);
                let first = frames.iter().find(|(t, _)| t >= a).map(|(t, _)| *t);
                takeovers.push(Takeover {
                    node: node.index,
                    vip_at: a - self.started,
                    garp_after: garp.map(|g| Duration::from_secs_f64(g - a)),
                    frame_after: first.map(|g| Duration::from_secs_f64(g - a)),
                });
            }
        }
        takeovers.sort_by(|a, b| a.vip_at.total_cmp(&b.vip_at));
        let port_names: Vec<(String, String)> =
            self.nodes.iter().map(|n| (n.tor_port.clone(), n.name())).collect();
        let fdb = events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::Fdb(owner) => Some((
                    t - self.started,
                    owner.as_ref().map(|p| {
                        port_names
                            .iter()
                            .find(|(port, _)| port == p)
                            .map(|(_, n)| n.clone())
                            .unwrap_or_else(|| p.clone())
                    }),
                )),
                _ => None,
            })
            .collect();
        Report { leaks, demotion, takeovers, fdb }
    }
}

impl Drop for KaLab {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill_hagw();
            node.stop_keepalived();
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

/// Whether `t` falls after node `index` lost the primary VIP and before any other node got it:
/// the ToR still points at that node and nobody else serves, so its frames move nothing.
fn in_demotion(events: &[(f64, Event)], index: usize, t: f64) -> bool {
    let Some(down) = events
        .iter()
        .filter(|(at, e)| *at <= t && matches!(e, Event::VipDown(n) if *n == index))
        .map(|(at, _)| *at)
        .next_back()
    else {
        return false;
    };
    !events.iter().any(|(at, e)| *at > down && *at <= t && matches!(e, Event::VipUp(_)))
}

fn is_garp(line: &str) -> bool {
    [GATEWAY_IP, FIP].iter().any(|ip| {
        // keepalived's: `who-has IP (ff:ff:ff:ff:ff:ff) tell IP`; hagw's: `who-has IP tell IP`.
        (line.contains(&format!("who-has {ip} ")) && line.contains(&format!("tell {ip},")))
            || line.contains(&format!("Reply {ip} is-at"))
    })
}

/// Neutron's keepalived.conf for the router on one node (`advert_int` shortened).
pub fn keepalived_conf(qg: &str) -> String {
    format!(
        "global_defs {{\n    notification_email_from neutron@openstack.local\n    router_id neutron\n}}\n\
         vrrp_instance VR_{VRID} {{\n    state BACKUP\n    interface {HA_DEV}\n    virtual_router_id {VRID}\n    \
         priority 50\n    garp_master_delay 60\n    nopreempt\n    advert_int {ADVERT_INT}\n    \
         track_interface {{\n        {HA_DEV}\n    }}\n    virtual_ipaddress {{\n        {PRIMARY_VIP} dev {HA_DEV}\n    }}\n    \
         virtual_ipaddress_excluded {{\n        {GATEWAY_CIDR} dev {qg} no_track\n        {FIP}/32 dev {qg} no_track\n        \
         {GATEWAY_LLA} dev {qg} scope link no_track\n    }}\n    \
         virtual_routes {{\n        0.0.0.0/0 via {EXTERNAL_IP} dev {qg} no_track protocol static\n    }}\n}}\n"
    )
}

/// A frame with the gateway MAC from a node while it did not hold the primary VIP.
#[derive(Debug, Clone)]
pub struct Leak {
    pub node: usize,
    /// Seconds since the observers started.
    pub at: f64,
    pub frame: String,
}

/// A node's primary VIP appearing, and the first gratuitous ARP for the gateway or floating
/// IP from that node seen at the ToR after it.
#[derive(Debug, Clone)]
pub struct Takeover {
    pub node: usize,
    pub vip_at: f64,
    pub garp_after: Option<Duration>,
    /// The first frame of any kind from that node at the ToR (what moves the FDB).
    pub frame_after: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Report {
    /// Frames from a node without the primary VIP while another node held it or before it
    /// ever held it: each one can move the ToR's FDB entry away from the primary.
    pub leaks: Vec<Leak>,
    /// Frames from a node that just lost the VIP, before any other node took it over (the
    /// kernel's MLD report when keepalived removes the link-local VIP): the ToR already
    /// points at that node, so they move nothing. Reported, not judged.
    pub demotion: Vec<Leak>,
    pub takeovers: Vec<Takeover>,
    /// The ToR's FDB entry for the gateway MAC over time: (seconds, owner node or port).
    pub fdb: Vec<(f64, Option<String>)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "frames with the gateway MAC {GATEWAY_MAC} from a node without the primary VIP: {}",
            self.leaks.len()
        )?;
        for l in self.leaks.iter().take(12) {
            writeln!(f, "  +{:7.3}s node{}: {}", l.at, l.node, l.frame)?;
        }
        if self.leaks.len() > 12 {
            writeln!(f, "  … {} more", self.leaks.len() - 12)?;
        }
        if !self.demotion.is_empty() {
            writeln!(
                f,
                "(plus {} frame(s) from a primary right after it lost the VIP, before any other node \
                 took over: harmless, the ToR pointed at it anyway)",
                self.demotion.len()
            )?;
        }
        writeln!(f, "takeovers (primary VIP appears -> first gARP seen at the ToR):")?;
        for t in &self.takeovers {
            let ms = |d: Option<Duration>| match d {
                Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
                None => "none seen".to_owned(),
            };
            writeln!(
                f,
                "  +{:7.3}s node{}: first gARP {} (first frame of any kind {})",
                t.vip_at,
                t.node,
                ms(t.garp_after),
                ms(t.frame_after)
            )?;
        }
        writeln!(f, "ToR FDB owner of {GATEWAY_MAC} over time:")?;
        let mut last: Option<&Option<String>> = None;
        for (t, owner) in &self.fdb {
            if last == Some(owner) {
                continue;
            }
            last = Some(owner);
            writeln!(f, "  +{t:7.3}s {}", owner.as_deref().unwrap_or("(none)"))?;
        }
        Ok(())
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
