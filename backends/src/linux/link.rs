//! Gateway device lookup and administrative state.
//!
//! Devices are always looked up by name, never by a remembered index: the L3 agent may
//! unplug and re-plug a port, and the new device gets a new index under the same name.

use futures::TryStreamExt;
use hagw_core::Error;
use hagw_core::observed::{Ipv6Conf, LinkCounters};
use nix::errno::Errno;
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkFlags, LinkMessage, State,
};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};
use tracing::{debug, instrument};

use super::LinuxNet;
use super::error::{Target, netlink_errno, no_device};
use crate::netns::Netns;

/// What hagw reads from a link message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    /// IFF_UP: the device is administratively up and may transmit.
    pub admin_up: bool,
    /// Operationally up: carrier present and the device is usable.
    pub oper_up: bool,
    /// The device's hardware address (empty if it has none).
    pub mac: Vec<u8>,
    pub counters: LinkCounters,
    /// The device's IPv6 sysctls as the kernel reports them in the link message
    /// (IFLA_AF_SPEC / AF_INET6 devconf); `None` if IPv6 is not available on it.
    pub ipv6: Option<Ipv6Conf>,
}

impl LinkInfo {
    /// Extracts the fields hagw uses from a kernel link message.
    pub fn from_message(msg: &LinkMessage) -> Self {
        let flags = msg.header.flags;
        let mut info = LinkInfo {
            index: msg.header.index,
            admin_up: flags.contains(LinkFlags::Up),
            oper_up: false,
            mac: Vec::new(),
            counters: LinkCounters::default(),
            ipv6: None,
        };
        let mut oper_state = None;
        let mut stats32 = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::OperState(state) => oper_state = Some(*state),
                LinkAttribute::Address(mac) => info.mac = mac.clone(),
                LinkAttribute::Stats64(s) => {
                    info.counters =
                        LinkCounters { tx_packets: s.tx_packets, rx_packets: s.rx_packets }
                }
                LinkAttribute::Stats(s) => stats32 = Some(*s),
                LinkAttribute::AfSpecUnspec(specs) => info.ipv6 = ipv6_devconf(specs),
                _ => {}
            }
        }
        // Old kernels and some drivers only report 32-bit stats.
        if info.counters == LinkCounters::default()
            && let Some(s) = stats32
        {
            info.counters = LinkCounters {
                tx_packets: u64::from(s.tx_packets),
                rx_packets: u64::from(s.rx_packets),
            };
        }
        info.oper_up = is_oper_up(flags, oper_state);
        info
    }
}

/// The sysctls hagw manages from the AF_INET6 devconf of a link message. Reading them here
/// rather than from `/proc/sys` saves a namespace-bound thread per observation, and a proc
/// lookup whose cost grows with the number of namespaces on the host.
fn ipv6_devconf(specs: &[AfSpecUnspec]) -> Option<Ipv6Conf> {
    let as_u32 = |v: i32| u32::try_from(v).unwrap_or(0);
    specs.iter().find_map(|spec| match spec {
        AfSpecUnspec::Inet6(attrs) => attrs.iter().find_map(|a| match a {
            AfSpecInet6::DevConf(conf) => Some(Ipv6Conf {
                addr_gen_mode: as_u32(conf.addr_gen_mode),
                accept_ra: as_u32(conf.accept_ra),
                forwarding: as_u32(conf.forwarding),
                disable_ipv6: as_u32(conf.disable_ipv6),
            }),
            _ => None,
        }),
        _ => None,
    })
}

/// RFC 2863 operational state, with the kernel's escape hatch: drivers that do not track
/// it report UNKNOWN, and then the lower-layer (carrier) flag is what counts.
fn is_oper_up(flags: LinkFlags, oper_state: Option<State>) -> bool {
    match oper_state {
        Some(State::Up) => true,
        Some(State::Unknown) | None => {
            flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp)
        }
        Some(_) => false,
    }
}

