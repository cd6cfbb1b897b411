//! Just enough OpenFlow 1.3 to read and set one port's `no-receive` bit over a bridge's
//! management socket, without an `ovs-ofctl` subprocess.
//!
//! The hold's `no-receive` has to land between ovs-vswitchd attaching a new port and the L2
//! agent wiring it; a subprocess costs ~5 ms on an idle machine and far more under load,
//! a message exchange on an open socket well under one. The session: HELLO both ways (ours
//! offers 1.3 alone), a PORT_DESC multipart request, whose reply lists every port with its
//! number, hardware address and config bits in as many parts as it takes (OVS fills each
//! part up to the 64 KiB message limit, ~1,020 ports, and flags all but the last
//! `OFPMPF_REPLY_MORE`), then for a write PORT_MOD with the port's number and hardware
//! address (OVS refuses a PORT_MOD whose address does not match) and a BARRIER, whose reply
//! means the change is in place.
//!
//! Why 1.3: OpenFlow 1.0 has the port list only in the FEATURES_REPLY, one message, which
//! holds ~1,360 ports; a network node with 1,000 routers has 3,000+ on br-int, and OVS then
//! sends the reply without any. 1.3 is the version the Neutron OVS agent itself speaks on
//! its bridges (their `protocols` always include it); its ports and PORT_MOD are fixed-size
//! (1.4's carry property lists). A bridge whose `protocols` exclude 1.3 refuses the HELLO;
//! the caller then falls back to `ovs-ofctl`, which negotiates any version.

use std::path::Path;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// OpenFlow 1.3 on the wire.
const VERSION: u8 = 0x04;
const HEADER_LEN: usize = 8;

const OFPT_HELLO: u8 = 0;
const OFPT_ERROR: u8 = 1;
const OFPT_ECHO_REQUEST: u8 = 2;
const OFPT_ECHO_REPLY: u8 = 3;
const OFPT_PORT_MOD: u8 = 16;
const OFPT_MULTIPART_REQUEST: u8 = 18;
const OFPT_MULTIPART_REPLY: u8 = 19;
const OFPT_BARRIER_REQUEST: u8 = 20;
const OFPT_BARRIER_REPLY: u8 = 21;

/// `OFPET_HELLO_FAILED`: the switch and we share no OpenFlow version.
const OFPET_HELLO_FAILED: u16 = 0;

/// `OFPHET_VERSIONBITMAP`: a HELLO element listing every version the sender accepts.
const OFPHET_VERSIONBITMAP: u16 = 1;

/// `OFPMP_PORT_DESC`: the multipart request for every port's description.
const OFPMP_PORT_DESC: u16 = 13;
/// `OFPMPF_REPLY_MORE`: more parts of this multipart reply follow.
const OFPMPF_REPLY_MORE: u16 = 1;
/// Type, flags and padding in front of a multipart body.
const MULTIPART_HEADER_LEN: usize = 8;

/// `OFPPC_NO_RECV`: drop everything received on the port.
pub const OFPPC_NO_RECV: u32 = 1 << 2;

/// `struct ofp_port`: number, padding, address, padding, name, then config.
const PORT_LEN: usize = 64;
const PORT_NAME_AT: usize = 16;
const PORT_NAME_LEN: usize = 16;
const PORT_CONFIG_AT: usize = PORT_NAME_AT + PORT_NAME_LEN;

