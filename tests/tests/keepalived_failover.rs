//! Real keepalived on two nodes with hagw on both (see `hagw_e2e::keepalived`): failover both
//! ways, judged at the ToR.

use std::time::Duration;

use anyhow::{Result, ensure};
use hagw_e2e::keepalived::{KaLab, Wiring};

fn failover_both_ways(wiring: Wiring) -> Result<()> {
    let mut lab = KaLab::build(wiring, true)?;
    lab.check_traffic(0)?;
    // keepalived stopped on the primary: node2 takes over.
    lab.nodes[0].stop_keepalived();
    lab.wait_primary(1, Duration::from_secs(10))?;
    lab.check_traffic(1)?;
    lab.nodes[0].start_keepalived()?;
    std::thread::sleep(Duration::from_secs(2));
    // The HA link of the new primary goes down: node1 takes over again.
    lab.ha_link(1, false)?;
    lab.wait_primary(0, Duration::from_secs(10))?;
    lab.check_traffic(0)?;
    lab.ha_link(1, true)?;
    std::thread::sleep(Duration::from_secs(4));
    lab.check_traffic(0)?;
    let report = lab.report();
    println!("{wiring}:\n{report}");
    ensure!(report.leaks.is_empty(), "{wiring}: standby frames at the ToR:\n{report}");
    Ok(())
}

#[test]
fn ovs_failover_both_ways() -> Result<()> {
    failover_both_ways(Wiring::Ovs)
}

#[test]
fn generic_failover_both_ways() -> Result<()> {
    failover_both_ways(Wiring::Generic)
}
