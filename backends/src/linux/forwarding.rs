//! Waiting until a link that was just raised really forwards, before the first announcement.
//!
//! The device's own operational state is not enough. Raising one end of a veth turns the
//! carrier of both ends on, and the kernel's link watcher then handles the two ends one after
//! the other: this end's operstate becomes UP first, the peer's after, and only the peer's
//! handling tells a bridge the peer is plugged into to put its port back into forwarding (a
//! bridge port without carrier is disabled). A frame sent in between reaches the peer and is
//! dropped by the bridge: a generic `link-down` takeover lost its first round that way
//! (tests/tests/keepalived_first_round.rs). So the wait also covers the device the link is
//! linked to (`IFLA_LINK`: a veth's peer, in whichever namespace it is, read with
//! `IFLA_TARGET_NETNSID`), whose RTM_NEWLINK with operstate UP the kernel sends after the
//! bridge has handled the change.
//!
//! Driven by the namespace's own link events: one rtnetlink socket in the router's namespace
//! subscribed to its link changes. Both states are read once, then again on each link
//! event while the device is down; once it is up and only the peer is not, the peer is read
//! again after 1, 2, 4, … ms (at most 50 ms apart), since the peer's events are sent in its
//! own namespace. Listening there too (`NETLINK_LISTEN_ALL_NSID`) made every socket of a
//! waiting router receive every link event of the peers' namespace: with a thousand
//! routers taking over at once, whose peers share one namespace (a bridge's, the host's),
//! that is a million events, overflowing the sockets and re-reading both devices for each.
//! It also needs CAP_NET_BROADCAST, which the shipped unit and chart do not grant.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, MulticastGroup};
use tokio::time::Instant;

use super::link::LinkInfo;
use crate::netns::Netns;

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// The device, and the device it is linked to if any, are operationally up.
    Up { waited: Duration, linked: bool },
    /// Not within the bound (or the device is gone).
    TimedOut,
    /// Could not be watched (no socket in the namespace); nothing was waited for.
    Unknown,
}

/// Waits until `device` in `netns` and the device it is linked to (a veth's peer) are
/// operationally up, at most `within`. A peer that cannot be read (a kernel older than 4.20
/// has no `IFLA_TARGET_NETNSID`) counts as up: then only the device itself is waited for.
pub async fn await_forwarding(netns: &Netns, device: &str, within: Duration) -> Forwarding {
    let start = Instant::now();
    let opened = netns.run(|| rtnetlink::new_multicast_connection(&[MulticastGroup::Link])).await;
    let Ok(((connection, handle, mut events), _)) = opened else { return Forwarding::Unknown };
    let task = tokio::spawn(connection);
    let _stop = AbortOnDrop(task);
    let deadline = start + within;
    let mut peer_poll = PEER_POLL_FIRST;
    loop {
        let wake = match forwards(&handle, device).await {
            Check::Forwards { linked } => {
                return Forwarding::Up { waited: start.elapsed(), linked };
            }
            Check::DeviceDown => deadline,
            Check::PeerDown => {
                let wake = Instant::now() + peer_poll;
                peer_poll = (peer_poll * 2).min(PEER_POLL_MAX);
                wake.min(deadline)
            }
        };
        match tokio::time::timeout_at(wake, events.next()).await {
            Ok(Some(_)) => continue,
            Ok(None) => return Forwarding::TimedOut,
            Err(_) if Instant::now() >= deadline => return Forwarding::TimedOut,
            Err(_) => continue,
        }
    }
}

/// The first and the longest pause between two reads of a peer that is not up yet.
const PEER_POLL_FIRST: Duration = Duration::from_millis(1);
const PEER_POLL_MAX: Duration = Duration::from_millis(50);

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one read of the device and its peer found.
enum Check {
    /// The device is up and so is the device it is linked to (`linked`: there is one and it
    /// was read).
    Forwards { linked: bool },
    /// The device is not up (or not there): its own events tell when that changes.
    DeviceDown,
    /// The device is up, the device it is linked to not yet.
    PeerDown,
}

async fn forwards(handle: &Handle, device: &str) -> Check {
    let link = handle.link().get().match_name(device).execute().try_next().await;
    let Ok(Some(link)) = link else { return Check::DeviceDown };
    if !LinkInfo::from_message(&link).oper_up {
        return Check::DeviceDown;
    }
    let Some((index, nsid)) = linked_device(&link) else {
        return Check::Forwards { linked: false };
    };
    let mut request = handle.link().get().match_index(index);
    if let Some(nsid) = nsid {
        request.message_mut().attributes.push(LinkAttribute::IfNetnsId(nsid));
    }
    match request.execute().try_next().await {
        Ok(Some(peer)) if LinkInfo::from_message(&peer).oper_up => Check::Forwards { linked: true },
        Ok(Some(_)) => Check::PeerDown,
        // Unreadable: only the device itself can be waited for.
        Ok(None) | Err(_) => Check::Forwards { linked: false },
    }
}

/// The device `link` is linked to: its index and, if it is in another namespace, that
/// namespace's id as seen from the link's own. A veth's peer whose index equals the
/// device's own has no `IFLA_LINK` (the kernel omits it then), only the namespace id.
fn linked_device(link: &LinkMessage) -> Option<(u32, Option<i32>)> {
    let mut index = None;
    let mut nsid = None;
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::Link(i) => index = Some(*i),
            LinkAttribute::LinkNetNsId(n) => nsid = Some(*n),
            _ => {}
        }
    }
    match (index, nsid) {
        (Some(i), _) if i != link.header.index && i != 0 => Some((i, nsid)),
        (_, Some(n)) => Some((index.filter(|i| *i != 0).unwrap_or(link.header.index), Some(n))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(index: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes = attributes;
        link
    }

    #[test]
    fn the_linked_device_is_the_peer_in_its_namespace() {
        assert_eq!(linked_device(&message(5, vec![])), None);
        assert_eq!(linked_device(&message(5, vec![LinkAttribute::Link(7)])), Some((7, None)));
        let peer = message(5, vec![LinkAttribute::Link(9), LinkAttribute::LinkNetNsId(2)]);
        assert_eq!(linked_device(&peer), Some((9, Some(2))));
        // Same index in the peer's namespace: the kernel sends no IFLA_LINK.
        let same = message(5, vec![LinkAttribute::LinkNetNsId(0)]);
        assert_eq!(linked_device(&same), Some((5, Some(0))));
    }
}
