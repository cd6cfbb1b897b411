//! Announcing the gateway addresses after a takeover: gratuitous ARP for IPv4, unsolicited
//! neighbour advertisements for IPv6, so switches and neighbours move the addresses to this
//! node's MAC at once instead of after their caches expire.
//!
//! Frames are built by hand and sent on an `AF_PACKET` socket opened inside the router's
//! namespace. That avoids the IP stack entirely: an address that is still tentative or
//! optimistic right after the takeover cannot be a source address for a normal IPv6 socket,
//! but it is exactly the address that has to be announced.
//!
//! The first round is sent before [`announce`] returns so the caller knows it reached the
//! wire (and sees why not); the repeats, which only cover frames lost in a busy network,
//! run on a background task and are logged.

mod frame;
mod socket;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hagw_core::model::AnnounceSchedule;
use hagw_core::observed::Ipv6Sysctl;
use hagw_core::{Error, ErrorKind};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::linux::LinuxNet;
use crate::linux::error::{Target, errno_kind, from_io};
use crate::linux::sysctl::ipv6_conf_path;
use crate::netns::Netns;
use frame::{ETH_P_ARP, ETH_P_IPV6, Mac};
use socket::{MacError, OpenedSocket, PacketSocket};

/// Announcement frames handed to a device by this process, over all rounds and routers.
static FRAMES_SENT: AtomicU64 = AtomicU64::new(0);

/// How many gratuitous ARP and unsolicited NA frames this process has sent so far (each
/// frame the kernel accepted for transmission, repeats included). Monotonic; read by the
/// agent's metrics so this crate does not depend on them.
pub fn frames_sent() -> u64 {
    FRAMES_SENT.load(Ordering::Relaxed)
}

/// Announces `addresses` on `device` inside `netns`: one round now, then the rest of the
/// schedule ([`AnnounceSchedule::later_rounds`]: a burst at 10, 50 and 200 ms, then
/// `schedule.repeats` rounds `schedule.interval_ms` apart) on a background task.
///
/// Returns once the first round has been handed to the device. Its errors are returned (a
/// missing namespace or device is transient, missing privileges permanent) and no repeats
/// are scheduled then: the caller's retry starts a full schedule of its own. Errors of later
/// rounds are only logged. IPv4 addresses get a gratuitous ARP request, IPv6 addresses
/// (global and link-local) an unsolicited neighbour advertisement with the override flag,
/// and the router flag while the device forwards IPv6: the frames keepalived sends at its
/// transition (docs/backends.md, "Announcements"). Addresses that cannot be owned by a host
/// (unspecified, multicast, loopback, broadcast) are skipped.
pub async fn announce(
    netns: &Netns,
    device: &str,
    addresses: &[IpAddr],
    schedule: AnnounceSchedule,
) -> Result<(), Error> {
    announce_with(None, netns, device, addresses, schedule).await
}

/// As [`announce`], but each later round announces only the addresses still on `device`
/// (read with `linux`): one the primary no longer has (a floating IP Neutron removed, every
/// address of a node turned standby) is not announced again; and its router flag follows
/// the device's IPv6 `forwarding` as it is then (keepalived reads it for every frame).
pub async fn announce_present(
    linux: &LinuxNet,
    netns: &Netns,
    device: &str,
    addresses: &[IpAddr],
    schedule: AnnounceSchedule,
) -> Result<(), Error> {
    announce_with(Some(linux.clone()), netns, device, addresses, schedule).await
}

async fn announce_with(
    linux: Option<LinuxNet>,
    netns: &Netns,
    device: &str,
    addresses: &[IpAddr],
    schedule: AnnounceSchedule,
) -> Result<(), Error> {
    let span = info_span!("announce", netns = netns.name(), device, addresses = addresses.len());
    async move {
        let addresses = announceable(addresses);
        if addresses.is_empty() {
            debug!("nothing to announce");
            return Ok(());
        }
        let target = Target::dev(netns.name(), device);
        let owned_device = device.to_owned();
        // With `linux`, the router flag comes from its open sysctl file rather than a path
        // walk under /proc/sys on the namespace thread (see `crate::linux::sysctl_files`).
        let read_here = linux.is_none();
        let ((opened, router), _) = netns
            .run(move || {
                let router = read_here && forwards_ipv6(&owned_device);
                OpenedSocket::open(&owned_device).map(|s| (s, router))
            })
            .await
            .map_err(|err| from_io("open packet socket", target, err))?;
        let router = match &linux {
            Some(linux) => linux.forwards_ipv6(netns, device).await.unwrap_or(false),
            None => router,
        };
        let socket = PacketSocket::register(opened)
            .map_err(|err| from_io("register packet socket", target, err))?;
        let announcer = Announcer {
            socket,
            addresses,
            netns: netns.name().to_owned(),
            device: device.to_owned(),
            linux,
        };
        let frames = announcer.round(&announcer.addresses, router).await?;
        let later = schedule.later_rounds();
        info!(round = 1, frames, later_rounds = later.len(), "addresses announced");
        if !later.is_empty() {
            tokio::spawn(announcer.repeat(later, router).in_current_span());
        }
        Ok(())
    }
    .instrument(span)
    .await
}

