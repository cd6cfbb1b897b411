//! Benchmark 2, mass failover: the shared state file says `primary`, every router takes over at once.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::ctx::{Ctx, stop};
use super::fleet::{Fleet, fleet_mac};
use super::idle::{clk_tck, proc_sample};
use super::log::Log;
use super::stats::{Dist, Table};
use super::takeover::start_arp_capture;
use super::{ms, now};

/// Rewrites the fleet's state file to `primary` and times the first gARP of every router.
pub(super) fn measure(
    ctx: &Ctx,
    fleet: &Fleet,
    pid: u32,
    log: &Log,
    table: &mut Table,
    notes: &mut Vec<String>,
) -> Result<()> {
    let n = fleet.n;
    eprintln!("mass failover of {n} routers ...");
    let (arp_tx, arp_rx) = channel();
    let capture = start_arp_capture(ctx, &fleet.tor, "any", arp_tx)?;
    std::thread::sleep(Duration::from_millis(200));
    while arp_rx.try_recv().is_ok() {}
    let from = log.len();
    let cpu_before = proc_sample(pid)?;
    let t0 = now();
    std::fs::write(&fleet.state, "primary")?;
    let wanted: HashSet<String> = (0..n).map(fleet_mac).collect();
    let mut garp: HashMap<String, f64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while garp.len() < n && Instant::now() < deadline {
        if let Ok((ts, mac)) = arp_rx.recv_timeout(Duration::from_millis(50))
            && wanted.contains(&mac)
        {
            garp.entry(mac).or_insert(ts);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let (transitions, failures) = loop {
        let (seen, failures) = log.routers_with(from, "transition reconciled", Some("primary"));
        if seen.len() >= n || Instant::now() > deadline {
            break (seen, failures);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let cpu_after = proc_sample(pid)?;
    stop(capture);
    notes.push(format!(
        "mass failover: hagw CPU {:.2} s ({:.2} s in the kernel) until all were announced and logged",
        (cpu_after.ticks - cpu_before.ticks) as f64 / clk_tck(),
        (cpu_after.sys_ticks - cpu_before.sys_ticks) as f64 / clk_tck(),
    ));
    let arps = Dist::of(garp.values().map(|ts| ms(ts - t0)).collect());
    let logged = Dist::of(transitions.values().map(|ts| ms(ts - t0)).collect());
    notes.push(format!(
        "mass failover ({n} routers, one state file rewritten): first gARP per router after the write: {}",
        arps.show()
    ));
    notes.push(format!(
        "  'transition reconciled' logged after the write: {}; {} warnings",
        logged.show(),
        failures.len()
    ));
    for f in failures.iter().take(5) {
        notes.push(format!("  warning: {} {}", f.router.as_deref().unwrap_or("-"), f.message));
    }
    table.row(
        &format!("2 mass failover, {n} routers ({}): last gARP", fleet.label),
        format!("{:.0} ms ({} of {n} announced; p50 {:.0} ms)", arps.max, arps.n, arps.p50),
        "<= 250 ms",
        Some(arps.max <= 250.0 && arps.n == n),
    );
    Ok(())
}
