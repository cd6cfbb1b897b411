//! The `HARouter` custom resource: the standalone [`RouterSpec`] plus the nodes hosting the
//! router, and a status with one entry per node.
//!
//! The spec embeds the very type `routers.yaml` holds, so both modes validate and reconcile
//! identically. The status is a map-list keyed by `node`: every agent server-side-applies
//! only its own entry under its own field manager, so agents never overwrite each other and
//! no single writer (no leader election) is needed.

use hagw_core::RouterSpec;
use hagw_core::model::{AnnounceSchedule, L2BackendSpec, Strategy};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// An HA router whose gateway port hagw keeps silent on its standby nodes.
// Each `printcolumn(...)` repeats `type_`/`priority`, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "hagw.dev",
    version = "v1beta1",
    kind = "HARouter",
    doc = "An HA router whose gateway port hagw keeps silent on its standby nodes.",
    plural = "harouters",
    shortname = "har",
    category = "hagw",
    namespaced,
    status = "HARouterStatus",
    printcolumn(
        name = "Primary",
        type_ = "string",
        json_path = ".status.primary",
        description = "Nodes reporting the primary role (two or more: split brain)"
    ),
    printcolumn(
        name = "Roles",
        type_ = "string",
        json_path = ".status.roles",
        description = "Every node's role; (held): its gateway port is kept silent"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "One primary and every node converged"
    ),
    printcolumn(
        name = "SplitBrain",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="SplitBrain")].status"#,
        description = "More than one node reports the primary role",
        priority = 1
    ),
    printcolumn(
        name = "Strategy",
        type_ = "string",
        json_path = ".status.nodes[0].strategy",
        description = "The strategy the nodes enforce (discovered, hand-written or overridden)",
        priority = 1
    ),
    printcolumn(
        name = "Errors",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Degraded")].message"#,
        description = "The nodes' last errors",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HARouterSpec {
    /// Names of the Kubernetes nodes that host this router (the L3 agents keepalived runs
    /// it on). Each node's hagw agent manages the router only if its node is listed.
    /// Required with `router`; a discovered router is hosted by the nodes that discover it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1))]
    pub nodes: Vec<String>,
    /// The router, exactly as in the standalone `routers.yaml` (a hand-written router, which
    /// wins over a discovered one with the same id). Absent: the object is the view of the
    /// discovered router `routerId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "router_schema")]
    pub router: Option<RouterSpec>,
    /// The id of the discovered (Neutron) router this object shows and overrides; used when
    /// `router` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub router_id: Option<String>,
    /// Settings replacing what discovery found for `routerId`, field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Overrides>,
}

/// What a user may set on a discovered router; every field absent keeps the discovered value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Overrides {
    /// How a standby is kept from transmitting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// How the port is attached at layer 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "backend_schema")]
    pub backend: Option<L2BackendSpec>,
    /// Gratuitous ARP / unsolicited NA schedule after a takeover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceSchedule>,
    /// How long (ms) a standby must have been silent before a hold on it may be lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence_settle_ms: Option<u64>,
}

impl Overrides {
    /// `self` with every field `later` sets replaced.
    pub fn then(mut self, later: &Overrides) -> Overrides {
        if later.strategy.is_some() {
            self.strategy = later.strategy;
        }
        if later.backend.is_some() {
            self.backend = later.backend.clone();
        }
        if later.announce.is_some() {
            self.announce = later.announce;
        }
        if later.silence_settle_ms.is_some() {
            self.silence_settle_ms = later.silence_settle_ms;
        }
        self
    }

    /// `router` with these settings applied.
    pub fn apply(&self, mut router: RouterSpec) -> RouterSpec {
        if let Some(strategy) = self.strategy {
            router.strategy = strategy;
        }
        if let Some(backend) = &self.backend {
            router.backend = backend.clone();
        }
        if let Some(announce) = self.announce {
            router.announce = announce;
        }
        if let Some(ms) = self.silence_settle_ms {
            router.silence_settle_ms = ms;
        }
        router
    }
}

/// [`RouterSpec`]'s own schema, made structural for the API server. Only `backend` needs
/// help: `generic` is a plain string while `ovs`/`linuxbridge` are objects, and a structural
/// schema (and kube's rewriter) allows one type per field. The API server therefore keeps
/// `backend` as given, and the agent validates it (a bad value is reported in the node's
/// status entry as a spec error).
fn router_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = RouterSpec::json_schema(generator);
    if let Some(backend) = schema.get_mut("properties").and_then(|p| p.get_mut("backend")) {
        *backend = backend_schema(generator).into();
    }
    schema
}

fn backend_schema(_: &mut SchemaGenerator) -> Schema {
    json!({
        "description": "How the port is attached at layer 2: `generic` (default), \
            {\"ovs\": {\"port\": NAME}} or {\"linuxbridge\": {\"port\": TAP, \"bridge\": BRQ}}. \
            Validated by the agent.",
        "x-kubernetes-preserve-unknown-fields": true,
    })
    .try_into()
    .expect("a JSON object is a schema")
}

/// What each hosting node's agent last reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HARouterStatus {
    /// One entry per node; each is written only by that node's agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<NodeStatus>,
    /// `Ready` (one primary, every node converged), `Degraded` (a node reports an error) and
    /// `SplitBrain` (more than one node primary), aggregated from `nodes` by the agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The nodes reporting the primary role, comma-separated (aggregated, for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Every node's role, `node=role`, `(held)` when its port is kept silent (aggregated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<String>,
}

/// One node's view of the router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node this entry belongs to (the list key).
    pub node: String,
    /// The role the node acted on: `primary`, `standby` or `unknown`.
    pub role: String,
    /// Whether the gateway port is kept from transmitting (held at layer 2 or link down).
    pub held: bool,
    /// Whether the router's keepalived holds its primary VIP on this node (a VIP left by a
    /// keepalived that is down or just started is stale and not counted); absent when the
    /// router names no VIP or it cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_present: Option<bool>,
    /// The strategy this node enforces for the router (after overrides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// When `role` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The last reconcile error; absent once a pass succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The spec generation this entry reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (converged) and `Degraded` (last pass failed), per Kubernetes conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A condition with the fields of `meta/v1 Condition`; our own type so its schema comes from
/// schemars like the rest (k8s-openapi's types carry no `JsonSchema` without extra features).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Degraded` or (object-wide) `SplitBrain`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason for the last transition.
    pub reason: String,
    /// Human-readable details.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// The condition `type_` now, keeping its transition time from `previous` while its
    /// status stays the same.
    pub fn keeping_time(
        previous: &[Condition],
        type_: &str,
        (status, reason, message): (&str, &str, String),
        observed_generation: Option<i64>,
        now: &str,
    ) -> Condition {
        let last_transition_time = match previous.iter().find(|c| c.type_ == type_) {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => now.to_string(),
        };
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time,
            observed_generation,
        }
    }
}

/// The CRD manifest as YAML (both served versions, see [`super::versions`]), as `hagw crd`
/// prints it and the chart ships it.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(&super::versions::crd())
}