/// The addresses worth announcing, in order and without duplicates. Anything a neighbour
/// could never have cached as a unicast neighbour is dropped with a warning rather than
/// sent, since an ARP or NA for it would be invalid on the wire.
fn announceable(addresses: &[IpAddr]) -> Vec<IpAddr> {
    let mut kept: Vec<IpAddr> = Vec::with_capacity(addresses.len());
    for &address in addresses {
        let unicast = match address {
            IpAddr::V4(v4) => {
                !(v4.is_unspecified() || v4.is_multicast() || v4.is_loopback() || v4.is_broadcast())
            }
            IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_loopback()),
        };
        if !unicast {
            warn!(%address, "not a unicast address: not announced");
        } else if !kept.contains(&address) {
            kept.push(address);
        }
    }
    kept
}

/// Whether `device` forwards IPv6 (its `forwarding` sysctl), which is what keepalived's NA
/// router flag says (`get_ipv6_forwarding`). Reads `/proc/sys/net`, so it must run on a thread
/// inside the device's namespace. Unreadable means no IPv6 on the device: no NA goes out.
fn forwards_ipv6(device: &str) -> bool {
    ipv6_conf_path(device, Ipv6Sysctl::Forwarding.key())
        .ok()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .is_some_and(|value| value.trim() != "0")
}

/// One announcement schedule's state, moved into the background task after round 1.
struct Announcer {
    socket: PacketSocket,
    addresses: Vec<IpAddr>,
    netns: String,
    device: String,
    /// Reads the device's addresses before each later round, if set.
    linux: Option<LinuxNet>,
}

impl Announcer {
    fn target(&self) -> Target<'_> {
        Target::dev(&self.netns, &self.device)
    }

    /// Sends one frame per address and returns how many went out. A failing address does
    /// not keep the others from being announced; the first failure is returned.
    /// `router`: whether the device forwards IPv6 (the NA's router flag).
    async fn round(&self, addresses: &[IpAddr], router: bool) -> Result<usize, Error> {
        let mac = self.socket.mac().map_err(|err| self.mac_error(err))?;
        let mut sent = 0;
        let mut first_error = None;
        for &address in addresses {
            match self.send(mac, address, router).await {
                Ok(()) => {
                    sent += 1;
                    FRAMES_SENT.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    debug!(%address, error = %err, "announcement not sent");
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(sent),
        }
    }

    async fn send(&self, mac: Mac, address: IpAddr, router: bool) -> Result<(), Error> {
        let (frame, ethertype, dst, what) = match address {
            IpAddr::V4(v4) => (frame::gratuitous_arp(mac, v4), ETH_P_ARP, [0xff; 6], "ARP"),
            IpAddr::V6(v6) => (
                frame::unsolicited_na(mac, v6, router),
                ETH_P_IPV6,
                [0x33, 0x33, 0, 0, 0, 1],
                "unsolicited NA",
            ),
        };
        self.socket.send(&frame, ethertype, dst).await.map_err(|err| {
            from_io(format_args!("send gratuitous {what} for {address}"), self.target(), err)
        })
    }

    fn mac_error(&self, err: MacError) -> Error {
        let kind = match err {
            MacError::Io(errno) => errno_kind(errno),
            MacError::NotEthernet { .. } => ErrorKind::Permanent,
        };
        Error::new(kind, "read hardware address", self.target(), err)
    }

    /// The rounds after the first, each at its offset from the first (so a slow round does
    /// not shift the rest of the schedule).
    async fn repeat(self, later: Vec<Duration>, mut router: bool) {
        let first = tokio::time::Instant::now();
        for (round, offset) in (2..).zip(later) {
            tokio::time::sleep_until(first + offset).await;
            let addresses = self.still_present().await;
            router = self.forwarding().await.unwrap_or(router);
            match self.round(&addresses, router).await {
                Ok(frames) => debug!(round, frames, "addresses announced"),
                Err(err) => warn!(round, error = %err, "announcement round failed"),
            }
        }
        debug!("announce schedule finished");
    }

    /// Whether the device forwards IPv6 now, from its open sysctl file (no namespace thread,
    /// no link dump); `None` without `linux` or if it cannot be read, and the last value
    /// holds.
    async fn forwarding(&self) -> Option<bool> {
        let linux = self.linux.as_ref()?;
        let forwards = linux.forwards_ipv6(&Netns::named(&self.netns), &self.device).await;
        if forwards.is_none() {
            debug!("cannot read the device's IPv6 forwarding");
        }
        forwards
    }

    /// The addresses of this schedule still on the device (all of them without `linux`, or
    /// if the device cannot be read: the round then reports why).
    async fn still_present(&self) -> Vec<IpAddr> {
        let Some(linux) = &self.linux else { return self.addresses.clone() };
        match linux.addresses(&Netns::named(&self.netns), &self.device).await {
            Ok(present) => {
                let on_device = |a: &&IpAddr| present.iter().any(|p| p.addr() == **a);
                let kept: Vec<IpAddr> = self.addresses.iter().filter(on_device).copied().collect();
                if kept.len() < self.addresses.len() {
                    debug!(
                        kept = kept.len(),
                        "addresses gone from the device: not announced again"
                    );
                }
                kept
            }
            Err(err) => {
                debug!(error = %err, "cannot read the device's addresses");
                self.addresses.clone()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unicast_addresses_are_announced_once_each() {
        let input: Vec<IpAddr> = [
            "192.0.2.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "127.0.0.1",
            "2001:db8::1",
            "fe80::1",
            "::",
            "::1",
            "ff02::1",
            "192.0.2.1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let expected: Vec<IpAddr> =
            ["192.0.2.1", "2001:db8::1", "fe80::1"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(announceable(&input), expected);
    }
}
