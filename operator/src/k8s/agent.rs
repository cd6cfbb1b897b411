//! `hagw agent --kubernetes`: the DaemonSet agent. It watches every `HARouter`, keeps the
//! routers that list its node, adds those Neutron runs here (discovered from its `ha_confs`,
//! as `hagw run --neutron` does, when enabled; an HARouter for the same router id wins), and
//! feeds them to the same event-driven agent as `hagw run` ([`crate::agent::Agent`]); each
//! pass is reported in the router's HARouter status (a discovered router's object is
//! created by the agent, and its overrides applied: [`super::merge`]).
//!
//! The API server is an input, not a dependency: enforcement runs in the router workers
//! and goes on from the last known specs while the watch is down (the reflector keeps its
//! store; the local spec cache covers restarts), and status catches up afterwards.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use futures::{FutureExt, StreamExt};
use hagw_backends::dataplane::HostDataplane;
use hagw_core::RouterSpec;
use hagw_core::config::Config;
use hagw_core::supervisor::{RouterEvent, WorkerConfig};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::aggregate::Aggregator;
use super::cache::SpecCache;
use super::crd::HARouter;
use super::discovered::Discovered;
use super::merge::{Enforced, merge};
use super::source::{Assigned, NodeView, SpecChanges, node_view};
use super::status::{StatusWriter, Update};
use super::throttle::{Limit, Throttle};
use super::{Error, handback, uninstall};
use crate::agent::{Agent, NEUTRON_RESCAN, NeutronSource, QUICK_RESCAN};
use crate::observe::{self, HEARTBEAT};
use crate::ready::ReadyFile;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name, as listed in `HARouter.spec.nodes`.
    pub node: String,
    /// The namespace the agent publishes the objects of discovered routers in.
    pub namespace: String,
    /// Where the spec cache lives (a hostPath in the DaemonSet).
    pub state_dir: PathBuf,
    /// Created once the cached, discovered or listed routers have had their first pass, for
    /// Neutron's agents to start after at boot ([`crate::ready`]).
    pub ready_file: Option<PathBuf>,
    /// Address of `/metrics`, `/healthz`, `/readyz`, `/status` and `/log-level`, if served.
    pub listen: Option<SocketAddr>,
    /// OVSDB endpoint for routers with the `ovs` backend.
    pub ovsdb: String,
    /// Where to discover Neutron's routers on this node, if at all.
    pub neutron: Option<NeutronSource>,
    pub worker: WorkerConfig,
    /// The budget of API writes.
    pub writes: Limit,
    /// How long status updates are collected before they are written.
    pub status_window: std::time::Duration,
    /// How long the nodes' entries must be still before the object's conditions follow.
    pub conditions_settle: std::time::Duration,
}

