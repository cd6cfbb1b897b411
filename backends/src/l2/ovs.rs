//! The OVS backend: holds a standby's gateway port in Neutron's dead VLAN through OVSDB.
//!
//! One [`OvsBackend`] serves every router on a node (one OVSDB endpoint). It connects lazily,
//! so building it needs no I/O and a missing ovsdb-server is a transient error of the first
//! pass rather than a startup failure; the client then reconnects by itself.
//!
//! - [`port`]: the pure rules (row → [`L2State`], the hold and release transactions),
//! - [`watch`]: the monitor that reports retagged ports at once, and the re-hold task.

pub mod port;
pub mod watch;

use std::sync::Arc;

use hagw_core::Error;
use hagw_core::model::{L2BackendSpec, RouterSpec};
use hagw_core::observed::L2State;
use tokio::sync::OnceCell;
use tracing::{debug, info, instrument};

use crate::ovsdb::{
    ClientConfig, Condition, Endpoint, OvsdbClient, OvsdbError, PortRow, VSWITCH_DB,
};

pub use watch::{PortChange, PortChanges, keep_held};

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
    let raced = matches!(&e, OvsdbError::OpFailed { op, .. } if op == "wait");
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
}

impl OvsBackend {
    /// A backend for `endpoint` (`unix:PATH` or `tcp:HOST:PORT`); connects on first use.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self::with_config(endpoint, ClientConfig::default())
    }

    /// As [`OvsBackend::new`], with the client's timing knobs (tests shorten them).
    pub fn with_config(endpoint: impl Into<String>, config: ClientConfig) -> Self {
        Self { endpoint: endpoint.into(), config, client: Arc::new(OnceCell::new()) }
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

    /// Reads the Port row named `port`; `None` if there is none.
    async fn read(&self, port: &str) -> Result<Option<PortRow>, Error> {
        let client = self.client().await?;
        let select = PortRow::select(vec![Condition::eq("name", port)]);
        let results =
            client.transact(VSWITCH_DB, &[select]).await.map_err(|e| ovs_error("read", port, e))?;
        let rows = results.into_iter().next().and_then(|r| r.rows).unwrap_or_default();
        match rows.as_slice() {
            [] => Ok(None),
            [row] => PortRow::from_row(None, row).map(Some).map_err(|e| ovs_error("read", port, e)),
            many => Err(Error::permanent(
                "read",
                target(port),
                format!("{} Port rows have this name", many.len()),
            )),
        }
    }

    /// The port's hold state; a missing Port row is [`L2Hold::Unknown`](hagw_core::observed::L2Hold).
    #[instrument(skip(self), err)]
    pub async fn observe_port(&self, port: &str) -> Result<L2State, Error> {
        Ok(port::l2_state(self.read(port).await?.as_ref()))
    }

    /// Puts the port in the dead VLAN in one guarded transaction (see [`port::hold_ops`]).
    #[instrument(skip(self), err)]
    pub async fn hold_port(&self, port: &str) -> Result<(), Error> {
        let row = self.read(port).await?.ok_or_else(|| missing("hold", port))?;
        let Some(ops) = port::hold_ops(&row) else {
            debug!("already held");
            return Ok(());
        };
        self.commit("hold", port, &ops).await?;
        info!(tag = ?row.tag, vlan_mode = ?row.vlan_mode, "held in dead VLAN");
        Ok(())
    }

    /// Restores the port's local VLAN in one guarded transaction; refuses (transiently, the
    /// agent may still wire it) while no real local VLAN is known.
    #[instrument(skip(self), err)]
    pub async fn release_port(&self, port: &str) -> Result<(), Error> {
        let row = self.read(port).await?.ok_or_else(|| missing("release", port))?;
        let ops = port::release_ops(&row).map_err(|port::NotWired| {
            Error::transient(
                "release",
                target(port),
                "not wired: no local VLAN in other_config:tag or external_ids:hagw-saved-tag",
            )
        })?;
        let Some(ops) = ops else {
            debug!("already released");
            return Ok(());
        };
        self.commit("release", port, &ops).await?;
        info!(local_vlan = ?port::local_vlan(&row), "released to local VLAN");
        Ok(())
    }

    async fn commit(
        &self,
        operation: &str,
        port: &str,
        ops: &[crate::ovsdb::Op],
    ) -> Result<(), Error> {
        let client = self.client().await?;
        client.transact(VSWITCH_DB, ops).await.map_err(|e| ovs_error(operation, port, e))?;
        Ok(())
    }

    /// [`OvsBackend::observe_port`] for the router's port.
    pub async fn observe(&self, spec: &RouterSpec) -> Result<L2State, Error> {
        self.observe_port(port_name(spec)).await
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
