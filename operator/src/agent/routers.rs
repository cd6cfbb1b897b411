//! The routers the agent manages, and everything it keeps per router in one place: the
//! wanted spec (and where its passes are reported), the worker, the watch on its keepalived.
//! Shared by all routers: the namespaces' netlink subscriptions and the OVS watcher.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use hagw_backends::dataplane::HostDataplane;
use hagw_backends::events::{NetnsMonitor, monitor_netns};
use hagw_backends::l2::ovs::port_name;
use hagw_backends::netns::{NETNS_RUN_DIR, Netns};
use hagw_backends::ovs_watch::{PortRouters, RECHECK_INTERVAL, wake_on_changes};
use hagw_core::model::{L2BackendSpec, RoleSource, RouterSpec};
use hagw_core::planner::HoldOnArrival;
use hagw_core::reconcile::{Dataplane, RouterMemory};
use hagw_core::role::RunningProcess;
use hagw_core::supervisor::{PassOutcome, RouterEvent, RouterHandle, WorkerConfig, spawn_router};
use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

use super::exits::ExitWatch;
use super::watch::{DirEvent, DirWatcher};
use crate::k8s::Reported;
use crate::observe::Observer;
use crate::roles::RoleReader;

/// A router a source wants enforced.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub spec: RouterSpec,
    /// Enforced hold-only: its spec, cached from before, may be stale, so its worker only
    /// holds a standby's port ([`hagw_core::observed::Observed::hold_only`]).
    pub hold_only: bool,
    /// The HARouter its passes are reported in (the Kubernetes source).
    pub reported: Option<Reported>,
}

impl Wanted {
    /// A router enforced fully and reported nowhere but the logs and metrics.
    pub fn plain(spec: RouterSpec) -> Wanted {
        Wanted { spec, hold_only: false, reported: None }
    }
}

/// One router the agent manages.
struct Managed {
    wanted: Wanted,
    handle: RouterHandle,
    task: JoinHandle<()>,
    /// Its running keepalived, when the spec names a pid file.
    keepalived: Option<ExitWatch>,
}

