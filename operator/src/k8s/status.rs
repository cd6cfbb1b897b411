//! This node's entry in each `HARouter`'s status, and the Events on transitions and
//! failures.
//!
//! The entry is written by server-side apply to the status subresource under the field
//! manager `hagw-agent/<node>`, containing only this node's element of the `nodes` map-list:
//! the API server merges it with the other nodes' entries, so concurrent agents never lose
//! each other's writes and need no read-modify-write. Writes that fail (API server away)
//! stay pending and are retried, so status catches up once it is back; the entry always
//! carries the latest state, never a backlog.
//!
//! Writes are few at any scale: updates are coalesced for a short window (several passes of
//! a router during a failover are one write), an entry is written only when it differs
//! from what was written or what the API server already holds (a restart rewrites nothing),
//! and every write takes a token from the agent's [`Throttle`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hagw_core::supervisor::RouterEvent;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::aggregate::summary;
use super::crd::{HARouter, NodeStatus};
use super::entry::{self, Notice};
use super::gc;
use super::merge::Enforced;
use super::source::{DISCOVERED_LABEL, Origin};
use super::throttle::Throttle;
use crate::observe::Observer;

type Key = (String, String);

/// How long failed writes wait before they are retried.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Bound on one write, so an unreachable API server delays status, never the next write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Takeovers in one flush above which they are one Event, not one per router.
const TAKEOVER_EVENTS: usize = 10;

/// What the agent tells the status writer.
#[derive(Debug)]
pub enum Update {
    /// A reconcile pass of a router.
    Pass(Box<Enforced>, Box<RouterEvent>),
    /// What is reported with a router changed (its ignored overrides) while its spec did not:
    /// no new pass comes, its last one is reported again.
    Report(Box<Enforced>),
    /// The object lists this node but cannot be enforced.
    Rejected(Origin, String),
    /// This node no longer hosts the object's router.
    Forget(Origin),
    /// Discovered routers whose objects must be created (with their router ids).
    Publish(Vec<(Origin, String)>),
}

struct Entry {
    origin: Origin,
    /// What the entry should say; `None` once this node no longer hosts the router (the
    /// entry is then removed by applying an empty list).
    desired: Option<NodeStatus>,
    written: bool,
}

pub struct StatusWriter {
    client: Client,
    resource: ApiResource,
    node: String,
    params: PatchParams,
    recorder: Recorder,
    entries: HashMap<Key, Entry>,
    /// Each router's last pass, by object.
    last: HashMap<Key, Box<RouterEvent>>,
    /// Objects to create, with their router ids.
    publish: HashMap<Key, (Origin, String)>,
    /// Takeovers not yet announced, with their Events' notes.
    takeovers: Vec<(Origin, String)>,
    /// The watched objects: what the API server already holds.
    store: Store<DynamicObject>,
    throttle: Throttle,
    /// How long updates are collected before they are written.
    window: Duration,
    observer: Observer,
    /// Set while entries or objects wait to be written (the aggregator waits for it).
    backlog: Arc<AtomicBool>,
}

impl StatusWriter {
    pub fn new(
        client: Client,
        node: &str,
        store: Store<DynamicObject>,
        throttle: Throttle,
        window: Duration,
        observer: Observer,
        backlog: Arc<AtomicBool>,
    ) -> StatusWriter {
        let reporter = Reporter { controller: "hagw-agent".into(), instance: Some(node.into()) };
        StatusWriter {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            resource: ApiResource::erase::<HARouter>(&()),
            node: node.to_string(),
            params: PatchParams::apply(&format!("hagw-agent/{node}")).force(),
            entries: HashMap::new(),
            last: HashMap::new(),
            publish: HashMap::new(),
            takeovers: Vec::new(),
            store,
            throttle,
            window,
            observer,
            backlog,
        }
    }

