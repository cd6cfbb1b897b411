//! The agent's pod through what happens to pods in production, on the real node with real
//! keepalived, judged at the ToR: deleted, upgraded to another image tag, SIGKILLed and
//! OOM-killed, while its router is standby (no frame may leak) and while it is primary (no
//! ping through it may be lost); and absent (no pod on the node) while keepalived promotes
//! the standby it held: the router stays dark until the agent is back, then recovers.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use hagw_e2e::disrupt::{self, Pinger};
use hagw_e2e::k8s::wait_for;
use hagw_e2e::keepalived::{FIP, KaLab, Wiring};
use hagw_e2e::node::{IMAGE_TAG, Node, node};

/// The tests here share the one node and its DaemonSet: one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until the router's status entry (written by the current agent) says `role`, and
/// held for a standby, released for a primary.
fn wait_reported(node: &Node, harouter: &str, role: &str) -> Result<()> {
    wait_for(&format!("{role} reported"), Duration::from_secs(60), || {
        let entry = node.entry(harouter)?;
        Ok(entry.filter(|e| e["role"] == role && e["held"] == (role == "standby")).map(drop))
    })
}

fn wait_vip(lab: &KaLab, i: usize) -> Result<()> {
    wait_for("the VIP on the new primary", Duration::from_secs(10), || {
        Ok(lab.nodes[i].has_vip().then_some(()))
    })
}

#[test]
fn restarts_upgrades_and_crashes_leak_nothing_and_lose_no_ping() -> Result<()> {
    let _serial = serial();
    let node = node();
    let mut lab = KaLab::prepare(Wiring::Ovs, [true, false])?;
    let (release, harouter) = node.serve_lab_node(&lab, 1, &[])?;
    lab.boot()?;
    let mut tag = IMAGE_TAG.to_string();

    for what in disrupt::ALL {
        disrupt::disrupt(node, &release, what, &mut tag)?;
        wait_reported(node, &harouter.name, "standby")?;
        println!("standby through {what:?}: replaced");
    }
    let report = lab.report();
    ensure!(report.leaks.is_empty(), "the standby leaked while its agent was disrupted:\n{report}");

    lab.nodes[0].crash_keepalived();
    wait_vip(&lab, 1)?;
    lab.check_traffic(1)?;
    wait_reported(node, &harouter.name, "primary")?;
    for what in disrupt::ALL {
        let pings = Pinger::start(&lab.external, FIP)?;
        std::thread::sleep(Duration::from_secs(1));
        disrupt::disrupt(node, &release, what, &mut tag)?;
        wait_reported(node, &harouter.name, "primary")?;
        std::thread::sleep(Duration::from_secs(2));
        let (sent, lost, slowest) = pings.stop_with_max_rtt()?;
        println!("primary through {what:?}: {lost} of {sent} pings lost, slowest {slowest:?}");
        ensure!(sent > 20, "too few pings ({sent}) to judge {what:?}");
        ensure!(lost == 0, "{lost} of {sent} pings through the primary lost during {what:?}");
        // A ping queued while the path was down comes back late instead of not at all: one
        // answered after ping's own timeout (1 s) was lost for any application.
        ensure!(slowest < Duration::from_secs(1), "a ping took {slowest:?} during {what:?}");
    }
    let report = lab.report();
    ensure!(report.leaks.is_empty(), "a node leaked:\n{report}");
    Ok(())
}

/// No agent on the node (a drain, a failed image pull, a crash loop): keepalived promotes
/// the standby the agent held, and the port stays held (dark) until an agent is back — a
/// standby never speaks unless hagw decided it may. The time from the agent's return to
/// traffic through the new primary is printed (docs/kubernetes.md, "Agent absent").
#[test]
fn an_absent_agent_keeps_a_promoted_standby_dark_until_it_returns() -> Result<()> {
    let _serial = serial();
    let node = node();
    let mut lab = KaLab::prepare(Wiring::Ovs, [true, false])?;
    let (release, harouter) = node.serve_lab_node(&lab, 1, &[])?;
    lab.boot()?;
    let daemonset = format!("daemonset/{}", release.name);
    let select = |selector: &str| {
        let patch =
            format!(r#"{{"spec":{{"template":{{"spec":{{"nodeSelector":{selector}}}}}}}}}"#);
        node.kubectl(&["patch", &daemonset, "-n", &release.namespace, "--type=merge", "-p", &patch])
    };

    select(r#"{"hagw.test/absent":"true"}"#)?;
    wait_for("the agent gone", Duration::from_secs(60), || {
        Ok(release.pod().is_err().then_some(()))
    })?;
    lab.nodes[0].crash_keepalived();
    wait_vip(&lab, 1)?;
    let pings = Pinger::start(&lab.external, FIP)?;
    std::thread::sleep(Duration::from_secs(3));
    let (sent, lost) = pings.stop()?;
    ensure!(lost == sent, "{} of {sent} pings answered by a held router", sent - lost);

    let back = Instant::now();
    select(r#"{"hagw.test/absent":null}"#)?;
    wait_for("the agent back", Duration::from_secs(120), || {
        let ready =
            release.pod().is_ok_and(|p| p["status"]["containerStatuses"][0]["ready"] == true);
        Ok(ready.then_some(()))
    })?;
    let ready = back.elapsed();
    wait_reported(node, &harouter.name, "primary")?;
    lab.check_traffic(1)?;
    let reachable = back.elapsed();
    println!(
        "agent absent: back in {ready:?} (pod ready), traffic through the new primary after \
         {reachable:?}"
    );
    let report = lab.report();
    ensure!(report.leaks.is_empty(), "a node leaked:\n{report}");
    Ok(())
}
