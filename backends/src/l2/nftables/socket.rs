//! The exchanges with nf_tables on one `NETLINK_NETFILTER` socket: a GET, a dump, a batch
//! commit. The socket belongs to the network namespace of the thread that opened it, for
//! its whole life, whichever thread uses it later.
//!
//! The exchanges are blocking calls that do not wait: nfnetlink handles a request, a batch
//! included, inside the `sendto` (replies are queued before it returns), and builds each
//! further part of a dump inside the `recv` that asks for it. So a reply is always there to
//! read; the receive timeout only bounds a bug, and async callers may call them directly.
//! After any error the caller drops the socket (a refused batch may leave acknowledgements
//! of its other messages queued): the next exchange opens a fresh one.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::wire::{self, Attrs, Batch, Reply};
use super::{HoldSpec, NftError};

/// How long a reply may take (the kernel answers at once; this bounds a bug).
const TIMEOUT: Duration = Duration::from_secs(5);
/// A datagram: a dump part is at most 32 KiB; an error quotes the refused message, whose
/// elements are at most 1,024 × 28 bytes.
const BUFFER: usize = 128 * 1024;

/// An nf_tables object read back: the attributes of a `NFT_MSG_NEW*` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The ruleset generation it was read in (low 16 bits): objects read in the same
    /// generation belong to one consistent ruleset.
    pub generation: u16,
    pub attrs: Vec<u8>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    next_seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Socket, NftError> {
        let failed = |errno| NftError::Socket { request: "open", errno };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(failed)?;
        let timeout = TimeVal::new(TIMEOUT.as_secs() as _, 0);
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(failed)?;
        Ok(Socket { fd, next_seq: 1, buf: vec![0; BUFFER] })
    }

    /// The socket itself, for a caller that closes it off its own path.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    fn send(&self, request: &'static str, bytes: &[u8]) -> Result<(), NftError> {
        sendto(self.fd.as_raw_fd(), bytes, &NetlinkAddr::new(0, 0), MsgFlags::empty())
            .map_err(|errno| NftError::Socket { request, errno })?;
        Ok(())
    }

    /// Reads replies until `done` has seen what it waits for.
    fn read_until(
        &mut self,
        request: &'static str,
        mut done: impl FnMut(Reply<'_>) -> Result<bool, NftError>,
    ) -> Result<(), NftError> {
        loop {
            // MSG_TRUNC: the datagram's real length, so a cut one is seen, not parsed.
            let n = recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_TRUNC)
                .map_err(|errno| NftError::Socket { request, errno })?;
            if n > self.buf.len() {
                let detail = format!("a {n}-byte datagram, more than the {BUFFER}-byte buffer");
                return Err(NftError::Malformed { request, detail });
            }
            let replies = wire::parse_replies(&self.buf[..n])
                .map_err(|detail| NftError::Malformed { request, detail })?;
            for reply in replies {
                if done(reply)? {
                    return Ok(());
                }
            }
        }
    }

    fn take_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        seq
    }

    /// One object: `cmd` (`NFT_MSG_GET*`) for what `attrs` name. `None` when it does not
    /// exist (ENOENT: the object, or the table or set it would be in).
    pub fn get(
        &mut self,
        request: &'static str,
        cmd: u8,
        spec: &HoldSpec,
        attrs: Attrs,
    ) -> Result<Option<Object>, NftError> {
        let seq = self.take_seq();
        self.send(request, &wire::request(cmd, spec, false, seq, attrs))?;
        let mut found = None;
        self.read_until(request, |reply| match reply {
            Reply::Object { seq: s, generation, attrs, .. } if s == seq => {
                if found.is_some() {
                    let detail = "two objects for one GET".to_owned();
                    return Err(NftError::Malformed { request, detail });
                }
                found = Some(Object { generation, attrs: attrs.to_vec() });
                Ok(false)
            }
            Reply::Ack { seq: s, errno: 0 } if s == seq => Ok(true),
            Reply::Ack { seq: s, errno } if s == seq && errno == Errno::ENOENT as i32 => {
                found = None;
                Ok(true)
            }
            Reply::Ack { seq: s, errno } if s == seq => {
                Err(NftError::Kernel { request, errno: Errno::from_raw(errno) })
            }
            other => Err(unexpected(request, seq, &other)),
        })?;
        Ok(found)
    }

    /// Every object `cmd` dumps for what `attrs` name (a table, a chain, a set).
    pub fn dump(
        &mut self,
        request: &'static str,
        cmd: u8,
        spec: &HoldSpec,
        attrs: Attrs,
    ) -> Result<Vec<Object>, NftError> {
        let seq = self.take_seq();
        self.send(request, &wire::request(cmd, spec, true, seq, attrs))?;
        let mut found = Vec::new();
        self.read_until(request, |reply| match reply {
            Reply::Object { seq: s, generation, attrs, .. } if s == seq => {
                found.push(Object { generation, attrs: attrs.to_vec() });
                Ok(false)
            }
            Reply::Done { seq: s, errno: 0 } if s == seq => Ok(true),
            Reply::Done { seq: s, errno } | Reply::Ack { seq: s, errno } if s == seq => {
                Err(NftError::Kernel { request, errno: Errno::from_raw(errno) })
            }
            other => Err(unexpected(request, seq, &other)),
        })?;
        Ok(found)
    }

    /// Builds a batch with `build` and commits it: every message acknowledged, or the
    /// kernel's first error, in which case nothing of the batch was applied.
    pub fn commit(&mut self, build: impl FnOnce(&mut Batch)) -> Result<(), NftError> {
        let request = "commit batch";
        let mut batch = Batch::new(self.next_seq);
        build(&mut batch);
        let (batch, next) = batch.finish();
        self.next_seq = next;
        self.send(request, &batch.bytes)?;
        let mut pending = batch.acked.clone();
        self.read_until(request, |reply| match reply {
            Reply::Ack { seq, errno: 0 } if pending.contains(&seq) => {
                pending.retain(|s| *s != seq);
                Ok(pending.is_empty())
            }
            // On BEGIN's sequence number when the whole batch is refused.
            Reply::Ack { seq, errno } if errno != 0 && batch.owns(seq) => {
                Err(NftError::Kernel { request, errno: Errno::from_raw(errno) })
            }
            other => Err(NftError::Malformed {
                request,
                detail: format!("{other:?} while waiting for the batch's acknowledgements"),
            }),
        })
    }
}

fn unexpected(request: &'static str, seq: u32, reply: &Reply<'_>) -> NftError {
    let detail = match reply {
        Reply::Object { cmd, seq: s, .. } if *s == seq => format!("unexpected object {cmd}"),
        other => format!("{other:?}, not a reply to request {seq}"),
    };
    NftError::Malformed { request, detail }
}
