//! How the fleet's gateway ports reach the ToR, per backend (`--backend`), as on a Neutron
//! network node with that many HA routers:
//!
//! - `generic`: each `qg-` is a veth whose peer sits in the ToR namespace (no switch).
//! - `linuxbridge`: one node namespace (where hagw runs, as the Linuxbridge agent's host) with
//!   the external network's `brq` bridge and an uplink to the ToR; every router's `qg-` is a
//!   veth whose `tap` end is a port of that bridge. Each router's `qr-` and `ha-` are veths
//!   too, their taps on a tenant and the HA network's bridge.
//! - `ovs`: the node namespace runs ovsdb-server and ovs-vswitchd (userspace datapath) with
//!   `br-int` and `br-ex` patched together as the OVS agent wires them, Neutron's flows, and an
//!   uplink from br-ex to the ToR. Every router's `qg-`, `qr-` and `ha-` are veths whose OVS
//!   ends are br-int ports in their local VLANs (`ovs_use_veth`): 3 ports per router.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::ctx::Ctx;
use crate::lab::sh;
use crate::ovs::{LOCAL_VLAN, Ovs, install_neutron_flows};

/// The backend the fleet runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
    Generic,
    LinuxBridge,
    Ovs,
}

impl Backend {
    pub(super) fn parse(value: &str) -> Result<Backend> {
        Ok(match value {
            "generic" => Backend::Generic,
            "linuxbridge" => Backend::LinuxBridge,
            "ovs" => Backend::Ovs,
            _ => bail!("--backend generic|linuxbridge|ovs, not {value}"),
        })
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Backend::Generic => "generic",
            Backend::LinuxBridge => "linuxbridge",
            Backend::Ovs => "ovs",
        }
    }

    /// The strategy a node with this backend runs when `--strategy` is not given.
    pub(super) fn default_strategy(self) -> &'static str {
        self.strategies()[0]
    }

    /// The strategies the product supports on this backend (docs/backends.md: `l2-hold` is a
    /// switch-side hold, which the generic backend has no switch for), default first.
    pub(super) fn strategies(self) -> &'static [&'static str] {
        match self {
            Backend::Generic => &["link-down", "silence-only"],
            Backend::LinuxBridge | Backend::Ovs => &["l2-hold", "link-down", "silence-only"],
        }
    }
}

/// The external network's bridge on a Linux bridge node.
const BRQ: &str = "brqext";
/// The HA network's local VLAN on br-int (tenant networks take 100 and up).
const HA_VLAN: usize = 99;

/// What the routers are wired to, kept for as long as they run.
pub(super) struct Wiring {
    pub(super) backend: Backend,
    /// The node namespace hagw runs in (linuxbridge, ovs), with the bridges.
    pub(super) node: Option<String>,
    /// The node's OVS (its daemons stop when this drops).
    pub(super) ovs: Option<Ovs>,
}

/// The `ha-` device of router `i` (in its namespace; a veth into the HA network's bridge on
/// linuxbridge and ovs nodes, see [`add_ha_device`]).
pub(super) fn ha_dev(i: usize) -> String {
    format!("ha-{i:05}")
}

/// Makes router `i`'s `ha-` device usable for keepalived's VRRP and the primary VIP: on a
/// generic node (which wires no `ha-`) a veth whose peer stays in the namespace; up, with
/// an address of Neutron's HA network (keepalived will not run VRRP on a device without an
/// IPv4 address).
pub(super) fn add_ha_device(backend: Backend, ns: &str, i: usize) -> Result<()> {
    let ha = ha_dev(i);
    if backend == Backend::Generic {
        sh(&format!(
            "ip -n {ns} link add {ha} type veth peer name hp-{i:05} && ip -n {ns} link set hp-{i:05} up"
        ))?;
    }
    sh(&format!(
        "ip -n {ns} link set lo up && ip -n {ns} addr add 169.254.192.1/18 dev {ha} && \
         ip -n {ns} link set {ha} up"
    ))?;
    Ok(())
}

