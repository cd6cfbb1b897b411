//! Parsing and validation of the standalone configuration file.

use std::path::Path;

use hagw_core::config::{ConfigError, parse};
use hagw_core::model::{L2BackendSpec, Role, RoleSource, Strategy};

const GOOD: &str = r#"
ovsdb: unix:/tmp/db.sock
routers:
  - id: r1
    namespace: qrouter-r1
    gatewayDevice: qg-r1
    haDevice: ha-r1
    gatewayAddresses: [203.0.113.10/24, "2001:db8::10/64"]
    routes:
      - destination: 0.0.0.0/0
        via: 203.0.113.1
    backend: {ovs: {}}
    strategy: l2-hold
    role: {stateFile: /var/lib/neutron/ha_confs/r1/state}
  - id: r2
    namespace: qrouter-r2
    gatewayDevice: qg-r2
    strategy: link-down
    role: {fixed: standby}
"#;

fn error(text: &str) -> ConfigError {
    parse(Path::new("routers.yaml"), text).expect_err("must be rejected")
}

#[test]
fn parses_a_complete_file() {
    let config = parse(Path::new("routers.yaml"), GOOD).unwrap();
    assert_eq!(config.ovsdb, "unix:/tmp/db.sock");
    assert_eq!(config.routers.len(), 2);
    let r1 = &config.routers[0];
    assert_eq!(r1.backend, L2BackendSpec::Ovs { port: None });
    assert_eq!(r1.gateway_addresses.len(), 2);
    assert_eq!(r1.routes[0].via, Some("203.0.113.1".parse().unwrap()));
    let r2 = &config.routers[1];
    assert_eq!(r2.strategy, Strategy::LinkDown);
    assert_eq!(r2.backend, L2BackendSpec::Generic);
    assert_eq!(r2.role, RoleSource::Fixed(Role::Standby));
    assert_eq!(r2.silence_settle_ms, 3000);
    assert_eq!(r2.announce.repeats, 5);
}

#[test]
fn unknown_field_names_file_line_column_and_field() {
    let text = GOOD.replace("    strategy: link-down", "    strategy: link-down\n    stratgy: x");
    let e = error(&text);
    let shown = e.to_string();
    assert!(shown.starts_with("routers.yaml:19:"), "{shown}");
    assert!(shown.contains("stratgy"), "{shown}");
    assert_eq!(e.field.as_deref(), Some("routers[1].stratgy"), "{shown}");
    assert!(!shown.contains("error: line"), "position said twice: {shown}");
}

#[test]
fn bad_value_names_its_position() {
    let text = GOOD.replace("strategy: link-down", "strategy: link-sideways");
    let e = error(&text);
    assert_eq!(e.position.map(|p| p.0), Some(18), "{e}");
    assert!(e.to_string().contains("link-sideways"), "{e}");
}

#[test]
fn bad_address_is_rejected() {
    let e = error(&GOOD.replace("203.0.113.10/24", "203.0.113.300/24"));
    assert_eq!(e.position.map(|p| p.0), Some(8), "{e}");
}

#[test]
fn semantic_error_points_at_the_field() {
    let text = GOOD.replace("strategy: link-down", "strategy: l2-hold");
    let e = error(&text);
    assert_eq!(e.field.as_deref(), Some("routers[1].strategy"));
    assert_eq!(e.position, Some((18, 15)), "{e}");
    assert!(e.message.contains("generic"), "{e}");
}

#[test]
fn duplicate_ids_and_ports_are_rejected() {
    let dup = GOOD.replace("id: r2", "id: r1");
    assert_eq!(error(&dup).field.as_deref(), Some("routers[1].id"));
    let same_port = GOOD.replace("qrouter-r2", "qrouter-r1").replace("qg-r2", "qg-r1");
    assert_eq!(error(&same_port).field.as_deref(), Some("routers[1].gatewayDevice"));
}

#[test]
fn device_names_longer_than_the_kernel_allows_are_rejected() {
    let e = error(&GOOD.replace("gatewayDevice: qg-r2", "gatewayDevice: qg-0123456789abcdef"));
    assert_eq!(e.field.as_deref(), Some("routers[1].gatewayDevice"));
}

#[test]
fn missing_role_is_an_error() {
    let e = error(&GOOD.replace("    role: {fixed: standby}\n", ""));
    assert!(e.to_string().contains("role"), "{e}");
}

#[test]
fn not_yaml_at_all() {
    let e = error("routers: [\n");
    assert!(e.position.is_some(), "{e}");
}

#[test]
fn keepalived_pid_file_is_read_and_must_be_absolute() {
    let line = "    role: {stateFile: /var/lib/neutron/ha_confs/r1/state}\n";
    let with = |path: &str| GOOD.replace(line, &format!("{line}    keepalivedPidFile: {path}\n"));
    let pid_file = "/var/lib/neutron/ha_confs/r1.pid.keepalived-vrrp";
    let config = parse(Path::new("routers.yaml"), &with(pid_file)).unwrap();
    assert_eq!(config.routers[0].keepalived_pid_file.as_deref(), Some(Path::new(pid_file)));
    assert_eq!(config.routers[1].keepalived_pid_file, None);
    let e = error(&with("r1.pid"));
    assert_eq!(e.field.as_deref(), Some("routers[0].keepalivedPidFile"), "{e}");
    assert!(e.message.contains("absolute"), "{e}");
}
