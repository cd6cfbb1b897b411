//! Running code inside a named network namespace without moving the process.
//!
//! `setns` changes only the calling thread, so the work runs on a short-lived OS thread that
//! joins the namespace first. Sockets keep the namespace they were created in, so a netlink
//! or packet socket opened there can be used from any tokio task afterwards. The thread
//! enters the tokio runtime so such sockets can register with its reactor.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::sched::{CloneFlags, setns};

/// Where `ip netns add` puts named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// A named network namespace (`/run/netns/NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Netns {
    name: String,
}

/// Identity of a namespace instance: a namespace deleted and re-created under the same name
/// gets a new inode, and sockets opened in the old one must not be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

impl Netns {
    pub fn named(name: impl Into<String>) -> Self {
        Netns { name: name.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.name)
    }

    /// The current identity of the namespace, or `NotFound` if it does not exist.
    pub fn id(&self) -> io::Result<NetnsId> {
        let meta = std::fs::metadata(self.path())?;
        Ok(NetnsId { dev: meta.dev(), ino: meta.ino() })
    }

    /// Whether the name is already a namespace and not just the empty file `ip netns add`
    /// creates a moment before it bind-mounts the namespace onto it (opening that file
    /// works, but joining it fails with `EINVAL`). The mount gives it nsfs's device.
    pub fn is_mounted(&self) -> bool {
        let dir = std::fs::metadata(NETNS_RUN_DIR);
        let file = std::fs::metadata(self.path());
        matches!((dir, file), (Ok(dir), Ok(file)) if dir.dev() != file.dev())
    }

    /// Runs `work` on a thread that has joined this namespace, inside the current tokio
    /// runtime, and returns its result together with the namespace identity it ran in.
    pub async fn run<T, F>(&self, work: F) -> io::Result<(T, NetnsId)>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let path = self.path();
        let runtime = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name(format!("netns-{}", self.name)).spawn(move || {
            let _entered = runtime.enter();
            let result = (|| {
                let file = File::open(&path)?;
                let meta = file.metadata()?;
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok((work()?, NetnsId { dev: meta.dev(), ino: meta.ino() }))
            })();
            let _ = tx.send(result);
        })?;
        rx.await.map_err(|_| io::Error::other("namespace worker thread panicked"))?
    }
}
