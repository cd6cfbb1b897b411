//! Which routers this node hosts, worked out from the watched `HARouter` objects.
//!
//! Objects are watched untyped and converted one by one, so a single object the agent
//! cannot read (a `backend` the API server's schema could not check, a spec failing the
//! checks `routers.yaml` gets) is reported in its own status instead of breaking the watch
//! for every router.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hagw_core::RouterSpec;
use hagw_core::config::validate_router;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::DynamicObject;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use super::crd::{HARouter, HARouterSpec, Overrides};
use super::versions::denormalize;

/// The `HARouter` a router spec came from: where its status and Events go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub generation: Option<i64>,
}

impl Origin {
    fn of(obj: &DynamicObject) -> Origin {
        Origin {
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            uid: obj.uid(),
            generation: obj.meta().generation,
        }
    }

    /// `namespace/name`, the identity that survives spec changes.
    pub fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }

    pub fn object_ref(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(HARouter::api_version(&()).into_owned()),
            kind: Some(HARouter::kind(&()).into_owned()),
            namespace: Some(self.namespace.clone()),
            name: Some(self.name.clone()),
            uid: self.uid.clone(),
            ..ObjectReference::default()
        }
    }
}

/// A router this node must enforce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assigned {
    pub origin: Origin,
    pub spec: RouterSpec,
}

/// An object listing this node that cannot be enforced, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub origin: Origin,
    pub error: String,
}

/// The objects without a `router` that name one discovered router: where its status goes
/// and what overrides it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// The object the agents published for the router (labelled [`DISCOVERED_LABEL`]): its
    /// status is reported there.
    pub target: Option<Origin>,
    /// A user-written object (no label, no `router`) overriding the router.
    pub user: Option<Origin>,
    /// The settings of the published object, then those of the user-written one.
    pub overrides: Overrides,
}

#[derive(Debug, Default, Clone)]
pub struct NodeView {
    /// Hand-written routers listing this node.
    pub assigned: Vec<Assigned>,
    pub rejected: Vec<Rejected>,
    /// Views and overrides of discovered routers, by router id (whatever node discovers them).
    pub views: HashMap<String, View>,
}

/// The label the agents put on the objects they publish for discovered routers.
pub const DISCOVERED_LABEL: &str = "hagw.dev/discovered";

/// The routers of `node` among `objects`. Ties (two objects with the same router id or the
/// same gateway port, two user-written overrides of one router) go to the object first in
/// `namespace/name` order, so every agent and every restart decides the same way.
pub fn node_view(objects: &[Arc<DynamicObject>], node: &str) -> NodeView {
    let mut objects: Vec<&DynamicObject> = objects.iter().map(|o| o.as_ref()).collect();
    // Published objects first: a user-written override comes after, and wins.
    objects.sort_by_key(|o| (!is_discovered(o), o.namespace(), o.name_any()));
    let mut view = NodeView::default();
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut ports: HashMap<(String, String), String> = HashMap::new();
    for obj in objects {
        let origin = Origin::of(obj);
        let owner = format!("{}/{}", origin.namespace, origin.name);
        let spec = match parse(obj) {
            Ok(spec) => spec,
            Err(error) => {
                if lists_node(obj, node) || !has_router(obj) {
                    view.rejected.push(Rejected { origin, error });
                }
                continue;
            }
        };
        let Some(router) = spec.router else {
            let id = spec.router_id.unwrap_or_default();
            let entry = view.views.entry(id.clone()).or_default();
            let slot = if is_discovered(obj) { &mut entry.target } else { &mut entry.user };
            if let Some(first) = slot {
                let error = format!(
                    "router `{id}` already has HARouter {}/{} (each router has one published \
                     object and at most one user-written override)",
                    first.namespace, first.name
                );
                view.rejected.push(Rejected { origin, error });
                continue;
            }
            *slot = Some(origin);
            let overrides = spec.overrides.unwrap_or_default();
            entry.overrides = std::mem::take(&mut entry.overrides).then(&overrides);
            continue;
        };
        if !lists_node(obj, node) {
            continue;
        }
        let spec = router;
        let port = (spec.namespace.clone(), spec.gateway_device.clone());
        let clash = match (ids.get(&spec.id), ports.get(&port)) {
            (Some(other), _) => {
                Some(format!("router id `{}` is also used by HARouter {other}", spec.id))
            }
            (None, Some(other)) => Some(format!(
                "`{}` in `{}` is also managed by HARouter {other}",
                spec.gateway_device, spec.namespace
            )),
            (None, None) => None,
        };
        if let Some(error) = clash {
            view.rejected.push(Rejected { origin, error });
            continue;
        }
        ids.insert(spec.id.clone(), owner.clone());
        ports.insert(port, owner);
        view.assigned.push(Assigned { origin, spec });
    }
    view
}

/// What [`node_view`] reads of one object: its identity, generation, labels and spec.
type Fingerprint = (Option<String>, Option<i64>, BTreeMap<String, String>, serde_json::Value);

fn fingerprint(obj: &DynamicObject) -> Fingerprint {
    let meta = obj.meta();
    let labels = meta.labels.clone().unwrap_or_default();
    (meta.uid.clone(), meta.generation, labels, obj.data["spec"].clone())
}

