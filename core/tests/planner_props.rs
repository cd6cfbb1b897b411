//! Property tests of the planner's safety invariant and convergence, over generated specs and
//! observed states, stepping through each plan with the action model.
//!
//! Case count: `PROPTEST_CASES` (default 10,000).

mod common;

use std::time::Duration;

use hagw_core::action::Action;
use hagw_core::model::{L2BackendSpec, Role, RouteSpec, RouterSpec, Strategy as PortStrategy};
use hagw_core::observed::{
    ADDR_GEN_MODE_NONE, HoldState, Ipv6Conf, Ipv6Sysctl, L2State, LinkCounters, LinkState,
    Observed, PortState,
};
use hagw_core::planner::{HoldOnArrival, Wait, partial_hold_matters, plan};
use ipnet::IpNet;
use proptest::prelude::*;

const ADDRESSES: [&str; 5] =
    ["203.0.113.10/24", "2001:db8::10/64", "fe80::f816:3eff:fe00:1/64", "fe80::1/64", "10.9.9.9/8"];

fn arb_spec() -> impl proptest::strategy::Strategy<Value = RouterSpec> {
    (
        prop_oneof![
            Just(PortStrategy::L2Hold),
            Just(PortStrategy::LinkDown),
            Just(PortStrategy::SilenceOnly)
        ],
        prop_oneof![
            Just(L2BackendSpec::Generic),
            Just(L2BackendSpec::Ovs { port: None }),
            Just(L2BackendSpec::Linuxbridge { port: "tap1".into(), bridge: "brq1".into() }),
        ],
        proptest::sample::subsequence(ADDRESSES[..3].to_vec(), 0..=3),
        any::<bool>(),
    )
        .prop_filter("l2-hold needs a holding backend", |(s, b, _, _)| {
            *s != PortStrategy::L2Hold || *b != L2BackendSpec::Generic
        })
        .prop_map(|(strategy, backend, addresses, with_route)| {
            let mut spec = common::spec(strategy, backend);
            spec.gateway_addresses = addresses.iter().map(|a| a.parse().unwrap()).collect();
            spec.routes = if with_route {
                vec![RouteSpec {
                    destination: "0.0.0.0/0".parse().unwrap(),
                    via: Some("203.0.113.1".parse().unwrap()),
                }]
            } else {
                vec![]
            };
            spec
        })
}

fn arb_link() -> impl proptest::strategy::Strategy<Value = LinkState> {
    (
        any::<(bool, bool)>(),
        proptest::sample::subsequence(ADDRESSES.to_vec(), 0..=5),
        (0u32..=3, 0u32..=2, 0u32..=1, 0u32..=1),
        any::<bool>(),
    )
        .prop_map(|((admin_up, oper_up), addresses, (agm, ra, fwd, dis), with_route)| {
            LinkState {
                admin_up,
                oper_up,
                addresses: addresses.iter().map(|a| a.parse::<IpNet>().unwrap()).collect(),
                ipv6: Ipv6Conf {
                    addr_gen_mode: agm,
                    accept_ra: ra,
                    forwarding: fwd,
                    disable_ipv6: dis,
                },
                routes: if with_route {
                    common::spec(PortStrategy::L2Hold, L2BackendSpec::Generic).routes
                } else {
                    vec![]
                },
                counters: LinkCounters::default(),
            }
        })
}

/// An observed state consistent with the spec's backend (only a generic backend reports
/// `Unsupported`: a kernel without nf_tables; every backend any other hold state).
fn arb_case(
    roles: Vec<Role>,
) -> impl proptest::strategy::Strategy<Value = (RouterSpec, Role, Observed)> {
    (
        arb_spec(),
        proptest::sample::select(roles),
        proptest::option::weighted(0.9, arb_link()),
        prop_oneof![
            Just(HoldState::Held),
            Just(HoldState::Partial),
            Just(HoldState::Released),
            Just(HoldState::Unknown),
            Just(HoldState::Unsupported)
        ],
        any::<bool>(),
        prop_oneof![Just(0u64), 0u64..6000, Just(60_000)],
        any::<bool>(),
    )
        .prop_map(|(spec, role, link, hold, wired, silent_ms, pending)| {
            let generic = spec.backend == L2BackendSpec::Generic;
            let hold =
                if generic || hold != HoldState::Unsupported { hold } else { HoldState::Released };
            let wired = wired || generic;
            let port = PortState { link, l2: L2State { hold, wired } };
            let silent_for =
                if port.is_silent() { Duration::from_millis(silent_ms) } else { Duration::ZERO };
            (
                spec,
                role,
                Observed {
                    port,
                    silent_for,
                    announce_pending: pending,
                    failed_steps: Vec::new(),
                    retired_addresses: Vec::new(),
                    hold_only: false,
                    hand_back: false,
                },
            )
        })
}