/// A whole exchange may take this long before the socket is given up.
const SESSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an OpenFlow exchange failed.
#[derive(Debug, Error)]
pub enum OpenFlowError {
    /// No management socket to talk to (ovs-vswitchd down or restarting), or it broke.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The switch does not speak OpenFlow 1.3 on this bridge (its `protocols` exclude it).
    #[error("the bridge refused OpenFlow 1.3: {0}")]
    VersionRefused(Refusal),
    /// The switch answered with an OpenFlow error.
    #[error("OpenFlow error type {kind} code {code}")]
    Refused { kind: u16, code: u16 },
    /// The switch sent something that is not OpenFlow 1.3 as we know it.
    #[error("malformed reply: {0}")]
    Malformed(#[from] Malformed),
    /// The exchange did not finish within 5 s.
    #[error("no answer within {SESSION_TIMEOUT:?}")]
    Timeout,
}

/// How the switch said it does not speak OpenFlow 1.3.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    /// Its HELLO offers only these versions (`OFPHET_VERSIONBITMAP` bits: 1 << wire version).
    #[error("it offers {}", versions(*.0))]
    Offers(u32),
    /// It answered with a `HELLO_FAILED` error of this code.
    #[error("it answered HELLO_FAILED code {0}")]
    HelloFailed(u16),
}

/// What was wrong with a message from the switch.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("message length {0} is below the 8-byte header's")]
    Length(u16),
    #[error("a message of wire version {0:#04x} in an OpenFlow 1.3 session")]
    Version(u8),
    #[error("error message of {0} bytes, too short for its type and code")]
    ShortError(usize),
    #[error("multipart reply of {0} bytes, too short for its type and flags")]
    ShortMultipart(usize),
    #[error("multipart reply of type {0} to a port description request")]
    MultipartType(u16),
    #[error(
        "part {part} of the port description ends in {len} bytes, not a whole number of \
         {PORT_LEN}-byte ports"
    )]
    PartialPort { part: usize, len: usize },
    #[error("the connection closed after part {0} of the port description, which announced more")]
    Unfinished(usize),
}

/// `bitmap`'s versions as OpenFlow names them ("1.0, 1.4").
fn versions(bitmap: u32) -> String {
    let names: Vec<String> =
        (1..32).filter(|v| bitmap & (1 << v) != 0).map(|v| format!("1.{}", v - 1)).collect();
    if names.is_empty() { "no version".into() } else { names.join(", ") }
}

/// One port of a PORT_DESC reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub port_no: u32,
    pub hw_addr: [u8; 6],
    pub name: String,
    pub config: u32,
}

impl Port {
    pub fn no_receive(&self) -> bool {
        self.config & OFPPC_NO_RECV != 0
    }
}

