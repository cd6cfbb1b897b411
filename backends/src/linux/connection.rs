//! One rtnetlink connection per network namespace, opened inside it and reused.
//!
//! rtnetlink has no notion of namespaces: a netlink socket talks to the namespace it was
//! created in. So the socket is created on a thread that joined the namespace
//! ([`Netns::run`]) and its connection future then runs as an ordinary tokio task. Opening
//! costs a trip to that thread, so connections are cached; an entry is dropped and re-opened
//! when the namespace behind the name is a different instance (deleted and re-created: the
//! old socket would keep talking to — and keeping alive — the dead namespace) or when its
//! connection task has ended.
//!
//! A connection closes itself after [`IDLE`] without use, and its entry leaves the cache with
//! it: each holds a 64 KiB read and an 8 KiB write buffer (netlink-proto's), and a thousand
//! namespaces that are only looked at by the periodic resync would otherwise keep a thousand
//! of them resident for nothing. The entry itself (the ended task's allocation, the request
//! channel) was another kilobyte per namespace, kept until the namespace's next pass.
//!
//! The kernel runs at most one dump per netlink socket (a second gets EBUSY, and parallel
//! dumps can overflow the receive buffer: ENOBUFS), while the reconcile loop observes
//! routers concurrently. Dumps on a connection are therefore serialized with
//! [`Conn::lock_dump`]; plain requests are answered synchronously by the kernel and need no
//! lock.

use std::collections::HashMap;
use std::io;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hagw_core::Error;
use rtnetlink::Handle;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span};

use super::error::{Target, from_io, from_netlink, is_connection_lost};
use crate::netns::{Netns, NetnsId};

/// A connection into one namespace: an rtnetlink [`Handle`] (through `Deref`) plus the
/// lock that keeps its dumps one at a time.
#[derive(Debug, Clone)]
pub struct Conn {
    handle: Handle,
    dumps: Arc<tokio::sync::Mutex<()>>,
}

impl Conn {
    /// Hold the returned guard until a dump's stream has ended.
    pub async fn lock_dump(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.dumps.lock().await
    }
}

impl Deref for Conn {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        &self.handle
    }
}

/// How long an unused connection stays open: longer than any pass between two of its
/// requests, shorter than the resync interval, so a burst of passes shares one connection
/// and an idle router holds none.
pub const IDLE: Duration = Duration::from_secs(10);

/// A live connection into one namespace instance.
struct Entry {
    id: NetnsId,
    /// Tells this connection from a later one to the same namespace, for [`Closed`].
    serial: u64,
    conn: Conn,
    task: JoinHandle<()>,
    /// When [`ConnectionCache::handle`] last handed it out; its task ends [`IDLE`] after.
    used: Arc<Mutex<Instant>>,
}

impl Drop for Entry {
    /// Ending the task closes the socket, which releases the namespace reference it held.
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Entries = Mutex<HashMap<Netns, Entry>>;

/// Cached rtnetlink connections keyed by namespace name.
pub struct ConnectionCache {
    entries: Arc<Entries>,
    /// How long an unused connection stays open ([`IDLE`]).
    idle: Duration,
    next_serial: AtomicU64,
}

impl Default for ConnectionCache {
    fn default() -> Self {
        Self::with_idle(IDLE)
    }
}

impl std::fmt::Debug for ConnectionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.lock().keys().map(|n| n.name().to_string()).collect();
        f.debug_struct("ConnectionCache").field("namespaces", &names).finish()
    }
}

