//! `hagw migrate`: the storage-version migration from `v1alpha1` to `v1beta1`, run once by
//! an administrator after the new CRD is applied and the agents are upgraded.
//!
//! Every object is read and written back through `v1beta1` (an update with its
//! `resourceVersion`, so a concurrent change is never overwritten: on a conflict it is read
//! again). The write stores it as `v1beta1`; the one shape of the released `v1alpha1`
//! that `v1beta1` rejects,
//! `backend: generic`, is rewritten first ([`normalize`]). Once every object is stored as
//! `v1beta1`, `v1alpha1` is removed from the CRD's `status.storedVersions`, as Kubernetes'
//! storage-version procedure asks. An object that cannot be written is named with the API
//! server's message, and `storedVersions` is not touched. The API server's validation
//! ratcheting lets an object keep an invalid value it already had (an address v1alpha1 did
//! not check): such objects are stored as `v1beta1` all the same and named with the agent's
//! own check, which is what keeps them from being enforced.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use super::crd::HARouter;
use super::source::parse;
use super::versions::{BACKENDS, STORAGE};

/// What a migration did.
#[derive(Debug, Default)]
pub struct Report {
    /// Objects written back (`namespace/name`), and whether their spec was rewritten.
    pub migrated: Vec<(String, bool)>,
    /// Objects that could not be written, with the API server's reason.
    pub failed: Vec<(String, String)>,
    /// Objects stored, but invalid (the agent rejects them), with the reason.
    pub invalid: Vec<(String, String)>,
    /// `status.storedVersions` after the run.
    pub stored_versions: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot build a Kubernetes client (in-cluster config or KUBECONFIG): {0}")]
    Client(#[source] kube::Error),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

const CRD_NAME: &str = "harouters.hagw.dev";
/// Attempts per object when others change it meanwhile.
const ATTEMPTS: usize = 5;

/// Migrates every HARouter (see the module docs). With `dry_run`, nothing is written.
pub async fn migrate(dry_run: bool) -> Result<Report, MigrateError> {
    let client = Client::try_default().await.map_err(MigrateError::Client)?;
    let resource = ApiResource::erase::<HARouter>(&());
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let api_err = |what: &str| {
        let what = what.to_string();
        move |source| MigrateError::Api { what, source }
    };
    let objects = all.list(&Default::default()).await.map_err(api_err("listing HARouters"))?;
    let mut report = Report::default();
    for object in objects {
        let name = format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any());
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &object.namespace().unwrap_or_default(),
            &resource,
        );
        if let Err(reason) = parse(&object) {
            report.invalid.push((name.clone(), reason));
        }
        match write_back(&api, object, dry_run).await {
            Ok(rewritten) => report.migrated.push((name, rewritten)),
            Err(reason) => report.failed.push((name, reason)),
        }
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let crd = crds.get_status(CRD_NAME).await.map_err(api_err("reading the HARouter CRD"))?;
    let mut stored = crd.status.and_then(|s| s.stored_versions).unwrap_or_default();
    if report.failed.is_empty() && !dry_run && stored.iter().any(|v| v != STORAGE) {
        let patch = json!({"status": {"storedVersions": [STORAGE]}});
        crds.patch_status(CRD_NAME, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err("updating the CRD's storedVersions"))?;
        stored = vec![STORAGE.to_string()];
    }
    report.stored_versions = stored;
    Ok(report)
}

/// Writes one object back through the storage version; returns whether its spec changed.
async fn write_back(
    api: &Api<DynamicObject>,
    mut object: DynamicObject,
    dry_run: bool,
) -> Result<bool, String> {
    for _ in 0..ATTEMPTS {
        let rewritten = normalize(&mut object.data["spec"]);
        let mut params = PostParams::default();
        if dry_run {
            params.dry_run = true;
        }
        match api.replace(&object.name_any(), &params, &object).await {
            Ok(_) => return Ok(rewritten),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                object = api.get(&object.name_any()).await.map_err(|e| e.to_string())?;
            }
            Err(kube::Error::Api(e)) => return Err(e.message),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("changed by others {ATTEMPTS} times in a row; run again"))
}

/// An object's spec in the v1beta1 shape: `backend: generic` (the v1alpha1 string) becomes
/// `generic: {}`, in `router` and in `overrides`. Returns whether anything changed.
fn normalize(spec: &mut Value) -> bool {
    let mut changed = false;
    for path in BACKENDS {
        let Some(backend) = spec.pointer_mut(path) else { continue };
        if backend.as_str() == Some("generic") {
            *backend = json!({"generic": {}});
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::versions::denormalize;

    #[test]
    fn normalize_and_denormalize_round_trip_the_generic_backend() {
        let mut spec =
            json!({"router": {"backend": "generic"}, "overrides": {"backend": "generic"}});
        assert!(normalize(&mut spec));
        assert_eq!(spec["router"]["backend"], json!({"generic": {}}));
        assert_eq!(spec["overrides"]["backend"], json!({"generic": {}}));
        assert!(!normalize(&mut spec), "idempotent");
        denormalize(&mut spec);
        assert_eq!(
            spec,
            json!({"router": {"backend": "generic"}, "overrides": {"backend": "generic"}})
        );
        let mut ovs = json!({"router": {"backend": {"ovs": {"port": "p"}}}});
        assert!(!normalize(&mut ovs));
        denormalize(&mut ovs);
        assert_eq!(ovs["router"]["backend"], json!({"ovs": {"port": "p"}}));
    }
}
