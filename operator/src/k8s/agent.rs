//! `hagw agent --kubernetes`: the DaemonSet agent. It watches every `HARouter`, keeps the
//! routers that list its node, adds those Neutron runs here (discovered from its `ha_confs`,
//! as `hagw run --neutron` does, when enabled; an HARouter for the same router id wins), and
//! is the source ([`NodeSource`]) of the same agent loop as `hagw run`
//! ([`crate::agent::Agent`]); each pass is reported in the router's HARouter status (a
//! discovered router's object is created by the agent, and its overrides applied:
//! [`super::merge`]).
//!
//! The API server is an input, not a dependency: enforcement runs in the router workers
//! and goes on from the last known specs while the watch is down (the reflector keeps its
//! store; the local spec cache covers restarts), and status catches up afterwards.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use hagw_backends::dataplane::HostDataplane;
use hagw_core::RouterSpec;
use hagw_core::config::Config;
use hagw_core::supervisor::{RouterEvent, WorkerConfig};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
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
use crate::agent::{Agent, DirWatcher, Following, NeutronSource, Routers, Source, Wanted};
use crate::observe::{self, Observer};

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
    let agent = Agent::new(dataplane.clone(), options.worker)
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
    let watch =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let source = NodeSource {
        client,
        pod: uninstall::PodRef::from_env(),
        observer,
        dataplane,
        node,
        home: options.namespace.clone(),
        view: NodeView::default(),
        discovered: Discovered::default(),
        neutron: options.neutron.clone().map(Following::new),
        handbacks: HashMap::new(),
        status: status_tx,
        cache: SpecCache::harouters(&options.state_dir),
        discovered_cache: SpecCache::discovered(&options.state_dir),
        ready_file: options.ready_file.clone(),
        watch: watch.boxed(),
        store,
        specs: SpecChanges::default(),
        synced: false,
        connected: true,
        ended: false,
    };
    agent.run(Source::Kubernetes(Box::new(source))).await.map_err(Error::Signal)
}

/// The routers of a Kubernetes node, for the agent's loop: the HARouters listing it, joined
/// with the routers Neutron runs here; where each one's passes are reported; which ports to
/// hand back.
pub struct NodeSource {
    client: Client,
    /// This agent's pod, to tell an uninstall from a restart.
    pod: Option<uninstall::PodRef>,
    observer: Observer,
    /// The same dataplane the agent's workers use, for hand-backs.
    dataplane: HostDataplane,
    node: String,
    /// Where objects for discovered routers are published.
    home: String,
    /// The routers HARouters assign to this node, and those they cannot.
    view: NodeView,
    /// The routers discovered from Neutron's files, and those cached from before.
    discovered: Discovered,
    neutron: Option<Following>,
    handbacks: HashMap<String, JoinHandle<()>>,
    status: mpsc::UnboundedSender<Update>,
    /// The HARouters' routers.
    cache: SpecCache,
    discovered_cache: SpecCache,
    ready_file: Option<PathBuf>,
    watch: BoxStream<'static, watcher::Result<watcher::Event<DynamicObject>>>,
    store: Store<DynamicObject>,
    specs: SpecChanges,
    /// The watch's initial list is in.
    synced: bool,
    connected: bool,
    ended: bool,
}

/// How long an uninstall waits for the hand-backs: within the pod's termination grace period
/// (30 s by default), past the silence settle time (3 s by default).
const HAND_BACK_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

