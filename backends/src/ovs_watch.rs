//! What happens to OVS ports, reported and nothing else: an OVSDB monitor of the `Port` and
//! `Interface` tables ([`PortChanges`]), ovs-vswitchd (re)creating its bridges ([`restarts`]),
//! merged into [`PortEvents`]; and [`wake_on_changes`], which turns them into wake-ups of the
//! routers concerned.
//!
//! This module decides nothing about a port and cannot change one: it lives outside
//! [`crate::l2`], gets an OVSDB client and a run directory, never a backend, and only reads.
//! The OVS agent retags every port when it restarts, which lifts part of a standby's hold;
//! the router's next pass, woken by the report, puts it back. A port's arrival is reported
//! too, for the backend to apply the planner's [`HoldOnArrival`](hagw_core::planner::HoldOnArrival)
//! (`crate::l2::ovs`). After a reconnect the monitor's view is stale and anything may have
//! changed during the outage, so a [`PortChange::Resync`] asks for every port to be looked at
//! again.

mod recheck;
pub mod restarts;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use hagw_core::supervisor::RouterHandle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::ovsdb::{
    InterfaceRow, MonitorEvent, MonitorRequest, MonitorRequests, MonitorStream, OvsdbClient,
    OvsdbError, PortRow, RowUpdate, VSWITCH_DB,
};
use recheck::Bits;
use restarts::BridgeStarts;

/// Columns whose change can lift or restore a hold, or tell which VLAN to restore.
const WATCHED: [&str; 6] = ["name", "tag", "vlan_mode", "trunks", "other_config", "external_ids"];

/// Interface columns that change when ovs-vswitchd attaches the port to its OpenFlow bridge
/// (only then can `no-receive` be set) or re-attaches it. Neutron names a port's single
/// interface like the port, so an Interface change is reported under its name.
const WATCHED_INTERFACE: [&str; 2] = ["name", "ofport"];

/// How often [`PortEvents`] looks for what no event reports (`no-receive` changed by another
/// OpenFlow client, an ovs-vswitchd restart when its run directory cannot be watched): the
/// ports whose `no-receive` changed since the last look, or every port when it cannot tell
/// (see [`recheck`]).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(10);

/// After ovs-vswitchd (re)created a bridge, when to report it again: its ports are attached
/// (and can take `no-receive`) shortly after the bridge itself.
const AFTER_RESTART: [Duration; 3] =
    [Duration::from_millis(100), Duration::from_millis(500), Duration::from_secs(2)];

/// How long to wait before re-issuing a monitor the client gave up on.
const REMONITOR_DELAY: Duration = Duration::from_secs(1);

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

/// Changes only, without the tables' initial contents: the first event of every stream is a
/// [`PortChange::Resync`] whatever they hold, and on a network node they are 6,000 rows
/// (br-int's 3,000 ports and their interfaces), parsed into JSON values at every start and
/// reconnect only to be dropped: megabytes of short-lived allocations that left the agent's
/// heap fragmented, and resident, for good.
fn requests() -> MonitorRequests {
    let changes = |columns: &[&str]| {
        let mut request = MonitorRequest::columns(columns);
        request.select.initial = false;
        request
    };
    MonitorRequests::from([
        (PortRow::TABLE.to_owned(), changes(&WATCHED)),
        (InterfaceRow::TABLE.to_owned(), changes(&WATCHED_INTERFACE)),
    ])
}

async fn monitor(client: &OvsdbClient) -> Result<MonitorStream, OvsdbError> {
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

impl PortChanges {
    /// Starts watching the Port and Interface tables. When this returns the monitor is in
    /// place, so any later change is reported. Fails only if OVSDB cannot be reached now; once
    /// started, the stream survives ovsdb-server restarts.
    pub async fn start(client: OvsdbClient, endpoint: &str) -> Result<PortChanges, OvsdbError> {
        let stream = monitor(&client).await?;
        let (tx, events) = mpsc::channel(256);
        let span = info_span!("ovs_watch", endpoint = %endpoint);
        let task = tokio::spawn(forward(client, stream, tx).instrument(span));
        Ok(PortChanges { events, task })
    }
}

/// Something that may concern OVS ports, from any of the sources hagw watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortEvent {
    /// From the OVSDB monitor.
    Change(PortChange),
    /// ovs-vswitchd (re)created this bridge, dropping the OpenFlow state of its ports
    /// (`no-receive`) with nothing to show in OVSDB; reported again [`AFTER_RESTART`], since
    /// its ports are attached a little later.
    Restarted(String),
    /// The periodic look could not tell which ports changed (see [`PortEvents::start`]): every
    /// port may have.
    Recheck,
}

/// The OVSDB monitor's changes, ovs-vswitchd's restarts and (optionally) a periodic recheck
/// as one stream. Dropping it stops its monitor.
#[derive(Debug)]
pub struct PortEvents {
    changes: PortChanges,
    restarts: Option<BridgeStarts>,
    /// When to report the last restart again.
    again: Vec<(Instant, String)>,
    recheck: Option<tokio::time::Interval>,
    /// Where the bridges' management sockets are, for the recheck's listings.
    rundir: Option<std::path::PathBuf>,
    /// The recheck's listing under way.
    look: Option<tokio::task::JoinHandle<Option<Bits>>>,
    /// What the last listing found.
    last: Option<Bits>,
    /// Ports the last listing found changed, still to report.
    changed: Vec<String>,
}