impl Wiring {
    /// Creates the ports of routers `0..n` (router `i` in namespace `router_ns(i)`, gateway
    /// `dev(i)` with `mac(i)`) and whatever they plug into, toward the ToR namespace `tor`.
    /// `tag` names what is created once per wiring (the node namespace, OVS's directory), so
    /// that wirings built one after the other never share them.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build(
        ctx: &Ctx,
        tag: &str,
        backend: Backend,
        n: usize,
        tor: &str,
        router_ns: impl Fn(usize) -> String,
        dev: impl Fn(usize) -> String,
        mac: impl Fn(usize) -> String,
    ) -> Result<Wiring> {
        if backend == Backend::Generic {
            let links: Vec<String> = (0..n)
                .map(|i| {
                    format!(
                        "link add {} address {} netns {} type veth peer name qp{i} netns {tor}",
                        dev(i),
                        mac(i),
                        router_ns(i)
                    )
                })
                .collect();
            ctx.batch(None, &format!("{tag}-links"), &links)?;
            let ups: Vec<String> = (0..n).map(|i| format!("link set qp{i} up")).collect();
            ctx.batch(Some(tor), &format!("{tag}-up"), &ups)?;
            return Ok(Wiring { backend, node: None, ovs: None });
        }
        let node = ctx.ns(&format!("{tag}node"));
        ctx.batch(None, &format!("{tag}-node"), &[format!("netns add {node}")])?;
        let mut links =
            vec![format!("link add uplink netns {node} type veth peer name up0 netns {tor}")];
        for i in 0..n {
            let ns = router_ns(i);
            links.push(format!(
                "link add {} address {} netns {ns} type veth peer name {} netns {node}",
                dev(i),
                mac(i),
                port_name('g', i)
            ));
            for (kind, side) in [("qr", 'r'), ("ha", 'h')] {
                links.push(format!(
                    "link add {kind}-{i:05} netns {ns} type veth peer name {} netns {node}",
                    port_name(side, i)
                ));
            }
        }
        ctx.batch(None, &format!("{tag}-links"), &links)?;
        ctx.batch(Some(tor), &format!("{tag}-up"), &["link set up0 up".to_string()])?;
        let mut ups = vec!["link set lo up".to_string(), "link set uplink up".to_string()];
        ups.extend((0..n).flat_map(|i| {
            ['g', 'r', 'h'].map(|side| format!("link set {} up", port_name(side, i)))
        }));
        let wiring = match backend {
            Backend::LinuxBridge => {
                let mut bridges = Vec::new();
                for br in [BRQ, "brqint", "brqha"] {
                    bridges.push(format!("link add {br} type bridge"));
                    bridges.push(format!("link set {br} up"));
                }
                bridges.push(format!("link set uplink master {BRQ}"));
                for i in 0..n {
                    bridges.push(format!("link set {} master {BRQ}", port_name('g', i)));
                    bridges.push(format!("link set {} master brqint", port_name('r', i)));
                    bridges.push(format!("link set {} master brqha", port_name('h', i)));
                }
                ctx.batch(Some(&node), &format!("{tag}-bridges"), &bridges)?;
                Wiring { backend, node: Some(node.clone()), ovs: None }
            }
            Backend::Ovs => {
                let ovs = ovs_node(ctx, &node, ctx.dir.join(format!("{tag}-ovs")), n)?;
                Wiring { backend, ovs: Some(ovs), node: Some(node.clone()) }
            }
            Backend::Generic => unreachable!("returned above"),
        };
        ctx.batch(Some(&node), &format!("{tag}-node-up"), &ups)?;
        if let Some(ovs) = &wiring.ovs {
            wait_attached(ovs, 3 * n + 5)?;
        }
        if backend == Backend::LinuxBridge {
            wait_uplink_forwarding(&node)?;
        }
        Ok(wiring)
    }

    /// Stops the node's OVS, deletes its directory and the node namespace (the routers' and
    /// the ToR's namespaces are the caller's).
    pub(super) fn remove(mut self) -> Result<()> {
        if let Some(ovs) = self.ovs.take() {
            let dir = ovs.dir.clone();
            drop(ovs);
            std::fs::remove_dir_all(dir)?;
        }
        if let Some(node) = &self.node {
            sh(&format!("ip netns del {node}"))?;
        }
        Ok(())
    }

    /// The `backend:` of router `i`'s spec.
    pub(super) fn backend_yaml(&self, i: usize) -> String {
        match self.backend {
            Backend::Generic => "generic".into(),
            Backend::LinuxBridge => {
                format!("{{linuxbridge: {{port: {}, bridge: {BRQ}}}}}", port_name('g', i))
            }
            Backend::Ovs => format!("{{ovs: {{port: {}}}}}", port_name('g', i)),
        }
    }

    /// Node-wide lines of routers.yaml (the OVSDB endpoint).
    pub(super) fn header_yaml(&self) -> String {
        match &self.ovs {
            Some(ovs) => format!("ovsdb: {}\n", ovs.endpoint()),
            None => String::new(),
        }
    }

    /// Where hagw runs and with what environment: the node namespace, and for OVS the run
    /// dir where it finds ovs-vswitchd's control socket.
    pub(super) fn hagw_env(&self) -> (Option<&str>, Vec<(String, PathBuf)>) {
        let env = self.ovs.iter().map(|o| ("OVS_RUNDIR".to_string(), o.dir.clone())).collect();
        (self.node.as_deref(), env)
    }
}

