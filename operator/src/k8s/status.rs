//! This node's entry in each `HARouter`'s status, and the Events on transitions and
//! failures.
//!
//! The entry is written by server-side apply to the status subresource under the field
//! manager `hagw-agent/<node>`, containing only this node's element of the `nodes` map-list:
//! the API server merges it with the other nodes' entries, so concurrent agents never lose
//! each other's writes and need no read-modify-write. Writes that fail (API server away)
//! stay pending and are retried on every tick, so status catches up once it is back; the
//! entry always carries the latest state, never a backlog.

use std::collections::HashMap;
use std::time::Duration;

use hagw_core::Role;
use hagw_core::supervisor::{PassOutcome, RouterEvent};
use hagw_core::{Action, Wait};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::crd::{Condition, HARouter, NodeStatus};
use super::source::Origin;

type Key = (String, String);

/// How often pending writes are retried.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Bound on one write, so an unreachable API server delays status, never the next write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the agent tells the status writer.
#[derive(Debug)]
pub enum Update {
    /// A reconcile pass of the router from this object.
    Pass(Origin, Box<RouterEvent>),
    /// The object lists this node but cannot be enforced.
    Rejected(Origin, String),
    /// This node no longer hosts the object's router.
    Forget(Origin),
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
}

impl StatusWriter {
    pub fn new(client: Client, node: &str) -> StatusWriter {
        let reporter = Reporter { controller: "hagw-agent".into(), instance: Some(node.into()) };
        StatusWriter {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            resource: ApiResource::erase::<HARouter>(&()),
            node: node.to_string(),
            params: PatchParams::apply(&format!("hagw-agent/{node}")).force(),
            entries: HashMap::new(),
        }
    }

    /// Runs the writer until the agent drops its sender: updates are recorded at once and
    /// written right after, and failed writes are retried every second.
    pub async fn run(mut self, mut updates: mpsc::UnboundedReceiver<Update>) {
        let mut retry = tokio::time::interval(RETRY_EVERY);
        loop {
            tokio::select! {
                update = updates.recv() => match update {
                    Some(Update::Pass(origin, event)) => self.pass(&origin, &event),
                    Some(Update::Rejected(origin, error)) => self.rejected(&origin, &error),
                    Some(Update::Forget(origin)) => self.forget(&origin),
                    None => return,
                },
                _ = retry.tick() => {}
            }
            self.flush().await;
        }
    }

