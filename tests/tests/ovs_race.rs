//! The boot race on real OVS: an emulated L3 agent (plug, link up, IPv6 flush, address add)
//! and an emulated OVS agent (wire, and re-wire as after a restart) race hagw on a standby
//! with randomized timing. hagw here is the reconcile loop over `HostDataplane` plus the
//! monitor-driven reaction the agent will have: a pass on every OVS port change and, for
//! `l2-hold`, [`keep_held`]. Judged at the ToR: no frame with the gateway MAC received from
//! the standby, and the FDB never points the gateway MAC at the standby.
//!
//! `HAGW_TRIALS` trials per strategy (default 6), spread over `HAGW_OVS_WORKERS` labs in
//! parallel (default 2). `HAGW_SEED` fixes the timing; every failure prints its seed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use futures::StreamExt;
use hagw_backends::dataplane::HostDataplane;
use hagw_backends::l2::{L2Backends, OvsBackend, ovs::keep_held};
use hagw_backends::linux::LinuxNet;
use hagw_core::model::{AnnounceSchedule, L2BackendSpec, Role, RoleSource, RouterSpec, Strategy};
use hagw_core::reconcile::{RetryPolicy, RouterMemory, reconcile_router};
use hagw_e2e::Capture;
use hagw_e2e::gateway::{GATEWAY_CIDR, GATEWAY_MAC};
use hagw_e2e::ovs::{OvsLab, OvsNode, fdb_has_gateway_on};
use tokio::sync::watch;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*: enough randomness for timing, reproducible from a printed seed.
struct Rng(u64);

impl Rng {
    fn below_ms(&mut self, max_ms: u64) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        Duration::from_millis(self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % max_ms.max(1))
    }
}

fn spec(node: &OvsNode, strategy: Strategy, role: Role) -> RouterSpec {
    RouterSpec {
        id: format!("r-{}", node.qrouter),
        namespace: node.qrouter.clone(),
        gateway_device: node.qg.clone(),
        ha_device: None,
        primary_vip: None,
        gateway_addresses: vec![GATEWAY_CIDR.parse().unwrap(), "2001:db8::10/64".parse().unwrap()],
        routes: vec![],
        backend: L2BackendSpec::Ovs { port: Some(node.port.clone()) },
        strategy,
        announce: AnnounceSchedule { repeats: 0, interval_ms: 1000 },
        role: RoleSource::Fixed(role),
        // Longer than the emulated agents stay busy (< 1 s): a release before they are done
        // lets a late address add leak under silence-only (measured: 5 of 6 with 500 ms).
        silence_settle_ms: 1500,
    }
}

