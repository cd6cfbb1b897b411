//! Whether the Linuxbridge agent has wired a tap: it exists, is a port of the configured
//! `brq` bridge, and forwards. Read over rtnetlink in hagw's own network namespace (where
//! the agent keeps its bridges), not in a named one, so this has its own connection rather
//! than [`crate::linux::LinuxNet`]'s per-namespace cache.

use std::time::Duration;

use futures::TryStreamExt;
use hagw_core::Error;
use nix::errno::Errno;
use rtnetlink::Handle;
use rtnetlink::packet_route::link::{
    BridgePortState, InfoBridgePort, InfoPortData, LinkAttribute, LinkInfo as Nla, LinkMessage,
};
use tokio::sync::{Mutex, Semaphore};
use tracing::{Instrument, debug, info_span};

use crate::linux::LinkInfo;
use crate::linux::error::{from_io, from_netlink, is_connection_lost, netlink_errno};

/// What the wiring decision needs from the tap's link message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapState {
    /// IFLA_MASTER: the bridge (or other controller) the tap is enslaved to.
    pub master: Option<u32>,
    pub admin_up: bool,
    pub oper_up: bool,
    /// IFLA_BRPORT_STATE, when the tap is a bridge port.
    pub port_state: Option<BridgePortState>,
}

impl TapState {
    pub fn from_message(msg: &LinkMessage) -> Self {
        let link = LinkInfo::from_message(msg);
        let mut state = TapState {
            master: None,
            admin_up: link.admin_up,
            oper_up: link.oper_up,
            port_state: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::Controller(index) => state.master = Some(*index),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let Nla::PortData(InfoPortData::BridgePort(port)) = info {
                            state.port_state = port.iter().find_map(|p| match p {
                                InfoBridgePort::State(s) => Some(*s),
                                _ => None,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        state
    }

    /// Wired: a forwarding port of `bridge`. With STP off a port is forwarding exactly when
    /// it is up with carrier; the port state is checked too because someone (or a bridge
    /// with STP on) may have set it to disabled or blocking.
    pub fn is_wired_to(&self, bridge: u32) -> bool {
        self.master == Some(bridge)
            && self.admin_up
            && self.oper_up
            && self.port_state.is_none_or(|s| s == BridgePortState::Forwarding)
    }
}

/// Requests in flight at once on the own-namespace connection. Every router reads its tap
/// and bridge here: with 1,000 routers at once, 2,000 replies overflowed the socket's receive
/// buffer, the kernel dropped replies (ENOBUFS) and their requests never completed (24 of
/// 1,000 routers had no first pass). 32 replies fit in the default buffer many times over.
const IN_FLIGHT: usize = 32;

/// How long a reply may take. A reply the kernel dropped never comes; the request is then a
/// transient error the pass retries, on a fresh connection.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// An rtnetlink connection in the process's own namespace, opened on first use and
/// re-opened after its task ends or a reply was lost.
#[derive(Debug)]
pub struct OwnNetlink {
    handle: Mutex<Option<Handle>>,
    in_flight: Semaphore,
}

impl Default for OwnNetlink {
    fn default() -> Self {
        OwnNetlink { handle: Mutex::default(), in_flight: Semaphore::new(IN_FLIGHT) }
    }
}

impl OwnNetlink {
    async fn handle(&self) -> Result<Handle, Error> {
        let mut slot = self.handle.lock().await;
        if let Some(handle) = slot.as_ref() {
            return Ok(handle.clone());
        }
        // Tokio's worker threads never change namespace, so the socket opened here is in
        // the process's namespace.
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| from_io("open netlink connection", own_target(), e))?;
        tokio::spawn(conn.instrument(info_span!("netlink", netns = "own")));
        *slot = Some(handle.clone());
        Ok(handle)
    }

    /// The link named `name`, or `None` if there is none.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>, Error> {
        let _permit = self.in_flight.acquire().await.expect("the semaphore is never closed");
        let handle = self.handle().await?;
        let mut links = handle.link().get().match_name(name.to_owned()).execute();
        let Ok(reply) = tokio::time::timeout(REPLY_TIMEOUT, links.try_next()).await else {
            debug!(name, "no netlink reply; reopening the connection");
            *self.handle.lock().await = None;
            return Err(Error::transient(
                "get link",
                own_target(),
                format!("no reply within {} s", REPLY_TIMEOUT.as_secs()),
            ));
        };
        match reply {
            Ok(found) => Ok(found),
            Err(e) if netlink_errno(&e) == Some(Errno::ENODEV) => Ok(None),
            Err(e) => {
                if is_connection_lost(&e) {
                    debug!("own-namespace netlink connection lost, reopening next time");
                    *self.handle.lock().await = None;
                }
                Err(from_netlink("get link", own_target(), &e))
            }
        }
    }

    /// Whether `tap` is a forwarding port of `bridge`. Either device missing means not
    /// wired: the agent has not plugged it (yet).
    pub async fn is_wired(&self, tap: &str, bridge: &str) -> Result<bool, Error> {
        let Some(tap_msg) = self.link(tap).await? else {
            debug!(tap, "tap does not exist");
            return Ok(false);
        };
        let Some(bridge_msg) = self.link(bridge).await? else {
            debug!(bridge, "bridge does not exist");
            return Ok(false);
        };
        let state = TapState::from_message(&tap_msg);
        let wired = state.is_wired_to(bridge_msg.header.index);
        debug!(tap, bridge, ?state, wired, "tap wiring");
        Ok(wired)
    }
}

fn own_target() -> crate::linux::error::Target<'static> {
    crate::linux::error::Target::netns("(own)")
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::link::{InfoPortKind, LinkFlags, State};

    use super::*;

    fn tap(master: Option<u32>, up: bool, port_state: Option<BridgePortState>) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header.index = 9;
        if up {
            msg.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
        }
        msg.attributes.push(LinkAttribute::OperState(if up { State::Up } else { State::Down }));
        if let Some(m) = master {
            msg.attributes.push(LinkAttribute::Controller(m));
        }
        if let Some(s) = port_state {
            msg.attributes.push(LinkAttribute::LinkInfo(vec![
                Nla::PortKind(InfoPortKind::Bridge),
                Nla::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::State(s)])),
            ]));
        }
        msg
    }

    #[test]
    fn a_forwarding_up_port_of_the_bridge_is_wired() {
        let s = TapState::from_message(&tap(Some(4), true, Some(BridgePortState::Forwarding)));
        assert_eq!(s.master, Some(4));
        assert!(s.is_wired_to(4));
        assert!(!s.is_wired_to(5), "another bridge is not the configured one");
    }

    #[test]
    fn unplugged_down_or_disabled_ports_are_not_wired() {
        assert!(!TapState::from_message(&tap(None, true, None)).is_wired_to(4));
        assert!(
            !TapState::from_message(&tap(Some(4), false, Some(BridgePortState::Disabled)))
                .is_wired_to(4)
        );
        assert!(
            !TapState::from_message(&tap(Some(4), true, Some(BridgePortState::Blocking)))
                .is_wired_to(4)
        );
    }
}
