//! The agent's pod through what happens to pods in production, on the real node with real
//! keepalived, judged at the ToR: deleted, upgraded to another image tag, SIGKILLed and
//! OOM-killed, while its router is standby (no frame may leak) and while it is primary (no
//! ping through it may be lost); absent (no pod on the node) while keepalived promotes
//! the standby it held: the router stays dark until the agent is back, then recovers; and
//! uninstalled: the ports are handed back, and a failover to the node works without hagw.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hagw_e2e::disrupt::{self, Pinger};
use hagw_e2e::hagw_bin;
use hagw_e2e::k8s::wait_for;
use hagw_e2e::keepalived::{FIP, KaLab, Wiring};
use hagw_e2e::node::{HaRouter, IMAGE_TAG, Node, Release, node};

/// The tests here share the one node and its DaemonSet: one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// What every test here starts from: the node to itself, a two-node keepalived lab on OVS
/// whose second node the chart's DaemonSet serves, and keepalived booted. Tests destructure
/// it into locals in field order, so these drop in reverse: the router, release and lab
/// first, the serial guard last.
struct Served {
    _serial: std::sync::MutexGuard<'static, ()>,
    node: &'static Node,
    lab: KaLab,
    release: Release<'static>,
    harouter: HaRouter<'static>,
}

fn served() -> Result<Served> {
    let _serial = serial();
    let node = node();
    let mut lab = KaLab::prepare(Wiring::Ovs, [true, false])?;
    let (release, harouter) = node.serve_lab_node(&lab, 1, &[])?;
    lab.boot()?;
    Ok(Served { _serial, node, lab, release, harouter })
}

/// Waits until the router's status entry (written by the current agent) says `role`, and
/// held for a standby, released for a primary.
fn wait_reported(node: &Node, harouter: &str, role: &str) -> Result<()> {
    wait_for(&format!("{role} reported"), Duration::from_secs(60), || {
        let entry = node.entry(harouter)?;
        Ok(entry.filter(|e| e["role"] == role && e["held"] == (role == "standby")).map(drop))
    })
}

/// A node selector no node matches: the DaemonSet runs no pod (a drain, a node the pod cannot
/// be scheduled on).
const ABSENT: &str = r#"{"hagw.test/absent":"true"}"#;

