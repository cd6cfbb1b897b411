//! Discovery of HA routers from a Neutron L3 agent's `ha_confs` directory, against
//! fixtures laid out as the agent writes them (`tests/fixtures/neutron/<case>/ha_confs/…`).

use std::fs;
use std::path::{Path, PathBuf};

use hagw_core::config::validate_router;
use hagw_core::model::{
    AnnounceSchedule, L2BackendSpec, Role, RoleSource, RouteSpec, RouterSpec, Strategy,
};
use hagw_core::neutron::{
    BackendDefault, BridgeLookup, Discovery, DiscoveryError, NamespacePolicy, NeutronDefaults,
    NeutronRouter, discover,
};
use ipnet::IpNet;

const IPV4: &str = "0c2d6f0a-3b1e-4d55-9a7e-6f1b2c3d4e5f";
const DUAL_STACK: &str = "7f3e9a1c-2b4d-4e6f-8a0b-1c2d3e4f5a6b";
const OLDER: &str = "2e4f6a8c-0b1d-4f3a-9c5e-7a9b1c3d5e7f";
const COMMENTS: &str = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d";
const GOOD: &str = "1b1b1b1b-0000-4000-8000-000000000005";
const BROKEN: &str = "1b1b1b1b-0000-4000-8000-000000000006";
const NO_GATEWAY: &str = "1b1b1b1b-0000-4000-8000-000000000007";
const DVR: &str = "8d8d8d8d-1111-4222-8333-444444444448";

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/neutron").join(case)
}

fn conf_path(state_path: &Path, id: &str) -> PathBuf {
    state_path.join("ha_confs").join(id).join("keepalived.conf")
}

/// A fresh, empty directory for tests that need to change a fixture.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("neutron").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Discovery that must have succeeded for every router; each spec must also pass the
/// validation a hand-written spec gets.
fn discover_all(state_path: &Path, defaults: &NeutronDefaults) -> Vec<NeutronRouter> {
    let Discovery { routers, errors } = discover(state_path, defaults);
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    for router in &routers {
        validate_router(&router.spec).unwrap();
    }
    routers
}

fn only_router(case: &str) -> NeutronRouter {
    let mut routers = discover_all(&fixture(case), &NeutronDefaults::default());
    assert_eq!(routers.len(), 1, "{routers:#?}");
    routers.remove(0)
}

fn role_of(spec: &RouterSpec) -> Option<Role> {
    let RoleSource::StateFile(path) = &spec.role else { panic!("role: {:?}", spec.role) };
    Role::from_state_word(&fs::read_to_string(path).unwrap())
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| net(s)).collect()
}

fn route(destination: &str, via: &str) -> RouteSpec {
    RouteSpec { destination: net(destination), via: Some(via.parse().unwrap()) }
}

#[test]
fn ipv4_router_with_floating_ips_and_default_route() {
    let state_path = fixture("ipv4");
    let router = only_router("ipv4");
    let dir = state_path.join("ha_confs").join(IPV4);
    assert_eq!(router.vrid, 1);
    assert_eq!(router.conf, conf_path(&state_path, IPV4));
    assert_eq!(
        router.spec,
        RouterSpec {
            id: IPV4.into(),
            namespace: format!("qrouter-{IPV4}"),
            gateway_device: "qg-5b2f0c1e-7a".into(),
            ha_device: Some("ha-8e3f1a2b-4c".into()),
            primary_vip: Some(net("169.254.0.1/24")),
            // Neutron's pid file of the keepalived VRRP process, next to the router's dir.
            keepalived_pid_file: Some(
                state_path.join("ha_confs").join(format!("{IPV4}.pid.keepalived-vrrp"))
            ),
            // The qr- address of the same instance is not the gateway's.
            gateway_addresses: nets(&["198.51.100.10/24", "198.51.100.23/32", "198.51.100.24/32"]),
            routes: vec![route("0.0.0.0/0", "198.51.100.1")],
            backend: L2BackendSpec::Ovs { port: None },
            strategy: Strategy::L2Hold,
            announce: AnnounceSchedule::default(),
            role: RoleSource::StateFile(dir.join("state")),
            silence_settle_ms: hagw_core::model::DEFAULT_SILENCE_SETTLE_MS,
        }
    );
    assert!(!router.spec.serves_ipv6());
    assert_eq!(role_of(&router.spec), Some(Role::Standby));
}

