//! nf_tables messages: requests and batches built from a [`HoldSpec`], and replies parsed
//! down to their attributes. Integers in nf_tables attributes are big-endian; netlink's own
//! headers are in host order.

use super::{CHAIN, HoldSpec, IFNAME_LEN, Key, PRIORITY, TABLE};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

pub const NFT_MSG_NEWTABLE: u8 = 0;
pub const NFT_MSG_GETTABLE: u8 = 1;
pub const NFT_MSG_NEWCHAIN: u8 = 3;
pub const NFT_MSG_GETCHAIN: u8 = 4;
pub const NFT_MSG_NEWRULE: u8 = 6;
pub const NFT_MSG_GETRULE: u8 = 7;
const NFT_MSG_DELRULE: u8 = 8;
pub const NFT_MSG_NEWSET: u8 = 9;
pub const NFT_MSG_GETSET: u8 = 10;
pub const NFT_MSG_NEWSETELEM: u8 = 12;
pub const NFT_MSG_GETSETELEM: u8 = 13;
const NFT_MSG_DELSETELEM: u8 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
/// The flag bits of an attribute type (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

pub const NFTA_TABLE_NAME: u16 = 1;
pub const NFTA_CHAIN_TABLE: u16 = 1;
pub const NFTA_CHAIN_NAME: u16 = 3;
pub const NFTA_CHAIN_HOOK: u16 = 4;
pub const NFTA_CHAIN_POLICY: u16 = 5;
pub const NFTA_CHAIN_TYPE: u16 = 7;
pub const NFTA_HOOK_HOOKNUM: u16 = 1;
pub const NFTA_HOOK_PRIORITY: u16 = 2;
pub const NFTA_RULE_TABLE: u16 = 1;
pub const NFTA_RULE_CHAIN: u16 = 2;
pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub const NFTA_LIST_ELEM: u16 = 1;
pub const NFTA_EXPR_NAME: u16 = 1;
pub const NFTA_EXPR_DATA: u16 = 2;
pub const NFTA_META_DREG: u16 = 1;
pub const NFTA_META_KEY: u16 = 2;
pub const NFTA_LOOKUP_SET: u16 = 1;
pub const NFTA_LOOKUP_SREG: u16 = 2;
pub const NFTA_LOOKUP_SET_ID: u16 = 4;
pub const NFTA_LOOKUP_FLAGS: u16 = 5;
pub const NFTA_IMMEDIATE_DREG: u16 = 1;
pub const NFTA_IMMEDIATE_DATA: u16 = 2;
pub const NFTA_DATA_VALUE: u16 = 1;
pub const NFTA_DATA_VERDICT: u16 = 2;
pub const NFTA_VERDICT_CODE: u16 = 1;
pub const NFTA_SET_TABLE: u16 = 1;
pub const NFTA_SET_NAME: u16 = 2;
pub const NFTA_SET_FLAGS: u16 = 3;
pub const NFTA_SET_KEY_TYPE: u16 = 4;
pub const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_EXPR: u16 = 17;
/// nft's own annotation of a set (libnftnl `NFTNL_UDATA_SET_KEYBYTEORDER` = host endian):
/// without it `nft list` reads the names backwards and shows them empty.
const SET_USERDATA: [u8; 6] = {
    let order = 1u32.to_ne_bytes();
    [0, 4, order[0], order[1], order[2], order[3]]
};
pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub const NFTA_SET_ELEM_KEY: u16 = 1;

pub const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
pub const NF_DROP: u32 = 0;
pub const NF_ACCEPT: u32 = 1;
/// nft's datatype id for `ifname` (only `nft list` reads it; the kernel keeps it opaque).
pub const TYPE_IFNAME: u32 = 41;
/// Elements per message: an attribute's length is 16 bits, and an element is 28 bytes.
const ELEMENTS_PER_MESSAGE: usize = 1024;

/// A netlink attribute stream under construction.
#[derive(Debug, Default)]
pub struct Attrs(Vec<u8>);

impl Attrs {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn put(mut self, kind: u16, payload: &[u8]) -> Self {
        let len = u16::try_from(4 + payload.len()).expect("attribute fits in 64 KiB");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    pub fn string(self, kind: u16, value: &str) -> Self {
        let mut payload = value.as_bytes().to_vec();
        payload.push(0);
        self.put(kind, &payload)
    }

