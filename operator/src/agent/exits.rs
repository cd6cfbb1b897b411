//! Wakes a router's namespace when its keepalived finishes starting up or exits. A keepalived
//! that dies leaves its pid file, state file and VIPs behind, so neither inotify nor netlink
//! says anything; the agent waits on a pidfd of each running keepalived instead
//! (`hagw_backends::process`). A keepalived in its start-up
//! ([`KEEPALIVED_STARTUP`](hagw_core::role::KEEPALIVED_STARTUP)) counts as not running yet,
//! and nothing reports the end of that either, so the watch wakes the router then too.

use std::collections::HashMap;

use hagw_backends::process::exited;
use hagw_core::role::RunningProcess;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// One watch per router whose spec names a keepalived pid file.
pub struct ExitWatches {
    watches: HashMap<String, (u32, JoinHandle<()>)>,
    wake: mpsc::UnboundedSender<String>,
}

impl ExitWatches {
    /// Wakes are sent as the router's wake key (its namespace) on `wake`.
    pub fn new(wake: mpsc::UnboundedSender<String>) -> Self {
        ExitWatches { watches: HashMap::new(), wake }
    }

    /// Watches the router's running keepalived, replacing a watch on another process;
    /// `None` (not running) stops watching.
    pub fn set(&mut self, id: &str, wake_key: &str, keepalived: Option<RunningProcess>) {
        let pid = keepalived.map(|k| k.pid);
        if self.watches.get(id).map(|(watched, _)| Some(*watched)) == Some(pid) {
            return;
        }
        self.remove(id);
        let Some(keepalived) = keepalived else { return };
        let (wake, key, router) = (self.wake.clone(), wake_key.to_owned(), id.to_owned());
        let pid = keepalived.pid;
        let task = tokio::spawn(async move {
            if let Some(left) = keepalived.startup_left() {
                tokio::time::sleep(left).await;
                let _ = wake.send(key.clone());
            }
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
