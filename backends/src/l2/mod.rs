//! Layer-2 backends: how the switch side of a gateway port is observed, held and released.
//!
//! [`L2Backend`] is a closed enum dispatched by `match` rather than a trait object: async
//! methods are not object-safe, and the set of backends is small and known: generic (a hold
//! inside the router namespace), Open vSwitch (OVSDB + OpenFlow) and Linux bridge (nftables).
//! Adding one means a variant, a module with its `observe`/`hold`/`release`, one arm per
//! method here, and its construction in [`L2Backends::for_router`].

pub mod generic;
pub mod linuxbridge;
pub mod nftables;
pub mod ovs;

use hagw_core::Error;
use hagw_core::model::{L2BackendSpec, RouterSpec};
use hagw_core::observed::L2State;

pub use generic::GenericL2;
pub use linuxbridge::LinuxbridgeBackend;
pub use ovs::OvsBackend;

/// The L2 backend for one router, built from its spec by [`L2Backends::for_router`].
#[derive(Debug, Clone)]
pub enum L2Backend {
    /// Nothing is known about the switch side; held by device name inside the router
    /// namespace (nf_tables).
    Generic(GenericL2),
    /// An Open vSwitch port, held in Neutron's dead VLAN through OVSDB.
    Ovs(OvsBackend),
    /// A Linux bridge port, held by name in an nftables bridge table.
    Linuxbridge(LinuxbridgeBackend),
}

impl L2Backend {
    /// Short name of the backend, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            L2Backend::Generic(_) => "generic",
            L2Backend::Ovs(_) => "ovs",
            L2Backend::Linuxbridge(_) => "linuxbridge",
        }
    }

    /// Reads whether the port is held and whether the L2 agent has wired it.
    pub async fn observe(&self, spec: &RouterSpec) -> Result<L2State, Error> {
        self.observe_for(spec, true).await
    }

    /// [`L2Backend::observe`], telling a partial hold from a released one only if
    /// `partial_matters` ([`hagw_core::reconcile::Dataplane::observe_for`]).
    pub async fn observe_for(
        &self,
        spec: &RouterSpec,
        partial_matters: bool,
    ) -> Result<L2State, Error> {
        match self {
            L2Backend::Generic(b) => b.observe(spec).await,
            L2Backend::Ovs(b) => b.observe_for(spec, partial_matters).await,
            L2Backend::Linuxbridge(b) => b.observe(spec).await,
        }
    }

    /// Stops the switch from forwarding anything the port sends.
    pub async fn hold(&self, spec: &RouterSpec) -> Result<(), Error> {
        match self {
            L2Backend::Generic(b) => b.hold(spec).await,
            L2Backend::Ovs(b) => b.hold(spec).await,
            L2Backend::Linuxbridge(b) => b.hold(spec).await,
        }
    }

    /// Restores the L2 agent's wiring so the port forwards again.
    pub async fn release(&self, spec: &RouterSpec) -> Result<(), Error> {
        match self {
            L2Backend::Generic(b) => b.release(spec).await,
            L2Backend::Ovs(b) => b.release(spec).await,
            L2Backend::Linuxbridge(b) => b.release(spec).await,
        }
    }
}

/// Builds per-router [`L2Backend`]s and owns what they share across routers (an OVSDB
/// connection, for the OVS backend). Held by the dataplane for the life of the agent.
#[derive(Debug, Clone, Default)]
pub struct L2Backends {
    /// The node's OVSDB endpoint, shared by every `ovs` router; `None` disables the backend.
    ovs: Option<OvsBackend>,
    /// Shared by every `linuxbridge` router (one netlink connection); needs no setup.
    linuxbridge: LinuxbridgeBackend,
}

impl L2Backends {
    /// Enables the OVS backend on `endpoint` (`Config::ovsdb`); it connects on first use.
    pub fn with_ovsdb(endpoint: impl Into<String>) -> Self {
        Self { ovs: Some(OvsBackend::new(endpoint)), ..Self::default() }
    }

    /// The shared OVS backend, e.g. to watch its port changes.
    pub fn ovs(&self) -> Option<&OvsBackend> {
        self.ovs.as_ref()
    }

    /// The backend `spec.backend` asks for. A backend this build cannot drive is a
    /// permanent error: retrying will not make it appear.
    pub fn for_router(&self, spec: &RouterSpec) -> Result<L2Backend, Error> {
        if let (L2BackendSpec::Ovs { .. }, Some(ovs)) = (&spec.backend, &self.ovs) {
            return Ok(L2Backend::Ovs(ovs.clone()));
        }
        match &spec.backend {
            L2BackendSpec::Generic => Ok(L2Backend::Generic(GenericL2)),
            L2BackendSpec::Linuxbridge { .. } => {
                Ok(L2Backend::Linuxbridge(self.linuxbridge.clone()))
            }
            other => Err(Error::permanent(
                "select l2 backend",
                target(spec),
                format!("the {} backend is not available", other.kind()),
            )),
        }
    }
}

/// `netns X dev Y` of a router's gateway port, the target L2 errors name.
pub(crate) fn target(spec: &RouterSpec) -> String {
    format!("netns {} dev {}", spec.namespace, spec.gateway_device)
}