/// The node-side end of router `i`'s gateway (`g`), `qr-` (`r`) or `ha-` (`h`) port.
fn port_name(side: char, i: usize) -> String {
    format!("t{side}{i:05}")
}

/// Starts the node's OVS with br-int and br-ex as the OVS agent wires them, and adds every
/// router's three ports to br-int in their local VLANs (as the OVS agent leaves them wired).
fn ovs_node(ctx: &Ctx, node: &str, dir: PathBuf, n: usize) -> Result<Ovs> {
    let ovs = Ovs::start(node, dir)?;
    for br in ["br-int", "br-ex"] {
        ovs.vsctl(&format!(
            "add-br {br} -- set bridge {br} datapath_type=netdev fail_mode=secure"
        ))?;
    }
    // ovs-vswitchd has applied the bridges, so it has written its pid file.
    for pid in ["ovsdb.pid", "ovs-vswitchd.pid"] {
        ctx.adopt_pid(std::fs::read_to_string(ovs.dir.join(pid))?.trim())?;
    }
    ovs.vsctl(
        "add-port br-int int-br-ex -- set interface int-br-ex type=patch options:peer=phy-br-ex \
         -- add-port br-ex phy-br-ex -- set interface phy-br-ex type=patch options:peer=int-br-ex \
         -- add-port br-ex uplink",
    )?;
    install_neutron_flows(&ovs)?;
    let ports = (0..n).flat_map(|i| {
        let tenant = 100 + i % 3900;
        [('g', LOCAL_VLAN as usize), ('r', tenant), ('h', HA_VLAN)]
            .map(|(side, vlan)| (port_name(side, i), vlan))
    });
    add_ports(&ovs, "br-int", ports)?;
    Ok(ovs)
}

/// Adds `ports` (name, local VLAN) to `bridge` in one OVSDB transaction, as the OVS agent
/// leaves them wired (`tag` and `other_config:tag`). One `ovs-vsctl` per port, or even per
/// few hundred, takes minutes at this size: each one first reads the whole database.
fn add_ports(ovs: &Ovs, bridge: &str, ports: impl Iterator<Item = (String, usize)>) -> Result<()> {
    let mut ops = Vec::new();
    let mut added = Vec::new();
    for (name, vlan) in ports {
        let (iface, port) = (format!("i_{name}"), format!("p_{name}"));
        ops.push(json!({"op": "insert", "table": "Interface", "uuid-name": iface, "row": {"name": name}}));
        ops.push(json!({"op": "insert", "table": "Port", "uuid-name": port, "row": {
            "name": name,
            "interfaces": ["named-uuid", iface],
            "tag": vlan,
            "other_config": ["map", [["tag", vlan.to_string()]]],
        }}));
        added.push(json!(["named-uuid", port]));
    }
    ops.push(json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
        "mutations": [["ports", "insert", ["set", added]]]}));
    transact(ovs, ops).with_context(|| format!("adding the fleet's ports to {bridge}"))?;
    Ok(())
}

/// One OVSDB transaction of `ops` on the node's database; its results.
fn transact(ovs: &Ovs, ops: Vec<Value>) -> Result<Vec<Value>> {
    let mut params = vec![json!("Open_vSwitch")];
    params.extend(ops);
    let request = json!({"method": "transact", "id": 1, "params": params});
    let mut socket = UnixStream::connect(ovs.dir.join("db.sock"))?;
    socket.write_all(&serde_json::to_vec(&request)?)?;
    let reply = serde_json::Deserializer::from_reader(&socket)
        .into_iter::<Value>()
        .next()
        .context("ovsdb-server closed the connection")??;
    let results = reply["result"].as_array().context("no result")?.clone();
    if let Some(error) = results.iter().find(|r| r.get("error").is_some()) {
        bail!("OVSDB transaction failed: {error}");
    }
    Ok(results)
}