impl Managed {
    /// Watches the router's running keepalived, replacing a watch on another process; `None`
    /// (not running) stops watching.
    fn watch_keepalived(
        &mut self,
        keepalived: Option<RunningProcess>,
        wake: &mpsc::UnboundedSender<String>,
    ) {
        if self.keepalived.as_ref().map(ExitWatch::pid) == keepalived.map(|k| k.pid) {
            return;
        }
        let spec = &self.wanted.spec;
        self.keepalived =
            keepalived.map(|k| ExitWatch::start(&spec.id, &spec.namespace, k, wake.clone()));
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The OVS watcher, waking the routers of a port when it reports the port
/// ([`wake_on_changes`]). Dropping it stops it.
struct OvsWake {
    ports: tokio::sync::watch::Sender<PortRouters>,
    task: JoinHandle<()>,
}

impl Drop for OvsWake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The managed routers and what serves them all.
pub struct Routers {
    dataplane: Arc<HostDataplane>,
    config: WorkerConfig,
    roles: RoleReader,
    routers: BTreeMap<String, Managed>,
    /// The ids of `routers` by namespace. Every netlink event names a namespace: looking its
    /// routers up by scanning all of them made a mass failover's events (a handful per
    /// router) cost the square of the routers on this one task.
    by_namespace: HashMap<String, Vec<String>>,
    monitors: HashMap<String, NetnsMonitor>,
    /// Wakes by namespace: netlink events, keepalived's start-up and exit, mounts.
    netns_changes: mpsc::UnboundedSender<String>,
    events: mpsc::UnboundedSender<RouterEvent>,
    observer: Observer,
    /// Started when the first OVS router is managed.
    ovs: Option<OvsWake>,
}

impl Routers {
    pub fn new(
        dataplane: Arc<HostDataplane>,
        config: WorkerConfig,
        observer: Observer,
        netns_changes: mpsc::UnboundedSender<String>,
        events: mpsc::UnboundedSender<RouterEvent>,
    ) -> Routers {
        Routers {
            roles: RoleReader::new(dataplane.linux().clone()),
            dataplane,
            config,
            routers: BTreeMap::new(),
            by_namespace: HashMap::new(),
            monitors: HashMap::new(),
            netns_changes,
            events,
            observer,
            ovs: None,
        }
    }

    /// What is wanted of the managed routers now.
    pub fn wanted(&self) -> impl Iterator<Item = &Wanted> {
        self.routers.values().map(|m| &m.wanted)
    }

    pub fn get(&self, id: &str) -> Option<&Wanted> {
        self.routers.get(id).map(|m| &m.wanted)
    }

    /// Makes the managed set equal to `wanted`: new routers get a worker, removed ones lose
    /// theirs, changed specs restart theirs (as does a router entering or leaving
    /// hold-only); the new worker of a changed spec deletes from a primary the addresses the
    /// old spec had and the new one has not. Role inputs' directories are watched on
    /// `watcher`.
    pub async fn set(&mut self, wanted: Vec<Wanted>, watcher: &mut DirWatcher) {
        let mut wanted: BTreeMap<String, Wanted> =
            wanted.into_iter().map(|w| (w.spec.id.clone(), w)).collect();
        // The addresses a changed spec no longer lists: its new worker deletes them.
        let mut retired: HashMap<String, Vec<IpNet>> = HashMap::new();
        let mut dropped = Vec::new();
        let observer = &self.observer;
        self.routers.retain(|id, m| {
            let same =
                |new: &Wanted| new.spec == m.wanted.spec && new.hold_only == m.wanted.hold_only;
            if wanted.get(id).is_some_and(same) {
                // Where it is reported may have changed, its worker goes on.
                m.wanted = wanted.remove(id).expect("just found");
                return true;
            }
            dropped.push(m.wanted.spec.clone());
            info!(router = %id, "router removed or changed");
            match wanted.get(id) {
                Some(new) => {
                    let gone = m.wanted.spec.gateway_addresses.iter();
                    let gone = gone.filter(|a| !new.spec.gateway_addresses.contains(a)).copied();
                    retired.insert(id.clone(), gone.collect());
                }
                None => observer.router_removed(id),
            }
            false
        });
        for (id, wanted) in wanted {
            let spec = &wanted.spec;
            let state_file = match &spec.role {
                RoleSource::StateFile(path) => Some(path),
                RoleSource::Fixed(_) => None,
            };
            for file in state_file.into_iter().chain(&spec.keepalived_pid_file) {
                if let Some(dir) = file.parent()
                    && let Err(e) = watcher.watch(dir)
                {
                    warn!(router = %id, dir = %dir.display(), error = %e, "cannot watch a role input's directory; relying on resync");
                }
            }
            self.ensure_monitor(&spec.namespace).await;
            let resolved = self.roles.explain(spec, None).await;
            let hold_only = wanted.hold_only;
            let memory = match hold_only {
                true => RouterMemory::hold_only(),
                false => RouterMemory::retiring(retired.remove(&id).unwrap_or_default()),
            };
            let (handle, task) = spawn_router(
                Arc::clone(&self.dataplane),
                spec.clone(),
                resolved.role,
                memory,
                self.config,
                self.events.clone(),
            );
            self.observer.router_started(spec);
            self.observer.role_inputs(&id, &resolved);
            info!(router = %id, role = resolved.role.as_str(), hold_only, "managing router");
            let mut managed = Managed { wanted, handle, task, keepalived: None };
            managed.watch_keepalived(resolved.keepalived, &self.netns_changes);
            self.routers.insert(id, managed);
        }
        self.by_namespace.clear();
        for (id, m) in &self.routers {
            self.by_namespace.entry(m.wanted.spec.namespace.clone()).or_default().push(id.clone());
        }
        self.update_ovs(dropped);
    }

    /// Tells the OVS watcher which ports to report (waking their routers), and withdraws
    /// the last plan's hold on arrival of the `dropped` routers' ports that no managed router
    /// uses any more.
    fn update_ovs(&mut self, dropped: Vec<RouterSpec>) {
        let mut keys = PortRouters::new();
        for m in self.routers.values() {
            if matches!(m.wanted.spec.backend, L2BackendSpec::Ovs { .. }) {
                let port = port_name(&m.wanted.spec).to_owned();
                keys.entry(port).or_default().push(m.handle.clone());
            }
        }
        for spec in dropped.iter().filter(|s| matches!(s.backend, L2BackendSpec::Ovs { .. })) {
            if !keys.contains_key(port_name(spec)) {
                self.dataplane.hold_on_arrival(spec, HoldOnArrival::Never);
            }
        }
        if self.ovs.is_none() && !keys.is_empty() {
            let Some(backend) = self.dataplane.l2().ovs().cloned() else { return };
            let (ports, watched) = tokio::sync::watch::channel(PortRouters::new());
            let span = info_span!("ovs_watch", endpoint = %backend.endpoint());
            let start = move || {
                let backend = backend.clone();
                async move { backend.events(Some(RECHECK_INTERVAL)).await }
            };
            let task = tokio::spawn(wake_on_changes(start, watched).instrument(span));
            self.ovs = Some(OvsWake { ports, task });
        }
        if let Some(ovs) = &self.ovs {
            ovs.ports.send_replace(keys);
        }
    }

    /// Subscribes to a namespace's netlink events if it exists and is not yet subscribed
    /// (or was re-created since).
    async fn ensure_monitor(&mut self, namespace: &str) {
        let netns = Netns::named(namespace);
        let Ok(id) = netns.id() else {
            self.monitors.remove(namespace);
            return;
        };
        if self.monitors.get(namespace).is_some_and(|m| m.id == id) {
            return;
        }
        if !netns.is_mounted() {
            // `ip netns add` creates the file first and mounts the namespace on it a moment
            // later, with no inotify event for the mount: report the namespace again once it
            // is there, since the agents configure its devices right after.
            self.monitors.remove(namespace);
            tokio::spawn(report_when_mounted(netns, self.netns_changes.clone()));
            return;
        }
        match monitor_netns(&netns, self.netns_changes.clone()).await {
            Ok(monitor) => {
                self.monitors.insert(namespace.to_string(), monitor);
            }
            Err(e) => warn!(netns = namespace, error = %e, "cannot subscribe to netlink events"),
        }
    }

    /// Something happened in a namespace: re-read the roles of its routers and wake them.
    pub async fn namespace_changed(&mut self, namespace: &str) {
        let Some(ids) = self.by_namespace.get(namespace).cloned() else { return };
        self.ensure_monitor(namespace).await;
        for id in ids {
            self.refresh_role(&id).await;
            if let Some(m) = self.routers.get(&id) {
                m.handle.kick();
            }
        }
    }

    /// A watched directory changed: a namespace came or went under `/run/netns`, or a role
    /// input (a state file, a keepalived pid file) may have been rewritten.
    pub async fn dir_changed(&mut self, event: &DirEvent) {
        if event.dir == Path::new(NETNS_RUN_DIR) {
            let Some(name) = event.name.as_ref().and_then(|n| n.to_str()) else { return };
            if event.removed {
                self.monitors.remove(name);
            } else if self.by_namespace.contains_key(name) {
                self.ensure_monitor(name).await;
            }
            self.namespace_changed(name).await;
            return;
        }
        let ids = self.ids(|spec| {
            matches!(&spec.role, RoleSource::StateFile(p) if file_in(p, event))
                || spec.keepalived_pid_file.as_ref().is_some_and(|p| file_in(p, event))
        });
        for id in ids {
            self.refresh_role(&id).await;
        }
    }

    fn ids(&self, concerned: impl Fn(&RouterSpec) -> bool) -> Vec<String> {
        let routers = self.routers.values().map(|m| &m.wanted.spec);
        routers.filter(|spec| concerned(spec)).map(|spec| spec.id.clone()).collect()
    }

    async fn refresh_role(&mut self, id: &str) {
        let Some(m) = self.routers.get(id) else { return };
        let resolved = self.roles.explain(&m.wanted.spec, None).await;
        let Some(m) = self.routers.get_mut(id) else { return };
        let (role, keepalived) = (resolved.role, resolved.keepalived);
        m.watch_keepalived(keepalived, &self.netns_changes);
        self.observer.role_inputs(id, &resolved);
        let before = m.handle.role();
        if before != role {
            // Says why a router with leftovers of a primary is standby: its keepalived is gone.
            let keepalived_running =
                m.wanted.spec.keepalived_pid_file.as_ref().map(|_| keepalived.is_some());
            info!(router = %id, from = before.as_str(), to = role.as_str(), ?keepalived_running, "role change");
        }
        m.handle.set_role(role);
    }

    /// Logs a worker's pass and accounts for it in the metrics.
    pub fn router_event(&self, event: &RouterEvent) {
        let span = match self.routers.get(&event.router) {
            Some(m) => {
                let spec = &m.wanted.spec;
                info_span!("router", router = %spec.id, netns = %spec.namespace, port = %spec.gateway_device)
            }
            None => info_span!("router", router = %event.router),
        };
        let _entered = span.enter();
        self.observer.record(event);
        if let Some(from) = event.transition_from {
            info!(from = from.as_str(), to = event.role.as_str(), "transition reconciled");
        }
        match &event.outcome {
            // A read-only /proc/sys is told once by the observer, not on every pass.
            PassOutcome::Converged { degraded, .. } if degraded.iter().any(|d| !d.read_only) => {
                for d in degraded.iter().filter(|d| !d.read_only) {
                    warn!(step = %d.action, error = %d.error, "degraded: side setting not applied");
                }
            }
            PassOutcome::Converged { applied, .. } if !applied.is_empty() => {
                info!(steps = applied.len(), ms = event.duration.as_millis() as u64, "converged");
            }
            PassOutcome::Converged { .. } => {}
            PassOutcome::Failed { error, .. } => {
                warn!(%error, "pass failed")
            }
        }
    }
}

/// Sends `netns`'s name on `changes` as soon as the namespace is mounted on its file (polled:
/// the mount sends no event), or gives up once the file is gone or after a few seconds.
async fn report_when_mounted(netns: Netns, changes: mpsc::UnboundedSender<String>) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut delay = std::time::Duration::from_millis(1);
    while tokio::time::Instant::now() < deadline && netns.path().exists() {
        if netns.is_mounted() {
            let _ = changes.send(netns.name().to_string());
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_millis(50));
    }
}

/// Whether `event` (in a watched directory) may concern the file at `path`.
fn file_in(path: &Path, event: &DirEvent) -> bool {
    path.parent() == Some(event.dir.as_path())
        && event.name.as_deref().is_none_or(|n| path.file_name() == Some(n))
}
