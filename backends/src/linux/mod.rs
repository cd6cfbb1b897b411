//! The Linux side of a gateway port: rtnetlink and `/proc/sys` inside a router's named
//! network namespace.
//!
//! [`LinuxNet`] is the entry point. It keeps one netlink connection per namespace (see
//! [`connection`]) and exposes one method per kernel operation hagw needs, grouped by
//! concept: [`link`], [`address`], [`route`], [`sysctl`], and the composite [`observe`].
//! Every failure is a [`hagw_core::Error`] naming the operation and `netns X dev Y`, with
//! a kind that tells the reconcile loop whether retrying can help (see [`error`]).

pub mod address;
pub mod connection;
pub mod error;
pub mod forwarding;
pub mod link;
pub mod observe;
pub mod route;
pub mod sysctl;
pub mod sysctl_files;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub use connection::{Conn, ConnectionCache};
pub use link::LinkInfo;

/// Kernel operations on devices inside named network namespaces. Cheap to clone: clones
/// share the connection cache.
#[derive(Debug, Clone, Default)]
pub struct LinuxNet {
    cache: Arc<ConnectionCache>,
    /// Open sysctl files of gateway devices (see [`sysctl_files`]).
    files: Arc<sysctl_files::SysctlFiles>,
    /// Namespaces last seen missing, so that their absence is logged once, not every pass.
    missing: Arc<Mutex<HashSet<String>>>,
}

impl LinuxNet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Over `connections` instead of a default cache (e.g. one whose connections close
    /// sooner: [`ConnectionCache::with_idle`]).
    pub fn with_connections(connections: ConnectionCache) -> Self {
        Self { cache: Arc::new(connections), ..Self::default() }
    }

    /// The connection cache, for callers that need a raw rtnetlink handle in a namespace
    /// (e.g. the announcer) without opening their own connection.
    pub fn connections(&self) -> &ConnectionCache {
        &self.cache
    }
}
