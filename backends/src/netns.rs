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
//!
//! The queue has two lanes: work on a role change's critical path
//! ([`hagw_core::lane::is_urgent`]: a takeover's observation, release and announcement) is
//! served before everything else queued (verifications, resyncs), so a single takeover does
//! not wait for a thousand other routers' checks.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

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
        pool()?.submit(hagw_core::lane::is_urgent(), job);
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

/// The jobs waiting for a pool thread, in two lanes.
#[derive(Default)]
struct Lanes {
    urgent: VecDeque<Job>,
    normal: VecDeque<Job>,
}

/// Threads serving two queues: urgent jobs first, each lane in order.
struct Pool {
    lanes: Mutex<Lanes>,
    ready: Condvar,
}

impl Pool {
    fn new() -> Self {
        Pool { lanes: Mutex::default(), ready: Condvar::new() }
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        // A job runs outside the lock: a poisoned one still holds consistent queues.
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn submit(&self, urgent: bool, job: Job) {
        let mut lanes = self.lanes();
        match urgent {
            true => lanes.urgent.push_back(job),
            false => lanes.normal.push_back(job),
        }
        self.ready.notify_one();
    }

    /// The next job, urgent ones first; waits for one.
    fn next(&self) -> Job {
        let mut lanes = self.lanes();
        loop {
            if let Some(job) = lanes.urgent.pop_front().or_else(|| lanes.normal.pop_front()) {
                return job;
            }
            lanes = self.ready.wait(lanes).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Starts a thread serving the pool (`name`), returning to its own namespace after each
    /// job.
    fn spawn_thread(self: &Arc<Self>, name: String) -> io::Result<()> {
        let pool = Arc::clone(self);
        std::thread::Builder::new().name(name).spawn(move || {
            // Opened before the first call moves the thread elsewhere.
            HOME.with(|_| ());
            loop {
                // A panic drops the job's reply channel, which reports it; the thread stays.
                let _ = catch_unwind(AssertUnwindSafe(pool.next()));
                if let Err(error) = HOME.with(|home| setns(home, CloneFlags::CLONE_NEWNET)) {
                    // Staying would keep the last namespace alive: end this thread instead.
                    tracing::error!(%error, "namespace thread cannot return home; ending it");
                    return;
                }
            }
        })?;
        Ok(())
    }
}

/// The pool, its threads started on first use.
fn pool() -> io::Result<&'static Arc<Pool>> {
    static POOL: OnceLock<Arc<Pool>> = OnceLock::new();
    static STARTED: Mutex<bool> = Mutex::new(false);
    let pool = POOL.get_or_init(|| Arc::new(Pool::new()));
    let mut started = STARTED.lock().unwrap_or_else(|p| p.into_inner());
    if !*started {
        for i in 0..THREADS {
            pool.spawn_thread(format!("netns-{i}"))?;
        }
        *started = true;
    }
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// With the pool's one thread busy and resyncs queued, an urgent job (a takeover's) is
    /// served next, before every one of them; each lane keeps its order.
    #[test]
    fn urgent_jobs_are_served_before_the_queued_ones() {
        let pool = Arc::new(Pool::new());
        let (release, busy) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        pool.submit(
            false,
            Box::new(move || {
                started.send(()).unwrap();
                busy.recv().unwrap();
            }),
        );
        let served = Arc::new(Mutex::new(Vec::new()));
        let (done, finished) = mpsc::channel::<()>();
        let job = |name: String| -> Job {
            let (served, done) = (Arc::clone(&served), done.clone());
            Box::new(move || {
                served.lock().unwrap().push(name);
                done.send(()).unwrap();
            })
        };
        pool.spawn_thread("netns-test".into()).unwrap();
        running.recv().unwrap();
        for i in 0..100 {
            pool.submit(false, job(format!("resync {i}")));
        }
        pool.submit(true, job("takeover".into()));
        pool.submit(true, job("takeover, second step".into()));
        release.send(()).unwrap();
        for _ in 0..102 {
            finished.recv().unwrap();
        }
        let served = served.lock().unwrap();
        assert_eq!(served[..3], ["takeover", "takeover, second step", "resync 0"]);
        assert_eq!(served.last().unwrap(), "resync 99");
    }
}
