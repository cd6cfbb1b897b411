//! What this node's entry in an HARouter's status says after a pass or a rejection, and which
//! Events that calls for. Pure: the rules (conditions, last error, transition times, Events)
//! are decided here and unit-tested; [`super::status`] only writes the result.

use hagw_core::supervisor::{PassOutcome, RouterEvent};
use hagw_core::{Action, Role, Wait};

use super::crd::{Condition, NodeStatus};
use super::merge::Enforced;
use super::source::Origin;

/// The Degraded reason of a node whose only unapplied settings are the ones a read-only
/// `/proc/sys` refuses (the chart's default, non-privileged pod).
pub(super) const READ_ONLY: &str = "SysctlsReadOnly";

/// The entry, and what to tell about the change.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Report {
    pub status: NodeStatus,
    pub notice: Option<Notice>,
    /// The takeover note when this node just became primary (one Event per failover, from
    /// the node taking over; a demotion alone shows in the conditions as "no primary").
    pub takeover: Option<String>,
}

/// A change in whether the router's reconcile fails, for an Event.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Notice {
    /// It started failing (Warning, with the Degraded reason).
    Failing { reason: &'static str, message: String },
    /// It succeeds again (Normal).
    Recovered,
}

/// The entry after a pass of `enforced`'s router, given the entry before it.
pub(super) fn after_pass(
    node: &str,
    previous: Option<&NodeStatus>,
    enforced: &Enforced,
    event: &RouterEvent,
    vip_present: Option<bool>,
    now: &str,
) -> Report {
    let origin = &enforced.assigned.origin;
    let role = event.role.as_str().to_string();
    let held = match &event.outcome {
        PassOutcome::Converged { .. } => event.held,
        PassOutcome::Failed { .. } => previous.is_some_and(|p| p.held),
    };
    let (ready, mut degraded, mut last_error) = match &event.outcome {
        PassOutcome::Converged { wait, degraded, .. } => {
            let ready = match wait {
                Some(Wait::DeviceMissing) => ("False", "DeviceMissing", describe_wait(wait)),
                Some(Wait::L2NotWired) => ("False", "L2NotWired", describe_wait(wait)),
                _ => ("True", "Converged", String::new()),
            };
            let (read_only, failed): (Vec<_>, Vec<_>) = degraded.iter().partition(|d| d.read_only);
            // What a read-only /proc/sys refuses is the same on every pass and every router
            // of the node, and stays so: named in Degraded, but no error and no Warning.
            let read_only = (!read_only.is_empty()).then(|| {
                let settings: Vec<String> =
                    read_only.iter().map(|d| d.action.to_string()).collect();
                format!("/proc/sys is read-only here, not applied: {}", settings.join(", "))
            });
            if failed.is_empty() {
                let degraded = match read_only {
                    Some(message) => ("True", READ_ONLY, message),
                    None => ("False", "Converged", String::new()),
                };
                (ready, degraded, None)
            } else {
                // Forwarding, but not as configured: Ready stays as the wait says, the failed
                // settings are named in Degraded and count as the last error.
                let error = failed.iter().map(|d| d.error.as_str()).collect::<Vec<_>>().join("; ");
                let message = read_only.map_or(error.clone(), |r| format!("{error}; {r}"));
                (ready, ("True", "SettingsFailed", message), Some(error))
            }
        }
        PassOutcome::Failed { error, applied_fail_safe, .. } => {
            let mut message = error.clone();
            if let Some(guard) = applied_fail_safe {
                message.push_str(&format!("; fail-safe applied: {guard}"));
            }
            let failed = ("True", "ReconcileFailed", message.clone());
            (("False", "ReconcileFailed", message.clone()), failed, Some(message))
        }
    };
    if let Some(note) = &enforced.ignored {
        // The router runs with what discovery found; the ignored overrides are the error.
        let message = match &last_error {
            Some(error) => format!("{error}; {note}"),
            None => note.clone(),
        };
        if degraded.0 == "False" {
            degraded = ("True", "OverridesIgnored", message.clone());
        }
        last_error = Some(message);
    }
    let was_failing = previous.is_some_and(|p| p.last_error.is_some());
    let notice = match (&last_error, was_failing) {
        (Some(error), false) => {
            Some(Notice::Failing { reason: degraded.1, message: error.clone() })
        }
        (None, true) => Some(Notice::Recovered),
        _ => None,
    };
    let takeover = event
        .transition_from
        .filter(|_| event.role == Role::Primary)
        .map(|from| format!("{node}: {} -> {role}{}", from.as_str(), steps(&event.outcome)));
    let last_transition_time = match previous {
        Some(p) if p.role == role => p.last_transition_time.clone(),
        _ => Some(now.to_string()),
    };
    let conditions = vec![
        condition(previous, "Ready", ready, origin, now),
        condition(previous, "Degraded", degraded, origin, now),
    ];
    let status = NodeStatus {
        node: node.to_string(),
        role,
        held,
        vip_present,
        strategy: Some(enforced.strategy().as_str().to_string()),
        last_transition_time,
        last_error,
        observed_generation: origin.generation,
        conditions,
    };
    Report { status, notice, takeover }
}