/// Runs until SIGTERM or Ctrl-C. Ports stay as last reconciled when it stops.
pub async fn run(options: Options) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(Error::Client)?;
    let dataplane =
        HostDataplane::for_config(&Config { ovsdb: options.ovsdb.clone(), routers: Vec::new() });
    let (agent, mut inputs) = Agent::new(dataplane.clone(), options.worker)
        .map_err(|e| Error::Agent(format!("{e:#}")))?;
    let observer = agent.observer();
    let health = match options.listen {
        Some(addr) => Some(
            observe::server::serve(addr, observer.clone())
                .await
                .map_err(|source| Error::Health { addr, source })?,
        ),
        None => None,
    };
    let lock_path = options.state_dir.join("agent.lock");
    let _lock = crate::lock::acquire(&lock_path, &observer)
        .await
        .map_err(|source| Error::Lock { path: lock_path.clone(), source })?;
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    let node = options.node.clone();
    match health {
        Some(bound) => info!(node = %node, health = %bound, "kubernetes agent starting"),
        None => info!(node = %node, "kubernetes agent starting; no /metrics, /healthz, /readyz"),
    }

    let mut this = NodeAgent {
        agent,
        dataplane,
        node: node.clone(),
        home: options.namespace.clone(),
        view: NodeView::default(),
        discovered: Discovered::default(),
        managed: HashMap::new(),
        handbacks: HashMap::new(),
        status: status_tx,
        cache: SpecCache::harouters(&options.state_dir),
        discovered_cache: SpecCache::discovered(&options.state_dir),
    };
    // Discovered routers are read from Neutron's files. Those cached from before wait for
    // them hold-only (a stale spec could bring back a floating IP Neutron has removed since):
    // at a node's boot the files are found only once the L3 agent's process runs.
    if let Some(source) = options.neutron.clone() {
        this.discovered = Discovered::cached(this.discovered_cache.load());
        let found = this.agent.follow_neutron(source);
        let read = this.agent.neutron_read();
        this.take_discovered(found, read);
        if this.discovered.waiting() {
            info!(node = %node, routers = ?this.discovered.hold_only(), "Neutron's files not found yet: holding the standbys of the routers discovered before, by name, until they are");
        }
    }
    let cached = this.cache.load();
    if !cached.is_empty() || !this.discovered.routers().is_empty() {
        info!(node = %node, cached = cached.len(), discovered = this.discovered.routers().len(), "enforcing cached and discovered specs until the API server answers");
        this.set_view(NodeView { assigned: cached, ..NodeView::default() }).await;
        observer.set_sources_ready();
    }

    let pod = uninstall::PodRef::from_env();
    let resource = ApiResource::erase::<HARouter>(&());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let writer = Writer::new(resource);
    let store = writer.as_reader();
    let throttle = Throttle::new(options.writes);
    let backlog = Arc::new(AtomicBool::new(false));
    let aggregator = Aggregator::new(
        client.clone(),
        store.clone(),
        &node,
        throttle.clone(),
        observer.clone(),
        options.conditions_settle,
        backlog.clone(),
    );
    tokio::spawn(aggregator.run());
    let status = StatusWriter::new(
        client.clone(),
        &node,
        store.clone(),
        throttle,
        options.status_window,
        observer.clone(),
        backlog,
    );
    tokio::spawn(status.run(status_rx));
    let mut watch = pin!(
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff()
    );
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let (mut synced, mut connected) = (false, true);
    let mut specs = SpecChanges::default();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut rescan = tokio::time::interval(NEUTRON_RESCAN);
    let mut quick = tokio::time::interval(QUICK_RESCAN);
    let mut ready = ReadyFile::new(options.ready_file.clone());
    loop {
        observer.beat();
        // Checked after every event: a router's first pass arrives as one.
        ready.update(&observer);
        tokio::select! {
            _ = heartbeat.tick() => {}
            _ = rescan.tick() => this.rescan().await,
            _ = quick.tick(), if this.discovered.waiting() => this.rescan().await,
            item = watch.next() => {
                // A burst of events (the status writes of many routers) is taken in whole, and
                // the view is worked out at most once for it.
                let (mut next, mut changed, mut ended) = (Some(item), false, false);
                while let Some(item) = next {
                    match item {
                        Some(Ok(event)) => {
                            if !connected {
                                info!(node = %node, "watch re-established");
                                connected = true;
                            }
                            changed |= match event {
                                watcher::Event::InitDone => {
                                    synced = true;
                                    observer.set_sources_ready();
                                    specs.reset(&store.state());
                                    true
                                }
                                watcher::Event::Apply(obj) => specs.applied(&obj) && synced,
                                watcher::Event::Delete(obj) => specs.deleted(&obj) && synced,
                                watcher::Event::Init | watcher::Event::InitApply(_) => false,
                            };
                        }
                        Some(Err(e)) if connected => {
                            warn!(node = %node, error = %e, "HARouter watch failed; enforcing the last known specs");
                            connected = false;
                        }
                        Some(Err(e)) => debug!(node = %node, error = %e, "HARouter watch still failing"),
                        None => {
                            ended = true;
                            break;
                        }
                    }
                    next = watch.next().now_or_never();
                }
                if changed {
                    this.set_view(node_view(&store.state(), &node)).await;
                }
                if ended {
                    break;
                }
            }
            Some(ns) = inputs.netns_changes.recv() => this.agent.namespace_changed(&ns).await,
            Some(event) = inputs.dir_events.recv() => {
                if let Some(routers) = this.agent.dir_changed(&event).await {
                    let read = this.agent.neutron_read();
                    this.set_discovered(routers, read).await;
                }
            }
            Some(event) = inputs.router_events.recv() => this.router_event(event),
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    match &pod {
        Some(pod) if uninstall::uninstalling(&client, pod).await => {
            info!(node = %node, "hagw is being uninstalled: handing every port back");
            this.hand_back_all().await;
        }
        _ => info!(node = %node, "stopping; ports stay as last reconciled"),
    }
    Ok(())
}

/// The agent's Kubernetes-side state around the shared [`Agent`].
struct NodeAgent {
    agent: Agent,
    /// The same dataplane the agent's workers use, for hand-backs.
    dataplane: HostDataplane,
    node: String,
    /// Where objects for discovered routers are published.
    home: String,
    /// The routers HARouters assign to this node, and those they cannot.
    view: NodeView,
    /// The routers discovered from Neutron's files, and those cached from before.
    discovered: Discovered,
    /// Routers enforced now, by router id.
    managed: HashMap<String, Enforced>,
    handbacks: HashMap<String, JoinHandle<()>>,
    status: mpsc::UnboundedSender<Update>,
    /// The HARouters' routers.
    cache: SpecCache,
    discovered_cache: SpecCache,
}

/// How long an uninstall waits for the hand-backs: within the pod's termination grace period
/// (30 s by default), past the silence settle time (3 s by default).
const HAND_BACK_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

impl NodeAgent {
    /// Hands every managed router's port back (as when it is no longer hosted here), waits
    /// for them, and forgets the cached specs, so nothing is enforced from them again.
    async fn hand_back_all(&mut self) {
        // The workers stop first: they would hold the ports again.
        self.agent.set_routers(Vec::new()).await;
        let tasks: Vec<_> = self
            .managed
            .values()
            .map(|e| handback::spawn(self.dataplane.clone(), &self.node, e.assigned.spec.clone()))
            .collect();
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(HAND_BACK_WITHIN, all).await.is_err() {
            warn!(node = %self.node, "not every port was handed back in time");
        }
        for cache in [&self.cache, &self.discovered_cache] {
            if let Err(e) = cache.store::<RouterSpec>(&[]) {
                warn!(node = %self.node, error = %e, "cannot clear the spec cache");
            }
        }
    }

    /// Takes a new view of the HARouters: reports the rejected objects and enforces.
    async fn set_view(&mut self, view: NodeView) {
        for rejected in &view.rejected {
            warn!(node = %self.node, harouter = %rejected.origin.name, error = %rejected.error, "HARouter rejected");
            let _ =
                self.status.send(Update::Rejected(rejected.origin.clone(), rejected.error.clone()));
        }
        self.view = view;
        self.enforce().await;
    }

    /// Takes the routers newly discovered (`read`: from Neutron's files, not for want of
    /// them) and enforces.
    async fn set_discovered(&mut self, routers: Vec<RouterSpec>, read: bool) {
        self.take_discovered(routers, read);
        self.enforce().await;
    }

    /// Takes the routers newly discovered, caching them once they come from Neutron's files.
    fn take_discovered(&mut self, routers: Vec<RouterSpec>, read: bool) {
        let waited = self.discovered.waiting();
        if let Some(routers) = self.discovered.update(routers, read) {
            if waited {
                info!(node = %self.node, "Neutron's files read: its routers are enforced from them");
            }
            if let Err(e) = self.discovered_cache.store(routers) {
                warn!(node = %self.node, error = %e, "cannot write the discovered routers' cache");
            }
        }
    }

    /// Looks for Neutron's state paths again.
    async fn rescan(&mut self) {
        if let Some(routers) = self.agent.rescan_neutron() {
            let read = self.agent.neutron_read();
            self.set_discovered(routers, read).await;
        }
    }

    /// Makes the enforced set equal to what [`merge`] makes of the view and the discovered
    /// routers: new and changed routers get (new) workers, routers this node no longer hosts
    /// are handed back, and discovered routers without an object get one.
    async fn enforce(&mut self) {
        let desired = merge(self.view.clone(), &self.discovered.routers(), &self.home);
        if !desired.publish.is_empty() {
            let _ = self.status.send(Update::Publish(desired.publish));
        }
        let wanted: HashMap<String, Enforced> =
            desired.routers.into_iter().map(|e| (e.assigned.spec.id.clone(), e)).collect();
        for (id, old) in &self.managed {
            if wanted.contains_key(id) {
                continue;
            }
            let old = &old.assigned;
            let port = (&old.spec.namespace, &old.spec.gateway_device);
            // A renamed router on the same port: its new worker owns the port now.
            let taken_over = wanted
                .values()
                .any(|e| (&e.assigned.spec.namespace, &e.assigned.spec.gateway_device) == port);
            if !taken_over {
                info!(router = %id, node = %self.node, harouter = %old.origin.name, "no longer hosted here; handing the port back");
                let task = handback::spawn(self.dataplane.clone(), &self.node, old.spec.clone());
                if let Some(previous) = self.handbacks.insert(id.clone(), task) {
                    previous.abort();
                }
            }
        }
        for id in wanted.keys() {
            if let Some(task) = self.handbacks.remove(id) {
                task.abort();
            }
        }
        self.handbacks.retain(|_, task| !task.is_finished());

        let reported: HashSet<_> = wanted
            .values()
            .map(|e| e.assigned.origin.key())
            .chain(desired.rejected.iter().map(|r| r.origin.key()))
            .collect();
        for (id, now) in &wanted {
            let before = self.managed.get(id);
            if before.is_some_and(|b| b.assigned == now.assigned && b.ignored != now.ignored) {
                let _ = self.status.send(Update::Report(Box::new(now.clone())));
            }
        }
        for old in self.managed.values() {
            if !reported.contains(&old.assigned.origin.key()) {
                let _ = self.status.send(Update::Forget(old.assigned.origin.clone()));
            }
        }

        // Only discovered routers can be hold-only: an HARouter for the same id wins.
        let waiting = self.discovered.hold_only();
        let hold_only = wanted
            .iter()
            .filter(|(id, e)| e.discovered && waiting.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        let specs = wanted.values().map(|e| e.assigned.spec.clone()).collect();
        self.agent.set_routers_hold_only(specs, &hold_only).await;
        self.managed = wanted;
        // Only the HARouters' routers: discovered ones have a cache of their own.
        let mut routers: Vec<Assigned> =
            self.managed.values().filter(|e| !e.discovered).map(|e| e.assigned.clone()).collect();
        routers.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        if let Err(e) = self.cache.store(&routers) {
            warn!(node = %self.node, error = %e, "cannot write the spec cache");
        }
    }

    fn router_event(&self, event: RouterEvent) {
        self.agent.router_event(&event);
        if let Some(enforced) = self.managed.get(&event.router) {
            let _ = self.status.send(Update::Pass(Box::new(enforced.clone()), Box::new(event)));
        }
    }
}
