//! The OVS backend: holds a standby's gateway port in Neutron's dead VLAN through OVSDB.
//!
//! One [`OvsBackend`] serves every router on a node (one OVSDB endpoint). It connects lazily,
//! so building it needs no I/O and a missing ovsdb-server is a transient error of the first
//! pass rather than a startup failure; the client then reconnects by itself.
//!
//! - [`port`]: the pure rules (row → [`L2State`], the hold and release transactions),
//! - `lookup`: the reads that find a port, naming the rows they select (a network node's
//!   br-int lists 3,000+ ports),
//! - [`ofport`]: the retag-proof half of the hold, OpenFlow `no-receive`, spoken over the
//!   bridge's management socket by [`openflow`] (`ovs-ofctl` as the fallback),
//! - `arrivals`: the planner's [`HoldOnArrival`] applied when a port arrives between passes
//!   (what happens to ports is reported by [`crate::ovs_watch`], which cannot change them),
//! - [`applied`]: waiting until ovs-vswitchd has applied a release before it is announced,
//!   `releases`: once for every release committed together,
//! - [`dpflows`]: then forgetting the datapath flows the port had while held (its cached
//!   `drop`), over ovs-vswitchd's control socket ([`unixctl`]).
//!
//! A hold is both the dead-VLAN triple in the Port row and `no-receive` on the OpenFlow port;
//! either alone keeps the port's frames off the uplink, so the port counts as held while
//! either is in place ([`HoldState::Partial`](hagw_core::observed::HoldState) with one: a
//! primary still releases both, a standby's pass completes it), and every hold puts both back.

pub mod applied;
mod arrivals;
pub mod dpflows;
mod listings;
mod lookup;
pub mod ofport;
pub mod openflow;
pub mod port;
mod releases;
pub mod unixctl;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hagw_core::Error;
use hagw_core::model::{L2BackendSpec, RouterSpec};
use hagw_core::observed::L2State;
use hagw_core::planner::HoldOnArrival;
use tokio::sync::OnceCell;
use tracing::{debug, info, instrument, warn};

use crate::ovs_watch::{PortChanges, PortEvents};
use crate::ovsdb::{
    ClientConfig, Endpoint, InterfaceRow, Op, OvsdbClient, OvsdbError, PortRow, VSWITCH_DB,
};
use arrivals::Arrivals;
use dpflows::DatapathFlows;
use ofport::{NoReceive, NoReceiveError};
use releases::Releases;

/// The OVSDB Port a router's gateway is plugged into: the spec's `port`, else the gateway
/// device name (Neutron names the OVS port after the device).
pub fn port_name(spec: &RouterSpec) -> &str {
    match &spec.backend {
        L2BackendSpec::Ovs { port: Some(port) } => port,
        _ => &spec.gateway_device,
    }
}

/// Where an OVS operation happened, for [`Error::target`].
fn target(port: &str) -> String {
    format!("ovsdb port {port}")
}

/// Maps a client error to the loop's error kind. A failed `wait` means someone changed the
/// port between our read and our write: re-reading and re-planning resolves it, so for the
/// reconcile loop it is transient (the client itself calls it permanent, because the same
/// request would fail again).
fn ovs_error(operation: &str, port: &str, e: OvsdbError) -> Error {
    shared_ovs_error(operation, port, Arc::new(e))
}

/// [`ovs_error`] of an error shared by the requests of one batch ([`releases`]).
fn shared_ovs_error(operation: &str, port: &str, e: Arc<OvsdbError>) -> Error {
    let raced = matches!(&*e, OvsdbError::OpFailed { op, .. } if op == "wait");
    if e.is_transient() || raced {
        Error::transient(operation, target(port), e)
    } else {
        Error::permanent(operation, target(port), e)
    }
}

