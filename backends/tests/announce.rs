//! Kernel tests for the announcer (root only; they pass vacuously otherwise): a router
//! namespace and a peer namespace joined by a veth pair, a packet capture in the peer, and
//! the peer kernel's neighbour table as the judge of whether the frames are valid.
//!
//! Namespaces come from `linux_support` (unique per process and test, deleted on drop, also
//! when a test panics), so the tests run in parallel with each other and with other binaries.

mod linux_support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use hagw_backends::announce::{announce, announce_present};
use hagw_backends::linux::LinuxNet;
use hagw_backends::netns::Netns;
use hagw_core::model::AnnounceSchedule;
use linux_support::{TempNetns, can_run, ip};
use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, socket};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

const ROUTER_DEVICE: &str = "qg-ann";
const PEER_DEVICE: &str = "peer0";
const ROUTER_MAC: [u8; 6] = [0x02, 0x5a, 0x00, 0xaa, 0xbb, 0x01];
const ROUTER_MAC_TEXT: &str = "02:5a:00:aa:bb:01";
/// A MAC the peer's neighbour entries start with, so an update to the router's MAC proves
/// the kernel accepted the announcement (including its checksum and override flag).
const STALE_MAC_TEXT: &str = "02:00:00:00:00:99";

/// A router namespace whose gateway device is wired to a peer namespace.
struct Pair {
    router: TempNetns,
    peer: TempNetns,
}

impl Pair {
    /// Router: 192.0.2.1/24, 2001:db8::1/64 and fe80::a/64 (no DAD, so nothing is tentative
    /// and the kernel sends no NAs of its own). Peer: 192.0.2.2/24, `arp_accept=1` so a
    /// gratuitous ARP creates a neighbour entry, and stale IPv6 neighbour entries pointing
    /// elsewhere, which only a valid override NA can move to the router's MAC.
    fn new() -> Self {
        let pair = Pair { router: TempNetns::new("a"), peer: TempNetns::new("a") };
        pair.router.ip(&[
            "link",
            "add",
            ROUTER_DEVICE,
            "address",
            ROUTER_MAC_TEXT,
            "type",
            "veth",
            "peer",
            "name",
            PEER_DEVICE,
            "netns",
            &pair.peer.name,
        ]);
        pair.peer.sysctl(&format!("net.ipv4.conf.{PEER_DEVICE}.arp_accept=1"));
        pair.router.ip(&["addr", "add", "192.0.2.1/24", "dev", ROUTER_DEVICE]);
        for v6 in ["2001:db8::1/64", "fe80::a/64"] {
            pair.router.ip(&["addr", "add", v6, "dev", ROUTER_DEVICE, "nodad"]);
        }
        pair.peer.ip(&["addr", "add", "192.0.2.2/24", "dev", PEER_DEVICE]);
        pair.peer.ip(&["link", "set", PEER_DEVICE, "up"]);
        pair.router.ip(&["link", "set", ROUTER_DEVICE, "up"]);
        for v6 in ["2001:db8::1", "fe80::a"] {
            pair.peer.ip(&[
                "neigh",
                "replace",
                v6,
                "lladdr",
                STALE_MAC_TEXT,
                "dev",
                PEER_DEVICE,
                "nud",
                "stale",
            ]);
        }
        pair
    }

    fn peer_neighbour(&self, address: &str) -> String {
        self.peer.ip(&["neigh", "show", address, "dev", PEER_DEVICE])
    }
}

/// A frame seen by the capture, with when it arrived.
struct Captured {
    at: Instant,
    frame: Vec<u8>,
}

/// Captures every frame in `netns` for `window` (including its own: the matchers below only
/// accept frames from the router's MAC). The socket is opened inside the
/// namespace (and so sees only its devices) before this returns; the capture itself runs
/// on a task.
async fn capture(netns: &Netns, window: Duration) -> tokio::task::JoinHandle<Vec<Captured>> {
    let (fd, _): (OwnedFd, _) = netns
        .run(|| {
            socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                SockProtocol::EthAll,
            )
            .map_err(Into::into)
        })
        .await
        .expect("open capture socket");
    // SAFETY: the OwnedFd is valid and stays open for as long as the AsyncFd owns it.
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .expect("register capture socket");
    let deadline = tokio::time::Instant::now() + window;
    tokio::spawn(async move {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 2048];
        loop {
            let read = tokio::time::timeout_at(
                deadline,
                fd.async_io(Interest::READABLE, |fd| {
                    recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(Into::into)
                }),
            )
            .await;
            match read {
                Err(_elapsed) => break frames,
                Ok(Ok(len)) => {
                    frames.push(Captured { at: Instant::now(), frame: buf[..len].to_vec() })
                }
                Ok(Err(err)) => panic!("capture failed: {err}"),
            }
        }
    })
}

