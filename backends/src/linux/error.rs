//! Turning netlink, I/O and errno failures into [`hagw_core::Error`] with the right kind.
//!
//! The reconcile loop retries transient errors and gives up on permanent ones, so the split
//! decides whether a router converges by itself once the world catches up (a device the L3
//! agent has not plugged yet, a namespace being re-created) or is reported at once (no
//! privileges, a request the kernel rejects as invalid).

use std::fmt;
use std::io;

use hagw_core::{Error, ErrorKind};
use nix::errno::Errno;

/// Where an operation happened, rendered as `netns X dev Y` (or `netns X`) in errors.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub netns: &'a str,
    pub device: Option<&'a str>,
}

impl<'a> Target<'a> {
    pub fn dev(netns: &'a str, device: &'a str) -> Self {
        Target { netns, device: Some(device) }
    }

    pub fn netns(netns: &'a str) -> Self {
        Target { netns, device: None }
    }
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.device {
            Some(device) => write!(f, "netns {} dev {device}", self.netns),
            None => write!(f, "netns {}", self.netns),
        }
    }
}

/// Whether a failed syscall or netlink request with this errno can succeed later.
///
/// Transient: the device or namespace may still appear (ENODEV, ENOENT, ENXIO), the kernel
/// or a peer is busy (EBUSY, EAGAIN, EINTR, ENOBUFS, ENOMEM), or the link is not ready for
/// the request yet (ENETDOWN, ENETUNREACH: a route's gateway becomes reachable once the
/// device is up and addressed). Everything else (EPERM, EACCES, EINVAL, EOPNOTSUPP, …)
/// will fail the same way again.
pub fn errno_kind(errno: Errno) -> ErrorKind {
    match errno {
        Errno::ENODEV
        | Errno::ENOENT
        | Errno::ENXIO
        | Errno::ESRCH
        | Errno::EBUSY
        | Errno::EAGAIN
        | Errno::EINTR
        | Errno::ENOBUFS
        | Errno::ENOMEM
        | Errno::ENETDOWN
        | Errno::ENETUNREACH
        | Errno::ETIMEDOUT
        | Errno::ECONNRESET
        | Errno::ECONNREFUSED => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

/// The errno a netlink error message carries (the kernel sends it negated), if any.
pub fn netlink_errno(err: &rtnetlink::Error) -> Option<Errno> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => {
            msg.code.map(|code| Errno::from_raw(code.get().wrapping_abs()))
        }
        _ => None,
    }
}

/// Whether the request failed because the connection is gone (its task ended), rather
/// than because the kernel refused it: the cached connection must then be replaced.
pub fn is_connection_lost(err: &rtnetlink::Error) -> bool {
    matches!(err, rtnetlink::Error::RequestFailed)
}

/// Classifies an rtnetlink failure.
pub fn netlink_kind(err: &rtnetlink::Error) -> ErrorKind {
    match err {
        rtnetlink::Error::NetlinkError(_) => {
            netlink_errno(err).map(errno_kind).unwrap_or(ErrorKind::Permanent)
        }
        // The connection task ended: a new connection is opened on the next attempt.
        rtnetlink::Error::RequestFailed => ErrorKind::Transient,
        // The kernel sent something we cannot parse or the request was malformed: asking
        // again will not change that.
        _ => ErrorKind::Permanent,
    }
}

/// Classifies an I/O failure (namespace file, `/proc/sys`, socket creation).
pub fn io_kind(err: &io::Error) -> ErrorKind {
    if let Some(raw) = err.raw_os_error() {
        return errno_kind(Errno::from_raw(raw));
    }
    match err.kind() {
        io::ErrorKind::NotFound
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock
        | io::ErrorKind::TimedOut
        | io::ErrorKind::ConnectionReset => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

pub fn from_netlink(op: impl fmt::Display, target: Target<'_>, err: &rtnetlink::Error) -> Error {
    let kind = netlink_kind(err);
    match netlink_errno(err) {
        Some(errno) => Error::new(kind, op, target, errno),
        None => Error::new(kind, op, target, err.to_string()),
    }
}

pub fn from_io(op: impl fmt::Display, target: Target<'_>, err: io::Error) -> Error {
    Error::new(io_kind(&err), op, target, err)
}

/// The device does not exist (yet): transient, the L3 agent may still be plugging it.
pub fn no_device(op: impl fmt::Display, target: Target<'_>) -> Error {
    Error::transient(op, target, "no such device")
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroI32;

    use rtnetlink::packet_core::ErrorMessage;

    use super::*;

    fn nl_error(errno: Errno) -> rtnetlink::Error {
        let mut msg = ErrorMessage::default();
        msg.code = NonZeroI32::new(-(errno as i32));
        rtnetlink::Error::NetlinkError(msg)
    }

    #[test]
    fn missing_things_and_busy_kernels_are_transient() {
        for errno in [Errno::ENODEV, Errno::ENOENT, Errno::EBUSY, Errno::EAGAIN, Errno::ENETDOWN] {
            assert_eq!(netlink_kind(&nl_error(errno)), ErrorKind::Transient, "{errno}");
        }
    }

    #[test]
    fn refusals_are_permanent() {
        for errno in [Errno::EPERM, Errno::EACCES, Errno::EINVAL, Errno::EOPNOTSUPP, Errno::EEXIST]
        {
            assert_eq!(netlink_kind(&nl_error(errno)), ErrorKind::Permanent, "{errno}");
        }
    }

    #[test]
    fn lost_connection_is_transient_and_detected() {
        let err = rtnetlink::Error::RequestFailed;
        assert_eq!(netlink_kind(&err), ErrorKind::Transient);
        assert!(is_connection_lost(&err));
        assert!(!is_connection_lost(&nl_error(Errno::ENODEV)));
    }

    #[test]
    fn unparseable_messages_are_permanent() {
        let err = rtnetlink::Error::InvalidNla("x".into());
        assert_eq!(netlink_kind(&err), ErrorKind::Permanent);
    }

    #[test]
    fn errno_is_extracted_from_negative_codes() {
        assert_eq!(netlink_errno(&nl_error(Errno::EADDRNOTAVAIL)), Some(Errno::EADDRNOTAVAIL));
        assert_eq!(netlink_errno(&rtnetlink::Error::RequestFailed), None);
    }

    #[test]
    fn io_errors_follow_errno_then_kind() {
        assert_eq!(
            io_kind(&io::Error::from_raw_os_error(Errno::ENOENT as i32)),
            ErrorKind::Transient
        );
        assert_eq!(io_kind(&io::Error::from(io::ErrorKind::NotFound)), ErrorKind::Transient);
        assert_eq!(
            io_kind(&io::Error::from_raw_os_error(Errno::EPERM as i32)),
            ErrorKind::Permanent
        );
        assert_eq!(io_kind(&io::Error::from(io::ErrorKind::InvalidData)), ErrorKind::Permanent);
    }

    #[test]
    fn errors_name_the_target() {
        let err =
            from_netlink("set link up", Target::dev("qrouter-1", "qg-1"), &nl_error(Errno::EPERM));
        assert_eq!(err.target, "netns qrouter-1 dev qg-1");
        assert_eq!(err.operation, "set link up");
        assert!(!err.is_transient());
        assert_eq!(Target::netns("qrouter-1").to_string(), "netns qrouter-1");
    }
}
