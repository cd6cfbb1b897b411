//! Network nodes running real Open vSwitch on the userspace (`netdev`) datapath, wired like a
//! Neutron ML2/OVS network node, behind a ToR Linux bridge.
//!
//! Each node is a namespace with its own `ovsdb-server` and `ovs-vswitchd`, each with its own
//! run dir, database, pid, unixctl and log files: two instances sharing a run dir collide on
//! the bridges' `.mgmt` sockets, and `ovs-ofctl` would silently program the other node's
//! bridge (see the testbed notes). Processes are killed when the node drops.
//!
//! Per node: `br-int` with the gateway port (a veth as with `ovs_use_veth`: the OVS end in
//! br-int, `qg-…` in the node's `qrouter` namespace, the same MAC on every node) and Neutron's
//! drop flow for VLAN 4095; `br-ex` toward the ToR, patched to br-int, whose flows pass only
//! the node's real local VLAN, as the OVS agent installs them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::gateway::{EXTERNAL_IP, GATEWAY_MAC};
use crate::lab::{Lab, sh};

/// Neutron's local VLAN for the external network on every node of the lab.
pub const LOCAL_VLAN: u16 = 17;

/// One node's ovsdb-server and ovs-vswitchd.
pub struct Ovs {
    pub ns: String,
    pub dir: PathBuf,
    ovsdb: Option<Child>,
    vswitchd: Option<Child>,
}

impl Ovs {
    /// Creates a fresh database in `dir` and starts both daemons inside `ns`.
    pub fn start(ns: &str, dir: PathBuf) -> Result<Ovs> {
        std::fs::create_dir_all(&dir)?;
        let schema = "/usr/share/openvswitch/vswitch.ovsschema";
        sh(&format!("ovsdb-tool create {}/conf.db {schema}", dir.display()))?;
        let mut ovs = Ovs { ns: ns.to_owned(), dir, ovsdb: None, vswitchd: None };
        ovs.start_ovsdb()?;
        ovs.vsctl("--no-wait init")?;
        ovs.start_vswitchd()?;
        Ok(ovs)
    }

    fn start_vswitchd(&mut self) -> Result<()> {
        let d = self.dir.display().to_string();
        self.vswitchd = Some(self.daemon(&[
            "ovs-vswitchd",
            &format!("unix:{d}/db.sock"),
            // The standard names (control socket `ovs-vswitchd.<pid>.ctl` in the run dir),
            // through which hagw finds the control socket as `ovs-appctl` does.
            &format!("--pidfile={d}/ovs-vswitchd.pid"),
            &format!("--log-file={d}/vswitchd.log"),
            "-vconsole:off",
        ])?);
        Ok(())
    }

    /// Kills ovs-vswitchd and starts it again, without waiting for it. Its OpenFlow state
    /// (flows, port config such as `no-receive`) is gone.
    pub fn respawn_vswitchd(&mut self) -> Result<()> {
        kill(&mut self.vswitchd);
        self.start_vswitchd()
    }

    /// [`Ovs::respawn_vswitchd`], returning once it has reconfigured from OVSDB.
    pub fn restart_vswitchd(&mut self) -> Result<()> {
        self.respawn_vswitchd()?;
        // `ovs-vsctl` without --no-wait returns once vswitchd has applied the database; a
        // value it already has would be no change to wait for (a second restart).
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        self.vsctl(&format!("set open_vswitch . external_ids:hagw-test-restart={stamp}"))?;
        Ok(())
    }