impl ConnectionCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache whose connections close after `idle` without use instead of [`IDLE`].
    pub fn with_idle(idle: Duration) -> Self {
        Self { entries: Arc::default(), idle, next_serial: AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Netns, Entry>> {
        lock(&self.entries)
    }

    /// A handle talking to the current instance of `netns`, opening a connection if there is
    /// none or the cached one is stale. A missing namespace is a transient error: the L3
    /// agent creates namespaces on its own schedule.
    pub async fn handle(&self, netns: &Netns) -> Result<Conn, Error> {
        const OP: &str = "open netlink connection";
        let target = Target::netns(netns.name());
        let current = match netns.id() {
            Ok(id) => id,
            Err(e) => {
                if self.lock().remove(netns).is_some() {
                    info!(netns = netns.name(), "namespace gone, dropped its netlink connection");
                }
                return Err(if e.kind() == io::ErrorKind::NotFound {
                    Error::transient(OP, target, "namespace does not exist")
                } else {
                    from_io(OP, target, e)
                });
            }
        };
        if let Some(conn) = self.cached(netns, current) {
            return Ok(conn);
        }

        let (result, id) = netns
            // Unsolicited messages only arrive on multicast connections; this is not one.
            .run(|| rtnetlink::new_connection().map(|(conn, handle, _)| (conn, handle)))
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::transient(OP, target, "namespace does not exist"),
                _ => from_io(OP, target, e),
            })?;
        let (connection, handle) = result;
        let mut entries = self.lock();
        // Another task may have opened one for the same instance meanwhile: use that one and
        // let ours close (replacing it would kill the connection its users hold).
        if let Some(existing) = entries.get(netns)
            && existing.id == id
            && !existing.task.is_finished()
        {
            return Ok(existing.conn.clone());
        }
        let span = info_span!("netlink", netns = netns.name());
        let used = Arc::new(Mutex::new(Instant::now()));
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let closed =
            Closed { entries: Arc::downgrade(&self.entries), netns: netns.clone(), serial };
        let task = tokio::spawn(
            until_idle(connection, Arc::clone(&used), self.idle, closed).instrument(span),
        );
        debug!(netns = netns.name(), "opened netlink connection");
        let conn = Conn { handle, dumps: Arc::default() };
        entries.insert(netns.clone(), Entry { id, serial, conn: conn.clone(), task, used });
        Ok(conn)
    }

    /// The cached handle if it still belongs to namespace instance `current` and its
    /// connection is alive; otherwise the stale entry is dropped.
    fn cached(&self, netns: &Netns, current: NetnsId) -> Option<Conn> {
        let mut entries = self.lock();
        let entry = entries.get(netns)?;
        if entry.id == current && !entry.task.is_finished() {
            *last_use(&entry.used) = Instant::now();
            return Some(entry.conn.clone());
        }
        if entry.id != current {
            info!(netns = netns.name(), "namespace was re-created, reopening netlink connection");
        }
        // An ended connection has (nearly always) removed itself already; see [`Closed`].
        entries.remove(netns);
        None
    }

    /// Closes the connection for `netns` now unless a request is using it (a caller holds
    /// its [`Conn`]): for a namespace whose routers rest until their next resync, which
    /// would otherwise keep it open for [`IDLE`] more.
    pub fn close_unused(&self, netns: &Netns) {
        let mut entries = self.lock();
        // The entry's own `Conn` is one reference to `dumps`; every caller's is another.
        if entries.get(netns).is_some_and(|e| Arc::strong_count(&e.conn.dumps) == 1) {
            entries.remove(netns);
            debug!(netns = netns.name(), "closed the netlink connection of resting routers");
        }
    }

    /// Drops the connection for `netns`, if any.
    pub fn forget(&self, netns: &Netns) {
        self.lock().remove(netns);
    }

    /// The namespace instance the cached connection for `netns` talks to, if one is cached.
    pub fn cached_id(&self, netns: &Netns) -> Option<NetnsId> {
        self.lock().get(netns).map(|e| e.id)
    }

    /// Converts a failed request into an error, dropping the connection when the failure
    /// means it is dead, so the retry opens a fresh one.
    pub fn request_failed(
        &self,
        netns: &Netns,
        op: &str,
        target: Target<'_>,
        err: &rtnetlink::Error,
    ) -> Error {
        if is_connection_lost(err) {
            info!(netns = netns.name(), "netlink connection lost");
            self.forget(netns);
        }
        from_netlink(op, target, err)
    }
}

/// Removes a connection's entry from its cache when the connection ends, unless a later
/// connection to the namespace has replaced it meanwhile.
struct Closed {
    entries: Weak<Entries>,
    netns: Netns,
    serial: u64,
}

impl Closed {
    fn remove(self) {
        let Some(entries) = self.entries.upgrade() else { return };
        let mut entries = lock(&entries);
        if entries.get(&self.netns).is_some_and(|e| e.serial == self.serial) {
            // Dropping the entry aborts this very task, which is ending anyway.
            entries.remove(&self.netns);
        }
    }
}

/// Runs `connection` until it ends or has not been handed out for `idle`; ending the task
/// closes the socket, frees its buffers and takes its entry out of the cache.
async fn until_idle(
    connection: impl Future<Output = ()>,
    used: Arc<Mutex<Instant>>,
    idle: Duration,
    closed: Closed,
) {
    let unused = async {
        loop {
            let due = *last_use(&used) + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    };
    tokio::select! {
        () = connection => info!(netns = closed.netns.name(), "netlink connection ended"),
        () = unused => debug!(netns = closed.netns.name(), "netlink connection closed while idle"),
    }
    closed.remove();
}

fn lock(entries: &Entries) -> std::sync::MutexGuard<'_, HashMap<Netns, Entry>> {
    // A panic while holding the lock cannot leave the map inconsistent (every update is a
    // single insert or remove), so a poisoned lock is still usable.
    entries.lock().unwrap_or_else(|p| p.into_inner())
}

/// A poisoned lock still holds a valid instant.
fn last_use(used: &Mutex<Instant>) -> std::sync::MutexGuard<'_, Instant> {
    used.lock().unwrap_or_else(|p| p.into_inner())
}