impl LinuxNet {
    /// Looks up `device` in `netns`; `None` if it does not exist there.
    #[instrument(level = "debug", skip(self, netns), fields(netns = netns.name()))]
    pub async fn link(&self, netns: &Netns, device: &str) -> Result<Option<LinkInfo>, Error> {
        const OP: &str = "get link";
        let target = Target::dev(netns.name(), device);
        let handle = self.cache.handle(netns).await?;
        let mut links = handle.link().get().match_name(device).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(LinkInfo::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) if netlink_errno(&e) == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(self.cache.request_failed(netns, OP, target, &e)),
        }
    }

    /// The index of `device`, or a transient error if it does not exist (yet).
    pub(crate) async fn index(&self, netns: &Netns, device: &str, op: &str) -> Result<u32, Error> {
        match self.link(netns, device).await? {
            Some(link) => Ok(link.index),
            None => Err(no_device(op, Target::dev(netns.name(), device))),
        }
    }

    /// Sets IFF_UP. Setting an up link up again is a no-op in the kernel.
    #[instrument(level = "debug", skip(self, netns), fields(netns = netns.name()))]
    pub async fn set_link_up(&self, netns: &Netns, device: &str) -> Result<(), Error> {
        self.set_admin(netns, device, true).await
    }

    /// Clears IFF_UP, which stops all transmission from the device.
    #[instrument(level = "debug", skip(self, netns), fields(netns = netns.name()))]
    pub async fn set_link_down(&self, netns: &Netns, device: &str) -> Result<(), Error> {
        self.set_admin(netns, device, false).await
    }

    /// Sets the device's IPv6 `addr_gen_mode` over netlink (IFLA_INET6_ADDR_GEN_MODE) rather
    /// than through `/proc/sys`, which container runtimes mount read-only: a standby's most
    /// important silence setting then needs no writable sysctl tree.
    #[instrument(level = "debug", skip(self, netns), fields(netns = netns.name()))]
    pub async fn set_addr_gen_mode(
        &self,
        netns: &Netns,
        device: &str,
        mode: u32,
    ) -> Result<(), Error> {
        let op = format!("set ipv6 addr_gen_mode = {mode}");
        let mode = u8::try_from(mode).map_err(|_| {
            Error::permanent(&op, Target::dev(netns.name(), device), "addr_gen_mode out of range")
        })?;
        let spec = AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::from(mode))]);
        self.set_link(netns, device, &op, |b| {
            b.append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![spec]))
        })
        .await
    }

    async fn set_admin(&self, netns: &Netns, device: &str, up: bool) -> Result<(), Error> {
        let op = if up { "set link up" } else { "set link down" };
        self.set_link(netns, device, op, |b| if up { b.up() } else { b.down() }).await
    }

    /// One RTM_SETLINK on `device`, looked up by name, with what `build` adds to it.
    async fn set_link(
        &self,
        netns: &Netns,
        device: &str,
        op: &str,
        build: impl FnOnce(LinkMessageBuilder<LinkUnspec>) -> LinkMessageBuilder<LinkUnspec>,
    ) -> Result<(), Error> {
        let target = Target::dev(netns.name(), device);
        let index = self.index(netns, device, op).await?;
        let msg = build(LinkUnspec::new_with_index(index)).build();
        let handle = self.cache.handle(netns).await?;
        handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| self.cache.request_failed(netns, op, target, &e))?;
        debug!(index, op, "link set");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::link::Stats64;

    use super::*;

    fn message(flags: LinkFlags, attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.header.flags = flags;
        msg.attributes = attributes;
        msg
    }

    #[test]
    fn reads_state_mac_and_counters() {
        let mut stats = Stats64::default();
        stats.tx_packets = 3;
        stats.rx_packets = 5;
        let msg = message(
            LinkFlags::Up | LinkFlags::LowerUp,
            vec![
                LinkAttribute::OperState(State::Up),
                LinkAttribute::Address(vec![0xfa, 0x16, 0x3e, 0, 0, 1]),
                LinkAttribute::Stats64(stats),
            ],
        );
        let info = LinkInfo::from_message(&msg);
        assert_eq!(info.index, 7);
        assert!(info.admin_up && info.oper_up);
        assert_eq!(info.mac, vec![0xfa, 0x16, 0x3e, 0, 0, 1]);
        assert_eq!(info.counters, LinkCounters { tx_packets: 3, rx_packets: 5 });
    }

    #[test]
    fn admin_up_without_carrier_is_not_oper_up() {
        let msg = message(LinkFlags::Up, vec![LinkAttribute::OperState(State::LowerLayerDown)]);
        let info = LinkInfo::from_message(&msg);
        assert!(info.admin_up);
        assert!(!info.oper_up);
    }

    #[test]
    fn unknown_oper_state_falls_back_to_lower_up() {
        let up = message(
            LinkFlags::Up | LinkFlags::LowerUp,
            vec![LinkAttribute::OperState(State::Unknown)],
        );
        assert!(LinkInfo::from_message(&up).oper_up);
        let down = message(LinkFlags::LowerUp, vec![LinkAttribute::OperState(State::Unknown)]);
        assert!(!LinkInfo::from_message(&down).oper_up);
    }
}
