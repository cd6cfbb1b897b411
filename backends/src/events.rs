//! Kernel change notifications from inside a router namespace: link, address and route
//! events. Any of them can undo part of a router's desired state (an agent raising the link,
//! keepalived adding the primary VIP or removing a route), so each wakes the routers of that
//! namespace; the reconcile pass itself works out what changed. IPv6 sysctl writes mostly
//! send no event at all (only `forwarding` sends an RTM_NEWNETCONF, which rtnetlink cannot
//! decode), so a sysctl reset is repaired by the periodic resync.

use futures::StreamExt;
use hagw_core::Error;
use rtnetlink::MulticastGroup;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::netns::{Netns, NetnsId};

const GROUPS: [MulticastGroup; 5] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
];

/// A running subscription to one namespace's events; stops when dropped. Dropping it also
/// closes the socket, which would otherwise keep a deleted namespace alive.
#[derive(Debug)]
pub struct NetnsMonitor {
    pub id: NetnsId,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for NetnsMonitor {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Subscribes to `netns`'s events; each one sends the namespace name on `changes`.
pub async fn monitor_netns(
    netns: &Netns,
    changes: mpsc::UnboundedSender<String>,
) -> Result<NetnsMonitor, Error> {
    let target = format!("netns {}", netns.name());
    let ((connection, _handle, mut messages), id) =
        netns.run(|| rtnetlink::new_multicast_connection(&GROUPS)).await.map_err(|e| {
            let kind = match e.kind() {
                std::io::ErrorKind::NotFound => hagw_core::ErrorKind::Transient,
                _ => hagw_core::ErrorKind::Permanent,
            };
            Error::new(kind, "subscribe to netlink events", &target, e)
        })?;
    let name = netns.name().to_string();
    let forward = tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            debug!(netns = %name, kind = ?message.payload.message_type(), "netlink event");
            if changes.send(name.clone()).is_err() {
                break;
            }
        }
    });
    Ok(NetnsMonitor { id, tasks: [tokio::spawn(connection), forward] })
}