    pub fn be32(self, kind: u16, value: u32) -> Self {
        self.put(kind, &value.to_be_bytes())
    }

    pub fn nested(self, kind: u16, inner: Attrs) -> Self {
        self.put(kind | NLA_F_NESTED, &inner.0)
    }

    pub fn append(mut self, other: Attrs) -> Self {
        self.0.extend(other.0);
        self
    }
}

/// One message: netlink header, `nfgenmsg`, attributes.
fn message(kind: u16, flags: u16, seq: u32, nfproto: u8, res_id: u16, attrs: &Attrs) -> Vec<u8> {
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

fn nft_kind(cmd: u8) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | u16::from(cmd)
}

/// A request outside a batch: a GET, or with `dump` every object that matches.
pub fn request(cmd: u8, spec: &HoldSpec, dump: bool, seq: u32, attrs: Attrs) -> Vec<u8> {
    let flags = if dump { NLM_F_DUMP } else { NLM_F_ACK };
    message(nft_kind(cmd), flags, seq, spec.family.nfproto(), 0, &attrs)
}

/// The attributes naming the table, the set, the chain of `spec`.
pub fn table_attrs() -> Attrs {
    Attrs::default().string(NFTA_TABLE_NAME, TABLE)
}
pub fn set_attrs(spec: &HoldSpec) -> Attrs {
    Attrs::default().string(NFTA_SET_TABLE, TABLE).string(NFTA_SET_NAME, spec.set)
}
pub fn chain_attrs() -> Attrs {
    Attrs::default().string(NFTA_CHAIN_TABLE, TABLE).string(NFTA_CHAIN_NAME, CHAIN)
}
pub fn rule_attrs() -> Attrs {
    Attrs::default().string(NFTA_RULE_TABLE, TABLE).string(NFTA_RULE_CHAIN, CHAIN)
}
/// The set's elements `keys` (none: the whole set, for a dump).
pub fn element_attrs(spec: &HoldSpec, keys: &[Key]) -> Attrs {
    let list = Attrs::default()
        .string(NFTA_SET_ELEM_LIST_TABLE, TABLE)
        .string(NFTA_SET_ELEM_LIST_SET, spec.set);
    if keys.is_empty() {
        return list;
    }
    let mut elements = Attrs::default();
    for key in keys {
        let value = Attrs::default().put(NFTA_DATA_VALUE, key);
        let elem = Attrs::default().nested(NFTA_SET_ELEM_KEY, value);
        elements = elements.nested(NFTA_LIST_ELEM, elem);
    }
    list.nested(NFTA_SET_ELEM_LIST_ELEMENTS, elements)
}

/// A batch: the messages between BEGIN and END commit atomically, all or nothing.
#[derive(Debug)]
pub struct Batch {
    pub bytes: Vec<u8>,
    /// The sequence numbers of the messages that will be acknowledged, in order.
    pub acked: Vec<u32>,
    /// The first and last sequence number of the batch (BEGIN and END): the kernel answers
    /// a batch it refuses as a whole (no privilege, no nf_tables) on BEGIN's.
    pub first: u32,
    next: u32,
    sets: u32,
}

impl Batch {
    /// A batch whose sequence numbers start at `first`.
    pub fn new(first: u32) -> Batch {
        let mut batch = Batch { bytes: Vec::new(), acked: Vec::new(), first, next: first, sets: 0 };
        let begin = batch.take_seq();
        batch.bytes.extend(message(
            NFNL_MSG_BATCH_BEGIN,
            0,
            begin,
            0,
            NFNL_SUBSYS_NFTABLES,
            &Attrs::default(),
        ));
        batch
    }

    fn take_seq(&mut self) -> u32 {
        let seq = self.next;
        self.next += 1;
        seq
    }

    fn push(&mut self, cmd: u8, flags: u16, spec: &HoldSpec, attrs: Attrs) {
        let seq = self.take_seq();
        let kind = nft_kind(cmd);
        self.bytes.extend(message(kind, flags | NLM_F_ACK, seq, spec.family.nfproto(), 0, &attrs));
        self.acked.push(seq);
    }

