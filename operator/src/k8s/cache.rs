//! The routers this node enforced last, kept on local disk. After a restart the agent
//! enforces them at once, before (or without) reaching the API server, and once it has
//! listed the HARouters it hands back the ones deleted while it was down.

use std::path::{Path, PathBuf};

use tracing::warn;

use super::Error;
use super::source::Assigned;

pub struct SpecCache {
    path: PathBuf,
}

impl SpecCache {
    pub fn new(dir: &Path) -> SpecCache {
        SpecCache { path: dir.join("harouters.json") }
    }

    /// The cached routers; none if the file is missing or unreadable (a corrupt cache only
    /// costs the early start, the API server has the truth).
    pub fn load(&self) -> Vec<Assigned> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(path = %self.path.display(), error = %e, "ignoring unreadable spec cache");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    /// Replaces the cache atomically (write then rename), so a crash never leaves half a file.
    pub fn store(&self, routers: &[Assigned]) -> Result<(), Error> {
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
