//! Pure builders for the announcement frames, kept free of I/O so their exact bytes can be
//! tested. Frames are complete Ethernet frames because they go out on an `AF_PACKET`
//! socket: building the IPv6 header ourselves means the kernel never has to pick (or
//! refuse, while the address is tentative or optimistic) a source address.

use std::net::{Ipv4Addr, Ipv6Addr};

/// An Ethernet (EUI-48) hardware address.
pub type Mac = [u8; 6];

/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;

const BROADCAST: Mac = [0xff; 6];
/// `ff02::1` mapped to Ethernet (RFC 2464: `33:33` + low 32 bits of the group).
const ALL_NODES_MAC: Mac = [0x33, 0x33, 0x00, 0x00, 0x00, 0x01];
/// The all-nodes link-local multicast group, where unsolicited advertisements go (RFC 4861
/// §7.2.6) so every neighbour holding a stale entry for the address sees it.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Shortest Ethernet frame without FCS. ARP is 42 bytes; not every driver pads short frames,
/// so the ARP frame carries its own padding.
const MIN_FRAME: usize = 60;
const ETH_HEADER: usize = 14;

const ICMPV6: u8 = 58;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// NA flags (RFC 4861 §4.4): R(outer), set as keepalived sets it (see [`unsolicited_na`]), and
/// O(verride). S(olicited) must stay clear in an unsolicited advertisement, and receivers drop
/// multicast NAs that set it.
const NA_ROUTER: u8 = 0x80;
const NA_OVERRIDE: u8 = 0x20;
/// Option type Target Link-Layer Address, 1 unit of 8 bytes long for Ethernet.
const OPT_TARGET_LLADDR: u8 = 2;
/// Hop limit 255 is mandatory: receivers discard ND messages that crossed a router.
const ND_HOP_LIMIT: u8 = 255;
/// ICMPv6 header (4) + flags/reserved (4) + target (16) + TLLA option (8).
const NA_LEN: usize = 32;

fn ethernet_header(frame: &mut Vec<u8>, dst: Mac, src: Mac, ethertype: u16) {
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
}

/// A gratuitous ARP request for `address`, field for field what keepalived sends at its
/// transition (`vrrp_arp.c`): broadcast, sender and target protocol address both `address`,
/// sender hardware address `mac`, target hardware address broadcast (RFC 5227 asks for zero;
/// every receiver ignores it, and the ToRs and firewalls in front of Neutron routers have only
/// ever seen keepalived's broadcast there). A request rather than a reply because every stack
/// updates an existing cache entry from a broadcast request, while some ignore unsolicited
/// replies. Unlike keepalived's 42 bytes it is padded to the Ethernet minimum: a NIC pads
/// keepalived's frame on the wire too, but not every driver pads short frames.
pub fn gratuitous_arp(mac: Mac, address: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(MIN_FRAME);
    ethernet_header(&mut frame, BROADCAST, mac, ETH_P_ARP);
    frame.extend_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    frame.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol type: IPv4
    frame.push(6); // hardware address length
    frame.push(4); // protocol address length
    frame.extend_from_slice(&1u16.to_be_bytes()); // operation: request
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&address.octets());
    frame.extend_from_slice(&BROADCAST);
    frame.extend_from_slice(&address.octets());
    frame.resize(MIN_FRAME, 0);
    frame
}

/// An unsolicited neighbour advertisement for `address` from `mac` (RFC 4861 §7.2.6), field
/// for field what keepalived sends at its transition (`vrrp_ndisc.c`): from the address
/// itself to all-nodes with hop limit 255, override flag set (the new primary's MAC must
/// replace the old one), solicited flag clear, the Target Link-Layer Address option carrying
/// `mac`, and the router flag set exactly when the device forwards IPv6 (`router`, its
/// `forwarding` sysctl): what the kernel's own advertisements from that device say too, so
/// neighbours never see the flag flip between hagw's, keepalived's and the kernel's.
pub fn unsolicited_na(mac: Mac, address: Ipv6Addr, router: bool) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(NA_LEN);
    icmp.push(NEIGHBOR_ADVERTISEMENT);
    icmp.push(0); // code
    icmp.extend_from_slice(&[0, 0]); // checksum, filled below
    let flags = if router { NA_ROUTER | NA_OVERRIDE } else { NA_OVERRIDE };
    icmp.extend_from_slice(&[flags, 0, 0, 0]);
    icmp.extend_from_slice(&address.octets());
    icmp.push(OPT_TARGET_LLADDR);
    icmp.push(1); // option length in units of 8 bytes
    icmp.extend_from_slice(&mac);
    let checksum = icmpv6_checksum(address, ALL_NODES, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());

    let mut frame = Vec::with_capacity(ETH_HEADER + 40 + NA_LEN);
    ethernet_header(&mut frame, ALL_NODES_MAC, mac, ETH_P_IPV6);
    frame.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class 0, flow label 0
    frame.extend_from_slice(&(NA_LEN as u16).to_be_bytes());
    frame.push(ICMPV6);
    frame.push(ND_HOP_LIMIT);
    frame.extend_from_slice(&address.octets());
    frame.extend_from_slice(&ALL_NODES.octets());
    frame.extend_from_slice(&icmp);
    frame
}

