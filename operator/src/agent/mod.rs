//! The event-driven agent of `hagw run` and `hagw agent --kubernetes`: one loop, fed by a
//! [`Source`] of desired routers (a routers file, a Neutron node's routers, or HARouter
//! objects with the routers Neutron runs here). It keeps one supervisor worker per router
//! ([`routers`]) and wakes it on whatever can change the router's port or role:
//! - netlink events inside the router namespace (link, address, route, IPv6 netconf) — the
//!   primary VIP appearing on the HA device is the earliest sign of a takeover;
//! - Neutron's state file being rewritten (inotify on its directory);
//! - the router namespace appearing or disappearing under `/run/netns`;
//! - keepalived exiting (a pidfd per running keepalived) or its pid file being rewritten,
//!   when the spec names `keepalivedPidFile`: a dead keepalived's VIP and state are stale;
//! - OVS port changes from the OVSDB monitor (a retag, the port appearing or being attached),
//!   which wake the port's routers, and all of them after a resync, an ovs-vswitchd restart
//!   and every [`RECHECK_INTERVAL`](hagw_backends::ovs_watch::RECHECK_INTERVAL)
//!   ([`hagw_backends::ovs_watch`]);
//! - the worker's own timers (silence settling, retry backoff, periodic resync).
//!
//! The source says which routers are wanted; a changed spec restarts its router's worker,
//! which deletes from a primary the addresses the previous spec had and the new one has not.
//! Every role is the one rule's ([`crate::roles`]), read here when a router starts and when
//! one of its inputs changes.
//!
//! Every hold and release is the planner's, applied by the router's worker; a standby's port
//! that arrives between passes is held by the backend as the last plan decided
//! (`HoldOnArrival`), which the agent clears for a router it stops managing.

mod exits;
mod neutron;
mod routers;
mod source;
mod watch;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use hagw_backends::dataplane::HostDataplane;
use hagw_backends::netns::NETNS_RUN_DIR;
use hagw_core::supervisor::{RouterEvent, WorkerConfig};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

pub(crate) use self::neutron::Following;
pub use self::neutron::{NeutronSource, QUICK_RESCAN, RESCAN as NEUTRON_RESCAN};
pub(crate) use self::routers::{Routers, Wanted};
pub use self::source::Source;
use self::watch::DirEvent;
pub(crate) use self::watch::DirWatcher;
use crate::observe::{HEARTBEAT, Observer};
use crate::ready::ReadyFile;

/// The agent: its routers, the directories it watches, and what its loop waits on.
pub struct Agent {
    routers: Routers,
    watcher: DirWatcher,
    observer: Observer,
    dir_events: mpsc::UnboundedReceiver<DirEvent>,
    netns_changes: mpsc::UnboundedReceiver<String>,
    router_events: mpsc::UnboundedReceiver<RouterEvent>,
}

impl Agent {
    pub fn new(dataplane: HostDataplane, config: WorkerConfig) -> anyhow::Result<Agent> {
        let (mut watcher, dir_events) = DirWatcher::start().context("starting inotify")?;
        std::fs::create_dir_all(NETNS_RUN_DIR)
            .with_context(|| format!("creating {NETNS_RUN_DIR}"))?;
        watcher.watch(Path::new(NETNS_RUN_DIR)).context("watching /run/netns")?;
        let (netns_tx, netns_changes) = mpsc::unbounded_channel();
        let (events, router_events) = mpsc::unbounded_channel();
        let observer = Observer::new(&config);
        let routers = Routers::new(Arc::new(dataplane), config, observer.clone(), netns_tx, events);
        Ok(Agent { routers, watcher, observer, dir_events, netns_changes, router_events })
    }

    /// The metrics, health and readiness of this agent (served by `observe::server`).
    pub fn observer(&self) -> Observer {
        self.observer.clone()
    }

    /// Enforces what `source` wants until SIGTERM or Ctrl-C (or the source ends). A file or
    /// Neutron source is read again on SIGHUP: unchanged routers keep their workers and their
    /// holds. Ports stay as last reconciled when it stops, unless the source hands them back.
    pub async fn run(mut self, mut source: Source) -> std::io::Result<()> {
        if let Some(wanted) = source.start(&mut self.watcher, &self.routers) {
            self.routers.set(wanted, &mut self.watcher).await;
            self.observer.set_sources_ready();
        }
        let mut terminate = signal(SignalKind::terminate())?;
        // The Kubernetes agent's routers are not reloaded: a SIGHUP ends it, as it always did.
        let mut hangup = match source.reloads() {
            true => Some(signal(SignalKind::hangup())?),
            false => None,
        };
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut rescan = tokio::time::interval(NEUTRON_RESCAN);
        let mut quick = tokio::time::interval(QUICK_RESCAN);
        let mut ready = ReadyFile::new(source.ready_file());
        loop {
            self.observer.beat();
            // Checked after every event: a router's first pass arrives as one.
            ready.update(&self.observer);
            let wanted = tokio::select! {
                _ = heartbeat.tick() => None,
                _ = rescan.tick() => source.rescan(&mut self.watcher, &self.routers),
                _ = quick.tick(), if source.waiting() => {
                    source.rescan(&mut self.watcher, &self.routers)
                }
                Some(()) = hung_up(&mut hangup) => source.reload(&mut self.watcher, &self.routers),
                wanted = source.changed(&self.routers) => wanted,
                Some(ns) = self.netns_changes.recv() => {
                    self.routers.namespace_changed(&ns).await;
                    None
                }
                Some(event) = self.dir_events.recv() => {
                    let found = source.found(&event, &mut self.watcher);
                    self.routers.dir_changed(&event).await;
                    found.map(|found| source.take_found(found, &self.routers))
                }
                Some(event) = self.router_events.recv() => {
                    self.routers.router_event(&event);
                    source.passed(&self.routers, event);
                    None
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
            };
            if let Some(wanted) = wanted {
                self.routers.set(wanted, &mut self.watcher).await;
            }
            if source.ended() {
                break;
            }
        }
        source.stop(&mut self.routers, &mut self.watcher).await;
        Ok(())
    }
}

/// The next SIGHUP, if they are taken.
async fn hung_up(hangup: &mut Option<Signal>) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}
