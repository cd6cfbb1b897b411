//! The boot race on Linux bridge: an emulated L3 agent and an emulated Linuxbridge agent
//! race hagw (the real binary, `reconcile --once` restarted at random intervals inside each
//! node's namespace) on two standby nodes. Then node 1 becomes primary. Judged at the ToR:
//! no frame with the gateway MAC from a node while it is standby, the FDB never points the
//! gateway MAC at the standby, and after node 1's release the external host reaches the
//! gateway.
//!
//! Three agent profiles, because the strategies promise different things:
//! - `hostile` (l2-hold): hagw's first pass runs at boot, before anything exists. Then the
//!   L3 agent creates the veth with legacy IPv6 defaults (link-local, forwarding on), sets
//!   the link up, flushes IPv6, adds and removes the gateway addresses, re-creates the veth;
//!   the Linuxbridge agent plugs, unplugs, flaps carrier and re-creates the veth.
//! - `gentle` (silence-only; `quiet` = gentle without the later link up, for link-down, whose
//!   guard any link up lifts): hagw's first pass runs once the L3 agent has
//!   created the qg (up, legacy IPv6) but before the Linuxbridge agent noticed the tap (it
//!   polls). Then: plug, unplug, carrier flaps, link up, IPv6 flush. No new devices and no
//!   addresses on the standby: a new qg comes up with kernel defaults and an address makes
//!   the kernel talk at once, and only an L2 hold by name covers those (the ignored
//!   `hostile_*` tests measure it).
//!
//! `HAGW_TRIALS` trials per strategy (default 4), `HAGW_LB_WORKERS` labs in parallel
//! (default 3), `HAGW_SEED` fixes the timing; every leaking trial prints its seed.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use hagw_e2e::Capture;
use hagw_e2e::gateway::GATEWAY_MAC;
use hagw_e2e::linuxbridge::{GATEWAY_CIDR6, LbLab, LbNode, QG};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*: enough randomness for timing, reproducible from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn ms(&mut self, max_ms: u64) -> Duration {
        Duration::from_millis(self.below(max_ms))
    }

    fn fork(&mut self) -> Rng {
        Rng(self.next().max(1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    Hostile,
    Gentle,
    /// Gentle, but the L3 agent never raises the standby's link after hagw's first pass.
    Quiet,
}

/// One L3 agent step on a standby.
fn l3_step(lb: &LbLab, node: &LbNode, profile: Profile, rng: &mut Rng) -> Result<()> {
    let choices = match profile {
        Profile::Hostile => 5,
        Profile::Gentle => 2,
        Profile::Quiet => 1,
    };
    match rng.below(choices) {
        0 => node.qg(&lb.lab, &format!("-6 addr flush dev {QG}")),
        1 => node.qg(&lb.lab, &format!("link set {QG} up")),
        2 => {
            node.qg(&lb.lab, &format!("addr add {GATEWAY_CIDR6} dev {QG}"))?;
            thread::sleep(rng.ms(100));
            node.qg(&lb.lab, &format!("-6 addr flush dev {QG}"))
        }
        3 => node
            .router(&lb.lab, &format!("sysctl -qw net.ipv6.conf.{QG}.forwarding=1 || true"))
            .map(drop),
        _ => recreate(lb, node),
    }
}

/// One Linuxbridge agent step.
fn lb_step(lb: &LbLab, node: &LbNode, profile: Profile, rng: &mut Rng) -> Result<()> {
    let choices = if profile == Profile::Hostile { 4 } else { 3 };
    match rng.below(choices) {
        0 => {
            node.unplug(&lb.lab)?;
            thread::sleep(rng.ms(50));
            node.plug(&lb.lab)
        }
        1 => {
            node.tap_carrier(&lb.lab, false)?;
            thread::sleep(rng.ms(50));
            node.tap_carrier(&lb.lab, true)
        }
        2 => node.plug(&lb.lab),
        _ => {
            recreate(lb, node)?;
            node.plug(&lb.lab)
        }
    }
}

/// The veth deleted and created again the legacy way, its qg up.
fn recreate(lb: &LbLab, node: &LbNode) -> Result<()> {
    node.delete_veth(&lb.lab)?;
    create_up(lb, node)
}

fn create_up(lb: &LbLab, node: &LbNode) -> Result<()> {
    // Either agent may have re-created it in the meantime.
    let _ = node.create_veth(&lb.lab, true);
    node.qg(&lb.lab, &format!("link set {QG} up"))
}

/// One node's race: both agents and (unless `hagw` is false) hagw restarted in a loop.
fn race_node(lb: &LbLab, node: &LbNode, profile: Profile, hagw: bool, mut rng: Rng) -> Result<()> {
    let (mut l3, mut agent, mut hagw_rng) = (rng.fork(), rng.fork(), rng.fork());
    let done = std::sync::atomic::AtomicBool::new(false);
    thread::scope(|s| -> Result<()> {
        let hagw_loop = s.spawn(|| {
            while hagw && !done.load(std::sync::atomic::Ordering::Relaxed) {
                thread::sleep(hagw_rng.ms(150));
                // A pass may fail mid-race (a device vanishing under it); the next restart
                // picks up, as a supervisor would restart a real hagw.
                let _ = node.hagw_once();
            }
        });
        let l3_agent = s.spawn(move || -> Result<()> {
            if profile == Profile::Hostile {
                thread::sleep(l3.ms(300));
                create_up(lb, node)?;
            }
            for _ in 0..1 + l3.below(5) {
                thread::sleep(l3.ms(250));
                l3_step(lb, node, profile, &mut l3)?;
            }
            Ok(())
        });
        let lb_agent = s.spawn(move || -> Result<()> {
            // The agent's poll finds the new tap some time after it appeared.
            thread::sleep(agent.ms(400));
            node.plug(&lb.lab)?;
            for _ in 0..agent.below(5) {
                thread::sleep(agent.ms(250));
                lb_step(lb, node, profile, &mut agent)?;
            }
            Ok(())
        });
        let agents = l3_agent.join().expect("l3 agent").and(lb_agent.join().expect("lb agent"));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        hagw_loop.join().expect("hagw loop");
        agents
    })?;
    // The agents' last word: the port exists, is up and plugged.
    match profile {
        Profile::Hostile => create_up(lb, node)?,
        Profile::Gentle => node.qg(&lb.lab, &format!("link set {QG} up"))?,
        Profile::Quiet => {}
    }
    node.plug(&lb.lab)
}

/// What a trial saw: frames from a standby, and whether the primary was reachable.
struct Outcome {
    frames: Vec<String>,
    fdb_on_standby: bool,
    /// `tcpdump -vv` of the leaked frames (MLD group records, DAD targets).
    decoded: String,
}

fn trial(strategy: Option<&str>, profile: Profile, mut rng: Rng) -> Result<Outcome> {
    let lb = LbLab::build(2, strategy.unwrap_or("l2-hold"))?;
    let dir = lb.lab.dir.path();
    let captures = [
        Capture::start(&lb.tor, &lb.nodes[0].tor_port, dir.join("t1.pcap"))?,
        Capture::start(&lb.tor, &lb.nodes[1].tor_port, dir.join("t2.pcap"))?,
    ];
    let hagw = strategy.is_some();
    let seeds = [rng.fork(), rng.fork()];
    thread::scope(|s| -> Result<()> {
        let runs: Vec<_> = lb
            .nodes
            .iter()
            .zip(seeds)
            .map(|(node, seed)| {
                let lb = &lb;
                s.spawn(move || -> Result<()> {
                    if profile != Profile::Hostile {
                        node.create_veth(&lb.lab, true)?;
                        node.qg(&lb.lab, &format!("link set {QG} up"))?;
                    }
                    if hagw {
                        node.hagw_converge()?;
                    }
                    race_node(lb, node, profile, hagw, seed)?;
                    if hagw {
                        node.hagw_converge()?;
                    }
                    Ok(())
                })
            })
            .collect();
        runs.into_iter().try_for_each(|r| r.join().expect("node"))
    })?;
    // The kernel's delayed MLD retransmissions and DAD come within ~1 s of the last step.
    thread::sleep(Duration::from_millis(1500));
    let [c1, c2] = captures;
    let mut frames = c1.stop_and_frames_from(GATEWAY_MAC)?;
    let fdb_on_standby = lb.fdb_has_gateway_on(&lb.nodes[1].tor_port)?;
    if hagw {
        let primary = &lb.nodes[0];
        primary.set_role("primary")?;
        primary.hagw_converge()?;
        lb.ping_gateway(5)?;
        ensure!(lb.fdb_has_gateway_on(&primary.tor_port)?, "ToR did not learn the primary");
    }
    frames.extend(c2.stop_and_frames_from(GATEWAY_MAC)?);
    let fdb_on_standby = fdb_on_standby || lb.fdb_has_gateway_on(&lb.nodes[1].tor_port)?;
    let mut decoded = String::new();
    if !frames.is_empty() {
        // The decoded frames (MLD group records, DAD targets) say which kernel path leaked.
        for pcap in ["t1.pcap", "t2.pcap"] {
            let path = dir.join(pcap);
            let cmd = format!(
                "tcpdump -r {} -vv -nn 'ether src {GATEWAY_MAC}' 2>/dev/null",
                path.display()
            );
            decoded.push_str(&hagw_e2e::sh(&cmd)?);
        }
    }
    Ok(Outcome { frames, fdb_on_standby, decoded })
}

/// A trial that leaked: its seed, frame count and the frames.
type Leak = (u64, usize, String);

/// Runs `trials` trials over parallel workers; returns the leaking ones.
fn run(strategy: Option<&str>, profile: Profile, trials: u64) -> Result<Vec<Leak>> {
    let workers = knob("HAGW_LB_WORKERS", 3).clamp(1, trials.max(1));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let seed = knob("HAGW_SEED", now as u64);
    let started = Instant::now();
    let results: Vec<Result<Vec<Leak>>> = thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || -> Result<Vec<Leak>> {
                    let mut leaks = Vec::new();
                    for t in (w..trials).step_by(workers as usize) {
                        let trial_seed = seed.wrapping_add(t).max(1);
                        let out = trial(strategy, profile, Rng(trial_seed))
                            .map_err(|e| e.context(format!("trial with seed {trial_seed}")))?;
                        if !out.frames.is_empty() || out.fdb_on_standby {
                            let text = format!(
                                "fdb on standby: {}\n{}\n{}",
                                out.fdb_on_standby,
                                out.frames.join("\n"),
                                out.decoded
                            );
                            leaks.push((trial_seed, out.frames.len(), text));
                        }
                    }
                    Ok(leaks)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker")).collect()
    });
    let mut leaks = Vec::new();
    for result in results {
        leaks.extend(result?);
    }
    eprintln!(
        "linuxbridge race {} ({profile:?}): {trials} trials, {} leaking, {} frames, {:.1} s (seed {seed})",
        strategy.unwrap_or("no hagw"),
        leaks.len(),
        leaks.iter().map(|l| l.1).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    Ok(leaks)
}

/// Fails listing every leaking trial with its seed.
fn race(strategy: &str, profile: Profile) -> Result<()> {
    let trials = knob("HAGW_TRIALS", 4);
    let leaks = run(Some(strategy), profile, trials)?;
    let shown: Vec<String> =
        leaks.iter().map(|(s, n, f)| format!("seed {s}: {n} frame(s)\n{f}")).collect();
    ensure!(leaks.is_empty(), "{} of {trials} trials leaked:\n{}", leaks.len(), shown.join("\n"));
    Ok(())
}

/// The harness must be able to see the bug: without hagw even the gentle race leaks.
#[test]
fn control_without_hagw_leaks() -> Result<()> {
    let leaks = run(None, Profile::Gentle, 2)?;
    ensure!(leaks.len() == 2, "only {} of 2 trials without hagw leaked", leaks.len());
    Ok(())
}

#[test]
fn race_l2_hold() -> Result<()> {
    race("l2-hold", Profile::Hostile)
}

#[test]
fn race_link_down() -> Result<()> {
    race("link-down", Profile::Quiet)
}

/// Measures link-down when the L3 agent raises the standby's link again: the kernel sends
/// the MLD leave it queued while the link was down (forwarding turned off) at once.
#[test]
#[ignore = "measurement: link-down leaks when the L3 agent raises the link, see docs/backends.md"]
fn gentle_link_down() -> Result<()> {
    race("link-down", Profile::Gentle)
}

#[test]
fn race_silence_only() -> Result<()> {
    race("silence-only", Profile::Gentle)
}

/// Measures what link-down cannot cover (new devices, addresses on the standby).
#[test]
#[ignore = "measurement: link-down leaks in the hostile race, see docs/backends.md"]
fn hostile_link_down() -> Result<()> {
    race("link-down", Profile::Hostile)
}

/// Measures what silence-only cannot cover (new devices, addresses on the standby).
#[test]
#[ignore = "measurement: silence-only leaks in the hostile race, see docs/backends.md"]
fn hostile_silence_only() -> Result<()> {
    race("silence-only", Profile::Hostile)
}
