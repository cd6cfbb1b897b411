//! Root-only: per-device IPv6 sysctls read and written inside the namespace.

mod linux_support;

use hagw_backends::linux::LinuxNet;
use hagw_core::observed::Ipv6Sysctl;
use linux_support::{DEVICE, Fixture, can_run};

#[tokio::test]
async fn read_and_write_only_if_different() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();

    let conf = linux.ipv6_conf(&netns, DEVICE).await.unwrap();
    assert_eq!(conf.addr_gen_mode, 0);
    assert_eq!(conf.disable_ipv6, 0);
    assert_eq!(conf.forwarding, 0);
    assert_eq!(
        conf.accept_ra,
        linux.read_ipv6_sysctl(&netns, DEVICE, Ipv6Sysctl::AcceptRa).await.unwrap()
    );

    assert!(linux.write_ipv6_sysctl(&netns, DEVICE, Ipv6Sysctl::AddrGenMode, 1).await.unwrap());
    assert!(!linux.write_ipv6_sysctl(&netns, DEVICE, Ipv6Sysctl::AddrGenMode, 1).await.unwrap());
    assert_eq!(linux.read_ipv6_sysctl(&netns, DEVICE, Ipv6Sysctl::AddrGenMode).await.unwrap(), 1);

    assert!(linux.write_ipv6_sysctl(&netns, DEVICE, Ipv6Sysctl::Forwarding, 1).await.unwrap());
    assert!(
        linux.write_ipv6_sysctl(&netns, DEVICE, Ipv6Sysctl::AcceptRa, 0).await.unwrap()
            || conf.accept_ra == 0
    );
    let conf = linux.ipv6_conf(&netns, DEVICE).await.unwrap();
    assert_eq!((conf.addr_gen_mode, conf.forwarding, conf.accept_ra), (1, 1, 0));

    // The write happened in the router namespace, not the test's own.
    let inside = fx.router.ip(&["netconf", "show", "dev", DEVICE]);
    assert!(inside.contains("forwarding on"), "{inside}");
    assert!(
        !std::path::Path::new(&format!("/proc/sys/net/ipv6/conf/{DEVICE}")).exists(),
        "device must not exist in the test's namespace"
    );
}

#[tokio::test]
async fn missing_device_is_transient_and_bad_name_permanent() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();
    let err = linux.ipv6_conf(&netns, "qg-absent").await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("no such device"), "{err}");
    let err =
        linux.write_ipv6_sysctl(&netns, "../all", Ipv6Sysctl::Forwarding, 1).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
}

/// The observer reads the sysctls from the link message's AF_INET6 devconf; it must agree
/// with `/proc/sys` for every value hagw manages.
#[tokio::test]
async fn link_devconf_matches_proc_sys() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();
    for (sysctl, value) in [
        (Ipv6Sysctl::AddrGenMode, 1),
        (Ipv6Sysctl::AcceptRa, 2),
        (Ipv6Sysctl::Forwarding, 1),
        (Ipv6Sysctl::DisableIpv6, 1),
    ] {
        linux.write_ipv6_sysctl(&netns, DEVICE, sysctl, value).await.unwrap();
        let from_proc = linux.ipv6_conf(&netns, DEVICE).await.unwrap();
        let from_link = linux.link(&netns, DEVICE).await.unwrap().unwrap().ipv6.unwrap();
        assert_eq!(from_link, from_proc, "after {} = {value}", sysctl.key());
        let observed = linux.observe_link(&netns, DEVICE).await.unwrap().unwrap();
        assert_eq!(observed.ipv6, from_proc);
    }
}

/// A written sysctl's file is kept open (backends/src/linux/sysctl_files.rs); a device
/// deleted and created again under the same name gets its writes all the same.
#[tokio::test]
async fn a_kept_file_follows_a_recreated_device() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();
    assert!(linux.write_ipv6_sysctl(&netns, DEVICE, Ipv6Sysctl::Forwarding, 1).await.unwrap());
    assert_eq!(linux.forwards_ipv6(&netns, DEVICE).await, Some(true));
    fx.router.ip(&["link", "del", DEVICE]);
    fx.router.ip(&["link", "add", DEVICE, "type", "veth", "peer", "name", "other"]);
    assert!(linux.write_ipv6_sysctl(&netns, DEVICE, Ipv6Sysctl::Forwarding, 1).await.unwrap());
    let inside = fx.router.ip(&["netconf", "show", "dev", DEVICE]);
    assert!(inside.contains("forwarding on"), "{inside}");
    assert_eq!(linux.forwards_ipv6(&netns, DEVICE).await, Some(true));
    // And the same for a read first.
    fx.router.ip(&["link", "del", DEVICE]);
    fx.router.ip(&["link", "add", DEVICE, "type", "veth", "peer", "name", "other"]);
    assert_eq!(linux.forwards_ipv6(&netns, DEVICE).await, Some(false));
}

/// The kept files do not keep a deleted namespace alive: its veth peer goes with it.
#[tokio::test]
async fn a_kept_file_does_not_keep_a_deleted_namespace() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();
    assert!(linux.write_ipv6_sysctl(&netns, DEVICE, Ipv6Sysctl::Forwarding, 1).await.unwrap());
    assert_eq!(linux.forwards_ipv6(&netns, DEVICE).await, Some(true));
    linux_support::ip(&["netns", "del", &fx.router.name]);
    // The kernel destroys a namespace on a work queue once nothing holds it; bounded here
    // only so that a held one fails the test instead of hanging it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while fx.peer.ip(&["-o", "link", "show"]).contains(linux_support::PEER_DEVICE) {
        assert!(std::time::Instant::now() < deadline, "the deleted namespace is still alive");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(linux.forwards_ipv6(&netns, DEVICE).await, None);
}
