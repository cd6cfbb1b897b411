//! Open IPv6 sysctl files of gateway devices, kept between passes.
//!
//! Opening `/proc/sys/net/...` walks a path whose `net` component has one dentry per network
//! namespace on the machine, all in one hash chain: each open compares against every
//! namespace (`proc_sys_compare`), so with a thousand routers every sysctl write of a
//! takeover cost a thousand comparisons, on a namespace thread (two `setns` calls and a
//! queue shared with every other router). An open sysctl file needs neither: it is bound to
//! its namespace's table and device, and is read and written from any thread. So a file is
//! opened once, on a thread inside the namespace, and kept: one per router (the callers keep
//! only `forwarding`, which every role change writes and every announcement reads).
//!
//! Keeping it does not keep a deleted namespace (or device) alive: the file refers to the
//! sysctl table, which the kernel unregisters when the device or namespace goes; reads and
//! writes then fail with `ENOENT`, and the file is dropped and opened again. The files of a
//! namespace instance that is gone are closed within [`SWEEP`] (a router removed from the
//! configuration never asks again).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hagw_core::observed::Ipv6Sysctl;
use tracing::debug;

use crate::netns::{Netns, NetnsId};

/// How often the files of namespaces that are gone (or re-created) are closed.
pub const SWEEP: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    netns: Netns,
    device: String,
    sysctl: Ipv6Sysctl,
}

#[derive(Debug)]
struct Entry {
    id: NetnsId,
    file: Arc<File>,
}

/// See the module documentation. Shared by the clones of a `LinuxNet`.
#[derive(Debug, Default)]
pub struct SysctlFiles {
    entries: Mutex<HashMap<Key, Entry>>,
    sweeping: Mutex<bool>,
}

impl SysctlFiles {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        // Every update is a single insert or remove: a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open file of `sysctl` of `device` in the current instance of `netns` (read and
    /// write), opening it at `path` inside the namespace if it is not open yet. An error is
    /// the namespace's (missing) or the open's (no such device, a read-only `/proc/sys`); the
    /// caller then takes the path instead, as without this cache.
    pub async fn file(
        self: &Arc<Self>,
        netns: &Netns,
        device: &str,
        sysctl: Ipv6Sysctl,
        path: PathBuf,
    ) -> io::Result<Arc<File>> {
        let current = netns.id()?;
        let key = Key { netns: netns.clone(), device: device.to_string(), sysctl };
        if let Some(entry) = self.lock().get(&key).filter(|e| e.id == current) {
            return Ok(Arc::clone(&entry.file));
        }
        let (file, id) =
            netns.run(move || OpenOptions::new().read(true).write(true).open(&path)).await?;
        let file = Arc::new(file);
        self.lock().insert(key, Entry { id, file: Arc::clone(&file) });
        self.sweep_later();
        Ok(file)
    }

    /// Drops the file of `sysctl` of `device` in `netns`: it failed (its device was deleted).
    pub fn forget(&self, netns: &Netns, device: &str, sysctl: Ipv6Sysctl) {
        let key = Key { netns: netns.clone(), device: device.to_string(), sysctl };
        self.lock().remove(&key);
    }

    /// Drops every file in `netns`, which is gone.
    pub fn forget_netns(&self, netns: &Netns) {
        self.lock().retain(|key, _| key.netns != *netns);
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Starts the task that closes the files of namespace instances that are gone, unless it
    /// runs; it ends when no file is left.
    fn sweep_later(self: &Arc<Self>) {
        let mut sweeping = self.sweeping.lock().unwrap_or_else(|p| p.into_inner());
        if *sweeping {
            return;
        }
        *sweeping = true;
        let files = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP).await;
                let Some(files) = files.upgrade() else { return };
                if files.sweep() == 0 {
                    let mut sweeping = files.sweeping.lock().unwrap_or_else(|p| p.into_inner());
                    // Checked again under the flag: a file opened since is swept next round.
                    if files.is_empty() {
                        *sweeping = false;
                        return;
                    }
                }
            }
        });
    }

    /// Closes the files whose namespace instance is gone; returns how many are left.
    fn sweep(&self) -> usize {
        let namespaces: Vec<Netns> = {
            let entries = self.lock();
            let mut names: Vec<Netns> = entries.keys().map(|k| k.netns.clone()).collect();
            names.sort_by(|a, b| a.name().cmp(b.name()));
            names.dedup();
            names
        };
        // Outside the lock: a stat per namespace.
        let current: HashMap<Netns, Option<NetnsId>> =
            namespaces.into_iter().map(|n| (n.clone(), n.id().ok())).collect();
        let mut entries = self.lock();
        let before = entries.len();
        // A file opened meanwhile, in a namespace not looked at, stays until the next round.
        entries.retain(|key, entry| current.get(&key.netns).is_none_or(|id| *id == Some(entry.id)));
        if entries.len() < before {
            debug!(closed = before - entries.len(), "closed the sysctl files of namespaces gone");
        }
        entries.len()
    }
}
