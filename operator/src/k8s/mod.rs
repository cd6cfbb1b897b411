//! hagw as a Kubernetes operator: the `HARouter` resource, the per-node source of routers
//! that feeds the agent's loop ([`crate::agent`]), and the status and Events it writes back. The
//! operator is a thin adapter: what is reconciled, and how, is exactly the standalone mode's.

pub mod agent;
mod aggregate;
mod cache;
pub use cache::cached_routers;
pub mod crd;
mod discovered;
mod entry;
mod gc;
pub(crate) mod handback;
mod merge;
pub mod migrate;
mod source;
mod status;
mod throttle;
mod uninstall;
mod versions;

pub use agent::NodeSource;
pub use merge::Reported;
pub use throttle::Limit;

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the Kubernetes agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no node name: set NODE_NAME (the DaemonSet sets it from spec.nodeName) or --node-name"
    )]
    NoNodeName,
    #[error("cannot build a Kubernetes client (in-cluster config or KUBECONFIG): {0}")]
    Client(#[source] kube::Error),
    #[error("starting the agent: {0}")]
    Agent(String),
    #[error("node lock {}: {source}", path.display())]
    Lock {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("health endpoint on {addr}: {source}")]
    Health {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("spec cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signal handler: {0}")]
    Signal(#[source] std::io::Error),
}
