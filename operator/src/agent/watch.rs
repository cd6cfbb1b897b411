//! File-system notifications for the agent: Neutron's state files (rewritten in place, so
//! the directory is watched, not the file), `/run/netns` (router namespaces come and go),
//! and Neutron's `ha_confs` tree (routers added and removed).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// A change in a watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEvent {
    pub dir: PathBuf,
    /// The entry that changed, if the kernel named one.
    pub name: Option<OsString>,
    pub removed: bool,
}

/// Watches directories and forwards their events; add directories at any time.
pub struct DirWatcher {
    watches: inotify::Watches,
    /// Watched directories by descriptor, shared with the task that reads events.
    dirs: Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>>,
}

impl DirWatcher {
    /// Starts the watcher; events arrive on the returned channel.
    pub fn start() -> io::Result<(DirWatcher, mpsc::UnboundedReceiver<DirEvent>)> {
        let inotify = Inotify::init()?;
        let watches = inotify.watches();
        let shared: Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>> = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let dirs = Arc::clone(&shared);
        let mut stream = inotify.into_event_stream([0u8; 8192])?;
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(e) => e,
                    Err(e) => {
                        warn!(error = %e, "inotify read failed");
                        continue;
                    }
                };
                let Some(dir) = dirs.lock().expect("watch map").get(&event.wd).cloned() else {
                    continue;
                };
                let removed = event.mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM);
                debug!(dir = %dir.display(), name = ?event.name, ?event.mask, "directory event");
                if tx.send(DirEvent { dir, name: event.name, removed }).is_err() {
                    break;
                }
            }
        });
        Ok((DirWatcher { watches, dirs: shared }, rx))
    }

    /// Watches `dir` for entries created, rewritten, moved or deleted. Idempotent.
    pub fn watch(&mut self, dir: &Path) -> io::Result<()> {
        if self.dirs.lock().expect("watch map").values().any(|d| d == dir) {
            return Ok(());
        }
        let mask = WatchMask::CLOSE_WRITE
            | WatchMask::MODIFY
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM;
        let wd = self.watches.add(dir, mask)?;
        self.dirs.lock().expect("watch map").insert(wd, dir.to_owned());
        Ok(())
    }
}
