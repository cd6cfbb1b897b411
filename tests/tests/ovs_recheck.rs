//! The OVS watcher's periodic recheck on a real OVS node: it wakes a router only when its
//! port's `no-receive` changed behind hagw's back (another OpenFlow client lifting it), not
//! every router at every look: a pass per router per look kept 1,000 routers' netlink
//! connections open and cost 5–7 % of a core at rest (docs/benchmarks.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use hagw_backends::dataplane::HostDataplane;
use hagw_backends::l2::{L2Backends, OvsBackend};
use hagw_backends::linux::LinuxNet;
use hagw_backends::ovs_watch::{PortRouters, wake_on_changes};
use hagw_core::model::{AnnounceSchedule, L2BackendSpec, Role, RoleSource, RouterSpec};
use hagw_core::supervisor::{WorkerConfig, spawn_router};
use hagw_e2e::gateway::GATEWAY_CIDR;
use hagw_e2e::ovs::{OvsLab, OvsNode};
use tokio::sync::{mpsc, watch};

const HELD: &str = "4095 trunk [4095]";
/// The recheck's period here (the agent's is 10 s).
const RECHECK: Duration = Duration::from_millis(200);

fn standby(node: &OvsNode) -> RouterSpec {
    RouterSpec {
        id: format!("r-{}", node.qrouter),
        namespace: node.qrouter.clone(),
        gateway_device: node.qg.clone(),
        ha_device: None,
        primary_vip: None,
        keepalived_pid_file: None,
        gateway_addresses: vec![GATEWAY_CIDR.parse().unwrap()],
        routes: vec![],
        backend: L2BackendSpec::Ovs { port: Some(node.port.clone()) },
        strategy: Default::default(),
        announce: AnnounceSchedule { repeats: 0, interval_ms: 1000 },
        role: RoleSource::Fixed(Role::Standby),
        silence_settle_ms: 500,
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while !check()? {
        ensure!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recheck_wakes_a_router_only_when_its_no_receive_changed() -> Result<()> {
    let lab = OvsLab::build(1)?;
    let node = &lab.nodes[0];
    node.plug(&lab.lab)?;
    node.agent_wire()?;
    let dp = HostDataplane::new(LinuxNet::default(), L2Backends::with_ovsdb(node.ovs.endpoint()));
    let ovs: OvsBackend = dp.l2().ovs().expect("ovs").clone();

    // A standby's worker, woken only by the watcher (its own resync is an hour).
    let config = WorkerConfig { resync: Duration::from_secs(3600), ..WorkerConfig::default() };
    let (events, mut passes) = mpsc::unbounded_channel();
    let (worker, worker_task) = spawn_router(
        Arc::new(dp.clone()),
        standby(node),
        Role::Standby,
        Default::default(),
        config,
        events,
    );
    eventually("the standby held", || Ok(node.port_vlan()? == HELD && node.no_receive()?)).await?;
    let (_ports, watched) = watch::channel(PortRouters::from([(node.port.clone(), vec![worker])]));
    let start = move || {
        let ovs = ovs.clone();
        async move { ovs.events(Some(RECHECK)).await }
    };
    let watcher = tokio::spawn(wake_on_changes(start, watched));

    // Quiet: the first look cannot tell what changed and wakes the router (a monitor's
    // first report does too), and so may the standby's silence settling; after that,
    // nothing changes and nothing is woken.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while passes.try_recv().is_ok() {}
    tokio::time::sleep(RECHECK * 8).await;
    let mut quiet = 0;
    while passes.try_recv().is_ok() {
        quiet += 1;
    }
    ensure!(quiet == 0, "{quiet} passes in 8 rechecks of a port nobody touched");

    // Another OpenFlow client lifts no-receive: nothing in OVSDB tells, the recheck does,
    // and the woken pass holds the port again.
    node.ovs.ofctl(&format!("mod-port br-int {} receive", node.port))?;
    eventually("no-receive set again", || node.no_receive()).await?;
    ensure!(passes.try_recv().is_ok(), "the re-hold was a pass of the router");
    ensure!(node.port_vlan()? == HELD, "{}", node.port_vlan()?);
    watcher.abort();
    worker_task.abort();
    Ok(())
}
