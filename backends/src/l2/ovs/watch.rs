//! Change notification for OVS ports, and the re-hold it drives.
//!
//! The OVS agent retags every port when it restarts, which lifts a standby's hold; the L3
//! agent may bring the link up in the same second. Polling would leave a window of one poll
//! interval, so hagw watches the `Port` table through an OVSDB monitor and reacts to the
//! update itself. After a reconnect the monitor's view is stale and anything may have changed
//! during the outage, so a [`PortChange::Resync`] asks for every port to be checked again.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use hagw_core::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{Instrument, debug, info, info_span, warn};

use super::restarts::BridgeStarts;
use super::{OvsBackend, Rehold, target};
use crate::ovsdb::{
    InterfaceRow, MonitorEvent, MonitorRequest, MonitorRequests, MonitorStream, OvsdbClient,
    PortRow, RowUpdate, VSWITCH_DB,
};

/// Columns whose change can lift or restore a hold, or tell which VLAN to restore.
const WATCHED: [&str; 6] = ["name", "tag", "vlan_mode", "trunks", "other_config", "external_ids"];

/// Interface columns that change when ovs-vswitchd attaches the port to its OpenFlow bridge
/// (only then can `no-receive` be set) or re-attaches it. Neutron names a port's single
/// interface like the port, so an Interface change is reported under its name.
const WATCHED_INTERFACE: [&str; 2] = ["name", "ofport"];

/// How often [`keep_held`] re-checks its ports without any event: the safety net for what
/// no event reports (`no-receive` lifted by another OpenFlow client, an ovs-vswitchd restart
/// when its run directory cannot be watched).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(10);

/// After ovs-vswitchd (re)created a bridge, when to check its ports again: they are attached
/// (and can take `no-receive`) shortly after the bridge itself.
const AFTER_RESTART: [Duration; 3] =
    [Duration::from_millis(100), Duration::from_millis(500), Duration::from_secs(2)];

/// How long to wait before re-issuing a monitor the client gave up on.
const REMONITOR_DELAY: Duration = Duration::from_secs(1);

/// Attempts per re-hold: a lost `wait` race is retried at once on a fresh read.
const REHOLD_ATTEMPTS: u32 = 3;

/// Monitor ids must be unique per client; several watches may share one.
static NEXT_MONITOR: AtomicU64 = AtomicU64::new(0);

/// Something about OVS ports changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PortChange {
    /// The watched columns of this port changed, or it was deleted.
    Port(String),
    /// This port arrived: its Port row was added, or ovs-vswitchd attached it (its Interface
    /// got an OpenFlow port number). The OVS agent wires a port only once it is attached, so
    /// a standby's port must be held by then.
    Arrived(String),
    /// Any port may have changed (first event of a stream, and after every reconnect).
    Resync,
}

impl PortChange {
    /// The port this change is about; `None` for a resync, which is about all of them.
    pub fn port(&self) -> Option<&str> {
        match self {
            PortChange::Port(name) | PortChange::Arrived(name) => Some(name),
            PortChange::Resync => None,
        }
    }
}

/// Whether a row update is its port arriving: a Port row inserted, or an Interface whose
/// `ofport` became a real OpenFlow port number (inserted with one, or changed to one).
fn is_arrival(table: &str, update: &RowUpdate) -> bool {
    let Some(new) = &update.new else { return false };
    if table == PortRow::TABLE {
        return update.old.is_none();
    }
    let attached = new.get("ofport").and_then(serde_json::Value::as_i64).is_some_and(|n| n > 0);
    attached && update.old.as_ref().is_none_or(|old| old.contains_key("ofport"))
}

/// The events a monitor update or resync means for ports: one per port named in the update,
/// an arrival if any of its rows arrived.
fn port_changes(event: MonitorEvent) -> Vec<PortChange> {
    match event {
        MonitorEvent::Update(tables) => {
            let mut ports: BTreeMap<String, bool> = BTreeMap::new();
            for table in [PortRow::TABLE, InterfaceRow::TABLE] {
                for update in tables.get(table).into_iter().flat_map(|rows| rows.values()) {
                    let row = update.new.as_ref().or(update.old.as_ref());
                    let Some(name) = row.and_then(|r| r.get("name")?.as_str()) else { continue };
                    *ports.entry(name.to_owned()).or_default() |= is_arrival(table, update);
                }
            }
            let change = |(name, arrived)| match arrived {
                true => PortChange::Arrived(name),
                false => PortChange::Port(name),
            };
            ports.into_iter().map(change).collect()
        }
        MonitorEvent::Disconnected => Vec::new(),
        MonitorEvent::Resync(_) => vec![PortChange::Resync],
    }
}