    /// Runs a daemon in the node namespace with this instance's run dir.
    fn daemon(&self, argv: &[&str]) -> Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(argv)
            .env("OVS_RUNDIR", &self.dir)
            .env("OVS_DBDIR", &self.dir)
            .env("OVS_LOGDIR", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} in {}", argv[0], self.ns))
    }

    /// Starts ovsdb-server and waits until its socket accepts connections.
    pub fn start_ovsdb(&mut self) -> Result<()> {
        let d = self.dir.display().to_string();
        self.ovsdb = Some(self.daemon(&[
            "ovsdb-server",
            &format!("{d}/conf.db"),
            &format!("--remote=punix:{d}/db.sock"),
            &format!("--pidfile={d}/ovsdb.pid"),
            &format!("--unixctl={d}/ovsdb.ctl"),
            &format!("--log-file={d}/ovsdb.log"),
            "-vconsole:off",
        ])?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(self.dir.join("db.sock")).is_err() {
            if Instant::now() > deadline {
                bail!("ovsdb-server in {} did not come up", self.ns);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills ovsdb-server (vswitchd keeps forwarding with its last configuration).
    pub fn stop_ovsdb(&mut self) {
        kill(&mut self.ovsdb);
        let _ = std::fs::remove_file(self.dir.join("db.sock"));
    }

    /// The endpoint hagw connects to.
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.dir.join("db.sock").display())
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("conf.db")
    }

    /// `ovs-vsctl` against this instance; `args` are shell words.
    pub fn vsctl(&self, args: &str) -> Result<String> {
        sh(&format!("ovs-vsctl --db={} --timeout=10 {args}", self.endpoint()))
    }

    /// `ovs-ofctl` against this instance's bridges (resolved through its run dir).
    pub fn ofctl(&self, args: &str) -> Result<String> {
        sh(&format!("OVS_RUNDIR={} ovs-ofctl {args}", self.dir.display()))
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        kill(&mut self.vswitchd);
        kill(&mut self.ovsdb);
    }
}

/// A network node: its OVS, its router namespace and its port on the ToR.
pub struct OvsNode {
    pub ovs: Ovs,
    pub ns: String,
    pub qrouter: String,
    /// Gateway device in `qrouter`.
    pub qg: String,
    /// The OVS end of the gateway veth: the Port name hagw holds.
    pub port: String,
    /// The ToR bridge port facing this node.
    pub tor_port: String,
}

impl OvsNode {
    /// What the L3 agent does when it plugs the gateway: a veth whose OVS end goes into
    /// br-int in the dead VLAN (tag only) and whose `qg` end, down, gets the gateway MAC.
    pub fn plug(&self, lab: &Lab) -> Result<()> {
        let (qg, port) = (&self.qg, &self.port);
        lab.veth((&self.qrouter, qg), (&self.ns, port))?;
        lab.exec(&self.qrouter, &format!("ip link set {qg} address {GATEWAY_MAC}"))?;
        no_tx_offload(lab, &self.qrouter, qg)?;
        no_tx_offload(lab, &self.ns, port)?;
        lab.exec(&self.ns, &format!("ip link set {port} up"))?;
        self.ovs.vsctl(&format!(
            "--no-wait add-port br-int {port} tag=4095 -- set interface {port} \
             external_ids:iface-id=gw-port external_ids:attached-mac={GATEWAY_MAC}"
        ))?;
        Ok(())
    }

    /// Removes the gateway (both veth ends and the OVS port), as a node reboot would.
    pub fn unplug(&self, lab: &Lab) -> Result<()> {
        self.ovs.vsctl(&format!("--no-wait --if-exists del-port br-int {}", self.port))?;
        lab.exec(&self.ns, &format!("ip link del {} 2>/dev/null || true", self.port))?;
        Ok(())
    }

    /// ovs-vswitchd restarts (its OpenFlow state is lost), then the OVS agent notices and
    /// installs its flows again. Re-wiring the ports, which the agent does next, is left to
    /// the caller ([`OvsNode::agent_wire`]).
    pub fn restart_vswitchd(&mut self) -> Result<()> {
        self.ovs.restart_vswitchd()?;
        install_neutron_flows(&self.ovs)
    }

    /// Whether ovs-vswitchd has attached the gateway port (its Interface has an OpenFlow port
    /// number). Neutron's OVS agent skips ports without one ("not yet ready"), so it never
    /// wires a port before this holds.
    pub fn attached(&self) -> bool {
        let ofport = self.ovs.vsctl(&format!("--if-exists get interface {} ofport", self.port));
        ofport.ok().and_then(|o| o.trim().parse::<i64>().ok()).is_some_and(|n| n > 0)
    }

    /// What the OVS agent does when it wires (or, after a restart, re-wires) the port: the
    /// local VLAN in `other_config` and on the port, `vlan_mode`/`trunks` cleared, one
    /// transaction. On a held port this lifts the hold.
    pub fn agent_wire(&self) -> Result<()> {
        let p = &self.port;
        self.ovs.vsctl(&format!(
            "--no-wait set port {p} other_config:tag={LOCAL_VLAN} tag={LOCAL_VLAN} \
             -- clear port {p} vlan_mode trunks"
        ))?;
        Ok(())
    }

    /// Whether the gateway port has OpenFlow `no-receive` (`NO_RECV`) in br-int: the half
    /// of hagw's hold that lives in ovs-vswitchd rather than OVSDB.
    pub fn no_receive(&self) -> Result<bool> {
        Ok(self.port_config()?.iter().any(|flag| flag == "NO_RECV"))
    }

    /// The gateway port's OpenFlow config flags in br-int as `ovs-ofctl dump-ports-desc`
    /// shows them (empty when it shows `0`), over OpenFlow 1.3 as hagw reads them.
    pub fn port_config(&self) -> Result<Vec<String>> {
        let desc = self.ovs.ofctl("-O OpenFlow13 dump-ports-desc br-int")?;
        let mut lines = desc.lines().skip_while(|l| !l.contains(&format!("({}):", self.port)));
        ensure!(lines.next().is_some(), "{} not in br-int:\n{desc}", self.port);
        let config = lines.find_map(|l| l.trim_start().strip_prefix("config:")).unwrap_or_default();
        Ok(config.split_whitespace().filter(|flag| *flag != "0").map(str::to_owned).collect())
    }

    /// `tag`, `vlan_mode` and `trunks` of the gateway port, for assertions and logs.
    pub fn port_vlan(&self) -> Result<String> {
        let p = &self.port;
        let out = self
            .ovs
            .vsctl(&format!("get port {p} tag -- get port {p} vlan_mode -- get port {p} trunks"))?;
        Ok(out.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// The `ethtool -K tx off` the userspace datapath needs on veths: with checksum offload the
/// packets it forwards from AF_PACKET ports leave with incomplete TCP/UDP checksums.
fn no_tx_offload(lab: &Lab, ns: &str, dev: &str) -> Result<()> {
    lab.exec(ns, &format!("ethtool -K {dev} tx off >/dev/null"))?;
    Ok(())
}

/// A ToR with an external host and `nodes` OVS network nodes.
pub struct OvsLab {
    pub nodes: Vec<OvsNode>,
    pub tor: String,
    pub external: String,
    // Declared last: dropped after the nodes, whose daemons run in its namespaces.
    pub lab: Lab,
}

impl OvsLab {
    pub fn build(nodes: usize) -> Result<OvsLab> {
        let mut lab = Lab::new()?;
        let id = lab.id.clone();
        let tor = lab.netns("tor")?;
        let external = lab.netns("ext")?;
        lab.bridge(&tor, "br-tor")?;
        lab.veth((&external, "eth0"), (&tor, &format!("te-{id}")))?;
        lab.attach(&tor, &format!("te-{id}"), "br-tor")?;
        no_tx_offload(&lab, &external, "eth0")?;
        lab.exec(
            &external,
            &format!("ip addr add {EXTERNAL_IP}/24 dev eth0 && ip link set eth0 up"),
        )?;
        let mut built = Vec::new();
        for i in 1..=nodes {
            built.push(build_node(&mut lab, &tor, i)?);
        }
        Ok(OvsLab { nodes: built, tor, external, lab })
    }
}

fn build_node(lab: &mut Lab, tor: &str, i: usize) -> Result<OvsNode> {
    let id = lab.id.clone();
    let ns = lab.netns(&format!("n{i}"))?;
    let qrouter = lab.netns(&format!("q{i}"))?;
    let ovs = Ovs::start(&ns, lab.dir.path().join(format!("ovs{i}")))?;
    for br in ["br-int", "br-ex"] {
        ovs.vsctl(&format!(
            "add-br {br} -- set bridge {br} datapath_type=netdev fail_mode=secure"
        ))?;
    }
    ovs.vsctl(
        "add-port br-int int-br-ex -- set interface int-br-ex type=patch options:peer=phy-br-ex \
         -- add-port br-ex phy-br-ex -- set interface phy-br-ex type=patch options:peer=int-br-ex",
    )?;
    let tor_port = format!("t{i}-{id}");
    lab.veth((&ns, "uplink"), (tor, &tor_port))?;
    no_tx_offload(lab, &ns, "uplink")?;
    no_tx_offload(lab, tor, &tor_port)?;
    lab.attach(tor, &tor_port, "br-tor")?;
    lab.exec(&ns, "ip link set uplink up")?;
    ovs.vsctl("add-port br-ex uplink")?;
    install_neutron_flows(&ovs)?;
    Ok(OvsNode { ovs, ns, qrouter, qg: format!("qg-{id}"), port: format!("tg{i}-{id}"), tor_port })
}

/// The flows Neutron's OVS agent keeps on both bridges (it installs them again when it
/// notices that ovs-vswitchd restarted).
pub fn install_neutron_flows(ovs: &Ovs) -> Result<()> {
    let v = LOCAL_VLAN;
    install_flows(
        ovs,
        "br-int",
        &[
            // Neutron's dead-VLAN drop: frames that arrive tagged 4095.
            "priority=65535,vlan_tci=0x0fff/0x1fff,actions=drop".into(),
            format!(
                "priority=3,in_port=int-br-ex,vlan_tci=0x0000/0x1fff,actions=mod_vlan_vid:{v},NORMAL"
            ),
            "priority=2,in_port=int-br-ex,actions=drop".into(),
            "priority=0,actions=NORMAL".into(),
        ],
    )?;
    install_flows(
        ovs,
        "br-ex",
        &[
            // Only the real local VLAN leaves toward the provider network.
            format!("priority=4,in_port=phy-br-ex,dl_vlan={v},actions=strip_vlan,NORMAL"),
            "priority=2,in_port=phy-br-ex,actions=drop".into(),
            "priority=0,actions=NORMAL".into(),
        ],
    )
}

fn install_flows(ovs: &Ovs, bridge: &str, flows: &[String]) -> Result<()> {
    for flow in flows {
        ovs.ofctl(&format!("add-flow {bridge} '{flow}'"))?;
    }
    Ok(())
}

/// Whether the ToR's FDB has the gateway MAC on `port`.
pub fn fdb_has_gateway_on(tor: &str, port: &str) -> Result<bool> {
    let fdb = sh(&format!("ip netns exec {tor} bridge fdb show br br-tor"))?;
    Ok(fdb.lines().any(|l| l.starts_with(GATEWAY_MAC) && l.contains(&format!("dev {port} "))))
}
