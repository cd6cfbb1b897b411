//! Addresses on the gateway device: dump, add, delete.
//!
//! Both add and delete are idempotent, because the reconcile loop retries whole steps and a
//! retry after a lost reply must not fail on the effect of the first attempt.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use hagw_core::Error;
use ipnet::IpNet;
use nix::errno::Errno;
use rtnetlink::AddressMessageBuilder;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use tracing::{debug, instrument};

use super::LinuxNet;
use super::error::{Target, netlink_errno};
use crate::netns::Netns;

/// The address an address message describes, with its prefix length and host bits kept
/// (`192.0.2.10/24`, as `ip addr` shows it). IFA_LOCAL is the device's own address;
/// IFA_ADDRESS is the same except on point-to-point links, where it is the peer.
pub fn address_of(msg: &AddressMessage) -> Option<IpNet> {
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    IpNet::new(local.or(address)?, msg.header.prefix_len).ok()
}

/// The message that names `address` on device `index`, for add and delete.
fn address_message(index: u32, address: IpNet) -> AddressMessage {
    let prefix_len = address.prefix_len();
    match address.addr() {
        IpAddr::V4(ip) => {
            AddressMessageBuilder::<Ipv4Addr>::new().index(index).address(ip, prefix_len).build()
        }
        IpAddr::V6(ip) => {
            AddressMessageBuilder::<Ipv6Addr>::new().index(index).address(ip, prefix_len).build()
        }
    }
}

const DUMP_OP: &str = "dump addresses";

impl LinuxNet {
    /// Every address on `device`, IPv6 link-local included.
    #[instrument(level = "debug", skip(self, netns), fields(netns = netns.name()))]
    pub async fn addresses(&self, netns: &Netns, device: &str) -> Result<Vec<IpNet>, Error> {
        let index = self.index(netns, device, DUMP_OP).await?;
        self.addresses_of_index(netns, device, index).await
    }

    /// [`addresses`](Self::addresses) for a device whose index is already known.
    pub(crate) async fn addresses_of_index(
        &self,
        netns: &Netns,
        device: &str,
        index: u32,
    ) -> Result<Vec<IpNet>, Error> {
        let target = Target::dev(netns.name(), device);
        let handle = self.cache.handle(netns).await?;
        let _dump = handle.lock_dump().await;
        let mut request = handle.address().get().set_link_index_filter(index);
        // Lets a strict-checking kernel filter too; the request also filters in userspace.
        request.message_mut().header.index = index;
        let messages: Vec<AddressMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.cache.request_failed(netns, DUMP_OP, target, &e))?;
        let mut addresses: Vec<IpNet> = messages.iter().filter_map(address_of).collect();
        addresses.dedup();
        Ok(addresses)
    }

    /// Adds `address` to `device`; present already = success. IPv6 addresses are added
    /// without duplicate address detection, as keepalived does for its VIPs: only the
    /// primary carries them, and a tentative address could not be announced at once.
    #[instrument(level = "debug", skip(self, netns), fields(netns = netns.name()))]
    pub async fn add_address(
        &self,
        netns: &Netns,
        device: &str,
        address: IpNet,
    ) -> Result<(), Error> {
        let op = format!("add address {address}");
        let target = Target::dev(netns.name(), device);
        let index = self.index(netns, device, &op).await?;
        let handle = self.cache.handle(netns).await?;
        let mut request = handle.address().add(index, address.addr(), address.prefix_len());
        if address.addr().is_ipv6() {
            request.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(Errno::EEXIST) => {
                debug!(%address, "address already present");
                Ok(())
            }
            Err(e) => Err(self.cache.request_failed(netns, &op, target, &e)),
        }
    }

    /// Deletes `address` (exact address and prefix length) from `device`; absent = success.
    #[instrument(level = "debug", skip(self, netns), fields(netns = netns.name()))]
    pub async fn delete_address(
        &self,
        netns: &Netns,
        device: &str,
        address: IpNet,
    ) -> Result<(), Error> {
        let op = format!("delete address {address}");
        let target = Target::dev(netns.name(), device);
        let index = self.index(netns, device, &op).await?;
        let handle = self.cache.handle(netns).await?;
        match handle.address().del(address_message(index, address)).execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(Errno::EADDRNOTAVAIL) => {
                debug!(%address, "address already absent");
                Ok(())
            }
            Err(e) => Err(self.cache.request_failed(netns, &op, target, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::AddressFamily;

    use super::*;

    fn message(
        family: AddressFamily,
        prefix_len: u8,
        attrs: Vec<AddressAttribute>,
    ) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = family;
        msg.header.prefix_len = prefix_len;
        msg.attributes = attrs;
        msg
    }

    #[test]
    fn keeps_host_bits_and_prefix() {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let msg = message(
            AddressFamily::Inet,
            24,
            vec![AddressAttribute::Address(ip), AddressAttribute::Local(ip)],
        );
        assert_eq!(address_of(&msg), Some("192.0.2.10/24".parse().unwrap()));
    }

    #[test]
    fn prefers_local_over_peer() {
        let msg = message(
            AddressFamily::Inet,
            32,
            vec![
                AddressAttribute::Address("10.0.0.2".parse().unwrap()),
                AddressAttribute::Local("10.0.0.1".parse().unwrap()),
            ],
        );
        assert_eq!(address_of(&msg), Some("10.0.0.1/32".parse().unwrap()));
    }

    #[test]
    fn ipv6_without_local_uses_address() {
        let msg = message(
            AddressFamily::Inet6,
            64,
            vec![AddressAttribute::Address("fe80::1".parse().unwrap())],
        );
        assert_eq!(address_of(&msg), Some("fe80::1/64".parse().unwrap()));
    }

    #[test]
    fn bad_prefix_or_no_address_is_skipped() {
        assert_eq!(address_of(&message(AddressFamily::Inet, 24, vec![])), None);
        let msg = message(
            AddressFamily::Inet,
            40,
            vec![AddressAttribute::Local("10.0.0.1".parse().unwrap())],
        );
        assert_eq!(address_of(&msg), None);
    }

    #[test]
    fn delete_message_names_address_and_device() {
        let msg = address_message(3, "2001:db8::5/64".parse().unwrap());
        assert_eq!(msg.header.index, 3);
        assert_eq!(msg.header.prefix_len, 64);
        assert_eq!(address_of(&msg), Some("2001:db8::5/64".parse().unwrap()));
    }
}
