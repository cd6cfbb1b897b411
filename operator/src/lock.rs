//! One agent per node. Two agents on one node (a rolling update with surge, a host unit
//! beside the pod, an operator's second `hagw run`) would both enforce every router, each
//! undoing the other's steps. An exclusive lock on a file both can see (the state directory,
//! a host path in the chart) lets one run; the other waits, answering its probes (alive, and
//! ready to take over, so a rolling update can go on and stop the old one), and takes over
//! the moment the first exits, however it exits: the kernel drops the lock with the process.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use crate::observe::Observer;

/// How often a waiting agent tries the lock again.
const RETRY: Duration = Duration::from_millis(200);

/// Held while this agent runs; released when dropped or when the process ends.
#[derive(Debug)]
pub struct NodeLock {
    _file: File,
}

/// Takes the lock at `path` if no agent holds it; `None` if one does.
pub fn try_acquire(path: &Path) -> io::Result<Option<NodeLock>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(NodeLock { _file: file })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Takes the lock at `path`, waiting for another agent that holds it to exit. While waiting,
/// `observer` keeps beating (alive) and reports ready.
pub async fn acquire(path: &Path, observer: &Observer) -> io::Result<NodeLock> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    let mut warned = false;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                if !warned {
                    warn!(lock = %path.display(), "another hagw agent runs on this node; waiting for it to exit");
                    observer.set_sources_ready();
                    warned = true;
                }
                observer.beat();
                tokio::time::sleep(RETRY).await;
            }
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
    if warned {
        info!(lock = %path.display(), "the other agent exited; taking over");
    }
    Ok(NodeLock { _file: file })
}
