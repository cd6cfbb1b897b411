//! The pure planner: desired state (spec + role) and observed state in, ordered actions out.
//! No I/O and no clock; the reconcile loop measures time and passes it in `Observed`.
//!
//! The order is the product. On a standby, exposure is closed (hold or link down) before any
//! address or sysctl is touched, because touching them makes the kernel send MLD and DAD
//! frames; a hold is lifted only once the port has been silent longer than the kernel's
//! delayed retransmissions. On a primary, the port is configured first, the hold released
//! only once the L2 agent has wired it, routes repaired, and the addresses announced last.

use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use crate::action::Action;
use crate::model::{Role, RouterSpec, Strategy};
use crate::observed::{ADDR_GEN_MODE_NONE, HoldState, Ipv6Sysctl, Observed, PortState};

/// The ordered actions for one router, and what (if anything) it is still waiting for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub wait: Option<Wait>,
    /// What the backend may do on its own until the next pass, when the port (re)appears
    /// faster than a pass could follow (see [`HoldOnArrival`]).
    pub hold_on_arrival: HoldOnArrival,
}

impl Plan {
    /// Nothing left to do now (the plan may still be waiting for something outside hagw).
    pub fn is_converged(&self) -> bool {
        self.actions.is_empty()
    }
}

/// The planner's standing decision for the time between passes. A standby's new port must
/// be held before the L2 agent wires it, which can be a few milliseconds after it appears:
/// faster than a pass (which observes everything before it acts) can follow. So the planner
/// decides ahead, in every plan, and the backend applies this decision when it sees the
/// port arrive. Nothing else is done between passes: a hold lifted by someone else (the OVS
/// agent's retag) is an observation that wakes the router's next pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldOnArrival {
    /// Never: a primary, or a backend that cannot hold.
    #[default]
    Never,
    /// Hold a port that appears (a new OVS Port row, or ovs-vswitchd attaching it): a
    /// `silence-only` standby whose silence has settled, which the planner released and
    /// holds again only if its port is re-created (a new device talks).
    NewPort,
    /// Also hold it again when the hold may have been lost with nothing to show in the
    /// switch's database (ovs-vswitchd restarting drops `no-receive`; changes missed while
    /// OVSDB was unreachable): every standby the planner keeps held.
    Always,
}

/// Why a plan stops short of the final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum Wait {
    /// The gateway device does not exist yet in the router namespace.
    DeviceMissing,
    /// A standby hold can be lifted once the port has been silent for `remaining` more.
    SilenceSettling { remaining: Duration },
    /// The primary's hold can be released once the L2 agent has wired the port.
    L2NotWired,
}

/// The sysctl values that make a standby silent, in the order they are written: address
/// generation off first, so nothing later regenerates a link-local address.
const STANDBY_SILENCE: [(Ipv6Sysctl, u32); 3] = [
    (Ipv6Sysctl::AddrGenMode, ADDR_GEN_MODE_NONE),
    (Ipv6Sysctl::AcceptRa, 0),
    (Ipv6Sysctl::Forwarding, 0),
];

/// Plans the steps that bring the port from `observed` to what `spec` wants for `role`.
pub fn plan(spec: &RouterSpec, role: Role, observed: &Observed) -> Plan {
    let mut builder = PlanBuilder {
        state: observed.port.clone(),
        plan: Plan::default(),
        failed: &observed.failed_steps,
    };
    if observed.hold_only {
        builder.hold_only(role);
    } else if role.is_standby() {
        builder.standby(spec, observed);
    } else {
        builder.primary(spec, observed);
    }
    builder.plan
}

/// Whether a plan for `role` can differ between [`HoldState::Partial`] and
/// [`HoldState::Released`], i.e. whether a pass must see which half of a lifted L2 hold is
/// left. It cannot for a standby held whatever its silence (every strategy but
/// `silence-only`, and not being handed back, which ends where silence-only rests): both plan
/// the hold, which puts back both halves; unless the hold already failed in this pass
/// (`failed`), when what guards the port instead depends on it. The OVS backend then skips
/// reading `no-receive` for a port whose triple is gone: an OpenFlow exchange with an
/// ovs-vswitchd that is just applying the retag that lifted it.
pub fn partial_hold_matters(
    spec: &RouterSpec,
    role: Role,
    failed: &[Action],
    hand_back: bool,
) -> bool {
    !role.is_standby()
        || hand_back
        || spec.strategy == Strategy::SilenceOnly
        || failed.contains(&Action::HoldL2)
}

