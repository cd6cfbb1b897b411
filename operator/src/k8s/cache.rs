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