/// Gratuitous ARP requests announcing `address` from the router's MAC.
fn garps(frames: &[Captured], address: Ipv4Addr) -> Vec<Instant> {
    frames
        .iter()
        .filter(|c| {
            let f = &c.frame;
            f.len() >= 42
                && f[12..14] == [0x08, 0x06]
                && f[0..6] == [0xff; 6]
                && f[6..12] == ROUTER_MAC
                && f[14..22] == [0, 1, 8, 0, 6, 4, 0, 1]
                && f[22..28] == ROUTER_MAC
                && f[28..32] == address.octets()
                && f[38..42] == address.octets()
        })
        .map(|c| c.at)
        .collect()
}

/// Neighbour advertisements for `target` from the router's MAC, with whether each had the
/// router flag (set exactly while the device forwards IPv6, as keepalived sets it); panics on
/// one that is not the announcement the router must send (the other flags, addresses, hop
/// limit, option, checksum).
fn neighbour_advertisements_flagged(frames: &[Captured], target: Ipv6Addr) -> Vec<(Instant, bool)> {
    let mut seen = Vec::new();
    for c in frames {
        let f = &c.frame;
        let is_na_for_target = f.len() >= 78
            && f[12..14] == [0x86, 0xdd]
            && f[20] == 58
            && f[54] == 136
            && f[62..78] == target.octets();
        if !is_na_for_target {
            continue;
        }
        assert_eq!(f.len(), 86, "NA for {target}: one TLLA option expected");
        assert_eq!(f[0..6], [0x33, 0x33, 0, 0, 0, 1], "NA for {target}: destination MAC");
        assert_eq!(f[6..12], ROUTER_MAC, "NA for {target}: source MAC");
        assert_eq!(f[21], 255, "NA for {target}: hop limit");
        assert_eq!(f[22..38], target.octets(), "NA for {target}: source address");
        assert_eq!(f[38..54], "ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        let flags = f[58];
        assert_eq!(flags & 0x20, 0x20, "NA for {target}: override flag");
        assert_eq!(flags & 0x40, 0, "NA for {target}: solicited flag");
        assert_eq!(f[78..80], [2, 1], "NA for {target}: target link-layer address option");
        assert_eq!(f[80..86], ROUTER_MAC, "NA for {target}: option MAC");
        assert!(icmpv6_checksum_ok(f), "NA for {target}: bad checksum");
        seen.push((c.at, flags & 0x80 != 0));
    }
    seen
}

/// [`neighbour_advertisements_flagged`] from a device that does not forward IPv6 (a new
/// namespace's default): none may have the router flag.
fn neighbour_advertisements(frames: &[Captured], target: Ipv6Addr) -> Vec<Instant> {
    let seen = neighbour_advertisements_flagged(frames, target);
    assert!(seen.iter().all(|(_, router)| !router), "NA for {target}: router flag set");
    seen.into_iter().map(|(at, _)| at).collect()
}

/// Receiver-side check: the one's complement sum of the pseudo-header and the ICMPv6
/// message (checksum included) is all ones.
fn icmpv6_checksum_ok(frame: &[u8]) -> bool {
    let payload_len = u16::from_be_bytes([frame[18], frame[19]]) as usize;
    let message = &frame[54..54 + payload_len];
    let mut data = Vec::new();
    data.extend_from_slice(&frame[22..54]); // source and destination
    data.extend_from_slice(&(payload_len as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, 58]);
    data.extend_from_slice(message);
    if data.len() % 2 == 1 {
        data.push(0);
    }
    let mut sum: u64 = data.chunks(2).map(|w| u64::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// Asserts one announcement per round of `schedule`, the last one about its offset after
/// the first (slack for scheduling: capture times are taken in user space).
fn assert_schedule(what: &str, times: &[Instant], schedule: AnnounceSchedule) {
    let offsets = schedule.later_rounds();
    assert_eq!(times.len(), offsets.len() + 1, "{what}: rounds seen {times:?}, due {offsets:?}");
    let (last, due) = (times[times.len() - 1] - times[0], offsets[offsets.len() - 1]);
    assert!(
        last >= due * 3 / 4 && last <= due * 3,
        "{what}: the last round {last:?} after the first, due at {due:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announces_every_address_on_schedule_and_neighbours_learn_the_mac() {
    if !can_run() {
        return;
    }
    let pair = Pair::new();
    let interval = Duration::from_millis(200);
    let schedule = AnnounceSchedule { repeats: 2, interval_ms: 200 };
    let v4 = Ipv4Addr::new(192, 0, 2, 1);
    let global: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let link_local: Ipv6Addr = "fe80::a".parse().unwrap();
    let addresses = [IpAddr::V4(v4), IpAddr::V6(global), IpAddr::V6(link_local)];

    let capturing = capture(&pair.peer.netns(), Duration::from_millis(1200)).await;
    let started = Instant::now();
    announce(&pair.router.netns(), ROUTER_DEVICE, &addresses, schedule)
        .await
        .expect("first round sent");
    let returned = started.elapsed();
    assert!(returned < interval, "announce waited for the repeats: {returned:?}");
    let frames = capturing.await.expect("capture task");

    let arp = garps(&frames, v4);
    // Rounds at 0, 10, 50, 200 and 400 ms.
    assert_schedule("gratuitous ARP for 192.0.2.1", &arp, schedule);
    assert!(arp[0] - started < interval, "first round not sent at once");
    assert_schedule("NA for 2001:db8::1", &neighbour_advertisements(&frames, global), schedule);
    assert_schedule("NA for fe80::a", &neighbour_advertisements(&frames, link_local), schedule);

    let v4_entry = pair.peer_neighbour("192.0.2.1");
    assert!(v4_entry.contains(ROUTER_MAC_TEXT), "peer did not learn the IPv4 MAC: {v4_entry:?}");
    for v6 in ["2001:db8::1", "fe80::a"] {
        let entry = pair.peer_neighbour(v6);
        assert!(entry.contains(ROUTER_MAC_TEXT), "peer did not accept the NA for {v6}: {entry:?}");
    }
}

/// The agent's announcements read the device's addresses before each later round: one removed
/// meanwhile (a floating IP Neutron removed) is not announced again, the others are.
#[tokio::test]
async fn an_address_removed_meanwhile_is_not_announced_again() {
    if !can_run() {
        return;
    }
    let pair = Pair::new();
    // Rounds at 0, 10, 50, 200, 1000 and 2000 ms; the address goes at 400 ms.
    let schedule = AnnounceSchedule { repeats: 2, interval_ms: 1000 };
    let v4 = Ipv4Addr::new(192, 0, 2, 1);
    let global: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let capturing = capture(&pair.peer.netns(), Duration::from_millis(2500)).await;
    let started = Instant::now();
    let addresses = [IpAddr::V4(v4), IpAddr::V6(global)];
    announce_present(
        &LinuxNet::default(),
        &pair.router.netns(),
        ROUTER_DEVICE,
        &addresses,
        schedule,
    )
    .await
    .expect("first round sent");
    tokio::time::sleep_until((started + Duration::from_millis(400)).into()).await;
    pair.router.ip(&["addr", "del", "2001:db8::1/64", "dev", ROUTER_DEVICE]);
    let removed = Instant::now();
    let frames = capturing.await.expect("capture task");
    assert_schedule("gratuitous ARP for 192.0.2.1", &garps(&frames, v4), schedule);
    let na = neighbour_advertisements(&frames, global);
    assert!(!na.is_empty(), "the first round did not announce 2001:db8::1");
    let late: Vec<Duration> = na.iter().filter(|t| **t > removed).map(|t| *t - started).collect();
    assert!(late.is_empty(), "2001:db8::1 announced after it was removed: at {late:?}");
}

/// The router flag of the agent's advertisements follows the device's IPv6 `forwarding` as it
/// is at each round, read from the link message (keepalived reads it for every frame).
#[tokio::test]
async fn the_router_flag_follows_forwarding_round_by_round() {
    if !can_run() {
        return;
    }
    let pair = Pair::new();
    // Rounds at 0, 10, 50, 200 and 1000 ms; forwarding goes on at 100 ms.
    let schedule = AnnounceSchedule { repeats: 1, interval_ms: 1000 };
    let global: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let capturing = capture(&pair.peer.netns(), Duration::from_millis(1400)).await;
    let started = Instant::now();
    let linux = LinuxNet::default();
    let addresses = [IpAddr::V6(global)];
    announce_present(&linux, &pair.router.netns(), ROUTER_DEVICE, &addresses, schedule)
        .await
        .expect("first round sent");
    tokio::time::sleep_until((started + Duration::from_millis(100)).into()).await;
    pair.router.sysctl(&format!("net.ipv6.conf.{ROUTER_DEVICE}.forwarding=1"));
    let forwarding = Instant::now();
    let frames = capturing.await.expect("capture task");
    let na = neighbour_advertisements_flagged(&frames, global);
    assert_eq!(na.len(), 5, "rounds seen: {na:?}");
    for (at, router) in na {
        let when = at - started;
        assert_eq!(router, at > forwarding, "NA at {when:?}: router flag {router}");
    }
}

#[tokio::test]
async fn no_repeats_sends_one_round() {
    if !can_run() {
        return;
    }
    let pair = Pair::new();
    let v4 = Ipv4Addr::new(192, 0, 2, 1);
    let capturing = capture(&pair.peer.netns(), Duration::from_millis(400)).await;
    let schedule = AnnounceSchedule { repeats: 0, interval_ms: 100 };
    announce(&pair.router.netns(), ROUTER_DEVICE, &[IpAddr::V4(v4)], schedule)
        .await
        .expect("round sent");
    let frames = capturing.await.expect("capture task");
    assert_eq!(garps(&frames, v4).len(), 1);
}

/// The announcement's packet socket is closed once its rounds are done (on tokio's blocking
/// pool, since the kernel makes a packet socket's close wait for an RCU grace period).
#[tokio::test]
async fn the_packet_socket_is_closed_after_the_last_round() {
    if !can_run() {
        return;
    }
    let pair = Pair::new();
    let packet_sockets = || {
        let table = ip(&["netns", "exec", &pair.router.name, "cat", "/proc/net/packet"]);
        table.lines().skip(1).count()
    };
    let schedule = AnnounceSchedule { repeats: 1, interval_ms: 50 };
    let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    announce(&pair.router.netns(), ROUTER_DEVICE, &[v4], schedule).await.expect("round sent");
    assert_eq!(packet_sockets(), 1, "open while a repeat is pending");
    let deadline = Instant::now() + Duration::from_secs(5);
    while packet_sockets() > 0 {
        assert!(Instant::now() < deadline, "the packet socket was never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn missing_device_is_transient() {
    if !can_run() {
        return;
    }
    let ns = TempNetns::new("a");
    let err = announce(
        &ns.netns(),
        "nodev0",
        &["192.0.2.1".parse().unwrap()],
        AnnounceSchedule::default(),
    )
    .await
    .expect_err("no such device");
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.target, format!("netns {} dev nodev0", ns.name));
    assert!(err.to_string().contains(Errno::ENODEV.desc()), "{err}");
}

#[tokio::test]
async fn missing_namespace_is_transient() {
    if !can_run() {
        return;
    }
    let name = format!("hagwa-{}-gone", std::process::id());
    let err = announce(
        &Netns::named(&name),
        ROUTER_DEVICE,
        &["2001:db8::1".parse().unwrap()],
        AnnounceSchedule::default(),
    )
    .await
    .expect_err("no such namespace");
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn device_down_is_transient() {
    if !can_run() {
        return;
    }
    let pair = Pair::new();
    pair.router.ip(&["link", "set", ROUTER_DEVICE, "down"]);
    let err = announce(
        &pair.router.netns(),
        ROUTER_DEVICE,
        &["192.0.2.1".parse().unwrap()],
        AnnounceSchedule::default(),
    )
    .await
    .expect_err("device is down");
    assert!(err.is_transient(), "{err}");
    assert!(err.operation.contains("192.0.2.1"), "{err}");
}

#[tokio::test]
async fn non_ethernet_device_is_permanent() {
    if !can_run() {
        return;
    }
    let ns = TempNetns::new("a");
    let err =
        announce(&ns.netns(), "lo", &["127.0.0.2".parse().unwrap()], AnnounceSchedule::default())
            .await;
    // 127.0.0.2 is loopback and skipped: nothing to announce, so nothing can fail.
    assert!(err.is_ok(), "{err:?}");
    let err =
        announce(&ns.netns(), "lo", &["192.0.2.1".parse().unwrap()], AnnounceSchedule::default())
            .await
            .expect_err("lo is not Ethernet");
    assert!(!err.is_transient(), "{err}");
    assert_eq!(err.operation, "read hardware address");
}