impl NodeSource {
    /// The routers to enforce before the API server answers: those cached and discovered,
    /// if any. Discovered routers are read from Neutron's files. Those cached from before
    /// wait for them hold-only (a stale spec could bring back a floating IP Neutron has
    /// removed since): at a node's boot the files are found only once the L3 agent's process
    /// runs.
    pub(crate) fn start(
        &mut self,
        watcher: &mut DirWatcher,
        routers: &Routers,
    ) -> Option<Vec<Wanted>> {
        if let Some(following) = &mut self.neutron {
            self.discovered = Discovered::cached(self.discovered_cache.load());
            let found = following.start(watcher);
            let read = following.found();
            self.take_discovered(found, read);
            if self.discovered.waiting() {
                info!(node = %self.node, routers = ?self.discovered.hold_only(), "Neutron's files not found yet: holding the standbys of the routers discovered before, by name, until they are");
            }
        }
        let cached = self.cache.load();
        if cached.is_empty() && self.discovered.routers().is_empty() {
            return None;
        }
        info!(node = %self.node, cached = cached.len(), discovered = self.discovered.routers().len(), "enforcing cached and discovered specs until the API server answers");
        Some(self.set_view(NodeView { assigned: cached, ..NodeView::default() }, routers))
    }

    pub(crate) fn following(&mut self) -> Option<&mut Following> {
        self.neutron.as_mut()
    }

    pub(crate) fn waiting(&self) -> bool {
        self.discovered.waiting()
    }

    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    pub(crate) fn ready_file(&self) -> Option<PathBuf> {
        self.ready_file.clone()
    }

    /// Takes the next events of the HARouter watch: the routers then wanted, if the view
    /// may have changed.
    pub(crate) async fn changed(&mut self, routers: &Routers) -> Option<Vec<Wanted>> {
        let item = self.watch.next().await;
        // A burst of events (the status writes of many routers) is taken in whole, and the
        // view is worked out at most once for it.
        let (mut next, mut changed) = (Some(item), false);
        while let Some(item) = next {
            match item {
                Some(Ok(event)) => {
                    if !self.connected {
                        info!(node = %self.node, "watch re-established");
                        self.connected = true;
                    }
                    changed |= self.watched(event);
                }
                Some(Err(e)) if self.connected => {
                    warn!(node = %self.node, error = %e, "HARouter watch failed; enforcing the last known specs");
                    self.connected = false;
                }
                Some(Err(e)) => {
                    debug!(node = %self.node, error = %e, "HARouter watch still failing")
                }
                None => {
                    self.ended = true;
                    break;
                }
            }
            next = self.watch.next().now_or_never();
        }
        changed.then(|| self.set_view(node_view(&self.store.state(), &self.node), routers))
    }

    /// Takes one watch event: whether the view may have changed.
    fn watched(&mut self, event: watcher::Event<DynamicObject>) -> bool {
        match event {
            watcher::Event::InitDone => {
                self.synced = true;
                self.observer.set_sources_ready();
                self.specs.reset(&self.store.state());
                true
            }
            watcher::Event::Apply(obj) => self.specs.applied(&obj) && self.synced,
            watcher::Event::Delete(obj) => self.specs.deleted(&obj) && self.synced,
            watcher::Event::Init | watcher::Event::InitApply(_) => false,
        }
    }

    /// The agent stops: if hagw is being uninstalled, every port is handed back.
    pub(crate) async fn stop(self, routers: &mut Routers, watcher: &mut DirWatcher) {
        match &self.pod {
            Some(pod) if uninstall::uninstalling(&self.client, pod).await => {
                info!(node = %self.node, "hagw is being uninstalled: handing every port back");
                self.hand_back_all(routers, watcher).await;
            }
            _ => info!(node = %self.node, "stopping; ports stay as last reconciled"),
        }
    }

