//! Just enough OpenFlow 1.0 to read and set one port's `no-receive` bit over a bridge's
//! management socket, without an `ovs-ofctl` subprocess.
//!
//! The hold's `no-receive` has to land between ovs-vswitchd attaching a new port and the L2
//! agent wiring it; a subprocess costs ~5 ms on an idle machine and far more under load,
//! a message exchange on an open socket well under one. The session is the one `ovs-ofctl`
//! has: HELLO both ways, FEATURES_REQUEST (its reply lists every port with its config bits),
//! then for a write PORT_MOD with the port's number and hardware address (OVS refuses a
//! PORT_MOD whose address does not match) and a BARRIER, whose reply means the change is in
//! place. A bridge that does not allow OpenFlow 1.0 refuses the HELLO; the caller then falls
//! back to `ovs-ofctl`, which negotiates any version.

use std::path::Path;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const VERSION: u8 = 0x01;
const HEADER_LEN: usize = 8;

const OFPT_HELLO: u8 = 0;
const OFPT_ERROR: u8 = 1;
const OFPT_ECHO_REQUEST: u8 = 2;
const OFPT_ECHO_REPLY: u8 = 3;
const OFPT_FEATURES_REQUEST: u8 = 5;
const OFPT_FEATURES_REPLY: u8 = 6;
const OFPT_PORT_MOD: u8 = 15;
const OFPT_BARRIER_REQUEST: u8 = 18;
const OFPT_BARRIER_REPLY: u8 = 19;

/// `OFPET_HELLO_FAILED`: the switch and we share no OpenFlow version.
const OFPET_HELLO_FAILED: u16 = 0;

/// `OFPPC_NO_RECV`: drop everything received on the port.
pub const OFPPC_NO_RECV: u32 = 1 << 2;

/// The fixed part of a FEATURES_REPLY after the header; `ofp_phy_port`s follow.
const FEATURES_FIXED_LEN: usize = 24;
const PHY_PORT_LEN: usize = 48;
const PORT_NAME_LEN: usize = 16;

/// A whole exchange may take this long before the socket is given up.
const SESSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an OpenFlow exchange failed.
#[derive(Debug, Error)]
pub enum OpenFlowError {
    /// No management socket to talk to (ovs-vswitchd down or restarting), or it broke.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The switch does not speak OpenFlow 1.0 on this bridge (its `protocols` exclude it).
    #[error("the bridge refused OpenFlow 1.0")]
    VersionRefused,
    /// The switch answered with an OpenFlow error.
    #[error("OpenFlow error type {kind} code {code}")]
    Refused { kind: u16, code: u16 },
    /// The switch sent something that is not OpenFlow 1.0 as we know it.
    #[error("malformed reply: {0}")]
    Malformed(String),
    /// The exchange did not finish within 5 s.
    #[error("no answer within {SESSION_TIMEOUT:?}")]
    Timeout,
}

/// One port of a FEATURES_REPLY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhyPort {
    pub port_no: u16,
    pub hw_addr: [u8; 6],
    pub name: String,
    pub config: u32,
}

impl PhyPort {
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

/// The body of a PORT_MOD setting (`no_receive`) or clearing `OFPPC_NO_RECV` and nothing
/// else.
fn port_mod_body(port: &PhyPort, no_receive: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(24);
    body.extend_from_slice(&port.port_no.to_be_bytes());
    body.extend_from_slice(&port.hw_addr);
    body.extend_from_slice(&(if no_receive { OFPPC_NO_RECV } else { 0 }).to_be_bytes());
    body.extend_from_slice(&OFPPC_NO_RECV.to_be_bytes()); // mask: only this bit changes
    body.extend_from_slice(&0u32.to_be_bytes()); // advertise: 0 leaves it alone
    body.extend_from_slice(&[0; 4]);
    body
}

/// `OFPHET_VERSIONBITMAP`: a HELLO element listing every version the sender accepts.
const OFPHET_VERSIONBITMAP: u16 = 1;

/// Whether a switch whose HELLO has this body accepts OpenFlow 1.0 from us. Without a
/// version bitmap it accepts every version up to the one in its header (always ≥ 1.0);
/// with one, exactly the versions whose bits are set.
pub fn offers_1_0(hello_body: &[u8]) -> bool {
    let mut rest = hello_body;
    while rest.len() >= 4 {
        let (kind, len) = (be16(rest, 0), usize::from(be16(rest, 2)));
        if len < 4 || len > rest.len() {
            break;
        }
        if kind == OFPHET_VERSIONBITMAP && len >= 8 {
            return be32(rest, 4) & (1 << VERSION) != 0;
        }
        // Elements are padded to a multiple of 8 bytes.
        rest = rest.get(len.next_multiple_of(8)..).unwrap_or_default();
    }
    true
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The ports listed in a FEATURES_REPLY body (the message without its header).
pub fn parse_features_ports(body: &[u8]) -> Result<Vec<PhyPort>, OpenFlowError> {
    let ports = body.get(FEATURES_FIXED_LEN..).ok_or_else(|| {
        OpenFlowError::Malformed(format!("features reply of {} bytes", body.len()))
    })?;
    if ports.len() % PHY_PORT_LEN != 0 {
        return Err(OpenFlowError::Malformed(format!(
            "{} bytes of ports is not a whole number of {PHY_PORT_LEN}-byte ports",
            ports.len()
        )));
    }
    Ok(ports
        .chunks_exact(PHY_PORT_LEN)
        .map(|p| {
            let name = &p[8..8 + PORT_NAME_LEN];
            let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(PORT_NAME_LEN)];
            PhyPort {
                port_no: be16(p, 0),
                hw_addr: p[2..8].try_into().expect("6 bytes"),
                name: String::from_utf8_lossy(name).into_owned(),
                config: be32(p, 8 + PORT_NAME_LEN),
            }
        })
        .collect())
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
        session.send(OFPT_HELLO, &[]).await?;
        let hello = loop {
            let msg = session.next().await?;
            if msg.kind == OFPT_HELLO {
                break msg;
            }
        };
        // The switch would answer our HELLO with HELLO_FAILED and hang up; its own HELLO
        // already tells.
        if !offers_1_0(&hello.body) {
            return Err(OpenFlowError::VersionRefused);
        }
        Ok(session)
    }