/// A stream of [`PortChange`]s, starting with a `Resync`. Dropping it stops its monitor.
#[derive(Debug)]
pub struct PortChanges {
    events: mpsc::Receiver<PortChange>,
    task: JoinHandle<()>,
}

impl Stream for PortChanges {
    type Item = PortChange;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PortChange>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for PortChanges {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn requests() -> MonitorRequests {
    MonitorRequests::from([
        (PortRow::TABLE.to_owned(), MonitorRequest::columns(&WATCHED)),
        (InterfaceRow::TABLE.to_owned(), MonitorRequest::columns(&WATCHED_INTERFACE)),
    ])
}

async fn monitor(client: &OvsdbClient) -> Result<MonitorStream, crate::ovsdb::OvsdbError> {
    let id = format!("hagw-ports-{}", NEXT_MONITOR.fetch_add(1, Ordering::Relaxed));
    let (_initial, stream) = client.monitor(VSWITCH_DB, &id, &requests()).await?;
    Ok(stream)
}

/// Forwards a monitor's events as port changes for as long as anyone listens, re-issuing the
/// monitor if the client gives up on it.
async fn forward(client: OvsdbClient, mut stream: MonitorStream, tx: mpsc::Sender<PortChange>) {
    loop {
        if tx.send(PortChange::Resync).await.is_err() {
            return;
        }
        while let Some(event) = stream.next().await {
            if event == MonitorEvent::Disconnected {
                warn!("OVSDB monitor disconnected; ports are re-checked after the reconnect");
            }
            for change in port_changes(event) {
                if tx.send(change).await.is_err() {
                    return;
                }
            }
        }
        stream = loop {
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(REMONITOR_DELAY) => {}
            }
            match monitor(&client).await {
                Ok(stream) => break stream,
                Err(e) => debug!(error = %e, "re-establishing the OVSDB Port monitor failed"),
            }
        };
        info!("OVSDB Port monitor re-established");
    }
}

impl OvsBackend {
    /// Starts watching the Port table. When this returns the monitor is in place, so any later
    /// change is reported. Fails (transiently) only if OVSDB cannot be reached now; once
    /// started, the stream survives ovsdb-server restarts.
    pub async fn changes(&self) -> Result<PortChanges, Error> {
        let client = self.client().await?.clone();
        let stream = monitor(&client).await.map_err(|e| {
            Error::transient("monitor", format!("ovsdb {} Port table", self.endpoint), e)
        })?;
        let (tx, events) = mpsc::channel(256);
        let span = info_span!("ovs_watch", endpoint = %self.endpoint);
        let task = tokio::spawn(forward(client, stream, tx).instrument(span));
        Ok(PortChanges { events, task })
    }
}

/// Holds `port` again, retrying at once on a transient failure (typically a lost `wait` race
/// against the writer whose change woke us).
async fn rehold(backend: &OvsBackend, port: &str) {
    for attempt in 1..=REHOLD_ATTEMPTS {
        match backend.hold_if_present(port).await {
            Ok(Rehold::Held | Rehold::Absent) => return,
            // Its attach is reported and completes the hold.
            Ok(Rehold::AwaitingAttach) => {
                debug!(port, "held in OVSDB; no-receive once ovs-vswitchd attaches it");
                return;
            }
            Err(e) if e.is_transient() && attempt < REHOLD_ATTEMPTS => {
                debug!(port, attempt, error = %e, "re-hold raced, retrying");
            }
            // A later change (the port appearing, the reconnect's resync) triggers it again.
            Err(e) => warn!(port, error = %e, "re-hold failed"),
        }
    }
}

/// Which ports the re-hold task ([`keep_held`]) keeps held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guarded {
    /// Held again on every change, whoever placed or lifted the hold (the ports of `l2-hold`
    /// and `link-down` standbys, which the planner holds for good).
    pub for_good: BTreeSet<String>,
    /// Held the moment they arrive (see [`PortChange::Arrived`]), and held again on every
    /// change while a hold hagw placed is in force, until hagw itself releases it (a
    /// `silence-only` standby's port, released by its worker once silence has settled).
    pub standby: BTreeSet<String>,
}