    /// Hands every managed router's port back (as when it is no longer hosted here), waits
    /// for them, and forgets the cached specs, so nothing is enforced from them again.
    async fn hand_back_all(&self, routers: &mut Routers, watcher: &mut DirWatcher) {
        let specs: Vec<RouterSpec> = routers.wanted().map(|w| w.spec.clone()).collect();
        // The workers stop first: they would hold the ports again.
        routers.set(Vec::new(), watcher).await;
        let tasks: Vec<_> = specs
            .into_iter()
            .map(|spec| handback::spawn(self.dataplane.clone(), &self.node, spec))
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

    /// Takes a new view of the HARouters: reports the rejected objects; the routers wanted.
    fn set_view(&mut self, view: NodeView, routers: &Routers) -> Vec<Wanted> {
        for rejected in &view.rejected {
            warn!(node = %self.node, harouter = %rejected.origin.name, error = %rejected.error, "HARouter rejected");
            let _ =
                self.status.send(Update::Rejected(rejected.origin.clone(), rejected.error.clone()));
        }
        self.view = view;
        self.enforce(routers)
    }

    /// Takes the routers newly discovered: the routers wanted.
    pub(crate) fn take_found(&mut self, found: Vec<RouterSpec>, routers: &Routers) -> Vec<Wanted> {
        // From Neutron's files, not for want of them.
        let read = self.neutron.as_ref().is_some_and(Following::found);
        self.take_discovered(found, read);
        self.enforce(routers)
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

    /// What [`merge`] makes of the view and the discovered routers, replacing `routers`:
    /// routers this node no longer hosts are handed back, discovered routers without an
    /// object get one, and the HARouters' routers are cached.
    fn enforce(&mut self, routers: &Routers) -> Vec<Wanted> {
        let desired = merge(self.view.clone(), &self.discovered.routers(), &self.home);
        if !desired.publish.is_empty() {
            let _ = self.status.send(Update::Publish(desired.publish));
        }
        let wanted: HashMap<String, Enforced> =
            desired.routers.into_iter().map(|e| (e.assigned.spec.id.clone(), e)).collect();
        for old in routers.wanted() {
            let (id, Some(reported)) = (&old.spec.id, &old.reported) else { continue };
            if wanted.contains_key(id) {
                continue;
            }
            let port = (&old.spec.namespace, &old.spec.gateway_device);
            // A renamed router on the same port: its new worker owns the port now.
            let taken_over = wanted
                .values()
                .any(|e| (&e.assigned.spec.namespace, &e.assigned.spec.gateway_device) == port);
            if !taken_over {
                info!(router = %id, node = %self.node, harouter = %reported.origin.name, "no longer hosted here; handing the port back");
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
            // The same router in the same object, only what its report adds changed.
            let renoted = routers.get(id).is_some_and(|before| {
                before.spec == now.assigned.spec
                    && before.reported.as_ref().is_some_and(|b| {
                        b.origin == now.assigned.origin && b.ignored != now.ignored
                    })
            });
            if renoted {
                let _ = self.status.send(Update::Report(Box::new(now.clone())));
            }
        }
        for old in routers.wanted().filter_map(|w| w.reported.as_ref()) {
            if !reported.contains(&old.origin.key()) {
                let _ = self.status.send(Update::Forget(old.origin.clone()));
            }
        }

        // Only the HARouters' routers: discovered ones have a cache of their own.
        let mut cached: Vec<&Assigned> =
            wanted.values().filter(|e| !e.discovered).map(|e| &e.assigned).collect();
        cached.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        if let Err(e) = self.cache.store(&cached) {
            warn!(node = %self.node, error = %e, "cannot write the spec cache");
        }
        // Only discovered routers can be hold-only: an HARouter for the same id wins.
        let waiting = self.discovered.hold_only();
        let wanted = wanted.into_iter().map(|(id, e)| {
            let hold_only = e.discovered && waiting.contains(&id);
            let (spec, reported) = e.split();
            Wanted { spec, hold_only, reported: Some(reported) }
        });
        wanted.collect()
    }

    /// Reports a worker's pass in the router's HARouter.
    pub(crate) fn passed(&self, routers: &Routers, event: RouterEvent) {
        let Some(wanted) = routers.get(&event.router) else { return };
        if let Some(reported) = &wanted.reported {
            let enforced = Enforced::join(wanted.spec.clone(), reported);
            let _ = self.status.send(Update::Pass(Box::new(enforced), Box::new(event)));
        }
    }
}
