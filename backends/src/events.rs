//! Kernel change notifications from inside a router namespace: link, address and route
//! events. Any of them can undo part of a router's desired state (an agent raising the link,
//! keepalived adding the primary VIP or removing a route), so each wakes the routers of that
//! namespace; the reconcile pass itself works out what changed. IPv6 sysctl writes mostly
//! send no event at all (only `forwarding` sends an RTM_NEWNETCONF, on a group not joined
//! here), so a sysctl reset is repaired by the periodic resync.
//!
//! Since an event only says "look again", its content is not read: each namespace gets a
//! bare netlink socket whose datagrams are received into a few bytes (the kernel drops the
//! rest of each), not an rtnetlink connection, whose 64 KiB read and 8 KiB write buffers,
//! decoding and channel cost resident memory in every one of a thousand namespaces. A burst
//! of events (a takeover makes a dozen) is one wake-up.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use hagw_core::Error;
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
};
use rtnetlink::MulticastGroup;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::netns::{Netns, NetnsId};

const GROUPS: [MulticastGroup; 5] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
];

/// Room for a netlink message header: length (4 bytes), then the message type (2).
const HEADER: usize = 16;

/// Events read before the namespace's routers are woken, so that a namespace whose events
/// never stop still wakes them.
const BATCH: usize = 64;

/// A running subscription to one namespace's events; stops when dropped. Dropping it also
/// closes the socket, which would otherwise keep a deleted namespace alive.
#[derive(Debug)]
pub struct NetnsMonitor {
    pub id: NetnsId,
    task: JoinHandle<()>,
}

impl Drop for NetnsMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes to `netns`'s events; each burst of them sends the namespace name on `changes`.
pub async fn monitor_netns(
    netns: &Netns,
    changes: mpsc::UnboundedSender<String>,
) -> Result<NetnsMonitor, Error> {
    let target = format!("netns {}", netns.name());
    let subscribe_failed = |e: io::Error| {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => hagw_core::ErrorKind::Transient,
            _ => hagw_core::ErrorKind::Permanent,
        };
        Error::new(kind, "subscribe to netlink events", &target, e)
    };
    let (socket, id) = netns.run(subscribe).await.map_err(subscribe_failed)?;
    // SAFETY: an `OwnedFd` is a valid open descriptor that stays open, and keeps returning
    // the same number, until the `AsyncFd` owning it is dropped.
    let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
        .map_err(|e| subscribe_failed(e.into()))?;
    let task = tokio::spawn(forward(socket, netns.name().to_string(), changes));
    Ok(NetnsMonitor { id, task })
}

/// Opens the event socket; runs inside the namespace, which the socket then belongs to.
fn subscribe() -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkRoute,
    )?;
    // The bind address's group mask has bit `group - 1` for each group below 32.
    let groups = GROUPS.iter().fold(0, |mask, group| mask | 1 << (*group as u32 - 1));
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
    Ok(fd)
}

/// Sends `name` once for every batch of events that arrived together.
async fn forward(socket: AsyncFd<OwnedFd>, name: String, changes: mpsc::UnboundedSender<String>) {
    loop {
        let mut guard = match socket.readable().await {
            Ok(guard) => guard,
            Err(error) => {
                warn!(netns = %name, %error, "netlink event socket failed; relying on resync");
                return;
            }
        };
        let mut events = 0usize;
        for _ in 0..BATCH {
            let mut header = [0u8; HEADER];
            match recv(socket.as_raw_fd(), &mut header, MsgFlags::MSG_DONTWAIT) {
                Ok(_) => {
                    events += 1;
                    let kind = u16::from_ne_bytes([header[4], header[5]]);
                    debug!(netns = %name, kind, "netlink event");
                }
                // Events were dropped because the socket's buffer was full: which ones is
                // unknown, and the pass this wakes looks at everything anyway.
                Err(Errno::ENOBUFS) => events += 1,
                Err(Errno::EAGAIN) => {
                    guard.clear_ready();
                    break;
                }
                Err(Errno::EINTR) => {}
                Err(error) => {
                    warn!(netns = %name, %error, "netlink event socket failed; relying on resync");
                    return;
                }
            }
        }
        if events > 0 && changes.send(name.clone()).is_err() {
            return;
        }
    }
}
