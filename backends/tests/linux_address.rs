//! Root-only: address dump, add and delete against the real kernel.

mod linux_support;

use hagw_backends::linux::LinuxNet;
use ipnet::IpNet;
use linux_support::{DEVICE, Fixture, can_run};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[tokio::test]
async fn add_dump_delete_ipv4_ipv6_and_link_local() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();
    // No link-local generation, so the only addresses are the ones added here.
    fx.router.exec(&["sysctl", "-qw", &format!("net.ipv6.conf.{DEVICE}.addr_gen_mode=1")]);
    fx.router.ip(&["link", "set", DEVICE, "up"]);

    let wanted = [net("192.0.2.10/24"), net("2001:db8::10/64"), net("fe80::1/64")];
    for a in wanted {
        linux.add_address(&netns, DEVICE, a).await.unwrap();
        // Adding again is success, not EEXIST.
        linux.add_address(&netns, DEVICE, a).await.unwrap();
    }
    let mut have = linux.addresses(&netns, DEVICE).await.unwrap();
    have.sort();
    let mut expected = wanted.to_vec();
    expected.sort();
    assert_eq!(have, expected);

    // What `ip` sees agrees, and IPv6 was added without DAD (not tentative).
    let shown = fx.ip_addresses();
    for a in wanted {
        assert!(shown.contains(&a.to_string()), "{shown} should contain {a}");
    }
    assert!(!shown.contains("tentative"), "{shown}");

    for a in wanted {
        linux.delete_address(&netns, DEVICE, a).await.unwrap();
    }
    assert_eq!(linux.addresses(&netns, DEVICE).await.unwrap(), Vec::<IpNet>::new());
}

#[tokio::test]
async fn delete_absent_address_is_ok() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();
    for a in ["192.0.2.99/24", "2001:db8::99/64", "fe80::99/64"] {
        linux.delete_address(&netns, DEVICE, net(a)).await.unwrap();
    }
    // Also when a different prefix of the same address is present.
    linux.add_address(&netns, DEVICE, net("192.0.2.10/24")).await.unwrap();
    linux.delete_address(&netns, DEVICE, net("192.0.2.11/24")).await.unwrap();
    assert_eq!(linux.addresses(&netns, DEVICE).await.unwrap(), vec![net("192.0.2.10/24")]);
}

#[tokio::test]
async fn kernel_link_local_is_dumped_and_deletable() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();
    linux.set_link_up(&netns, DEVICE).await.unwrap();
    let mut link_local = None;
    for _ in 0..50 {
        link_local = linux
            .addresses(&netns, DEVICE)
            .await
            .unwrap()
            .into_iter()
            .find(|a| a.to_string().starts_with("fe80::"));
        if link_local.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let link_local = link_local.expect("kernel generated a link-local address");
    assert_eq!(link_local.prefix_len(), 64);
    linux.delete_address(&netns, DEVICE, link_local).await.unwrap();
    assert!(!linux.addresses(&netns, DEVICE).await.unwrap().contains(&link_local));
}

#[tokio::test]
async fn address_ops_on_missing_device_are_transient() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let err = linux.add_address(&fx.netns(), "qg-absent", net("192.0.2.1/24")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
}