/// The OVS L2 backend of one OVSDB endpoint. Clones share one connection, so every router
/// on the node uses the same client and monitor.
#[derive(Debug, Clone)]
pub struct OvsBackend {
    endpoint: String,
    config: ClientConfig,
    client: Arc<OnceCell<OvsdbClient>>,
    /// `None`: the OVSDB triple only (see [`OvsBackend::ovsdb_only`]).
    no_recv: Option<NoReceive>,
    /// The datapath flows of released ports, purged through ovs-vswitchd's control socket.
    flows: DatapathFlows,
    /// Releases committed and waited for together.
    releases: Releases,
    /// The planner's [`HoldOnArrival`] per port, applied between passes.
    arrivals: Arc<Arrivals>,
    /// What the last observation of each port read ([`Seen`]).
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

/// What an observation read of a port, for what follows it: the pass's hold takes the row
/// instead of reading it again, and the next observation asks the bridge the port was in
/// for `no-receive` while it reads OVSDB. Both only save time: the hold's transaction is
/// guarded by the row's columns (a row changed since is refused, and read again on the
/// retry), and a port found in another bridge is asked again there.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    located: Located,
    /// Not taken by a hold yet.
    fresh: bool,
}

/// How long an observed row stands in for a read in the hold of the same pass; a pass
/// applies its plan within milliseconds of observing.
const SEEN_FOR_HOLD: Duration = Duration::from_secs(1);

