//! A standby's router rebooted the way Neutron does it while `hagw run` keeps running on a
//! Linux bridge node: the router namespace, its qg and the tap deleted; then `ip netns add`
//! (which creates the name a moment before it mounts the namespace on it), the veth pair
//! created with legacy IPv6 defaults, the tap enslaved and the qg set up within milliseconds,
//! and IPv6 flushed a second later. Every strategy, silence-only included (whose standby is
//! not held at rest), must let nothing with the gateway MAC reach the ToR.
//!
//! `HAGW_TRIALS` reboots per strategy (default 3); `HAGW_SEED` fixes the timing.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use hagw_e2e::gateway::GATEWAY_MAC;
use hagw_e2e::linuxbridge::{LbLab, LbNode, QG, TAP};
use hagw_e2e::{Capture, hagw_bin, sh};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `hagw run` in the node's namespace, logging to a file; killed on drop.
struct HagwRun {
    child: Child,
    log: PathBuf,
}

impl HagwRun {
    fn start(lb: &LbLab, node: &LbNode) -> Result<HagwRun> {
        let log = lb.lab.dir.path().join("hagw.log");
        let out = File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns])
            .arg(hagw_bin())
            .args(["run", "-c"])
            .arg(&node.config)
            .args(["--log-level", "info,hagw=debug", "--listen", "none"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting hagw run")?;
        Ok(HagwRun { child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HagwRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The standby at rest for its strategy: silenced, and held or down, or (silence-only) up and
/// released once silence has settled.
fn at_rest(lb: &LbLab, node: &LbNode, strategy: &str) -> Result<bool> {
    let gen_mode = node.router(&lb.lab, &format!("cat /proc/sys/net/ipv6/conf/{QG}/addr_gen_mode"));
    if gen_mode.map(|m| m.trim() != "1").unwrap_or(true) {
        return Ok(false);
    }
    let held = node.tap_in_held_set(&lb.lab)?;
    let up = node.router(&lb.lab, &format!("ip -o link show {QG}"))?.contains(",UP");
    Ok(match strategy {
        "silence-only" => up && !held,
        "l2-hold" => up && held,
        _ => !up,
    })
}

fn wait_at_rest(lb: &LbLab, node: &LbNode, strategy: &str, hagw: &HagwRun) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !at_rest(lb, node, strategy)? {
        if Instant::now() > deadline {
            bail!("{strategy}: the standby did not come to rest:\n{}", hagw.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The reboot of one router on the node, as the agents do it after the node booted.
fn reboot(lb: &LbLab, node: &LbNode, gap: Duration) -> Result<()> {
    node.delete_veth(&lb.lab)?;
    // From the host's mount namespace: `ip netns exec` runs in a private one, where a
    // namespace added would be mounted for that command only.
    sh(&format!("ip netns del {}", node.qrouter))?;
    std::thread::sleep(gap);
    // Namespace, veth, enslaved tap and qg up in one go: milliseconds apart.
    sh(&format!("ip netns add {q} && ip -n {q} link set lo up", q = node.qrouter))?;
    sh(&format!(
        "ip link add {TAP} netns {n} type veth peer name {QG} netns {q} && \
         ip -n {q} link set {QG} address {GATEWAY_MAC} && \
         ip netns exec {q} sysctl -qw net.ipv6.conf.{QG}.forwarding=1",
        n = node.ns,
        q = node.qrouter
    ))?;
    node.plug(&lb.lab)?;
    node.qg(&lb.lab, &format!("link set {QG} up"))?;
    std::thread::sleep(Duration::from_secs(1));
    node.qg(&lb.lab, &format!("-6 addr flush dev {QG}"))
}

fn reboots(strategy: &str) -> Result<()> {
    let seed = knob("HAGW_SEED", SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64);
    println!("{strategy}: HAGW_SEED={seed}");
    let lb = LbLab::build(1, strategy)?;
    let node = &lb.nodes[0];
    node.create_veth(&lb.lab, true)?;
    node.plug(&lb.lab)?;
    node.qg(&lb.lab, &format!("link set {QG} up"))?;
    let hagw = HagwRun::start(&lb, node)?;
    wait_at_rest(&lb, node, strategy, &hagw)?;
    for trial in 0..knob("HAGW_TRIALS", 3) {
        let gap = Duration::from_millis((seed.wrapping_mul(trial + 1) >> 7) % 300);
        let pcap = lb.lab.dir.path().join(format!("tor{trial}.pcap"));
        let capture = Capture::start(&lb.tor, &node.tor_port, pcap)?;
        reboot(&lb, node, gap)?;
        wait_at_rest(&lb, node, strategy, &hagw)?;
        let frames = capture.stop_and_frames_from(GATEWAY_MAC)?;
        ensure!(
            frames.is_empty(),
            "{strategy}: trial {trial} (gap {gap:?}) leaked {} frame(s):\n{}\nhagw:\n{}",
            frames.len(),
            frames.join("\n"),
            hagw.log()
        );
    }
    Ok(())
}

#[test]
fn silence_only_standby_survives_a_router_reboot() -> Result<()> {
    reboots("silence-only")
}

#[test]
fn l2_hold_standby_survives_a_router_reboot() -> Result<()> {
    reboots("l2-hold")
}

#[test]
fn link_down_standby_survives_a_router_reboot() -> Result<()> {
    reboots("link-down")
}
