//! Concrete scenarios for the planner: the orders that matter.

mod common;

use common::*;
use hagw_core::action::Action;
use hagw_core::model::{L2BackendSpec, Role, Strategy};
use hagw_core::observed::{HoldState, Ipv6Sysctl};
use hagw_core::planner::{HoldOnArrival, Wait, plan};

fn kinds(actions: &[Action]) -> Vec<&'static str> {
    actions.iter().map(Action::kind).collect()
}

#[test]
fn standby_boot_race_holds_before_touching_anything() {
    let spec = spec(Strategy::L2Hold, ovs());
    let p = plan(&spec, Role::Standby, &observed(noisy_port(HoldState::Released), 0, false));
    assert_eq!(
        kinds(&p.actions),
        ["hold-l2", "set-sysctl", "set-sysctl", "set-sysctl", "delete-address"]
    );
    assert_eq!(
        p.actions[1],
        Action::SetSysctl { sysctl: Ipv6Sysctl::AddrGenMode, value: 1 },
        "address generation must be off before anything else"
    );
    assert_eq!(p.wait, None);
}

#[test]
fn unknown_role_is_handled_as_standby() {
    let spec = spec(Strategy::L2Hold, ovs());
    let obs = observed(noisy_port(HoldState::Released), 0, false);
    assert_eq!(plan(&spec, Role::Unknown, &obs), plan(&spec, Role::Standby, &obs));
}

#[test]
fn link_down_strategy_without_nf_tables_takes_the_link_down_first() {
    let spec = spec(Strategy::LinkDown, L2BackendSpec::Generic);
    let p = plan(&spec, Role::Standby, &observed(noisy_port(HoldState::Unsupported), 0, false));
    assert_eq!(p.actions[0], Action::SetLinkDown);
    assert!(!p.actions.contains(&Action::SetLinkUp));
}

#[test]
fn silence_only_on_generic_without_nf_tables_guards_with_link_down_then_waits_to_settle() {
    let spec = spec(Strategy::SilenceOnly, L2BackendSpec::Generic);
    let p = plan(&spec, Role::Standby, &observed(noisy_port(HoldState::Unsupported), 0, false));
    assert_eq!(p.actions[0], Action::SetLinkDown);
    assert!(matches!(p.wait, Some(Wait::SilenceSettling { .. })));

    // Silent and down, but not long enough: nothing to do yet.
    let mut port = noisy_port(HoldState::Unsupported);
    for a in &p.actions {
        a.apply_to(&mut port);
    }
    let early = plan(&spec, Role::Standby, &observed(port.clone(), 1000, false));
    assert!(early.actions.is_empty());
    assert_eq!(
        early.wait,
        Some(Wait::SilenceSettling { remaining: std::time::Duration::from_secs(2) })
    );

    // Settled: the link comes back up, silent.
    let late = plan(&spec, Role::Standby, &observed(port, 3000, false));
    assert_eq!(late.actions, [Action::SetLinkUp]);
}

/// The generic backend holds by device name in the router namespace: a link-down standby is
/// held before its device exists, so the L3 agent raising a new device (and the MLDv2 report
/// the kernel sends at that link up) meets the hold, not a race with hagw's link-down.
#[test]
fn generic_link_down_standby_is_held_before_its_device_exists() {
    let spec = spec(Strategy::LinkDown, generic());
    let mut port = noisy_port(HoldState::Released);
    port.link = None;
    let p = plan(&spec, Role::Standby, &observed(port, 0, false));
    assert_eq!(p.actions, [Action::HoldL2]);
    assert_eq!(p.wait, Some(Wait::DeviceMissing));

    let p = plan(&spec, Role::Standby, &observed(noisy_port(HoldState::Released), 0, false));
    assert_eq!(
        kinds(&p.actions),
        ["hold-l2", "link-down", "set-sysctl", "set-sysctl", "set-sysctl", "delete-address"]
    );
}