    /// Records a pass of the router from `origin`; emits Events for a role transition and
    /// for the first failure (and the recovery) of a run of failures.
    fn pass(&mut self, origin: &Origin, event: &RouterEvent) {
        let previous = self.current(origin);
        let now = now();
        let role = event.role.as_str().to_string();
        let held = match &event.outcome {
            PassOutcome::Converged { .. } => event.held,
            PassOutcome::Failed { .. } => previous.as_ref().is_some_and(|p| p.held),
        };
        let (ready, degraded, last_error) = match &event.outcome {
            PassOutcome::Converged { wait, degraded, .. } => {
                let ready = match wait {
                    Some(Wait::DeviceMissing) => ("False", "DeviceMissing", describe_wait(wait)),
                    Some(Wait::L2NotWired) => ("False", "L2NotWired", describe_wait(wait)),
                    _ => ("True", "Converged", String::new()),
                };
                if degraded.is_empty() {
                    (ready, ("False", "Converged", String::new()), None)
                } else {
                    // Forwarding, but not as configured: Ready stays as the wait says, the
                    // failed settings are named in Degraded and count as the last error.
                    let message = degraded
                        .iter()
                        .map(|(_, error)| error.as_str())
                        .collect::<Vec<_>>()
                        .join("; ");
                    (ready, ("True", "SettingsFailed", message.clone()), Some(message))
                }
            }
            PassOutcome::Failed { error, applied_fail_safe, .. } => {
                let mut message = error.clone();
                if let Some(guard) = applied_fail_safe {
                    message.push_str(&format!("; fail-safe applied: {guard}"));
                }
                let failed = ("True", "ReconcileFailed", message.clone());
                (("False", "ReconcileFailed", message.clone()), failed, Some(message))
            }
        };
        let was_failing = previous.as_ref().is_some_and(|p| p.last_error.is_some());
        match (&last_error, was_failing) {
            (Some(error), false) => self.event(origin, EventType::Warning, degraded.1, error),
            (None, true) => {
                self.event(origin, EventType::Normal, "Recovered", "reconcile succeeds again")
            }
            _ => {}
        }
        if let Some(from) = event.transition_from {
            let note =
                format!("{}: {} -> {}{}", self.node, from.as_str(), role, steps(&event.outcome));
            self.event(origin, EventType::Normal, "RoleChanged", &note);
        }
        let transition = match &previous {
            Some(p) if p.role == role => p.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
        let conditions = vec![
            condition(&previous, "Ready", ready, origin, &now),
            condition(&previous, "Degraded", degraded, origin, &now),
        ];
        let status = NodeStatus {
            node: self.node.clone(),
            role,
            held,
            last_transition_time: transition,
            last_error,
            observed_generation: origin.generation,
            conditions,
        };
        self.set(origin, Some(status));
    }

    /// Records an object listing this node that the agent cannot enforce.
    fn rejected(&mut self, origin: &Origin, error: &str) {
        let previous = self.current(origin);
        if previous.as_ref().and_then(|p| p.last_error.as_deref()) != Some(error) {
            self.event(origin, EventType::Warning, "InvalidSpec", error);
        }
        let now = now();
        let failed = ("False", "InvalidSpec", error.to_string());
        let conditions = vec![
            condition(&previous, "Ready", failed.clone(), origin, &now),
            condition(
                &previous,
                "Degraded",
                ("True", "InvalidSpec", error.to_string()),
                origin,
                &now,
            ),
        ];
        let status = NodeStatus {
            node: self.node.clone(),
            role: Role::Unknown.as_str().into(),
            held: false,
            last_transition_time: previous.and_then(|p| p.last_transition_time),
            last_error: Some(error.to_string()),
            observed_generation: origin.generation,
            conditions,
        };
        self.set(origin, Some(status));
    }

    /// This node no longer hosts the router of `origin`: its entry is removed (the write
    /// of an empty list drops what this field manager owned).
    fn forget(&mut self, origin: &Origin) {
        self.set(origin, None);
    }

    /// Writes every entry not yet written; failures stay pending for the next call.
    async fn flush(&mut self) {
        let pending: Vec<Key> =
            self.entries.iter().filter(|(_, e)| !e.written).map(|(k, _)| k.clone()).collect();
        for key in pending {
            let Some(entry) = self.entries.get(&key) else { continue };
            let nodes: Vec<&NodeStatus> = entry.desired.iter().collect();
            let patch = json!({
                "apiVersion": HARouter::api_version(&()),
                "kind": HARouter::kind(&()),
                "status": { "nodes": nodes },
            });
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &key.0, &self.resource);
            let patch = Patch::Apply(&patch);
            let write = api.patch_status(&key.1, &self.params, &patch);
            match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(_)) => {
                    debug!(harouter = %key.1, namespace = %key.0, node = %self.node, "status written");
                    if entry.desired.is_none() {
                        self.entries.remove(&key);
                    } else if let Some(e) = self.entries.get_mut(&key) {
                        e.written = true;
                    }
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
    }

    fn current(&self, origin: &Origin) -> Option<NodeStatus> {
        self.entries.get(&origin.key()).and_then(|e| e.desired.clone())
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
    }

    /// Publishes an Event without waiting: Events are best effort and must never hold up
    /// enforcement while the API server is slow or away.
    fn event(&self, origin: &Origin, type_: EventType, reason: &str, note: &str) {
        info!(harouter = %origin.name, namespace = %origin.namespace, node = %self.node, reason, note, "event");
        let recorder = self.recorder.clone();
        let reference = origin.object_ref();
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(error = %e, "cannot publish event");
            }
        });
    }
}

/// A condition that keeps its transition time while its status stays the same.
fn condition(
    previous: &Option<NodeStatus>,
    type_: &str,
    (status, reason, message): (&str, &str, String),
    origin: &Origin,
    now: &str,
) -> Condition {
    let before = previous.as_ref().and_then(|p| p.conditions.iter().find(|c| c.type_ == type_));
    let last_transition_time = match before {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.to_string(),
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time,
        observed_generation: origin.generation,
    }
}

fn describe_wait(wait: &Option<Wait>) -> String {
    match wait {
        Some(Wait::DeviceMissing) => "the gateway device does not exist yet".into(),
        Some(Wait::L2NotWired) => "waiting for the L2 agent to wire the port".into(),
        Some(Wait::SilenceSettling { .. }) => "silence settling".into(),
        None => String::new(),
    }
}

fn steps(outcome: &PassOutcome) -> String {
    match outcome {
        PassOutcome::Converged { applied, .. } if !applied.is_empty() => {
            let steps: Vec<String> = applied.iter().map(Action::to_string).collect();
            format!(" ({})", steps.join(", "))
        }
        _ => String::new(),
    }
}

/// RFC 3339 with second precision, as Kubernetes writes times.
fn now() -> String {
    Timestamp::from_second(Timestamp::now().as_second()).map(|t| t.to_string()).unwrap_or_default()
}
