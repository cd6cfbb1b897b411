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
//!   name to the set ([`nft::hold_script`]); it succeeds whether or not the tap exists.
//! - release: deletes the name from the set; the table stays for other held ports.
//! - observe: held iff the structure is complete *and* the name is in the set; if someone
//!   flushed the ruleset the table is gone, the port reads as released, and the planner
//!   holds a standby again. Wired iff the tap is a forwarding port of the configured bridge
//!   ([`wiring`]).
//!
//! Requirements: a kernel with `CONFIG_NF_TABLES_BRIDGE` and the `nft` binary (≥ 0.9 for
//! JSON; tested with 1.0.6 on 6.18).

pub mod nft;
pub mod wiring;

use std::sync::Arc;

use hagw_core::Error;
use hagw_core::model::{L2BackendSpec, RouterSpec};
use hagw_core::observed::{HoldState, L2State};
use tracing::{debug, info, instrument, warn};

pub use nft::{HoldTable, Nft};
use nft::{NftFailure, hold_script, release_script, table_target};
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

/// The Linux bridge L2 backend for hagw's namespace. Clones share the netlink connection.
#[derive(Debug, Clone, Default)]
pub struct LinuxbridgeBackend {
    nft: Nft,
    netlink: Arc<OwnNetlink>,
}

impl LinuxbridgeBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend that runs `nft` from another path.
    pub fn with_nft(nft: Nft) -> Self {
        LinuxbridgeBackend { nft, netlink: Arc::default() }
    }

    /// The table as it is now, for callers that report or alert on it.
    pub async fn table(&self) -> Result<HoldTable, Error> {
        self.nft.list().await.map_err(|e| e.into_error("list", table_target()))
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
        self.nft
            .apply(&hold_script(port))
            .await
            .map_err(|e| e.into_error("hold", element_target(port)))?;
        info!(port, "held");
        Ok(())
    }

    /// Deletes `port` from the held set. Releasing a port that is not held is a no-op, so
    /// a retry after a lost reply, or a flushed ruleset, does not fail.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn release_port(&self, port: &str) -> Result<(), Error> {
        if !self.table().await?.holds(port) {
            debug!("not held");
            return Ok(());
        }
        match self.nft.apply(&release_script(port)).await {
            Ok(()) => {
                info!(port, "released");
                Ok(())
            }
            // Deleted by someone else between our read and our write: released either way.
            Err(NftFailure::NotFound(msg)) => {
                debug!(msg, "element already gone");
                Ok(())
            }
            Err(e) => Err(e.into_error("release", element_target(port))),
        }
    }
}
