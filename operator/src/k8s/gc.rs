//! Removing the object of a discovered router once no node hosts the router any more.
//!
//! The agent that removes the last node entry deletes the object, on two conditions: it is
//! one the agents published (labelled [`DISCOVERED_LABEL`]) and holds nothing a user set
//! (its spec is the router id alone), and it has not changed since that write (the delete is
//! conditional on its resourceVersion, so a node that has just started hosting the router,
//! or a user's edit, keeps it). A user-written object, or a published one a user added
//! overrides to, is never deleted: it is the user's to remove. If the router comes back, its
//! object is published again.

use kube::api::{Api, DeleteParams, DynamicObject, Preconditions};
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::source::DISCOVERED_LABEL;
use crate::observe::Observer;

/// Whether `object` is a published object that nothing refers to any more.
pub(super) fn unused(object: &DynamicObject) -> bool {
    let published = object.labels().get(DISCOVERED_LABEL).is_some_and(|v| v == "true");
    let spec_is_id_only =
        object.data["spec"].as_object().is_some_and(|spec| spec.keys().all(|k| k == "routerId"));
    let no_nodes = object.data["status"]["nodes"].as_array().is_none_or(|nodes| nodes.is_empty());
    published && spec_is_id_only && no_nodes
}

/// Deletes `object` if it is still exactly as this agent last wrote it.
pub(super) async fn delete(api: &Api<DynamicObject>, object: &DynamicObject, observer: &Observer) {
    let name = object.name_any();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: object.resource_version(),
            uid: object.meta().uid.clone(),
        }),
        ..DeleteParams::default()
    };
    let result = api.delete(&name, &params).await;
    observer.kubernetes_write("delete", result.is_ok());
    match result {
        Ok(_) => {
            info!(harouter = %name, "no node hosts the discovered router any more: its object is deleted")
        }
        // Changed since (another node's entry, a user's edit) or already gone: kept, or
        // nothing to do.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
            debug!(harouter = %name, code = e.code, "the unused object changed or is gone; not deleted")
        }
        Err(e) => {
            warn!(harouter = %name, error = %e, "cannot delete the object of a router no node hosts")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(
        labels: serde_json::Value,
        spec: serde_json::Value,
        nodes: serde_json::Value,
    ) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "hagw.dev/v1beta1", "kind": "HARouter",
            "metadata": {"name": "r", "namespace": "ns", "labels": labels},
            "spec": spec, "status": {"nodes": nodes},
        }))
        .expect("object")
    }

    #[test]
    fn only_a_published_object_with_nothing_of_a_user_and_no_node_is_unused() {
        let label = json!({DISCOVERED_LABEL: "true"});
        let id = json!({"routerId": "r1"});
        assert!(unused(&object(label.clone(), id.clone(), json!([]))));
        assert!(!unused(&object(
            label.clone(),
            id.clone(),
            json!([{"node": "n2", "role": "standby", "held": true}])
        )));
        // A user's overrides on it, or a user-written object: kept.
        let overridden = json!({"routerId": "r1", "overrides": {"strategy": "silence-only"}});
        assert!(!unused(&object(label, overridden, json!([]))));
        assert!(!unused(&object(json!({}), id, json!([]))));
    }
}
