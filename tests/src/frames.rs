//! Announcement frames (gratuitous ARP, unsolicited neighbour advertisement) read from a
//! capture file and decoded field by field, so that what two senders put on the wire can be
//! compared as a receiver sees it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// One captured frame: when it was captured (seconds since the epoch) and its bytes.
#[derive(Debug, Clone)]
pub struct Frame {
    pub time: f64,
    pub bytes: Vec<u8>,
}

/// The frames of a classic pcap file (what `tcpdump -w` writes), also while tcpdump is still
/// writing it: a record cut short at the end is left out.
pub fn read_pcap(path: &Path) -> Result<Vec<Frame>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let Some(magic) = data.get(..4) else { bail!("{}: no pcap header", path.display()) };
    let (big_endian, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (false, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (false, true),
        [0xa1, 0xb2, 0xc3, 0xd4] => (true, false),
        [0xa1, 0xb2, 0x3c, 0x4d] => (true, true),
        _ => bail!("{}: not a pcap file", path.display()),
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
        Some(if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    };
    // Link type 1: Ethernet, what tcpdump writes for a bridge port or a veth.
    if u32_at(20) != Some(1) {
        bail!("{}: not an Ethernet capture", path.display());
    }
    let mut frames = Vec::new();
    let mut at = 24;
    while let (Some(sec), Some(frac), Some(len)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8)) {
        let start = at + 16;
        let Some(bytes) = data.get(start..start + len as usize) else { break };
        let frac = f64::from(frac) / if nanos { 1e9 } else { 1e6 };
        frames.push(Frame { time: f64::from(sec) + frac, bytes: bytes.to_vec() });
        at = start + len as usize;
    }
    Ok(frames)
}

/// A hardware address, shown as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// `aa:bb:cc:dd:ee:ff`.
    pub fn parse(text: &str) -> Option<Mac> {
        let bytes: Option<Vec<u8>> =
            text.split(':').map(|b| u8::from_str_radix(b, 16).ok()).collect();
        Some(Mac(bytes?.try_into().ok()?))
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: Vec<String> = self.0.iter().map(|b| format!("{b:02x}")).collect();
        f.write_str(&hex.join(":"))
    }
}

/// Every field of a gratuitous ARP a receiver acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arp {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    /// 1 request, 2 reply.
    pub op: u16,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

/// Every field of an unsolicited neighbour advertisement a receiver acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Na {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub ip_src: Ipv6Addr,
    pub ip_dst: Ipv6Addr,
    pub hop_limit: u8,
    pub router: bool,
    pub solicited: bool,
    pub override_: bool,
    pub target: Ipv6Addr,
    /// The Target Link-Layer Address option (type 2).
    pub target_lladdr: Option<Mac>,
    /// Any other option, as (type, bytes after type and length).
    pub other_options: Vec<(u8, Vec<u8>)>,
}

/// An announcement frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Announcement {
    Arp(Arp),
    Na(Na),
}

impl Announcement {
    /// A gratuitous ARP (sender and target protocol address the same) or a neighbour
    /// advertisement; `None` for any other frame.
    pub fn decode(frame: &[u8]) -> Option<Announcement> {
        let mac = |at: usize| -> Option<Mac> { Some(Mac(frame.get(at..at + 6)?.try_into().ok()?)) };
        let (eth_dst, eth_src) = (mac(0)?, mac(6)?);
        match u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?) {
            0x0806 => {
                let arp = frame.get(14..42)?;
                // Ethernet/IPv4 with 6- and 4-byte addresses only.
                if arp[..6] != [0, 1, 8, 0, 6, 4] {
                    return None;
                }
                let ip = |at: usize| Ipv4Addr::new(arp[at], arp[at + 1], arp[at + 2], arp[at + 3]);
                let (sender_ip, target_ip) = (ip(14), ip(24));
                (sender_ip == target_ip).then(|| {
                    Announcement::Arp(Arp {
                        eth_dst,
                        eth_src,
                        op: u16::from_be_bytes([arp[6], arp[7]]),
                        sender_mac: Mac(arp[8..14].try_into().expect("6 bytes")),
                        sender_ip,
                        target_mac: Mac(arp[18..24].try_into().expect("6 bytes")),
                        target_ip,
                    })
                })
            }
            0x86dd => {
                let ip6 = frame.get(14..54)?;
                let icmp = frame.get(54..)?;
                // Next header ICMPv6, type 136 (neighbour advertisement).
                if ip6[6] != 58 || icmp.first() != Some(&136) || icmp.len() < 24 {
                    return None;
                }
                let v6 = |b: &[u8]| -> Ipv6Addr {
                    Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes"))
                };
                let (mut target_lladdr, mut other_options) = (None, Vec::new());
                let mut rest = &icmp[24..];
                while let [kind, units, ..] = *rest {
                    let len = usize::from(units) * 8;
                    if len == 0 || rest.len() < len {
                        break;
                    }
                    match <[u8; 6]>::try_from(&rest[2..len]) {
                        Ok(mac) if kind == 2 => target_lladdr = Some(Mac(mac)),
                        _ => other_options.push((kind, rest[2..len].to_vec())),
                    }
                    rest = &rest[len..];
                }
                Some(Announcement::Na(Na {
                    eth_dst,
                    eth_src,
                    ip_src: v6(&ip6[8..24]),
                    ip_dst: v6(&ip6[24..40]),
                    hop_limit: ip6[7],
                    router: icmp[4] & 0x80 != 0,
                    solicited: icmp[4] & 0x40 != 0,
                    override_: icmp[4] & 0x20 != 0,
                    target: v6(&icmp[8..24]),
                    target_lladdr,
                    other_options,
                }))
            }
            _ => None,
        }
    }

    /// The address announced.
    pub fn address(&self) -> IpAddr {
        match self {
            Announcement::Arp(arp) => arp.sender_ip.into(),
            Announcement::Na(na) => na.target.into(),
        }
    }

    pub fn eth_src(&self) -> Mac {
        match self {
            Announcement::Arp(arp) => arp.eth_src,
            Announcement::Na(na) => na.eth_src,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_gratuitous_arp_and_skips_other_arp() {
        let mut frame = vec![0xff; 6];
        frame.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        frame.extend([2, 0, 0, 0, 0, 1, 192, 0, 2, 1]);
        frame.extend([0xff; 6]);
        frame.extend([192, 0, 2, 1]);
        let Some(Announcement::Arp(arp)) = Announcement::decode(&frame) else { panic!() };
        assert_eq!((arp.op, arp.target_mac), (1, Mac([0xff; 6])));
        assert_eq!(format!("{:?}", arp.eth_src), "02:00:00:00:00:01");
        assert_eq!(Mac::parse("02:00:00:00:00:01"), Some(arp.eth_src));
        // who-has 192.0.2.2: not gratuitous.
        frame[41] = 2;
        assert_eq!(Announcement::decode(&frame), None);
    }
}
