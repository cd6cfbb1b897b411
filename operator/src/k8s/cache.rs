//! The routers this node enforced last, kept on local disk. After a restart (or a node's
//! boot) the agent enforces them at once, before (or without) reaching the API server or
//! finding Neutron's files: the HARouters' routers in `harouters.json`, which it hands back
//! once it has listed the HARouters and found them deleted; the discovered routers in
//! `discovered.json`, hold-only until Neutron's files are read again ([`super::discovered`]).

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use super::Error;
use super::source::Assigned;

pub struct SpecCache {
    path: PathBuf,
}

impl SpecCache {
    /// The HARouters' routers.
    pub fn harouters(dir: &Path) -> SpecCache {
        SpecCache { path: dir.join("harouters.json") }
    }

    /// The routers discovered from Neutron's files.
    pub fn discovered(dir: &Path) -> SpecCache {
        SpecCache { path: dir.join("discovered.json") }
    }

    /// The cached routers; none if the file is missing or unreadable (a corrupt cache only
    /// costs the early start, the API server and Neutron's files have the truth).
    pub fn load<T: DeserializeOwned>(&self) -> Vec<T> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(path = %self.path.display(), error = %e, "ignoring unreadable spec cache");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    /// Replaces the cache atomically (write then rename), so a crash never leaves half a file.
    pub fn store<T: Serialize>(&self, routers: &[T]) -> Result<(), Error> {
        let io = |source| Error::Cache { path: self.path.clone(), source };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(routers).map_err(|e| io(e.into()))?;
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

/// Every router the Kubernetes agent with state directory `dir` enforced last: its
/// HARouters' routers, then the discovered ones no HARouter names (as the agent merges them).
pub fn cached_routers(dir: &Path) -> Vec<hagw_core::RouterSpec> {
    let mut routers: Vec<_> =
        SpecCache::harouters(dir).load::<Assigned>().into_iter().map(|a| a.spec).collect();
    for spec in SpecCache::discovered(dir).load::<hagw_core::RouterSpec>() {
        if !routers.iter().any(|r| r.id == spec.id) {
            routers.push(spec);
        }
    }
    routers
}

#[cfg(test)]
mod tests {
    use hagw_core::testing::router;

    use super::*;
    use crate::k8s::source::Origin;

    /// What `hagw release --state-dir` hands back: the HARouters' routers, then the
    /// discovered ones, an HARouter's spec winning over a discovered one with its id.
    #[test]
    fn the_cached_routers_are_the_harouters_then_the_discovered_ones() {
        let dir = tempfile::tempdir().unwrap();
        let origin =
            Origin { namespace: "ns".into(), name: "a".into(), uid: None, generation: None };
        let mut a = router("a");
        a.gateway_device = "qg-from-harouter".into();
        SpecCache::harouters(dir.path()).store(&[Assigned { origin, spec: a }]).unwrap();
        SpecCache::discovered(dir.path()).store(&[router("b"), router("a")]).unwrap();
        let cached = cached_routers(dir.path());
        let ids: Vec<&str> = cached.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(cached[0].gateway_device, "qg-from-harouter");
        assert!(cached_routers(&dir.path().join("missing")).is_empty());
    }
}