impl Guarded {
    /// Ports held for good, nothing else.
    pub fn for_good(ports: impl IntoIterator<Item = String>) -> Self {
        Guarded { for_good: ports.into_iter().collect(), standby: BTreeSet::new() }
    }

    /// Whether `port` is to be held now; `arrived` if it just arrived, `hagw_holds` if a
    /// hold hagw placed is in force ([`OvsBackend::holding`]).
    fn wants_hold(&self, port: &str, arrived: bool, hagw_holds: &BTreeSet<String>) -> bool {
        self.for_good.contains(port)
            || (self.standby.contains(port) && (arrived || hagw_holds.contains(port)))
    }

    /// The ports to hold when no particular port changed (a resync, a timer, a restart).
    fn to_hold(&self, hagw_holds: &BTreeSet<String>) -> Vec<String> {
        let defended = self.standby.iter().filter(|p| hagw_holds.contains(*p));
        self.for_good.iter().chain(defended).cloned().collect::<BTreeSet<_>>().into_iter().collect()
    }
}

/// Keeps the ports in `guarded` held (triple and `no-receive`; see [`Guarded`] for which and
/// when): on a change of one of them, on every resync, when the set changes, when
/// ovs-vswitchd (re)creates a bridge (a restart drops `no-receive`; see [`BridgeStarts`]) and
/// every [`RECHECK_INTERVAL`], each is held again at once with the same code as a planned
/// hold (a no-op if it is). Runs until `guarded`'s sender is dropped or the change stream
/// ends. A port leaves `for_good` before it is released, or this task holds it again.
pub async fn keep_held(
    backend: &OvsBackend,
    guarded: watch::Receiver<Guarded>,
) -> Result<(), Error> {
    keep_held_every(backend, guarded, RECHECK_INTERVAL).await
}

/// [`keep_held`] with its periodic re-check every `recheck` (tests lengthen it to show that
/// an event, not the period, did the work).
pub async fn keep_held_every(
    backend: &OvsBackend,
    mut guarded: watch::Receiver<Guarded>,
    recheck: Duration,
) -> Result<(), Error> {
    let mut changes = backend.changes().await?;
    let hagw_holds = backend.holding();
    let mut bridge_starts = backend.rundir().and_then(|dir| {
        BridgeStarts::watch(dir)
            .inspect_err(|e| {
                warn!(rundir = %dir.display(), error = %e,
                    "cannot watch for ovs-vswitchd restarts; no-receive is re-checked periodically");
            })
            .ok()
    });
    let mut periodic = tokio::time::interval(recheck);
    periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    periodic.reset();
    let mut soon: Vec<Instant> = Vec::new();
    loop {
        let next_soon = soon.iter().min().copied();
        let due: Vec<String> = tokio::select! {
            _ = periodic.tick() => held_now(&guarded, &hagw_holds),
            () = sleep_until(next_soon.unwrap_or_else(Instant::now)), if next_soon.is_some() => {
                let now = Instant::now();
                soon.retain(|at| *at > now);
                held_now(&guarded, &hagw_holds)
            }
            bridge = next_bridge_start(&mut bridge_starts) => {
                let Some(bridge) = bridge else {
                    bridge_starts = None;
                    continue;
                };
                info!(bridge, "ovs-vswitchd (re)created a bridge; re-holding");
                let now = Instant::now();
                soon.extend(AFTER_RESTART.iter().map(|after| now + *after));
                held_now(&guarded, &hagw_holds)
            }
            change = changes.next() => match change {
                None => return Ok(()),
                Some(PortChange::Resync) => held_now(&guarded, &hagw_holds),
                Some(change) => {
                    let name = change.port().unwrap_or_default();
                    let arrived = matches!(change, PortChange::Arrived(_));
                    let wanted = guarded.borrow().wants_hold(name, arrived, &hagw_holds.borrow());
                    wanted.then(|| name.to_owned()).into_iter().collect()
                }
            },
            changed = guarded.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                guarded.borrow_and_update();
                held_now(&guarded, &hagw_holds)
            }
        };
        for port in due {
            rehold(backend, &port).instrument(info_span!("rehold", target = %target(&port))).await;
        }
    }
}

