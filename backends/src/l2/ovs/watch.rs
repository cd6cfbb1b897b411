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
use super::{OvsBackend, target};
use crate::ovsdb::{
    InterfaceRow, MonitorEvent, MonitorRequest, MonitorRequests, MonitorStream, OvsdbClient,
    PortRow, VSWITCH_DB,
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
    /// The watched columns of this port changed, or it was added or deleted.
    Port(String),
    /// Any port may have changed (first event of a stream, and after every reconnect).
    Resync,
}

/// The events a monitor update or resync means for ports.
fn port_changes(event: MonitorEvent) -> Vec<PortChange> {
    match event {
        MonitorEvent::Update(tables) => [PortRow::TABLE, InterfaceRow::TABLE]
            .iter()
            .filter_map(|table| tables.get(*table))
            .flat_map(|rows| rows.values())
            .filter_map(|update| {
                let row = update.new.as_ref().or(update.old.as_ref())?;
                Some(PortChange::Port(row.get("name")?.as_str()?.to_owned()))
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
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
            Ok(_) => return,
            Err(e) if e.is_transient() && attempt < REHOLD_ATTEMPTS => {
                debug!(port, attempt, error = %e, "re-hold raced, retrying");
            }
            // A later change (the port appearing, the reconnect's resync) triggers it again.
            Err(e) => warn!(port, error = %e, "re-hold failed"),
        }
    }
}

/// Keeps every port in `ports` fully held (triple and `no-receive`): on any change to one of
/// them, on every resync, when a port joins the set, when ovs-vswitchd (re)creates a bridge
/// (a restart drops `no-receive`; see [`BridgeStarts`]) and every [`RECHECK_INTERVAL`], it
/// is held again at once with the same code as a planned hold (a no-op if it is). Runs
/// until `ports`' sender is dropped or the change stream ends. A port leaves the set before
/// it is released, or this task will hold it again.
pub async fn keep_held(
    backend: &OvsBackend,
    ports: watch::Receiver<BTreeSet<String>>,
) -> Result<(), Error> {
    keep_held_every(backend, ports, RECHECK_INTERVAL).await
}

/// [`keep_held`] with its periodic re-check every `recheck` (tests lengthen it to show that
/// an event, not the period, did the work).
pub async fn keep_held_every(
    backend: &OvsBackend,
    mut ports: watch::Receiver<BTreeSet<String>>,
    recheck: Duration,
) -> Result<(), Error> {
    let mut changes = backend.changes().await?;
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
            _ = periodic.tick() => ports.borrow().iter().cloned().collect(),
            () = sleep_until(next_soon.unwrap_or_else(Instant::now)), if next_soon.is_some() => {
                let now = Instant::now();
                soon.retain(|at| *at > now);
                ports.borrow().iter().cloned().collect()
            }
            bridge = next_bridge_start(&mut bridge_starts) => {
                let Some(bridge) = bridge else {
                    bridge_starts = None;
                    continue;
                };
                info!(bridge, "ovs-vswitchd (re)created a bridge; re-holding");
                let now = Instant::now();
                soon.extend(AFTER_RESTART.iter().map(|after| now + *after));
                ports.borrow().iter().cloned().collect()
            }
            change = changes.next() => match change {
                None => return Ok(()),
                Some(PortChange::Port(name)) => {
                    ports.borrow().contains(&name).then_some(name).into_iter().collect()
                }
                Some(PortChange::Resync) => ports.borrow().iter().cloned().collect(),
            },
            changed = ports.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                ports.borrow_and_update().iter().cloned().collect()
            }
        };
        for port in due {
            rehold(backend, &port).instrument(info_span!("rehold", target = %target(&port))).await;
        }
    }
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
pub async fn keep_held_retrying(
    backend: &OvsBackend,
    mut ports: watch::Receiver<BTreeSet<String>>,
) {
    loop {
        match keep_held(backend, ports.clone()).await {
            Ok(()) => return,
            Err(e) => debug!(error = %e, "cannot watch OVS ports yet; retrying"),
        }
        tokio::select! {
            changed = ports.changed() => if changed.is_err() { return },
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
                Some(PortChange::Port(port)) => {
                    keys.borrow().get(&port).cloned().unwrap_or_default()
                }
                Some(PortChange::Resync) => keys.borrow().values().flatten().cloned().collect(),
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
/// ([`wake_on_changes`]) and keeps the ports of `l2-hold` standbys held ([`keep_held`]).
/// Dropping it stops both.
#[derive(Debug)]
pub struct OvsFeed {
    keys: watch::Sender<PortKeys>,
    held: watch::Sender<BTreeSet<String>>,
    tasks: [JoinHandle<()>; 2],
}

impl OvsFeed {
    /// Starts both tasks with nothing to watch; see [`OvsFeed::set`].
    pub fn start(backend: OvsBackend, wake: mpsc::UnboundedSender<String>) -> Self {
        let (keys, keys_rx) = watch::channel(PortKeys::new());
        let (held, held_rx) = watch::channel(BTreeSet::new());
        let span = info_span!("ovs_feed", endpoint = %backend.endpoint);
        let waker = backend.clone();
        let tasks = [
            tokio::spawn(
                async move { wake_on_changes(&waker, keys_rx, wake).await }
                    .instrument(span.clone()),
            ),
            tokio::spawn(
                async move { keep_held_retrying(&backend, held_rx).await }.instrument(span),
            ),
        ];
        Self { keys, held, tasks }
    }

    /// The ports to watch (with what to wake) and the ones to keep held. Remove a port from
    /// `held` before releasing it, or it is held again.
    pub fn set(&self, keys: PortKeys, held: BTreeSet<String>) {
        self.keys.send_if_modified(|current| std::mem::replace(current, keys.clone()) != keys);
        self.held.send_if_modified(|current| std::mem::replace(current, held.clone()) != held);
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

    #[test]
    fn updates_name_the_ports_they_touch() {
        let updates = parse_table_updates(&json!({
            "Port": {
                U: {"old": {"tag": 4095}, "new": {"name": "qg-1", "tag": 5}},
                V: {"old": {"name": "qg-2", "tag": 4095}},
            },
            "Interface": {U: {"new": {"name": "qg-9", "ofport": 3}}, V: {"new": {"name": "qg-1"}}},
            "Bridge": {U: {"new": {"name": "br-int"}}},
        }))
        .unwrap();
        let mut changes = port_changes(MonitorEvent::Update(updates));
        changes.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            changes,
            vec![
                PortChange::Port("qg-1".into()),
                PortChange::Port("qg-2".into()),
                PortChange::Port("qg-9".into())
            ]
        );
    }

    #[test]
    fn reconnect_means_resync() {
        assert_eq!(port_changes(MonitorEvent::Disconnected), vec![]);
        let all = parse_table_updates(&json!({})).unwrap();
        assert_eq!(port_changes(MonitorEvent::Resync(all)), vec![PortChange::Resync]);
    }
}
