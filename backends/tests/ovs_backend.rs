//! The OVS backend against a real, throw-away `ovsdb-server` (no ovs-vswitchd: only the
//! database matters here). The OVS agent is emulated with `ovs-vsctl`, as it would retag.
//! Holds that outlive a retag are a router worker's, as the agent runs it: its planner
//! decides, the OVS watcher's reports wake it, the backend holds an arriving port as the last
//! plan said.

mod ovsdb_support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hagw_backends::l2::ovs::{OvsBackend, port::SAVED_TAG_KEY, port_name};
use hagw_backends::ovs_watch::{PortChange, PortRouters, wake_on_changes};
use hagw_backends::ovsdb::ClientConfig;
use hagw_core::model::{Role, RouterSpec, Strategy};
use hagw_core::observed::{
    ADDR_GEN_MODE_NONE, HoldState, Ipv6Conf, L2State, LinkCounters, LinkState, PortState,
};
use hagw_core::planner::HoldOnArrival;
use hagw_core::reconcile::{Dataplane, RouterMemory};
use hagw_core::supervisor::{RouterEvent, WorkerConfig, spawn_router};
use hagw_core::{Action, Error};
use ovsdb_support::{OvsdbServer as Server, port_router};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const PORT: &str = "qg-ovs1";
const HELD: L2State = L2State { hold: HoldState::Held, wired: true };
/// A silence settling time no test waits for, in ms.
const HOUR: u64 = 3_600_000;

fn get(server: &Server, column: &str) -> String {
    server.vsctl(&["get", "port", PORT, column])
}

/// What the L3 agent does: plug the gateway into br-int in the dead VLAN (tag only).
fn plug(server: &Server) {
    server.vsctl(&["add-port", "br-int", PORT, "tag=4095"]);
}

/// What the OVS agent does when it (re)wires a port: local VLAN in other_config and on the
/// port, vlan_mode/trunks cleared, one transaction.
fn agent_wire(server: &Server, vlan: u16) {
    server.vsctl(&[
        "set",
        "port",
        PORT,
        &format!("other_config:tag={vlan}"),
        &format!("tag={vlan}"),
        "--",
        "clear",
        "port",
        PORT,
        "vlan_mode",
        "trunks",
    ]);
}

fn backend(server: &Server) -> OvsBackend {
    let config = ClientConfig {
        echo_interval: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
    };
    // No ovs-vswitchd here, so no OpenFlow `no-receive`: the E2E tests cover that half.
    OvsBackend::with_config(server.endpoint.to_string(), config).ovsdb_only()
}

/// The switch side of a router as its worker sees it (no namespace here): the OVS backend,
/// and a gateway device that is silent, as a standby's is once silenced.
#[derive(Clone)]
struct SwitchOnly {
    ovs: OvsBackend,
}

impl Dataplane for SwitchOnly {
    async fn observe(&self, spec: &RouterSpec) -> Result<PortState, Error> {
        let l2 = self.ovs.observe(spec).await?;
        Ok(PortState { link: Some(silent_link()), l2 })
    }

    async fn apply(&self, spec: &RouterSpec, action: &Action) -> Result<(), Error> {
        match action {
            Action::HoldL2 => self.ovs.hold(spec).await,
            Action::ReleaseL2 => self.ovs.release(spec).await,
            other => panic!("{other}: a silent device needs nothing else"),
        }
    }

    fn hold_on_arrival(&self, spec: &RouterSpec, hold: HoldOnArrival) {
        self.ovs.hold_on_arrival(port_name(spec), hold);
    }
}

/// A gateway device the planner finds silent, as a settled standby's is.
fn silent_link() -> LinkState {
    LinkState {
        admin_up: true,
        oper_up: true,
        addresses: Vec::new(),
        ipv6: Ipv6Conf {
            addr_gen_mode: ADDR_GEN_MODE_NONE,
            accept_ra: 0,
            forwarding: 0,
            disable_ipv6: 0,
        },
        routes: Vec::new(),
        counters: LinkCounters::default(),
    }
}

/// A standby router whose gateway is `port` (no namespace here).
fn standby(port: &str) -> RouterSpec {
    port_router(port, Role::Standby, HOUR)
}

/// A standby router's worker on `port`, woken by the OVS watcher whenever it reports the
/// port; its periodic resync is an hour, so only those reports wake it (and, for a
/// silence-only one, silence settling after `settle_ms`).
struct Worker {
    passes: mpsc::UnboundedReceiver<RouterEvent>,
    ports: watch::Sender<PortRouters>,
    watcher: JoinHandle<()>,
    worker: JoinHandle<()>,
}