#[test]
fn dual_stack_router_with_link_local_vip_and_extra_routes() {
    let router = only_router("dual_stack");
    let spec = &router.spec;
    assert_eq!(spec.id, DUAL_STACK);
    assert_eq!((router.vrid, spec.gateway_device.as_str()), (2, "qg-9c8b7a6d-5e"));
    assert_eq!(spec.primary_vip, Some(net("169.254.0.2/24")));
    assert_eq!(
        spec.gateway_addresses,
        nets(&["203.0.113.10/24", "2001:db8:ffff::10/64", "fe80::f816:3eff:fe11:2233/64"])
    );
    // Extra routes carry no `dev`: they count when their next hop is on a gateway subnet
    // only — not via an internal subnet (172.16.9.0/24 via 10.1.0.254), and not via a
    // link-local hop every device's fe80::/64 contains (2001:db8:70::/48 via fe80::1).
    assert_eq!(
        spec.routes,
        vec![
            route("0.0.0.0/0", "203.0.113.1"),
            route("::/0", "2001:db8:ffff::1"),
            route("10.50.0.0/24", "203.0.113.254"),
            route("2001:db8:50::/48", "2001:db8:ffff::fe"),
        ]
    );
    assert!(spec.serves_ipv6());
    assert_eq!(role_of(spec), Some(Role::Primary));
}

#[test]
fn older_release_conf_without_no_track_and_master_state() {
    let router = only_router("older_release");
    let spec = &router.spec;
    assert_eq!(spec.id, OLDER);
    assert_eq!(spec.ha_device.as_deref(), Some("ha-c0ffee12-34"));
    assert_eq!(spec.gateway_device, "qg-deadbeef-01");
    assert_eq!(
        spec.gateway_addresses,
        nets(&["192.0.2.50/24", "192.0.2.77/32", "fe80::f816:3eff:fe9a:bcde/64"])
    );
    assert_eq!(spec.routes, vec![route("0.0.0.0/0", "192.0.2.1")]);
    // Releases before 17.0.0 write `master`, not `primary`.
    assert_eq!(
        fs::read_to_string(fixture("older_release/ha_confs").join(OLDER).join("state")).unwrap(),
        "master"
    );
    assert_eq!(role_of(spec), Some(Role::Primary));
}

#[test]
fn comments_and_odd_whitespace() {
    let router = only_router("comments");
    let spec = &router.spec;
    assert_eq!((spec.id.as_str(), router.vrid), (COMMENTS, 4));
    assert_eq!(spec.ha_device.as_deref(), Some("ha-0a1b2c3d-4e"));
    assert_eq!(spec.primary_vip, Some(net("169.254.0.4/24")));
    assert_eq!(spec.gateway_device, "qg-11223344-55");
    assert_eq!(spec.gateway_addresses, nets(&["198.18.0.20/24", "198.18.0.21/32"]));
    assert_eq!(spec.routes, vec![route("0.0.0.0/0", "198.18.0.1")]);
}

#[test]
fn broken_conf_does_not_hide_the_good_router() {
    let state_path = fixture("mixed");
    let discovery = discover(&state_path, &NeutronDefaults::default());
    let ids: Vec<_> = discovery.routers.iter().map(|r| r.spec.id.as_str()).collect();
    assert_eq!(ids, [GOOD]);
    validate_router(&discovery.routers[0].spec).unwrap();

    let broken = discovery.errors.iter().find(|e| e.router_id() == Some(BROKEN)).unwrap();
    let DiscoveryError::Conf { file, line, message, .. } = broken else { panic!("{broken:?}") };
    assert_eq!(file, &conf_path(&state_path, BROKEN));
    // The `virtual_ipaddress_excluded` block of line 19 lacks its `}`.
    assert_eq!(*line, Some(19));
    assert!(message.contains("`virtual_ipaddress_excluded` block"), "{message}");
    let shown = broken.to_string();
    assert!(shown.starts_with(&format!("{}:19: expected `}}`", file.display())), "{shown}");
}

#[test]
fn missing_keepalived_conf_is_not_ready() {
    let state_path = scratch("not_ready");
    copy_tree(&fixture("mixed"), &state_path);
    let pending = "1b1b1b1b-0000-4000-8000-0000000000ff";
    fs::create_dir(state_path.join("ha_confs").join(pending)).unwrap();

    let discovery = discover(&state_path, &NeutronDefaults::default());
    assert_eq!(discovery.routers.len(), 1, "the good router is still discovered");
    let error = discovery.errors.iter().find(|e| e.router_id() == Some(pending)).unwrap();
    let DiscoveryError::NotReady { conf, .. } = error else { panic!("{error:?}") };
    assert_eq!(conf, &conf_path(&state_path, pending));
    assert!(error.to_string().contains("not ready"), "{error}");
}

#[test]
fn router_without_gateway_is_skipped_with_reason() {
    let state_path = fixture("mixed");
    let discovery = discover(&state_path, &NeutronDefaults::default());
    assert_eq!(discovery.errors.len(), 2, "{:#?}", discovery.errors);
    let error = discovery.errors.iter().find(|e| e.router_id() == Some(NO_GATEWAY)).unwrap();
    let DiscoveryError::NoGateway { file, .. } = error else { panic!("{error:?}") };
    assert_eq!(file, &conf_path(&state_path, NO_GATEWAY));
    assert!(error.to_string().contains("without external gateway"), "{error}");
}