/// Accumulates actions while tracking the state they leave behind, so each decision sees the
/// effect of the steps before it. A step that already failed in this pass is neither planned
/// nor modelled, so nothing is planned on its effect.
struct PlanBuilder<'a> {
    state: PortState,
    plan: Plan,
    failed: &'a [Action],
}

impl PlanBuilder<'_> {
    fn push(&mut self, action: Action) {
        if self.failed.contains(&action) {
            return;
        }
        action.apply_to(&mut self.state);
        self.plan.actions.push(action);
    }

    fn wait(&mut self, wait: Wait) {
        self.plan.wait.get_or_insert(wait);
    }

    fn admin_up(&self) -> bool {
        self.state.link.as_ref().is_some_and(|l| l.admin_up)
    }

    fn standby(&mut self, spec: &RouterSpec, observed: &Observed) {
        let settle = spec.silence_settle();
        // A hand-back ends where silence-only rests (up, released), whatever the strategy,
        // and settles for the silence that could be applied: a setting that cannot be
        // written (read-only /proc/sys) must not keep a port held that nobody will release.
        let (strategy, silent) = if observed.hand_back {
            (Strategy::SilenceOnly, observed.port.is_silent_but_for(&observed.failed_steps))
        } else {
            (spec.strategy, observed.port.is_silent())
        };
        // Silence observed long enough ago that no delayed MLD/DAD retransmission is left, on
        // a device that exists: a missing one sends nothing, but the one the agents create
        // next comes up with the kernel's defaults and talks at once, so a backend that can
        // hold by name (Linux bridge) holds it on arrival.
        let settled = observed.port.link.is_some() && silent && observed.silent_for >= settle;
        let can_hold = self.state.l2.hold != HoldState::Unsupported;

        // 1. Close exposure before anything makes the kernel talk. A backend that can hold
        // holds a standby whenever it is not settled into silence, even while the device is
        // missing (a Linux bridge tap forwards the moment it is plugged) or its link is down
        // (the kernel queues MLD reports on a down link and sends them at the next link up).
        // Only silence-only lets go of the hold, once settled. There is nothing to hold while
        // neither the device nor the switch port exists.
        let nothing_to_hold = self.state.link.is_none() && self.state.l2.hold == HoldState::Unknown;
        let wants_hold =
            can_hold && !nothing_to_hold && (strategy != Strategy::SilenceOnly || !settled);
        self.plan.hold_on_arrival = match (can_hold, strategy, settled) {
            (false, ..) => HoldOnArrival::Never,
            // Handed back: no agent will be there to release a port held on arrival.
            (true, Strategy::SilenceOnly, true) if observed.hand_back => HoldOnArrival::Never,
            (true, Strategy::SilenceOnly, true) => HoldOnArrival::NewPort,
            (true, ..) => HoldOnArrival::Always,
        };
        if wants_hold && self.state.l2.hold != HoldState::Held {
            self.push(Action::HoldL2);
        } else if self.state.is_exposed() && !settled {
            self.push(Action::SetLinkDown);
        }
        if strategy == Strategy::LinkDown && self.admin_up() {
            self.push(Action::SetLinkDown);
        }

        // 2. Silence: sysctls first, then every address.
        let Some(link) = self.state.link.clone() else {
            self.wait(Wait::DeviceMissing);
            return;
        };
        for (sysctl, value) in STANDBY_SILENCE {
            if link.ipv6.get(sysctl) != value {
                self.push(Action::SetSysctl { sysctl, value });
            }
        }
        for address in link.addresses {
            self.push(Action::DeleteAddress { address });
        }

        // 3. Move toward the strategy's resting state, lifting a guard only when another
        // guard remains in place or the port has settled into silence.
        let remaining = settle.saturating_sub(if settled { settle } else { observed.silent_for });
        let settling = Wait::SilenceSettling { remaining: remaining.max(Duration::from_millis(1)) };
        if strategy != Strategy::LinkDown && !self.admin_up() {
            if self.state.l2.hold.is_held() || settled {
                self.push(Action::SetLinkUp);
            } else {
                self.wait(settling);
            }
        }
        if strategy == Strategy::SilenceOnly && self.state.l2.hold.is_held() && self.state.l2.wired
        {
            if settled {
                self.push(Action::ReleaseL2);
            } else {
                self.wait(settling);
            }
        }
    }

    /// A spec that may be stale ([`Observed::hold_only`]): of it only the port's name is
    /// trusted. A standby's exposure is closed as [`PlanBuilder::standby`] closes it first
    /// (held whenever there is something to hold, else link down), and nothing else is done:
    /// no release, no link up, no address or sysctl touched, nothing announced. A primary is
    /// left as it is: neither held nor served until the spec is confirmed.
    fn hold_only(&mut self, role: Role) {
        if !role.is_standby() {
            return;
        }
        let can_hold = self.state.l2.hold != HoldState::Unsupported;
        if can_hold {
            self.plan.hold_on_arrival = HoldOnArrival::Always;
        }
        let nothing_to_hold = self.state.link.is_none() && self.state.l2.hold == HoldState::Unknown;
        if can_hold && !nothing_to_hold {
            if self.state.l2.hold != HoldState::Held {
                self.push(Action::HoldL2);
            }
        } else if self.state.is_exposed() {
            self.push(Action::SetLinkDown);
        }
        if self.state.link.is_none() {
            self.wait(Wait::DeviceMissing);
        }
    }

    fn primary(&mut self, spec: &RouterSpec, observed: &Observed) {
        let Some(link) = self.state.link.clone() else {
            self.wait(Wait::DeviceMissing);
            return;
        };
        if spec.serves_ipv6() {
            for (sysctl, value) in [(Ipv6Sysctl::DisableIpv6, 0), (Ipv6Sysctl::Forwarding, 1)] {
                if link.ipv6.get(sysctl) != value {
                    self.push(Action::SetSysctl { sysctl, value });
                }
            }
        }
        if !link.admin_up {
            self.push(Action::SetLinkUp);
        }
        for address in &spec.gateway_addresses {
            if !self.link_has(|l| l.addresses.contains(address)) {
                self.push(Action::AddAddress { address: *address });
            }
        }
        // What Neutron removed stays removed, also when a pass under the previous spec put
        // it back after keepalived had dropped it.
        for address in &observed.retired_addresses {
            if !spec.gateway_addresses.contains(address)
                && self.link_has(|l| l.addresses.contains(address))
            {
                self.push(Action::DeleteAddress { address: *address });
            }
        }
        // keepalived's virtual_routes fail on a down link and are never retried, so the
        // primary's routes are part of its desired state.
        for route in &spec.routes {
            if !self.link_has(|l| l.routes.contains(route)) {
                self.push(Action::AddRoute { route: route.clone() });
            }
        }
        if self.state.l2.hold.is_held() {
            if self.state.l2.wired {
                self.push(Action::ReleaseL2);
            } else {
                self.wait(Wait::L2NotWired);
            }
        }
        if observed.announce_pending && self.state.is_exposed() {
            let addresses: Vec<_> = self
                .state
                .link
                .as_ref()
                .map(|l| {
                    let retired = |a: &&IpNet| observed.retired_addresses.contains(a);
                    l.addresses.iter().filter(|a| !retired(a)).map(|a| a.addr()).collect()
                })
                .unwrap_or_default();
            if !addresses.is_empty() {
                self.push(Action::Announce { addresses });
            }
        }
    }

    fn link_has(&self, check: impl Fn(&crate::observed::LinkState) -> bool) -> bool {
        self.state.link.as_ref().is_some_and(check)
    }
}