/// Applies a plan to the model the way the reconcile loop would, returning every
/// intermediate port state and the next observation (silence keeps counting only if the
/// port never stopped being silent).
fn step(observed: &Observed, actions: &[Action]) -> (Vec<PortState>, Observed) {
    let mut port = observed.port.clone();
    let mut stayed_silent = silent(observed, &port);
    let mut pending = observed.announce_pending;
    let mut states = Vec::new();
    for action in actions {
        action.apply_to(&mut port);
        stayed_silent &= silent(observed, &port);
        if matches!(action, Action::Announce { .. }) {
            pending = false;
        }
        states.push(port.clone());
    }
    let silent_for = if stayed_silent { observed.silent_for } else { Duration::ZERO };
    let next = Observed {
        port,
        silent_for,
        announce_pending: pending,
        // A hand-back remembers the settings it could not apply (RouterMemory).
        failed_steps: if observed.hand_back { observed.failed_steps.clone() } else { Vec::new() },
        retired_addresses: Vec::new(),
        hold_only: observed.hold_only,
        hand_back: observed.hand_back,
    };
    (states, next)
}

/// Silence as the loop's memory measures it: in a hand-back, but for what could not be
/// applied.
fn silent(observed: &Observed, port: &PortState) -> bool {
    match observed.hand_back {
        true => port.is_silent_but_for(&observed.failed_steps),
        false => port.is_silent(),
    }
}

fn is_guard(action: &Action) -> bool {
    matches!(action, Action::HoldL2 | Action::SetLinkDown)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// A standby port is never exposed unless silent, at any step of any plan, and a guard is
    /// never lifted before silence has settled.
    #[test]
    fn standby_is_never_exposed_unless_silent(
        (spec, role, observed) in arb_case(vec![Role::Standby, Role::Unknown])
    ) {
        let settled = observed.port.is_silent() && observed.silent_for >= spec.silence_settle();
        let p = plan(&spec, role, &observed);
        let (states, _) = step(&observed, &p.actions);
        if observed.port.is_exposed() && !settled {
            prop_assert!(p.actions.first().is_some_and(is_guard), "first step must close exposure: {:?}", p.actions);
        }
        let mut before = observed.port.clone();
        for (action, state) in p.actions.iter().zip(&states) {
            prop_assert!(!state.is_exposed() || state.is_silent(),
                "exposed and not silent after {action}: {state:?}\nplan {:?}", p.actions);
            if state.is_exposed() && !before.is_exposed() {
                prop_assert!(settled, "guard lifted by {action} before silence settled");
            }
            before = state.clone();
        }
    }

    /// Planning again right after applying a plan yields no actions; after silence has had
    /// time to settle, one more plan at most reaches the resting state for the role.
    #[test]
    fn plans_converge(
        (spec, role, observed) in arb_case(vec![Role::Primary, Role::Standby, Role::Unknown])
    ) {
        let first = plan(&spec, role, &observed);
        let (_, after) = step(&observed, &first.actions);
        let again = plan(&spec, role, &after);
        prop_assert!(again.is_converged(), "not converged: {:?} then {:?}", first.actions, again.actions);

        let settled = Observed { silent_for: after.silent_for + spec.silence_settle(), ..after };
        let lift = plan(&spec, role, &settled);
        let (_, rest) = step(&settled, &lift.actions);
        let last = plan(&spec, role, &rest);
        prop_assert!(last.is_converged(), "{:?} then {:?}", lift.actions, last.actions);
        let settling = matches!(last.wait, Some(Wait::SilenceSettling { .. }));
        prop_assert!(!settling);
        check_resting_state(&spec, role, &rest, last.wait)?;
    }

    /// A spec that may be stale (hold-only) only ever closes a standby's exposure and leaves
    /// a primary as it is; one plan reaches a state it leaves alone.
    #[test]
    fn hold_only_closes_exposure_and_nothing_else(
        (spec, role, observed) in arb_case(vec![Role::Primary, Role::Standby, Role::Unknown])
    ) {
        let observed = Observed { hold_only: true, ..observed };
        let p = plan(&spec, role, &observed);
        prop_assert!(p.actions.iter().all(is_guard), "{:?}", p.actions);
        if !role.is_standby() {
            prop_assert!(p.actions.is_empty(), "{:?}", p.actions);
        }
        let (states, after) = step(&observed, &p.actions);
        if role.is_standby() {
            let last = states.last().unwrap_or(&observed.port);
            prop_assert!(!last.is_exposed(), "still exposed after {:?}", p.actions);
        }
        let again = plan(&spec, role, &after);
        prop_assert!(again.is_converged(), "{:?} then {:?}", p.actions, again.actions);
    }
}

