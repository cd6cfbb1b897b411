//! Network nodes wired like Neutron ML2/Linuxbridge, behind a ToR Linux bridge.
//!
//! Per node: a namespace (the "host" of the node, where hagw runs via `ip netns exec`) with a
//! `brq…` bridge whose `uplink` veth goes to the node's ToR port; and a `qrouter` namespace
//! whose `qg-…` (the same MAC on every node) is a veth whose peer `tap…` is in the node
//! namespace, plugged into brq by the emulated Linuxbridge agent. The pair is created the way
//! Neutron's BridgeInterfaceDriver does (`ip link add tap… type veth peer name qg… netns …`).
//! Device names inside a node are Neutron's fixed ones: each node has its own namespaces.
//! An external host on the ToR owns the upstream address.

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context, Result};

use crate::gateway::{EXTERNAL_IP, GATEWAY_CIDR, GATEWAY_IP, GATEWAY_MAC};
use crate::lab::{Lab, hagw_bin, sh};

pub const TAP: &str = "tap1234abcd-56";
pub const QG: &str = "qg-1234abcd-56";
pub const BRQ: &str = "brq1234abcd-56";
/// The IPv6 gateway address the primary carries.
pub const GATEWAY_CIDR6: &str = "2001:db8::10/64";

/// One network node of the lab.
pub struct LbNode {
    /// The node's own namespace: brq, the uplink, the tap, and hagw.
    pub ns: String,
    pub qrouter: String,
    /// The ToR bridge port facing this node.
    pub tor_port: String,
    /// Neutron's `ha_confs/<id>/state` for the router on this node.
    pub state: PathBuf,
    /// hagw's routers.yaml on this node.
    pub config: PathBuf,
}

impl LbNode {
    /// Runs a shell command in the node namespace.
    pub fn node(&self, lab: &Lab, cmd: &str) -> Result<String> {
        lab.exec(&self.ns, cmd)
    }

    /// Runs a shell command in the router namespace.
    pub fn router(&self, lab: &Lab, cmd: &str) -> Result<String> {
        lab.exec(&self.qrouter, cmd)
    }

    /// The L3 agent's interface driver: the veth pair with the gateway MAC, both ends down.
    /// `legacy` adds what pre-Zed L3 agents leave on every node: IPv6 forwarding on the qg
    /// (it joins ff02::2 and answers MLD queries), the worst case for a standby.
    pub fn create_veth(&self, lab: &Lab, legacy: bool) -> Result<()> {
        self.node(
            lab,
            &format!(
                "ip link add {TAP} type veth peer name {QG} netns {q} && \
                 ip -n {q} link set {QG} address {GATEWAY_MAC}",
                q = self.qrouter
            ),
        )?;
        if legacy {
            self.router(lab, &format!("sysctl -qw net.ipv6.conf.{QG}.forwarding=1"))?;
        }
        Ok(())
    }

    /// Deletes the pair (from the tap end), as an unplug or a re-plug by the L3 agent does.
    pub fn delete_veth(&self, lab: &Lab) -> Result<()> {
        self.node(lab, &format!("ip link del {TAP} 2>/dev/null || true"))?;
        Ok(())
    }

    /// What the Linuxbridge agent does with a new tap: enslave it to brq and set it up.
    /// Tolerates a tap that does not exist (the agent's poll raced a deletion).
    pub fn plug(&self, lab: &Lab) -> Result<()> {
        self.node(
            lab,
            &format!("ip link set {TAP} master {BRQ} 2>/dev/null && ip link set {TAP} up || true"),
        )?;
        Ok(())
    }

    /// Takes the tap out of brq (agent resync, port update).
    pub fn unplug(&self, lab: &Lab) -> Result<()> {
        self.node(lab, &format!("ip link set {TAP} nomaster 2>/dev/null || true"))?;
        Ok(())
    }

    /// Sets the tap down or up: the qg end loses or regains carrier.
    pub fn tap_carrier(&self, lab: &Lab, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.node(lab, &format!("ip link set {TAP} {state} 2>/dev/null || true"))?;
        Ok(())
    }

    /// Runs `ip link set qg up`, `ip -6 addr flush dev qg` and the like in the router
    /// namespace, tolerating a qg that is being re-created.
    pub fn qg(&self, lab: &Lab, args: &str) -> Result<()> {
        self.router(lab, &format!("ip {args} 2>/dev/null || true"))?;
        Ok(())
    }

    /// Makes the qg talk as much as it can: both gateway addresses (ARP, DAD, MLD), a
    /// gratuitous ARP and a ping upstream, then the addresses removed again (MLD leave).
    /// A held port must get none of it to the ToR.
    pub fn provoke(&self, lab: &Lab) -> Result<()> {
        self.router(
            lab,
            &format!(
                "ip link set {QG} up; ip addr replace {GATEWAY_CIDR} dev {QG}; \
                 ip addr replace {GATEWAY_CIDR6} dev {QG}; \
                 arping -q -U -c 1 -I {QG} {GATEWAY_IP}; ping -q -c 1 -W 1 {EXTERNAL_IP}; \
                 ip addr del {GATEWAY_CIDR} dev {QG}; ip -6 addr flush dev {QG}; true"
            ),
        )?;
        Ok(())
    }

