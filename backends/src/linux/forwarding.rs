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
//! Driven by events: one rtnetlink socket in the router's namespace subscribed to link
//! changes of every namespace that has an id there (`NETLINK_LISTEN_ALL_NSID`, so the
//! peer's too); both states are read once, then again on each link event, until both are
//! up or the bound has passed.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::sys::AsyncSocket;
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
    let opened = netns
        .run(|| {
            let (mut connection, handle, events) =
                rtnetlink::new_multicast_connection(&[MulticastGroup::Link])?;
            connection.socket_mut().socket_mut().set_listen_all_namespaces(true)?;
            Ok((connection, handle, events))
        })
        .await;
    let Ok(((connection, handle, mut events), _)) = opened else { return Forwarding::Unknown };
    let task = tokio::spawn(connection);
    let _stop = AbortOnDrop(task);
    let deadline = start + within;
    loop {
        if let Some(linked) = forwards(&handle, device).await {
            return Forwarding::Up { waited: start.elapsed(), linked };
        }
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return Forwarding::TimedOut,
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `Some(linked)` once `device` is up and so is the device it is linked to (`linked`: there
/// is one and it was read); `None` while either is not.
async fn forwards(handle: &Handle, device: &str) -> Option<bool> {
    let link = handle.link().get().match_name(device).execute().try_next().await.ok()??;
    if !LinkInfo::from_message(&link).oper_up {
        return None;
    }
    let Some((index, nsid)) = linked_device(&link) else { return Some(false) };
    let mut request = handle.link().get().match_index(index);
    if let Some(nsid) = nsid {
        request.message_mut().attributes.push(LinkAttribute::IfNetnsId(nsid));
    }
    match request.execute().try_next().await {
        Ok(Some(peer)) => LinkInfo::from_message(&peer).oper_up.then_some(true),
        // Unreadable: only the device itself can be waited for.
        Ok(None) | Err(_) => Some(false),
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