/// The ICMPv6 checksum (RFC 4443 §2.3): one's complement of the one's complement sum over
/// the IPv6 pseudo-header (source, destination, upper-layer length, next header) and the
/// message, whose checksum field must be zero. A receiver verifies by summing the message
/// with the checksum in place and getting `0xffff`.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum = ones_complement_sum(0, &src.octets());
    sum = ones_complement_sum(sum, &dst.octets());
    sum = ones_complement_sum(sum, &(message.len() as u32).to_be_bytes());
    sum = ones_complement_sum(sum, &[0, 0, 0, ICMPV6]);
    sum = ones_complement_sum(sum, message);
    !fold(sum)
}

/// Adds `bytes` as big-endian 16-bit words (an odd last byte padded with zero) to `sum`.
fn ones_complement_sum(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(2);
    for word in &mut words {
        sum = fold(sum + u32::from(u16::from_be_bytes([word[0], word[1]]))).into();
    }
    if let [last] = words.remainder() {
        sum = fold(sum + (u32::from(*last) << 8)).into();
    }
    sum
}

/// Folds the carries of a 32-bit accumulator back into 16 bits.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

    #[test]
    fn gratuitous_arp_bytes() {
        let frame = gratuitous_arp(MAC, Ipv4Addr::new(192, 0, 2, 10));
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            // Ethernet: broadcast, from MAC, ARP
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30,
            0x08, 0x06,
            // Ethernet/IPv4, lengths 6/4, request
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
            // sender MAC, sender IP
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, 192, 0, 2, 10,
            // target MAC broadcast (as keepalived), target IP = sender IP
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 192, 0, 2, 10,
        ];
        assert_eq!(frame.len(), 60);
        assert_eq!(frame[..42], expected);
        assert!(frame[42..].iter().all(|&b| b == 0), "padding must be zero");
    }

    #[test]
    fn unsolicited_na_bytes() {
        let address: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let frame = unsolicited_na(MAC, address, true);
        #[rustfmt::skip]
        let expected: [u8; 86] = [
            // Ethernet: 33:33:00:00:00:01, from MAC, IPv6
            0x33, 0x33, 0x00, 0x00, 0x00, 0x01,
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30,
            0x86, 0xdd,
            // IPv6: version 6, payload 32, ICMPv6, hop limit 255
            0x60, 0, 0, 0, 0x00, 0x20, 58, 255,
            // source 2001:db8::1
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
            // destination ff02::1
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
            // NA, code 0, checksum (verified with tshark), flags R|O
            136, 0, 0xfa, 0xea, 0xa0, 0, 0, 0,
            // target 2001:db8::1
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
            // option: target link-layer address, length 1, MAC
            2, 1, 0x02, 0x00, 0x5e, 0x10, 0x20, 0x30,
        ];
        assert_eq!(frame, expected);
    }

    #[test]
    fn na_flags_are_override_and_router_if_forwarding() {
        for router in [true, false] {
            let frame = unsolicited_na(MAC, "fe80::1".parse().unwrap(), router);
            let flags = frame[ETH_HEADER + 40 + 4];
            assert_eq!(flags & NA_ROUTER == NA_ROUTER, router);
            assert_eq!(flags & NA_OVERRIDE, NA_OVERRIDE);
            assert_eq!(flags & 0x40, 0, "solicited flag must be clear");
            let icmp = &frame[ETH_HEADER + 40..];
            let address = "fe80::1".parse().unwrap();
            assert_eq!(icmpv6_checksum(address, ALL_NODES, icmp), 0, "router={router}");
        }
    }

    /// A receiver's check: summing pseudo-header and message with the checksum in place
    /// gives all ones, for global and link-local sources alike.
    #[test]
    fn na_checksum_verifies() {
        for address in ["2001:db8::1", "fe80::1", "fe80::ff:fe00:1", "2001:db8:ffff:ffff::ffff"] {
            let address: Ipv6Addr = address.parse().unwrap();
            let frame = unsolicited_na(MAC, address, true);
            let icmp = &frame[ETH_HEADER + 40..];
            assert_eq!(icmpv6_checksum(address, ALL_NODES, icmp), 0, "{address}");
        }
    }

    #[test]
    fn odd_length_and_carry_folding() {
        // RFC 1071 §3 example: 0001 f203 f4f5 f6f7 sums to ddf2 (one's complement).
        let sum = ones_complement_sum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
        assert_eq!(sum, 0xddf2);
        assert_eq!(ones_complement_sum(0, &[0xab]), 0xab00);
        assert_eq!(fold(0x1_fffe), 0xffff);
    }
}
