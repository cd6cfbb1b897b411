//! The leak alarm under `l2-hold` on real Linux bridge and OVS nodes, judged against a ToR
//! capture: a held standby whose kernel transmits on the gateway device (the MLD reports that
//! going standby leaves behind, addresses added behind hagw's back, a packet socket) gets
//! nothing to the ToR and raises no alarm; the same standby whose hold is lifted behind
//! hagw's back leaks to the ToR, and the alarm fires.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hagw_e2e::gateway::{EXTERNAL_IP, GATEWAY_CIDR, GATEWAY_IP, GATEWAY_MAC};
use hagw_e2e::lab::Lab;
use hagw_e2e::linuxbridge::{GATEWAY_CIDR6, LbLab, LbNode, QG, TAP};
use hagw_e2e::ovs::{OvsLab, OvsNode, fdb_has_gateway_on};
use hagw_e2e::wait::eventually;
use hagw_e2e::{Capture, hagw_bin};

/// The agent's endpoint inside the node namespace, which the test owns alone.
const LISTEN: &str = "127.0.0.1:9477";
const ALARM: &str = "hagw_leak_alarm{router=\"r1\"}";
const LEAKED: &str = "hagw_standby_tx_packets_total{router=\"r1\"}";

/// `hagw run` in the node's namespace with a JSON log in the lab's directory; killed on drop.
struct Agent {
    child: Child,
    ns: String,
    log: PathBuf,
}

