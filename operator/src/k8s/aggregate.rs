//! The object-wide conditions of an `HARouter`, aggregated from its nodes' entries:
//! `Ready` (exactly one primary, every node converged), `Degraded` (a node reports an error)
//! and `SplitBrain` (more than one node primary, or none while a node's keepalived holds the
//! primary VIP), and the one-line role summary `kubectl get` shows.
//!
//! [`conditions`] is the pure rule. [`Aggregator`] runs it in every agent on the objects
//! its node has an entry in, once the entries have been still for a settle time (a clean
//! failover passes through "no primary" or, for an instant, "two primaries": neither is
//! reported). It writes only when the result differs from what the object holds, under one
//! shared field manager. The node first in name order writes at once; the others only if
//! the object is still not right several settle times later (that node's agent may be
//! gone), so one write per change is the rule, not one per node. The summary is also written
//! by each node with its own entry (see `status`), so after a clean failover the aggregator
//! usually finds nothing to write. Every hosting agent exports
//! the split-brain state as a metric; the writer of a split-brain transition records an
//! Event.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::crd::{Condition, HARouter, NodeStatus};
use super::throttle::Throttle;
use crate::observe::Observer;

/// The conditions for `nodes`, keeping each condition's transition time from `previous`
/// while its status stays the same.
pub fn conditions(
    nodes: &[NodeStatus],
    previous: &[Condition],
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    let mut sorted: Vec<&NodeStatus> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.node.cmp(&b.node));
    let nodes = sorted;
    let primaries: Vec<&str> =
        nodes.iter().filter(|n| n.role == "primary").map(|n| n.node.as_str()).collect();
    let not_ready: Vec<String> = nodes
        .iter()
        .filter_map(|n| {
            let ready = n.conditions.iter().find(|c| c.type_ == "Ready")?;
            (ready.status != "True").then(|| format!("{}: {}", n.node, ready.reason))
        })
        .collect();
    let errors: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.last_error.as_ref().map(|e| format!("{}: {e}", n.node)))
        .collect();
    // keepalived elected a master (the VIP is there, so no other node takes over) while no
    // node acts as primary: the router forwards nowhere, and nothing in keepalived says so.
    let vip_on: Vec<&str> = nodes
        .iter()
        .filter(|n| n.role != "primary" && n.vip_present == Some(true))
        .map(|n| n.node.as_str())
        .collect();
    let split = if primaries.len() > 1 {
        ("True", "MultiplePrimaries", format!("primary on {}", primaries.join(", ")))
    } else if primaries.is_empty() && !vip_on.is_empty() {
        let message =
            format!("no node is primary while the primary VIP is on {}", vip_on.join(", "));
        ("True", "VipWithoutPrimary", message)
    } else {
        ("False", "AtMostOnePrimary", String::new())
    };
    let ready = if nodes.is_empty() {
        ("False", "NoNodes", "no node reports this router".to_string())
    } else if split.0 == "True" {
        ("False", "SplitBrain", split.2.clone())
    } else if primaries.is_empty() {
        let all: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
        ("False", "NoPrimary", format!("no node is primary ({})", all.join(", ")))
    } else if !not_ready.is_empty() {
        ("False", "NodesNotReady", not_ready.join("; "))
    } else {
        ("True", "OnePrimary", String::new())
    };
    // Settings a node's read-only /proc/sys refuses are expected there (the chart's default
    // pod) and no error: the reason says so, the nodes' entries name them, and the message
    // (the ERRORS column) stays for errors.
    let read_only = nodes.iter().any(|n| {
        n.conditions.iter().any(|c| c.type_ == "Degraded" && c.reason == super::entry::READ_ONLY)
    });
    let degraded = if !errors.is_empty() {
        ("True", "NodeErrors", errors.join("; "))
    } else if read_only {
        ("False", super::entry::READ_ONLY, String::new())
    } else {
        ("False", "AsConfigured", String::new())
    };
    [("Ready", ready), ("Degraded", degraded), ("SplitBrain", split)]
        .into_iter()
        .map(|(type_, (status, reason, message))| {
            let message = message.chars().take(1000).collect();
            Condition::keeping_time(previous, type_, (status, reason, message), generation, now)
        })
        .collect()
}

