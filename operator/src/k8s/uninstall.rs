//! Telling an uninstall from a restart when the agent is told to stop.
//!
//! Both arrive as SIGTERM. A restart (pod deleted, rolling upgrade, node drain) must leave
//! every port as it is: the next agent takes over where this one stopped, and a standby
//! released in between could leak. An uninstall must hand every port back, or a standby's
//! port stays held with nobody left to release it, and the router is dark once keepalived
//! makes this node primary. The difference is the DaemonSet that owns this pod: on
//! `helm uninstall` it is deleted (or being deleted) first, and Helm then removes the RBAC
//! and service account too, so the lookup is refused; on a restart it is still there.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use tracing::{debug, info};

/// This pod, from the downward API (`POD_NAME`, `POD_NAMESPACE`).
#[derive(Debug, Clone)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
}

impl PodRef {
    pub fn from_env() -> Option<PodRef> {
        let get = |key| std::env::var(key).ok().filter(|v: &String| !v.is_empty());
        Some(PodRef { name: get("POD_NAME")?, namespace: get("POD_NAMESPACE")? })
    }
}

/// Whether the DaemonSet that runs this pod is gone or going. An API server that cannot be
/// reached says nothing either way: then the agent stops as on a restart, holds kept.
pub async fn uninstalling(client: &Client, pod: &PodRef) -> bool {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let owner = match pods.get(&pod.name).await {
        Ok(p) => p
            .metadata
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .find(|o| o.kind == "DaemonSet")
            .map(|o| o.name),
        Err(e) => return gone(&e, "pod"),
    };
    let Some(owner) = owner else {
        debug!("this pod has no DaemonSet owner: stopping as on a restart");
        return false;
    };
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), &pod.namespace);
    match sets.get(&owner).await {
        Ok(set) if set.metadata.deletion_timestamp.is_some() => {
            info!(daemonset = %owner, "the DaemonSet is being deleted");
            true
        }
        Ok(_) => false,
        Err(e) => gone(&e, "daemonset"),
    }
}

/// A lookup answered with not-found, forbidden or unauthorized: the object, or the
/// permissions and service account Helm removes with it, are gone.
fn gone(error: &kube::Error, what: &str) -> bool {
    let code = match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    };
    let gone = matches!(code, Some(401 | 403 | 404));
    info!(what, ?code, %error, gone, "looking up this pod's DaemonSet");
    gone
}
