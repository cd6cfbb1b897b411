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

use super::crd::{HARouter, HARouterSpec};

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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assigned {
    pub origin: Origin,
    pub spec: RouterSpec,
}

/// An object listing this node that cannot be enforced, and why.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub origin: Origin,
    pub error: String,
}

#[derive(Debug, Default, Clone)]
pub struct NodeView {
    pub assigned: Vec<Assigned>,
    pub rejected: Vec<Rejected>,
}

/// The routers of `node` among `objects`. Ties (two objects with the same router id or the
/// same gateway port) go to the object first in `namespace/name` order, so every agent and
/// every restart decides the same way.
pub fn node_view(objects: &[Arc<DynamicObject>], node: &str) -> NodeView {
    let mut objects: Vec<&DynamicObject> =
        objects.iter().map(|o| o.as_ref()).filter(|o| lists_node(o, node)).collect();
    objects.sort_by_key(|o| (o.namespace(), o.name_any()));
    let mut view = NodeView::default();
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut ports: HashMap<(String, String), String> = HashMap::new();
    for obj in objects {
        let origin = Origin::of(obj);
        let owner = format!("{}/{}", origin.namespace, origin.name);
        let spec = match parse(obj) {
            Ok(spec) => spec,
            Err(error) => {
                view.rejected.push(Rejected { origin, error });
                continue;
            }
        };
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

fn lists_node(obj: &DynamicObject, node: &str) -> bool {
    obj.data["spec"]["nodes"]
        .as_array()
        .is_some_and(|nodes| nodes.iter().any(|n| n.as_str() == Some(node)))
}

fn parse(obj: &DynamicObject) -> Result<RouterSpec, String> {
    let spec: HARouterSpec =
        serde_json::from_value(obj.data["spec"].clone()).map_err(|e| format!("spec: {e}"))?;
    validate_router(&spec.router)
        .map_err(|(field, message)| format!("spec.router.{field}: {message}"))?;
    Ok(spec.router)
}