/// The one-line summary of the nodes' roles for `kubectl get` (a printer column shows one
/// value per object, so the per-node entries cannot be listed there directly): the primary
/// nodes, and every node as `node=role`, `(held)` when its port is kept silent.
pub fn summary(nodes: &[NodeStatus]) -> (String, String) {
    let mut sorted: Vec<&NodeStatus> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.node.cmp(&b.node));
    let primary: Vec<&str> =
        sorted.iter().filter(|n| n.role == "primary").map(|n| n.node.as_str()).collect();
    let roles: Vec<String> = sorted
        .iter()
        .map(|n| format!("{}={}{}", n.node, n.role, if n.held { "(held)" } else { "" }))
        .collect();
    (primary.join(","), roles.join(","))
}

/// Whether `conditions` say split brain.
pub fn split_brain(conditions: &[Condition]) -> bool {
    conditions.iter().any(|c| c.type_ == "SplitBrain" && c.status == "True")
}

/// Whether `a` and `b` say the same, transition times aside.
fn same(a: &[Condition], b: &[Condition]) -> bool {
    let key = |c: &Condition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    };
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort();
    b.sort();
    a == b
}

/// How often the objects are looked at.
const TICK: Duration = Duration::from_millis(500);
/// How many settle times a node other than the first waits before it writes.
const STANDIN_FACTOR: u32 = 4;

/// What the aggregator remembers of one object.
struct Seen {
    /// The generation and node entries, serialized, as last seen.
    nodes: String,
    since: Instant,
    /// Whether this agent wrote what they aggregate to.
    written: bool,
    /// The object's `resourceVersion` when it was last found needing nothing: until the
    /// object changes it is not parsed again (1,000 objects every tick cost more than the
    /// writes they lead to).
    checked: Option<String>,
}

impl Seen {
    fn new(nodes: &str, since: Instant) -> Seen {
        Seen { nodes: nodes.to_string(), since, written: false, checked: None }
    }
}

pub struct Aggregator {
    client: Client,
    resource: ApiResource,
    store: Store<DynamicObject>,
    node: String,
    throttle: Throttle,
    observer: Observer,
    recorder: Recorder,
    /// How long the entries must be still before they are aggregated.
    settle: Duration,
    seen: HashMap<(String, String), Seen>,
    /// Set by the status writer while this node's entries are not all written.
    backlog: Arc<AtomicBool>,
    /// Objects with a split-brain series.
    exported: HashSet<(String, String)>,
}

