//! The error type shared by the reconcile loop and the backends. Its kind says whether a
//! retry can help, which is what the loop needs to decide.

use std::fmt;

/// Whether trying again can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Something outside hagw may change: a device or OVSDB row not there yet, a busy or
    /// restarting daemon, a lost connection.
    Transient,
    /// Retrying will not help: invalid input, missing privileges, unsupported operation.
    Permanent,
}

/// Why an operation failed: the underlying error as it came (an `io::Error`, a netlink or
/// OVSDB error, ...), so a log can show its chain and a caller can inspect it, or hagw's own
/// reason as text where there is no lower error.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed operation on one router's port, with where it happened.
#[derive(Debug, thiserror::Error)]
#[error("{operation} on {target}: {cause}")]
pub struct Error {
    pub kind: ErrorKind,
    /// What was attempted, e.g. `set link up`.
    pub operation: String,
    /// Where, e.g. `netns qrouter-1 dev qg-1`.
    pub target: String,
    #[source]
    pub cause: Cause,
}

impl Error {
    pub fn new(
        kind: ErrorKind,
        operation: impl fmt::Display,
        target: impl fmt::Display,
        cause: impl Into<Cause>,
    ) -> Self {
        Error {
            kind,
            operation: operation.to_string(),
            target: target.to_string(),
            cause: cause.into(),
        }
    }

    pub fn transient(
        op: impl fmt::Display,
        target: impl fmt::Display,
        cause: impl Into<Cause>,
    ) -> Self {
        Self::new(ErrorKind::Transient, op, target, cause)
    }

    pub fn permanent(
        op: impl fmt::Display,
        target: impl fmt::Display,
        cause: impl Into<Cause>,
    ) -> Self {
        Self::new(ErrorKind::Permanent, op, target, cause)
    }

    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// Whether it failed because the file system is mounted read-only (`EROFS`), as the
    /// `/proc/sys` container runtimes give every non-privileged container. That stays so for
    /// the life of the process: an expected limit of where hagw runs, not a fault to chase.
    pub fn is_read_only(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*self.cause);
        while let Some(e) = cause {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ReadOnlyFilesystem)
            {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("/proc/sys/net/ipv6/conf/qg-1/forwarding: {0}")]
    struct Wrapped(#[source] io::Error);

    #[test]
    fn a_read_only_file_system_is_found_anywhere_in_the_chain() {
        let erofs = || io::Error::from_raw_os_error(30);
        assert!(Error::permanent("set", "qg-1", erofs()).is_read_only());
        assert!(Error::permanent("set", "qg-1", Wrapped(erofs())).is_read_only());
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(!Error::permanent("set", "qg-1", Wrapped(denied)).is_read_only());
        assert!(!Error::transient("set", "qg-1", "no such device").is_read_only());
    }
}