/// Sets the DaemonSet's pods' node selector; with [`ABSENT`], returns once its pod is gone.
fn select(release: &Release, selector: &str) -> Result<()> {
    let daemonset = format!("daemonset/{}", release.name);
    let patch = format!(r#"{{"spec":{{"template":{{"spec":{{"nodeSelector":{selector}}}}}}}}}"#);
    let node = release.node;
    node.kubectl(&["patch", &daemonset, "-n", &release.namespace, "--type=merge", "-p", &patch])?;
    if selector == ABSENT {
        wait_for("the agent gone", Duration::from_secs(60), || {
            Ok(release.pod().is_err().then_some(()))
        })?;
    }
    Ok(())
}

fn wait_vip(lab: &KaLab, i: usize) -> Result<()> {
    wait_for("the VIP on the new primary", Duration::from_secs(10), || {
        Ok(lab.nodes[i].has_vip().then_some(()))
    })
}

#[test]
fn restarts_upgrades_and_crashes_leak_nothing_and_lose_no_ping() -> Result<()> {
    let Served { _serial, node, mut lab, release, harouter } = served()?;
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
    let Served { _serial, node, mut lab, release, harouter } = served()?;
    select(&release, ABSENT)?;
    lab.nodes[0].crash_keepalived();
    wait_vip(&lab, 1)?;
    let pings = Pinger::start(&lab.external, FIP)?;
    std::thread::sleep(Duration::from_secs(3));
    let (sent, lost) = pings.stop()?;
    ensure!(lost == sent, "{} of {sent} pings answered by a held router", sent - lost);

    let back = Instant::now();
    select(&release, r#"{"hagw.test/absent":null}"#)?;
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

/// Two agents on one node never fight: a host agent beside the pod (the packaged unit,
/// `hagw run --lock-file` on the pod's `<stateDir>/agent.lock`) waits without touching
/// anything while the pod runs — its configuration would take the standby's link down
/// (`link-down`), the pod's keeps it up and held (`l2-hold`) — and takes over once the pod is
/// gone. The standby never speaks.
#[test]
fn a_host_agent_beside_the_pod_waits_for_it_and_takes_over() -> Result<()> {
    let Served { _serial, node, mut lab, release, harouter } = served()?;
    wait_reported(node, &harouter.name, "standby")?;
    let link_up = |lab: &KaLab| -> Result<bool> {
        let n = &lab.nodes[1];
        Ok(n.router(&format!("ip -o link show dev {}", n.qg))?.contains(",UP"))
    };
    ensure!(link_up(&lab)?, "l2-hold keeps the standby's link up");
    let served = &lab.nodes[1];
    let config = std::fs::read_to_string(&served.config)?;
    ensure!(config.contains("strategy: l2-hold"), "unexpected configuration:\n{config}");
    let host_config = served.config.with_file_name("host-unit.yaml");
    std::fs::write(&host_config, config.replace("strategy: l2-hold", "strategy: link-down"))?;
    // The chart's stateDir for this node (`Node::serve_lab_node`), the pod's lock in it.
    let lock = lab.lab().dir.path().join("hagw-state1/agent.lock");
    ensure!(lock.exists(), "{} missing: the pod takes no lock there", lock.display());
    lab.nodes[1].start_hagw_with(&host_config, Some(&lock))?;
    wait_for("the host agent waiting", Duration::from_secs(10), || {
        Ok(lab.nodes[1].hagw_log().contains("another hagw agent runs").then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(3));
    ensure!(link_up(&lab)?, "the host agent acted while the pod held the lock");

    select(&release, ABSENT)?;
    let gone = Instant::now();
    wait_for("the host agent to take over", Duration::from_secs(10), || {
        Ok((!link_up(&lab)?).then_some(()))
    })?;
    println!("host agent beside the pod: took over {:?} after the pod was gone", gone.elapsed());
    lab.nodes[1].kill_hagw();
    let report = lab.report();
    ensure!(report.leaks.is_empty(), "a node leaked:\n{report}");
    Ok(())
}

/// `helm uninstall` of the chart with its default values (not privileged: `/proc/sys` is
/// read-only, so `accept_ra` and `forwarding` cannot be written) while its pod holds a
/// standby: the agent hands the port back before it exits — released although it could not be
/// fully silenced, the settings it could not write named in its log — and keepalived then fails
/// over to that node with hagw gone: traffic flows through it. No frame may leave the standby
/// before the uninstall; after it, the port is as the L3 agent's own settings leave it (here
/// the legacy IPv6 forwarding, which answers MLD queries), counted and printed, not judged.
#[test]
fn an_uninstall_hands_back_and_a_failover_works_without_hagw() -> Result<()> {
    let Served { _serial, node, mut lab, release, harouter } = served()?;
    wait_reported(node, &harouter.name, "standby")?;
    let pod = release.pod()?;
    let context = &pod["spec"]["containers"][0]["securityContext"];
    ensure!(context["privileged"] == false, "not the chart's default pod: {context}");

    // The agent's last words: the pod and its log are gone once it has exited.
    let log = lab.lab().dir.path().join("agent.log");
    let mut follow = node.kubectl_follow(
        &["logs", "-f", "-n", &release.namespace, "-l", "app.kubernetes.io/name=hagw"],
        &log,
    )?;
    let uninstall_at = now(&lab);
    let started = Instant::now();
    node.helm(&["uninstall", &release.name, "-n", &release.namespace, "--wait"])?;
    let pods = || node.kubectl(&["get", "pods", "-n", &release.namespace, "-o", "name"]);
    wait_for("the pod gone", Duration::from_secs(60), || {
        Ok(pods()?.trim().is_empty().then_some(()))
    })?;
    let gone = started.elapsed();
    let _ = follow.kill();
    let _ = follow.wait();
    let log = std::fs::read_to_string(&log).unwrap_or_default();

    lab.nodes[0].crash_keepalived();
    wait_vip(&lab, 1)?;
    let promoted = Instant::now();
    lab.check_traffic(1).map_err(|e| e.context(format!("agent log:\n{log}")))?;
    let reachable = promoted.elapsed();
    // What the operator sees: the hand-back, and the settings it could not apply.
    ensure!(log.contains("handing every port back"), "no hand-back on uninstall:\n{log}");
    ensure!(
        log.contains("port handed back without the settings") && log.contains("accept_ra"),
        "the hand-back did not name what it could not set:\n{log}"
    );
    let report = lab.report();
    // Node 1's host agent runs throughout; node 2's pod until the uninstall.
    let (unguarded, guarded): (Vec<_>, Vec<_>) =
        report.leaks.iter().partition(|l| l.node == 2 && l.at >= uninstall_at);
    println!(
        "uninstall: pod gone {gone:?} after helm uninstall; traffic through node 2 {reachable:?} \
         after its VIP; {} frames from node 2 while standby with hagw gone\n{report}",
        unguarded.len()
    );
    ensure!(guarded.is_empty(), "a node leaked while hagw guarded it:\n{report}");
    Ok(())
}

/// A node whose agent is not running when the chart is uninstalled (here no pod is scheduled
/// there) keeps its held standby held: nothing on the node hands it back. `hagw release
/// --state-dir` on the host, with the chart's `stateDir` (the agent's spec caches), does: the
/// port silenced (a host process may write `/proc/sys`) and released, and a failover to the
/// node then carries traffic. No frame from the standby while held or after its release.
#[test]
fn release_from_the_state_dir_hands_back_where_no_agent_ran_at_uninstall() -> Result<()> {
    let Served { _serial, node, mut lab, release, harouter } = served()?;
    wait_reported(node, &harouter.name, "standby")?;
    select(&release, ABSENT)?;
    node.helm(&["uninstall", &release.name, "-n", &release.namespace, "--wait"])?;

    // The chart's stateDir and OVSDB for this node (`Node::serve_lab_node`).
    let state_dir = lab.lab().dir.path().join("hagw-state1");
    let ovsdb = lab.ovs_dir(1).context("an OVS node")?.join("db.sock");
    let out = std::process::Command::new(hagw_bin())
        .arg("release")
        .arg("--state-dir")
        .arg(&state_dir)
        .arg("--lock-file")
        .arg(state_dir.join("agent.lock"))
        .arg("--ovsdb")
        .arg(format!("unix:{}", ovsdb.display()))
        .arg("--all")
        .stdin(std::process::Stdio::null())
        .output()?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("hagw release --state-dir: {text}");
    ensure!(out.status.success(), "hagw release --state-dir failed:\n{text}");
    let released = format!("{}: released (", lab.nodes[1].router_id);
    ensure!(text.contains(&released) && !text.contains("without"), "{text}");

    // Three MLD queries: a released standby that answered them would leak each time.
    std::thread::sleep(Duration::from_secs(7));
    let crash_at = now(&lab);
    lab.nodes[0].crash_keepalived();
    wait_vip(&lab, 1)?;
    lab.check_traffic(1)?;
    let report = lab.report();
    // Without hagw on node 2, keepalived's own takeover frames can reach the ToR a few ms
    // before the observer sees the VIP (node 1's crashed keepalived leaves its VIP behind, so
    // they count as leaks): not judged.
    let (takeover, judged): (Vec<_>, Vec<_>) =
        report.leaks.iter().partition(|l| l.node == 2 && l.at >= crash_at);
    println!("{} frames from node 2's takeover before its VIP was seen\n{report}", takeover.len());
    ensure!(judged.is_empty(), "a node leaked:\n{report}");
    Ok(())
}

/// Seconds since `lab`'s observers started, as its report counts them.
fn now(lab: &KaLab) -> f64 {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    unix.map(|d| d.as_secs_f64()).unwrap_or_default() - lab.started
}
