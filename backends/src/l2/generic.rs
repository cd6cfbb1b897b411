//! The generic backend: for ports whose switch side hagw knows nothing about. It cannot hold
//! the switch port, so it holds the device inside the router namespace instead: netfilter
//! drops everything the kernel sends out of a device of that *name* ([`nftables`]), which
//! works before the device exists. That closes the window in which an L3 agent creates the
//! gateway device and raises it before hagw's first pass has seen it (or after hagw itself
//! turned IPv6 forwarding off on the down link, which queues an MLDv2 report the kernel sends
//! at the next link up): link-down alone cannot be in place before the device is.
//!
//! The port always counts as wired (there is nothing to wait for). A kernel without
//! nf_tables (or its `inet`/`arp` families) reads as [`HoldState::Unsupported`], and the planner
//! guards a standby with link-down alone, as before this hold existed.

pub mod nftables;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use hagw_core::Error;
use hagw_core::model::RouterSpec;
use hagw_core::observed::{HoldState, L2State};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use tracing::{debug, info, instrument};

use self::nftables::{Batch, Family, IFNAME_LEN, Reply};
use super::target;
use crate::netns::Netns;

/// How long one exchange with the kernel may take (it answers at once; this bounds a bug).
const TIMEOUT: Duration = Duration::from_secs(5);

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenericL2;

impl GenericL2 {
    /// Held iff the gateway's name is in a held set (either family: each keeps the port's
    /// frames of its kind off the wire, so a partial hold is released on a primary and not
    /// mistaken for exposure on a standby). A missing namespace has nothing to hold.
    #[instrument(level = "debug", skip_all, fields(netns = %spec.namespace, device = %spec.gateway_device))]
    pub async fn observe(&self, spec: &RouterSpec) -> Result<L2State, Error> {
        let key = key(spec, "observe l2")?;
        let netns = Netns::named(&spec.namespace);
        if !netns.is_mounted() {
            return Ok(L2State { hold: HoldState::Unknown, wired: true });
        }
        let hold = match netns.run(move || held_in(&key)).await {
            Ok((held, _)) if held.iter().any(|h| *h) => HoldState::Held,
            Ok(_) => HoldState::Released,
            Err(e) if e.kind() == io::ErrorKind::NotFound => HoldState::Unknown,
            // No nf_tables, or not allowed to read it (no CAP_NET_ADMIN: then every other
            // step fails too, with its own error): guarded as if this hold did not exist.
            Err(e) if unsupported(&e) || e.raw_os_error() == Some(Errno::EPERM as i32) => {
                debug!(error = %e, "cannot read the router-namespace hold");
                HoldState::Unsupported
            }
            Err(e) => return Err(Error::transient("observe l2", target(spec), e)),
        };
        Ok(L2State { hold, wired: true })
    }

    /// Adds the gateway's name to both sets, building the tables in the same batch.
    #[instrument(level = "debug", skip_all, fields(netns = %spec.namespace, device = %spec.gateway_device))]
    pub async fn hold(&self, spec: &RouterSpec) -> Result<(), Error> {
        let key = key(spec, "hold l2")?;
        let netns = Netns::named(&spec.namespace);
        netns
            .run(move || commit(&nftables::hold_batch(&key)))
            .await
            .map_err(|e| batch_error("hold l2", spec, e))?;
        info!(netns = %spec.namespace, device = %spec.gateway_device, "held in the router namespace");
        Ok(())
    }

    /// Deletes the gateway's name from both sets. A name that is not there (never held, the
    /// namespace or its tables gone) is released already.
    #[instrument(level = "debug", skip_all, fields(netns = %spec.namespace, device = %spec.gateway_device))]
    pub async fn release(&self, spec: &RouterSpec) -> Result<(), Error> {
        let key = key(spec, "release l2")?;
        let netns = Netns::named(&spec.namespace);
        let released = netns.run(move || {
            let held = held_in(&key)?;
            let families: Vec<Family> =
                Family::ALL.into_iter().zip(held).filter(|(_, h)| *h).map(|(f, _)| f).collect();
            if families.is_empty() {
                return Ok(());
            }
            match commit(&nftables::release_batch(&families, &key)) {
                // Deleted by someone else between the read and the write: released either way.
                Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => Ok(()),
                other => other,
            }
        });
        match released.await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => debug!("namespace gone"),
            Err(e) => return Err(batch_error("release l2", spec, e)),
        }
        info!(netns = %spec.namespace, device = %spec.gateway_device, "released in the router namespace");
        Ok(())
    }
}

