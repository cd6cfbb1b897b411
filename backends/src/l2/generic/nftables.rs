//! The router-namespace hold of the generic backend, spoken as nf_tables netlink messages
//! (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_NFTABLES`), so that reading and lifting a hold
//! costs one socket round trip instead of an `nft` process: the hold is read on every pass
//! and lifted on the takeover path.
//!
//! What a hold builds (two tables, since ARP has its own family), in one atomic batch:
//!
//! ```text
//! table inet hagw {
//!   set held { type ifname; }
//!   chain hold { type filter hook postrouting priority -300; policy accept;
//!                oifname @held drop }
//! }
//! table arp hagw {
//!   set held { type ifname; }
//!   chain hold { type filter hook output priority -300; policy accept;
//!                oifname @held drop }
//! }
//! ```
//!
//! Every IPv4 and IPv6 packet the kernel sends out of a held device (MLD reports, DAD and
//! other neighbour solicitations, router solicitations, IGMP, forwarded traffic) passes the
//! postrouting hook, every ARP packet the ARP output hook; the match is on the device *name*,
//! so the hold is in force before the device exists. Frames written to packet sockets (a
//! primary's gratuitous ARPs, from keepalived or hagw) do not pass netfilter.

use std::io;

/// The tables' name in both families.
pub const TABLE: &str = "hagw";
pub const SET: &str = "held";
pub const CHAIN: &str = "hold";
/// Before anything a distribution or Neutron installs at the usual filter priorities.
pub const PRIORITY: i32 = -300;
/// `IFNAMSIZ`: an interface name as a set key, NUL-padded.
pub const IFNAME_LEN: usize = 16;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
pub const NLMSG_ERROR: u16 = 2;

const NFT_MSG_NEWTABLE: u8 = 0;
const NFT_MSG_NEWCHAIN: u8 = 3;
const NFT_MSG_NEWRULE: u8 = 6;
const NFT_MSG_DELRULE: u8 = 8;
const NFT_MSG_NEWSET: u8 = 9;
pub const NFT_MSG_NEWSETELEM: u8 = 12;
const NFT_MSG_GETSETELEM: u8 = 13;
const NFT_MSG_DELSETELEM: u8 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
/// nft's own annotation of a set (libnftnl `NFTNL_UDATA_SET_KEYBYTEORDER` = host endian):
/// without it `nft list` reads the names backwards and shows them empty.
const SET_USERDATA: [u8; 6] = {
    let order = 1u32.to_ne_bytes();
    [0, 4, order[0], order[1], order[2], order[3]]
};
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;

const NFT_META_OIFNAME: u32 = 7;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
/// nft's datatype id for `ifname` (only `nft list` reads it; the kernel keeps it opaque).
const TYPE_IFNAME: u32 = 41;
/// The set's id inside one batch, so the rule can refer to a set created in the same batch.
const SET_ID: u32 = 1;

/// The two families a hold covers, with the hook each one's chain is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 + IPv6, `postrouting` (`NF_INET_POST_ROUTING`).
    Inet,
    /// ARP, `output` (`NF_ARP_OUT`).
    Arp,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Inet, Family::Arp];

    fn nfproto(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Arp => 3,
        }
    }

    fn hook(self) -> u32 {
        match self {
            Family::Inet => 4,
            Family::Arp => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Arp => "arp",
        }
    }
}

/// An interface name as the set stores it; `None` if it cannot be an interface name.
pub fn ifname_key(name: &str) -> Option<[u8; IFNAME_LEN]> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= IFNAME_LEN || bytes.contains(&0) {
        return None;
    }
    let mut key = [0; IFNAME_LEN];
    key[..bytes.len()].copy_from_slice(bytes);
    Some(key)
}

