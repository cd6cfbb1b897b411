//! Two OVS nodes behind one ToR: the primary serves the gateway after its hold is released,
//! the standby stays held through an OVS agent restart, an ovsdb-server restart (with a
//! retag during the outage) and an ovs-vswitchd restart (which drops `no-receive`), and the
//! ToR never learns the gateway MAC on the standby. A hold is the dead-VLAN triple plus
//! OpenFlow `no-receive`, which the retag leaves in place.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use std::sync::Arc;

use hagw_backends::dataplane::HostDataplane;
use hagw_backends::l2::{L2Backends, OvsBackend};
use hagw_backends::linux::LinuxNet;
use hagw_backends::ovs_watch::{PortRouters, wake_on_changes};
use hagw_core::Action;
use hagw_core::model::{AnnounceSchedule, L2BackendSpec, Role, RoleSource, RouteSpec, RouterSpec};
use hagw_core::reconcile::{ReconcileError, RetryPolicy, RouterMemory, reconcile_router};
use hagw_core::supervisor::{WorkerConfig, spawn_router};
use hagw_e2e::gateway::{EXTERNAL_IP, GATEWAY_CIDR, GATEWAY_IP, GATEWAY_MAC};
use hagw_e2e::ovs::{LOCAL_VLAN, OvsLab, OvsNode, fdb_has_gateway_on};
use hagw_e2e::{Capture, sh};
use tokio::sync::{mpsc, watch};

const HELD: &str = "4095 trunk [4095]";

fn spec(node: &OvsNode) -> RouterSpec {
    RouterSpec {
        id: format!("r-{}", node.qrouter),
        namespace: node.qrouter.clone(),
        gateway_device: node.qg.clone(),
        ha_device: None,
        primary_vip: None,
        keepalived_pid_file: None,
        gateway_addresses: vec![GATEWAY_CIDR.parse().unwrap()],
        routes: vec![RouteSpec {
            destination: "0.0.0.0/0".parse().unwrap(),
            via: Some(EXTERNAL_IP.parse().unwrap()),
        }],
        backend: L2BackendSpec::Ovs { port: Some(node.port.clone()) },
        strategy: Default::default(),
        announce: AnnounceSchedule { repeats: 0, interval_ms: 1000 },
        role: RoleSource::Fixed(Role::Standby),
        silence_settle_ms: 500,
    }
}

