//! Root-only: route add (replace semantics) and the normalized dump.

mod linux_support;

use hagw_backends::linux::LinuxNet;
use hagw_core::model::RouteSpec;
use linux_support::{DEVICE, Fixture, can_run};

fn route(destination: &str, via: Option<&str>) -> RouteSpec {
    RouteSpec { destination: destination.parse().unwrap(), via: via.map(|v| v.parse().unwrap()) }
}

#[tokio::test]
async fn add_and_dump_normalized_routes() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();
    linux.set_link_up(&netns, DEVICE).await.unwrap();
    linux.add_address(&netns, DEVICE, "192.0.2.10/24".parse().unwrap()).await.unwrap();
    linux.add_address(&netns, DEVICE, "2001:db8::10/64".parse().unwrap()).await.unwrap();

    // Only kernel prefix and link-local routes so far: nothing hagw manages.
    assert_eq!(linux.routes(&netns, DEVICE).await.unwrap(), vec![]);

    let wanted = [
        route("0.0.0.0/0", Some("192.0.2.1")),
        route("::/0", Some("2001:db8::1")),
        // Host bits in the spec are dropped, as the kernel does.
        route("198.51.100.7/24", None),
    ];
    for r in &wanted {
        linux.add_route(&netns, DEVICE, r).await.unwrap();
        // Replace semantics: adding again succeeds.
        linux.add_route(&netns, DEVICE, r).await.unwrap();
    }
    let mut expected = vec![
        route("0.0.0.0/0", Some("192.0.2.1")),
        route("::/0", Some("2001:db8::1")),
        route("198.51.100.0/24", None),
    ];
    expected.sort();
    assert_eq!(linux.routes(&netns, DEVICE).await.unwrap(), expected);
    let shown = fx.router.ip(&["route", "show", "default"]);
    assert!(shown.contains("via 192.0.2.1") && shown.contains("proto static"), "{shown}");

    // A default route via another gateway is replaced, not added beside.
    linux.add_route(&netns, DEVICE, &route("0.0.0.0/0", Some("192.0.2.254"))).await.unwrap();
    let routes = linux.routes(&netns, DEVICE).await.unwrap();
    assert!(routes.contains(&route("0.0.0.0/0", Some("192.0.2.254"))), "{routes:?}");
    assert!(!routes.contains(&route("0.0.0.0/0", Some("192.0.2.1"))), "{routes:?}");
}

#[tokio::test]
async fn routes_added_with_ip_are_seen_but_not_other_devices() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();
    fx.router.ip(&["link", "set", DEVICE, "up"]);
    fx.router.ip(&["addr", "add", "192.0.2.10/24", "dev", DEVICE]);
    fx.router.ip(&["link", "set", "lo", "up"]);
    // `ip route add` uses protocol boot: seen.
    fx.router.ip(&["route", "add", "203.0.113.0/24", "via", "192.0.2.5", "dev", DEVICE]);
    // A route out of another device: not seen.
    fx.router.ip(&["route", "add", "10.9.0.0/16", "dev", "lo"]);
    assert_eq!(
        linux.routes(&netns, DEVICE).await.unwrap(),
        vec![route("203.0.113.0/24", Some("192.0.2.5"))]
    );
}

#[tokio::test]
async fn unreachable_gateway_is_reported() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let linux = LinuxNet::new();
    let netns = fx.netns();
    linux.set_link_up(&netns, DEVICE).await.unwrap();
    // No address in 192.0.2.0/24 yet: the kernel refuses; it may become reachable later.
    let err =
        linux.add_route(&netns, DEVICE, &route("0.0.0.0/0", Some("192.0.2.1"))).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.operation.contains("add route 0.0.0.0/0 via 192.0.2.1"), "{err}");
}
