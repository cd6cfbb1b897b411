//! Wakes a router's namespace when its keepalived finishes starting up or exits. A keepalived
//! that dies leaves its pid file, state file and VIPs behind, so neither inotify nor netlink
//! says anything; the agent waits on a pidfd of each running keepalived instead
//! (`hagw_backends::process`). A keepalived in its start-up
//! ([`KEEPALIVED_STARTUP`](hagw_core::role::KEEPALIVED_STARTUP)) counts as not running yet,
//! and nothing reports the end of that either, so the watch wakes the router then too.

use hagw_backends::process::exited;
use hagw_core::role::RunningProcess;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// The watch on one router's running keepalived (kept with the router: [`super::routers`]).
/// Dropping it stops it.
pub struct ExitWatch {
    pid: u32,
    task: JoinHandle<()>,
}

impl ExitWatch {
    /// Watches `keepalived` of router `router`; wakes are sent as the router's wake key (its
    /// namespace) on `wake`.
    pub fn start(
        router: &str,
        wake_key: &str,
        keepalived: RunningProcess,
        wake: mpsc::UnboundedSender<String>,
    ) -> ExitWatch {
        let (key, router) = (wake_key.to_owned(), router.to_owned());
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
        ExitWatch { pid, task }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