/// Reconcile passes until one converges (the loop's verification may need a few).
async fn converge(dp: &HostDataplane, spec: &RouterSpec, role: Role) -> Result<()> {
    let mut memory = RouterMemory::default();
    let policy = RetryPolicy::default();
    let mut last = None;
    for _ in 0..20 {
        match reconcile_router(dp, spec, role, &mut memory, &policy, None).await {
            Ok(report) if report.wait.is_none() => return Ok(()),
            Ok(report) => last = Some(format!("waiting: {:?}", report.wait)),
            // Announcing is not this test's subject (and its backend is still in progress);
            // everything before it in the plan has been applied.
            Err(ReconcileError::Apply { action: Action::Announce { .. }, .. }) => return Ok(()),
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("{} did not converge as {role:?}: {last:?}", spec.id)
}

async fn eventually(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    while !check()? {
        ensure!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_serves_standby_stays_held_through_agent_and_ovsdb_restarts() -> Result<()> {
    let mut lab = OvsLab::build(2)?;
    for node in &lab.nodes {
        node.plug(&lab.lab)?;
        node.agent_wire()?;
    }
    let dps: Vec<HostDataplane> = lab
        .nodes
        .iter()
        .map(|n| HostDataplane::new(LinuxNet::default(), L2Backends::with_ovsdb(n.ovs.endpoint())))
        .collect();
    let (primary, standby) = (&lab.nodes[0], &lab.nodes[1]);
    let capture = Capture::start(&lab.tor, &standby.tor_port, lab.lab.dir.path().join("s.pcap"))?;

    // Both start as standby (as after a reboot of both), then node 1 becomes primary.
    converge(&dps[1], &spec(standby), Role::Standby).await?;
    converge(&dps[0], &spec(primary), Role::Standby).await?;
    ensure!(standby.port_vlan()? == HELD && primary.port_vlan()? == HELD);
    ensure!(standby.no_receive()? && primary.no_receive()?, "a hold sets no-receive");
    let cfg = |column: &str| -> Result<i64> {
        Ok(primary.ovs.vsctl(&format!("get Open_vSwitch . {column}"))?.trim().parse()?)
    };
    let before = cfg("next_cfg")?;
    converge(&dps[0], &spec(primary), Role::Primary).await?;
    ensure!(primary.port_vlan()? == format!("{LOCAL_VLAN} [] []"), "{}", primary.port_vlan()?);
    // The release waited for ovs-vswitchd to apply it (next_cfg/cur_cfg, as --wait=vswitchd).
    let (next, cur) = (cfg("next_cfg")?, cfg("cur_cfg")?);
    ensure!(next > before && cur >= next, "next_cfg {before} -> {next}, cur_cfg {cur}");
    ensure!(!primary.no_receive()?, "a release clears no-receive");
    lab.lab.exec(&lab.external, &format!("ping -c 3 -i 0.2 -W 2 {GATEWAY_IP}"))?;
    ensure!(fdb_has_gateway_on(&lab.tor, &primary.tor_port)?, "ToR must learn the primary");

    // The standby's worker, woken by the OVS watcher as the agent runs them; its periodic
    // resync and the watcher's recheck are an hour, so only reported events wake it.
    let ovs: OvsBackend = dps[1].l2().ovs().expect("ovs").clone();
    let hour = Duration::from_secs(3600);
    let config = WorkerConfig { resync: hour, ..WorkerConfig::default() };
    let (events, mut passes) = mpsc::unbounded_channel();
    let (worker, worker_task) = spawn_router(
        Arc::new(dps[1].clone()),
        spec(standby),
        Role::Standby,
        RouterMemory::default(),
        config,
        events,
    );
    tokio::spawn(async move { while passes.recv().await.is_some() {} });
    let (_ports, watched) =
        watch::channel(PortRouters::from([(standby.port.clone(), vec![worker])]));
    let start = move || {
        let ovs = ovs.clone();
        async move { ovs.events(Some(hour)).await }
    };
    let task = tokio::spawn(wake_on_changes(start, watched));

    // The OVS agent restarts and re-wires every port.
    for node in &lab.nodes {
        node.agent_wire()?;
    }
    // The retag lifts the triple, never no-receive: the standby stays silent meanwhile.
    ensure!(standby.no_receive()?, "the OVS agent's retag must not lift no-receive");
    let took =
        eventually("re-hold after agent restart", || Ok(standby.port_vlan()? == HELD)).await?;
    eprintln!("standby re-held {took:?} after the agent's retag");

    // ovsdb-server restarts on the standby; the agent retags during the outage.
    lab.nodes[1].ovs.stop_ovsdb();
    let retag = format!(
        r#"["Open_vSwitch", {{"op": "update", "table": "Port", "where": [["name", "==", "{}"]],
            "row": {{"tag": {LOCAL_VLAN}, "vlan_mode": ["set", []], "trunks": ["set", []]}}}}]"#,
        lab.nodes[1].port
    );
    sh(&format!("ovsdb-tool transact {} '{retag}'", lab.nodes[1].ovs.db().display()))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    lab.nodes[1].ovs.start_ovsdb()?;
    let standby = &lab.nodes[1];
    let took = eventually("re-hold after reconnect", || Ok(standby.port_vlan()? == HELD)).await?;
    eprintln!("standby re-held {took:?} after ovsdb-server came back");
    ensure!(!task.is_finished(), "the watcher must survive the restart");
    ensure!(standby.no_receive()?, "no-receive survives an ovsdb-server restart");

    // ovs-vswitchd restarts on the standby: no-receive goes with it, and nothing changes in
    // OVSDB. The watcher sees the bridge's management socket come back, and the backend holds
    // the port again as the last plan said (and the woken pass would complete the hold): the
    // periodic re-checks are an hour here, so only that can have done it. Then the OVS
    // agent, having noticed the restart, re-wires the port, and no-receive holds through it.
    lab.nodes[1].restart_vswitchd()?;
    let standby = &lab.nodes[1];
    let took = eventually("no-receive after an ovs-vswitchd restart", || {
        Ok(standby.no_receive().unwrap_or(false))
    })
    .await?;
    eprintln!("no-receive back {took:?} after ovs-vswitchd restarted");
    standby.agent_wire()?;
    ensure!(standby.no_receive()?, "the re-wire after a vswitchd restart must not lift no-receive");
    eventually("re-hold after the re-wire", || Ok(standby.port_vlan()? == HELD)).await?;

    // Traffic still reaches the primary, and the standby never transmitted.
    lab.lab.exec(&lab.external, &format!("ping -c 3 -i 0.2 -W 2 {GATEWAY_IP}"))?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let frames = capture.stop_and_frames_from(GATEWAY_MAC)?;
    ensure!(frames.is_empty(), "standby leaked:\n{}", frames.join("\n"));
    ensure!(!fdb_has_gateway_on(&lab.tor, &standby.tor_port)?, "ToR learnt the standby");
    task.abort();
    worker_task.abort();
    Ok(())
}