/// A generic primary's hold is released in the takeover pass itself (nothing to wire), after
/// the port is configured and before the announcement.
#[test]
fn generic_primary_releases_the_namespace_hold_before_announcing() {
    let spec = spec(Strategy::LinkDown, generic());
    let mut port = quiet_held_port();
    port.link.as_mut().unwrap().admin_up = false;
    let p = plan(&spec, Role::Primary, &observed(port, 0, true));
    let kinds = kinds(&p.actions);
    let release = kinds.iter().position(|k| *k == "release-l2").expect("released");
    assert_eq!(kinds.last(), Some(&"announce"), "{kinds:?}");
    assert!(kinds[..release].contains(&"link-up") && kinds[..release].contains(&"add-address"));
    assert_eq!(p.wait, None);
}

#[test]
fn silence_only_releases_a_hold_only_after_settling() {
    let spec = spec(Strategy::SilenceOnly, ovs());
    let early = plan(&spec, Role::Standby, &observed(quiet_held_port(), 2999, false));
    assert!(early.actions.is_empty());
    assert!(matches!(early.wait, Some(Wait::SilenceSettling { .. })));
    let late = plan(&spec, Role::Standby, &observed(quiet_held_port(), 3000, false));
    assert_eq!(late.actions, [Action::ReleaseL2]);
}

#[test]
fn quiet_held_standby_is_converged() {
    let spec = spec(Strategy::L2Hold, ovs());
    let p = plan(&spec, Role::Standby, &observed(quiet_held_port(), 0, false));
    assert!(p.is_converged() && p.wait.is_none(), "{p:?}");
}

#[test]
fn takeover_configures_then_releases_then_announces() {
    let spec = spec(Strategy::L2Hold, ovs());
    let p = plan(&spec, Role::Primary, &observed(quiet_held_port(), 60_000, true));
    assert_eq!(
        kinds(&p.actions),
        [
            "set-sysctl",
            "add-address",
            "add-address",
            "add-address",
            "add-route",
            "release-l2",
            "announce"
        ]
    );
    assert_eq!(p.actions[0], Action::SetSysctl { sysctl: Ipv6Sysctl::Forwarding, value: 1 });
    let Action::Announce { addresses } = p.actions.last().unwrap() else { unreachable!() };
    assert_eq!(addresses.len(), 3);
}

#[test]
fn takeover_with_link_down_raises_link_before_routes() {
    let spec = spec(Strategy::LinkDown, L2BackendSpec::Generic);
    let mut port = quiet_held_port();
    port.l2.hold = HoldState::Unsupported;
    port.link.as_mut().unwrap().admin_up = false;
    let p = plan(&spec, Role::Primary, &observed(port, 0, true));
    let up = p.actions.iter().position(|a| *a == Action::SetLinkUp).unwrap();
    let route = p.actions.iter().position(|a| a.kind() == "add-route").unwrap();
    assert!(up < route);
    assert_eq!(p.actions.last().unwrap().kind(), "announce");
}

#[test]
fn primary_keeps_the_hold_until_the_l2_agent_wired_the_port() {
    let spec = spec(Strategy::L2Hold, ovs());
    let mut port = quiet_held_port();
    port.l2.wired = false;
    let p = plan(&spec, Role::Primary, &observed(port, 0, true));
    assert!(!p.actions.contains(&Action::ReleaseL2));
    assert!(!p.actions.iter().any(|a| a.kind() == "announce"), "announce only once exposed");
    assert_eq!(p.wait, Some(Wait::L2NotWired));
}

#[test]
fn primary_does_not_remove_addresses_it_does_not_know() {
    let spec = spec(Strategy::L2Hold, ovs());
    let mut port = noisy_port(HoldState::Released);
    port.link.as_mut().unwrap().addresses.push("198.51.100.7/32".parse().unwrap());
    let p = plan(&spec, Role::Primary, &observed(port, 0, false));
    assert!(!p.actions.iter().any(|a| a.kind() == "delete-address"));
}