    /// (Re)builds `spec`'s table around whatever is there: `add table/set/chain` (no-ops
    /// when present), `flush chain` + `add rule` (exactly one rule however often it runs,
    /// and no instant without it, as the batch is atomic).
    pub fn ensure(&mut self, spec: &HoldSpec) {
        self.sets += 1;
        let set_id = self.sets;
        self.push(NFT_MSG_NEWTABLE, NLM_F_CREATE, spec, table_attrs());
        let mut set = set_attrs(spec)
            .be32(NFTA_SET_FLAGS, 0)
            .be32(NFTA_SET_KEY_TYPE, TYPE_IFNAME)
            .be32(NFTA_SET_KEY_LEN, IFNAME_LEN as u32)
            .be32(NFTA_SET_ID, set_id)
            .put(NFTA_SET_USERDATA, &SET_USERDATA);
        if spec.counter {
            set = set.nested(NFTA_SET_EXPR, counter_expr());
        }
        self.push(NFT_MSG_NEWSET, NLM_F_CREATE, spec, set);
        let hook = Attrs::default()
            .be32(NFTA_HOOK_HOOKNUM, spec.hook)
            .be32(NFTA_HOOK_PRIORITY, PRIORITY as u32);
        let chain = chain_attrs()
            .nested(NFTA_CHAIN_HOOK, hook)
            .be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
            .string(NFTA_CHAIN_TYPE, "filter");
        self.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, spec, chain);
        self.push(NFT_MSG_DELRULE, 0, spec, rule_attrs());
        let rule = rule_attrs().nested(NFTA_RULE_EXPRESSIONS, hold_rule(spec, set_id));
        self.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, spec, rule);
    }

    /// Adds `keys` to `spec`'s set (present ones are no-ops).
    pub fn add_elements(&mut self, spec: &HoldSpec, keys: &[Key]) {
        for chunk in keys.chunks(ELEMENTS_PER_MESSAGE) {
            self.push(NFT_MSG_NEWSETELEM, NLM_F_CREATE, spec, element_attrs(spec, chunk));
        }
    }

    /// Deletes `keys` from `spec`'s set. A key the set does not hold aborts the whole batch
    /// with ENOENT (and an aborted batch costs the kernel an RCU grace period): callers pass
    /// only keys they have just read in the set.
    pub fn delete_elements(&mut self, spec: &HoldSpec, keys: &[Key]) {
        for chunk in keys.chunks(ELEMENTS_PER_MESSAGE) {
            self.push(NFT_MSG_DELSETELEM, 0, spec, element_attrs(spec, chunk));
        }
    }

    /// Closes the batch; its sequence numbers end before the returned one.
    pub fn finish(mut self) -> (Batch, u32) {
        let end = self.take_seq();
        self.bytes.extend(message(
            NFNL_MSG_BATCH_END,
            0,
            end,
            0,
            NFNL_SUBSYS_NFTABLES,
            &Attrs::default(),
        ));
        let next = self.next;
        (self, next)
    }

    /// Whether a reply's sequence number belongs to this batch.
    pub fn owns(&self, seq: u32) -> bool {
        (self.first..self.next).contains(&seq)
    }
}

pub(crate) fn expr(name: &str, data: Attrs) -> Attrs {
    let e = Attrs::default().string(NFTA_EXPR_NAME, name).nested(NFTA_EXPR_DATA, data);
    Attrs::default().nested(NFTA_LIST_ELEM, e)
}

pub(crate) fn counter_expr() -> Attrs {
    Attrs::default().string(NFTA_EXPR_NAME, "counter").nested(NFTA_EXPR_DATA, Attrs::default())
}