impl OvsBackend {
    /// A backend for `endpoint` (`unix:PATH` or `tcp:HOST:PORT`); connects on first use.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self::with_config(endpoint, ClientConfig::default())
    }

    /// As [`OvsBackend::new`], with the client's timing knobs (tests shorten them).
    /// `no-receive` reaches the bridges through `OVS_RUNDIR`, else the endpoint's directory
    /// (see [`ofport::rundir_for`]).
    pub fn with_config(endpoint: impl Into<String>, config: ClientConfig) -> Self {
        let endpoint = endpoint.into();
        let env = std::env::var("OVS_RUNDIR").ok();
        let rundir = ofport::rundir_for(&endpoint, env.as_deref());
        let flows = DatapathFlows::new(rundir.clone());
        let no_recv = NoReceive::new(rundir);
        Self {
            endpoint,
            config,
            client: Arc::new(OnceCell::new()),
            no_recv: Some(no_recv),
            flows,
            releases: Releases::default(),
            arrivals: Arc::default(),
            seen: Arc::default(),
        }
    }

    /// Puts the planner's standing decision for `port` in force until its next plan: the
    /// port is held the moment it arrives (see [`HoldOnArrival`]). The first decision to hold
    /// starts the task that applies them, for the life of the runtime.
    pub fn hold_on_arrival(&self, port: &str, hold: HoldOnArrival) {
        self.arrivals.set(self, port, hold);
    }

    /// What happens to ports: the OVSDB monitor's changes (see [`PortChanges::start`]).
    pub async fn changes(&self) -> Result<PortChanges, Error> {
        let client = self.client().await?.clone();
        PortChanges::start(client, &self.endpoint).await.map_err(|e| self.monitor_error(e))
    }

    /// What happens to ports: the monitor's changes, ovs-vswitchd's restarts and, with
    /// `recheck`, a periodic look (see [`PortEvents::start`]).
    pub async fn events(&self, recheck: Option<Duration>) -> Result<PortEvents, Error> {
        let client = self.client().await?.clone();
        PortEvents::start(client, &self.endpoint, self.rundir(), recheck)
            .await
            .map_err(|e| self.monitor_error(e))
    }

    fn monitor_error(&self, e: OvsdbError) -> Error {
        Error::transient("monitor", format!("ovsdb {} Port table", self.endpoint), e)
    }

    /// Holds with the OVSDB triple alone, without `no-receive`: for an ovsdb-server without
    /// ovs-vswitchd (the backend's database tests). The OVS agent's retag then lifts the hold
    /// until the re-hold lands.
    pub fn ovsdb_only(mut self) -> Self {
        self.no_recv = None;
        self
    }

    /// The run directory whose `<bridge>.mgmt` sockets carry `no-receive`, if it is used.
    pub fn rundir(&self) -> Option<&std::path::Path> {
        self.no_recv.as_ref().map(NoReceive::rundir)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The shared client, connecting if this is the first use (or the first one failed).
    async fn client(&self) -> Result<&OvsdbClient, Error> {
        let connect = || async {
            let endpoint: Endpoint = self.endpoint.parse().map_err(|e: OvsdbError| {
                Error::permanent("connect", format!("ovsdb {}", self.endpoint), e)
            })?;
            OvsdbClient::connect_with(endpoint, self.config.clone())
                .await
                .map_err(|e| Error::transient("connect", format!("ovsdb {}", self.endpoint), e))
        };
        self.client.get_or_try_init(connect).await
    }

    /// Reads the Port row named `port`, whether ovs-vswitchd has attached it and, where
    /// `no-receive` needs it, the bridge it is in (see [`lookup`]); `None` if there is no
    /// such row.
    async fn read(&self, port: &str) -> Result<Option<Located>, Error> {
        let client = self.client().await?;
        let results = client
            .transact(VSWITCH_DB, &lookup::port_ops(port))
            .await
            .map_err(|e| ovs_error("read", port, e))?;
        let mut results = results.into_iter().map(|r| r.rows.unwrap_or_default());
        let mut next = || results.next().unwrap_or_default();
        let (rows, interfaces) = (next(), next());
        let row = match rows.as_slice() {
            [] => return Ok(None),
            [row] => PortRow::from_row(None, row).map_err(|e| ovs_error("read", port, e))?,
            many => {
                return Err(Error::permanent(
                    "read",
                    target(port),
                    format!("{} Port rows have this name", many.len()),
                ));
            }
        };
        let attached = interfaces.iter().any(|iface| {
            InterfaceRow::from_row(None, iface).is_ok_and(|i| i.ofport.is_some_and(|n| n > 0))
        });
        // Only an attached port's bridge is used: for `no-receive` and the datapath purge.
        if !attached || self.no_recv.is_none() {
            return Ok(Some(Located { bridge: None, datapath: None, row, attached }));
        }
        let bridges = client
            .transact(VSWITCH_DB, &[lookup::bridge_op(&row.uuid)])
            .await
            .map_err(|e| ovs_error("read", port, e))?;
        let bridges = bridges.into_iter().next().and_then(|r| r.rows).unwrap_or_default();
        let (bridge, datapath) = lookup::bridge_of(&bridges).unzip();
        Ok(Some(Located { bridge, datapath, row, attached }))
    }

    /// Whether the port's OpenFlow `no-receive` is set; `None` where it does not apply (the
    /// OVSDB triple only, or the port not attached to a bridge yet). Unreadable
    /// (ovs-vswitchd down) counts as not set: hagw never relies on what it cannot see.
    /// `early` is the reading of the bridge the port was in before, taken while OVSDB was
    /// read: used if the port is still there.
    async fn no_receive(
        &self,
        port: &Located,
        early: Option<(String, Result<bool, NoReceiveError>)>,
    ) -> Option<bool> {
        let (Some(no_recv), Some(bridge)) = (&self.no_recv, &port.bridge) else { return None };
        if !port.attached {
            return None;
        }
        let reading = match early {
            Some((asked, reading)) if asked == *bridge => reading,
            _ => no_recv.get(bridge, &port.row.name).await,
        };
        match reading {
            Ok(set) => Some(set),
            Err(e) => {
                debug!(error = %e, "no-receive unreadable, taken as not set");
                Some(false)
            }
        }
    }

    /// `no-receive` of `port` in the bridge its last observation found it in, if any.
    async fn no_receive_early(&self, port: &str) -> Option<(String, Result<bool, NoReceiveError>)> {
        let no_recv = self.no_recv.as_ref()?;
        let bridge = self.seen().get(port)?.located.bridge.clone()?;
        let reading = no_recv.get(&bridge, port).await;
        Some((bridge, reading))
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The row the port's last observation read, once, if it is recent enough to stand in
    /// for a read in the hold of the same pass.
    fn take_seen(&self, port: &str) -> Option<Located> {
        let mut seen = self.seen();
        let entry = seen.get_mut(port).filter(|s| s.fresh && s.at.elapsed() < SEEN_FOR_HOLD)?;
        entry.fresh = false;
        Some(entry.located.clone())
    }

    /// The port's hold state: held with the dead-VLAN triple and `no-receive`, partially
    /// with one of them (either alone keeps its frames off the uplink); a missing Port row
    /// is [`HoldState::Unknown`](hagw_core::observed::HoldState).
    // A failure here is the reconcile loop's to report (each retry at debug, the last at
    // warn): an optimistic-lock conflict with the L2 agent is retried, not an error.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn observe_port(&self, port: &str) -> Result<L2State, Error> {
        self.observe_port_for(port, true).await
    }

    /// [`OvsBackend::observe_port`]; unless `partial_matters`, a port whose triple is gone is
    /// reported released without waiting for `no-receive`: the plan holds it either way
    /// ([`hagw_core::planner::partial_hold_matters`]), putting back both halves.
    async fn observe_port_for(&self, port: &str, partial_matters: bool) -> Result<L2State, Error> {
        let at = Instant::now();
        // `no-receive` is asked of the bridge the port was in while OVSDB is read.
        let mut early = std::pin::pin!(self.no_receive_early(port));
        let mut asked = None;
        let read = {
            let mut read = std::pin::pin!(self.read(port));
            loop {
                tokio::select! {
                    read = &mut read => break read,
                    reading = &mut early, if asked.is_none() => asked = Some(reading),
                }
            }
        };
        let Some(located) = read? else {
            self.seen().remove(port);
            return Ok(port::l2_state(None));
        };
        let no_receive = if partial_matters || port::is_held(&located.row) {
            let early = match asked {
                Some(reading) => reading,
                None => early.await,
            };
            self.no_receive(&located, early).await
        } else {
            None
        };
        let state = port::l2_state_with(&located.row, no_receive);
        self.seen().insert(port.to_owned(), Seen { at, located, fresh: true });
        Ok(state)
    }

    /// Holds the port: the dead-VLAN triple in one guarded transaction (see
    /// [`port::hold_ops`]), then `no-receive` on its OpenFlow port, which the OVS agent's
    /// retag cannot lift. Idempotent; fails (transiently) until both are in place.
    #[instrument(skip(self), err(level = "debug"))]
    async fn hold_port(&self, port: &str) -> Result<(), Error> {
        let located = match self.take_seen(port) {
            Some(located) => located,
            None => self.read(port).await?.ok_or_else(|| missing("hold", port))?,
        };
        self.hold_located(port, &located).await
    }

    /// [`OvsBackend::hold_port`] on a port's arrival, which is reported again when it is
    /// attached: a missing Port row needs no hold, and a port ovs-vswitchd has not attached
    /// yet gets the triple now and `no-receive` on its attach.
    async fn hold_if_present(&self, port: &str) -> Result<Rehold, Error> {
        let Some(located) = self.read(port).await? else { return Ok(Rehold::Absent) };
        if self.no_recv.is_some() && !located.attached {
            self.hold_triple(port, &located.row).await?;
            return Ok(Rehold::AwaitingAttach);
        }
        self.hold_located(port, &located).await.map(|()| Rehold::Held)
    }

    /// The OVSDB half of a hold: the dead-VLAN triple.
    async fn hold_triple(&self, port: &str, row: &PortRow) -> Result<(), Error> {
        if let Some(ops) = port::hold_ops(row) {
            self.commit("hold", port, &ops).await?;
            info!(port, tag = ?row.tag, vlan_mode = ?row.vlan_mode, "held in dead VLAN");
        }
        Ok(())
    }

    async fn hold_located(&self, port: &str, located: &Located) -> Result<(), Error> {
        self.hold_triple(port, &located.row).await?;
        let Some(no_recv) = &self.no_recv else { return Ok(()) };
        let bridge = located.bridge.as_deref().filter(|_| located.attached).ok_or_else(|| {
            Error::transient("hold", target(port), "ovs-vswitchd has not attached the port yet")
        })?;
        // Written unconditionally: `mod-port` is idempotent and as cheap as reading it first.
        no_recv.set(bridge, port, true).await.map_err(|e| no_receive_error("hold", port, e))?;
        debug!(port, bridge, "no-receive set");
        Ok(())
    }

    /// Releases the port: clears `no-receive`, then restores the local VLAN in one guarded
    /// transaction, shared with every release asked for meanwhile ([`releases`]), and waits
    /// until ovs-vswitchd has applied it. Refuses (transiently, the agent may still wire it)
    /// while no real local VLAN is known; then the port stays fully held, `no-receive`
    /// included.
    #[instrument(skip(self), err(level = "debug"))]
    async fn release_port(&self, port: &str) -> Result<(), Error> {
        let located = match self.take_seen(port) {
            Some(located) => located,
            None => self.read(port).await?.ok_or_else(|| missing("release", port))?,
        };
        let row = &located.row;
        let ops = port::release_ops(row).map_err(|port::NotWired| {
            Error::transient(
                "release",
                target(port),
                "not wired: no local VLAN in other_config:tag or external_ids:hagw-saved-tag",
            )
        })?;
        if self.no_recv.is_none() {
            // Database only (no ovs-vswitchd to wait for).
            if let Some(ops) = ops {
                self.commit("release", port, &ops).await?;
                info!(local_vlan = ?port::local_vlan(row), "released to local VLAN");
            }
            return Ok(());
        }
        // `no-receive` first: its OpenFlow exchange waits while ovs-vswitchd reconfigures
        // the bridge for a commit (a mass failover with both at once took 14.7 s instead of
        // 6.4 s to announce, docs/benchmarks.md); a primary has nothing to keep quiet in
        // between.
        self.clear_no_receive(port, &located).await?;
        let applied = self.commit_release(port, row, ops).await?;
        // Announcing before ovs-vswitchd has applied the release would lose the first round
        // into a port that still drops. A stuck ovs-vswitchd fails the step (the loop retries
        // it, waiting again), not the announcement.
        match applied {
            Ok(applied::Applied::After(took)) => {
                debug!(us = took.as_micros() as u64, "ovs-vswitchd applied the release");
                self.purge_held_flows(port, located.datapath.as_deref()).await;
                Ok(())
            }
            Ok(applied::Applied::TimedOut) => Err(Error::transient(
                "release",
                target(port),
                format!(
                    "ovs-vswitchd has not applied the release within {} ms",
                    VSWITCHD_APPLY_WAIT.as_millis()
                ),
            )),
            Err(e) => {
                warn!(error = %e, "cannot tell whether ovs-vswitchd applied the release");
                Ok(())
            }
        }
    }

    /// The OpenFlow half of a release: clears `no-receive` (a port ovs-vswitchd has not
    /// attached has none to clear).
    async fn clear_no_receive(&self, port: &str, located: &Located) -> Result<(), Error> {
        match (&self.no_recv, located.bridge.as_deref().filter(|_| located.attached)) {
            (Some(no_recv), Some(bridge)) => match no_recv.set(bridge, port, false).await {
                // Detached since the read: nothing to clear either.
                Ok(()) | Err(NoReceiveError::NoSuchPort { .. }) => Ok(()),
                Err(e) => Err(no_receive_error("release", port, e)),
            },
            (Some(_), None) => {
                debug!("not attached to a bridge, no no-receive to clear");
                Ok(())
            }
            (None, _) => Ok(()),
        }
    }

    /// The OVSDB half of a release (`ops`, `None` if the row is released already), and
    /// whether ovs-vswitchd has applied it.
    async fn commit_release(
        &self,
        port: &str,
        row: &PortRow,
        ops: Option<Vec<Op>>,
    ) -> Result<Result<applied::Applied, Arc<OvsdbError>>, Error> {
        let client = self.client().await?;
        match ops {
            Some(ops) => {
                let outcome = self.releases.commit(client, ops, VSWITCHD_APPLY_WAIT).await;
                let applied = outcome.map_err(|e| shared_ovs_error("release", port, e))?;
                info!(local_vlan = ?port::local_vlan(row), "released to local VLAN");
                Ok(applied)
            }
            // Released already, maybe by a commit whose wait for ovs-vswitchd ran out: the
            // announcement still waits for it.
            None => match applied::behind(client).await {
                Ok(None) => {
                    debug!("already released");
                    Ok(Ok(applied::Applied::After(Duration::ZERO)))
                }
                Ok(Some(target)) => Ok(applied::wait_applied(client, target, VSWITCHD_APPLY_WAIT)
                    .await
                    .map_err(Arc::new)),
                Err(e) => Ok(Err(Arc::new(e))),
            },
        }
    }

    /// Deletes the datapath flows the port had while held (see [`dpflows`]), so round 1 of
    /// the announcement is translated anew instead of matching a cached `drop`. A failure
    /// only costs that round: it is logged, the release stands.
    async fn purge_held_flows(&self, port: &str, datapath: Option<&str>) {
        let Some(datapath) = datapath else { return };
        let start = tokio::time::Instant::now();
        match self.flows.purge(datapath, port).await {
            Ok(p) => info!(
                flows = p.flows,
                dropping = p.dropping,
                deleted = p.deleted,
                batch = p.batch,
                us = start.elapsed().as_micros() as u64,
                "datapath flows of the held port purged"
            ),
            Err(e) => warn!(error = %e, "cannot purge the held port's datapath flows"),
        }
    }

    async fn commit(&self, operation: &str, port: &str, ops: &[Op]) -> Result<(), Error> {
        let client = self.client().await?;
        client.transact(VSWITCH_DB, ops).await.map_err(|e| ovs_error(operation, port, e))?;
        Ok(())
    }

    /// [`OvsBackend::observe_port`] for the router's port.
    pub async fn observe(&self, spec: &RouterSpec) -> Result<L2State, Error> {
        self.observe_port(port_name(spec)).await
    }

    /// [`OvsBackend::observe_port_for`] for the router's port.
    pub async fn observe_for(
        &self,
        spec: &RouterSpec,
        partial_matters: bool,
    ) -> Result<L2State, Error> {
        self.observe_port_for(port_name(spec), partial_matters).await
    }

    /// [`OvsBackend::hold_port`] for the router's port.
    pub async fn hold(&self, spec: &RouterSpec) -> Result<(), Error> {
        self.hold_port(port_name(spec)).await
    }

    /// [`OvsBackend::release_port`] for the router's port.
    pub async fn release(&self, spec: &RouterSpec) -> Result<(), Error> {
        self.release_port(port_name(spec)).await
    }
}

