//! nf_tables spoken over its own netlink socket (`NETLINK_NETFILTER`, subsystem
//! `NFNL_SUBSYS_NFTABLES`): the one owner of the wire format for the holds of the generic
//! backend (router namespace, `inet` + `arp`) and the Linux bridge backend (hagw's own
//! namespace, `bridge`). Reading or lifting a hold is a socket round trip, not an `nft`
//! process (about 26 ms each on the takeover path, measured in docs/benchmarks.md).
//!
//! Every hold has the same shape, described by a [`HoldSpec`]:
//!
//! ```text
//! table <family> hagw {
//!   set <set> { type ifname; [counter;] }
//!   chain hold { type filter hook <hook> priority -300; policy accept;
//!                <iifname|oifname> @<set> drop }
//! }
//! ```
//!
//! The match is on the device *name*, so the hold is in force before the device exists.
//!
//! - [`wire`]: messages and batches, and the parsing of replies;
//! - [`read`]: the table read back and checked against its spec;
//! - [`socket`]: the exchanges (request/reply, dump, batch commit) on one socket.

pub mod read;
pub mod socket;
pub mod wire;

use hagw_core::Error;
use nix::errno::Errno;

/// Every hold table's name.
pub const TABLE: &str = "hagw";
/// Every hold chain's name.
pub const CHAIN: &str = "hold";
/// Before anything a distribution or Neutron installs at the usual filter priorities (for
/// the bridge family also before the bridge's own dstnat, `NF_BR_PRI_NAT_DST_BRIDGED`).
pub const PRIORITY: i32 = -300;
/// `IFNAMSIZ`: an interface name as a set key, NUL-padded.
pub const IFNAME_LEN: usize = 16;

/// An interface name as a set key.
pub type Key = [u8; IFNAME_LEN];

/// The address family of a table (`NFPROTO_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet,
    Arp,
    Bridge,
}

impl Family {
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Arp => 3,
            Family::Bridge => 7,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Arp => "arp",
            Family::Bridge => "bridge",
        }
    }
}

/// Which device name the rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameMatch {
    /// `iifname`: the device a frame came in on (`NFT_META_IIFNAME`).
    Input,
    /// `oifname`: the device a packet leaves by (`NFT_META_OIFNAME`).
    Output,
}

impl NameMatch {
    pub fn meta_key(self) -> u32 {
        match self {
            NameMatch::Input => 6,
            NameMatch::Output => 7,
        }
    }
}

/// One hold table: where its chain hooks in and what its rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldSpec {
    pub family: Family,
    pub set: &'static str,
    /// The hook number in the family (`NF_INET_POST_ROUTING`, `NF_ARP_OUT`,
    /// `NF_BR_PRE_ROUTING`, …).
    pub hook: u32,
    pub name_match: NameMatch,
    /// Each element counts what it dropped (`counter` on the set).
    pub counter: bool,
}

/// An interface name as the set stores it; `None` if it cannot be an interface name.
pub fn ifname_key(name: &str) -> Option<Key> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= IFNAME_LEN || bytes.contains(&0) {
        return None;
    }
    let mut key = [0; IFNAME_LEN];
    key[..bytes.len()].copy_from_slice(bytes);
    Some(key)
}

/// A key back as a name (what the set stores ends at the first NUL).
pub fn key_name(key: &[u8]) -> String {
    let end = key.iter().position(|b| *b == 0).unwrap_or(key.len());
    String::from_utf8_lossy(&key[..end]).into_owned()
}

/// What went wrong in an exchange with nf_tables, naming the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftError {
    /// The kernel answered the request with an error.
    #[error("{request}: the kernel answered {errno}")]
    Kernel { request: &'static str, errno: Errno },
    /// The socket failed, or the reply did not come in time.
    #[error("{request}: netlink socket: {errno}")]
    Socket { request: &'static str, errno: Errno },
    /// A reply that is not what the request asks for: truncated, an attribute of the wrong
    /// size, a reply to another request. Never guessed around: guessing could report a hold
    /// that is not there.
    #[error("{request}: malformed reply: {detail}")]
    Malformed { request: &'static str, detail: String },
    /// The ruleset changed between the parts of every read attempted: no consistent view.
    #[error("{request}: the ruleset changed during every read")]
    Raced { request: &'static str },
}

impl NftError {
    /// The kernel's errno, for a refused request.
    pub fn kernel_errno(&self) -> Option<Errno> {
        match self {
            NftError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// No nf_tables, or not this family, in the kernel (or its module cannot be loaded).
    pub fn is_unsupported(&self) -> bool {
        let errno = match self {
            NftError::Kernel { errno, .. } | NftError::Socket { errno, .. } => *errno,
            NftError::Malformed { .. } | NftError::Raced { .. } => return false,
        };
        matches!(errno, Errno::EPROTONOSUPPORT | Errno::EAFNOSUPPORT | Errno::EOPNOTSUPP)
    }

    /// The loop's error. What fails the same way again is permanent, with the fix in the
    /// message: missing privileges, a kernel without the family (`kernel_config` names what
    /// it needs), an object of ours with another definition, a request the kernel finds
    /// invalid. A busy or interrupted kernel, a lost reply, a malformed reply (the socket is
    /// opened afresh for the retry) and everything else are transient.
    pub fn into_error(self, operation: &str, target: String, kernel_config: &str) -> Error {
        let permanent = |hint: String| Error::permanent(operation, target.clone(), hint);
        match self.kernel_errno() {
            Some(Errno::EPERM) => permanent(format!("{self} (needs CAP_NET_ADMIN)")),
            Some(Errno::EEXIST) => {
                permanent(format!("{self} (an object of ours has another definition)"))
            }
            Some(Errno::EINVAL) => permanent(format!("{self} (the kernel refused the request)")),
            _ if self.is_unsupported() => {
                permanent(format!("{self} (the kernel needs {kernel_config})"))
            }
            _ => Error::transient(operation, target, self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_become_nul_padded_keys_and_back() {
        let key = ifname_key("qg-1234abcd-56").unwrap();
        assert_eq!(&key[..14], b"qg-1234abcd-56");
        assert_eq!(&key[14..], &[0, 0]);
        assert_eq!(key_name(&key), "qg-1234abcd-56");
        assert_eq!(ifname_key(""), None);
        assert_eq!(ifname_key("0123456789abcdef"), None, "16 bytes leave no room for NUL");
        assert_eq!(ifname_key("a\0b"), None);
    }

    #[test]
    fn errors_are_classified_with_hints() {
        let kernel = |errno| NftError::Kernel { request: "commit", errno };
        let config = "CONFIG_NF_TABLES_BRIDGE";
        let e = kernel(Errno::EPERM).into_error("hold", "t".into(), config);
        assert!(!e.is_transient() && e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        let e = kernel(Errno::EOPNOTSUPP).into_error("hold", "t".into(), config);
        assert!(!e.is_transient() && e.to_string().contains(config), "{e}");
        let e = kernel(Errno::EEXIST).into_error("hold", "t".into(), config);
        assert!(!e.is_transient(), "{e}");
        for transient in [
            kernel(Errno::EBUSY),
            NftError::Socket { request: "get set", errno: Errno::EAGAIN },
            NftError::Malformed { request: "get set", detail: "truncated message".into() },
        ] {
            let e = transient.into_error("observe", "t".into(), config);
            assert!(e.is_transient(), "{e}");
        }
        let e = NftError::Malformed { request: "dump rules", detail: "x".into() };
        assert_eq!(e.to_string(), "dump rules: malformed reply: x");
    }
}