/// A netlink attribute stream under construction.
#[derive(Debug, Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(mut self, kind: u16, payload: &[u8]) -> Self {
        let len = u16::try_from(4 + payload.len()).expect("attribute fits in 64 KiB");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    fn string(self, kind: u16, value: &str) -> Self {
        let mut payload = value.as_bytes().to_vec();
        payload.push(0);
        self.put(kind, &payload)
    }

    /// nf_tables integers are big-endian.
    fn be32(self, kind: u16, value: u32) -> Self {
        self.put(kind, &value.to_be_bytes())
    }

    fn nested(self, kind: u16, inner: Attrs) -> Self {
        self.put(kind | NLA_F_NESTED, &inner.0)
    }
}

/// One nf_tables message: netlink header, `nfgenmsg`, attributes.
fn message(kind: u16, flags: u16, seq: u32, nfproto: u8, res_id: u16, attrs: Attrs) -> Vec<u8> {
    let len = u32::try_from(16 + 4 + attrs.0.len()).expect("message fits in 4 GiB");
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(nfproto);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(&attrs.0);
    out
}

fn nft_message(cmd: u8, flags: u16, seq: u32, family: Family, attrs: Attrs) -> Vec<u8> {
    let kind = (NFNL_SUBSYS_NFTABLES << 8) | u16::from(cmd);
    message(kind, flags, seq, family.nfproto(), 0, attrs)
}

/// A batch: the messages between BEGIN and END commit atomically, all or nothing.
#[derive(Debug)]
pub struct Batch {
    pub bytes: Vec<u8>,
    /// The sequence numbers of the messages that will be acknowledged, in order.
    pub acked: Vec<u32>,
    next: u32,
}

impl Batch {
    fn new() -> Batch {
        let mut batch = Batch { bytes: Vec::new(), acked: Vec::new(), next: 1 };
        let begin = batch.take_seq();
        batch.bytes.extend(message(
            NFNL_MSG_BATCH_BEGIN,
            0,
            begin,
            0,
            NFNL_SUBSYS_NFTABLES,
            Attrs::default(),
        ));
        batch
    }

    fn take_seq(&mut self) -> u32 {
        let seq = self.next;
        self.next += 1;
        seq
    }

    fn push(&mut self, cmd: u8, flags: u16, family: Family, attrs: Attrs) {
        let seq = self.take_seq();
        self.bytes.extend(nft_message(cmd, flags | NLM_F_ACK, seq, family, attrs));
        self.acked.push(seq);
    }

    fn end(mut self) -> Batch {
        let end = self.take_seq();
        self.bytes.extend(message(
            NFNL_MSG_BATCH_END,
            0,
            end,
            0,
            NFNL_SUBSYS_NFTABLES,
            Attrs::default(),
        ));
        self
    }
}

fn elements(key: &[u8; IFNAME_LEN]) -> Attrs {
    let value = Attrs::default().put(NFTA_DATA_VALUE, key);
    let elem = Attrs::default().nested(NFTA_SET_ELEM_KEY, value);
    Attrs::default().nested(NFTA_LIST_ELEM, elem)
}

fn element_list(key: &[u8; IFNAME_LEN]) -> Attrs {
    Attrs::default()
        .string(NFTA_SET_ELEM_LIST_TABLE, TABLE)
        .string(NFTA_SET_ELEM_LIST_SET, SET)
        .nested(NFTA_SET_ELEM_LIST_ELEMENTS, elements(key))
}

fn expr(name: &str, data: Attrs) -> Attrs {
    let e = Attrs::default().string(NFTA_EXPR_NAME, name).nested(NFTA_EXPR_DATA, data);
    Attrs::default().nested(NFTA_LIST_ELEM, e)
}

/// `oifname @held drop`: meta oifname into register 1, look it up in the set, drop.
fn hold_rule() -> Attrs {
    let meta = expr(
        "meta",
        Attrs::default().be32(NFTA_META_KEY, NFT_META_OIFNAME).be32(NFTA_META_DREG, NFT_REG_1),
    );
    let lookup = expr(
        "lookup",
        Attrs::default()
            .string(NFTA_LOOKUP_SET, SET)
            .be32(NFTA_LOOKUP_SET_ID, SET_ID)
            .be32(NFTA_LOOKUP_SREG, NFT_REG_1),
    );
    let verdict = Attrs::default().be32(NFTA_VERDICT_CODE, NF_DROP);
    let data = Attrs::default().nested(NFTA_DATA_VERDICT, verdict);
    let drop = expr(
        "immediate",
        Attrs::default()
            .be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT)
            .nested(NFTA_IMMEDIATE_DATA, data),
    );
    let mut all = meta;
    all.0.extend(lookup.0);
    all.0.extend(drop.0);
    all
}