/// The entry for an object listing this node that the agent cannot enforce.
pub(super) fn after_rejection(
    node: &str,
    previous: Option<&NodeStatus>,
    origin: &Origin,
    error: &str,
    now: &str,
) -> Report {
    let notice = (previous.and_then(|p| p.last_error.as_deref()) != Some(error))
        .then(|| Notice::Failing { reason: "InvalidSpec", message: error.to_string() });
    let conditions = vec![
        condition(previous, "Ready", ("False", "InvalidSpec", error.to_string()), origin, now),
        condition(previous, "Degraded", ("True", "InvalidSpec", error.to_string()), origin, now),
    ];
    let status = NodeStatus {
        node: node.to_string(),
        role: Role::Unknown.as_str().into(),
        held: false,
        vip_present: None,
        strategy: None,
        last_transition_time: previous.and_then(|p| p.last_transition_time.clone()),
        last_error: Some(error.to_string()),
        observed_generation: origin.generation,
        conditions,
    };
    Report { status, notice, takeover: None }
}

/// A condition of this node's entry that keeps its transition time while its status stays
/// the same.
fn condition(
    previous: Option<&NodeStatus>,
    type_: &str,
    value: (&str, &str, String),
    origin: &Origin,
    now: &str,
) -> Condition {
    let before = previous.map(|p| p.conditions.as_slice()).unwrap_or_default();
    Condition::keeping_time(before, type_, value, origin.generation, now)
}

fn describe_wait(wait: &Option<Wait>) -> String {
    match wait {
        Some(Wait::DeviceMissing) => "the gateway device does not exist yet".into(),
        Some(Wait::L2NotWired) => "waiting for the L2 agent to wire the port".into(),
        Some(Wait::SilenceSettling { .. }) => "silence settling".into(),
        None => String::new(),
    }
}

