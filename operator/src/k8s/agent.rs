//! `hagw agent --kubernetes`: the DaemonSet agent. It watches every `HARouter`, keeps the
//! routers that list its node, and feeds them to the same event-driven agent as `hagw run`
//! ([`crate::agent::Agent`]); each pass is reported in the router's status.
//!
//! The API server is an input, not a dependency: enforcement runs in the router workers
//! and goes on from the last known specs while the watch is down (the reflector keeps its
//! store; the local spec cache covers restarts), and status catches up afterwards.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;

use futures::StreamExt;
use hagw_backends::dataplane::HostDataplane;
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

use super::cache::SpecCache;
use super::crd::HARouter;
use super::source::{Assigned, NodeView, node_view};
use super::status::{StatusWriter, Update};
use super::{Error, handback, uninstall};
use crate::agent::Agent;
use crate::observe::{self, HEARTBEAT};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name, as listed in `HARouter.spec.nodes`.
    pub node: String,
    /// Where the spec cache lives (a hostPath in the DaemonSet).
    pub state_dir: PathBuf,
    /// Address of `/metrics`, `/healthz`, `/readyz` and `/log-level`.
    pub listen: SocketAddr,
    /// OVSDB endpoint for routers with the `ovs` backend.
    pub ovsdb: String,
    pub worker: WorkerConfig,
}

/// Runs until SIGTERM or Ctrl-C. Ports stay as last reconciled when it stops.
pub async fn run(options: Options) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(Error::Client)?;
    let dataplane =
        HostDataplane::for_config(&Config { ovsdb: options.ovsdb.clone(), routers: Vec::new() });
    let (agent, mut inputs) = Agent::new(dataplane.clone(), options.worker)
        .map_err(|e| Error::Agent(format!("{e:#}")))?;
    let observer = agent.observer();
    let addr = observe::server::serve(options.listen, observer.clone())
        .await
        .map_err(|source| Error::Health { addr: options.listen, source })?;
    let lock_path = options.state_dir.join("agent.lock");
    let _lock = crate::lock::acquire(&lock_path, &observer)
        .await
        .map_err(|source| Error::Lock { path: lock_path.clone(), source })?;
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    tokio::spawn(StatusWriter::new(client.clone(), &options.node).run(status_rx));
    let node = options.node.clone();
    info!(node = %node, health = %addr, "kubernetes agent starting");

    let mut this = NodeAgent {
        agent,
        dataplane,
        node: node.clone(),
        managed: HashMap::new(),
        handbacks: HashMap::new(),
        status: status_tx,
        cache: SpecCache::new(&options.state_dir),
    };
    let cached = this.cache.load();
    if !cached.is_empty() {
        info!(node = %node, routers = cached.len(), "enforcing cached specs until the API server answers");
        this.enforce(NodeView { assigned: cached, rejected: Vec::new() }).await;
        observer.set_sources_ready();
    }

    let pod = uninstall::PodRef::from_env();
    let resource = ApiResource::erase::<HARouter>(&());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let writer = Writer::new(resource);
    let store = writer.as_reader();
    let mut watch = pin!(
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff()
    );
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let (mut synced, mut connected) = (false, true);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        observer.beat();
        tokio::select! {
            _ = heartbeat.tick() => {}
            item = watch.next() => match item {
                Some(Ok(event)) => {
                    if !connected {
                        info!(node = %node, "watch re-established");
                        connected = true;
                    }
                    let changed = match event {
                        watcher::Event::InitDone => {
                            synced = true;
                            observer.set_sources_ready();
                            true
                        }
                        watcher::Event::Apply(_) | watcher::Event::Delete(_) => synced,
                        watcher::Event::Init | watcher::Event::InitApply(_) => false,
                    };
                    if changed {
                        this.enforce(node_view(&store.state(), &node)).await;
                    }
                }
                Some(Err(e)) if connected => {
                    warn!(node = %node, error = %e, "HARouter watch failed; enforcing the last known specs");
                    connected = false;
                }
                Some(Err(e)) => debug!(node = %node, error = %e, "HARouter watch still failing"),
                None => break,
            },
            Some(ns) = inputs.netns_changes.recv() => this.agent.namespace_changed(&ns).await,
            Some(event) = inputs.dir_events.recv() => this.agent.dir_changed(&event).await,
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
    /// Routers enforced now, by router id.
    managed: HashMap<String, Assigned>,
    handbacks: HashMap<String, JoinHandle<()>>,
    status: mpsc::UnboundedSender<Update>,
    cache: SpecCache,
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
            .map(|a| handback::spawn(self.dataplane.clone(), &self.node, a.spec.clone()))
            .collect();
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(HAND_BACK_WITHIN, all).await.is_err() {
            warn!(node = %self.node, "not every port was handed back in time");
        }
        if let Err(e) = self.cache.store(&[]) {
            warn!(node = %self.node, error = %e, "cannot clear the spec cache");
        }
    }

    /// Makes the enforced set equal to `view`: new and changed routers get (new) workers,
    /// routers this node no longer hosts are handed back, and rejected objects are reported.
    async fn enforce(&mut self, view: NodeView) {
        let wanted: HashMap<String, Assigned> =
            view.assigned.into_iter().map(|a| (a.spec.id.clone(), a)).collect();
        for (id, old) in &self.managed {
            if wanted.contains_key(id) {
                continue;
            }
            let port = (&old.spec.namespace, &old.spec.gateway_device);
            // A renamed router on the same port: its new worker owns the port now.
            let taken_over =
                wanted.values().any(|a| (&a.spec.namespace, &a.spec.gateway_device) == port);
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

        let reported: Vec<_> = wanted
            .values()
            .map(|a| a.origin.key())
            .chain(view.rejected.iter().map(|r| r.origin.key()))
            .collect();
        for old in self.managed.values() {
            if !reported.contains(&old.origin.key()) {
                let _ = self.status.send(Update::Forget(old.origin.clone()));
            }
        }
        for rejected in view.rejected {
            warn!(node = %self.node, harouter = %rejected.origin.name, error = %rejected.error, "HARouter rejected");
            let _ = self.status.send(Update::Rejected(rejected.origin, rejected.error));
        }

        self.agent.set_routers(wanted.values().map(|a| a.spec.clone()).collect()).await;
        self.managed = wanted;
        let mut routers: Vec<Assigned> = self.managed.values().cloned().collect();
        routers.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        if let Err(e) = self.cache.store(&routers) {
            warn!(node = %self.node, error = %e, "cannot write the spec cache");
        }
    }

    fn router_event(&self, event: RouterEvent) {
        self.agent.router_event(&event);
        if let Some(assigned) = self.managed.get(&event.router) {
            let _ = self.status.send(Update::Pass(assigned.origin.clone(), Box::new(event)));
        }
    }
}