impl Aggregator {
    pub fn new(
        client: Client,
        store: Store<DynamicObject>,
        node: &str,
        throttle: Throttle,
        observer: Observer,
        settle: Duration,
        backlog: Arc<AtomicBool>,
    ) -> Aggregator {
        let reporter = Reporter { controller: "hagw-agent".into(), instance: Some(node.into()) };
        Aggregator {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            resource: ApiResource::erase::<HARouter>(&()),
            store,
            node: node.to_string(),
            throttle,
            observer,
            settle,
            seen: HashMap::new(),
            backlog,
            exported: HashSet::new(),
        }
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            self.pass().await;
        }
    }

    async fn pass(&mut self) {
        if self.backlog.load(Ordering::Relaxed) {
            // This node's own entries are not all written yet: what the objects show of it is
            // behind, and a failover half-reported would look like split brain.
            return;
        }
        let now = Instant::now();
        let objects = self.store.state();
        let mut present = HashSet::with_capacity(objects.len());
        for object in objects {
            let key = (object.namespace().unwrap_or_default(), object.name_any());
            let version = object.resource_version();
            if version.is_some() && self.seen.get(&key).is_some_and(|s| s.checked == version) {
                present.insert(key);
                continue;
            }
            let nodes: Vec<NodeStatus> =
                serde_json::from_value(object.data["status"]["nodes"].clone()).unwrap_or_default();
            let Some(rank) = rank(&nodes, &self.node) else { continue };
            present.insert(key.clone());
            let generation = object.meta().generation;
            let text =
                format!("{generation:?} {}", serde_json::to_string(&nodes).unwrap_or_default());
            let seen = self.seen.entry(key.clone()).or_insert_with(|| Seen::new(&text, now));
            if seen.nodes != text {
                *seen = Seen::new(&text, now);
            }
            if seen.written {
                seen.checked = version;
                continue;
            }
            if now.duration_since(seen.since) < self.settle {
                continue;
            }
            let previous: Vec<Condition> =
                serde_json::from_value(object.data["status"]["conditions"].clone())
                    .unwrap_or_default();
            let computed =
                conditions(&nodes, &previous, object.meta().generation, &super::status::now());
            let (primary, roles) = summary(&nodes);
            self.observer.split_brain(&key.0, &key.1, Some(split_brain(&computed)));
            self.exported.insert(key.clone());
            let wait = self.settle * (1 + STANDIN_FACTOR * rank);
            let status = &object.data["status"];
            let unchanged = same(&computed, &previous)
                && status["primary"].as_str().unwrap_or_default() == primary
                && status["roles"].as_str().unwrap_or_default() == roles;
            if unchanged {
                seen.checked = version;
                continue;
            }
            if now.duration_since(seen.since) < wait {
                continue;
            }
            let patch = json!({"conditions": computed, "primary": primary, "roles": roles});
            if self.write(&key, &patch, &computed, split_brain(&previous)).await
                && let Some(seen) = self.seen.get_mut(&key)
            {
                // Until the entries change, this is right, whatever the watch shows meanwhile.
                seen.written = true;
            }
        }
        self.seen.retain(|key, _| present.contains(key));
        for key in self.exported.extract_if(|key| !present.contains(key)) {
            self.observer.split_brain(&key.0, &key.1, None);
        }
    }

    async fn write(
        &self,
        key: &(String, String),
        status: &serde_json::Value,
        computed: &[Condition],
        was_split: bool,
    ) -> bool {
        self.throttle.acquire().await;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &key.0, &self.resource);
        let patch = json!({
            "apiVersion": HARouter::api_version(&()),
            "kind": HARouter::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply("hagw-agent/conditions").force();
        let result = api.patch_status(&key.1, &params, &Patch::Apply(&patch)).await;
        self.observer.kubernetes_write("conditions", result.is_ok());
        let ok = result.is_ok();
        match result {
            Ok(object) => {
                debug!(harouter = %key.1, namespace = %key.0, node = %self.node, "conditions written");
                let split = computed.iter().find(|c| c.type_ == "SplitBrain");
                match split {
                    Some(c) if c.status == "True" && !was_split => {
                        warn!(harouter = %key.1, namespace = %key.0, message = %c.message, "split brain");
                        self.event(&object, EventType::Warning, "SplitBrain", &c.message).await;
                    }
                    Some(c) if c.status != "True" && was_split => {
                        info!(harouter = %key.1, namespace = %key.0, "split brain resolved");
                        self.event(
                            &object,
                            EventType::Normal,
                            "SplitBrainResolved",
                            "at most one primary again",
                        )
                        .await;
                    }
                    _ => {}
                }
            }
            Err(e) => {
                debug!(harouter = %key.1, namespace = %key.0, error = %e, "conditions write failed; will retry")
            }
        }
        ok
    }

    async fn event(&self, object: &DynamicObject, type_: EventType, reason: &str, note: &str) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Aggregate".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&self.resource)).await {
            warn!(error = %e, "cannot publish event");
        }
    }
}

