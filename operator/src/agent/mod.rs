//! `hagw run`: the event-driven agent. It keeps one supervisor worker per router and wakes
//! it on whatever can change the router's port or role:
//! - netlink events inside the router namespace (link, address, route, IPv6 netconf) — the
//!   primary VIP appearing on the HA device is the earliest sign of a takeover;
//! - Neutron's state file being rewritten (inotify on its directory);
//! - the router namespace appearing or disappearing under `/run/netns`;
//! - keepalived exiting (a pidfd per running keepalived) or its pid file being rewritten,
//!   when the spec names `keepalivedPidFile`: a dead keepalived's VIP and state are stale;
//! - OVS port changes from the OVSDB monitor (a retag, the port appearing or being attached),
//!   which wake the port's routers, and all of them after a resync, an ovs-vswitchd restart
//!   and every [`RECHECK_INTERVAL`] ([`hagw_backends::ovs_watch`]);
//! - the worker's own timers (silence settling, retry backoff, periodic resync).
//!
//! Routers come from the caller ([`Agent::set_routers`]); a Neutron node's are discovered and
//! followed by [`Agent::follow_neutron`] ([`neutron`]), which hands back the new set whenever
//! Neutron changes it. A changed spec restarts its router's worker, which deletes from a
//! primary the addresses the previous spec had and the new one has not.
//!
//! Every hold and release is the planner's, applied by the router's worker; a standby's port
//! that arrives between passes is held by the backend as the last plan decided
//! (`HoldOnArrival`), which the agent clears for a router it stops managing.

mod exits;
mod neutron;
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use hagw_backends::dataplane::HostDataplane;
use hagw_backends::events::{NetnsMonitor, monitor_netns};
use hagw_backends::l2::ovs::port_name;
use hagw_backends::netns::{NETNS_RUN_DIR, Netns};
use hagw_backends::ovs_watch::{PortRouters, RECHECK_INTERVAL, wake_on_changes};
use hagw_core::model::{L2BackendSpec, RoleSource, RouterSpec};
use hagw_core::planner::HoldOnArrival;
use hagw_core::reconcile::{Dataplane, RouterMemory};
use hagw_core::supervisor::{PassOutcome, RouterEvent, RouterHandle, WorkerConfig, spawn_router};
use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

use self::exits::ExitWatches;
use self::neutron::Following;
pub use self::neutron::{NeutronSource, QUICK_RESCAN, RESCAN as NEUTRON_RESCAN};
use self::watch::{DirEvent, DirWatcher};
use crate::observe::{HEARTBEAT, Observer};
use crate::roles::RoleReader;

/// One router the agent manages.
struct Managed {
    spec: RouterSpec,
    /// Enforced hold-only: its spec may be stale ([`Agent::set_routers_hold_only`]).
    hold_only: bool,
    handle: RouterHandle,
    task: JoinHandle<()>,
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

/// The agent's state: workers, namespace subscriptions and file watches.
pub struct Agent {
    dataplane: Arc<HostDataplane>,
    config: WorkerConfig,
    roles: RoleReader,
    routers: BTreeMap<String, Managed>,
    monitors: HashMap<String, NetnsMonitor>,
    watcher: DirWatcher,
    netns_changes: mpsc::UnboundedSender<String>,
    events: mpsc::UnboundedSender<RouterEvent>,
    neutron: Option<Following>,
    observer: Observer,
    /// Started when the first OVS router is managed.
    ovs: Option<OvsWake>,
    keepalived_exits: ExitWatches,
}

/// What the agent's main loop waits on.
pub struct AgentInputs {
    pub dir_events: mpsc::UnboundedReceiver<DirEvent>,
    pub netns_changes: mpsc::UnboundedReceiver<String>,
    pub router_events: mpsc::UnboundedReceiver<RouterEvent>,
}

impl Agent {
    pub fn new(dataplane: HostDataplane, config: WorkerConfig) -> Result<(Agent, AgentInputs)> {
        let (mut watcher, dir_events) = DirWatcher::start().context("starting inotify")?;
        std::fs::create_dir_all(NETNS_RUN_DIR)
            .with_context(|| format!("creating {NETNS_RUN_DIR}"))?;
        watcher.watch(Path::new(NETNS_RUN_DIR)).context("watching /run/netns")?;
        let (netns_tx, netns_changes) = mpsc::unbounded_channel();
        let (events, router_events) = mpsc::unbounded_channel();
        let dataplane = Arc::new(dataplane);
        let observer = Observer::new(&config);
        let keepalived_exits = ExitWatches::new(netns_tx.clone());
        let agent = Agent {
            roles: RoleReader::new(dataplane.linux().clone()),
            dataplane,
            config,
            routers: BTreeMap::new(),
            monitors: HashMap::new(),
            watcher,
            netns_changes: netns_tx,
            events,
            neutron: None,
            observer,
            ovs: None,
            keepalived_exits,
        };
        Ok((agent, AgentInputs { dir_events, netns_changes, router_events }))
    }

