//! A network node reboots while its router is standby, on the real node with real keepalived
//! and OVS, judged at the ToR: the node's kubelet, containerd and containers and its router
//! (keepalived, namespace, ports) lose power, then the node's services and Neutron's agents
//! (stand-ins) start again with Neutron's agents before, together with and after hagw's pod.
//! Neutron's agents wait for hagw's ready file, as docs/kubernetes.md ("Node reboot") tells an
//! operator to configure them; no frame from the rebooted standby may reach the ToR in any
//! order, and it must still take over afterwards. Two kinds of router: an HARouter's, and one
//! the pod discovers with the chart's default Neutron discovery (`neutron.root: process`:
//! through the root of the L3 agent's process, a stand-in for kolla-ansible's container,
//! which after the power loss runs only once Neutron's agents start).
//!
//! Knobs: `HAGW_REBOOT_ORDERS=before,together,after` (the default: all three) picks the
//! orders; `HAGW_REBOOT_GATE=0` starts Neutron's agents without waiting for the ready file (the
//! measurement without the operator's configuration): what leaked is printed, and only the
//! "after" order must be silent (hagw enforces its cached specs before the ports appear).

use std::time::Duration;

use anyhow::{Result, ensure};
use hagw_e2e::k8s::wait_for;
use hagw_e2e::keepalived::{KaLab, Rng, Wiring};
use hagw_e2e::node::{Node, Release, node};
use hagw_e2e::reboot::{ORDERS, Order, reboot};
use serde_json::Value;

fn orders() -> Result<Vec<Order>> {
    match std::env::var("HAGW_REBOOT_ORDERS") {
        Ok(list) => list.split(',').map(str::parse).collect(),
        Err(_) => Ok(ORDERS.to_vec()),
    }
}

/// Both tests install the chart, whose pod would discover the other's router too: one at a
/// time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn a_node_reboot_leaks_nothing_whichever_starts_first() -> Result<()> {
    let _serial = serial();
    let node = node();
    let mut lab = KaLab::prepare(Wiring::Ovs, [true, false])?;
    let ready = ready_file(&lab);
    let sets = [format!("readyFile={}", ready.display())];
    let (release, harouter) = node.serve_lab_node(&lab, 1, &sets)?;
    lab.boot()?;
    let entry = || node.entry(&harouter.name);
    reboots(node, &release, &mut lab, entry)
}

/// The same with a router discovered from Neutron's files (no HARouter), with the chart's
/// default discovery settings.
#[test]
fn a_node_reboot_leaks_nothing_for_discovered_routers_whichever_starts_first() -> Result<()> {
    let _serial = serial();
    let node = node();
    let mut lab = KaLab::prepare_discoverable([true, false])?;
    lab.boot()?;
    let ready = ready_file(&lab);
    let sets = [format!("readyFile={}", ready.display())];
    let release = node.discover_lab_node(&lab, 1, &sets)?;
    let id = lab.nodes[1].router_id.clone();
    let entry = || release.entry(&id);
    reboots(node, &release, &mut lab, entry)
}

/// The test's own /run/hagw/ready (a host path the chart mounts).
fn ready_file(lab: &KaLab) -> std::path::PathBuf {
    lab.lab().dir.path().join("run-hagw/ready")
}

/// Reboots node 2 (served by `release`'s pod, its router standby) once per order, counts what
/// it leaked each time, then crashes node 1's keepalived: node 2 must take over and forward,
/// and `entry` (its status entry) say so.
fn reboots(
    node: &Node,
    release: &Release,
    lab: &mut KaLab,
    entry: impl Fn() -> Result<Option<Value>>,
) -> Result<()> {
    let gated = std::env::var("HAGW_REBOOT_GATE").map_or(true, |v| v != "0");
    let ready = ready_file(lab);
    let mut rng = Rng::seeded();
    println!("HAGW_SEED={}", rng.0);
    let mut leaked = Vec::new();
    for order in orders()? {
        let from = lab.elapsed();
        reboot(node, release, lab, 1, order, (&ready, gated), &mut rng)?;
        // Three MLD queries with everything up again: a standby that answers them leaks
        // each time.
        std::thread::sleep(Duration::from_secs(7));
        let to = lab.elapsed();
        let report = lab.report();
        let frames: Vec<_> =
            report.leaks.iter().filter(|l| l.node == 2 && l.at >= from && l.at < to).collect();
        let moves = report
            .fdb
            .iter()
            .filter(|(t, owner)| *t >= from && *t < to && owner.as_deref() == Some("node2"))
            .count();
        println!(
            "Neutron's agents {order} hagw's pod ({}): {} frame(s) from the rebooted standby, \
             {moves} ToR FDB move(s) to it",
            if gated { "waiting for the ready file" } else { "not waiting" },
            frames.len()
        );
        for l in frames.iter().take(5) {
            println!("  +{:7.3}s {}", l.at, l.frame);
        }
        leaked.push((order, frames.len(), moves));
    }

    // The rebooted standby still takes over when the primary fails.
    lab.nodes[0].crash_keepalived();
    wait_for("node 2 promoted", Duration::from_secs(10), || {
        Ok(lab.nodes[1].has_vip().then_some(()))
    })?;
    lab.check_traffic(1)?;
    wait_for("the takeover reported", Duration::from_secs(20), || {
        Ok(entry()?.filter(|e| e["role"] == "primary" && e["held"] == false).map(drop))
    })?;
    let judged = |order: &Order| gated || *order == Order::After;
    ensure!(
        leaked.iter().filter(|(o, ..)| judged(o)).all(|(_, frames, moves)| *frames + *moves == 0),
        "the rebooted standby leaked (order, frames, FDB moves): {leaked:?}\n{}",
        lab.report()
    );
    Ok(())
}