/// [`Guarded::to_hold`] as of now.
fn held_now(
    guarded: &watch::Receiver<Guarded>,
    hagw_holds: &watch::Receiver<BTreeSet<String>>,
) -> Vec<String> {
    guarded.borrow().to_hold(&hagw_holds.borrow())
}

/// The next bridge (re)start, or never if restarts cannot be watched.
async fn next_bridge_start(starts: &mut Option<BridgeStarts>) -> Option<String> {
    match starts {
        Some(starts) => starts.next().await,
        None => std::future::pending().await,
    }
}

/// Keeps ports held like [`keep_held`], but waits for OVSDB instead of failing while it cannot
/// be reached (hagw may start before ovsdb-server). Returns once `ports`' sender is dropped.
pub async fn keep_held_retrying(backend: &OvsBackend, mut guarded: watch::Receiver<Guarded>) {
    loop {
        match keep_held(backend, guarded.clone()).await {
            Ok(()) => return,
            Err(e) => debug!(error = %e, "cannot watch OVS ports yet; retrying"),
        }
        tokio::select! {
            changed = guarded.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(REMONITOR_DELAY) => {}
        }
    }
}

/// For each watched OVS port, the keys to wake when it changes (the agent uses router
/// namespaces, so a change wakes the routers in that namespace).
pub type PortKeys = BTreeMap<String, BTreeSet<String>>;

/// Wakes `keys`' entries on every change of their port, and all of them on every resync,
/// until `keys`' sender or `wake`'s receiver is dropped. Waits for OVSDB while it cannot be
/// reached.
pub async fn wake_on_changes(
    backend: &OvsBackend,
    mut keys: watch::Receiver<PortKeys>,
    wake: mpsc::UnboundedSender<String>,
) {
    let mut changes = loop {
        match backend.changes().await {
            Ok(changes) => break changes,
            Err(e) => debug!(error = %e, "cannot watch OVS ports yet; retrying"),
        }
        tokio::select! {
            changed = keys.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(REMONITOR_DELAY) => {}
        }
    };
    loop {
        let due: BTreeSet<String> = tokio::select! {
            change = changes.next() => match change {
                None => return,
                Some(PortChange::Resync) => keys.borrow().values().flatten().cloned().collect(),
                Some(change) => {
                    let port = change.port().unwrap_or_default();
                    keys.borrow().get(port).cloned().unwrap_or_default()
                }
            },
            changed = keys.changed() => {
                if changed.is_err() {
                    return;
                }
                keys.borrow_and_update();
                continue;
            }
        };
        for key in due {
            if wake.send(key).is_err() {
                return;
            }
        }
    }
}

/// What an agent runs for its OVS routers: wakes them on changes of their ports
/// ([`wake_on_changes`]) and keeps the ports of standbys held ([`keep_held`]). Dropping it
/// stops both.
#[derive(Debug)]
pub struct OvsFeed {
    keys: watch::Sender<PortKeys>,
    guarded: watch::Sender<Guarded>,
    tasks: [JoinHandle<()>; 2],
}

impl OvsFeed {
    /// Starts both tasks with nothing to watch; see [`OvsFeed::set`].
    pub fn start(backend: OvsBackend, wake: mpsc::UnboundedSender<String>) -> Self {
        let (keys, keys_rx) = watch::channel(PortKeys::new());
        let (guarded, guarded_rx) = watch::channel(Guarded::default());
        let span = info_span!("ovs_feed", endpoint = %backend.endpoint);
        let waker = backend.clone();
        let tasks = [
            tokio::spawn(
                async move { wake_on_changes(&waker, keys_rx, wake).await }
                    .instrument(span.clone()),
            ),
            tokio::spawn(
                async move { keep_held_retrying(&backend, guarded_rx).await }.instrument(span),
            ),
        ];
        Self { keys, guarded, tasks }
    }

    /// The ports to watch (with what to wake) and the ones to keep held. Remove a port from
    /// `guarded` before its worker releases it (a takeover), or it is held again.
    pub fn set(&self, keys: PortKeys, guarded: Guarded) {
        self.keys.send_if_modified(|current| std::mem::replace(current, keys.clone()) != keys);
        self.guarded
            .send_if_modified(|current| std::mem::replace(current, guarded.clone()) != guarded);
    }
}

