//! hagw announces a takeover with the frames keepalived sends at its transition, field for
//! field, compared live in the keepalived lab (real keepalived, Neutron's keepalived.conf,
//! dual-stack router: gateway address, floating IP, link-local VIP).
//!
//! No hagw runs when keepalived becomes primary, so its own gratuitous ARPs and unsolicited
//! NAs reach the node's ToR port; then hagw starts on that primary (arriving at primary, it
//! announces once) and its frames for the same addresses are captured at the same port. Per
//! address the decoded frames must be equal: Ethernet destination and source; ARP operation,
//! sender and target hardware and protocol addresses; the NA's IPv6 source, destination and
//! hop limit, R/S/O flags, target and options (Target Link-Layer Address). Frame length is
//! not a field: hagw pads its ARP to 60 bytes, keepalived's 42 are padded by a NIC.
//!
//! Twice: on node1 with the gateway port forwarding IPv6 (Neutron before Zed, and what hagw
//! sets on a primary serving IPv6), and on node2 with forwarding off (since Zed the L3 agent
//! enables it only after keepalived's transition) and a hagw spec serving IPv4 only, so that
//! hagw leaves forwarding alone and announces the link-local VIP as the device is: the NA's
//! router flag says whether the device forwards, in keepalived's frames and hagw's alike.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hagw_e2e::frames::{Announcement, Mac, read_pcap};
use hagw_e2e::gateway::{GATEWAY_IP, GATEWAY_MAC};
use hagw_e2e::keepalived::{FIP, GATEWAY_LLA, KaLab, Wiring};
use hagw_e2e::wait::eventually;

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The distinct announcements per address from the gateway MAC at node `i`'s ToR port,
/// captured in `[from, to)` (seconds since the epoch).
fn announcements(
    lab: &KaLab,
    i: usize,
    from: f64,
    to: f64,
) -> Result<BTreeMap<IpAddr, BTreeSet<Announcement>>> {
    let mac = Mac::parse(GATEWAY_MAC).context("gateway MAC")?;
    let mut by_address: BTreeMap<IpAddr, BTreeSet<Announcement>> = BTreeMap::new();
    for frame in read_pcap(&lab.nodes[i].pcap)? {
        if frame.time < from || frame.time >= to {
            continue;
        }
        if let Some(a) = Announcement::decode(&frame.bytes).filter(|a| a.eth_src() == mac) {
            by_address.entry(a.address()).or_default().insert(a);
        }
    }
    Ok(by_address)
}

/// Starts hagw on node `i` and waits until it logged its first announcement round, then
/// for the burst after it (10, 50, 200 ms). Returns when hagw was started.
fn hagw_announces(lab: &mut KaLab, i: usize) -> Result<f64> {
    let started = now();
    lab.nodes[i].start_hagw()?;
    let what = format!("hagw on node{} to log its first announcement round", i + 1);
    eventually(Duration::from_secs(15), &what, || Ok(lab.first_round(i, started).is_some()))?;
    std::thread::sleep(Duration::from_millis(600));
    Ok(started)
}

/// keepalived's announcements (captured in `[keepalived_from, hagw_started)`) against hagw's
/// (from `hagw_started` on) at node `i`'s port, for `expected` addresses at least: one entry
/// per address where they differ.
fn compare(
    lab: &KaLab,
    i: usize,
    keepalived_from: f64,
    hagw_started: f64,
    expected: &[IpAddr],
) -> Result<Vec<String>> {
    let keepalived = announcements(lab, i, keepalived_from, hagw_started)?;
    let hagw = announcements(lab, i, hagw_started, now())?;
    for address in expected {
        ensure!(
            keepalived.contains_key(address),
            "keepalived announced no {address}: {keepalived:#?}"
        );
    }
    let mut differences = Vec::new();
    for address in keepalived.keys().chain(hagw.keys()).collect::<BTreeSet<_>>() {
        let (k, h) = (keepalived.get(address), hagw.get(address));
        if k != h {
            let node = i + 1;
            differences.push(format!("node{node} {address}:\n keepalived: {k:#?}\n hagw: {h:#?}"));
        }
    }
    if differences.is_empty() {
        println!("node{}: identical announcements: {keepalived:#?}", i + 1);
    }
    Ok(differences)
}

#[test]
fn hagw_announces_with_keepalived_frames() -> Result<()> {
    let lla: IpAddr = GATEWAY_LLA.split('/').next().unwrap_or_default().parse()?;
    let expected: Vec<IpAddr> = vec![GATEWAY_IP.parse()?, FIP.parse()?, lla];
    // Neither node runs hagw: keepalived's frames at its transition reach the ToR.
    let mut lab = KaLab::prepare(Wiring::Generic, [false, false])?;
    lab.boot()?;
    // keepalived's transition burst is a few milliseconds long; its next one is due after
    // `garp_master_delay` (60 s), after this test.
    std::thread::sleep(Duration::from_secs(1));
    let forwarding = lab.nodes[0]
        .router(&format!("cat /proc/sys/net/ipv6/conf/{}/forwarding", lab.nodes[0].qg))?;
    ensure!(forwarding.trim() == "1", "node1's gateway port should forward IPv6: {forwarding}");
    let hagw1 = hagw_announces(&mut lab, 0)?;
    let mut differences = compare(&lab, 0, lab.started, hagw1, &expected)?;

    // node2: forwarding off at keepalived's transition, and a spec hagw serves IPv4 only on.
    let node2 = &lab.nodes[1];
    node2.router(&format!("sysctl -qw net.ipv6.conf.{}.forwarding=0", node2.qg))?;
    let config = std::fs::read_to_string(&node2.config)?;
    let ipv4_only = config.replace(&format!(", \"{GATEWAY_LLA}\""), "");
    ensure!(ipv4_only != config, "node2's spec has no link-local gateway address: {config}");
    std::fs::write(&node2.config, ipv4_only)?;
    let takeover = now();
    lab.nodes[0].stop_keepalived();
    lab.wait_primary(1, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(1));
    let hagw2 = hagw_announces(&mut lab, 1)?;
    differences.extend(compare(&lab, 1, takeover, hagw2, &expected)?);
    ensure!(
        differences.is_empty(),
        "hagw's announcements differ from keepalived's:\n{}",
        differences.join("\n")
    );
    // Equal to keepalived's, whose router flag follows the sysctl.
    let na_router = announcements(&lab, 1, takeover, now())?
        .values()
        .flatten()
        .any(|a| matches!(a, Announcement::Na(na) if na.router));
    ensure!(!na_router, "node2 does not forward IPv6, yet an NA has the router flag");
    Ok(())
}