    /// Runs the writer until the agent drops its sender: updates are recorded at once and
    /// written once the coalescing window has passed; failed writes are retried.
    pub async fn run(mut self, mut updates: mpsc::UnboundedReceiver<Update>) {
        let mut due: Option<Instant> = None;
        loop {
            let flush_at = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                update = updates.recv() => match update {
                    Some(update) => {
                        self.record(update);
                        due.get_or_insert_with(|| Instant::now() + self.window);
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(flush_at), if due.is_some() => {
                    let done = self.flush(&mut updates).await;
                    self.backlog.store(!done, Ordering::Relaxed);
                    due = (!done).then(|| Instant::now() + RETRY_AFTER);
                }
            }
        }
    }

    fn record(&mut self, update: Update) {
        match update {
            Update::Pass(enforced, event) => {
                self.pass(&enforced, &event);
                self.last.insert(enforced.assigned.origin.key(), event);
            }
            Update::Report(enforced) => {
                if let Some(mut event) = self.last.get(&enforced.assigned.origin.key()).cloned() {
                    event.transition_from = None;
                    self.pass(&enforced, &event);
                }
            }
            Update::Rejected(origin, error) => self.rejected(&origin, &error),
            Update::Forget(origin) => self.forget(&origin),
            Update::Publish(objects) => {
                for (origin, id) in objects {
                    self.publish.insert(origin.key(), (origin, id));
                    self.backlog.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Records a pass of a router; emits Events for a role transition and for the first
    /// failure (and the recovery) of a run of failures.
    fn pass(&mut self, enforced: &Enforced, event: &RouterEvent) {
        let origin = &enforced.assigned.origin;
        let previous = self.current(origin);
        let vip_present = self.observer.vip_present(&enforced.assigned.spec.id);
        let report =
            entry::after_pass(&self.node, previous.as_ref(), enforced, event, vip_present, &now());
        self.apply(origin, report);
    }

    /// Records an object listing this node that the agent cannot enforce.
    fn rejected(&mut self, origin: &Origin, error: &str) {
        let previous = self.current(origin);
        let report = entry::after_rejection(&self.node, previous.as_ref(), origin, error, &now());
        self.apply(origin, report);
    }

    /// Sends the report's Event, queues its takeover note ([`Self::announce`]) and sets the
    /// entry.
    fn apply(&mut self, origin: &Origin, report: entry::Report) {
        match &report.notice {
            Some(Notice::Failing { reason, message }) => {
                self.event(origin.object_ref(), EventType::Warning, reason, message)
            }
            Some(Notice::Recovered) => self.event(
                origin.object_ref(),
                EventType::Normal,
                "Recovered",
                "reconcile succeeds again",
            ),
            None => {}
        }
        if let Some(note) = report.takeover {
            self.takeovers.push((origin.clone(), note));
        }
        self.set(origin, Some(report.status));
    }

    /// This node no longer hosts the router of `origin`: its entry is removed (the write
    /// of an empty list drops what this field manager owned).
    fn forget(&mut self, origin: &Origin) {
        self.last.remove(&origin.key());
        self.set(origin, None);
    }

    /// Creates the objects to publish, then writes every entry not yet written, taking in
    /// the updates that arrive meanwhile. Returns whether nothing is left pending.
    async fn flush(&mut self, updates: &mut mpsc::UnboundedReceiver<Update>) -> bool {
        let creates: Vec<Key> = self.publish.keys().cloned().collect();
        for key in creates {
            if self.stored(&key).is_some() {
                self.publish.remove(&key);
                continue;
            }
            self.throttle.acquire().await;
            if let Some((origin, id)) = self.publish.get(&key).cloned()
                && self.create(&origin, &id).await
            {
                self.publish.remove(&key);
            }
        }
        let mut pending: Vec<Key> =
            self.entries.iter().filter(|(_, e)| !e.written).map(|(k, _)| k.clone()).collect();
        pending.sort();
        // Each node starts the round at its own place: when several nodes write the same
        // routers at once (a failover), they write each router at different times, so the
        // later write sees the earlier one and its summary is right.
        if !pending.is_empty() {
            let start = (stable_hash(&self.node) % pending.len() as u64) as usize;
            pending.rotate_left(start);
        }
        for key in pending {
            while let Ok(update) = updates.try_recv() {
                self.record(update);
            }
            let Some(entry) = self.entries.get(&key) else { continue };
            if entry.written {
                continue;
            }
            if self.on_server(&key) == entry.desired {
                // Already there (written before a restart, or by the previous write).
                self.written(&key);
                continue;
            }
            self.throttle.acquire().await;
            let Some(entry) = self.entries.get(&key) else { continue };
            let desired = entry.desired.clone();
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &key.0, &self.resource);
            // The summary goes in the same write: when the other nodes' entries are already
            // seen (they changed earlier), the aggregator has nothing left to write for it.
            let seen = summary(&self.with_entry(&key, desired.as_ref()));
            let mut result = self.write(&api, &key.1, desired.as_ref(), &seen).await;
            // The answer holds every node's entry as it is now: if another node wrote since
            // the watch showed it, the summary just written is behind, and one more write
            // puts it right at once (rather than the aggregator, and perhaps its stand-ins,
            // seconds later).
            if let Ok(Ok(object)) = &result {
                let right = summary(&nodes_of(object));
                if right != summary_of(object) {
                    self.throttle.acquire().await;
                    result = self.write(&api, &key.1, desired.as_ref(), &right).await;
                }
            }
            match result {
                Ok(Ok(object)) => {
                    debug!(harouter = %key.1, namespace = %key.0, node = %self.node, "status written");
                    let removed = self.entries.get(&key).is_some_and(|e| e.desired.is_none());
                    if removed && gc::unused(&object) {
                        self.throttle.acquire().await;
                        gc::delete(&api, &object, &self.observer).await;
                    }
                    self.written(&key);
                }
                // The object is gone: nothing left to write.
                Ok(Err(kube::Error::Api(e))) if e.code == 404 => {
                    self.entries.remove(&key);
                }
                Ok(Err(e)) => {
                    debug!(harouter = %key.1, namespace = %key.0, node = %self.node, error = %e, "status write failed; will retry");
                }
                Err(_) => {
                    debug!(harouter = %key.1, namespace = %key.0, node = %self.node, "status write timed out; will retry");
                }
            }
        }
        self.announce();
        self.publish.is_empty() && self.entries.values().all(|e| e.written)
    }

    /// Applies this node's entry (none: removes it) and the object's summary.
    async fn write(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        entry: Option<&NodeStatus>,
        (primary, roles): &(String, String),
    ) -> Result<Result<DynamicObject, kube::Error>, tokio::time::error::Elapsed> {
        let nodes: Vec<&NodeStatus> = entry.into_iter().collect();
        let patch = json!({
            "apiVersion": HARouter::api_version(&()),
            "kind": HARouter::kind(&()),
            "status": { "nodes": nodes, "primary": primary, "roles": roles },
        });
        let patch = Patch::Apply(&patch);
        let write = api.patch_status(name, &self.params, &patch);
        let result = tokio::time::timeout(WRITE_TIMEOUT, write).await;
        self.observer.kubernetes_write("status", matches!(result, Ok(Ok(_))));
        result
    }

    /// Sends the `RoleChanged` Events of the takeovers recorded since the last flush: one per
    /// router, or, past [`TAKEOVER_EVENTS`], one on this node for all of them. Every Event is
    /// a write: a mass failover of 1,000 routers is one thing that happened, and each
    /// router's status already carries its transition time.
    fn announce(&mut self) {
        let takeovers = std::mem::take(&mut self.takeovers);
        if takeovers.len() <= TAKEOVER_EVENTS {
            for (origin, note) in takeovers {
                self.event(origin.object_ref(), EventType::Normal, "RoleChanged", &note);
            }
            return;
        }
        let first: Vec<String> = takeovers
            .iter()
            .take(TAKEOVER_EVENTS)
            .map(|(o, _)| format!("{}/{}", o.namespace, o.name))
            .collect();
        let note = format!(
            "{}: took over {} routers ({}, ...); each HARouter's status has its transition time",
            self.node,
            takeovers.len(),
            first.join(", ")
        );
        let node = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(self.node.clone()),
            ..ObjectReference::default()
        };
        self.event(node, EventType::Normal, "RoleChanged", &note);
    }

    /// Creates the object of a discovered router: its id and the label, nothing a user could
    /// have set. Returns whether it exists now.
    async fn create(&self, origin: &Origin, id: &str) -> bool {
        let object = json!({
            "apiVersion": HARouter::api_version(&()),
            "kind": HARouter::kind(&()),
            "metadata": {
                "name": origin.name,
                "namespace": origin.namespace,
                "labels": { DISCOVERED_LABEL: "true" },
            },
            "spec": { "routerId": id },
        });
        let object: DynamicObject = match serde_json::from_value(object) {
            Ok(object) => object,
            Err(e) => {
                warn!(router = %id, error = %e, "cannot build the object of a discovered router");
                return false;
            }
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &origin.namespace, &self.resource);
        let params = PostParams::default();
        let create = api.create(&params, &object);
        let result = tokio::time::timeout(WRITE_TIMEOUT, create).await;
        self.observer.kubernetes_write("create", matches!(result, Ok(Ok(_))));
        match result {
            Ok(Ok(_)) => {
                info!(router = %id, harouter = %origin.name, namespace = %origin.namespace, node = %self.node, "published the discovered router");
                true
            }
            // Another node's agent was first.
            Ok(Err(kube::Error::Api(e))) if e.code == 409 => true,
            Ok(Err(e)) => {
                warn!(router = %id, harouter = %origin.name, namespace = %origin.namespace, error = %e, "cannot publish the discovered router; will retry");
                false
            }
            Err(_) => false,
        }
    }

    fn written(&mut self, key: &Key) {
        match self.entries.get_mut(key) {
            Some(e) if e.desired.is_none() => {
                self.entries.remove(key);
            }
            Some(e) => e.written = true,
            None => {}
        }
    }

    /// This node's entry as the API server last sent it (through the watch).
    fn on_server(&self, key: &Key) -> Option<NodeStatus> {
        let object = self.stored(key)?;
        let entries = object.data["status"]["nodes"].as_array()?;
        let entry = entries.iter().find(|e| e["node"] == self.node.as_str())?;
        serde_json::from_value(entry.clone()).ok()
    }

    /// The object's entries as the API server holds them, with this node's replaced by
    /// `entry` (or removed).
    fn with_entry(&self, key: &Key, entry: Option<&NodeStatus>) -> Vec<NodeStatus> {
        let mut nodes = self.stored(key).map(|o| nodes_of(&o)).unwrap_or_default();
        nodes.retain(|e| e.node != self.node);
        nodes.extend(entry.cloned());
        nodes
    }

    fn stored(&self, (namespace, name): &Key) -> Option<Arc<DynamicObject>> {
        self.store.get(&ObjectRef::new_with(name, self.resource.clone()).within(namespace))
    }

    /// The entry as last recorded, or as the API server holds it (after a restart), so
    /// transition times carry over.
    fn current(&self, origin: &Origin) -> Option<NodeStatus> {
        match self.entries.get(&origin.key()) {
            Some(entry) => entry.desired.clone(),
            None => self.on_server(&origin.key()),
        }
    }

    fn set(&mut self, origin: &Origin, desired: Option<NodeStatus>) {
        let entry = self.entries.entry(origin.key()).or_insert_with(|| Entry {
            origin: origin.clone(),
            desired: None,
            written: false,
        });
        if entry.desired != desired || entry.origin != *origin {
            entry.desired = desired;
            entry.origin = origin.clone();
            entry.written = false;
        }
        if !entry.written {
            self.backlog.store(true, Ordering::Relaxed);
        }
    }

    /// Publishes an Event without waiting: Events are best effort and must never hold up
    /// enforcement while the API server is slow or away.
    fn event(&self, reference: ObjectReference, type_: EventType, reason: &str, note: &str) {
        let (kind, name) = (reference.kind.as_deref(), reference.name.as_deref());
        info!(kind, name, namespace = reference.namespace.as_deref(), node = %self.node, reason, note, "event");
        let recorder = self.recorder.clone();
        let throttle = self.throttle.clone();
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        tokio::spawn(async move {
            throttle.acquire().await;
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(error = %e, "cannot publish event");
            }
        });
    }
}

/// The object's node entries.
fn nodes_of(object: &DynamicObject) -> Vec<NodeStatus> {
    serde_json::from_value(object.data["status"]["nodes"].clone()).unwrap_or_default()
}

/// The summary the object holds.
fn summary_of(object: &DynamicObject) -> (String, String) {
    let text = |field: &str| object.data["status"][field].as_str().unwrap_or_default().to_string();
    (text("primary"), text("roles"))
}

/// FNV-1a: the same for a name in every agent and every run (std's hasher is seeded).
fn stable_hash(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// RFC 3339 with second precision, as Kubernetes writes times.
pub(super) fn now() -> String {
    Timestamp::from_second(Timestamp::now().as_second()).map(|t| t.to_string()).unwrap_or_default()
}