impl Drop for OvsFeed {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ovsdb::monitor::parse_table_updates;

    const U: &str = "36a9f2c1-0b4e-4c7d-9f0e-1a2b3c4d5e6f";
    const V: &str = "00000000-0000-4000-8000-000000000001";
    const W: &str = "00000000-0000-4000-8000-000000000002";
    const X: &str = "00000000-0000-4000-8000-000000000003";
    const Y: &str = "00000000-0000-4000-8000-000000000004";

    #[test]
    fn updates_name_the_ports_they_touch() {
        let updates = parse_table_updates(&json!({
            "Port": {
                U: {"old": {"tag": 4095}, "new": {"name": "qg-1", "tag": 5}},
                V: {"old": {"name": "qg-2", "tag": 4095}},
            },
            "Interface": {U: {"old": {"name": "qg-0"}, "new": {"name": "qg-9", "ofport": 3}},
                          V: {"new": {"name": "qg-1"}}},
            "Bridge": {U: {"new": {"name": "br-int"}}},
        }))
        .unwrap();
        assert_eq!(
            port_changes(MonitorEvent::Update(updates)),
            vec![
                PortChange::Port("qg-1".into()),
                PortChange::Port("qg-2".into()),
                PortChange::Port("qg-9".into())
            ]
        );
    }

    #[test]
    fn a_new_port_row_or_an_attached_interface_is_an_arrival() {
        let updates = parse_table_updates(&json!({
            "Port": {U: {"new": {"name": "qg-new", "tag": 4095}}},
            "Interface": {
                U: {"new": {"name": "qg-new", "ofport": ["set", []]}},
                V: {"old": {"ofport": ["set", []]}, "new": {"name": "qg-att", "ofport": 7}},
                W: {"old": {"ofport": -1}, "new": {"name": "qg-again", "ofport": 7}},
                X: {"new": {"name": "qg-born-attached", "ofport": 2}},
                Y: {"old": {"ofport": 7}, "new": {"name": "qg-detached", "ofport": -1}},
            },
        }))
        .unwrap();
        assert_eq!(
            port_changes(MonitorEvent::Update(updates)),
            vec![
                PortChange::Arrived("qg-again".into()),
                PortChange::Arrived("qg-att".into()),
                PortChange::Arrived("qg-born-attached".into()),
                PortChange::Port("qg-detached".into()),
                PortChange::Arrived("qg-new".into()),
            ]
        );
        // Only the ofport changing makes an attach: a renamed, attached Interface does not.
        let renamed = parse_table_updates(&json!({
            "Interface": {U: {"old": {"name": "a"}, "new": {"name": "qg-b", "ofport": 7}}},
        }))
        .unwrap();
        assert_eq!(
            port_changes(MonitorEvent::Update(renamed)),
            vec![PortChange::Port("qg-b".into())]
        );
    }

    #[test]
    fn standby_ports_are_held_on_arrival_and_while_hagw_holds_them() {
        let guarded = Guarded {
            for_good: ["qg-l2".to_owned()].into(),
            standby: ["qg-l2".to_owned(), "qg-silent".to_owned(), "qg-held".to_owned()].into(),
        };
        let hagw_holds: BTreeSet<String> = ["qg-held".to_owned(), "qg-primary".to_owned()].into();
        for (port, arrived, wanted) in [
            ("qg-l2", false, true),
            ("qg-silent", true, true),
            // Released by hagw after settling: a retag is not undone.
            ("qg-silent", false, false),
            ("qg-held", false, true),
            // Not a standby (a primary, or no longer managed), whatever hagw last did.
            ("qg-primary", false, false),
            ("qg-primary", true, false),
        ] {
            assert_eq!(guarded.wants_hold(port, arrived, &hagw_holds), wanted, "{port} {arrived}");
        }
        assert_eq!(guarded.to_hold(&hagw_holds), ["qg-held", "qg-l2"]);
        assert!(Guarded::for_good(["p".to_owned()]).wants_hold("p", false, &BTreeSet::new()));
    }

    #[test]
    fn reconnect_means_resync() {
        assert_eq!(port_changes(MonitorEvent::Disconnected), vec![]);
        let all = parse_table_updates(&json!({})).unwrap();
        assert_eq!(port_changes(MonitorEvent::Resync(all)), vec![PortChange::Resync]);
    }
}