/// One batch that (re)builds both tables around whatever is there and adds `device` to both
/// sets: `add table/set/chain` (no-ops when present), `flush chain` + `add rule` (exactly one
/// rule however often it runs, and no instant without it, as the batch is atomic), `add
/// element`.
pub fn hold_batch(device: &[u8; IFNAME_LEN]) -> Batch {
    let mut batch = Batch::new();
    for family in Family::ALL {
        batch.push(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            family,
            Attrs::default().string(NFTA_TABLE_NAME, TABLE),
        );
        batch.push(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            family,
            Attrs::default()
                .string(NFTA_SET_TABLE, TABLE)
                .string(NFTA_SET_NAME, SET)
                .be32(NFTA_SET_KEY_TYPE, TYPE_IFNAME)
                .be32(NFTA_SET_KEY_LEN, IFNAME_LEN as u32)
                .be32(NFTA_SET_ID, SET_ID)
                .put(NFTA_SET_USERDATA, &SET_USERDATA),
        );
        let hook = Attrs::default()
            .be32(NFTA_HOOK_HOOKNUM, family.hook())
            .be32(NFTA_HOOK_PRIORITY, PRIORITY as u32);
        batch.push(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            family,
            Attrs::default()
                .string(NFTA_CHAIN_TABLE, TABLE)
                .string(NFTA_CHAIN_NAME, CHAIN)
                .nested(NFTA_CHAIN_HOOK, hook)
                .be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
                .string(NFTA_CHAIN_TYPE, "filter"),
        );
        let chain = Attrs::default().string(NFTA_RULE_TABLE, TABLE).string(NFTA_RULE_CHAIN, CHAIN);
        batch.push(NFT_MSG_DELRULE, 0, family, chain);
        let chain = Attrs::default().string(NFTA_RULE_TABLE, TABLE).string(NFTA_RULE_CHAIN, CHAIN);
        batch.push(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            family,
            chain.nested(NFTA_RULE_EXPRESSIONS, hold_rule()),
        );
        batch.push(NFT_MSG_NEWSETELEM, NLM_F_CREATE, family, element_list(device));
    }
    batch.end()
}

/// Removes `device` from the sets of `families` (those that hold it: a missing element
/// aborts the whole batch with ENOENT, and an aborted batch costs the kernel an RCU grace
/// period).
pub fn release_batch(families: &[Family], device: &[u8; IFNAME_LEN]) -> Batch {
    let mut batch = Batch::new();
    for family in families {
        batch.push(NFT_MSG_DELSETELEM, 0, *family, element_list(device));
    }
    batch.end()
}

/// Asks whether `device` is in one family's set: the reply is the element, or ENOENT when the
/// element, the set or the table is missing.
pub fn get_element(family: Family, device: &[u8; IFNAME_LEN], seq: u32) -> Vec<u8> {
    nft_message(NFT_MSG_GETSETELEM, 0, seq, family, element_list(device))
}

/// One message of a reply, reduced to what the exchanges need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `NLMSG_ERROR`: `errno` 0 is an acknowledgement.
    Ack { seq: u32, errno: i32 },
    /// Any other message (a GET's answer).
    Message { kind: u16, seq: u32 },
}

/// Splits a datagram into messages. A truncated message is an error, never skipped.
pub fn parse_replies(buf: &[u8]) -> io::Result<Vec<Reply>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {what}"));
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > rest.len() {
            return Err(bad("truncated message"));
        }
        let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
        if kind == NLMSG_ERROR {
            if len < 20 {
                return Err(bad("short error message"));
            }
            let errno = i32::from_ne_bytes(rest[16..20].try_into().expect("4 bytes"));
            out.push(Reply::Ack { seq, errno: -errno });
        } else {
            out.push(Reply::Message { kind, seq });
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    Ok(out)
}