    async fn send(&mut self, kind: u8, body: &[u8]) -> Result<u32, OpenFlowError> {
        let xid = self.next_xid;
        self.next_xid += 1;
        self.stream.write_all(&message(kind, xid, body)).await?;
        Ok(xid)
    }

    /// The next message that is not an echo request (those are answered here); a
    /// HELLO_FAILED error, whatever it answers, ends the session as [`VersionRefused`].
    ///
    /// [`VersionRefused`]: OpenFlowError::VersionRefused
    async fn next(&mut self) -> Result<Message, OpenFlowError> {
        loop {
            let mut header = [0u8; HEADER_LEN];
            self.stream.read_exact(&mut header).await?;
            let len = usize::from(be16(&header, 2));
            let body_len = len.checked_sub(HEADER_LEN).ok_or_else(|| {
                OpenFlowError::Malformed(format!("message length {len} is below the header's"))
            })?;
            let mut body = vec![0u8; body_len];
            self.stream.read_exact(&mut body).await?;
            let msg = Message { kind: header[1], xid: be32(&header, 4), body };
            match msg.kind {
                OFPT_ECHO_REQUEST => {
                    let echo = message(OFPT_ECHO_REPLY, msg.xid, &msg.body);
                    self.stream.write_all(&echo).await?;
                }
                OFPT_ERROR if msg.body.len() < 4 => {
                    return Err(OpenFlowError::Malformed("short error message".into()));
                }
                OFPT_ERROR if be16(&msg.body, 0) == OFPET_HELLO_FAILED => {
                    return Err(OpenFlowError::VersionRefused);
                }
                _ => return Ok(msg),
            }
        }
    }

    /// The reply of type `kind` to request `xid`, skipping asynchronous messages.
    async fn reply(&mut self, xid: u32, kind: u8) -> Result<Vec<u8>, OpenFlowError> {
        loop {
            let msg = self.next().await?;
            if msg.xid != xid {
                continue;
            }
            if msg.kind == OFPT_ERROR {
                return Err(msg.refused());
            }
            if msg.kind == kind {
                return Ok(msg.body);
            }
        }
    }

    /// The bridge's port named `name`, if it lists one.
    async fn port(&mut self, name: &str) -> Result<Option<PhyPort>, OpenFlowError> {
        let xid = self.send(OFPT_FEATURES_REQUEST, &[]).await?;
        let ports = parse_features_ports(&self.reply(xid, OFPT_FEATURES_REPLY).await?)?;
        Ok(ports.into_iter().find(|p| p.name == name))
    }

    async fn set_no_receive(&mut self, port: &PhyPort, on: bool) -> Result<(), OpenFlowError> {
        let xid = self.send(OFPT_PORT_MOD, &port_mod_body(port, on)).await?;
        // A PORT_MOD has no reply. The switch handles requests in order, so an error for it
        // comes before the barrier's reply, and the reply means the change is in place.
        let barrier = self.send(OFPT_BARRIER_REQUEST, &[]).await?;
        loop {
            let msg = self.next().await?;
            if msg.kind == OFPT_ERROR && msg.xid == xid {
                return Err(msg.refused());
            }
            if msg.kind == OFPT_BARRIER_REPLY && msg.xid == barrier {
                return Ok(());
            }
        }
    }
}

