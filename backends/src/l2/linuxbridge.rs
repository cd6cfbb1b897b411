//! The Linux bridge backend (Neutron ML2/Linuxbridge): holds a standby's gateway port with an
//! nftables `bridge`-family filter on the name of its bridge-side tap.
//!
//! The gateway `qg-…` is a veth whose peer `tap…` lives in hagw's own network namespace and
//! is plugged into a `brq…` bridge by the Linuxbridge agent. Every per-port bridge mechanism
//! (port state `disabled`, the `locked` flag, VLAN filtering) is reset by the kernel or the
//! agent when the tap is re-plugged or re-created, which leaves a window of milliseconds in
//! which the first MLD report or DAD probe reaches the uplink (docs/linuxbridge-hold.md).
//! A `bridge` table that matches the tap by *name* belongs to no device, so nothing the
//! agents do can undo it, and it can be in place before the tap exists.
//!
//! - hold: one atomic `nft` transaction ensures table, set, chain and rule, and adds the tap
//!   name to the set ([`nft::batch_script`]); it succeeds whether or not the tap exists.
//! - release: deletes the name from the set; the table stays for other held ports.
//! - observe: held iff the structure is complete *and* the name is in the set; if someone
//!   flushed the ruleset the table is gone, the port reads as released, and the planner
//!   holds a standby again. Wired iff the tap is a forwarding port of the configured bridge
//!   ([`wiring`]).
//!
//! Every router shares one table, so concurrent reads are one `nft list` and concurrent
//! holds and releases one transaction ([`coalesce`]): a mass failover is a few `nft` runs,
//! not one per router.
//!
//! Requirements: a kernel with `CONFIG_NF_TABLES_BRIDGE` and the `nft` binary (≥ 0.9 for
//! JSON; tested with 1.0.6 on 6.18).

mod coalesce;
pub mod nft;
pub mod wiring;

use std::collections::HashMap;
use std::sync::Arc;

use hagw_core::Error;
use hagw_core::model::{L2BackendSpec, RouterSpec};
use hagw_core::observed::{HoldState, L2State};
use tracing::{debug, info, instrument, warn};

use coalesce::Coalescer;
pub use nft::{HoldTable, Nft};
use nft::{NftFailure, batch_script, table_target};
use wiring::OwnNetlink;

/// The tap and bridge of a router with the `linuxbridge` backend.
fn port_and_bridge<'a>(spec: &'a RouterSpec, op: &str) -> Result<(&'a str, &'a str), Error> {
    match &spec.backend {
        L2BackendSpec::Linuxbridge { port, bridge } => Ok((port, bridge)),
        other => Err(Error::permanent(
            op,
            super::target(spec),
            format!("router has the {} backend, not linuxbridge", other.kind()),
        )),
    }
}

/// `nft set bridge hagw held_ports element tapX`: where hold and release act.
fn element_target(port: &str) -> String {
    format!("nft set {} {} {} element {port}", nft::FAMILY, nft::TABLE, nft::SET)
}

/// The Linux bridge L2 backend for hagw's namespace. Clones share the netlink connection
/// and the batching of `nft` runs.
#[derive(Debug, Clone, Default)]
pub struct LinuxbridgeBackend {
    nft: Nft,
    netlink: Arc<OwnNetlink>,
    /// Every concurrent read of the table is one `nft list`.
    reads: Arc<Coalescer<(), Result<HoldTable, NftFailure>>>,
    /// Every concurrent hold and release is one `nft` transaction.
    writes: Arc<Coalescer<Change, Arc<Outcomes>>>,
}

/// A hold or release of one port, batched with the others into one transaction.
#[derive(Debug, Clone)]
struct Change {
    port: String,
    hold: bool,
}

/// The result of a batch for each of its ports.
type Outcomes = HashMap<String, Result<(), NftFailure>>;

