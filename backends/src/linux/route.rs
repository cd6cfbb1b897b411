//! Routes through the gateway device: dump (normalized to core's [`RouteSpec`]) and add.
//!
//! Only routes hagw (or keepalived's `virtual_routes`, or an operator with `ip route`) could
//! have added are reported: the kernel's own prefix, link-local, multicast and local routes
//! come and go with addresses and link state, and comparing them against the spec would
//! make the planner chase the kernel.

use std::net::IpAddr;

use futures::TryStreamExt;
use hagw_core::Error;
use hagw_core::model::RouteSpec;
use ipnet::IpNet;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};
use tracing::{debug, instrument};

use super::LinuxNet;
use super::error::Target;
use crate::netns::Netns;

/// The main routing table, where keepalived and `ip route add` put routes by default.
const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// Converts a kernel route into a [`RouteSpec`] if it is a main-table unicast route out of
/// device `index` that hagw manages: protocol `static` (hagw, keepalived) or `boot` (the
/// default of `ip route add`). The destination is truncated to its network.
pub fn normalize_route(msg: &RouteMessage, index: u32) -> Option<RouteSpec> {
    let header = &msg.header;
    if header.kind != RouteType::Unicast
        || !matches!(header.protocol, RouteProtocol::Static | RouteProtocol::Boot)
    {
        return None;
    }
    let mut table = u32::from(header.table);
    let mut oif = None;
    let mut destination = None;
    let mut via = None;
    for attr in &msg.attributes {
        match attr {
            // The header only has room for tables below 256; the attribute is authoritative.
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(address) => destination = Some(ip_of(address)?),
            RouteAttribute::Gateway(address) => via = Some(ip_of(address)?),
            RouteAttribute::Via(RouteVia::Inet(ip)) => via = Some(IpAddr::V4(*ip)),
            RouteAttribute::Via(RouteVia::Inet6(ip)) => via = Some(IpAddr::V6(*ip)),
            _ => {}
        }
    }
    if table != MAIN_TABLE || oif != Some(index) {
        return None;
    }
    let destination = match destination {
        Some(ip) => ip,
        // No RTA_DST: the default route of the family.
        None => match header.address_family {
            AddressFamily::Inet => IpAddr::from([0u8; 4]),
            AddressFamily::Inet6 => IpAddr::from([0u8; 16]),
            _ => return None,
        },
    };
    let destination = IpNet::new(destination, header.destination_prefix_length).ok()?.trunc();
    if is_kernel_managed(&destination) {
        return None;
    }
    Some(RouteSpec { destination, via })
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// IPv6 link-local and multicast destinations belong to the kernel even when some tool
/// re-adds them with another protocol.
fn is_kernel_managed(destination: &IpNet) -> bool {
    match destination {
        IpNet::V6(net) => {
            let first = net.network().segments()[0];
            (first & 0xffc0 == 0xfe80 && net.prefix_len() >= 10) || first & 0xff00 == 0xff00
        }
        IpNet::V4(net) => net.network().is_multicast(),
    }
}

/// The message that adds `route` out of device `index` in the main table with protocol
/// `static`, as keepalived's `virtual_routes … protocol static` does.
pub fn route_message(route: &RouteSpec, index: u32) -> Result<RouteMessage, String> {
    let destination = route.destination.trunc();
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(destination.addr(), destination.prefix_len())
        .map_err(|e| e.to_string())?
        .output_interface(index)
        .table_id(MAIN_TABLE)
        .protocol(RouteProtocol::Static);
    match route.via {
        Some(via) => builder = builder.gateway(via).map_err(|e| e.to_string())?,
        // Like `ip route add PREFIX dev X`: an IPv4 route without a gateway is on-link.
        None if destination.addr().is_ipv4() => builder = builder.scope(RouteScope::Link),
        None => {}
    }
    Ok(builder.build())
}

const DUMP_OP: &str = "dump routes";

impl LinuxNet {
    /// Main-table routes out of `device` that hagw manages (see [`normalize_route`]).
    #[instrument(level = "debug", skip(self, netns), fields(netns = netns.name()))]
    pub async fn routes(&self, netns: &Netns, device: &str) -> Result<Vec<RouteSpec>, Error> {
        let index = self.index(netns, device, DUMP_OP).await?;
        self.routes_of_index(netns, device, index).await
    }

    /// [`routes`](Self::routes) for a device whose index is already known.
    pub(crate) async fn routes_of_index(
        &self,
        netns: &Netns,
        device: &str,
        index: u32,
    ) -> Result<Vec<RouteSpec>, Error> {
        let target = Target::dev(netns.name(), device);
        let handle = self.cache.handle(netns).await?;
        let _dump = handle.lock_dump().await;
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let messages: Vec<RouteMessage> = handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|e| self.cache.request_failed(netns, DUMP_OP, target, &e))?;
            routes.extend(messages.iter().filter_map(|m| normalize_route(m, index)));
        }
        routes.sort();
        routes.dedup();
        Ok(routes)
    }

    /// Adds `route` out of `device`, replacing any main-table route to the same destination
    /// (a stale default route via another gateway or device is what a takeover must fix).
    #[instrument(level = "debug", skip(self, netns), fields(netns = netns.name()))]
    pub async fn add_route(
        &self,
        netns: &Netns,
        device: &str,
        route: &RouteSpec,
    ) -> Result<(), Error> {
        let op = match route.via {
            Some(via) => format!("add route {} via {via}", route.destination),
            None => format!("add route {}", route.destination),
        };
        let target = Target::dev(netns.name(), device);
        let index = self.index(netns, device, &op).await?;
        let message = route_message(route, index).map_err(|e| Error::permanent(&op, target, e))?;
        let handle = self.cache.handle(netns).await?;
        handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|e| self.cache.request_failed(netns, &op, target, &e))?;
        debug!(index, "route set");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        family: AddressFamily,
        protocol: RouteProtocol,
        kind: RouteType,
        prefix: u8,
        attrs: Vec<RouteAttribute>,
    ) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family;
        msg.header.protocol = protocol;
        msg.header.kind = kind;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.destination_prefix_length = prefix;
        msg.attributes = attrs;
        msg
    }

    fn v4(s: &str) -> RouteAddress {
        RouteAddress::Inet(s.parse().unwrap())
    }

    fn v6(s: &str) -> RouteAddress {
        RouteAddress::Inet6(s.parse().unwrap())
    }

    fn spec(destination: &str, via: Option<&str>) -> RouteSpec {
        RouteSpec {
            destination: destination.parse().unwrap(),
            via: via.map(|v| v.parse().unwrap()),
        }
    }

    #[test]
    fn default_route_via_gateway() {
        let msg = route(
            AddressFamily::Inet,
            RouteProtocol::Static,
            RouteType::Unicast,
            0,
            vec![
                RouteAttribute::Table(254),
                RouteAttribute::Gateway(v4("192.0.2.1")),
                RouteAttribute::Oif(4),
            ],
        );
        assert_eq!(normalize_route(&msg, 4), Some(spec("0.0.0.0/0", Some("192.0.2.1"))));
        assert_eq!(normalize_route(&msg, 5), None, "other device");
    }

    #[test]
    fn ipv6_default_and_on_link_routes() {
        let msg = route(
            AddressFamily::Inet6,
            RouteProtocol::Boot,
            RouteType::Unicast,
            0,
            vec![RouteAttribute::Gateway(v6("2001:db8::1")), RouteAttribute::Oif(4)],
        );
        assert_eq!(normalize_route(&msg, 4), Some(spec("::/0", Some("2001:db8::1"))));
        let on_link = route(
            AddressFamily::Inet,
            RouteProtocol::Boot,
            RouteType::Unicast,
            24,
            vec![RouteAttribute::Destination(v4("198.51.100.7")), RouteAttribute::Oif(4)],
        );
        assert_eq!(normalize_route(&on_link, 4), Some(spec("198.51.100.0/24", None)));
    }

    #[test]
    fn ipv4_via_ipv6_gateway() {
        let msg = route(
            AddressFamily::Inet,
            RouteProtocol::Static,
            RouteType::Unicast,
            0,
            vec![
                RouteAttribute::Via(RouteVia::Inet6("fe80::1".parse().unwrap())),
                RouteAttribute::Oif(4),
            ],
        );
        assert_eq!(normalize_route(&msg, 4), Some(spec("0.0.0.0/0", Some("fe80::1"))));
    }

    #[test]
    fn kernel_and_foreign_routes_are_skipped() {
        let prefix = route(
            AddressFamily::Inet,
            RouteProtocol::Kernel,
            RouteType::Unicast,
            24,
            vec![RouteAttribute::Destination(v4("192.0.2.0")), RouteAttribute::Oif(4)],
        );
        let link_local = route(
            AddressFamily::Inet6,
            RouteProtocol::Boot,
            RouteType::Unicast,
            64,
            vec![RouteAttribute::Destination(v6("fe80::")), RouteAttribute::Oif(4)],
        );
        let multicast = route(
            AddressFamily::Inet6,
            RouteProtocol::Static,
            RouteType::Multicast,
            8,
            vec![RouteAttribute::Destination(v6("ff00::")), RouteAttribute::Oif(4)],
        );
        let multicast_unicast_kind = route(
            AddressFamily::Inet6,
            RouteProtocol::Static,
            RouteType::Unicast,
            8,
            vec![RouteAttribute::Destination(v6("ff00::")), RouteAttribute::Oif(4)],
        );
        let local = route(
            AddressFamily::Inet,
            RouteProtocol::Static,
            RouteType::Local,
            32,
            vec![RouteAttribute::Destination(v4("192.0.2.10")), RouteAttribute::Oif(4)],
        );
        let mut other_table = route(
            AddressFamily::Inet,
            RouteProtocol::Static,
            RouteType::Unicast,
            0,
            vec![RouteAttribute::Table(300), RouteAttribute::Oif(4)],
        );
        other_table.header.table = 252;
        let ra = route(
            AddressFamily::Inet6,
            RouteProtocol::Ra,
            RouteType::Unicast,
            0,
            vec![RouteAttribute::Oif(4)],
        );
        for msg in [prefix, link_local, multicast, multicast_unicast_kind, local, other_table, ra] {
            assert_eq!(normalize_route(&msg, 4), None, "{msg:?}");
        }
    }

    #[test]
    fn add_message_round_trips_through_normalize() {
        for s in [
            spec("0.0.0.0/0", Some("192.0.2.1")),
            spec("2001:db8:1::/48", Some("2001:db8::1")),
            spec("198.51.100.0/24", None),
        ] {
            let msg = route_message(&s, 9).unwrap();
            assert_eq!(normalize_route(&msg, 9), Some(s.clone()));
        }
    }

    #[test]
    fn add_message_truncates_host_bits_and_scopes_on_link_ipv4() {
        let msg = route_message(&spec("198.51.100.7/24", None), 9).unwrap();
        assert_eq!(msg.header.scope, RouteScope::Link);
        assert!(msg.attributes.contains(&RouteAttribute::Destination(v4("198.51.100.0"))));
        let gw = route_message(&spec("0.0.0.0/0", Some("192.0.2.1")), 9).unwrap();
        assert_eq!(gw.header.scope, RouteScope::Universe);
    }
}
