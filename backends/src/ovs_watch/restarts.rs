//! Noticing ovs-vswitchd (re)starting. `no-receive` is OpenFlow port state inside
//! ovs-vswitchd, lost when it restarts, and a restart need not change anything in OVSDB, so
//! the OVSDB monitor does not see it. What a (re)start always does is create each bridge's
//! management socket, `<rundir>/<bridge>.mgmt`, afresh: that is what this watches, with
//! inotify on the run directory.

use std::ffi::OsStr;
use std::io;
use std::path::Path;

use futures::StreamExt;
use inotify::{EventStream, Inotify, WatchMask};
use tracing::warn;

/// The bridges whose management socket appears in one run directory.
#[derive(Debug)]
pub struct BridgeStarts {
    events: EventStream<[u8; 1024]>,
}

impl BridgeStarts {
    /// Watches `rundir`. Fails if it cannot be watched (no such directory, no inotify).
    pub fn watch(rundir: &Path) -> io::Result<BridgeStarts> {
        let inotify = Inotify::init()?;
        inotify.watches().add(rundir, WatchMask::CREATE | WatchMask::MOVED_TO)?;
        Ok(BridgeStarts { events: inotify.into_event_stream([0; 1024])? })
    }

    /// Waits for the next bridge whose management socket is created; its name. `None` once
    /// the watch is gone (the directory was removed).
    pub async fn next(&mut self) -> Option<String> {
        loop {
            match self.events.next().await? {
                Ok(event) => {
                    if let Some(bridge) = event.name.as_deref().and_then(bridge_of_socket) {
                        return Some(bridge);
                    }
                }
                Err(e) => {
                    warn!(error = %e, "reading the OVS run directory's events failed");
                    return None;
                }
            }
        }
    }
}

/// `br-int.mgmt` → `br-int`; `None` for anything else in the run directory.
fn bridge_of_socket(name: &OsStr) -> Option<String> {
    let bridge = name.to_str()?.strip_suffix(".mgmt")?;
    (!bridge.is_empty()).then(|| bridge.to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_management_sockets_name_a_bridge() {
        assert_eq!(bridge_of_socket(OsStr::new("br-int.mgmt")).as_deref(), Some("br-int"));
        for other in ["br-int.snoop", "db.sock", "ovs-vswitchd.pid", ".mgmt", "br-int.mgmt~"] {
            assert_eq!(bridge_of_socket(OsStr::new(other)), None, "{other}");
        }
    }

    #[tokio::test]
    async fn a_socket_created_in_the_run_dir_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut starts = BridgeStarts::watch(dir.path()).unwrap();
        std::fs::write(dir.path().join("ovs-vswitchd.pid"), "1").unwrap();
        let _snoop = UnixListener::bind(dir.path().join("br-ex.snoop")).unwrap();
        let _mgmt = UnixListener::bind(dir.path().join("br-ex.mgmt")).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(60), starts.next()).await.unwrap();
        assert_eq!(next.as_deref(), Some("br-ex"));
    }

    #[test]
    fn a_missing_run_dir_cannot_be_watched() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        assert!(BridgeStarts::watch(&dir.path().join("missing")).is_err());
    }
}