impl LinuxbridgeBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend that runs `nft` from another path.
    pub fn with_nft(nft: Nft) -> Self {
        LinuxbridgeBackend { nft, ..Self::default() }
    }

    /// The table as it is now (read after this call began), for callers that report or
    /// alert on it.
    pub async fn table(&self) -> Result<HoldTable, Error> {
        self.read().await.map_err(|e| e.into_error("list", table_target()))
    }

    async fn read(&self) -> Result<HoldTable, NftFailure> {
        let nft = self.nft.clone();
        self.reads.call((), move |_| async move { nft.list().await }).await
    }

    pub async fn observe(&self, spec: &RouterSpec) -> Result<L2State, Error> {
        let (port, bridge) = port_and_bridge(spec, "observe l2")?;
        self.observe_port(port, bridge).await
    }

    pub async fn hold(&self, spec: &RouterSpec) -> Result<(), Error> {
        self.hold_port(port_and_bridge(spec, "hold l2")?.0).await
    }

    pub async fn release(&self, spec: &RouterSpec) -> Result<(), Error> {
        self.release_port(port_and_bridge(spec, "release l2")?.0).await
    }

    /// Whether `port` is held and whether it is a forwarding port of `bridge`.
    // A failure here is the reconcile loop's to report (each retry at debug, the last at
    // warn): an optimistic-lock conflict with the L2 agent is retried, not an error.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn observe_port(&self, port: &str, bridge: &str) -> Result<L2State, Error> {
        let table = self.table().await?;
        let hold = match (table.holds(port), table.is_complete()) {
            (true, true) => HoldState::Held,
            (false, _) => HoldState::Released,
            (true, false) => {
                // The name is listed but the rule that acts on it is broken (someone edited
                // the chain): not a hold. Unknown makes the planner re-hold a standby and
                // keeps it from "releasing" a primary that forwards anyway.
                warn!(?table, "hold table is incomplete");
                HoldState::Unknown
            }
        };
        let wired = self.netlink.is_wired(port, bridge).await?;
        debug!(?hold, wired, "observed");
        Ok(L2State { hold, wired })
    }

    /// Adds `port` to the held set, (re)building the table in the same transaction.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn hold_port(&self, port: &str) -> Result<(), Error> {
        self.change(port, true).await.map_err(|e| e.into_error("hold", element_target(port)))?;
        info!(port, "held");
        Ok(())
    }

    /// Deletes `port` from the held set. Releasing a port that is not held is a no-op, so
    /// a retry after a lost reply, or a flushed ruleset, does not fail.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn release_port(&self, port: &str) -> Result<(), Error> {
        self.change(port, false)
            .await
            .map_err(|e| e.into_error("release", element_target(port)))?;
        info!(port, "released");
        Ok(())
    }

    async fn change(&self, port: &str, hold: bool) -> Result<(), NftFailure> {
        let nft = self.nft.clone();
        let outcomes = self
            .writes
            .call(Change { port: port.to_owned(), hold }, move |changes| apply(nft, changes))
            .await;
        // Every change of a batch has its outcome; were one missing, the change is not known
        // to be done, and reporting it done could leave a primary held: a retry decides.
        outcomes.get(port).cloned().unwrap_or_else(|| {
            Err(NftFailure::Io(format!("the batch returned no outcome for {port}")))
        })
    }
}

/// Applies a batch of changes as one transaction; if the kernel refuses it, each change on
/// its own, so that one port's failure is that port's alone.
async fn apply(nft: Nft, changes: Vec<Change>) -> Arc<Outcomes> {
    // A router's changes come one after another and two routers never share a tap, so a
    // port appears once; were it twice, the later change is the one that stands.
    let mut last: HashMap<String, bool> = HashMap::new();
    for change in changes {
        last.insert(change.port, change.hold);
    }
    let result = apply_together(&nft, &last).await;
    let outcomes = match result {
        Ok(()) => last.keys().map(|port| (port.clone(), Ok(()))).collect(),
        Err(e) if last.len() == 1 => {
            last.keys().map(|port| (port.clone(), Err(e.clone()))).collect()
        }
        Err(e) => {
            debug!(error = ?e, ports = last.len(), "batched nft transaction refused; one by one");
            let mut outcomes = Outcomes::new();
            for (port, hold) in last {
                let one = HashMap::from([(port.clone(), hold)]);
                outcomes.insert(port, apply_together(&nft, &one).await);
            }
            outcomes
        }
    };
    Arc::new(outcomes)
}

/// One `nft` transaction for `changes` (port → hold). Deleting a name the set does not hold
/// would abort the whole transaction, so releases are checked against a fresh read first.
async fn apply_together(nft: &Nft, changes: &HashMap<String, bool>) -> Result<(), NftFailure> {
    let hold: Vec<&str> = changes.iter().filter(|(_, h)| **h).map(|(p, _)| p.as_str()).collect();
    let mut release: Vec<&str> =
        changes.iter().filter(|(_, h)| !**h).map(|(p, _)| p.as_str()).collect();
    if !release.is_empty() {
        let table = nft.list().await?;
        release.retain(|port| table.holds(port));
    }
    if hold.is_empty() && release.is_empty() {
        return Ok(());
    }
    match nft.apply(&batch_script(&hold, &release)).await {
        // Released by someone else between our read and our write: released either way.
        Err(NftFailure::NotFound(msg)) if hold.is_empty() => {
            debug!(msg, "elements already gone");
            Ok(())
        }
        other => other,
    }
}
