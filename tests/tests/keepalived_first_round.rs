//! A takeover never loses its first announcement: IPv4-only routers (nothing but ARP tells the
//! ToR where the new primary is), keepalived's repeated gratuitous ARPs delayed as Neutron
//! configures it (`garp_master_delay 60`) and its ARPs at the transition dropped while the
//! port is still held, failover by stopping keepalived on the primary (SIGTERM), back and
//! forth. For every takeover, hagw's first round must be captured at the new primary's ToR
//! port (a frame before round 2, 10 ms later, could have been sent). Per backend and strategy the
//! lab supports (on OVS each of the three strategies); `HAGW_FIRST_ROUND_TRIALS` takeovers
//! each (default 3). Each takeover's
//! "release applied → first announcement at the ToR" time is printed (docs/benchmarks.md).

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use hagw_e2e::keepalived::{FirstRound, KaLab, ROUND2_DUE_MS, Wiring};

fn trials() -> usize {
    std::env::var("HAGW_FIRST_ROUND_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(3)
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

fn first_round_every_takeover(wiring: Wiring, strategy: &'static str) -> Result<()> {
    assert_eq!(ROUND2_DUE_MS, hagw_core::model::ANNOUNCE_BURST_MS[0], "the judge's round 2");
    let mut lab = KaLab::build_ipv4_only_with(wiring, strategy)?;
    let wiring = format!("{}, {strategy}", wiring.to_string().split(' ').next().unwrap_or(""));
    lab.check_traffic(0)?;
    let mut primary = 0;
    let mut takeovers: Vec<FirstRound> = Vec::new();
    for trial in 1..=trials() {
        let next = 1 - primary;
        let since = now();
        lab.nodes[primary].stop_keepalived();
        lab.wait_primary(next, Duration::from_secs(10))?;
        // The burst is over 200 ms after the first round; the captures catch up.
        std::thread::sleep(Duration::from_millis(1500));
        let Some(round) = lab.first_round(next, since) else {
            bail!("{wiring}: takeover {trial} by node{}: hagw logged no announcement", next + 1);
        };
        println!("{wiring}: takeover {trial}: {round}");
        takeovers.push(round);
        lab.nodes[primary].start_keepalived()?;
        // Back to BACKUP; its hagw holds the port again before the next takeover.
        std::thread::sleep(Duration::from_secs(3));
        primary = next;
    }
    lab.check_traffic(primary)?;
    let lost: Vec<&FirstRound> = takeovers.iter().filter(|t| !t.first_captured()).collect();
    ensure!(lost.is_empty(), "{wiring}: first round missing at the ToR: {lost:#?}");
    let report = lab.report();
    ensure!(report.leaks.is_empty(), "{wiring}: standby frames at the ToR:\n{report}");
    Ok(())
}

/// Lost round 1 in some takeovers when the pass announced as soon as `qg` was up: the
/// bridge behind its veth peer enabled the port only after (backends/src/linux/forwarding.rs).
#[test]
fn generic_link_down_first_round_reaches_the_tor() -> Result<()> {
    first_round_every_takeover(Wiring::Generic, "link-down")
}

#[test]
fn linuxbridge_l2_hold_first_round_reaches_the_tor() -> Result<()> {
    first_round_every_takeover(Wiring::Linuxbridge, "l2-hold")
}

/// Lost round 1 in 51 of 200 takeovers while the datapath still cached the hold's `drop`
/// after the release (backends/src/l2/ovs/dpflows.rs).
#[test]
fn ovs_l2_hold_first_round_reaches_the_tor() -> Result<()> {
    first_round_every_takeover(Wiring::Ovs, "l2-hold")
}

#[test]
fn ovs_link_down_first_round_reaches_the_tor() -> Result<()> {
    first_round_every_takeover(Wiring::Ovs, "link-down")
}

#[test]
fn ovs_silence_only_first_round_reaches_the_tor() -> Result<()> {
    first_round_every_takeover(Wiring::Ovs, "silence-only")
}
