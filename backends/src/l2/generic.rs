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

use std::io;
use std::os::fd::OwnedFd;

use hagw_core::Error;
use hagw_core::model::RouterSpec;
use hagw_core::observed::{HoldState, L2State};
use nix::errno::Errno;
use tracing::{debug, info, instrument};

use super::nftables::socket::Socket;
use super::nftables::{self, Family, HoldSpec, Key, NameMatch, NftError, wire};
use super::target;
use crate::netns::Netns;

/// The two tables of a hold (ARP has its own family): every IPv4 and IPv6 packet the kernel
/// sends out of a held device (MLD reports, DAD and other neighbour solicitations, router
/// solicitations, IGMP, forwarded traffic) passes the `inet` postrouting hook
/// (`NF_INET_POST_ROUTING`), every ARP packet the ARP output hook (`NF_ARP_OUT`). Frames
/// written to packet sockets (a primary's gratuitous ARPs, from keepalived or hagw) do not
/// pass netfilter.
pub const SPECS: [HoldSpec; 2] = [
    HoldSpec {
        family: Family::Inet,
        set: "held",
        hook: 4,
        name_match: NameMatch::Output,
        counter: false,
    },
    HoldSpec {
        family: Family::Arp,
        set: "held",
        hook: 1,
        name_match: NameMatch::Output,
        counter: false,
    },
];

/// What the kernel needs for these tables.
const KERNEL_CONFIG: &str = "CONFIG_NF_TABLES_INET and CONFIG_NF_TABLES_ARP";

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
        let hold = match netns.run(move || Ok(held_in(&key))).await {
            Ok((Ok(held), _)) if held.iter().any(|h| *h) => HoldState::Held,
            Ok((Ok(_), _)) => HoldState::Released,
            // No nf_tables, or not allowed to read it (no CAP_NET_ADMIN: then every other
            // step fails too, with its own error): guarded as if this hold did not exist.
            Ok((Err(e), _)) if e.is_unsupported() || e.kernel_errno() == Some(Errno::EPERM) => {
                debug!(error = %e, "cannot read the router-namespace hold");
                HoldState::Unsupported
            }
            Ok((Err(e), _)) => return Err(nft_error("observe l2", spec, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HoldState::Unknown,
            Err(e) => return Err(Error::transient("observe l2", target(spec), e)),
        };
        Ok(L2State { hold, wired: true })
    }

    /// Adds the gateway's name to both sets, building the tables in the same batch.
    #[instrument(level = "debug", skip_all, fields(netns = %spec.namespace, device = %spec.gateway_device))]
    pub async fn hold(&self, spec: &RouterSpec) -> Result<(), Error> {
        let key = key(spec, "hold l2")?;
        let netns = Netns::named(&spec.namespace);
        let held = netns.run(move || {
            Ok(commit(|batch| {
                for spec in &SPECS {
                    batch.ensure(spec);
                    batch.add_elements(spec, &[key]);
                }
            }))
        });
        match held.await {
            Ok((Ok(()), _)) => {}
            Ok((Err(e), _)) => return Err(nft_error("hold l2", spec, e)),
            Err(e) => return Err(Error::transient("hold l2", target(spec), e)),
        }
        info!(netns = %spec.namespace, device = %spec.gateway_device, "held in the router namespace");
        Ok(())
    }

    /// Deletes the gateway's name from both sets. A name that is not there (never held, the
    /// namespace or its tables gone) is released already.
    #[instrument(level = "debug", skip_all, fields(netns = %spec.namespace, device = %spec.gateway_device))]
    pub async fn release(&self, spec: &RouterSpec) -> Result<(), Error> {
        let key = key(spec, "release l2")?;
        let netns = Netns::named(&spec.namespace);
        let released = netns.run(move || Ok(release_held(&key)));
        match released.await {
            Ok((Ok(()), _)) => {}
            Ok((Err(e), _)) => return Err(nft_error("release l2", spec, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => debug!("namespace gone"),
            Err(e) => return Err(Error::transient("release l2", target(spec), e)),
        }
        info!(netns = %spec.namespace, device = %spec.gateway_device, "released in the router namespace");
        Ok(())
    }
}

fn key(spec: &RouterSpec, op: &str) -> Result<Key, Error> {
    nftables::ifname_key(&spec.gateway_device).ok_or_else(|| {
        Error::permanent(op, target(spec), "the gateway device name is not an interface name")
    })
}

fn nft_error(op: &str, spec: &RouterSpec, e: NftError) -> Error {
    let target = format!("{} (nft tables inet/arp hagw in the router namespace)", target(spec));
    e.into_error(op, target, KERNEL_CONFIG)
}

/// Whether `key` is in each table's set ([`SPECS`] order).
fn held_in(key: &Key) -> Result<[bool; 2], NftError> {
    let mut socket = Socket::open()?;
    let mut held = [false; 2];
    for (held, spec) in held.iter_mut().zip(&SPECS) {
        let attrs = wire::element_attrs(spec, &[*key]);
        *held = socket.get("get element", wire::NFT_MSG_GETSETELEM, spec, attrs)?.is_some();
    }
    Ok(held)
}

/// Deletes `key` from the sets that hold it.
fn release_held(key: &Key) -> Result<(), NftError> {
    let held = held_in(key)?;
    if !held.iter().any(|h| *h) {
        return Ok(());
    }
    match commit(|batch| {
        for (spec, _) in SPECS.iter().zip(held).filter(|(_, h)| *h) {
            batch.delete_elements(spec, &[*key]);
        }
    }) {
        // Deleted by someone else between the read and the write: released either way.
        Err(e) if e.kernel_errno() == Some(Errno::ENOENT) => Ok(()),
        other => other,
    }
}

/// Commits one batch on a socket of its own (in the router namespace).
fn commit(build: impl FnOnce(&mut wire::Batch)) -> Result<(), NftError> {
    let mut socket = Socket::open()?;
    let result = socket.commit(build);
    close_later(socket.into_fd());
    result
}

/// Closes a socket that has committed, off the caller's path: the close waits for
/// nf_tables' deferred destruction of what the commit removed (an RCU grace period, 10–20 ms
/// measured), which must not delay a takeover's announcement.
fn close_later(fd: OwnedFd) {
    // If no thread can be started, the closure (and the socket) is dropped here instead.
    let _ = std::thread::Builder::new().name("nft-close".into()).spawn(move || drop(fd));
}
