//! Running code inside a named network namespace without moving the process.
//!
//! `setns` changes only the calling thread, so the work runs on a thread that joins the
//! namespace first. Sockets keep the namespace they were created in, so a netlink or packet
//! socket opened there can be used from any tokio task afterwards. The thread enters the
//! caller's tokio runtime so such sockets can register with its reactor.
//!
//! The threads are a small pool that lives as long as the process, not one thread per call:
//! a takeover makes half a dozen such calls per router (the L2 hold read and release, a
//! sysctl, the sockets of the announcement and of the wait for forwarding), so a thousand
//! routers taking over at once created and tore down thousands of OS threads, each with its
//! own allocator arena. A pool thread goes back to its own namespace after each call:
//! holding on to a router's namespace would keep a deleted one alive.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

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
        let job: Job = Box::new(move || {
            let _entered = runtime.enter();
            let result = in_namespace(&path, work);
            let _ = tx.send(result);
        });
        pool()?.send(job).map_err(|_| io::Error::other("namespace threads are gone"))?;
        rx.await.map_err(|_| io::Error::other("namespace work panicked"))?
    }
}

/// Joins the namespace at `path` and runs `work` there; the pool thread returns home after.
fn in_namespace<T>(path: &Path, work: impl FnOnce() -> io::Result<T>) -> io::Result<(T, NetnsId)> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    Ok((work()?, NetnsId { dev: meta.dev(), ino: meta.ino() }))
}

type Job = Box<dyn FnOnce() + Send>;

/// Pool threads: enough that a call waiting in the kernel (a netlink exchange, a socket
/// close) does not stall the others on a small machine, few enough to cost nothing idle.
const THREADS: usize = 4;

thread_local! {
    /// The namespace a pool thread started in (the process's), to return to after a call.
    static HOME: File = File::open("/proc/thread-self/ns/net")
        .expect("every thread has a network namespace");
}

/// The queue of the pool's threads, started on first use.
fn pool() -> io::Result<&'static mpsc::Sender<Job>> {
    static POOL: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    if let Some(jobs) = POOL.get() {
        return Ok(jobs);
    }
    // Two first calls at once may both start threads: the loser's queue is dropped below,
    // which ends its threads.
    let (jobs, queue) = mpsc::channel::<Job>();
    let queue = Arc::new(Mutex::new(queue));
    for i in 0..THREADS {
        let queue = Arc::clone(&queue);
        std::thread::Builder::new().name(format!("netns-{i}")).spawn(move || {
            // Opened before the first call moves the thread elsewhere.
            HOME.with(|_| ());
            loop {
                // A poisoned lock only means another thread panicked while waiting.
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok(job) = next else { return };
                // A panic drops the job's reply channel, which reports it; the thread stays.
                let _ = catch_unwind(AssertUnwindSafe(job));
                if let Err(error) = HOME.with(|home| setns(home, CloneFlags::CLONE_NEWNET)) {
                    // Staying would keep the last namespace alive: end this thread instead.
                    tracing::error!(%error, "namespace thread cannot return home; ending it");
                    return;
                }
            }
        })?;
    }
    Ok(POOL.get_or_init(|| jobs))
}