/// The message kind of an element in a GET's answer.
pub fn new_set_elem_kind() -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | u16::from(NFT_MSG_NEWSETELEM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs_of(msg: &[u8]) -> &[u8] {
        &msg[20..]
    }

    #[test]
    fn interface_names_become_nul_padded_keys() {
        let key = ifname_key("qg-1234abcd-56").unwrap();
        assert_eq!(&key[..14], b"qg-1234abcd-56");
        assert_eq!(&key[14..], &[0, 0]);
        assert_eq!(ifname_key(""), None);
        assert_eq!(ifname_key("0123456789abcdef"), None, "16 bytes leave no room for NUL");
        assert_eq!(ifname_key("a\0b"), None);
    }

    #[test]
    fn a_get_names_table_set_and_key() {
        let key = ifname_key("qg-1").unwrap();
        let msg = get_element(Family::Arp, &key, 7);
        assert_eq!(u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize, msg.len());
        assert_eq!(u16::from_ne_bytes(msg[4..6].try_into().unwrap()), (10 << 8) | 13);
        assert_eq!(u32::from_ne_bytes(msg[8..12].try_into().unwrap()), 7);
        assert_eq!(msg[16], 3, "NFPROTO_ARP");
        let a = attrs_of(&msg);
        // table "hagw\0" padded to 8, set "held\0" padded to 8.
        assert_eq!(&a[0..4], &[9, 0, 1, 0]);
        assert_eq!(&a[4..9], b"hagw\0");
        assert_eq!(&a[12..16], &[9, 0, 2, 0]);
        assert_eq!(&a[16..21], b"held\0");
        // elements: nested list → elem → key → value (16 bytes).
        assert_eq!(u16::from_ne_bytes(a[26..28].try_into().unwrap()), 3 | NLA_F_NESTED);
        assert_eq!(&a[a.len() - 16..], &key);
    }

    #[test]
    fn a_hold_is_one_batch_acknowledged_message_by_message() {
        let batch = hold_batch(&ifname_key("qg-1").unwrap());
        let replies = parse_replies(&batch.bytes).unwrap();
        let kinds: Vec<u16> = replies
            .iter()
            .map(|r| match r {
                Reply::Message { kind, .. } => *kind,
                Reply::Ack { .. } => panic!("no error messages in a request"),
            })
            .collect();
        let nft = |cmd: u8| (10 << 8) | u16::from(cmd);
        let per_family = [
            nft(NFT_MSG_NEWTABLE),
            nft(NFT_MSG_NEWSET),
            nft(NFT_MSG_NEWCHAIN),
            nft(NFT_MSG_DELRULE),
            nft(NFT_MSG_NEWRULE),
            nft(NFT_MSG_NEWSETELEM),
        ];
        let mut want = vec![NFNL_MSG_BATCH_BEGIN];
        want.extend(per_family);
        want.extend(per_family);
        want.push(NFNL_MSG_BATCH_END);
        assert_eq!(kinds, want);
        assert_eq!(batch.acked, (2..=13).collect::<Vec<u32>>());
    }

    #[test]
    fn errors_and_answers_are_told_apart() {
        let mut buf = Vec::new();
        // An error message: header + errno -2 + the original header.
        buf.extend_from_slice(&36u32.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf.extend_from_slice(&0u16.to_ne_bytes());
        buf.extend_from_slice(&5u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&(-2i32).to_ne_bytes());
        buf.extend_from_slice(&[0; 16]);
        let answer = message(new_set_elem_kind(), 0, 6, 1, 0, Attrs::default().be32(1, 1));
        buf.extend_from_slice(&answer);
        assert_eq!(
            parse_replies(&buf).unwrap(),
            vec![
                Reply::Ack { seq: 5, errno: 2 },
                Reply::Message { kind: new_set_elem_kind(), seq: 6 }
            ]
        );
        assert!(parse_replies(&buf[..30]).is_err());
    }
}