impl Agent {
    /// `hagw run -c config` in the node namespace `ns`, with `env` (OVS: `OVS_RUNDIR`).
    fn start(
        lab: &Lab,
        ns: &str,
        config: &Path,
        env: &[(&str, &Path)],
        resync_secs: u32,
    ) -> Result<Agent> {
        // Not next to the state file: hagw watches that directory, and its own writes there
        // would be events it logs, without end.
        let dir = lab.dir.path().join("log");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("hagw.log");
        let out = File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(hagw_bin())
            .args(["run", "-c"])
            .arg(config)
            .args(["--listen", LISTEN, "--resync", &resync_secs.to_string()])
            .args(["--log-format", "json", "--log-level", "info,hagw::observe=debug"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting hagw run")?;
        Ok(Agent { child, ns: ns.to_owned(), log })
    }

    /// One series of `/metrics`, 0 if absent; fetched with curl inside the node namespace.
    fn metric(&self, series: &str) -> Result<f64> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sf", "--max-time", "2"])
            .arg(format!("http://{LISTEN}/metrics"))
            .output()?;
        ensure!(out.status.success(), "curl /metrics failed");
        let body = String::from_utf8_lossy(&out.stdout);
        Ok(body
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many times a pass found that the held port had transmitted into its hold.
    fn held_frames_seen(&self) -> usize {
        self.log().matches("transmitted into its hold").count()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway device `qg`'s transmit counter in `qrouter`, as the kernel keeps it.
fn tx_packets(lab: &Lab, qrouter: &str, qg: &str) -> Result<u64> {
    let text = lab.exec(qrouter, &format!("cat /sys/class/net/{qg}/statistics/tx_packets"))?;
    Ok(text.trim().parse()?)
}

/// `count` gratuitous ARPs for the gateway address sent out of `qg` at once from a packet
/// socket, as a stray process in the router namespace would (arping waits a second between
/// frames).
fn send_garps(lab: &Lab, qrouter: &str, qg: &str, count: usize) -> Result<()> {
    let mac = GATEWAY_MAC.replace(':', "");
    let ip: String =
        GATEWAY_IP.split('.').map(|b| format!("{:02x}", b.parse::<u8>().unwrap_or(0))).collect();
    // Broadcast, ARP; Ethernet/IPv4, request; sender and target the gateway address.
    let frame = format!("ffffffffffff{mac}0806 0001 0800 06 04 0001 {mac}{ip} 000000000000{ip}");
    let frame = frame.replace(' ', "");
    lab.exec(
        qrouter,
        &format!(
            "python3 -c \"import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); \
             s.bind(('{qg}', 0)); [s.send(bytes.fromhex('{frame}')) for _ in range({count})]\""
        ),
    )?;
    Ok(())
}

/// Everything in the router namespace that makes a held `qg` talk: both gateway addresses
/// (DAD, MLD), a ping upstream (ARP), the addresses removed again (MLD), gratuitous ARPs from
/// a packet socket, and an IPv6 address left for hagw to remove.
fn provoke(lab: &Lab, qrouter: &str, qg: &str) -> Result<()> {
    lab.exec(
        qrouter,
        &format!(
            "ip addr replace {GATEWAY_CIDR} dev {qg}; ip addr replace {GATEWAY_CIDR6} dev {qg}; \
             ping -q -c 1 -W 1 {EXTERNAL_IP}; ip addr del {GATEWAY_CIDR} dev {qg}; \
             ip -6 addr flush dev {qg}; true"
        ),
    )?;
    send_garps(lab, qrouter, qg, 5)?;
    lab.exec(qrouter, &format!("ip addr add {GATEWAY_CIDR6} dev {qg} || true"))?;
    Ok(())
}

/// A standby at rest in `qrouter`: silenced, link up, no addresses (the hold is the caller's).
fn silenced_and_up(lab: &Lab, qrouter: &str, qg: &str) -> Result<bool> {
    let mode = lab.exec(qrouter, &format!("cat /proc/sys/net/ipv6/conf/{qg}/addr_gen_mode"))?;
    let link = lab.exec(qrouter, &format!("ip -o link show {qg}"))?;
    let addrs = lab.exec(qrouter, &format!("ip -o addr show dev {qg}"))?;
    Ok(mode.trim() == "1" && link.contains(",UP") && addrs.is_empty())
}

/// An `l2-hold` standby at rest on the Linux bridge node: its tap in the hold set.
fn held_at_rest(lb: &LbLab, node: &LbNode) -> Result<bool> {
    Ok(silenced_and_up(&lb.lab, &node.qrouter, QG)? && node.tap_in_held_set(&lb.lab)?)
}

/// The alarm and the leak counter, sampled until a pass has compared a counter that grew
/// behind the hold, and over two resyncs after it.
fn samples_after_transmitting(agent: &Agent) -> Result<Vec<(f64, f64)>> {
    let mut samples = Vec::new();
    let mut compared = None;
    while compared.is_none_or(|at: usize| samples.len() < at + 10) {
        samples.push((agent.metric(ALARM)?, agent.metric(LEAKED)?));
        if compared.is_none() && agent.held_frames_seen() > 0 {
            compared = Some(samples.len());
        }
        ensure!(samples.len() < 75, "no pass compared the counter:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(samples)
}

/// What the held standby transmitted (`sent`), what reached the ToR, and the alarm samples:
/// enough transmitted to tell, nothing at the ToR, no alarm.
fn judge(sent: u64, frames: Vec<String>, samples: &[(f64, f64)], agent: &Agent) -> Result<()> {
    eprintln!("the held qg transmitted {sent} frames; at the ToR: {}", frames.len());
    ensure!(sent >= 5, "the kernel transmitted too little to tell: {sent}");
    ensure!(frames.is_empty(), "the hold let frames through:\n{}", frames.join("\n"));
    ensure!(
        samples.iter().all(|s| *s == (0.0, 0.0)),
        "alarm (alarm, frames) without a frame at the ToR: {samples:?}\n{}",
        agent.log()
    );
    Ok(())
}

/// One node, `l2-hold`, its gateway veth plugged as the agents leave it, and hagw running.
fn standby_node(resync_secs: u32) -> Result<(LbLab, Agent)> {
    let lb = LbLab::build(1, "l2-hold")?;
    let node = &lb.nodes[0];
    node.create_veth(&lb.lab, true)?;
    node.plug(&lb.lab)?;
    let agent = Agent::start(&lb.lab, &node.ns, &node.config, &[], resync_secs)?;
    eventually(Duration::from_secs(10), "the standby held at rest", || held_at_rest(&lb, node))
        .with_context(|| agent.log())?;
    Ok((lb, agent))
}

/// The router goes primary and back to standby (its addresses removed, forwarding off: the
/// kernel sends MLD reports for the groups it leaves and repeats them up to a second later,
/// after the pass that made it standby), then everything in the namespace makes the held
/// qg talk. The device transmits, the ToR receives none of it, and the alarm stays off over
/// the passes that follow.
#[test]
fn a_held_standby_transmitting_into_its_hold_raises_no_alarm() -> Result<()> {
    let (lb, agent) = standby_node(1)?;
    let node = &lb.nodes[0];
    node.set_role("primary")?;
    eventually(Duration::from_secs(10), "the takeover", || {
        Ok(node.router(&lb.lab, &format!("ip -o addr show dev {QG}"))?.contains(GATEWAY_IP))
    })
    .with_context(|| agent.log())?;
    // Its announcement at the ToR before the capture starts.
    eventually(Duration::from_secs(10), "the ToR learning the primary", || {
        lb.fdb_has_gateway_on(&node.tor_port)
    })?;
    let capture = Capture::start(&lb.tor, &node.tor_port, lb.lab.dir.path().join("tor.pcap"))?;
    node.set_role("backup")?;
    let back = tx_packets(&lb.lab, &node.qrouter, QG)?;
    eventually(Duration::from_secs(10), "held at rest again", || held_at_rest(&lb, node))?;

    provoke(&lb.lab, &node.qrouter, QG)?;
    let sent = tx_packets(&lb.lab, &node.qrouter, QG)? - back;
    let samples = samples_after_transmitting(&agent)?;
    ensure!(held_at_rest(&lb, node)?, "not held at rest:\n{}", agent.log());
    judge(sent, capture.stop_and_frames_from(GATEWAY_MAC)?, &samples, &agent)
}

/// The same on an OVS node: the hold is the dead VLAN and `no-receive` on the port.
#[test]
fn an_ovs_standby_transmitting_into_its_hold_raises_no_alarm() -> Result<()> {
    let lab = OvsLab::build(1)?;
    let node = &lab.nodes[0];
    node.plug(&lab.lab)?;
    eventually(Duration::from_secs(10), "the port attached", || Ok(node.attached()))?;
    node.agent_wire()?;
    let state = lab.lab.file("state", "primary")?;
    let config = lab.lab.file("routers.yaml", &ovs_config(node, &state))?;
    let rundir = node.ovs.dir.clone();
    let agent = Agent::start(&lab.lab, &node.ns, &config, &[("OVS_RUNDIR", &rundir)], 1)?;
    let (qrouter, qg) = (node.qrouter.as_str(), node.qg.as_str());
    eventually(Duration::from_secs(10), "the ToR learning the primary", || {
        fdb_has_gateway_on(&lab.tor, &node.tor_port)
    })
    .with_context(|| agent.log())?;
    let capture = Capture::start(&lab.tor, &node.tor_port, lab.lab.dir.path().join("tor.pcap"))?;
    std::fs::write(&state, "backup")?;
    let back = tx_packets(&lab.lab, qrouter, qg)?;
    let held = || -> Result<bool> {
        Ok(silenced_and_up(&lab.lab, qrouter, qg)?
            && node.port_vlan()? == "4095 trunk [4095]"
            && node.no_receive()?)
    };
    eventually(Duration::from_secs(10), "held at rest", held).with_context(|| agent.log())?;

    provoke(&lab.lab, qrouter, qg)?;
    let sent = tx_packets(&lab.lab, qrouter, qg)? - back;
    let samples = samples_after_transmitting(&agent)?;
    ensure!(held()?, "not held at rest:\n{}", agent.log());
    judge(sent, capture.stop_and_frames_from(GATEWAY_MAC)?, &samples, &agent)
}

/// One router on the OVS node, `l2-hold`, its role from `state`.
fn ovs_config(node: &OvsNode, state: &Path) -> String {
    format!(
        "ovsdb: {endpoint}\n\
         routers:\n\
         \x20 - id: r1\n\
         \x20   namespace: {ns}\n\
         \x20   gatewayDevice: {qg}\n\
         \x20   gatewayAddresses: [{GATEWAY_CIDR}, \"{GATEWAY_CIDR6}\"]\n\
         \x20   routes: [{{destination: 0.0.0.0/0, via: {EXTERNAL_IP}}}]\n\
         \x20   backend: {{ovs: {{port: {port}}}}}\n\
         \x20   strategy: l2-hold\n\
         \x20   announce: {{repeats: 0}}\n\
         \x20   role: {{stateFile: {state}}}\n",
        endpoint = node.ovs.endpoint(),
        ns = node.qrouter,
        qg = node.qg,
        port = node.port,
        state = state.display(),
    )
}

/// The hold is lifted behind hagw's back (its tap taken out of the set), and a packet socket
/// in the namespace sends before hagw's next pass: the frames reach the ToR, and that pass,
/// which finds the port exposed, raises the alarm.
#[test]
fn a_standby_whose_hold_was_lifted_behind_hagws_back_raises_the_alarm() -> Result<()> {
    // No resync within the test: the only pass after the leak is the one it triggers.
    let (lb, agent) = standby_node(600)?;
    let node = &lb.nodes[0];
    let capture = Capture::start(&lb.tor, &node.tor_port, lb.lab.dir.path().join("tor.pcap"))?;
    ensure!(agent.metric(ALARM)? == 0.0, "alarm before any leak");
    node.node(&lb.lab, &format!("nft delete element bridge hagw held_ports {{ \"{TAP}\" }}"))?;
    send_garps(&lb.lab, &node.qrouter, QG, 3)?;
    // An address added behind hagw's back wakes its pass (netlink), as the L3 agent would.
    node.router(&lb.lab, &format!("ip addr add 198.51.100.7/32 dev {QG}"))?;
    // The alarm is 1 until the next quiet pass (hagw's own changes wake one at once); the
    // counter keeps what it saw.
    eventually(Duration::from_secs(10), "the leak counted", || Ok(agent.metric(LEAKED)? >= 1.0))
        .with_context(|| agent.log())?;
    eventually(Duration::from_secs(5), "held again", || held_at_rest(&lb, node))?;
    let frames = capture.stop_and_frames_from(GATEWAY_MAC)?;
    ensure!(!frames.is_empty(), "no leak at the ToR, so no alarm to expect");
    let log = agent.log();
    ensure!(log.contains("leak alarm"), "no leak alarm warning:\n{log}");
    eprintln!("at the ToR: {} frames; counted: {}", frames.len(), agent.metric(LEAKED)?);
    Ok(())
}