/// This node's place among the object's nodes in name order; `None` if it has no entry.
fn rank(nodes: &[NodeStatus], node: &str) -> Option<u32> {
    let mut names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    names.sort();
    names.iter().position(|n| *n == node).map(|i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &str, role: &str, ready: &str, error: Option<&str>) -> NodeStatus {
        NodeStatus {
            node: node.into(),
            role: role.into(),
            held: role != "primary",
            vip_present: None,
            strategy: None,
            last_transition_time: None,
            last_error: error.map(str::to_string),
            observed_generation: None,
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: ready.into(),
                reason: if ready == "True" { "Converged".into() } else { "DeviceMissing".into() },
                message: String::new(),
                last_transition_time: "t0".into(),
                observed_generation: None,
            }],
        }
    }

    fn get<'a>(conditions: &'a [Condition], type_: &str) -> (&'a str, &'a str) {
        let c = conditions.iter().find(|c| c.type_ == type_).expect(type_);
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn one_primary_and_converged_standbys_is_ready() {
        let nodes = [entry("n1", "primary", "True", None), entry("n2", "standby", "True", None)];
        let c = conditions(&nodes, &[], Some(3), "t1");
        assert_eq!(get(&c, "Ready"), ("True", "OnePrimary"));
        assert_eq!(get(&c, "Degraded"), ("False", "AsConfigured"));
        assert_eq!(get(&c, "SplitBrain"), ("False", "AtMostOnePrimary"));
        assert!(
            c.iter().all(|c| c.observed_generation == Some(3) && c.last_transition_time == "t1")
        );
        assert!(!split_brain(&c));
    }

    #[test]
    fn two_primaries_are_split_brain_and_not_ready() {
        let nodes = [entry("n2", "primary", "True", None), entry("n1", "primary", "True", None)];
        let c = conditions(&nodes, &[], None, "t1");
        assert_eq!(get(&c, "SplitBrain"), ("True", "MultiplePrimaries"));
        assert_eq!(get(&c, "Ready"), ("False", "SplitBrain"));
        assert!(c.iter().any(|c| c.message == "primary on n1, n2"), "{c:?}");
        assert!(split_brain(&c));
    }

    #[test]
    fn no_primary_while_a_node_holds_the_vip_is_split_brain() {
        let mut holder = entry("n2", "standby", "True", None);
        holder.vip_present = Some(true);
        let nodes = [entry("n1", "standby", "True", None), holder.clone()];
        let c = conditions(&nodes, &[], None, "t");
        assert_eq!(get(&c, "SplitBrain"), ("True", "VipWithoutPrimary"));
        assert_eq!(get(&c, "Ready"), ("False", "SplitBrain"));
        assert!(c.iter().any(|c| c.message.ends_with("the primary VIP is on n2")), "{c:?}");
        // With a primary elsewhere it is that node's keepalived that counts: not split brain.
        let c = conditions(&[entry("n1", "primary", "True", None), holder], &[], None, "t");
        assert_eq!(get(&c, "SplitBrain"), ("False", "AtMostOnePrimary"));
    }

    #[test]
    fn no_primary_no_nodes_an_unready_node_and_errors_are_named() {
        let c = conditions(&[entry("n1", "standby", "True", None)], &[], None, "t");
        assert_eq!(get(&c, "Ready"), ("False", "NoPrimary"));
        assert_eq!(get(&conditions(&[], &[], None, "t"), "Ready"), ("False", "NoNodes"));
        let nodes =
            [entry("n1", "primary", "True", None), entry("n2", "unknown", "False", Some("boom"))];
        let c = conditions(&nodes, &[], None, "t");
        assert_eq!(get(&c, "Ready"), ("False", "NodesNotReady"));
        assert_eq!(get(&c, "Degraded"), ("True", "NodeErrors"));
        assert!(c.iter().any(|c| c.message == "n2: boom"), "{c:?}");
    }

    #[test]
    fn a_read_only_proc_sys_is_named_but_not_degraded() {
        let mut primary = entry("n1", "primary", "True", None);
        primary.conditions.push(Condition {
            type_: "Degraded".into(),
            status: "True".into(),
            reason: "SysctlsReadOnly".into(),
            message: "/proc/sys is read-only here, not applied: set ipv6 forwarding = 1".into(),
            last_transition_time: "t0".into(),
            observed_generation: None,
        });
        let c = conditions(&[primary, entry("n2", "standby", "True", None)], &[], None, "t");
        assert_eq!(get(&c, "Degraded"), ("False", "SysctlsReadOnly"));
        assert_eq!(get(&c, "Ready"), ("True", "OnePrimary"));
        let degraded = c.iter().find(|c| c.type_ == "Degraded").expect("Degraded");
        assert_eq!(degraded.message, "", "the ERRORS column is for errors");
    }

    #[test]
    fn transition_times_stay_while_the_status_stays() {
        let nodes = [entry("n1", "primary", "True", None)];
        let first = conditions(&nodes, &[], None, "t1");
        let again = conditions(&nodes, &first, None, "t2");
        assert_eq!(first, again);
        assert!(same(&first, &again));
        let split = conditions(
            &[entry("n1", "primary", "True", None), entry("n2", "primary", "True", None)],
            &first,
            None,
            "t3",
        );
        assert!(!same(&first, &split));
        let ready = split.iter().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!(ready.last_transition_time, "t3");
        let degraded = split.iter().find(|c| c.type_ == "Degraded").expect("Degraded");
        assert_eq!(degraded.last_transition_time, "t1");
    }

    #[test]
    fn the_summary_lists_primaries_and_every_node_in_name_order() {
        let nodes = [entry("n2", "primary", "True", None), entry("n1", "standby", "True", None)];
        assert_eq!(summary(&nodes), ("n2".into(), "n1=standby(held),n2=primary".into()));
        let split = [entry("n2", "primary", "True", None), entry("n1", "primary", "True", None)];
        assert_eq!(summary(&split).0, "n1,n2");
        assert_eq!(summary(&[]), (String::new(), String::new()));
    }

    #[test]
    fn the_first_node_in_name_order_writes_first() {
        let nodes = [entry("n2", "primary", "True", None), entry("n1", "standby", "True", None)];
        assert_eq!(rank(&nodes, "n1"), Some(0));
        assert_eq!(rank(&nodes, "n2"), Some(1));
        assert_eq!(rank(&nodes, "n3"), None);
    }
}