#[test]
fn missing_device_waits_but_still_holds_a_standby() {
    let spec = spec(Strategy::L2Hold, ovs());
    let mut port = noisy_port(HoldState::Released);
    port.link = None;
    let p = plan(&spec, Role::Standby, &observed(port.clone(), 0, false));
    assert_eq!(p.actions, [Action::HoldL2]);
    assert_eq!(p.wait, Some(Wait::DeviceMissing));
    let p = plan(&spec, Role::Primary, &observed(port, 0, false));
    assert!(p.actions.is_empty());
    assert_eq!(p.wait, Some(Wait::DeviceMissing));
}

#[test]
fn a_holding_backend_holds_a_standby_whose_device_does_not_exist_yet() {
    let lb = L2BackendSpec::Linuxbridge { port: "tap1".into(), bridge: "brq1".into() };
    for strategy in [Strategy::L2Hold, Strategy::LinkDown, Strategy::SilenceOnly] {
        let mut port = noisy_port(HoldState::Released);
        port.link = None;
        port.l2.wired = false;
        let p = plan(&spec(strategy, lb.clone()), Role::Standby, &observed(port, 0, false));
        assert_eq!(p.actions, [Action::HoldL2], "{strategy:?}");
        assert_eq!(p.wait, Some(Wait::DeviceMissing));
    }
}

#[test]
fn link_down_keeps_the_hold_it_can_have_because_the_kernel_queues_mld_on_a_down_link() {
    let spec = spec(Strategy::LinkDown, ovs());
    let p = plan(&spec, Role::Standby, &observed(noisy_port(HoldState::Released), 0, false));
    assert_eq!(kinds(&p.actions)[..2], ["hold-l2", "link-down"]);
    let mut rest = quiet_held_port();
    rest.link.as_mut().unwrap().admin_up = false;
    let p = plan(&spec, Role::Standby, &observed(rest, 60_000, false));
    assert!(p.is_converged(), "the hold stays: {:?}", p.actions);
}

/// A floating IP Neutron removed (no longer in the spec, retired by its previous one) is
/// deleted from a primary and not announced, even if it was put back meanwhile; one the spec
/// still lists but that went missing is added back.
#[test]
fn a_primary_deletes_retired_addresses_and_never_announces_them() {
    let spec = spec(Strategy::L2Hold, ovs());
    let removed: ipnet::IpNet = "203.0.113.51/32".parse().unwrap();
    let mut port = quiet_held_port();
    port.l2.hold = HoldState::Released;
    let link = port.link.as_mut().unwrap();
    link.addresses = vec![spec.gateway_addresses[0], spec.gateway_addresses[2], removed];
    link.routes = spec.routes.clone();
    link.ipv6.forwarding = 1;
    let mut seen = observed(port, 0, true);
    seen.retired_addresses = vec![removed];
    let p = plan(&spec, Role::Primary, &seen);
    assert_eq!(kinds(&p.actions), ["add-address", "delete-address", "announce"], "{p:?}");
    assert_eq!(p.actions[1], Action::DeleteAddress { address: removed });
    let Action::Announce { addresses } = p.actions.last().unwrap() else { unreachable!() };
    assert!(!addresses.contains(&removed.addr()), "{addresses:?}");
    assert_eq!(addresses.len(), 3);
}

