//! Wakes a router's namespace when its keepalived exits. A keepalived that dies leaves its
//! pid file, state file and VIPs behind, so neither inotify nor netlink says anything; the
//! agent waits on a pidfd of each running keepalived instead (`hagw_backends::process`).

use std::collections::HashMap;

use hagw_backends::process::exited;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// One exit watch per router whose spec names a keepalived pid file.
pub struct ExitWatches {
    watches: HashMap<String, (u32, JoinHandle<()>)>,
    wake: mpsc::UnboundedSender<String>,
}

impl ExitWatches {
    /// Exits are reported by sending the router's wake key (its namespace) on `wake`.
    pub fn new(wake: mpsc::UnboundedSender<String>) -> Self {
        ExitWatches { watches: HashMap::new(), wake }
    }

    /// Watches process `pid` (the router's running keepalived) for router `id`, replacing a
    /// watch on another pid; `None` (not running) stops watching.
    pub fn set(&mut self, id: &str, wake_key: &str, pid: Option<u32>) {
        if self.watches.get(id).map(|(watched, _)| Some(*watched)) == Some(pid) {
            return;
        }
        self.remove(id);
        let Some(pid) = pid else { return };
        let (wake, key, router) = (self.wake.clone(), wake_key.to_owned(), id.to_owned());
        let task = tokio::spawn(async move {
            match exited(pid).await {
                Ok(()) => info!(router, pid, "keepalived exited; its VIP and state are stale"),
                // Without a watch the exit is noticed at the next event or resync.
                Err(e) => warn!(router, pid, error = %e, "cannot watch keepalived for exiting"),
            }
            let _ = wake.send(key);
        });
        self.watches.insert(id.to_owned(), (pid, task));
    }

    /// Stops watching for router `id`.
    pub fn remove(&mut self, id: &str) {
        if let Some((_, task)) = self.watches.remove(id) {
            task.abort();
        }
    }
}

impl Drop for ExitWatches {
    fn drop(&mut self) {
        for (_, task) in self.watches.values() {
            task.abort();
        }
    }
}