fn check_resting_state(
    spec: &RouterSpec,
    role: Role,
    rest: &Observed,
    wait: Option<Wait>,
) -> Result<(), TestCaseError> {
    let Some(link) = &rest.port.link else {
        prop_assert_eq!(wait, Some(Wait::DeviceMissing));
        return Ok(());
    };
    let hold = rest.port.l2.hold;
    if role.is_standby() {
        prop_assert!(link.is_silent());
        let can_hold = hold != HoldState::Unsupported;
        match spec.strategy {
            PortStrategy::L2Hold => prop_assert_eq!(hold, HoldState::Held),
            PortStrategy::LinkDown => {
                prop_assert!(!link.admin_up);
                if can_hold {
                    prop_assert_eq!(
                        hold,
                        HoldState::Held,
                        "link-down layers the hold where it can"
                    );
                }
            }
            PortStrategy::SilenceOnly => {
                prop_assert!(link.admin_up);
                if rest.port.l2.wired {
                    prop_assert!(!hold.is_held());
                }
            }
        }
    } else {
        prop_assert!(link.admin_up);
        for a in &spec.gateway_addresses {
            prop_assert!(link.addresses.contains(a));
        }
        for r in &spec.routes {
            prop_assert!(link.routes.contains(r));
        }
        if hold.is_held() {
            prop_assert!(!rest.port.l2.wired);
            prop_assert_eq!(wait, Some(Wait::L2NotWired));
        } else {
            prop_assert!(!rest.announce_pending || link.addresses.is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Between passes the backend holds a port that arrives exactly when the plan says so:
    /// every standby's that can be held, never a primary's; after an ovs-vswitchd restart or
    /// an OVSDB reconnect also, unless the planner has let go of the hold (a settled
    /// silence-only standby).
    #[test]
    fn hold_on_arrival_is_the_standbys(
        (spec, role, observed) in arb_case(vec![Role::Primary, Role::Standby, Role::Unknown])
    ) {
        let p = plan(&spec, role, &observed);
        let can_hold = observed.port.l2.hold != HoldState::Unsupported;
        let settled = observed.port.link.is_some()
            && observed.port.is_silent()
            && observed.silent_for >= spec.silence_settle();
        let expected = match (role.is_standby() && can_hold, spec.strategy, settled) {
            (false, ..) => HoldOnArrival::Never,
            (true, PortStrategy::SilenceOnly, true) => HoldOnArrival::NewPort,
            (true, ..) => HoldOnArrival::Always,
        };
        prop_assert_eq!(p.hold_on_arrival, expected);
    }
    /// Where [`partial_hold_matters`] says a pass need not see which half of a lifted hold is
    /// left, a partial hold and a released one get the same plan (the OVS backend then skips
    /// reading `no-receive`).
    #[test]
    fn a_partial_hold_is_planned_as_a_released_one_where_it_does_not_matter(
        (spec, role, observed) in arb_case(vec![Role::Primary, Role::Standby, Role::Unknown]),
        failed in prop_oneof![
            Just(vec![]),
            Just(vec![Action::HoldL2]),
            Just(vec![Action::SetLinkDown]),
            Just(vec![Action::ReleaseL2]),
        ],
        hold_only in any::<bool>(),
        hand_back in any::<bool>(),
        settled in any::<bool>(),
    ) {
        if partial_hold_matters(&spec, role, &failed, hand_back) {
            return Ok(());
        }
        let mut observed = Observed { failed_steps: failed.clone(), hold_only, hand_back, ..observed };
        // Half of the cases settled into silence, where silence-only lets go of the hold.
        if let Some(link) = observed.port.link.as_mut().filter(|_| settled) {
            link.addresses.clear();
            link.ipv6 = Ipv6Conf { addr_gen_mode: ADDR_GEN_MODE_NONE, accept_ra: 0, forwarding: 0, disable_ipv6: 0 };
            observed.silent_for = Duration::from_secs(60);
        }
        let with = |hold| {
            let mut observed = observed.clone();
            observed.port.l2.hold = hold;
            plan(&spec, role, &observed)
        };
        prop_assert_eq!(with(HoldState::Partial), with(HoldState::Released));
    }
}

/// The sysctls a non-privileged container cannot write (read-only `/proc/sys`).
const UNWRITABLE: [Ipv6Sysctl; 2] = [Ipv6Sysctl::AcceptRa, Ipv6Sysctl::Forwarding];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// A hand-back with some of the standby's silence unwritable: the port is never exposed
    /// unless as silent as it can be made, a guard is lifted only once that silence has
    /// settled, and after it the port rests up and released (where wired), with nothing held
    /// on arrival. A primary is planned as without a hand-back.
    #[test]
    fn a_hand_back_silences_what_it_can_then_lets_go(
        (spec, role, observed) in arb_case(vec![Role::Primary, Role::Standby, Role::Unknown]),
        unwritable in proptest::sample::subsequence(UNWRITABLE.to_vec(), 0..=2),
        silent_ms in prop_oneof![Just(0u64), 0u64..6000, Just(60_000)],
    ) {
        let failed: Vec<Action> =
            unwritable.into_iter().map(|sysctl| Action::SetSysctl { sysctl, value: 0 }).collect();
        let quiet = |port: &PortState| port.is_silent_but_for(&failed);
        let silent_for =
            if quiet(&observed.port) { Duration::from_millis(silent_ms) } else { Duration::ZERO };
        let observed =
            Observed { hand_back: true, failed_steps: failed.clone(), silent_for, ..observed };
        let p = plan(&spec, role, &observed);
        if !role.is_standby() {
            let enforcing = Observed { hand_back: false, ..observed.clone() };
            prop_assert_eq!(p, plan(&spec, role, &enforcing));
            return Ok(());
        }
        let settle = spec.silence_settle();
        let settled = observed.port.link.is_some() && quiet(&observed.port) && silent_for >= settle;
        let (states, after) = step(&observed, &p.actions);
        let mut before = observed.port.clone();
        for (action, state) in p.actions.iter().zip(&states) {
            prop_assert!(!state.is_exposed() || quiet(state),
                "exposed and not quiet after {action}: {state:?}\nplan {:?}", p.actions);
            if state.is_exposed() && !before.is_exposed() {
                prop_assert!(settled, "guard lifted by {action} before silence settled");
            }
            before = state.clone();
        }
        let again = plan(&spec, role, &after);
        prop_assert!(again.is_converged(), "{:?} then {:?}", p.actions, again.actions);

        let settled = Observed { silent_for: after.silent_for + settle, ..after };
        let lift = plan(&spec, role, &settled);
        let (_, rest) = step(&settled, &lift.actions);
        let last = plan(&spec, role, &rest);
        prop_assert!(last.is_converged(), "{:?} then {:?}", lift.actions, last.actions);
        if let Some(link) = &rest.port.link {
            prop_assert!(link.admin_up && quiet(&rest.port), "{:?}", rest.port);
            if rest.port.l2.wired {
                prop_assert!(!rest.port.l2.hold.is_held(), "{:?}", rest.port);
            }
            prop_assert_eq!(last.hold_on_arrival, HoldOnArrival::Never);
        }
    }
}