impl Worker {
    fn start(ovs: &OvsBackend, port: &str, strategy: Strategy, settle_ms: u64) -> Worker {
        let spec = RouterSpec { strategy, silence_settle_ms: settle_ms, ..standby(port) };
        let dataplane = SwitchOnly { ovs: ovs.clone() };
        let config = WorkerConfig { resync: Duration::from_secs(3600), ..WorkerConfig::default() };
        let (events, passes) = mpsc::unbounded_channel();
        let memory = RouterMemory::default();
        let (handle, worker) =
            spawn_router(Arc::new(dataplane), spec, Role::Standby, memory, config, events);
        let (ports, watched) = watch::channel(PortRouters::from([(port.into(), vec![handle])]));
        let start = {
            let ovs = ovs.clone();
            move || {
                let ovs = ovs.clone();
                async move { ovs.events(None).await }
            }
        };
        let watcher = tokio::spawn(wake_on_changes(start, watched));
        Worker { passes, ports, watcher, worker }
    }

    /// Waits for the end of the next pass.
    async fn next_pass(&mut self) {
        while self.passes.try_recv().is_ok() {}
        tokio::time::timeout(Duration::from_secs(10), self.passes.recv()).await.unwrap().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.watcher.abort();
        self.worker.abort();
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn hold_and_release_follow_neutron_and_survive_a_hagw_restart() {
    let server = Server::with_br_int();
    let ovs = backend(&server);
    assert_eq!(ovs.observe_port(PORT).await.unwrap().hold, HoldState::Unknown);
    assert!(ovs.hold(&standby(PORT)).await.unwrap_err().is_transient(), "missing port");

    plug(&server);
    let plugged = ovs.observe_port(PORT).await.unwrap();
    assert_eq!(
        plugged,
        L2State { hold: HoldState::Released, wired: false },
        "tag alone is no hold"
    );
    ovs.hold(&standby(PORT)).await.unwrap();
    assert_eq!(
        ovs.observe_port(PORT).await.unwrap(),
        L2State { hold: HoldState::Held, wired: false }
    );
    let not_wired = ovs.release(&standby(PORT)).await.unwrap_err();
    assert!(not_wired.is_transient() && not_wired.to_string().contains("not wired"), "{not_wired}");

    // The agent wires the port (lifting the hold); hagw holds again and remembers VLAN 7.
    agent_wire(&server, 7);
    assert_eq!(ovs.observe_port(PORT).await.unwrap().hold, HoldState::Released);
    ovs.hold(&standby(PORT)).await.unwrap();
    assert_eq!(ovs.observe_port(PORT).await.unwrap(), HELD);
    assert_eq!(get(&server, "trunks"), "[4095]");
    assert_eq!(get(&server, &format!("external_ids:{SAVED_TAG_KEY}")), "\"7\"");
    ovs.hold(&standby(PORT)).await.unwrap();

    // hagw restarts and the agent's other_config is gone: the saved tag still releases.
    drop(ovs);
    server.vsctl(&["remove", "port", PORT, "other_config", "tag"]);
    let ovs = backend(&server);
    assert_eq!(ovs.observe_port(PORT).await.unwrap(), HELD);
    ovs.release(&standby(PORT)).await.unwrap();
    assert_eq!(get(&server, "tag"), "7");
    assert_eq!(get(&server, "vlan_mode"), "[]");
    assert_eq!(get(&server, "trunks"), "[]");
    assert_eq!(get(&server, "external_ids"), "{}");
    assert_eq!(
        ovs.observe_port(PORT).await.unwrap(),
        L2State { hold: HoldState::Released, wired: true }
    );
    ovs.release(&standby(PORT)).await.unwrap();
}

#[tokio::test]
async fn release_prefers_the_agents_current_vlan() {
    let server = Server::with_br_int();
    plug(&server);
    agent_wire(&server, 7);
    let ovs = backend(&server);
    ovs.hold(&standby(PORT)).await.unwrap();
    // The agent restarted while held and now has VLAN 9 for this network.
    server.vsctl(&["set", "port", PORT, "other_config:tag=9"]);
    ovs.release(&standby(PORT)).await.unwrap();
    assert_eq!(get(&server, "tag"), "9");
}

#[tokio::test]
async fn monitor_reports_changes_and_the_next_pass_undoes_a_retag_at_once() {
    let server = Server::with_br_int();
    plug(&server);
    agent_wire(&server, 5);
    let ovs = backend(&server);
    let mut changes = ovs.changes().await.unwrap();
    assert_eq!(changes.next().await, Some(PortChange::Resync));
    server.vsctl(&["set", "port", PORT, "other_config:x=1"]);
    assert_eq!(changes.next().await, Some(PortChange::Port(PORT.into())));
    drop(changes);

    let mut worker = Worker::start(&backend(&server), PORT, Strategy::L2Hold, HOUR);
    eventually("initial hold", || get(&server, "trunks") == "[4095]").await;
    for round in 0..5 {
        agent_wire(&server, 5 + round);
        let took = eventually("re-hold", || get(&server, "trunks") == "[4095]").await;
        assert_eq!(get(&server, "tag"), "4095");
        eprintln!("re-held after retag {round} within {took:?}");
    }
    // The watcher ends when nothing is left to watch.
    drop(std::mem::replace(&mut worker.ports, watch::channel(PortRouters::new()).0));
    let watcher = std::mem::replace(&mut worker.watcher, tokio::spawn(async {}));
    tokio::time::timeout(Duration::from_secs(5), watcher).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_retag_during_an_ovsdb_outage_is_undone_after_the_reconnect() {
    let mut server = Server::with_br_int();
    plug(&server);
    agent_wire(&server, 5);
    let worker = Worker::start(&backend(&server), PORT, Strategy::L2Hold, HOUR);
    eventually("initial hold", || get(&server, "trunks") == "[4095]").await;

    server.stop();
    // Retag the database file while no server runs: hagw cannot see it happen.
    let retag = format!(
        r#"["Open_vSwitch", {{"op": "update", "table": "Port", "where": [["name", "==", "{PORT}"]],
            "row": {{"tag": 6, "vlan_mode": ["set", []], "trunks": ["set", []]}}}}]"#
    );
    let db = server.path("conf.db");
    let out = Command::new("ovsdb-tool").arg("transact").arg(&db).arg(&retag).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.spawn();
    let took = eventually("re-hold after reconnect", || get(&server, "trunks") == "[4095]").await;
    eprintln!("re-held {took:?} after ovsdb-server came back");
    assert_eq!(get(&server, &format!("external_ids:{SAVED_TAG_KEY}")), "\"6\"");
    assert!(!worker.watcher.is_finished());
}