/// OVS's own floor for a mass failover, before hagw starts: the `n` gateway ports held and
/// then released (the triple hagw writes) in one OVSDB transaction each, with `next_cfg`
/// bumped, timed until ovs-vswitchd reports it applied (`cur_cfg`), as `ovs-vsctl
/// --wait=vswitchd` would; and one port alone, for the cost of one reconfiguration. The
/// ports end as they started (wired in their local VLAN).
pub(super) fn ovs_floor(ovs: &Ovs, n: usize, interfaces: usize) -> Result<String> {
    let set = |ports: std::ops::Range<usize>, held: bool| -> Result<f64> {
        let mut ops: Vec<Value> = ports
            .map(|i| {
                let row = if held {
                    json!({"tag": 4095, "vlan_mode": "trunk", "trunks": ["set", [4095]]})
                } else {
                    json!({"tag": LOCAL_VLAN, "vlan_mode": ["set", []], "trunks": ["set", []]})
                };
                json!({"op": "update", "table": "Port",
                    "where": [["name", "==", port_name('g', i)]], "row": row})
            })
            .collect();
        ops.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
            "mutations": [["next_cfg", "+=", 1]]}));
        ops.push(json!({"op": "select", "table": "Open_vSwitch", "where": [],
            "columns": ["next_cfg"]}));
        let start = Instant::now();
        let results = transact(ovs, ops)?;
        let target = results.last().and_then(|r| r["rows"][0]["next_cfg"].as_i64());
        let target = target.context("no next_cfg")?;
        loop {
            let cur = transact(
                ovs,
                vec![json!({"op": "select", "table": "Open_vSwitch",
                "where": [], "columns": ["cur_cfg"]})],
            )?;
            if cur[0]["rows"][0]["cur_cfg"].as_i64().is_some_and(|c| c >= target) {
                return Ok(start.elapsed().as_secs_f64() * 1000.0);
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("ovs-vswitchd did not apply a change in 60 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let one_hold = set(0..1, true)?;
    let one_release = set(0..1, false)?;
    let hold = set(0..n, true)?;
    let release = set(0..n, false)?;
    Ok(format!(
        "OVS floor ({n} gateway ports of {interfaces} on br-int, one transaction each, until \
         cur_cfg): hold all {hold:.0} ms, release all {release:.0} ms; one port: hold \
         {one_hold:.0} ms, release {one_release:.0} ms"
    ))
}

/// Waits until the uplink is a forwarding port of brq. The bridge enables a port once the
/// kernel's link watcher has handled its carrier, and the watcher puts a device whose
/// `iflink` is its own index (a physical NIC; here the uplink, index 2 in the node as its
/// peer up0 is in the ToR) behind the urgent events of every new veth end. With 200 routers
/// the uplink was still disabled 3 s after the wiring while every tap forwarded, and a
/// failover then saw 0 of 200 gARPs at the ToR (with the uplink at another index, it
/// forwarded in time: 200 of 200). A real node's uplink has forwarded long before a failover.
fn wait_uplink_forwarding(node: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let port = sh(&format!("bridge -n {node} link show dev uplink"))?;
        if port.contains("state forwarding") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the uplink is not forwarding 120 s after the wiring: {port}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until ovs-vswitchd has attached `count` interfaces (each has an OpenFlow port
/// number; the routers' ports, both bridges' own, the patch pair and the uplink): before
/// that, the fleet would start on ports the datapath does not have yet.
fn wait_attached(ovs: &Ovs, count: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ofports = ovs.vsctl("--bare --columns=ofport list Interface")?;
        let attached =
            ofports.split_whitespace().filter(|o| o.parse::<i64>().is_ok_and(|n| n > 0)).count();
        if attached >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            let tail = sh(&format!("tail -n 5 {}/vswitchd.log", ovs.dir.display()))?;
            bail!("ovs-vswitchd attached {attached} of {count} interfaces in 300 s:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