    /// The metrics, health and readiness of this agent (served by `observe::server`).
    pub fn observer(&self) -> Observer {
        self.observer.clone()
    }

    /// Makes the managed set equal to `specs`: new routers get a worker, removed ones lose
    /// theirs, changed specs restart theirs.
    pub async fn set_routers(&mut self, specs: Vec<RouterSpec>) {
        self.set_routers_hold_only(specs, &BTreeSet::new()).await;
    }

    /// [`Agent::set_routers`], the routers in `hold_only` enforced hold-only: their specs,
    /// cached from before, may be stale, so their workers only hold a standby's port
    /// ([`hagw_core::observed::Observed::hold_only`]). A router leaving that set gets a new
    /// worker, which enforces it fully.
    pub async fn set_routers_hold_only(
        &mut self,
        specs: Vec<RouterSpec>,
        hold_only: &BTreeSet<String>,
    ) {
        let wanted: BTreeMap<String, RouterSpec> =
            specs.into_iter().map(|s| (s.id.clone(), s)).collect();
        // The addresses a changed spec no longer lists: its new worker deletes them.
        let mut retired: HashMap<String, Vec<IpNet>> = HashMap::new();
        let mut dropped = Vec::new();
        let (observer, exits) = (&self.observer, &mut self.keepalived_exits);
        self.routers.retain(|id, m| {
            let keep = wanted.get(id) == Some(&m.spec) && hold_only.contains(id) == m.hold_only;
            if !keep {
                dropped.push(m.spec.clone());
                info!(router = %id, "router removed or changed");
                if let Some(new) = wanted.get(id) {
                    let gone = m.spec.gateway_addresses.iter();
                    let gone = gone.filter(|a| !new.gateway_addresses.contains(a)).copied();
                    retired.insert(id.clone(), gone.collect());
                }
                exits.remove(id);
                if !wanted.contains_key(id) {
                    observer.router_removed(id);
                }
            }
            keep
        });
        for (id, spec) in wanted {
            if self.routers.contains_key(&id) {
                continue;
            }
            let state_file = match &spec.role {
                RoleSource::StateFile(path) => Some(path),
                RoleSource::Fixed(_) => None,
            };
            for file in state_file.into_iter().chain(&spec.keepalived_pid_file) {
                if let Some(dir) = file.parent()
                    && let Err(e) = self.watcher.watch(dir)
                {
                    warn!(router = %id, dir = %dir.display(), error = %e, "cannot watch a role input's directory; relying on resync");
                }
            }
            self.ensure_monitor(&spec.namespace).await;
            let resolved = self.roles.explain(&spec, None).await;
            let (role, keepalived) = (resolved.role, resolved.keepalived);
            self.keepalived_exits.set(&id, &spec.namespace, keepalived);
            let hold_only = hold_only.contains(&id);
            let memory = match hold_only {
                true => RouterMemory::hold_only(),
                false => RouterMemory::retiring(retired.remove(&id).unwrap_or_default()),
            };
            let (handle, task) = spawn_router(
                Arc::clone(&self.dataplane),
                spec.clone(),
                role,
                memory,
                self.config,
                self.events.clone(),
            );
            self.observer.router_started(&spec);
            self.observer.role_inputs(&id, &resolved);
            info!(router = %id, role = role.as_str(), hold_only, "managing router");
            self.routers.insert(id, Managed { spec, hold_only, handle, task });
        }
        self.update_ovs(dropped);
    }