fn key(spec: &RouterSpec, op: &str) -> Result<[u8; IFNAME_LEN], Error> {
    nftables::ifname_key(&spec.gateway_device).ok_or_else(|| {
        Error::permanent(op, target(spec), "the gateway device name is not an interface name")
    })
}

/// No nf_tables, or not this family, in the kernel.
fn unsupported(e: &io::Error) -> bool {
    [Errno::EPROTONOSUPPORT, Errno::EAFNOSUPPORT, Errno::EOPNOTSUPP]
        .iter()
        .any(|n| e.raw_os_error() == Some(*n as i32))
}

fn batch_error(op: &str, spec: &RouterSpec, e: io::Error) -> Error {
    let errno = e.raw_os_error().map(Errno::from_raw);
    let what = "nft tables inet/arp hagw in the router namespace";
    let target = format!("{} ({what})", target(spec));
    match errno {
        Some(Errno::EPERM) => Error::permanent(op, target, format!("{e} (needs CAP_NET_ADMIN)")),
        Some(Errno::EEXIST) => {
            Error::permanent(op, target, format!("{e} (an object of ours has another definition)"))
        }
        _ if unsupported(&e) => Error::permanent(
            op,
            target,
            format!("{e} (the kernel needs CONFIG_NF_TABLES_INET and CONFIG_NF_TABLES_ARP)"),
        ),
        _ => Error::transient(op, target, e),
    }
}

/// A netfilter netlink socket in the calling thread's namespace.
fn open() -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    let timeout = TimeVal::new(TIMEOUT.as_secs() as _, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
    Ok(fd)
}

fn send(fd: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    sendto(fd.as_raw_fd(), bytes, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
    Ok(())
}

/// Reads replies until `done` has seen what it waits for.
fn read_until(fd: &OwnedFd, mut done: impl FnMut(Reply) -> io::Result<bool>) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        for reply in nftables::parse_replies(&buf[..n])? {
            if done(reply)? {
                return Ok(());
            }
        }
    }
}

/// Whether `key` is in each family's set ([`Family::ALL`] order).
fn held_in(key: &[u8; IFNAME_LEN]) -> io::Result<[bool; 2]> {
    let fd = open()?;
    let mut held = [false; 2];
    let mut answered = [false; 2];
    for (i, family) in Family::ALL.into_iter().enumerate() {
        send(&fd, &nftables::get_element(family, key, i as u32 + 1))?;
    }
    read_until(&fd, |reply| {
        let (seq, present) = match reply {
            Reply::Message { kind, seq } if kind == nftables::new_set_elem_kind() => (seq, true),
            Reply::Message { .. } => return Ok(false),
            Reply::Ack { seq, errno: 0 } => (seq, false),
            Reply::Ack { seq, errno } if errno == Errno::ENOENT as i32 => (seq, false),
            Reply::Ack { errno, .. } => return Err(io::Error::from_raw_os_error(errno)),
        };
        if let Some(i) = (seq as usize).checked_sub(1).filter(|i| *i < 2) {
            held[i] |= present;
            answered[i] = true;
        }
        Ok(answered.iter().all(|a| *a))
    })?;
    Ok(held)
}

/// Sends a batch in one datagram and waits for every acknowledgement; the first error is
/// the batch's (the kernel then aborts the whole batch).
fn commit(batch: &Batch) -> io::Result<()> {
    let fd = open()?;
    send(&fd, &batch.bytes)?;
    let mut pending = batch.acked.clone();
    let result = read_until(&fd, |reply| {
        if let Reply::Ack { seq, errno } = reply {
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(errno));
            }
            pending.retain(|s| *s != seq);
        }
        Ok(pending.is_empty())
    });
    close_later(fd);
    result
}

/// Closes a socket that has committed, off the caller's path: the close waits for
/// nf_tables' deferred destruction of what the commit removed (an RCU grace period, 10–20 ms
/// measured), which must not delay a takeover's announcement.
fn close_later(fd: OwnedFd) {
    // If no thread can be started, the closure (and the socket) is dropped here instead.
    let _ = std::thread::Builder::new().name("nft-close".into()).spawn(move || drop(fd));
}