/// A router cached from before a restart and not confirmed by Neutron yet: a standby's port
/// arriving as the L3 agent plugs it is held and nothing else is touched; a primary's, or a
/// held one whose silence has long settled, is left alone (no release, address or announce).
#[test]
fn a_hold_only_spec_holds_a_standby_and_touches_nothing_else() {
    let hold_only = |port, silent_ms, pending| {
        let mut o = observed(port, silent_ms, pending);
        o.hold_only = true;
        o
    };
    let l2 = spec(Strategy::SilenceOnly, ovs());
    let arrived = plan(&l2, Role::Unknown, &hold_only(noisy_port(HoldState::Released), 0, false));
    assert_eq!(kinds(&arrived.actions), ["hold-l2"]);
    let settled = plan(&l2, Role::Standby, &hold_only(quiet_held_port(), 60_000, false));
    assert!(settled.is_converged(), "{:?}", settled.actions);
    let mut gone = noisy_port(HoldState::Unknown);
    gone.link = None;
    let missing = plan(&l2, Role::Standby, &hold_only(gone, 0, false));
    assert_eq!((missing.actions.len(), missing.wait), (0, Some(Wait::DeviceMissing)));
    let primary = plan(&l2, Role::Primary, &hold_only(quiet_held_port(), 0, true));
    assert!(primary.is_converged(), "{:?}", primary.actions);

    let down = spec(Strategy::LinkDown, generic());
    let p = plan(&down, Role::Standby, &hold_only(noisy_port(HoldState::Unsupported), 0, false));
    assert_eq!(p.actions, [Action::SetLinkDown]);
}

/// The OVS agent's retag leaves `no-receive` alone: a partial hold. It still keeps the port
/// off the uplink, so nothing else changes on a standby, but its pass completes it; a
/// primary releases what is left.
#[test]
fn a_partial_hold_is_completed_on_a_standby_and_released_on_a_primary() {
    for strategy in [Strategy::L2Hold, Strategy::LinkDown] {
        let mut port = quiet_held_port();
        port.l2.hold = HoldState::Partial;
        if strategy == Strategy::LinkDown {
            port.link.as_mut().unwrap().admin_up = false;
        }
        let p = plan(&spec(strategy, ovs()), Role::Standby, &observed(port, 60_000, false));
        assert_eq!(p.actions, [Action::HoldL2], "{strategy:?}");
    }
    let mut port = quiet_held_port();
    port.l2.hold = HoldState::Partial;
    assert!(!port.is_exposed(), "either half keeps the port off the uplink");
    let p = plan(&spec(Strategy::L2Hold, ovs()), Role::Primary, &observed(port, 0, true));
    assert!(p.actions.contains(&Action::ReleaseL2), "{p:?}");
}

/// Every plan says what the backend does when the port arrives before the next pass.
#[test]
fn a_standby_holds_its_port_on_arrival_until_the_planner_lets_go() {
    let mut missing = noisy_port(HoldState::Unknown);
    missing.link = None;
    for strategy in [Strategy::L2Hold, Strategy::LinkDown, Strategy::SilenceOnly] {
        let p = plan(&spec(strategy, ovs()), Role::Standby, &observed(missing.clone(), 0, false));
        assert_eq!(p.hold_on_arrival, HoldOnArrival::Always, "{strategy:?}");
        let p = plan(&spec(strategy, ovs()), Role::Primary, &observed(missing.clone(), 0, false));
        assert_eq!(p.hold_on_arrival, HoldOnArrival::Never, "{strategy:?}");
    }
    // Settled into silence, a silence-only standby's port is released; only a new port
    // (a new device, which talks) is held again.
    let settled = observed(quiet_held_port(), 60_000, false);
    let p = plan(&spec(Strategy::SilenceOnly, ovs()), Role::Standby, &settled);
    assert_eq!(p.actions, [Action::ReleaseL2]);
    assert_eq!(p.hold_on_arrival, HoldOnArrival::NewPort);
}

/// A standby held where `/proc/sys` is read-only: `accept_ra` and `forwarding` cannot be
/// written, so the port is never fully silent.
fn held_with_unwritable_sysctls() -> (hagw_core::observed::PortState, Vec<Action>) {
    let mut port = quiet_held_port();
    let ipv6 = &mut port.link.as_mut().unwrap().ipv6;
    (ipv6.accept_ra, ipv6.forwarding) = (1, 1);
    let failed = [Ipv6Sysctl::AcceptRa, Ipv6Sysctl::Forwarding]
        .map(|sysctl| Action::SetSysctl { sysctl, value: 0 })
        .to_vec();
    (port, failed)
}