fn steps(outcome: &PassOutcome) -> String {
    match outcome {
        PassOutcome::Converged { applied, .. } if !applied.is_empty() => {
            let steps: Vec<String> = applied.iter().map(Action::to_string).collect();
            format!(" ({})", steps.join(", "))
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use hagw_core::observed::Ipv6Sysctl;
    use hagw_core::supervisor::DegradedSetting;

    use super::*;
    use crate::k8s::source::Assigned;

    const T0: &str = "2026-12-03T10:00:00Z";
    const T1: &str = "2026-12-03T10:00:05Z";

    fn enforced(ignored: Option<&str>) -> Enforced {
        let origin =
            Origin { namespace: "hagw".into(), name: "r1".into(), uid: None, generation: Some(3) };
        Enforced {
            assigned: Assigned { origin, spec: hagw_core::testing::router("r1") },
            ignored: ignored.map(str::to_string),
            discovered: false,
        }
    }

    fn event(role: Role, from: Option<Role>, held: bool, outcome: PassOutcome) -> RouterEvent {
        RouterEvent {
            router: "r1".into(),
            role,
            transition_from: from,
            started: SystemTime::UNIX_EPOCH,
            duration: Duration::ZERO,
            outcome,
            held,
            tx_packets: None,
            found_exposed: !held,
        }
    }

    fn converged(applied: Vec<Action>, degraded: Vec<DegradedSetting>) -> PassOutcome {
        PassOutcome::Converged { applied, wait: None, degraded, takeover: None }
    }

    fn failed(error: &str) -> PassOutcome {
        PassOutcome::Failed {
            error: error.into(),
            transient: true,
            failed_action: Some(Action::HoldL2),
            applied_fail_safe: Some(Action::SetLinkDown),
        }
    }

    fn cond<'a>(status: &'a NodeStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_held_standby_is_ready_and_not_degraded() {
        let ev = event(Role::Standby, None, true, converged(vec![Action::HoldL2], vec![]));
        let report = after_pass("n1", None, &enforced(None), &ev, Some(false), T0);
        let s = &report.status;
        assert_eq!((s.role.as_str(), s.held, s.vip_present), ("standby", true, Some(false)));
        assert_eq!(s.strategy.as_deref(), Some("l2-hold"));
        assert_eq!((s.last_error.clone(), s.observed_generation), (None, Some(3)));
        assert_eq!(cond(s, "Ready").status, "True");
        assert_eq!(
            (cond(s, "Degraded").status.as_str(), cond(s, "Ready").observed_generation),
            ("False", Some(3))
        );
        assert_eq!(s.last_transition_time.as_deref(), Some(T0));
        assert_eq!((report.notice, report.takeover), (None, None));
    }

    fn setting(sysctl: Ipv6Sysctl, value: u32, error: &str, read_only: bool) -> DegradedSetting {
        DegradedSetting {
            action: Action::SetSysctl { sysctl, value },
            error: error.into(),
            read_only,
        }
    }

    #[test]
    fn a_failed_side_setting_degrades_a_forwarding_primary() {
        let degraded = vec![setting(Ipv6Sysctl::AcceptRa, 0, "set ipv6 accept_ra: EIO", false)];
        let ev = event(Role::Primary, None, false, converged(vec![], degraded));
        let report = after_pass("n1", None, &enforced(None), &ev, Some(true), T0);
        let s = &report.status;
        assert_eq!(cond(s, "Ready").status, "True", "it forwards");
        assert_eq!(cond(s, "Degraded").reason, "SettingsFailed");
        assert_eq!(s.last_error.as_deref(), Some("set ipv6 accept_ra: EIO"));
        assert_eq!(
            report.notice,
            Some(Notice::Failing {
                reason: "SettingsFailed",
                message: "set ipv6 accept_ra: EIO".into()
            })
        );
    }

    #[test]
    fn a_read_only_proc_sys_is_a_degraded_setting_not_an_error() {
        let forwarding = setting(Ipv6Sysctl::Forwarding, 1, "Read-only file system", true);
        let ev = event(Role::Primary, None, false, converged(vec![], vec![forwarding.clone()]));
        let first = after_pass("n1", None, &enforced(None), &ev, Some(true), T0);
        let s = &first.status;
        assert_eq!(cond(s, "Ready").status, "True");
        let degraded = cond(s, "Degraded");
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", READ_ONLY));
        assert_eq!(
            degraded.message,
            "/proc/sys is read-only here, not applied: set ipv6 forwarding = 1"
        );
        assert_eq!((s.last_error.clone(), first.notice.clone()), (None, None));
        // The next pass says the same: nothing to write.
        let again = after_pass("n1", Some(s), &enforced(None), &ev, Some(true), T1);
        assert_eq!(&again.status, s);
        // Another failure beside it is an error, and both are named in Degraded.
        let other = setting(Ipv6Sysctl::DisableIpv6, 0, "set ipv6 disable_ipv6: EIO", false);
        let ev = event(Role::Primary, None, false, converged(vec![], vec![forwarding, other]));
        let mixed = after_pass("n1", Some(s), &enforced(None), &ev, Some(true), T1);
        assert_eq!(mixed.status.last_error.as_deref(), Some("set ipv6 disable_ipv6: EIO"));
        let degraded = cond(&mixed.status, "Degraded");
        assert_eq!(degraded.reason, "SettingsFailed");
        assert!(degraded.message.ends_with("not applied: set ipv6 forwarding = 1"), "{degraded:?}");
        assert!(matches!(mixed.notice, Some(Notice::Failing { .. })));
    }

    #[test]
    fn a_failed_pass_keeps_the_hold_it_cannot_see_and_warns_once() {
        let ok = event(Role::Standby, None, true, converged(vec![], vec![]));
        let before = after_pass("n1", None, &enforced(None), &ok, None, T0).status;
        let bad = event(Role::Standby, None, false, failed("ovsdb down"));
        let first = after_pass("n1", Some(&before), &enforced(None), &bad, None, T1);
        assert!(first.status.held, "a failed pass says nothing about the hold");
        let message = "ovsdb down; fail-safe applied: set link down";
        assert_eq!(first.status.last_error.as_deref(), Some(message));
        assert_eq!(cond(&first.status, "Ready").reason, "ReconcileFailed");
        assert_eq!(cond(&first.status, "Ready").last_transition_time, T1);
        assert!(matches!(first.notice, Some(Notice::Failing { reason: "ReconcileFailed", .. })));
        let again = after_pass("n1", Some(&first.status), &enforced(None), &bad, None, T1);
        assert_eq!(again.notice, None, "one Warning per run of failures");
        let back = after_pass("n1", Some(&again.status), &enforced(None), &ok, None, T1);
        assert_eq!(back.notice, Some(Notice::Recovered));
        assert_eq!(back.status.last_error, None);
    }

    #[test]
    fn transition_times_move_only_with_the_role_and_the_condition() {
        let standby = event(Role::Standby, None, true, converged(vec![], vec![]));
        let before = after_pass("n1", None, &enforced(None), &standby, None, T0).status;
        let same = after_pass("n1", Some(&before), &enforced(None), &standby, None, T1).status;
        assert_eq!(same.last_transition_time.as_deref(), Some(T0));
        assert_eq!(cond(&same, "Ready").last_transition_time, T0);
        let takeover = event(
            Role::Primary,
            Some(Role::Standby),
            false,
            converged(vec![Action::ReleaseL2], vec![]),
        );
        let report = after_pass("n1", Some(&same), &enforced(None), &takeover, Some(true), T1);
        assert_eq!(report.status.last_transition_time.as_deref(), Some(T1));
        assert_eq!(cond(&report.status, "Ready").last_transition_time, T0, "still True");
        let note = report.takeover.expect("the node taking over tells");
        assert!(note.starts_with("n1: standby -> primary ("), "{note}");
        let demoted = event(Role::Standby, Some(Role::Primary), true, converged(vec![], vec![]));
        let report = after_pass("n1", Some(&report.status), &enforced(None), &demoted, None, T1);
        assert_eq!(report.takeover, None, "a demotion alone is no takeover");
    }

    #[test]
    fn ignored_overrides_are_the_error_of_a_converged_router() {
        let ev = event(Role::Standby, None, true, converged(vec![], vec![]));
        let note = "override of backend ignored: discovered routers keep theirs";
        let report = after_pass("n1", None, &enforced(Some(note)), &ev, None, T0);
        assert_eq!(cond(&report.status, "Degraded").reason, "OverridesIgnored");
        assert_eq!(report.status.last_error.as_deref(), Some(note));
    }

    #[test]
    fn a_rejected_object_is_not_ready_and_warns_when_its_error_changes() {
        let origin = enforced(None).assigned.origin;
        let first = after_rejection("n1", None, &origin, "spec.nodes: empty", T0);
        assert_eq!(first.status.role, "unknown");
        assert_eq!(cond(&first.status, "Ready").reason, "InvalidSpec");
        assert_eq!(cond(&first.status, "Degraded").status, "True");
        assert!(matches!(first.notice, Some(Notice::Failing { reason: "InvalidSpec", .. })));
        let same = after_rejection("n1", Some(&first.status), &origin, "spec.nodes: empty", T1);
        assert_eq!(same.notice, None);
        let other = after_rejection("n1", Some(&same.status), &origin, "spec.id: missing", T1);
        assert!(other.notice.is_some());
    }
}
