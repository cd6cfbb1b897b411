//! The `AF_PACKET` socket announcements go out on.
//!
//! It is opened inside the router's namespace (a packet socket stays bound to the namespace
//! it was created in) with protocol 0, so it never receives anything and costs no receive
//! buffer, and bound to the device so the kernel reports the device's current hardware
//! address through `getsockname` — the namespace-correct way to read the MAC, unlike
//! `/sys/class/net`, which shows the namespace sysfs was mounted in.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::libc;
use nix::net::if_::if_nametoindex;
use nix::sys::socket::{
    AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, SockaddrLike, bind, sendto, socket,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::frame::Mac;

/// `ARPHRD_ETHER`: the only link type the frames are built for.
const ARPHRD_ETHER: u16 = 1;

/// Why the device's hardware address cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MacError {
    #[error("{0}")]
    Io(#[from] Errno),
    #[error("not an Ethernet device (ARP hardware type {hatype}, address length {halen})")]
    NotEthernet { hatype: u16, halen: usize },
}

/// A send-only packet socket bound to one device.
#[derive(Debug)]
pub struct PacketSocket {
    /// `Some` until dropped (see the `Drop` impl).
    fd: Option<AsyncFd<OwnedFd>>,
    ifindex: i32,
}

/// The unregistered socket as opened inside the namespace; [`PacketSocket::register`] hands
/// it to the tokio reactor.
#[derive(Debug)]
pub struct OpenedSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl OpenedSocket {
    /// Opens and binds the socket. Must run on a thread inside the target namespace: both
    /// the device lookup and the socket follow the calling thread's namespace.
    pub fn open(device: &str) -> io::Result<OpenedSocket> {
        let ifindex = if_nametoindex(device)?;
        let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::from(Errno::ENODEV))?;
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        bind(fd.as_raw_fd(), &link_addr(ifindex, 0, [0; 6]))?;
        Ok(OpenedSocket { fd, ifindex })
    }
}

impl PacketSocket {
    /// Registers the socket with the current tokio runtime.
    pub fn register(opened: OpenedSocket) -> io::Result<PacketSocket> {
        // SAFETY: an `OwnedFd` is a valid open descriptor that stays open, and keeps
        // returning the same number, until the `AsyncFd` owning it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(opened.fd, Interest::WRITABLE) }?;
        Ok(PacketSocket { fd: Some(fd), ifindex: opened.ifindex })
    }

    fn fd(&self) -> &AsyncFd<OwnedFd> {
        self.fd.as_ref().expect("the socket is open until dropped")
    }

    /// The device's current MAC, read on every round so a MAC changed after a takeover is
    /// announced, not the old one.
    pub fn mac(&self) -> Result<Mac, MacError> {
        // Called directly rather than through nix's `getsockname`: the kernel reports a
        // packet socket's name with the length trimmed to the hardware address, which nix's
        // `LinkAddr` rejects as not being a full `sockaddr_ll`.
        let mut sll = sockaddr_ll(0, 0, [0; 6]);
        let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `sll` is a writable sockaddr_ll and `len` its size, so the kernel writes
        // at most that many bytes into it.
        let ret = unsafe {
            libc::getsockname(
                self.fd().get_ref().as_raw_fd(),
                (&mut sll as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        Errno::result(ret)?;
        let halen = usize::from(sll.sll_halen);
        if sll.sll_hatype != ARPHRD_ETHER || halen != 6 {
            return Err(MacError::NotEthernet { hatype: sll.sll_hatype, halen });
        }
        let mut mac = [0; 6];
        mac.copy_from_slice(&sll.sll_addr[..6]);
        Ok(mac)
    }

    /// Sends one complete Ethernet frame. Returns once the kernel has handed it to the
    /// device (for a packet socket `sendto` goes straight to the device's queue).
    pub async fn send(&self, frame: &[u8], ethertype: u16, dst: Mac) -> io::Result<()> {
        let to = link_addr(self.ifindex, ethertype, dst);
        let sent = self
            .fd()
            .async_io(Interest::WRITABLE, |fd| {
                sendto(fd.as_raw_fd(), frame, &to, MsgFlags::empty()).map_err(io::Error::from)
            })
            .await?;
        if sent != frame.len() {
            return Err(io::Error::other(format!("short send: {sent} of {} bytes", frame.len())));
        }
        Ok(())
    }
}

impl Drop for PacketSocket {
    /// Closing a packet socket waits for an RCU grace period (the kernel's `packet_release`
    /// calls `synchronize_net`; ~16 ms measured here). On a runtime thread that stalls every
    /// task scheduled there: with 1,000 routers announcing at once, the closes alone
    /// serialised the failover into seconds. So the descriptor is closed on tokio's blocking
    /// pool, where concurrent closes wait out the same grace period side by side.
    fn drop(&mut self) {
        let Some(fd) = self.fd.take() else { return };
        let fd = fd.into_inner();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(fd))),
            Err(_) => drop(fd),
        }
    }
}

/// A `sockaddr_ll` for `ifindex`. `ethertype` (host order) decides which protocol the kernel
/// tags the frame with; `dst` only matters for `SOCK_DGRAM` but is filled for clarity.
fn sockaddr_ll(ifindex: i32, ethertype: u16, dst: Mac) -> libc::sockaddr_ll {
    let mut sll_addr = [0u8; 8];
    sll_addr[..6].copy_from_slice(&dst);
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: ethertype.to_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr,
    }
}

/// [`sockaddr_ll`] as the nix address type `bind` and `sendto` take.
fn link_addr(ifindex: i32, ethertype: u16, dst: Mac) -> LinkAddr {
    let sll = sockaddr_ll(ifindex, ethertype, dst);
    // SAFETY: `sll` is a fully initialised sockaddr_ll and the length passed is its size;
    // from_raw copies it and checks the family.
    unsafe {
        LinkAddr::from_raw(
            (&sll as *const libc::sockaddr_ll).cast(),
            Some(mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t),
        )
    }
    .expect("AF_PACKET sockaddr_ll is a valid LinkAddr")
}