    /// Writes Neutron's state word (`primary` or `backup`) for the router on this node.
    pub fn set_role(&self, word: &str) -> Result<()> {
        std::fs::write(&self.state, word).context("writing the state file")
    }

    /// `hagw reconcile -c … --once` inside the node namespace: a fresh hagw process each
    /// time, so every call is also a restart.
    pub fn hagw_once(&self) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(hagw_bin())
            .args(["reconcile", "--once", "-c"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .output()
            .context("running hagw")
    }

    /// As [`LbNode::hagw_once`], failing with hagw's output if it did not converge.
    pub fn hagw_converge(&self) -> Result<String> {
        let out = self.hagw_once()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(out.status.success(), "hagw on {} failed:\n{text}", self.ns);
        Ok(text)
    }

    /// Whether the nft hold table lists the tap (what `nft list set` shows, not hagw's view).
    pub fn tap_in_held_set(&self, lab: &Lab) -> Result<bool> {
        let set = self.node(lab, "nft list set bridge hagw held_ports 2>/dev/null || true")?;
        Ok(set.contains(&format!("\"{TAP}\"")))
    }
}

/// A ToR with an external host and Linuxbridge network nodes.
pub struct LbLab {
    pub nodes: Vec<LbNode>,
    pub tor: String,
    pub external: String,
    pub lab: Lab,
}

impl LbLab {
    /// Builds `nodes` nodes whose hagw uses `strategy` (`l2-hold`, `link-down`,
    /// `silence-only`); every node starts as `backup` and without a gateway veth. The silence
    /// settle time is hagw's default (3 s): a shorter one lets silence-only lift its hold
    /// while the kernel still retransmits the MLD leave of the all-routers groups that
    /// turning forwarding off sends (measured: 5 of 24 trials leaked one with 500 ms).
    pub fn build(nodes: usize, strategy: &str) -> Result<LbLab> {
        let mut lab = Lab::new()?;
        let tor = lab.netns("tor")?;
        let external = lab.netns("ext")?;
        lab.bridge(&tor, "br-tor")?;
        lab.veth((&external, "eth0"), (&tor, "te"))?;
        lab.attach(&tor, "te", "br-tor")?;
        lab.exec(
            &external,
            &format!("ip addr add {EXTERNAL_IP}/24 dev eth0 && ip link set eth0 up"),
        )?;
        let mut built = Vec::new();
        for i in 1..=nodes {
            built.push(build_node(&mut lab, &tor, i, strategy)?);
        }
        Ok(LbLab { nodes: built, tor, external, lab })
    }

    /// Whether the ToR's FDB has the gateway MAC on `port`.
    pub fn fdb_has_gateway_on(&self, port: &str) -> Result<bool> {
        let fdb = sh(&format!("ip netns exec {} bridge fdb show br br-tor", self.tor))?;
        Ok(fdb.lines().any(|l| l.starts_with(GATEWAY_MAC) && l.contains(&format!("dev {port} "))))
    }

    /// Pings the gateway address from the external host, up to `tries` one-second tries.
    pub fn ping_gateway(&self, tries: u32) -> Result<()> {
        let cmd = format!(
            "for i in $(seq {tries}); do ping -q -c 1 -W 1 {GATEWAY_IP} >/dev/null && exit 0; done; exit 1"
        );
        self.lab.exec(&self.external, &cmd).map(drop).context("ping to the gateway failed")
    }
}

fn build_node(lab: &mut Lab, tor: &str, i: usize, strategy: &str) -> Result<LbNode> {
    let ns = lab.netns(&format!("n{i}"))?;
    let qrouter = lab.netns(&format!("q{i}"))?;
    let tor_port = format!("t{i}");
    lab.bridge(&ns, BRQ)?;
    lab.veth((&ns, "uplink"), (tor, &tor_port))?;
    lab.attach(tor, &tor_port, "br-tor")?;
    lab.attach(&ns, "uplink", BRQ)?;
    let state = lab.file(&format!("state{i}"), "backup")?;
    let yaml = format!(
        "routers:\n\
         \x20 - id: r{i}\n\
         \x20   namespace: {qrouter}\n\
         \x20   gatewayDevice: {QG}\n\
         \x20   gatewayAddresses: [{GATEWAY_CIDR}, \"{GATEWAY_CIDR6}\"]\n\
         \x20   routes:\n\
         \x20     - destination: 0.0.0.0/0\n\
         \x20       via: {EXTERNAL_IP}\n\
         \x20   backend: {{linuxbridge: {{port: {TAP}, bridge: {BRQ}}}}}\n\
         \x20   strategy: {strategy}\n\
         \x20   announce: {{repeats: 0}}\n\
         \x20   role: {{stateFile: {}}}\n",
        state.display()
    );
    let config = lab.file(&format!("routers{i}.yaml"), &yaml)?;
    Ok(LbNode { ns, qrouter, tor_port, state, config })
}
