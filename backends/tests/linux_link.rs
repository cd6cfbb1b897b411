//! Root-only: link lookup, admin state and counters against the real kernel.

mod linux_support;

use std::time::Duration;

use hagw_backends::linux::LinuxNet;
use hagw_backends::netns::Netns;
use linux_support::{DEVICE, Fixture, PEER_DEVICE, can_run, unique_name};

#[tokio::test]
async fn link_up_down_round_trip() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();

    let link = linux.link(&netns, DEVICE).await.unwrap().expect("device exists");
    assert!(!link.admin_up, "veth starts down");
    assert!(!link.oper_up);
    assert_eq!(link.mac.len(), 6);
    let shown = fx.router.ip(&["-o", "link", "show", DEVICE]);
    let mac = link.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    assert!(shown.contains(&mac), "{shown} should show {mac}");

    linux.set_link_up(&netns, DEVICE).await.unwrap();
    let link = linux.link(&netns, DEVICE).await.unwrap().unwrap();
    assert!(link.admin_up);
    assert!(fx.router.ip(&["-o", "link", "show", DEVICE]).contains("state UP"));
    // Up twice is fine.
    linux.set_link_up(&netns, DEVICE).await.unwrap();

    // Carrier follows the peer: oper up now, and lower-layer down once the peer goes down.
    assert!(linux.link(&netns, DEVICE).await.unwrap().unwrap().oper_up);
    fx.peer.ip(&["link", "set", PEER_DEVICE, "down"]);
    let link = linux.link(&netns, DEVICE).await.unwrap().unwrap();
    assert!(link.admin_up && !link.oper_up);

    linux.set_link_down(&netns, DEVICE).await.unwrap();
    let link = linux.link(&netns, DEVICE).await.unwrap().unwrap();
    assert!(!link.admin_up);
    linux.set_link_down(&netns, DEVICE).await.unwrap();
}

#[tokio::test]
async fn counters_move_after_traffic() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();
    fx.router.ip(&["addr", "add", "198.18.0.1/24", "dev", DEVICE]);
    fx.router.ip(&["link", "set", DEVICE, "up"]);
    fx.peer.ip(&["addr", "add", "198.18.0.2/24", "dev", PEER_DEVICE]);

    let before = linux.link(&netns, DEVICE).await.unwrap().unwrap().counters;
    assert!(fx.peer.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "198.18.0.1"]));
    let after = linux.link(&netns, DEVICE).await.unwrap().unwrap().counters;
    assert!(after.rx_packets >= before.rx_packets + 3, "{before:?} -> {after:?}");
    assert!(after.tx_packets >= before.tx_packets + 3, "{before:?} -> {after:?}");
}

#[tokio::test]
async fn missing_device_is_none_and_set_fails_transient() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();
    assert_eq!(linux.link(&netns, "qg-absent").await.unwrap(), None);
    assert_eq!(linux.observe_link(&netns, "qg-absent").await.unwrap(), None);
    let err = linux.set_link_up(&netns, "qg-absent").await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.target, format!("netns {} dev qg-absent", fx.router.name));
    assert_eq!(err.operation, "set link up");
}

#[tokio::test]
async fn missing_namespace_observes_none() {
    if !can_run() {
        return;
    }
    let linux = LinuxNet::new();
    let netns = Netns::named(unique_name("-never"));
    assert_eq!(linux.observe_link(&netns, DEVICE).await.unwrap(), None);
    let err = linux.link(&netns, DEVICE).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("namespace does not exist"), "{err}");
}

#[tokio::test]
async fn observe_link_reports_the_whole_device() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();
    fx.router.ip(&["addr", "add", "192.0.2.10/24", "dev", DEVICE]);
    fx.router.ip(&["link", "set", DEVICE, "up"]);
    fx.router.ip(&["route", "add", "default", "via", "192.0.2.1", "dev", DEVICE]);

    // The kernel generates a link-local address shortly after the link comes up.
    let mut state = None;
    for _ in 0..50 {
        state = linux.observe_link(&netns, DEVICE).await.unwrap();
        let s = state.as_ref().unwrap();
        if s.addresses.iter().any(|a| a.to_string().starts_with("fe80::")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = state.unwrap();
    assert!(state.admin_up && state.oper_up);
    assert!(state.addresses.contains(&"192.0.2.10/24".parse().unwrap()), "{state:?}");
    assert!(state.addresses.iter().any(|a| a.to_string().starts_with("fe80::")), "{state:?}");
    assert_eq!(state.ipv6.addr_gen_mode, 0);
    assert_eq!(state.ipv6.disable_ipv6, 0);
    assert_eq!(state.routes.len(), 1, "{state:?}");
    assert_eq!(state.routes[0].via, Some("192.0.2.1".parse().unwrap()));
    assert!(!state.is_silent());
}