/// Enforcing, such a standby stays held for good: a guard is lifted only on observed
/// silence, never on a setting's assumed effect.
#[test]
fn a_standby_that_cannot_be_fully_silenced_stays_held() {
    let (port, failed) = held_with_unwritable_sysctls();
    for strategy in [Strategy::SilenceOnly, Strategy::L2Hold] {
        let observed = hagw_core::observed::Observed {
            failed_steps: failed.clone(),
            ..observed(port.clone(), 60_000, false)
        };
        let p = plan(&spec(strategy, ovs()), Role::Standby, &observed);
        assert!(!p.actions.contains(&Action::ReleaseL2), "{strategy:?}: {:?}", p.actions);
        assert_eq!(p.hold_on_arrival, HoldOnArrival::Always, "{strategy:?}");
    }
}

/// Handing it back, the planner settles for the silence that could be applied: it keeps the
/// hold while that silence settles, then releases it — whatever the strategy — and holds
/// nothing on arrival, since no agent will be left to release it. A hold kept with no agent
/// left would make the router dark when keepalived promotes this node.
#[test]
fn a_hand_back_releases_once_silent_but_for_what_cannot_be_written() {
    let (port, failed) = held_with_unwritable_sysctls();
    for strategy in [Strategy::SilenceOnly, Strategy::L2Hold, Strategy::LinkDown] {
        let spec = spec(strategy, ovs());
        let mut port = port.clone();
        port.link.as_mut().unwrap().admin_up = strategy != Strategy::LinkDown;
        let handing_back = |silent_for_ms| hagw_core::observed::Observed {
            failed_steps: failed.clone(),
            hand_back: true,
            ..observed(port.clone(), silent_for_ms, false)
        };
        let early = plan(&spec, Role::Standby, &handing_back(1000));
        assert!(!early.actions.contains(&Action::ReleaseL2), "{strategy:?}: {:?}", early.actions);
        assert!(!early.actions.iter().any(|a| matches!(a, Action::SetSysctl { .. })));
        assert_eq!(
            early.wait,
            Some(Wait::SilenceSettling { remaining: std::time::Duration::from_secs(2) }),
            "{strategy:?}"
        );
        assert_eq!(early.hold_on_arrival, HoldOnArrival::Always, "{strategy:?}");

        let late = plan(&spec, Role::Standby, &handing_back(3000));
        assert_eq!(late.actions.last(), Some(&Action::ReleaseL2), "{strategy:?}");
        assert_eq!(
            late.actions.contains(&Action::SetLinkUp),
            strategy == Strategy::LinkDown,
            "{strategy:?}: {:?}",
            late.actions
        );
        assert_eq!(late.hold_on_arrival, HoldOnArrival::Never, "{strategy:?}");
    }
}

/// What can be written is still written, and addresses removed, before the hold goes.
#[test]
fn a_hand_back_still_silences_what_it_can() {
    let spec = spec(Strategy::L2Hold, ovs());
    let (_, failed) = held_with_unwritable_sysctls();
    let observed = hagw_core::observed::Observed {
        failed_steps: failed,
        hand_back: true,
        ..observed(noisy_port(HoldState::Held), 0, false)
    };
    let p = plan(&spec, Role::Standby, &observed);
    assert_eq!(
        p.actions,
        [
            Action::SetSysctl { sysctl: Ipv6Sysctl::AddrGenMode, value: 1 },
            Action::DeleteAddress { address: "fe80::f816:3eff:fe00:1/64".parse().unwrap() },
        ]
    );
    assert!(matches!(p.wait, Some(Wait::SilenceSettling { .. })));
}
