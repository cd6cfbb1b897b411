//! The ready file: an empty-looking file the agent creates the first time it is ready (its
//! routers' source read, every router's first pass done: [`Observer::readiness`]), so that
//! whatever re-creates the routers' ports at boot can be ordered after it. At a node's boot
//! the Neutron agents and hagw's pod start in no order of their own; a gateway port brought up
//! before hagw watches it leaks (docs/kubernetes.md, "Node reboot"). With the file on a tmpfs
//! (`/run`), its absence means "no agent has enforced since this boot": Neutron's agents wait
//! for it (a systemd `ExecStartPre`, an init container).
//!
//! The file is written once and never removed by the agent: the holds it stands for outlive
//! the process (a restarted pod takes over where the last one stopped), and a Neutron agent
//! restarted while hagw's pod restarts should not wait for it. The next boot clears it.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::observe::Observer;

pub struct ReadyFile {
    path: Option<PathBuf>,
    written: bool,
    warned: bool,
}

impl ReadyFile {
    /// `None`: no file (the option not set).
    pub fn new(path: Option<PathBuf>) -> ReadyFile {
        ReadyFile { path, written: false, warned: false }
    }

    /// Creates the file if it is not there yet and `observer` reports ready; a failed write
    /// is tried again at the next call (warned once).
    pub fn update(&mut self, observer: &Observer) {
        let Some(path) = &self.path else { return };
        if self.written || observer.readiness().is_err() {
            return;
        }
        match write(path) {
            Ok(()) => {
                info!(path = %path.display(), "ready: holds enforced; wrote the ready file");
                self.written = true;
            }
            Err(e) if !self.warned => {
                warn!(path = %path.display(), error = %e, "cannot write the ready file; retrying");
                self.warned = true;
            }
            Err(_) => {}
        }
    }
}

/// Write then rename: a waiter never sees a half-written file.
fn write(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    std::fs::write(&tmp, format!("hagw ready pid={} at={stamp}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use hagw_core::supervisor::WorkerConfig;

    use super::*;

    #[test]
    fn written_once_the_agent_is_ready_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ready");
        let observer = Observer::new(&WorkerConfig::default());
        let mut ready = ReadyFile::new(Some(path.clone()));
        ready.update(&observer);
        assert!(!path.exists(), "written before the source was read");
        observer.set_sources_ready();
        ready.update(&observer);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("hagw ready pid="), "{text}");
        assert!(!path.with_extension("tmp").exists());
    }
}