/// `<iif|oif>name @<set> drop`: the name into register 1, looked up in the set, drop.
pub(crate) fn hold_rule(spec: &HoldSpec, set_id: u32) -> Attrs {
    let meta = expr(
        "meta",
        Attrs::default()
            .be32(NFTA_META_KEY, spec.name_match.meta_key())
            .be32(NFTA_META_DREG, NFT_REG_1),
    );
    let lookup = expr(
        "lookup",
        Attrs::default()
            .string(NFTA_LOOKUP_SET, spec.set)
            .be32(NFTA_LOOKUP_SET_ID, set_id)
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
    meta.append(lookup).append(drop)
}

/// One message of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `NLMSG_ERROR`: `errno` 0 is an acknowledgement, else the (positive) error.
    Ack { seq: u32, errno: i32 },
    /// `NLMSG_DONE`: the end of a dump, with the dump's (positive) error if it failed.
    Done { seq: u32, errno: i32 },
    /// An nf_tables object: `NFT_MSG_NEW*` with the generation it was read in.
    Object { cmd: u8, seq: u32, generation: u16, attrs: &'a [u8] },
}

fn ne_u16(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}
fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// Splits a datagram into messages. A truncated message, a short header or a message of
/// another subsystem is an error, never skipped.
pub fn parse_replies(buf: &[u8]) -> Result<Vec<Reply<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < 16 {
            return Err(format!("{} bytes after the last message", rest.len()));
        }
        let len = ne_u32(&rest[0..4]) as usize;
        if len < 16 || len > rest.len() {
            return Err(format!("truncated message ({len} bytes announced, {} left)", rest.len()));
        }
        let (kind, seq) = (ne_u16(&rest[4..6]), ne_u32(&rest[8..12]));
        let body = &rest[16..len];
        let errno = || -> Result<i32, String> {
            let code = body.get(0..4).ok_or("error message without its code")?;
            Ok(-(ne_u32(code) as i32))
        };
        out.push(match kind {
            NLMSG_ERROR => Reply::Ack { seq, errno: errno()? },
            NLMSG_DONE => Reply::Done { seq, errno: if body.is_empty() { 0 } else { errno()? } },
            _ if kind >> 8 == NFNL_SUBSYS_NFTABLES && body.len() >= 4 => Reply::Object {
                cmd: (kind & 0xff) as u8,
                seq,
                generation: u16::from_be_bytes([body[2], body[3]]),
                attrs: &body[4..],
            },
            _ => return Err(format!("unexpected message type {kind:#06x} ({} bytes)", len)),
        });
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    Ok(out)
}

/// One attribute of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    /// The type without its flag bits.
    pub kind: u16,
    pub payload: &'a [u8],
}

/// Splits an attribute stream; an attribute longer than the stream is an error.
pub fn attributes(buf: &[u8]) -> Result<Vec<Attr<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 4 {
        let len = usize::from(ne_u16(&rest[0..2]));
        if len < 4 || len > rest.len() {
            return Err(format!(
                "truncated attribute ({len} bytes announced, {} left)",
                rest.len()
            ));
        }
        out.push(Attr { kind: ne_u16(&rest[2..4]) & NLA_TYPE_MASK, payload: &rest[4..len] });
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    if !rest.is_empty() {
        return Err(format!("{} stray bytes after the attributes", rest.len()));
    }
    Ok(out)
}

impl<'a> Attr<'a> {
    pub fn be32(&self) -> Result<u32, String> {
        let bytes: [u8; 4] = self.payload.try_into().map_err(|_| {
            format!("attribute {} is {} bytes, not 4", self.kind, self.payload.len())
        })?;
        Ok(u32::from_be_bytes(bytes))
    }

    /// A NUL-terminated string.
    pub fn string(&self) -> Result<&'a str, String> {
        let text = self
            .payload
            .strip_suffix(&[0])
            .ok_or_else(|| format!("attribute {} is not a NUL-terminated string", self.kind))?;
        std::str::from_utf8(text).map_err(|_| format!("attribute {} is not UTF-8", self.kind))
    }

    pub fn nested(&self) -> Result<Vec<Attr<'a>>, String> {
        attributes(self.payload)
    }
}