#[tokio::test]
async fn a_standby_port_is_held_on_arrival_and_defended_until_hagw_releases_it() {
    const OTHER: &str = "qg-ovs2";
    let server = Server::with_br_int();
    let ovs = backend(&server);
    let _other = Worker::start(&ovs, OTHER, Strategy::L2Hold, HOUR);
    let settling = Worker::start(&ovs, PORT, Strategy::SilenceOnly, HOUR);
    // The watchers are in place once the first resync was handled; a fresh monitor tells.
    let mut changes = ovs.changes().await.unwrap();
    assert_eq!(changes.next().await, Some(PortChange::Resync));
    server.vsctl(&["add-port", "br-int", OTHER, "tag=4095"]);
    eventually("the for-good port held", || {
        server.vsctl(&["get", "port", OTHER, "trunks"]) == "[4095]"
    })
    .await;

    plug(&server);
    eventually("hold on arrival", || get(&server, "trunks") == "[4095]").await;
    agent_wire(&server, 5);
    eventually("the hagw hold defended", || get(&server, "trunks") == "[4095]").await;

    // A worker whose silence settles soon (the agent starts a new one when a spec changes)
    // releases the port; later retags are none of hagw's business.
    drop(settling);
    let mut silent = Worker::start(&ovs, PORT, Strategy::SilenceOnly, 300);
    eventually("released once silence settled", || get(&server, "tag") == "5").await;
    agent_wire(&server, 6);
    silent.next_pass().await;
    // Changes are handled in order: once the later retag of the for-good port is undone,
    // the earlier one of the released port has been handled too.
    server.vsctl(&["set", "port", OTHER, "tag=3", "--", "clear", "port", OTHER, "trunks"]);
    eventually("the for-good port re-held", || {
        server.vsctl(&["get", "port", OTHER, "trunks"]) == "[4095]"
    })
    .await;
    assert_eq!((get(&server, "tag"), get(&server, "trunks")), ("6".into(), "[]".into()));
}