fn message(kind: u8, xid: u32, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(HEADER_LEN + body.len()).expect("OpenFlow messages we send are small");
    let mut out = Vec::with_capacity(usize::from(len));
    out.extend_from_slice(&[VERSION, kind]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&xid.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Our HELLO's body: a version bitmap with 1.3 alone, so that the switch settles on 1.3 or
/// refuses.
const HELLO_BODY: [u8; 8] = [0, 1, 0, 8, 0, 0, 0, 1 << VERSION];

/// The body of a PORT_MOD setting (`no_receive`) or clearing `OFPPC_NO_RECV` and nothing
/// else.
fn port_mod_body(port: &Port, no_receive: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(32);
    body.extend_from_slice(&port.port_no.to_be_bytes());
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(&port.hw_addr);
    body.extend_from_slice(&[0; 2]);
    body.extend_from_slice(&(if no_receive { OFPPC_NO_RECV } else { 0 }).to_be_bytes());
    body.extend_from_slice(&OFPPC_NO_RECV.to_be_bytes()); // mask: only this bit changes
    body.extend_from_slice(&0u32.to_be_bytes()); // advertise: 0 leaves it alone
    body.extend_from_slice(&[0; 4]);
    body
}

/// The versions a switch whose HELLO has this header version and body accepts, as a
/// version bitmap: with a bitmap element, exactly its bits; without, every version up to
/// the header's.
pub fn offered_versions(version: u8, hello_body: &[u8]) -> u32 {
    let mut rest = hello_body;
    while rest.len() >= 4 {
        let (kind, len) = (be16(rest, 0), usize::from(be16(rest, 2)));
        if len < 4 || len > rest.len() {
            break;
        }
        if kind == OFPHET_VERSIONBITMAP && len >= 8 {
            return be32(rest, 4);
        }
        // Elements are padded to a multiple of 8 bytes.
        rest = rest.get(len.next_multiple_of(8)..).unwrap_or_default();
    }
    // Bits 1 to `version` (bit 0 is no version; a bitmap word holds up to 31).
    (u32::MAX >> (31 - version.min(31))) & !1
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A PORT_DESC reply being put together from its parts.
#[derive(Debug, Default)]
struct PortDesc {
    ports: Vec<Port>,
    parts: usize,
}

impl PortDesc {
    /// Adds the ports of one MULTIPART_REPLY body (the message without its header);
    /// `Ok(true)` when the switch announced more parts.
    fn add(&mut self, body: &[u8]) -> Result<bool, Malformed> {
        if body.len() < MULTIPART_HEADER_LEN {
            return Err(Malformed::ShortMultipart(body.len()));
        }
        let (kind, flags) = (be16(body, 0), be16(body, 2));
        if kind != OFPMP_PORT_DESC {
            return Err(Malformed::MultipartType(kind));
        }
        self.parts += 1;
        let ports = &body[MULTIPART_HEADER_LEN..];
        if !ports.len().is_multiple_of(PORT_LEN) {
            return Err(Malformed::PartialPort { part: self.parts, len: ports.len() % PORT_LEN });
        }
        self.ports.extend(ports.chunks_exact(PORT_LEN).map(|p| {
            let name = &p[PORT_NAME_AT..PORT_CONFIG_AT];
            let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(PORT_NAME_LEN)];
            Port {
                port_no: be32(p, 0),
                hw_addr: p[8..14].try_into().expect("6 bytes"),
                name: String::from_utf8_lossy(name).into_owned(),
                config: be32(p, PORT_CONFIG_AT),
            }
        }));
        Ok(flags & OFPMPF_REPLY_MORE != 0)
    }
}

/// One message as received.
struct Message {
    kind: u8,
    xid: u32,
    body: Vec<u8>,
}

impl Message {
    /// An ERROR message as the error it reports ([`Session::next`] has checked that its body
    /// holds the type and code).
    fn refused(&self) -> OpenFlowError {
        OpenFlowError::Refused { kind: be16(&self.body, 0), code: be16(&self.body, 2) }
    }
}

/// An OpenFlow connection to one bridge, after the HELLO exchange.
struct Session {
    stream: UnixStream,
    next_xid: u32,
}

impl Session {
    async fn open(socket: &Path) -> Result<Session, OpenFlowError> {
        let stream = UnixStream::connect(socket).await?;
        let mut session = Session { stream, next_xid: 1 };
        session.send(OFPT_HELLO, &HELLO_BODY).await?;
        let (version, hello) = loop {
            let (version, msg) = session.receive().await?;
            if msg.kind == OFPT_HELLO {
                break (version, msg);
            }
        };
        // The switch would answer our HELLO with HELLO_FAILED and hang up; its own HELLO
        // already tells.
        let offered = offered_versions(version, &hello.body);
        if offered & (1 << VERSION) == 0 {
            return Err(OpenFlowError::VersionRefused(Refusal::Offers(offered)));
        }
        Ok(session)
    }

    async fn send(&mut self, kind: u8, body: &[u8]) -> Result<u32, OpenFlowError> {
        let xid = self.next_xid;
        self.next_xid += 1;
        self.stream.write_all(&message(kind, xid, body)).await?;
        Ok(xid)
    }

    /// The next message that is not an echo request (those are answered here), with the
    /// version in its header; a HELLO_FAILED error, whatever it answers, ends the session as
    /// [`VersionRefused`].
    ///
    /// [`VersionRefused`]: OpenFlowError::VersionRefused
    async fn receive(&mut self) -> Result<(u8, Message), OpenFlowError> {
        loop {
            let mut header = [0u8; HEADER_LEN];
            self.stream.read_exact(&mut header).await?;
            let len = be16(&header, 2);
            let body_len =
                usize::from(len).checked_sub(HEADER_LEN).ok_or(Malformed::Length(len))?;
            let mut body = vec![0u8; body_len];
            self.stream.read_exact(&mut body).await?;
            let msg = Message { kind: header[1], xid: be32(&header, 4), body };
            match msg.kind {
                OFPT_ECHO_REQUEST => {
                    let echo = message(OFPT_ECHO_REPLY, msg.xid, &msg.body);
                    self.stream.write_all(&echo).await?;
                }
                OFPT_ERROR if msg.body.len() < 4 => {
                    return Err(Malformed::ShortError(msg.body.len()).into());
                }
                OFPT_ERROR if be16(&msg.body, 0) == OFPET_HELLO_FAILED => {
                    let code = be16(&msg.body, 2);
                    return Err(OpenFlowError::VersionRefused(Refusal::HelloFailed(code)));
                }
                _ => return Ok((header[0], msg)),
            }
        }
    }

    /// [`Session::receive`] after the HELLO exchange: anything but 1.3 is malformed.
    async fn next(&mut self) -> Result<Message, OpenFlowError> {
        let (version, msg) = self.receive().await?;
        if version != VERSION {
            return Err(Malformed::Version(version).into());
        }
        Ok(msg)
    }

    /// Every port of the bridge, from all parts of one PORT_DESC reply (asynchronous
    /// messages in between are skipped).
    async fn ports(&mut self) -> Result<Vec<Port>, OpenFlowError> {
        let request = OFPMP_PORT_DESC.to_be_bytes();
        let xid =
            self.send(OFPT_MULTIPART_REQUEST, &[request[0], request[1], 0, 0, 0, 0, 0, 0]).await?;
        let mut desc = PortDesc::default();
        loop {
            let msg = match self.next().await {
                Err(OpenFlowError::Io(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof && desc.parts > 0 =>
                {
                    return Err(Malformed::Unfinished(desc.parts).into());
                }
                other => other?,
            };
            if msg.xid != xid {
                continue;
            }
            if msg.kind == OFPT_ERROR {
                return Err(msg.refused());
            }
            if msg.kind == OFPT_MULTIPART_REPLY && !desc.add(&msg.body)? {
                return Ok(desc.ports);
            }
        }
    }

    /// Sets or clears `no-receive` on each port, with one barrier for all: the outcome of
    /// each, in order.
    async fn set_many(
        &mut self,
        changes: &[(&Port, bool)],
    ) -> Result<Vec<Result<(), OpenFlowError>>, OpenFlowError> {
        let mut xids = Vec::with_capacity(changes.len());
        for (port, on) in changes {
            xids.push(self.send(OFPT_PORT_MOD, &port_mod_body(port, *on)).await?);
        }
        // A PORT_MOD has no reply. The switch handles requests in order, so an error for one
        // comes before the barrier's reply, and the reply means every change is in place.
        let barrier = self.send(OFPT_BARRIER_REQUEST, &[]).await?;
        let mut outcomes: Vec<Result<(), OpenFlowError>> = changes.iter().map(|_| Ok(())).collect();
        loop {
            let msg = self.next().await?;
            if msg.kind == OFPT_ERROR
                && let Some(i) = xids.iter().position(|x| *x == msg.xid)
            {
                outcomes[i] = Err(msg.refused());
            }
            if msg.kind == OFPT_BARRIER_REPLY && msg.xid == barrier {
                return Ok(outcomes);
            }
        }
    }
}

async fn timed<T>(
    work: impl Future<Output = Result<T, OpenFlowError>>,
) -> Result<T, OpenFlowError> {
    tokio::time::timeout(SESSION_TIMEOUT, work).await.map_err(|_| OpenFlowError::Timeout)?
}

/// Every port of the bridge behind `socket`, its local port included.
pub async fn ports(socket: &Path) -> Result<Vec<Port>, OpenFlowError> {
    timed(async { Session::open(socket).await?.ports().await }).await
}

/// The port named `port` on the bridge behind `socket`, `None` if the bridge lists no such
/// port.
pub async fn port(socket: &Path, port: &str) -> Result<Option<Port>, OpenFlowError> {
    Ok(ports(socket).await?.into_iter().find(|p| p.name == port))
}

/// Changes per session in an [`exchange`]: ovs-vswitchd reads at most 50 messages of a
/// connection per pass of its main loop, and with 3,000 ports on the bridge a pass takes
/// ~150 ms, so 733 changes on one session took 2.5 s (a mass failover, docs/benchmarks.md);
/// spread over sessions, they are read in the same passes.
const CHANGES_PER_SESSION: usize = 50;
/// At most this many sessions per exchange (a management socket's listen backlog is small).
const MAX_SESSIONS: usize = 16;

/// What one [`exchange`] found and did.
#[derive(Debug)]
pub struct Exchange {
    /// Every port of the bridge, as listed before the changes.
    pub ports: Vec<Port>,
    /// Per change: `Ok(false)` if the bridge lists no such port.
    pub changes: Vec<Result<bool, OpenFlowError>>,
}

/// One exchange for many callers: lists the bridge's ports, then sets or clears
/// `no-receive` on each `(port, on)` that is listed, with one barrier per session (more than
/// [`CHANGES_PER_SESSION`] changes go over more sessions at once).
pub async fn exchange(
    socket: &Path,
    changes: &[(String, bool)],
) -> Result<Exchange, OpenFlowError> {
    timed(async {
        let mut session = Session::open(socket).await?;
        let ports = session.ports().await?;
        let find = |name: &str| ports.iter().find(|p| p.name == name);
        let listed: Vec<(&Port, bool)> =
            changes.iter().filter_map(|(name, on)| Some((find(name)?, *on))).collect();
        let done = match listed.is_empty() {
            true => vec![],
            false => {
                // Spread over sessions: see [`CHANGES_PER_SESSION`].
                let per = CHANGES_PER_SESSION.max(listed.len().div_ceil(MAX_SESSIONS));
                let mut chunks = listed.chunks(per);
                let first = chunks.next().unwrap_or_default();
                let others = chunks
                    .map(|chunk| async move { Session::open(socket).await?.set_many(chunk).await });
                let (first, others) =
                    tokio::join!(session.set_many(first), futures::future::try_join_all(others));
                let mut done = first?;
                done.extend(others?.into_iter().flatten());
                done
            }
        };
        let mut done = done.into_iter();
        let changes = changes
            .iter()
            .map(|(name, _)| match find(name) {
                Some(_) => done.next().expect("one outcome per listed change").map(|()| true),
                None => Ok(false),
            })
            .collect();
        Ok(Exchange { ports, changes })
    })
    .await
}

/// Sets or clears `no-receive` on `port`; `Ok(false)` if the bridge lists no such port.
pub async fn set_no_receive(socket: &Path, port: &str, on: bool) -> Result<bool, OpenFlowError> {
    timed(async {
        let mut session = Session::open(socket).await?;
        let ports = session.ports().await?;
        let Some(found) = ports.iter().find(|p| p.name == port) else { return Ok(false) };
        session.set_many(&[(found, on)]).await?.remove(0)?;
        Ok(true)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x56, 0x0c, 0x3e, 0x72, 0xd0, 0x44];

    /// A `struct ofp_port` as OVS sends it.
    fn ofp_port(port_no: u32, name: &str, config: u32) -> Vec<u8> {
        let mut p = port_no.to_be_bytes().to_vec();
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&[MAC[0], MAC[1], MAC[2], MAC[3], MAC[4], port_no as u8]);
        p.extend_from_slice(&[0; 2]);
        let mut padded = name.as_bytes().to_vec();
        padded.resize(PORT_NAME_LEN, 0);
        p.extend_from_slice(&padded);
        p.extend_from_slice(&config.to_be_bytes());
        p.extend_from_slice(&[0; 28]); // state, curr, advertised, supported, peer, speeds
        p
    }

    /// A PORT_DESC MULTIPART_REPLY body with these flags and ports.
    fn part(flags: u16, ports: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0, 13];
        body.extend_from_slice(&flags.to_be_bytes());
        body.extend_from_slice(&[0; 4]);
        body.extend(ports.concat());
        body
    }

    #[test]
    fn requests_are_openflow_1_3() {
        // `ovs-ofctl ofp-print` decodes these bytes as "OFPT_HELLO (OF1.3) (xid=0x1):
        // version bitmap: 0x04".
        assert_eq!(
            message(OFPT_HELLO, 1, &HELLO_BODY),
            [4, 0, 0, 16, 0, 0, 0, 1, 0, 1, 0, 8, 0, 0, 0, 0x10]
        );
        let port = Port { port_no: 7001, hw_addr: MAC, name: "tg1".into(), config: 1 };
        // ... as "OFPT_PORT_MOD (OF1.3) (xid=0x9): port: 7001: addr:56:0c:3e:72:d0:44
        // config: NO_RECV mask: NO_RECV advertise: UNCHANGED".
        let set = message(OFPT_PORT_MOD, 9, &port_mod_body(&port, true));
        assert_eq!(
            set,
            [
                &[4, 16, 0, 40, 0, 0, 0, 9][..],
                &[0, 0, 0x1b, 0x59, 0, 0, 0, 0],
                &[0x56, 0x0c, 0x3e, 0x72, 0xd0, 0x44, 0, 0],
                &[0, 0, 0, 4, 0, 0, 0, 4],
                &[0; 8],
            ]
            .concat()
        );
        let clear = port_mod_body(&port, false);
        assert_eq!(&clear[16..24], &[0, 0, 0, 0, 0, 0, 0, 4]);
    }

    #[test]
    fn a_port_description_lists_ports_with_their_config() {
        let mut desc = PortDesc::default();
        let ports = [
            ofp_port(1, "tg1-ab", OFPPC_NO_RECV | 1),
            ofp_port(0xffff_fffe, "br-int", 1),
            ofp_port(5003, "exactly-15-char", 0),
        ];
        assert_eq!(desc.add(&part(0, &ports)), Ok(false));
        let names: Vec<&str> = desc.ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["tg1-ab", "br-int", "exactly-15-char"]);
        assert!(desc.ports[0].no_receive() && !desc.ports[1].no_receive());
        assert_eq!((desc.ports[1].port_no, desc.ports[2].port_no), (0xffff_fffe, 5003));
        assert_eq!(desc.ports[0].hw_addr, [0x56, 0x0c, 0x3e, 0x72, 0xd0, 1]);
        assert_eq!(PortDesc::default().add(&part(0, &[])), Ok(false));
    }

    #[test]
    fn parts_flagged_reply_more_are_continued() {
        let mut desc = PortDesc::default();
        assert_eq!(desc.add(&part(OFPMPF_REPLY_MORE, &[ofp_port(1, "a", 0)])), Ok(true));
        assert_eq!(desc.add(&part(OFPMPF_REPLY_MORE, &[])), Ok(true));
        assert_eq!(desc.add(&part(0, &[ofp_port(1400, "b", OFPPC_NO_RECV)])), Ok(false));
        assert_eq!(desc.parts, 3);
        let found: Vec<(u32, bool)> =
            desc.ports.iter().map(|p| (p.port_no, p.no_receive())).collect();
        assert_eq!(found, [(1, false), (1400, true)]);
    }

    #[test]
    fn malformed_parts_say_what_is_wrong() {
        assert_eq!(PortDesc::default().add(&[0, 13, 0]), Err(Malformed::ShortMultipart(3)));
        // An OFPMP_PORT_STATS (4) reply where the description was asked for.
        let mut stats = part(0, &[]);
        stats[1] = 4;
        assert_eq!(PortDesc::default().add(&stats), Err(Malformed::MultipartType(4)));
        let mut desc = PortDesc::default();
        assert_eq!(desc.add(&part(OFPMPF_REPLY_MORE, &[ofp_port(1, "a", 0)])), Ok(true));
        let cut = part(0, &[ofp_port(2, "b", 0), ofp_port(3, "c", 0)]);
        let err = desc.add(&cut[..cut.len() - 24]).unwrap_err();
        assert_eq!(err, Malformed::PartialPort { part: 2, len: 40 });
        assert!(
            err.to_string().contains("part 2 of the port description ends in 40 bytes"),
            "{err}"
        );
        let unfinished = OpenFlowError::from(Malformed::Unfinished(2));
        assert!(unfinished.to_string().contains("after part 2"), "{unfinished}");
    }

    #[test]
    fn hellos_say_which_versions_the_switch_accepts() {
        // No elements: everything up to the header's version (1.5 = 6; 1.0 = 1).
        assert_eq!(offered_versions(6, &[]), 0b111_1110);
        assert_eq!(offered_versions(1, &[]), 0b10);
        // A version bitmap with 1.0 and 1.3 (bits 1 and 4), then one with 1.0 and 1.4.
        assert_eq!(offered_versions(6, &[0, 1, 0, 8, 0, 0, 0, 0x12]), 0x12);
        assert_eq!(offered_versions(5, &[0, 1, 0, 8, 0, 0, 0, 0x22]), 0x22);
        // An unknown element first (padded to 8 bytes), then the bitmap.
        assert_eq!(offered_versions(6, &[0, 9, 0, 5, 1, 0, 0, 0, 0, 1, 0, 8, 0, 0, 0, 0x10]), 0x10);
        // Garbage lengths end the walk: the header's version decides.
        assert_eq!(offered_versions(4, &[0, 1, 0, 2]), 0b1_1110);
        assert_eq!(offered_versions(4, &[0, 1, 0, 200, 0, 0]), 0b1_1110);
        assert_eq!(offered_versions(0, &[]), 0);
    }

    #[test]
    fn refusals_name_what_the_switch_offers() {
        let refused = OpenFlowError::VersionRefused(Refusal::Offers(0x22));
        assert_eq!(refused.to_string(), "the bridge refused OpenFlow 1.3: it offers 1.0, 1.4");
        assert_eq!(Refusal::Offers(0).to_string(), "it offers no version");
        assert_eq!(Refusal::HelloFailed(0).to_string(), "it answered HELLO_FAILED code 0");
    }

    proptest::proptest! {
        /// Whatever a switch sends, decoding it returns (an error at worst), never panics.
        #[test]
        fn arbitrary_replies_never_panic(
            version in proptest::num::u8::ANY,
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
        ) {
            let _ = PortDesc::default().add(&bytes);
            let _ = offered_versions(version, &bytes);
        }

        /// However the switch splits the ports over parts, the description holds them all, in
        /// order.
        #[test]
        fn any_split_into_parts_lists_every_port(
            numbers in proptest::collection::vec(proptest::num::u32::ANY, 0..40),
            cuts in proptest::collection::vec(0usize..40, 0..5),
        ) {
            let ports: Vec<Vec<u8>> = numbers.iter().map(|n| ofp_port(*n, "p", 0)).collect();
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c.min(ports.len())).collect();
            bounds.extend([0, ports.len()]);
            bounds.sort_unstable();
            let mut desc = PortDesc::default();
            for (i, pair) in bounds.windows(2).enumerate() {
                let last = i == bounds.len() - 2;
                let flags = if last { 0 } else { OFPMPF_REPLY_MORE };
                proptest::prop_assert_eq!(desc.add(&part(flags, &ports[pair[0]..pair[1]])), Ok(!last));
            }
            let listed: Vec<u32> = desc.ports.iter().map(|p| p.port_no).collect();
            proptest::prop_assert_eq!(listed, numbers);
        }
    }
}
