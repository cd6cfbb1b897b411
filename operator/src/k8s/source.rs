//! Which routers this node hosts, worked out from the watched `HARouter` objects.
//!
//! Objects are watched untyped and converted one by one, so a single object the agent
//! cannot read (a `backend` the API server's schema could not check, a spec failing the
//! checks `routers.yaml` gets) is reported in its own status instead of breaking the watch
//! for every router.

use std::collections::HashMap;
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
