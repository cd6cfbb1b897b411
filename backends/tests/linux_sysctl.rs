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
