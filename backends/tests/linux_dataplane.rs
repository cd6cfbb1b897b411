//! Root-only: full reconcile passes through [`HostDataplane`] with the generic backend and
//! the link-down strategy, standby then primary, against the real kernel.

mod linux_support;

use std::time::Duration;

use hagw_backends::dataplane::HostDataplane;
use hagw_backends::linux::LinuxNet;
use hagw_core::model::{
    AnnounceSchedule, L2BackendSpec, Role, RoleSource, RouteSpec, RouterSpec, Strategy,
};
use hagw_core::observed::HoldState;
use hagw_core::reconcile::{Dataplane, RetryPolicy, RouterMemory, reconcile_router};
use linux_support::{DEVICE, Fixture, can_run};

fn spec(fx: &Fixture) -> RouterSpec {
    RouterSpec {
        id: "r1".into(),
        namespace: fx.router.name.clone(),
        gateway_device: DEVICE.into(),
        ha_device: None,
        primary_vip: None,
        keepalived_pid_file: None,
        gateway_addresses: vec![
            "192.0.2.10/24".parse().unwrap(),
            "2001:db8::10/64".parse().unwrap(),
            "fe80::1/64".parse().unwrap(),
        ],
        routes: vec![
            RouteSpec {
                destination: "0.0.0.0/0".parse().unwrap(),
                via: Some("192.0.2.1".parse().unwrap()),
            },
            RouteSpec {
                destination: "::/0".parse().unwrap(),
                via: Some("2001:db8::1".parse().unwrap()),
            },
        ],
        backend: L2BackendSpec::Generic,
        strategy: Strategy::LinkDown,
        announce: AnnounceSchedule::default(),
        role: RoleSource::Fixed(Role::Standby),
        silence_settle_ms: 200,
    }
}

#[tokio::test]
async fn standby_then_primary_with_link_down_strategy() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let spec = spec(&fx);
    let dataplane = HostDataplane::new(LinuxNet::new(), Default::default());
    let policy = RetryPolicy::default();
    let mut memory = RouterMemory::default();

    // What a standby looks like after the L3 agent plugged the port: up, with a gateway
    // address and the kernel's own link-local address.
    fx.router.ip(&["addr", "add", "192.0.2.10/24", "dev", DEVICE]);
    fx.router.ip(&["link", "set", DEVICE, "up"]);
    let port = dataplane.observe(&spec).await.unwrap();
    assert!(port.is_exposed() && !port.is_silent());
    assert_eq!(port.l2.hold, HoldState::Released);

    let report = reconcile_router(&dataplane, &spec, Role::Standby, &mut memory, &policy, None)
        .await
        .expect("standby pass converges");
    // Exposure is closed before anything makes the kernel talk: held in the router
    // namespace, then the link down.
    assert_eq!(
        report.applied[..2],
        [hagw_core::Action::HoldL2, hagw_core::Action::SetLinkDown],
        "{:?}",
        report.applied
    );
    let port = dataplane.observe(&spec).await.unwrap();
    assert_eq!(port.l2.hold, HoldState::Held, "link-down layers the namespace hold");
    let link = port.link.as_ref().unwrap();
    assert!(!link.admin_up, "link-down strategy keeps the standby down");
    assert!(link.addresses.is_empty(), "{link:?}");
    assert!(port.is_silent() && !port.is_exposed());
    let shown = fx.router.ip(&["-o", "link", "show", DEVICE]);
    assert!(!shown.contains(",UP"), "{shown}");

    // Nothing leaves the standby's port.
    let before = link.counters.tx_packets;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = dataplane.observe(&spec).await.unwrap().link.unwrap().counters.tx_packets;
    assert_eq!(before, after);

    // A second pass has nothing to do.
    let again = reconcile_router(&dataplane, &spec, Role::Standby, &mut memory, &policy, None)
        .await
        .unwrap();
    assert!(again.applied.is_empty(), "{:?}", again.applied);

    // Takeover.
    let report = reconcile_router(&dataplane, &spec, Role::Primary, &mut memory, &policy, None)
        .await
        .expect("primary pass converges");
    assert!(report.applied.iter().any(|a| a.kind() == "announce"), "{:?}", report.applied);
    assert!(report.applied.contains(&hagw_core::Action::ReleaseL2), "{:?}", report.applied);
    assert_eq!(dataplane.observe(&spec).await.unwrap().l2.hold, HoldState::Released);
    let link = dataplane.observe(&spec).await.unwrap().link.unwrap();
    assert!(link.admin_up && link.oper_up);
    for address in &spec.gateway_addresses {
        assert!(link.addresses.contains(address), "{address} missing from {link:?}");
    }
    for route in &spec.routes {
        assert!(link.routes.contains(route), "{route:?} missing from {link:?}");
    }
    assert_eq!(link.ipv6.forwarding, 1, "the primary serves IPv6");
    let shown = fx.router.ip(&["route", "show", "default"]);
    assert!(shown.contains("via 192.0.2.1"), "{shown}");
}

#[tokio::test]
async fn missing_device_is_observed_as_absent() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let mut spec = spec(&fx);
    spec.gateway_device = "qg-absent".into();
    let dataplane = HostDataplane::default();
    let port = dataplane.observe(&spec).await.unwrap();
    assert_eq!(port.link, None);
    let report = reconcile_router(
        &dataplane,
        &spec,
        Role::Standby,
        &mut RouterMemory::default(),
        &RetryPolicy::default(),
        None,
    )
    .await
    .unwrap();
    // Nothing to silence yet, but the name is held before the device exists.
    assert_eq!(report.applied, [hagw_core::Action::HoldL2]);
}
