//! Builders shared by the core tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use hagw_core::model::{AnnounceSchedule, L2BackendSpec, Role, RoleSource, RouterSpec, Strategy};
use hagw_core::observed::{
    HoldState, Ipv6Conf, L2State, LinkCounters, LinkState, Observed, PortState,
};

pub fn spec(strategy: Strategy, backend: L2BackendSpec) -> RouterSpec {
    RouterSpec {
        id: "r1".into(),
        namespace: "qrouter-r1".into(),
        gateway_device: "qg-r1".into(),
        ha_device: Some("ha-r1".into()),
        primary_vip: None,
        keepalived_pid_file: None,
        gateway_addresses: vec![
            "203.0.113.10/24".parse().unwrap(),
            "2001:db8::10/64".parse().unwrap(),
            "fe80::f816:3eff:fe00:1/64".parse().unwrap(),
        ],
        routes: vec![hagw_core::model::RouteSpec {
            destination: "0.0.0.0/0".parse().unwrap(),
            via: Some("203.0.113.1".parse().unwrap()),
        }],
        backend,
        strategy,
        announce: AnnounceSchedule::default(),
        role: RoleSource::Fixed(Role::Standby),
        silence_settle_ms: 3000,
    }
}

pub fn generic() -> L2BackendSpec {
    L2BackendSpec::Generic
}

pub fn ovs() -> L2BackendSpec {
    L2BackendSpec::Ovs { port: None }
}

/// A freshly plugged port as the L3 agent leaves it on a node that boots: link up, kernel
/// link-local address, default sysctls, switch side wired and not held.
pub fn noisy_port(hold: HoldState) -> PortState {
    PortState {
        link: Some(LinkState {
            admin_up: true,
            oper_up: true,
            addresses: vec!["fe80::f816:3eff:fe00:1/64".parse().unwrap()],
            ipv6: Ipv6Conf { addr_gen_mode: 0, accept_ra: 1, forwarding: 1, disable_ipv6: 0 },
            routes: vec![],
            counters: LinkCounters::default(),
        }),
        l2: L2State { hold, wired: true },
    }
}

/// A standby at rest under l2-hold: held, up, silent.
pub fn quiet_held_port() -> PortState {
    PortState {
        link: Some(LinkState {
            admin_up: true,
            oper_up: true,
            addresses: vec![],
            ipv6: Ipv6Conf { addr_gen_mode: 1, accept_ra: 0, forwarding: 0, disable_ipv6: 0 },
            routes: vec![],
            counters: LinkCounters::default(),
        }),
        l2: L2State { hold: HoldState::Held, wired: true },
    }
}

pub fn observed(port: PortState, silent_for_ms: u64, announce_pending: bool) -> Observed {
    Observed {
        port,
        silent_for: Duration::from_millis(silent_for_ms),
        announce_pending,
        failed_steps: Vec::new(),
        retired_addresses: Vec::new(),
        hold_only: false,
        hand_back: false,
    }
}