#[test]
fn dvr_router_lives_in_the_snat_namespace() {
    let router = only_router("dvr");
    assert_eq!(router.spec.namespace, format!("snat-{DVR}"));
    // The sg- (SNAT-side internal) address is not the gateway's.
    assert_eq!(router.spec.gateway_addresses, nets(&["100.64.8.33/32", "100.64.8.10/24"]));

    let forced = |namespace, case| {
        let defaults = NeutronDefaults { namespace, ..NeutronDefaults::default() };
        discover_all(&fixture(case), &defaults).remove(0).spec.namespace
    };
    assert_eq!(forced(NamespacePolicy::Qrouter, "dvr"), format!("qrouter-{DVR}"));
    assert_eq!(forced(NamespacePolicy::Snat, "ipv4"), format!("snat-{IPV4}"));
    assert_eq!(forced(NamespacePolicy::Detect, "ipv4"), format!("qrouter-{IPV4}"));
}

#[test]
fn linuxbridge_port_is_the_tap_end_and_bridge_comes_from_defaults() {
    let linuxbridge = |lookup| NeutronDefaults {
        backend: BackendDefault::Linuxbridge(lookup),
        ..NeutronDefaults::default()
    };
    let fixed = discover_all(&fixture("ipv4"), &linuxbridge(BridgeLookup::Fixed("brq-ext".into())));
    assert_eq!(
        fixed[0].spec.backend,
        L2BackendSpec::Linuxbridge { port: "tap5b2f0c1e-7a".into(), bridge: "brq-ext".into() }
    );

    // /sys/class/net/<tap>/master links to the bridge the agent plugged the tap into.
    let sysfs = scratch("sysfs");
    fs::create_dir(sysfs.join("tap5b2f0c1e-7a")).unwrap();
    std::os::unix::fs::symlink("../brq4d5e6f70-81", sysfs.join("tap5b2f0c1e-7a/master")).unwrap();
    let found = discover_all(&fixture("ipv4"), &linuxbridge(BridgeLookup::Sysfs(sysfs.clone())));
    assert_eq!(
        found[0].spec.backend,
        L2BackendSpec::Linuxbridge {
            port: "tap5b2f0c1e-7a".into(),
            bridge: "brq4d5e6f70-81".into()
        }
    );

    // Not plugged yet: a clear per-router error naming the tap and the path looked at.
    let unplugged = discover(&fixture("dual_stack"), &linuxbridge(BridgeLookup::Sysfs(sysfs)));
    assert!(unplugged.routers.is_empty());
    let [error] = unplugged.errors.as_slice() else { panic!("{:?}", unplugged.errors) };
    assert!(matches!(error, DiscoveryError::Backend { .. }), "{error:?}");
    let shown = error.to_string();
    assert!(shown.contains("cannot find the bridge of `tap9c8b7a6d-5e`"), "{shown}");
    assert!(shown.contains("tap9c8b7a6d-5e/master"), "{shown}");
}

#[test]
fn defaults_flow_into_every_spec_and_are_validated() {
    let defaults = NeutronDefaults {
        backend: BackendDefault::Generic,
        strategy: Strategy::LinkDown,
        announce: AnnounceSchedule { repeats: 2, interval_ms: 250 },
        silence_settle_ms: 1234,
        namespace: NamespacePolicy::Detect,
    };
    let router = discover_all(&fixture("ipv4"), &defaults).remove(0);
    assert_eq!(router.spec.backend, L2BackendSpec::Generic);
    assert_eq!(router.spec.strategy, Strategy::LinkDown);
    assert_eq!(router.spec.announce, defaults.announce);
    assert_eq!(router.spec.silence_settle_ms, 1234);

    // A generic backend cannot hold at L2: every router reports why instead of a bad spec.
    let invalid = NeutronDefaults { strategy: Strategy::L2Hold, ..defaults };
    let discovery = discover(&fixture("ipv4"), &invalid);
    assert!(discovery.routers.is_empty());
    let [error] = discovery.errors.as_slice() else { panic!("{:?}", discovery.errors) };
    let shown = error.to_string();
    assert!(shown.contains("`strategy`") && shown.contains("l2-hold"), "{shown}");
}

#[test]
fn missing_ha_confs_directory_is_reported() {
    let state_path = scratch("empty_state_path");
    let discovery = discover(&state_path, &NeutronDefaults::default());
    assert!(discovery.routers.is_empty());
    let [error] = discovery.errors.as_slice() else { panic!("{:?}", discovery.errors) };
    assert!(matches!(error, DiscoveryError::Io { .. }), "{error:?}");
    assert_eq!(error.router_id(), None);
    assert!(error.to_string().contains("ha_confs"), "{error}");
}
