//! Root-only kernel tests of the generic backend's hold: nf_tables in the router namespace,
//! by device name, written and read over hagw's own netlink messages, cross-checked with
//! `nft` (package `nftables`) and judged by what reaches the far end of the gateway veth.

mod linux_support;

use std::time::Duration;

use hagw_backends::l2::GenericL2;
use hagw_core::model::{AnnounceSchedule, L2BackendSpec, Role, RoleSource, RouterSpec, Strategy};
use hagw_core::observed::HoldState;
use linux_support::{DEVICE, PEER_DEVICE, TempNetns, can_run};
use serde_json::Value;

fn spec(router: &TempNetns) -> RouterSpec {
    RouterSpec {
        id: "r1".into(),
        namespace: router.name.clone(),
        gateway_device: DEVICE.into(),
        ha_device: None,
        primary_vip: None,
        keepalived_pid_file: None,
        gateway_addresses: vec![],
        routes: vec![],
        backend: L2BackendSpec::Generic,
        strategy: Strategy::LinkDown,
        announce: AnnounceSchedule::default(),
        role: RoleSource::Fixed(Role::Standby),
        silence_settle_ms: 200,
    }
}

/// Frames the peer end has received.
fn peer_rx(peer: &TempNetns) -> u64 {
    let out = peer.ip(&["-s", "-j", "link", "show", PEER_DEVICE]);
    let doc: Value = serde_json::from_str(&out).expect("ip -j");
    doc[0]["stats64"]["rx"]["packets"].as_u64().expect("rx packets")
}

/// The gateway is created and made to talk the way a legacy L3 agent leaves it: IPv6
/// forwarding on (MLD reports for ff02::2), a link-local address (DAD, MLD), an IPv4 address
/// and an ARP probe for a neighbour.
fn plug_and_provoke(router: &TempNetns, peer: &TempNetns) {
    router.ip(&["link", "add", DEVICE, "type", "veth", "peer", "name", PEER_DEVICE]);
    router.ip(&["link", "set", PEER_DEVICE, "netns", &peer.name]);
    peer.ip(&["link", "set", PEER_DEVICE, "up"]);
    assert!(router.exec(&["sysctl", "-qw", &format!("net.ipv6.conf.{DEVICE}.forwarding=1")]));
    router.ip(&["addr", "add", "192.0.2.10/24", "dev", DEVICE]);
    router.ip(&["link", "set", DEVICE, "up"]);
    router.exec(&["ping", "-c", "1", "-W", "1", "192.0.2.1"]);
}

#[tokio::test]
async fn a_name_held_before_its_device_exists_sends_nothing_until_released() {
    if !can_run() {
        return;
    }
    let router = TempNetns::new("g");
    let peer = TempNetns::new("gp");
    let spec = spec(&router);
    let backend = GenericL2;

    assert_eq!(backend.observe(&spec).await.unwrap().hold, HoldState::Released);
    backend.hold(&spec).await.expect("hold before the device exists");
    backend.hold(&spec).await.expect("a second hold is a no-op");
    let state = backend.observe(&spec).await.unwrap();
    assert_eq!(state.hold, HoldState::Held);
    assert!(state.wired);

    // What nft itself reads from the kernel: the shape the module documents, one rule.
    let listed = |family: &str| -> Value {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &router.name, "nft", "-j", "list", "table", family, "hagw"])
            .output()
            .expect("run nft");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("nft -j")
    };
    for (family, hook) in [("inet", "postrouting"), ("arp", "output")] {
        let doc = listed(family);
        let items = doc["nftables"].as_array().unwrap();
        let set = items.iter().find_map(|i| i.get("set")).expect("set");
        assert_eq!(set["type"], "ifname", "{family}: {set}");
        assert_eq!(set["elem"], serde_json::json!([DEVICE]), "{family}: {set}");
        let chain = items.iter().find_map(|i| i.get("chain")).expect("chain");
        assert_eq!(chain["hook"], hook, "{family}: {chain}");
        assert_eq!(chain["prio"], -300, "{family}: {chain}");
        assert_eq!(chain["policy"], "accept", "{family}: {chain}");
        let rules: Vec<&Value> = items.iter().filter_map(|i| i.get("rule")).collect();
        assert_eq!(rules.len(), 1, "{family}: exactly one rule after two holds: {rules:?}");
        let expr = &rules[0]["expr"];
        assert_eq!(expr[0]["match"]["left"]["meta"]["key"], "oifname", "{family}: {expr}");
        assert_eq!(expr[0]["match"]["right"], "@held", "{family}: {expr}");
        assert!(expr[1].get("drop").is_some(), "{family}: {expr}");
    }

    plug_and_provoke(&router, &peer);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(peer_rx(&peer), 0, "a held device sent frames");

    backend.release(&spec).await.expect("release");
    assert_eq!(backend.observe(&spec).await.unwrap().hold, HoldState::Released);
    backend.release(&spec).await.expect("releasing a released name is a no-op");
    router.exec(&["ping", "-c", "1", "-W", "1", "192.0.2.1"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(peer_rx(&peer) > 0, "the released device stays silent: the hold was not the cause");
}

#[tokio::test]
async fn a_missing_namespace_has_nothing_to_hold_or_release() {
    if !can_run() {
        return;
    }
    let gone = TempNetns::new("gx");
    let spec = spec(&gone);
    drop(gone);
    let backend = GenericL2;
    assert_eq!(backend.observe(&spec).await.unwrap().hold, HoldState::Unknown);
    backend.release(&spec).await.expect("nothing to release");
    let err = backend.hold(&spec).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
}
