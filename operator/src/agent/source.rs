//! Where the agent's routers come from. Each source says which routers are wanted, when that
//! changes; the loop ([`super::Agent::run`]) does the rest the same way for all of them.

use std::path::PathBuf;

use hagw_core::model::RouterSpec;
use hagw_core::supervisor::RouterEvent;
use tracing::{info, warn};

use super::neutron::{Following, NeutronSource};
use super::routers::{Routers, Wanted};
use super::watch::{DirEvent, DirWatcher};
use crate::k8s::NodeSource;

/// A source of desired routers.
pub enum Source {
    /// A routers file (`hagw run -c`): the routers read from it, and where to read them again
    /// on SIGHUP.
    File { path: PathBuf, routers: Vec<RouterSpec> },
    /// A Neutron node's routers (`hagw run --neutron`), followed as Neutron changes them.
    Neutron(Following),
    /// The HARouters listing this node, and the routers Neutron runs here if enabled (`hagw
    /// agent --kubernetes`).
    Kubernetes(Box<NodeSource>),
}

impl Source {
    /// Follows the routers under Neutron's state paths.
    pub fn neutron(source: NeutronSource) -> Source {
        Source::Neutron(Following::new(source))
    }

    /// The routers to enforce at start, if the source has any to say yet (the Kubernetes
    /// agent's, before the API server answers: those cached and discovered, if any).
    pub(super) fn start(
        &mut self,
        watcher: &mut DirWatcher,
        routers: &Routers,
    ) -> Option<Vec<Wanted>> {
        match self {
            Source::File { routers: specs, .. } => Some(plain(std::mem::take(specs))),
            Source::Neutron(following) => Some(plain(following.start(watcher))),
            Source::Kubernetes(node) => node.start(watcher, routers),
        }
    }

    /// Whether SIGHUP reads the routers again ([`Source::reload`]).
    pub(super) fn reloads(&self) -> bool {
        !matches!(self, Source::Kubernetes(_))
    }

    /// The routers after a SIGHUP: the file read again, or Neutron's files rescanned. An
    /// invalid file is reported and changes nothing (the routers run on as they were).
    pub(super) fn reload(
        &mut self,
        watcher: &mut DirWatcher,
        routers: &Routers,
    ) -> Option<Vec<Wanted>> {
        let Source::File { path, .. } = self else {
            info!("SIGHUP: rescanning Neutron's files");
            return self.rescan(watcher, routers);
        };
        match hagw_core::config::load(path) {
            Ok(config) => {
                info!(config = %path.display(), routers = config.routers.len(), "SIGHUP: configuration reloaded");
                Some(plain(config.routers))
            }
            Err(error) => {
                warn!(config = %path.display(), %error, "SIGHUP: invalid configuration ignored; routers unchanged");
                None
            }
        }
    }

    /// The Neutron routers this source follows, if any.
    fn following(&mut self) -> Option<&mut Following> {
        match self {
            Source::File { .. } => None,
            Source::Neutron(following) => Some(following),
            Source::Kubernetes(node) => node.following(),
        }
    }

    /// Looks for Neutron's state paths again (every [`super::NEUTRON_RESCAN`], and every
    /// [`super::QUICK_RESCAN`] while [`Source::waiting`]): the routers, if where they are read
    /// from changed.
    pub(super) fn rescan(
        &mut self,
        watcher: &mut DirWatcher,
        routers: &Routers,
    ) -> Option<Vec<Wanted>> {
        let found = self.following()?.rescan(watcher)?;
        Some(self.take_found(found, routers))
    }

    /// Whether routers cached from before wait for Neutron's files.
    pub(super) fn waiting(&self) -> bool {
        match self {
            Source::Kubernetes(node) => node.waiting(),
            _ => false,
        }
    }

    /// The Neutron routers found again, if `event` is one appearing, going or being
    /// reconfigured.
    pub(super) fn found(
        &mut self,
        event: &DirEvent,
        watcher: &mut DirWatcher,
    ) -> Option<Vec<RouterSpec>> {
        let following = self.following()?;
        following.concerns(event).then(|| following.discover(watcher))
    }

    /// The routers wanted once Neutron's are `found`.
    pub(super) fn take_found(&mut self, found: Vec<RouterSpec>, routers: &Routers) -> Vec<Wanted> {
        match self {
            Source::Kubernetes(node) => node.take_found(found, routers),
            _ => plain(found),
        }
    }

    /// Waits for the source's own events (the HARouter watch): the routers then wanted, if
    /// they may have changed. Never ready for a file or Neutron.
    pub(super) async fn changed(&mut self, routers: &Routers) -> Option<Vec<Wanted>> {
        match self {
            Source::Kubernetes(node) => node.changed(routers).await,
            _ => std::future::pending().await,
        }
    }

    /// Whether the source has ended (the HARouter watch stream): the agent stops.
    pub(super) fn ended(&self) -> bool {
        match self {
            Source::Kubernetes(node) => node.ended(),
            _ => false,
        }
    }

    /// Where the ready file goes, if anywhere ([`crate::ready`]).
    pub(super) fn ready_file(&self) -> Option<PathBuf> {
        match self {
            Source::Kubernetes(node) => node.ready_file(),
            _ => None,
        }
    }

    /// A worker's pass, for the source to report (the HARouter's status).
    pub(super) fn passed(&self, routers: &Routers, event: RouterEvent) {
        if let Source::Kubernetes(node) = self {
            node.passed(routers, event);
        }
    }

    /// The agent stops: ports stay as last reconciled, unless the source hands them back
    /// (hagw being uninstalled from a Kubernetes node).
    pub(super) async fn stop(self, routers: &mut Routers, watcher: &mut DirWatcher) {
        match self {
            Source::Kubernetes(node) => node.stop(routers, watcher).await,
            _ => info!("stopping; ports stay as last reconciled"),
        }
    }
}

fn plain(specs: Vec<RouterSpec>) -> Vec<Wanted> {
    specs.into_iter().map(Wanted::plain).collect()
}