/// Tells the watch events that can change what [`node_view`] makes of the objects from those
/// that cannot. Most events are status writes (every node's entry, the conditions): a
/// failover of 1,000 routers on two nodes is over 2,000 of them, and working the whole view
/// out again for each (every object parsed, every router compared, the spec cache rewritten)
/// made the agents' work grow with the square of the number of routers.
#[derive(Debug, Default)]
pub struct SpecChanges {
    seen: HashMap<(String, String), Fingerprint>,
}

impl SpecChanges {
    /// Starts over from a complete list (the watch's initial list or a re-list).
    pub fn reset(&mut self, objects: &[Arc<DynamicObject>]) {
        self.seen = objects.iter().map(|o| (Origin::of(o).key(), fingerprint(o))).collect();
    }

    /// Records an object created or changed; returns whether the view may differ.
    pub fn applied(&mut self, obj: &DynamicObject) -> bool {
        let print = fingerprint(obj);
        match self.seen.get(&Origin::of(obj).key()) {
            Some(seen) if *seen == print => false,
            _ => {
                self.seen.insert(Origin::of(obj).key(), print);
                true
            }
        }
    }

    /// Records an object deleted; the view may differ.
    pub fn deleted(&mut self, obj: &DynamicObject) -> bool {
        self.seen.remove(&Origin::of(obj).key());
        true
    }
}

fn is_discovered(obj: &DynamicObject) -> bool {
    obj.labels().get(DISCOVERED_LABEL).is_some_and(|v| v == "true")
}

fn has_router(obj: &DynamicObject) -> bool {
    !obj.data["spec"]["router"].is_null()
}

fn lists_node(obj: &DynamicObject, node: &str) -> bool {
    obj.data["spec"]["nodes"]
        .as_array()
        .is_some_and(|nodes| nodes.iter().any(|n| n.as_str() == Some(node)))
}

/// The object's spec, checked as `routers.yaml` is: a `router` with its `nodes`, or the
/// `routerId` of a discovered router with optional overrides.
pub(super) fn parse(obj: &DynamicObject) -> Result<HARouterSpec, String> {
    let mut spec = obj.data["spec"].clone();
    denormalize(&mut spec);
    let spec: HARouterSpec = serde_json::from_value(spec).map_err(|e| format!("spec: {e}"))?;
    match (&spec.router, &spec.router_id) {
        (Some(router), _) => {
            validate_router(router)
                .map_err(|(field, message)| format!("spec.router.{field}: {message}"))?;
            if spec.nodes.is_empty() {
                return Err("spec.nodes: a hand-written router needs the nodes hosting it".into());
            }
            if spec.router_id.as_ref().is_some_and(|id| *id != router.id) {
                return Err("spec.routerId: differs from spec.router.id".into());
            }
            if spec.overrides.is_some() {
                return Err("spec.overrides: apply to discovered routers; set the fields in \
                            spec.router"
                    .into());
            }
        }
        (None, Some(id)) if !id.is_empty() => {}
        (None, _) => {
            return Err("spec: needs `router` (a hand-written router) or `routerId` (a \
                        discovered one)"
                .into());
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use kube::api::ApiResource;
    use serde_json::json;

    use super::*;

    fn object(spec: serde_json::Value, status: serde_json::Value) -> DynamicObject {
        let mut obj = DynamicObject::new("r1", &ApiResource::erase::<HARouter>(&()))
            .within("hagw")
            .data(json!({ "spec": spec, "status": status }));
        obj.metadata.uid = Some("u1".into());
        obj.metadata.generation = Some(1);
        obj
    }

    #[test]
    fn status_writes_do_not_change_the_view_and_spec_label_or_generation_changes_do() {
        let spec = json!({"routerId": "r1"});
        let mut changes = SpecChanges::default();
        let first = object(spec.clone(), json!({}));
        changes.reset(&[Arc::new(first.clone())]);
        assert!(!changes.applied(&first));
        let entry = json!({"nodes": [{"node": "n1", "role": "primary"}], "primary": "n1"});
        let mut status_only = object(spec.clone(), entry);
        status_only.metadata.resource_version = Some("2".into());
        assert!(!changes.applied(&status_only), "a status write alone");

        let overridden =
            object(json!({"routerId": "r1", "overrides": {"strategy": "link-down"}}), json!({}));
        assert!(changes.applied(&overridden), "a spec change");
        assert!(!changes.applied(&overridden), "the same spec again");
        let mut labelled = overridden.clone();
        labelled.metadata.labels = Some([(DISCOVERED_LABEL.into(), "true".into())].into());
        assert!(changes.applied(&labelled), "a label change");
        let mut bumped = labelled.clone();
        bumped.metadata.generation = Some(2);
        assert!(changes.applied(&bumped), "a new generation");
        let mut recreated = bumped.clone();
        recreated.metadata.uid = Some("u2".into());
        assert!(changes.applied(&recreated), "the object deleted and created again");
        assert!(changes.deleted(&recreated));
        assert!(changes.applied(&recreated), "an object seen first");
    }
}