    /// Tells the OVS watcher which ports to report (waking their routers), and withdraws
    /// the last plan's hold on arrival of the `dropped` routers' ports that no managed router
    /// uses any more.
    fn update_ovs(&mut self, dropped: Vec<RouterSpec>) {
        let mut keys = PortRouters::new();
        for m in self.routers.values() {
            if matches!(m.spec.backend, L2BackendSpec::Ovs { .. }) {
                let port = port_name(&m.spec).to_owned();
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

    /// Follows a Neutron node's routers as they are added, removed or reconfigured (their
    /// state paths watched, and looked for again by [`Agent::rescan_neutron`]). Returns the
    /// routers found now, for [`Agent::set_routers`] (with any others).
    pub fn follow_neutron(&mut self, source: NeutronSource) -> Vec<RouterSpec> {
        let (following, routers) = Following::start(source, &mut self.watcher);
        self.neutron = Some(following);
        routers
    }

    /// Looks for Neutron's state paths again (every [`NEUTRON_RESCAN`]): the discovered
    /// routers, if where they are read from changed.
    pub fn rescan_neutron(&mut self) -> Option<Vec<RouterSpec>> {
        self.neutron.as_mut()?.rescan(&mut self.watcher)
    }

    /// Whether the discovered routers come from Neutron's files (a state path was found),
    /// rather than from no state path found yet.
    pub fn neutron_read(&self) -> bool {
        self.neutron.as_ref().is_some_and(Following::found)
    }

    /// The routers after a SIGHUP: `config` read again, or Neutron's files rescanned. An
    /// invalid file is reported and changes nothing (the routers run on as they were).
    fn reload(&mut self, config: Option<&Path>) -> Option<Vec<RouterSpec>> {
        let Some(path) = config else {
            info!("SIGHUP: rescanning Neutron's files");
            return self.rescan_neutron();
        };
        match hagw_core::config::load(path) {
            Ok(config) => {
                info!(config = %path.display(), routers = config.routers.len(), "SIGHUP: configuration reloaded");
                Some(config.routers)
            }
            Err(error) => {
                warn!(config = %path.display(), %error, "SIGHUP: invalid configuration ignored; routers unchanged");
                None
            }
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
        if self.routers.values().any(|m| m.spec.namespace == namespace) {
            self.ensure_monitor(namespace).await;
        }
        let ids: Vec<String> = self
            .routers
            .values()
            .filter(|m| m.spec.namespace == namespace)
            .map(|m| m.spec.id.clone())
            .collect();
        for id in ids {
            self.refresh_role(&id).await;
            if let Some(m) = self.routers.get(&id) {
                m.handle.kick();
            }
        }
    }

    async fn refresh_role(&mut self, id: &str) {
        let Some(m) = self.routers.get(id) else { return };
        let resolved = self.roles.explain(&m.spec, None).await;
        let (role, keepalived) = (resolved.role, resolved.keepalived);
        self.keepalived_exits.set(id, &m.spec.namespace, keepalived);
        self.observer.role_inputs(id, &resolved);
        let before = m.handle.role();
        if before != role {
            // Says why a router with leftovers of a primary is standby: its keepalived is gone.
            let keepalived_running =
                m.spec.keepalived_pid_file.as_ref().map(|_| keepalived.is_some());
            info!(router = %id, from = before.as_str(), to = role.as_str(), ?keepalived_running, "role change");
        }
        if let Some(m) = self.routers.get(id) {
            m.handle.set_role(role);
        }
    }

    /// A watched directory changed: a namespace came or went, a state file was rewritten, or
    /// a Neutron router was added, removed or reconfigured: then the discovered routers, for
    /// [`Agent::set_routers`] (with any others).
    pub async fn dir_changed(&mut self, event: &DirEvent) -> Option<Vec<RouterSpec>> {
        if event.dir == Path::new(NETNS_RUN_DIR) {
            let name = event.name.as_ref().and_then(|n| n.to_str())?;
            if event.removed {
                self.monitors.remove(name);
            } else if self.routers.values().any(|m| m.spec.namespace == name) {
                self.ensure_monitor(name).await;
            }
            self.namespace_changed(name).await;
            return None;
        }
        let discovered = match &self.neutron {
            Some(following) if following.concerns(event) => {
                Some(following.discover(&mut self.watcher))
            }
            _ => None,
        };
        let ids: Vec<String> = self
            .routers
            .values()
            .filter(|m| {
                matches!(&m.spec.role, RoleSource::StateFile(p) if file_in(p, event))
                    || m.spec.keepalived_pid_file.as_ref().is_some_and(|p| file_in(p, event))
            })
            .map(|m| m.spec.id.clone())
            .collect();
        for id in ids {
            self.refresh_role(&id).await;
        }
        discovered
    }

    /// Logs a worker's pass and accounts for it in the metrics (status hooks in here too).
    pub fn router_event(&self, event: &RouterEvent) {
        let span = match self.routers.get(&event.router) {
            Some(m) => {
                info_span!("router", router = %m.spec.id, netns = %m.spec.namespace, port = %m.spec.gateway_device)
            }
            None => info_span!("router", router = %event.router),
        };
        let _entered = span.enter();
        self.observer.record(event);
        if let Some(from) = event.transition_from {
            info!(from = from.as_str(), to = event.role.as_str(), "transition reconciled");
        }
        match &event.outcome {
            PassOutcome::Converged { degraded, .. } if !degraded.is_empty() => {
                for (action, error) in degraded {
                    warn!(step = %action, %error, "degraded: side setting not applied");
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

    /// Runs until interrupted. SIGHUP re-reads `config` (the routers of `hagw run -c`), or
    /// rescans Neutron's files: unchanged routers keep their workers and their holds.
    pub async fn run(mut self, mut inputs: AgentInputs, config: Option<&Path>) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut rescan = tokio::time::interval(NEUTRON_RESCAN);
        loop {
            self.observer.beat();
            let discovered = tokio::select! {
                _ = heartbeat.tick() => None,
                _ = rescan.tick() => self.rescan_neutron(),
                _ = hangup.recv() => self.reload(config),
                Some(ns) = inputs.netns_changes.recv() => {
                    self.namespace_changed(&ns).await;
                    None
                }
                Some(event) = inputs.dir_events.recv() => self.dir_changed(&event).await,
                Some(event) = inputs.router_events.recv() => {
                    self.router_event(&event);
                    None
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
            };
            if let Some(routers) = discovered {
                self.set_routers(routers).await;
            }
        }
        info!("stopping; ports stay as last reconciled");
        Ok(())
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