/// The attribute of type `kind`, if present.
pub fn find<'a>(attrs: &[Attr<'a>], kind: u16) -> Option<Attr<'a>> {
    attrs.iter().copied().find(|a| a.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l2::nftables::{Family, NameMatch, ifname_key};

    const SPEC: HoldSpec = HoldSpec {
        family: Family::Arp,
        set: "held",
        hook: 1,
        name_match: NameMatch::Output,
        counter: false,
    };

    fn objects(bytes: &[u8]) -> Vec<u16> {
        // Requests parse as replies: their kinds and sequence numbers are what we check.
        let mut kinds = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let len = ne_u32(&rest[0..4]) as usize;
            kinds.push(ne_u16(&rest[4..6]));
            rest = &rest[len..];
        }
        kinds
    }

    #[test]
    fn a_get_names_table_set_and_key() {
        let key = ifname_key("qg-1").unwrap();
        let msg = request(NFT_MSG_GETSETELEM, &SPEC, false, 7, element_attrs(&SPEC, &[key]));
        assert_eq!(ne_u32(&msg[0..4]) as usize, msg.len());
        assert_eq!(ne_u16(&msg[4..6]), (10 << 8) | 13);
        assert_eq!(ne_u32(&msg[8..12]), 7);
        assert_eq!(msg[16], 3, "NFPROTO_ARP");
        let attrs = attributes(&msg[20..]).unwrap();
        assert_eq!(find(&attrs, NFTA_SET_ELEM_LIST_TABLE).unwrap().string(), Ok("hagw"));
        assert_eq!(find(&attrs, NFTA_SET_ELEM_LIST_SET).unwrap().string(), Ok("held"));
        let elements = find(&attrs, NFTA_SET_ELEM_LIST_ELEMENTS).unwrap().nested().unwrap();
        let elem = elements[0].nested().unwrap();
        let value = find(&elem, NFTA_SET_ELEM_KEY).unwrap().nested().unwrap();
        assert_eq!(value[0].payload, &key);
    }

    #[test]
    fn a_hold_is_one_batch_acknowledged_message_by_message() {
        let mut batch = Batch::new(1);
        batch.ensure(&SPEC);
        batch.add_elements(&SPEC, &[ifname_key("qg-1").unwrap()]);
        let (batch, next) = batch.finish();
        let nft = |cmd: u8| (10 << 8) | u16::from(cmd);
        let want = vec![
            NFNL_MSG_BATCH_BEGIN,
            nft(NFT_MSG_NEWTABLE),
            nft(NFT_MSG_NEWSET),
            nft(NFT_MSG_NEWCHAIN),
            nft(NFT_MSG_DELRULE),
            nft(NFT_MSG_NEWRULE),
            nft(NFT_MSG_NEWSETELEM),
            NFNL_MSG_BATCH_END,
        ];
        assert_eq!(objects(&batch.bytes), want);
        assert_eq!(batch.acked, (2..=7).collect::<Vec<u32>>());
        assert_eq!(next, 9);
        assert!(batch.owns(1) && batch.owns(8) && !batch.owns(9));
    }

    #[test]
    fn many_elements_are_split_into_messages_an_attribute_can_hold() {
        let keys: Vec<Key> =
            (0..3000).map(|i| ifname_key(&format!("tap{i:05}")).unwrap()).collect();
        let mut batch = Batch::new(10);
        batch.delete_elements(&SPEC, &keys);
        let (batch, _) = batch.finish();
        assert_eq!(batch.acked.len(), 3, "1024 + 1024 + 952");
    }

    #[test]
    fn errors_done_and_objects_are_told_apart_and_truncation_is_an_error() {
        let mut buf = Vec::new();
        // An error message: header + errno -2 + the original header.
        buf.extend_from_slice(&36u32.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf.extend_from_slice(&0u16.to_ne_bytes());
        buf.extend_from_slice(&5u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&(-2i32).to_ne_bytes());
        buf.extend_from_slice(&[0; 16]);
        let object = message(nft_kind(NFT_MSG_NEWSETELEM), 0, 6, 1, 0x1234, &table_attrs());
        buf.extend_from_slice(&object);
        let replies = parse_replies(&buf).unwrap();
        assert_eq!(replies[0], Reply::Ack { seq: 5, errno: 2 });
        let Reply::Object { cmd, seq, generation, attrs } = replies[1] else { panic!() };
        assert_eq!((cmd, seq, generation), (NFT_MSG_NEWSETELEM, 6, 0x1234));
        assert_eq!(attributes(attrs).unwrap()[0].string(), Ok("hagw"));
        assert!(parse_replies(&buf[..30]).unwrap_err().contains("truncated"));
        let rtnl = message(16, 0, 1, 0, 0, &Attrs::default());
        assert!(parse_replies(&rtnl).unwrap_err().contains("unexpected message type"));
    }

    #[test]
    fn attributes_of_the_wrong_size_are_errors() {
        let attrs = Attrs::default().put(1, &[0, 1, 2]).string(2, "x");
        let parsed = attributes(&attrs.0).unwrap();
        assert!(parsed[0].be32().unwrap_err().contains("3 bytes"));
        assert!(parsed[0].string().is_err());
        assert_eq!(parsed[1].string(), Ok("x"));
        let mut bytes = Attrs::default().string(1, "hagw").0;
        bytes[0] = 40;
        assert!(attributes(&bytes).unwrap_err().contains("truncated attribute"));
    }
}