/// hagw for one router until `stop`: a pass at once on every change of an OVS port and at
/// least every 100 ms; for `l2-hold` also the immediate re-hold task.
async fn hagw(ovs: OvsBackend, dataplane: HostDataplane, spec: RouterSpec, stop: Arc<AtomicBool>) {
    let role = Role::Standby;
    let _rehold = (spec.strategy == Strategy::L2Hold).then(|| {
        let (ports, watched) = watch::channel(BTreeSet::from([hold_port(&spec)]));
        let ovs = ovs.clone();
        let task = tokio::spawn(async move {
            let _ports = ports;
            let _ = keep_held(&ovs, watched).await;
        });
        AbortOnDrop(task)
    });
    let mut changes = loop {
        match ovs.changes().await {
            Ok(changes) => break changes,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut memory = RouterMemory::default();
    let policy = RetryPolicy::default();
    while !stop.load(Ordering::Relaxed) {
        let _ = reconcile_router(&dataplane, &spec, role, &mut memory, &policy).await;
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.next()).await;
    }
}

fn hold_port(spec: &RouterSpec) -> String {
    hagw_backends::l2::ovs::port_name(spec).to_owned()
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One trial on a standby; returns the frames with the gateway MAC the ToR received.
fn trial(
    lab: &OvsLab,
    rt: &tokio::runtime::Runtime,
    dp: &HostDataplane,
    strategy: Option<Strategy>,
    rng: &mut Rng,
) -> Result<Vec<String>> {
    let node = &lab.nodes[0];
    let ovs = dp.l2().ovs().expect("ovs enabled").clone();
    node.unplug(&lab.lab)?;
    // An entry learnt in an earlier trial must not count against this one.
    let forget =
        format!("bridge fdb del {GATEWAY_MAC} dev {} master 2>/dev/null || true", node.tor_port);
    lab.lab.exec(&lab.tor, &forget)?;
    let capture = Capture::start(&lab.tor, &node.tor_port, lab.lab.dir.path().join("tor.pcap"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let hagw_task = strategy.map(|strategy| {
        rt.spawn(hagw(ovs, dp.clone(), spec(node, strategy, Role::Standby), stop.clone()))
    });
    let (l3, agent) =
        (rng.below_ms(300), [rng.below_ms(400), rng.below_ms(150), rng.below_ms(400)]);
    let l3_steps = [rng.below_ms(50), rng.below_ms(300), rng.below_ms(300)];
    let restart = rng.below_ms(2) == Duration::ZERO;
    thread::scope(|s| -> Result<()> {
        let l3_agent = s.spawn(|| -> Result<()> {
            thread::sleep(l3);
            node.plug(&lab.lab)?;
            thread::sleep(l3_steps[0]);
            lab.lab.exec(&node.qrouter, &format!("ip link set {} up", node.qg))?;
            thread::sleep(l3_steps[1]);
            lab.lab.exec(&node.qrouter, &format!("ip -6 addr flush dev {}", node.qg))?;
            thread::sleep(l3_steps[2]);
            lab.lab.exec(&node.qrouter, &format!("ip addr add 2001:db8::10/64 dev {}", node.qg))?;
            Ok(())
        });
        let ovs_agent = s.spawn(|| -> Result<()> {
            thread::sleep(l3 + agent[0]);
            let deadline = Instant::now() + Duration::from_secs(5);
            while node.agent_wire().is_err() {
                ensure!(Instant::now() < deadline, "port never appeared");
                thread::sleep(agent[1].max(Duration::from_millis(10)));
            }
            if restart {
                thread::sleep(agent[2]);
                node.agent_wire()?;
            }
            Ok(())
        });
        l3_agent.join().expect("l3 agent")?;
        ovs_agent.join().expect("ovs agent")
    })?;
    // The kernel's delayed MLD retransmissions and DAD come within ~2 s; silence-only
    // releases its hold after the settle time, and what follows must be silent too.
    thread::sleep(Duration::from_millis(3000));
    stop.store(true, Ordering::Relaxed);
    if let Some(task) = hagw_task {
        rt.block_on(task)?;
    }
    let frames = capture.stop_and_frames_from(GATEWAY_MAC)?;
    if fdb_has_gateway_on(&lab.tor, &node.tor_port)? && frames.is_empty() {
        anyhow::bail!("ToR FDB has the gateway on the standby, but no frame was captured");
    }
    Ok(frames)
}

fn dataplane(node: &OvsNode) -> HostDataplane {
    HostDataplane::new(LinuxNet::default(), L2Backends::with_ovsdb(node.ovs.endpoint()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A trial that leaked: its seed, frame count and the frames.
type Leak = (u64, usize, String);

/// Runs `trials` trials (hagw with `strategy`, or none) over parallel labs; returns the leaks.
fn run(strategy: Option<Strategy>, trials: u64) -> Result<Vec<Leak>> {
    let workers = knob("HAGW_OVS_WORKERS", 2).clamp(1, trials.max(1));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let seed = knob("HAGW_SEED", now as u64);
    let name = strategy.map_or("no hagw", Strategy::as_str);
    let started = Instant::now();
    let results: Vec<Result<Vec<Leak>>> = thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || -> Result<Vec<Leak>> {
                    let lab = OvsLab::build(1)?;
                    let rt = runtime();
                    let dp = dataplane(&lab.nodes[0]);
                    let mut leaks = Vec::new();
                    for t in (w..trials).step_by(workers as usize) {
                        let trial_seed = seed.wrapping_add(t).max(1);
                        let frames = trial(&lab, &rt, &dp, strategy, &mut Rng(trial_seed))?;
                        if !frames.is_empty() {
                            leaks.push((trial_seed, frames.len(), frames.join("\n")));
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
        "ovs race {name}: {trials} trials, {} leaking, {} frames, {:.1} s (seed {seed})",
        leaks.len(),
        leaks.iter().map(|l| l.1).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    Ok(leaks)
}

/// Fails listing every leaking trial with its seed.
fn race(strategy: Strategy) -> Result<()> {
    let trials = knob("HAGW_TRIALS", 6);
    let leaks = run(Some(strategy), trials)?;
    let shown: Vec<String> =
        leaks.iter().map(|(s, n, f)| format!("seed {s}: {n} frame(s)\n{f}")).collect();
    ensure!(leaks.is_empty(), "{} of {trials} trials leaked:\n{}", leaks.len(), shown.join("\n"));
    Ok(())
}

/// The harness must be able to see the bug: without hagw the race leaks.
#[test]
fn control_without_hagw_leaks() -> Result<()> {
    let leaks = run(None, 2)?;
    ensure!(leaks.len() == 2, "only {} of 2 trials without hagw leaked", leaks.len());
    Ok(())
}

/// Not yet leak-free (6 of 200 trials leak one MLDv2 report, docs/backends.md), so a short
/// CI run would fail at random; run with `--ignored` to measure it.
#[test]
#[ignore = "known leak window after an OVS-agent retag, see docs/backends.md"]
fn race_l2_hold() -> Result<()> {
    race(Strategy::L2Hold)
}

/// Not yet leak-free (2 of 200 trials, docs/backends.md); run with `--ignored`.
#[test]
#[ignore = "known leak window before the next pass, see docs/backends.md"]
fn race_link_down() -> Result<()> {
    race(Strategy::LinkDown)
}

/// Known leak, ignored in CI: about 1 trial in 6-12 shows one MLDv2 report from `::` (see
/// docs/backends.md). Run with `--ignored` to measure it.
#[test]
#[ignore = "known leak under silence-only on OVS, see docs/backends.md"]
fn race_silence_only() -> Result<()> {
    race(Strategy::SilenceOnly)
}
