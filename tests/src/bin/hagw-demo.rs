//! The demo: a two-node L3-HA testbed with real keepalived (Neutron's configuration) behind a
//! ToR switch with an MLD querier (see `hagw_e2e::keepalived`). It runs the same story without
//! and with hagw on both nodes: the standby's router reboots (its ports re-created, racing the
//! agents), then the primary's keepalived is killed and the standby takes over. It prints what
//! the ToR saw: frames with the gateway MAC from a node that was not primary, the ToR's FDB
//! owner of the gateway MAC over time, and the takeover time (primary VIP appears → first
//! gratuitous ARP at the ToR). Everything is removed at the end, also on Ctrl-C.
//!
//! Usage: hagw-demo [--without-hagw | --with-hagw] [--linuxbridge | --generic]
//! (default: both runs, on Open vSwitch).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hagw_e2e::gateway::{EXTERNAL_IP, GATEWAY_IP, GATEWAY_MAC};
use hagw_e2e::keepalived::{FIP, KaLab, REMOTE_IP, Report, Rng, Wiring};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Sleeps, returning an error as soon as Ctrl-C was pressed, so the lab is dropped (and
/// torn down) on the way out.
fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn step(text: &str) -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    println!("  - {text}");
    Ok(())
}

fn install_ctrl_c() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async {
            while tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nhagw-demo: interrupted, tearing the testbed down…");
                INTERRUPTED.store(true, Ordering::SeqCst);
            }
        });
    });
}

fn main() {
    // The hagw binary next to this one (the harness looks for it from a test's deps/ dir).
    if std::env::var_os("HAGW_BIN").is_none()
        && let Some(bin) = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join("hagw")))
    {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("HAGW_BIN", bin) };
    }
    install_ctrl_c();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let wiring = if has("--linuxbridge") {
        Wiring::Linuxbridge
    } else if has("--generic") {
        Wiring::Generic
    } else {
        Wiring::Ovs
    };
    if has("--help") || has("-h") {
        println!(
            "usage: hagw-demo [--without-hagw | --with-hagw] [--linuxbridge | --generic]\n\
             default: the run without hagw, then the run with hagw, on Open vSwitch"
        );
        return;
    }
    let runs: Vec<bool> = if has("--without-hagw") {
        vec![false]
    } else if has("--with-hagw") {
        vec![true]
    } else {
        vec![false, true]
    };
    let mut failed = false;
    let mut results = Vec::new();
    for with_hagw in runs {
        match run(wiring, with_hagw) {
            Ok(report) => results.push((with_hagw, report)),
            Err(e) => {
                eprintln!("hagw-demo: {e:#}");
                failed = true;
                break;
            }
        }
    }
    if results.len() == 2 {
        println!("== summary ({wiring})");
        for (with_hagw, report) in &results {
            let label = if *with_hagw { "with hagw   " } else { "without hagw" };
            let moves = fdb_moves(report);
            println!(
                "  {label}: {} frame(s) with the gateway MAC from a non-primary node at the ToR, \
                 the ToR's FDB entry moved {moves} time(s); takeover: {}",
                report.leaks.len(),
                last_takeover(report)
            );
        }
    }
    if results.iter().any(|(with_hagw, r)| *with_hagw && !r.leaks.is_empty()) {
        eprintln!("hagw-demo: hagw let frames through (see above)");
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
}

fn run(wiring: Wiring, with_hagw: bool) -> Result<Report> {
    let title = if with_hagw { "WITH hagw on both nodes" } else { "WITHOUT hagw (the bug)" };
    println!("\n== {title}: two nodes, {wiring}, real keepalived, ToR with an MLD querier");
    if wiring == Wiring::Generic {
        println!(
            "  (generic: hagw is told nothing about the L2 and keeps the standby's link down)"
        );
    }
    step("building the testbed; node1 becomes primary (VRRP election, ~4 s)")?;
    let mut lab = KaLab::build(wiring, with_hagw)?;
    println!("    testbed namespaces: *-{} (removed at the end)", lab.lab().id);
    traffic(&lab, 0)?;
    step("rebooting the standby's router (node2): ports re-created, L2 and L3 agents racing")?;
    let mut rng = Rng::seeded();
    lab.reboot_router(1, &mut rng)?;
    step("waiting 7 s (the ToR's MLD querier asks every 3 s)")?;
    pause(Duration::from_secs(7))?;
    traffic(&lab, 0)?;
    step("killing keepalived on the primary (node1)")?;
    let start = Instant::now();
    lab.nodes[0].stop_keepalived();
    while !lab.nodes[1].has_vip() {
        pause(Duration::from_millis(20))?;
        if start.elapsed() > Duration::from_secs(10) {
            bail!("node2 never became primary");
        }
    }
    step(&format!("node2 has the primary VIP after {:.2} s", start.elapsed().as_secs_f64()))?;
    pause(Duration::from_millis(300))?;
    traffic(&lab, 1)?;
    pause(Duration::from_secs(2))?;
    let report = lab.report();
    println!("  result:");
    for line in report.to_string().lines() {
        println!("    {line}");
    }
    Ok(report)
}

/// Pings that show whether the external network reaches the router, printed, not judged.
fn traffic(lab: &KaLab, primary: usize) -> Result<()> {
    let node = &lab.nodes[primary];
    let ping = |ns: &str, target: &str| {
        lab.lab().exec(ns, &format!("ping -q -c 1 -W 1 {target} >/dev/null")).is_ok()
    };
    let ok = |b: bool| if b { "ok" } else { "FAILED" };
    let route = node.default_route().contains(&format!("via {EXTERNAL_IP}"));
    println!(
        "    traffic to node{}: gateway {GATEWAY_IP} {}, floating IP {FIP} {}, remote {REMOTE_IP} \
         via the default route {}, default route {}",
        node.index,
        ok(ping(&lab.external, GATEWAY_IP)),
        ok(ping(&lab.external, FIP)),
        ok(ping(&lab.remote, FIP)),
        ok(route)
    );
    Ok(())
}

fn fdb_moves(report: &Report) -> usize {
    let mut owners: Vec<&Option<String>> = report.fdb.iter().map(|(_, o)| o).collect();
    owners.dedup();
    owners.len().saturating_sub(1)
}

fn last_takeover(report: &Report) -> String {
    let ms = |d: Option<Duration>| match d {
        Some(d) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
        None => "never".into(),
    };
    match report.takeovers.last() {
        Some(t) => format!(
            "VIP -> first gARP from {GATEWAY_MAC} at the ToR {}, -> first frame {}",
            ms(t.garp_after),
            ms(t.frame_after)
        ),
        None => "(none)".into(),
    }
}
