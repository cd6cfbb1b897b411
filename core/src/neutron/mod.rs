//! Router specs discovered from a Neutron L3 agent's state directory, so a network node can
//! run hagw without a hand-written router list.
//!
//! The L3 agent writes one `$state_path/ha_confs/<router_id>/keepalived.conf` per HA router
//! (atomically, by rename) and the role monitor keeps `…/<router_id>/state` next to it. The
//! conf already names everything hagw needs: the HA device and primary VIP (`interface`,
//! `virtual_ipaddress`), the gateway device with its addresses (`virtual_ipaddress_excluded`
//! entries on `qg-…`) and the routes through it (`virtual_routes`). What keepalived.conf
//! cannot say — how the port is attached at layer 2 and how to hold it — comes from
//! [`NeutronDefaults`].
//!
//! Discovery is a pure snapshot: it reads the directory once and reports every router it
//! could build and, separately, every router it could not, so one broken or half-set-up
//! router never hides the others. Watching for changes is the caller's job; where the state
//! paths are (the host's, or inside containerized Neutron's processes) is [`locate`]'s.

mod instance;
mod keepalived;
mod roots;
mod router;

use std::io;
use std::path::{Path, PathBuf};

use crate::model::{AnnounceSchedule, DEFAULT_SILENCE_SETTLE_MS, RouterSpec, Strategy};

pub use roots::{Located, Refused, StateAccess, locate};

/// Settings applied to every discovered router, for what keepalived.conf does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeutronDefaults {
    pub backend: BackendDefault,
    pub strategy: Strategy,
    pub announce: AnnounceSchedule,
    pub silence_settle_ms: u64,
    pub namespace: NamespacePolicy,
}

impl Default for NeutronDefaults {
    /// ML2/OVS with an L2 hold: what a current Neutron deployment runs.
    fn default() -> Self {
        NeutronDefaults {
            backend: BackendDefault::Ovs,
            strategy: Strategy::default(),
            announce: AnnounceSchedule::default(),
            silence_settle_ms: DEFAULT_SILENCE_SETTLE_MS,
            namespace: NamespacePolicy::default(),
        }
    }
}

/// The mechanism driver the gateway ports are plugged by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendDefault {
    /// ML2/OVS: the `qg-` device is itself the OVS port on br-int.
    Ovs,
    /// ML2/Linuxbridge (Neutron ≤ 2024.2): the `qg-` device is one end of a veth whose
    /// `tap…` end (same port-id suffix) is a port of the network's `brq…` bridge.
    Linuxbridge(BridgeLookup),
    /// No L2 control; needs a `link-down` or `silence-only` strategy.
    Generic,
}

/// How to find the `brq…` bridge of a Linuxbridge gateway tap. Its name derives from the
/// external network's id, which keepalived.conf does not contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeLookup {
    /// Every gateway on this node uses this bridge (one external network).
    Fixed(String),
    /// Ask the kernel: the bridge is the target of `<dir>/<tap>/master`, where `dir` is
    /// normally `/sys/class/net` (in hagw's own namespace, where the tap end lives).
    Sysfs(PathBuf),
}

/// Which namespace holds a router's HA and gateway devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NamespacePolicy {
    /// `snat-<id>` when the conf puts addresses on `sg-…` devices (the SNAT-side internal
    /// ports, which exist only in a DVR router's SNAT namespace), else `qrouter-<id>`. A
    /// DVR+HA router with no internal subnet yet has no `sg-` entry and is taken as legacy
    /// HA; nodes running only DVR routers should say [`NamespacePolicy::Snat`].
    #[default]
    Detect,
    /// Always `qrouter-<id>` (legacy HA routers).
    Qrouter,
    /// Always `snat-<id>` (DVR+HA routers).
    Snat,
}

/// A router found in the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeutronRouter {
    /// The spec to reconcile; `spec.primary_vip` is keepalived's primary VIP on the HA
    /// device (Neutron's own role signal), and `spec.role` its state file.
    pub spec: RouterSpec,
    /// keepalived's `virtual_router_id`, for logs and for matching VRRP adverts.
    pub vrid: u8,
    /// The keepalived.conf the spec was read from.
    pub conf: PathBuf,
}

/// Result of one pass over the state directory.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Routers that could be built, sorted by id.
    pub routers: Vec<NeutronRouter>,
    /// Routers (or the directory itself) that could not, sorted by router id.
    pub errors: Vec<DiscoveryError>,
}

/// Why a router is missing from [`Discovery::routers`].
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The `ha_confs` directory cannot be listed: no router can be discovered.
    #[error("{}: cannot list: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// The router's directory exists but keepalived.conf does not yet: the L3 agent creates
    /// the directory first and writes the conf when it sets the router up. Try again later.
    #[error("router {router_id}: not ready: {} does not exist yet", conf.display())]
    NotReady { router_id: String, conf: PathBuf },
    /// keepalived.conf cannot be read, does not parse, or does not describe a usable router.
    #[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Conf { router_id: String, file: PathBuf, line: Option<usize>, message: String },
    /// The router has no external gateway (no `qg-` device), so there is nothing to hold.
    #[error(
        "router {router_id}: skipped: {} puts no address or route on a `qg-` device \
         (router without external gateway)",
        file.display()
    )]
    NoGateway { router_id: String, file: PathBuf },
    /// The router's gateway port cannot be mapped to its L2 backend.
    #[error("router {router_id}: {message}")]
    Backend { router_id: String, message: String },
}

impl DiscoveryError {
    /// The router the error is about; `None` when the whole directory failed.
    pub fn router_id(&self) -> Option<&str> {
        match self {
            DiscoveryError::Io { .. } => None,
            DiscoveryError::NotReady { router_id, .. }
            | DiscoveryError::Conf { router_id, .. }
            | DiscoveryError::NoGateway { router_id, .. }
            | DiscoveryError::Backend { router_id, .. } => Some(router_id),
        }
    }
}

/// Reads every `<state_path>/ha_confs/<router_id>/keepalived.conf` and builds the routers'
/// specs. Entries of `ha_confs` that are not directories (keepalived pid files) are skipped.
pub fn discover(state_path: &Path, defaults: &NeutronDefaults) -> Discovery {
    let ha_confs = state_path.join("ha_confs");
    let mut discovery = Discovery::default();
    let entries = match std::fs::read_dir(&ha_confs) {
        Ok(entries) => entries,
        Err(source) => {
            discovery.errors.push(DiscoveryError::Io { path: ha_confs, source });
            return discovery;
        }
    };
    let mut dirs = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) if entry.file_type().is_ok_and(|t| t.is_dir()) => {
                match entry.file_name().into_string() {
                    Ok(id) => dirs.push((id, entry.path())),
                    Err(name) => discovery.errors.push(DiscoveryError::Conf {
                        router_id: name.to_string_lossy().into_owned(),
                        file: entry.path(),
                        line: None,
                        message: "directory name is not a router id (not UTF-8)".into(),
                    }),
                }
            }
            Ok(_) => {}
            Err(source) => {
                discovery.errors.push(DiscoveryError::Io { path: ha_confs.clone(), source })
            }
        }
    }
    dirs.sort();
    for (id, dir) in dirs {
        match router::load(&id, &dir, defaults) {
            Ok(router) => discovery.routers.push(router),
            Err(error) => discovery.errors.push(error),
        }
    }
    discovery
}
