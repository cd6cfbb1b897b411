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
//! - hold: one atomic nf_tables batch ensures table, set, chain and rule, and adds the tap
//!   name to the set ([`nft::HostNft::commit`]); it succeeds whether or not the tap exists.
//! - release: deletes the name from the set; the table stays for other held ports.
//! - observe: held iff the structure is complete *and* the name is in the set; if someone
//!   flushed the ruleset the table is gone, the port reads as released, and the planner
//!   holds a standby again. Wired iff the tap is a forwarding port of the configured bridge
//!   ([`wiring`]).
//!
//! Every router shares one table, so concurrent reads are one read and concurrent holds and
//! releases one batch ([`coalesce`]): a mass failover is a few batches, not one per router.
//! Both go over one nf_tables netlink socket in hagw's own namespace ([`nft::HostNft`]): a
//! release is a socket round trip, where an `nft` process cost ~26 ms of every takeover.
//!
//! Requirements: a kernel with `CONFIG_NF_TABLES_BRIDGE` (tested on 6.18); no `nft` binary.

mod coalesce;
pub mod nft;
pub mod wiring;

use std::collections::HashMap;
use std::sync::Arc;

use hagw_core::Error;
use hagw_core::model::{L2BackendSpec, RouterSpec};
use hagw_core::observed::{HoldState, L2State};
use nix::errno::Errno;
use tracing::{debug, info, instrument, warn};

pub use super::nftables::read::HoldTable;
use super::nftables::{Key, NftError, ifname_key};
use coalesce::Coalescer;
use nft::{HostNft, KERNEL_CONFIG, element_target, table_target};
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

/// The Linux bridge L2 backend for hagw's namespace. Clones share the netlink connections
/// and the batching of reads and writes.
#[derive(Debug, Clone, Default)]
pub struct LinuxbridgeBackend {
    nft: Arc<HostNft>,
    netlink: Arc<OwnNetlink>,
    /// Every concurrent read of the table is one read.
    reads: Arc<Coalescer<(), Result<HoldTable, NftError>>>,
    /// Every concurrent hold and release is one batch.
    writes: Arc<Coalescer<Change, Arc<Outcomes>>>,
}

/// A hold or release of one port, batched with the others into one transaction.
#[derive(Debug, Clone)]
struct Change {
    port: String,
    key: Key,
    hold: bool,
}

/// The result of a batch for each of its ports.
type Outcomes = HashMap<String, Result<(), NftError>>;

impl LinuxbridgeBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// The table as it is now (read after this call began), for callers that report or
    /// alert on it.
    pub async fn table(&self) -> Result<HoldTable, Error> {
        let nft = self.nft.clone();
        let read = self.reads.call((), move |_| async move { nft.read() }).await;
        read.map_err(|e| e.into_error("list", table_target(), KERNEL_CONFIG))
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
        self.change(port, true, "hold").await?;
        info!(port, "held");
        Ok(())
    }

    /// Deletes `port` from the held set. Releasing a port that is not held is a no-op, so
    /// a retry after a lost reply, or a flushed ruleset, does not fail.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn release_port(&self, port: &str) -> Result<(), Error> {
        self.change(port, false, "release").await?;
        info!(port, "released");
        Ok(())
    }

    async fn change(&self, port: &str, hold: bool, op: &str) -> Result<(), Error> {
        let key = ifname_key(port).ok_or_else(|| {
            Error::permanent(op, element_target(port), "the port name is not an interface name")
        })?;
        let nft = self.nft.clone();
        let change = Change { port: port.to_owned(), key, hold };
        let outcomes =
            self.writes.call(change, move |changes| async move { apply(&nft, changes) }).await;
        // Every change of a batch has its outcome; were one missing, the change is not known
        // to be done, and reporting it done could leave a primary held: a retry decides.
        match outcomes.get(port) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(e.clone().into_error(op, element_target(port), KERNEL_CONFIG)),
            None => {
                Err(Error::transient(op, element_target(port), "the batch returned no outcome"))
            }
        }
    }
}

/// Applies a batch of changes as one transaction; if the kernel refuses it, each change on
/// its own, so that one port's failure is that port's alone.
fn apply(nft: &HostNft, changes: Vec<Change>) -> Arc<Outcomes> {
    // A router's changes come one after another and two routers never share a tap, so a
    // port appears once; were it twice, the later change is the one that stands.
    let mut last: HashMap<String, (Key, bool)> = HashMap::new();
    for change in changes {
        last.insert(change.port, (change.key, change.hold));
    }
    let outcomes = match apply_together(nft, &last) {
        Ok(()) => last.keys().map(|port| (port.clone(), Ok(()))).collect(),
        Err(e) if last.len() == 1 => {
            last.keys().map(|port| (port.clone(), Err(e.clone()))).collect()
        }
        Err(e) => {
            debug!(error = %e, ports = last.len(), "batch refused; one by one");
            let mut outcomes = Outcomes::new();
            for (port, change) in last {
                let one = HashMap::from([(port.clone(), change)]);
                outcomes.insert(port, apply_together(nft, &one));
            }
            outcomes
        }
    };
    Arc::new(outcomes)
}

/// One batch for `changes` (port → key, hold). Deleting a name the set does not hold would
/// abort the whole batch, so releases are checked against a fresh read of the set first.
fn apply_together(nft: &HostNft, changes: &HashMap<String, (Key, bool)>) -> Result<(), NftError> {
    let hold: Vec<Key> = changes.values().filter(|(_, h)| *h).map(|(k, _)| *k).collect();
    let mut release: Vec<(&String, Key)> =
        changes.iter().filter(|(_, (_, h))| !*h).map(|(p, (k, _))| (p, *k)).collect();
    if !release.is_empty() {
        let held = nft.held()?;
        release.retain(|(port, _)| held.contains(port));
    }
    if hold.is_empty() && release.is_empty() {
        return Ok(());
    }
    let release: Vec<Key> = release.into_iter().map(|(_, k)| k).collect();
    match nft.commit(&hold, &release) {
        // Released by someone else between our read and our write: released either way.
        Err(e) if hold.is_empty() && e.kernel_errno() == Some(Errno::ENOENT) => {
            debug!(error = %e, "elements already gone");
            Ok(())
        }
        other => other,
    }
}
