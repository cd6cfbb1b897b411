//! Real keepalived on two nodes with hagw on both (see `hagw_e2e::keepalived`): the standby's
//! router re-created racing the agents, keepalived crashing on the primary, and hagw restarted
//! during a failover. Judged at the ToR with its MLD querier running.

use std::time::Duration;

use anyhow::{Result, ensure};
use hagw_e2e::keepalived::{KaLab, Rng, Wiring};

/// The standby reboots while hagw runs (its ports re-created, the L2 agent's wiring racing the
/// L3 agent), a few MLD query intervals pass, then keepalived crashes on the primary (VIPs
/// left behind) and the rebooted node takes over; with `respawn`, the crashed keepalived is
/// then started again (it removes its stale VIPs, as after Neutron's process monitor).
fn reboot_then_crash(wiring: Wiring, respawn: bool) -> Result<()> {
    let mut rng = Rng::seeded();
    println!("{wiring}: HAGW_SEED={}", rng.0);
    let mut lab = KaLab::build(wiring, true)?;
    let took = lab.reboot_then_crash(&mut rng)?;
    println!("{wiring}: VRRP took over {took:?} after the crash");
    let report = lab.report();
    println!("{wiring}:\n{report}");
    ensure!(report.leaks.is_empty(), "{wiring}: standby frames at the ToR:\n{report}");
    if respawn {
        // Neutron's process monitor respawns keepalived on the crashed node: it starts as
        // BACKUP and removes the stale VIPs; the port has been held since keepalived died.
        lab.nodes[0].start_keepalived()?;
        lab.wait_primary(1, Duration::from_secs(5))?;
        std::thread::sleep(Duration::from_secs(4));
        lab.check_traffic(1)?;
        let report = lab.report();
        println!("{wiring} after the respawn:\n{report}");
        ensure!(
            report.leaks.is_empty(),
            "{wiring}: frames at the ToR after the respawn:\n{report}"
        );
    }
    Ok(())
}

#[test]
fn ovs_standby_reboot_then_keepalived_crash() -> Result<()> {
    reboot_then_crash(Wiring::Ovs, false)
}

#[test]
fn generic_standby_reboot_then_keepalived_crash() -> Result<()> {
    reboot_then_crash(Wiring::Generic, false)
}

/// Neutron's process monitor respawns the crashed keepalived: it starts as BACKUP and removes
/// its stale VIPs, among them the link-local VIP on qg, for which the kernel sends an MLDv2
/// report at once. hagw held that node's port as soon as its keepalived died (its VIP and
/// state file stayed behind, stale), so the report goes nowhere.
#[test]
fn generic_keepalived_respawn_after_crash() -> Result<()> {
    reboot_then_crash(Wiring::Generic, true)
}

#[test]
fn ovs_keepalived_respawn_after_crash() -> Result<()> {
    reboot_then_crash(Wiring::Ovs, true)
}

/// hagw is down on the standby when the failover starts and comes back after keepalived made
/// it primary; the old primary's hagw is restarted right after it was demoted.
#[test]
fn ovs_hagw_restarted_during_failover() -> Result<()> {
    let mut lab = KaLab::build(Wiring::Ovs, true)?;
    lab.check_traffic(0)?;
    lab.nodes[1].kill_hagw();
    lab.nodes[0].stop_keepalived();
    lab.wait_primary(1, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    lab.nodes[1].start_hagw()?;
    lab.check_traffic(1)?;
    lab.nodes[0].start_keepalived()?;
    lab.nodes[0].kill_hagw();
    lab.nodes[0].start_hagw()?;
    std::thread::sleep(Duration::from_secs(7));
    lab.check_traffic(1)?;
    let report = lab.report();
    println!("hagw restart:\n{report}");
    ensure!(report.leaks.is_empty(), "standby frames at the ToR:\n{report}");
    Ok(())
}