async fn timed<T>(
    work: impl Future<Output = Result<T, OpenFlowError>>,
) -> Result<T, OpenFlowError> {
    tokio::time::timeout(SESSION_TIMEOUT, work).await.map_err(|_| OpenFlowError::Timeout)?
}

/// The port named `port` on the bridge behind `socket`, `None` if the bridge lists no such
/// port.
pub async fn port(socket: &Path, port: &str) -> Result<Option<PhyPort>, OpenFlowError> {
    timed(async { Session::open(socket).await?.port(port).await }).await
}

/// Sets or clears `no-receive` on `port`; `Ok(false)` if the bridge lists no such port.
pub async fn set_no_receive(socket: &Path, port: &str, on: bool) -> Result<bool, OpenFlowError> {
    timed(async {
        let mut session = Session::open(socket).await?;
        let Some(found) = session.port(port).await? else { return Ok(false) };
        session.set_no_receive(&found, on).await?;
        Ok(true)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phy_port(port_no: u16, name: &str, config: u32) -> Vec<u8> {
        let mut p = port_no.to_be_bytes().to_vec();
        p.extend_from_slice(&[0x56, 0x0c, 0x3e, 0x72, 0xd0, port_no as u8]);
        let mut padded = name.as_bytes().to_vec();
        padded.resize(PORT_NAME_LEN, 0);
        p.extend_from_slice(&padded);
        p.extend_from_slice(&config.to_be_bytes());
        p.extend_from_slice(&[0; 20]); // state, curr, advertised, supported, peer
        p
    }

    #[test]
    fn port_mod_changes_only_the_no_receive_bit() {
        let port = PhyPort {
            port_no: 7,
            hw_addr: [0x56, 0x0c, 0x3e, 0x72, 0xd0, 0x44],
            name: "tg1".into(),
            config: 1,
        };
        let set = message(OFPT_PORT_MOD, 9, &port_mod_body(&port, true));
        assert_eq!(
            set,
            [
                &[1, 15, 0, 32, 0, 0, 0, 9][..],
                &[0, 7, 0x56, 0x0c, 0x3e, 0x72, 0xd0, 0x44],
                &[0, 0, 0, 4, 0, 0, 0, 4],
                &[0; 8],
            ]
            .concat()
        );
        let clear = port_mod_body(&port, false);
        assert_eq!(&clear[8..16], &[0, 0, 0, 0, 0, 0, 0, 4]);
    }

    #[test]
    fn features_reply_lists_ports_with_their_config() {
        let mut body = vec![0; FEATURES_FIXED_LEN];
        body.extend(phy_port(1, "tg1-ab", OFPPC_NO_RECV | 1));
        body.extend(phy_port(0xfffe, "br-int", 1));
        body.extend(phy_port(3, "exactly-15-char", 0));
        let ports = parse_features_ports(&body).unwrap();
        let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["tg1-ab", "br-int", "exactly-15-char"]);
        assert!(ports[0].no_receive() && !ports[1].no_receive());
        assert_eq!((ports[1].port_no, ports[0].hw_addr[5]), (0xfffe, 1));
        assert_eq!(parse_features_ports(&body[..FEATURES_FIXED_LEN]).unwrap(), vec![]);
    }

    #[test]
    fn truncated_features_replies_are_malformed() {
        assert!(matches!(parse_features_ports(&[0; 10]), Err(OpenFlowError::Malformed(_))));
        let mut body = vec![0; FEATURES_FIXED_LEN];
        body.extend(&phy_port(1, "tg1", 0)[..40]);
        let err = parse_features_ports(&body).unwrap_err();
        assert!(err.to_string().contains("40 bytes of ports"), "{err}");
    }

    #[test]
    fn hello_bitmaps_say_whether_1_0_is_accepted() {
        // No elements: everything up to the header's version.
        assert!(offers_1_0(&[]));
        // A version bitmap with 1.0 and 1.3 (bits 1 and 4), then one with 1.3 only.
        assert!(offers_1_0(&[0, 1, 0, 8, 0, 0, 0, 0x12]));
        assert!(!offers_1_0(&[0, 1, 0, 8, 0, 0, 0, 0x10]));
        // An unknown element first (padded to 8 bytes), then the bitmap.
        assert!(!offers_1_0(&[0, 9, 0, 5, 1, 0, 0, 0, 0, 1, 0, 8, 0, 0, 0, 0x10]));
        // Garbage lengths end the walk without refusing.
        assert!(offers_1_0(&[0, 1, 0, 2]));
        assert!(offers_1_0(&[0, 1, 0, 200, 0, 0]));
    }

    proptest::proptest! {
        /// Whatever a switch sends, decoding it returns (an error at worst), never panics.
        #[test]
        fn arbitrary_replies_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = parse_features_ports(&bytes);
            let _ = offers_1_0(&bytes);
        }
    }
}
