//! One rtnetlink connection per network namespace, opened inside it and reused.
//!
//! rtnetlink has no notion of namespaces: a netlink socket talks to the namespace it was
//! created in. So the socket is created on a thread that joined the namespace
//! ([`Netns::run`]) and its connection future then runs as an ordinary tokio task. Opening
//! costs a thread, so connections are cached; an entry is dropped and re-opened when the
//! namespace behind the name is a different instance (deleted and re-created: the old
//! socket would keep talking to — and keeping alive — the dead namespace) or when its
//! connection task has ended.
//!
//! The kernel runs at most one dump per netlink socket (a second gets EBUSY, and parallel
//! dumps can overflow the receive buffer: ENOBUFS), while the reconcile loop observes
//! routers concurrently. Dumps on a connection are therefore serialized with
//! [`Conn::lock_dump`]; plain requests are answered synchronously by the kernel and need no
//! lock.

use std::collections::HashMap;
use std::io;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use hagw_core::Error;
use rtnetlink::Handle;
use tokio::task::JoinHandle;
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

/// A live connection into one namespace instance.
struct Entry {
    id: NetnsId,
    conn: Conn,
    task: JoinHandle<()>,
}

impl Drop for Entry {
    /// Ending the task closes the socket, which releases the namespace reference it held.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Cached rtnetlink connections keyed by namespace name.
#[derive(Default)]
pub struct ConnectionCache {
    entries: Mutex<HashMap<Netns, Entry>>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Netns, Entry>> {
        // A panic while holding the lock cannot leave the map inconsistent (every update is
        // a single insert or remove), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
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
        let task = tokio::spawn(connection.instrument(span));
        debug!(netns = netns.name(), "opened netlink connection");
        let conn = Conn { handle, dumps: Arc::default() };
        entries.insert(netns.clone(), Entry { id, conn: conn.clone(), task });
        Ok(conn)
    }

    /// The cached handle if it still belongs to namespace instance `current` and its
    /// connection is alive; otherwise the stale entry is dropped.
    fn cached(&self, netns: &Netns, current: NetnsId) -> Option<Conn> {
        let mut entries = self.lock();
        let entry = entries.get(netns)?;
        if entry.id == current && !entry.task.is_finished() {
            return Some(entry.conn.clone());
        }
        let reason =
            if entry.id != current { "namespace was re-created" } else { "connection ended" };
        info!(netns = netns.name(), reason, "reopening netlink connection");
        entries.remove(netns);
        None
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