impl PortEvents {
    /// Starts [`PortChanges`] on `client` and watches `rundir` (if ovs-vswitchd's `no-receive`
    /// is used) for bridges being (re)created; with `recheck`, that often a listing of the
    /// bridges' ports over OpenFlow: a [`PortChange::Port`] for each port whose `no-receive`
    /// changed since the listing before, [`PortEvent::Recheck`] if it cannot tell (the first
    /// listing, a bridge not answering, no run directory).
    pub async fn start(
        client: OvsdbClient,
        endpoint: &str,
        rundir: Option<&Path>,
        recheck: Option<Duration>,
    ) -> Result<PortEvents, OvsdbError> {
        let changes = PortChanges::start(client, endpoint).await?;
        let restarts = rundir.and_then(|dir| {
            BridgeStarts::watch(dir)
                .inspect_err(|e| {
                    warn!(rundir = %dir.display(), error = %e,
                        "cannot watch for ovs-vswitchd restarts; no-receive is re-checked periodically");
                })
                .ok()
        });
        let recheck = recheck.map(|every| {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.reset();
            interval
        });
        let rundir = rundir.map(Path::to_path_buf);
        Ok(PortEvents {
            changes,
            restarts,
            again: Vec::new(),
            recheck,
            rundir,
            look: None,
            last: None,
            changed: Vec::new(),
        })
    }

    /// The next event; `None` once the monitor is gone.
    pub async fn next(&mut self) -> Option<PortEvent> {
        loop {
            if let Some(port) = self.changed.pop() {
                return Some(PortEvent::Change(PortChange::Port(port)));
            }
            let next_again = self.again.iter().map(|(at, _)| *at).min();
            tokio::select! {
                change = self.changes.next() => return change.map(PortEvent::Change),
                bridge = next_bridge_start(&mut self.restarts) => {
                    let Some(bridge) = bridge else {
                        self.restarts = None;
                        continue;
                    };
                    info!(bridge, "ovs-vswitchd (re)created a bridge");
                    let now = Instant::now();
                    self.again.extend(AFTER_RESTART.iter().map(|after| (now + *after, bridge.clone())));
                    return Some(PortEvent::Restarted(bridge));
                }
                () = sleep_until(next_again.unwrap_or_else(Instant::now)), if next_again.is_some() => {
                    let now = Instant::now();
                    let due = self.again.iter().position(|(at, _)| *at <= now)?;
                    return Some(PortEvent::Restarted(self.again.swap_remove(due).1));
                }
                _ = tick(&mut self.recheck) => {
                    let Some(rundir) = self.rundir.clone() else { return Some(PortEvent::Recheck) };
                    if self.look.is_none() {
                        self.look = Some(tokio::spawn(recheck::look(rundir)));
                    }
                }
                looked = looked(&mut self.look) => {
                    self.look = None;
                    let Some(now) = looked else {
                        self.last = None;
                        return Some(PortEvent::Recheck);
                    };
                    match self.last.replace(now) {
                        Some(before) => {
                            self.changed = recheck::changed(&before, self.last.as_ref()?);
                            debug!(ports = self.changed.len(), "recheck: no-receive changed");
                        }
                        None => return Some(PortEvent::Recheck),
                    }
                }
            }
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

/// The recheck's listing once it is done (`None`: it could not tell), or never without one.
async fn looked(look: &mut Option<tokio::task::JoinHandle<Option<Bits>>>) -> Option<Bits> {
    match look {
        Some(task) => task.await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// The next periodic recheck, or never without one.
async fn tick(recheck: &mut Option<tokio::time::Interval>) {
    match recheck {
        Some(interval) => drop(interval.tick().await),
        None => std::future::pending().await,
    }
}

/// For each watched OVS port, the routers to wake when it is reported.
pub type PortRouters = BTreeMap<String, Vec<RouterHandle>>;

/// Wakes the routers of a port on every change of it, and all of them on every resync,
/// ovs-vswitchd restart and recheck, until `routers`' sender is dropped. `start` starts the
/// events (see [`PortEvents::start`]); while OVSDB cannot be reached it is tried again. The
/// routers are kicked from here, without a detour through the agent's loop: their pass is
/// what repairs a hold someone lifted.
pub async fn wake_on_changes<F, Fut, E>(start: F, mut routers: watch::Receiver<PortRouters>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<PortEvents, E>>,
    E: std::fmt::Display,
{
    let mut events = loop {
        match start().await {
            Ok(events) => break events,
            Err(e) => debug!(error = %e, "cannot watch OVS ports yet; retrying"),
        }
        tokio::select! {
            changed = routers.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(REMONITOR_DELAY) => {}
        }
    };
    loop {
        tokio::select! {
            event = events.next() => {
                let routers = routers.borrow();
                match event {
                    None => return,
                    Some(PortEvent::Change(change)) if change.port().is_some() => {
                        let port = change.port().unwrap_or_default();
                        routers.get(port).into_iter().flatten().for_each(RouterHandle::kick);
                    }
                    Some(_) => routers.values().flatten().for_each(RouterHandle::kick),
                }
            }
            changed = routers.changed() => {
                if changed.is_err() {
                    return;
                }
                routers.borrow_and_update();
            }
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
    fn the_monitor_asks_for_changes_only() {
        let requests = requests();
        assert_eq!(requests.len(), 2);
        for (table, request) in requests {
            assert!(!request.select.initial, "{table}: the initial rows are asked for");
            assert!(request.select.insert && request.select.delete && request.select.modify);
        }
    }

    #[test]
    fn reconnect_means_resync() {
        assert_eq!(port_changes(MonitorEvent::Disconnected), vec![]);
        let all = parse_table_updates(&json!({})).unwrap();
        assert_eq!(port_changes(MonitorEvent::Resync(all)), vec![PortChange::Resync]);
    }
}