/// How long a release waits for ovs-vswitchd to apply it before the step fails (and is
/// retried by the loop). One reconfiguration of a bridge with 3,000 ports takes ovs-vswitchd
/// hundreds of milliseconds under load (docs/benchmarks.md, "OVS backend at 1,000 routers").
const VSWITCHD_APPLY_WAIT: Duration = Duration::from_secs(2);

/// Maps a failure to read or set `no-receive` to the loop's error kind.
fn no_receive_error(operation: &str, port: &str, e: NoReceiveError) -> Error {
    if e.is_transient() {
        Error::transient(operation, target(port), e)
    } else {
        Error::permanent(operation, target(port), e)
    }
}

/// A Port row and the bridge it is in (`None` while no Bridge lists it yet, or where it is
/// not needed: see [`OvsBackend::read`]).
#[derive(Debug, Clone)]
struct Located {
    row: PortRow,
    bridge: Option<String>,
    /// The bridge's datapath ([`dpflows::datapath_name`]), with `bridge`.
    datapath: Option<String>,
    /// ovs-vswitchd has attached the port (its Interface has an OpenFlow port number), so
    /// `no-receive` can be read and set.
    attached: bool,
}

/// What a hold on arrival ([`OvsBackend::hold_if_present`]) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rehold {
    /// No such Port row: nothing to hold.
    Absent,
    /// Fully held: the triple and, unless [`OvsBackend::ovsdb_only`], `no-receive`.
    Held,
    /// The triple is in place; `no-receive` waits for ovs-vswitchd to attach the port.
    AwaitingAttach,
}

/// The L3 agent has not plugged the port yet (or it was deleted): it may appear any moment.
fn missing(operation: &str, port: &str) -> Error {
    Error::transient(operation, target(port), "no such Port row")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_race_is_transient_a_bad_request_is_not() {
        let raced = OvsdbError::OpFailed {
            index: 1,
            op: "wait".into(),
            error: "timed out".into(),
            details: None,
        };
        let e = ovs_error("hold", "qg-1", raced);
        assert!(e.is_transient());
        assert_eq!(e.target, "ovsdb port qg-1");
        let bad = OvsdbError::OpFailed {
            index: 2,
            op: "update".into(),
            error: "constraint violation".into(),
            details: None,
        };
        assert!(!ovs_error("hold", "qg-1", bad).is_transient());
        assert!(ovs_error("read", "qg-1", OvsdbError::ConnectionLost("eof".into())).is_transient());
    }
}
