//! The reconcile loop driven through a model dataplane: retries, fail-safe, verification.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hagw_core::action::Action;
use hagw_core::error::{Error, ErrorKind};
use hagw_core::model::{Role, RouterSpec, Strategy};
use hagw_core::observed::{HoldState, PortState};
use hagw_core::reconcile::{
    Dataplane, PassReport, ReconcileError, RetryPolicy, RouterMemory, reconcile_router,
};
use hagw_core::supervisor::{PassOutcome, WorkerConfig, spawn_router};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// A port that behaves like the action model, with scripted failures.
struct ModelDataplane {
    port: Mutex<PortState>,
    /// (action kind or the action itself as displayed, kind of error, how many times to
    /// fail; u32::MAX = always)
    failures: Mutex<Vec<(&'static str, ErrorKind, u32)>>,
    /// Actions the "kernel" silently ignores, to provoke verification failures.
    ignored: &'static [&'static str],
    /// Actions undone right after they are applied, once: someone else changed the port back.
    undone_once: Mutex<Vec<&'static str>>,
    /// The switch side gets carrier, and so becomes wired, only once the link is up (a
    /// Linux bridge tap behind a gateway veth).
    wired_by_link_up: bool,
    attempts: Mutex<Vec<&'static str>>,
    /// Every observation and step with its urgency ([`hagw_core::lane`]), in order.
    lanes: Mutex<Vec<(&'static str, bool)>>,
    /// How often a worker said its router rests ([`Dataplane::at_rest`]).
    rests: AtomicUsize,
}

impl ModelDataplane {
    fn new(port: PortState) -> Self {
        ModelDataplane {
            port: Mutex::new(port),
            failures: Mutex::new(vec![]),
            ignored: &[],
            undone_once: Mutex::new(vec![]),
            wired_by_link_up: false,
            attempts: Mutex::new(vec![]),
            lanes: Mutex::new(vec![]),
            rests: AtomicUsize::new(0),
        }
    }

    fn failing(self, kind: &'static str, error: ErrorKind, times: u32) -> Self {
        self.failures.lock().unwrap().push((kind, error, times));
        self
    }

    fn port(&self) -> PortState {
        self.port.lock().unwrap().clone()
    }
}

impl Dataplane for ModelDataplane {
    async fn observe(&self, _spec: &RouterSpec) -> Result<PortState, Error> {
        self.lanes.lock().unwrap().push(("observe", hagw_core::lane::is_urgent()));
        Ok(self.port())
    }

    async fn apply(&self, _spec: &RouterSpec, action: &Action) -> Result<(), Error> {
        self.attempts.lock().unwrap().push(action.kind());
        self.lanes.lock().unwrap().push((action.kind(), hagw_core::lane::is_urgent()));
        for (kind, error, times) in self.failures.lock().unwrap().iter_mut() {
            if (*kind == action.kind() || *kind == action.to_string()) && *times > 0 {
                *times = times.saturating_sub(1);
                return Err(Error::new(*error, action, "model", "scripted failure"));
            }
        }
        let mut undone = self.undone_once.lock().unwrap();
        if let Some(i) = undone.iter().position(|k| *k == action.kind()) {
            undone.remove(i);
            return Ok(());
        }
        if !self.ignored.contains(&action.kind()) {
            let mut port = self.port.lock().unwrap();
            action.apply_to(&mut port);
            if self.wired_by_link_up && *action == Action::SetLinkUp {
                port.l2.wired = true;
            }
        }
        Ok(())
    }

    fn at_rest(&self, _spec: &RouterSpec) {
        self.rests.fetch_add(1, Ordering::Relaxed);
    }
}

/// One pass with no memory of earlier passes and the default retry policy.
async fn fresh_pass(
    dp: &ModelDataplane,
    spec: &RouterSpec,
    role: Role,
) -> Result<PassReport, ReconcileError> {
    reconcile_router(dp, spec, role, &mut RouterMemory::default(), &RetryPolicy::default(), None)
        .await
}

fn attempts_of(dp: &ModelDataplane, kind: &str) -> usize {
    dp.attempts.lock().unwrap().iter().filter(|k| **k == kind).count()
}

#[tokio::test(start_paused = true)]
async fn standby_pass_holds_silences_and_verifies() {
    let dp = ModelDataplane::new(noisy_port(HoldState::Released));
    let spec = spec(Strategy::L2Hold, ovs());
    let mut memory = RouterMemory::default();
    let report =
        reconcile_router(&dp, &spec, Role::Standby, &mut memory, &RetryPolicy::default(), None)
            .await
            .unwrap();
    assert_eq!(report.applied[0], Action::HoldL2);
    assert!(dp.port().is_silent() && !dp.port().is_exposed());
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_within_the_bound() {
    let dp = ModelDataplane::new(noisy_port(HoldState::Released)).failing(
        "hold-l2",
        ErrorKind::Transient,
        2,
    );
    let spec = spec(Strategy::L2Hold, ovs());
    let policy = RetryPolicy { attempts: 3, ..RetryPolicy::default() };
    reconcile_router(&dp, &spec, Role::Standby, &mut RouterMemory::default(), &policy, None)
        .await
        .unwrap();
    assert_eq!(attempts_of(&dp, "hold-l2"), 3);
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_are_not_retried() {
    let dp = ModelDataplane::new(quiet_held_port()).failing(
        "release-l2",
        ErrorKind::Permanent,
        u32::MAX,
    );
    let spec = spec(Strategy::L2Hold, ovs());
    let err = fresh_pass(&dp, &spec, Role::Primary).await.unwrap_err();
    assert!(matches!(
        err,
        ReconcileError::Apply { action: Action::ReleaseL2, fail_safe: None, .. }
    ));
    assert!(!err.is_transient());
    assert_eq!(attempts_of(&dp, "release-l2"), 1);
}

#[tokio::test(start_paused = true)]
async fn failed_hold_on_an_exposed_standby_falls_back_to_link_down() {
    let dp = ModelDataplane::new(noisy_port(HoldState::Unknown)).failing(
        "hold-l2",
        ErrorKind::Transient,
        u32::MAX,
    );
    let spec = spec(Strategy::L2Hold, ovs());
    let err = fresh_pass(&dp, &spec, Role::Standby).await.unwrap_err();
    let ReconcileError::Apply { fail_safe, .. } = &err else { panic!("{err}") };
    assert_eq!(fail_safe.as_ref(), Some(&Action::SetLinkDown));
    assert!(!dp.port().is_exposed(), "a failed hold must not leave the standby exposed");
    assert!(err.to_string().contains("fail-safe applied: set link down"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_change_that_does_not_stick_fails_verification() {
    let mut dp = ModelDataplane::new(quiet_held_port());
    dp.ignored = &["add-route"];
    let spec = spec(Strategy::L2Hold, ovs());
    let err = fresh_pass(&dp, &spec, Role::Primary).await.unwrap_err();
    assert!(
        matches!(&err, ReconcileError::Verify { remaining } if remaining[0].kind() == "add-route"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn takeover_announces_once() {
    let dp = ModelDataplane::new(quiet_held_port());
    let spec = spec(Strategy::L2Hold, ovs());
    let mut memory = RouterMemory::default();
    let policy = RetryPolicy::default();
    reconcile_router(&dp, &spec, Role::Standby, &mut memory, &policy, None).await.unwrap();
    let first =
        reconcile_router(&dp, &spec, Role::Primary, &mut memory, &policy, None).await.unwrap();
    assert_eq!(first.applied.last().unwrap().kind(), "announce");
    let second =
        reconcile_router(&dp, &spec, Role::Primary, &mut memory, &policy, None).await.unwrap();
    assert!(second.applied.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_pass_follows_up_on_what_its_own_steps_made_possible() {
    // A link-down standby on a Linux bridge: held, link down, its tap without carrier.
    let mut port = quiet_held_port();
    port.link.as_mut().unwrap().admin_up = false;
    port.l2.wired = false;
    let mut dp = ModelDataplane::new(port);
    dp.wired_by_link_up = true;
    let lb =
        hagw_core::model::L2BackendSpec::Linuxbridge { port: "tap1".into(), bridge: "brq1".into() };
    let spec = spec(Strategy::LinkDown, lb);
    let report = fresh_pass(&dp, &spec, Role::Primary).await.unwrap();
    let kinds: Vec<_> = report.applied.iter().map(Action::kind).collect();
    assert!(kinds.contains(&"release-l2") && kinds.last() == Some(&"announce"), "{kinds:?}");
    assert!(dp.port().is_exposed());
    assert_eq!(report.wait, None);
}

/// A role change's work is urgent (served first by the namespace threads) up to a primary's
/// announcement or a standby's guard; verifying it, and passes without a role change, are
/// not. Over two rounds here: raising the link makes the release possible.
#[tokio::test(start_paused = true)]
async fn a_role_change_is_urgent_until_announced_or_guarded_then_not() {
    let mut port = quiet_held_port();
    port.link.as_mut().unwrap().admin_up = false;
    port.l2.wired = false;
    let mut dp = ModelDataplane::new(port);
    dp.wired_by_link_up = true;
    let lb =
        hagw_core::model::L2BackendSpec::Linuxbridge { port: "tap1".into(), bridge: "brq1".into() };
    let spec = spec(Strategy::LinkDown, lb);
    let policy = RetryPolicy::default();
    let mut memory = RouterMemory::default();
    let take = |dp: &ModelDataplane| std::mem::take(&mut *dp.lanes.lock().unwrap());
    // The steps up to `end` (excluded) urgent, the rest (at least one) not.
    let split = |lanes: &[(&'static str, bool)], end: usize| {
        let (critical, rest) = lanes.split_at(end);
        assert!(critical.iter().all(|(_, u)| *u), "{lanes:?}");
        assert!(!rest.is_empty() && rest.iter().all(|(_, u)| !*u), "{lanes:?}");
        critical.iter().map(|(k, _)| *k).collect::<Vec<_>>()
    };

    reconcile_router(&dp, &spec, Role::Primary, &mut memory, &policy, None).await.unwrap();
    let lanes = take(&dp);
    let critical = split(&lanes, lanes.iter().position(|(k, _)| *k == "announce").unwrap() + 1);
    let observes = critical.iter().filter(|k| **k == "observe").count();
    assert!(critical.contains(&"release-l2") && observes >= 2, "{critical:?}");
    // A resync: nothing changed, nothing urgent.
    reconcile_router(&dp, &spec, Role::Primary, &mut memory, &policy, None).await.unwrap();
    assert!(take(&dp).iter().all(|(_, u)| !*u));

    let policy = RetryPolicy { verify_attempts: 1, ..policy };
    reconcile_router(&dp, &spec, Role::Standby, &mut memory, &policy, None).await.unwrap();
    // The whole first round (guards, then silence), not its verification.
    let lanes = take(&dp);
    let last_step = lanes.iter().rposition(|(k, _)| *k != "observe").unwrap();
    let critical = split(&lanes, last_step + 1);
    assert_eq!(critical[..3], ["observe", "hold-l2", "link-down"]);
}

/// A reported change (the worker's kick: say the OVS port the hold waits for appeared) ends
/// the retry backoff at once; without one the retry waits the backoff out. Virtual time.
#[tokio::test(start_paused = true)]
async fn a_retry_comes_when_a_change_is_reported_not_after_the_backoff() {
    let spec = spec(Strategy::L2Hold, ovs());
    let policy = RetryPolicy { backoff: Duration::from_secs(10), ..RetryPolicy::default() };
    for woken in [false, true] {
        let dp = ModelDataplane::new(noisy_port(HoldState::Unknown)).failing(
            "hold-l2",
            ErrorKind::Transient,
            1,
        );
        let wake = Notify::new();
        wake.notify_one();
        let started = Instant::now();
        let mut memory = RouterMemory::default();
        let wake = woken.then_some(&wake);
        reconcile_router(&dp, &spec, Role::Standby, &mut memory, &policy, wake).await.unwrap();
        assert_eq!(attempts_of(&dp, "hold-l2"), 2);
        assert_eq!(started.elapsed() >= policy.backoff, !woken, "woken: {woken}");
    }
}

/// A step undone by someone else while the pass verifies it (the L3 agent raising a standby's
/// link again) is applied again when the change is reported, instead of being waited for
/// until verification gives up.
#[tokio::test(start_paused = true)]
async fn a_step_undone_during_verification_is_applied_again_when_reported() {
    let spec = spec(Strategy::LinkDown, ovs());
    for woken in [false, true] {
        let dp = ModelDataplane::new(noisy_port(HoldState::Released));
        dp.undone_once.lock().unwrap().push("link-down");
        let wake = Notify::new();
        wake.notify_one();
        let mut memory = RouterMemory::default();
        let policy = RetryPolicy::default();
        let wake = woken.then_some(&wake);
        let result = reconcile_router(&dp, &spec, Role::Standby, &mut memory, &policy, wake).await;
        if woken {
            let report = result.unwrap();
            let downs = report.applied.iter().filter(|a| **a == Action::SetLinkDown).count();
            assert_eq!(downs, 2);
            assert!(!dp.port().link.unwrap().admin_up);
        } else {
            let err = result.unwrap_err();
            assert!(matches!(&err, ReconcileError::Verify { .. }), "{err}");
        }
    }
}

/// A standby held and silenced as the L3 agent leaves it after a reboot, taking over: link
/// down, no addresses, IPv6 forwarding off.
fn standby_to_take_over() -> PortState {
    let mut port = quiet_held_port();
    let link = port.link.as_mut().unwrap();
    link.admin_up = false;
    port
}

/// A sysctl that cannot be written (read-only `/proc/sys` in a container) does not keep a
/// primary dark: link, addresses, routes, release and announcement all happen, and the
/// failed setting is reported as degraded.
#[tokio::test(start_paused = true)]
async fn a_failed_side_setting_does_not_stop_a_primary() {
    let dp = ModelDataplane::new(standby_to_take_over()).failing(
        "set-sysctl",
        ErrorKind::Permanent,
        u32::MAX,
    );
    let spec = spec(Strategy::L2Hold, ovs());
    let report = fresh_pass(&dp, &spec, Role::Primary).await.unwrap();
    let kinds: Vec<_> = report.applied.iter().map(Action::kind).collect();
    for kind in ["link-up", "add-address", "add-route", "release-l2", "announce"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert_eq!(kinds.last(), Some(&"announce"));
    let degraded: Vec<_> = report.degraded.iter().map(|f| f.action.to_string()).collect();
    assert_eq!(degraded, ["set ipv6 forwarding = 1"]);
    let port = dp.port();
    assert!(port.is_exposed());
    assert_eq!(port.link.unwrap().addresses.len(), spec.gateway_addresses.len());
}

/// A failed traffic step of a primary fails the pass, but the steps that do not depend on it
/// are still applied; steps that do (the announcement on a failed release) are not, and stay
/// pending for the next pass.
#[tokio::test(start_paused = true)]
async fn a_failed_release_still_configures_the_primary_and_keeps_the_announcement() {
    let dp = ModelDataplane::new(standby_to_take_over()).failing(
        "release-l2",
        ErrorKind::Transient,
        u32::MAX,
    );
    let spec = spec(Strategy::L2Hold, ovs());
    let mut memory = RouterMemory::default();
    let policy = RetryPolicy::default();
    let err =
        reconcile_router(&dp, &spec, Role::Primary, &mut memory, &policy, None).await.unwrap_err();
    assert!(matches!(&err, ReconcileError::Apply { action: Action::ReleaseL2, .. }), "{err}");
    assert!(err.is_transient());
    let port = dp.port();
    let link = port.link.as_ref().unwrap();
    assert!(link.admin_up && link.addresses.len() == 3 && link.routes.len() == 1);
    assert_eq!(attempts_of(&dp, "announce"), 0, "announced into a held port");

    dp.failures.lock().unwrap().clear();
    let report =
        reconcile_router(&dp, &spec, Role::Primary, &mut memory, &policy, None).await.unwrap();
    let kinds: Vec<_> = report.applied.iter().map(Action::kind).collect();
    assert_eq!(kinds, ["release-l2", "announce"]);
}

/// On a standby a failed side setting leaves the port guarded and the rest of the pass goes
/// on: addresses are removed, and the hold is kept since silence was never observed.
#[tokio::test(start_paused = true)]
async fn a_failed_side_setting_leaves_a_standby_guarded() {
    for (strategy, backend) in [
        (Strategy::SilenceOnly, ovs()),
        (Strategy::SilenceOnly, generic()),
        (Strategy::L2Hold, ovs()),
    ] {
        let mut port = noisy_port(HoldState::Released);
        port.link.as_mut().unwrap().addresses.push("203.0.113.10/24".parse().unwrap());
        let dp = ModelDataplane::new(port).failing("set-sysctl", ErrorKind::Permanent, u32::MAX);
        let spec = spec(strategy, backend);
        let report = fresh_pass(&dp, &spec, Role::Standby).await.unwrap();
        assert!(!report.degraded.is_empty(), "{strategy:?}");
        let port = dp.port();
        assert!(!port.is_exposed(), "{strategy:?}: {port:?}");
        assert!(port.link.unwrap().addresses.is_empty(), "{strategy:?}");
    }
}

/// A hand-back where `accept_ra` and `forwarding` cannot be written (a non-privileged pod):
/// the first pass silences the rest and reports both, the next one (after the silence settle
/// time) releases the hold without trying them again. Enforcing instead, the same port is
/// never released.
#[tokio::test(start_paused = true)]
async fn a_hand_back_releases_a_port_it_cannot_fully_silence() {
    let mut port = noisy_port(HoldState::Held);
    port.link.as_mut().unwrap().admin_up = false;
    let spec = spec(Strategy::LinkDown, ovs());
    let policy = RetryPolicy::default();
    for hand_back in [true, false] {
        let dp = ModelDataplane::new(port.clone())
            .failing("set ipv6 accept_ra = 0", ErrorKind::Permanent, u32::MAX)
            .failing("set ipv6 forwarding = 0", ErrorKind::Permanent, u32::MAX);
        let mut memory =
            if hand_back { RouterMemory::hand_back() } else { RouterMemory::default() };
        let mut passes = 0;
        let report = loop {
            passes += 1;
            let report = reconcile_router(&dp, &spec, Role::Standby, &mut memory, &policy, None)
                .await
                .unwrap();
            match report.wait {
                Some(hagw_core::planner::Wait::SilenceSettling { remaining }) if passes < 5 => {
                    tokio::time::sleep(remaining).await
                }
                _ => break report,
            }
        };
        let port = dp.port();
        if !hand_back {
            assert!(port.l2.hold.is_held(), "enforcing released a port never silent");
            continue;
        }
        assert_eq!(passes, 2);
        assert!(report.applied.contains(&Action::ReleaseL2), "{:?}", report.applied);
        assert!(port.is_exposed() && !port.is_silent(), "{port:?}");
        let link = port.link.unwrap();
        assert!(link.addresses.is_empty() && link.ipv6.addr_gen_mode == 1, "{link:?}");
        let unapplied: Vec<_> = memory.unapplied().iter().map(ToString::to_string).collect();
        assert_eq!(unapplied, ["set ipv6 accept_ra = 0", "set ipv6 forwarding = 0"]);
        // addr_gen_mode, and each unwritable one once: the second pass does not try them.
        assert_eq!(attempts_of(&dp, "set-sysctl"), 3);
    }
}

/// A worker tells the dataplane when its router rests (a resync's pass that found nothing
/// to change and nothing to wait for), so that it can close what it keeps open for passes;
/// not after a pass that changed the port, nor after an event's (more tend to follow).
#[tokio::test(start_paused = true)]
async fn a_worker_tells_the_dataplane_when_its_router_rests() {
    let dp = Arc::new(ModelDataplane::new(noisy_port(HoldState::Released)));
    let (events, mut passes) = mpsc::unbounded_channel();
    let spec = spec(Strategy::L2Hold, ovs());
    let config = WorkerConfig::default();
    let (router, worker) =
        spawn_router(Arc::clone(&dp), spec, Role::Standby, RouterMemory::default(), config, events);
    let mut next = async || {
        let pass = passes.recv().await.expect("the worker runs");
        let PassOutcome::Converged { applied, wait, .. } = pass.outcome else {
            panic!("{:?}", pass.outcome)
        };
        (applied.is_empty() && wait.is_none(), dp.rests.load(Ordering::Relaxed))
    };
    // The first pass holds and silences the port.
    assert_eq!(next().await, (false, 0));
    // An event's pass finds nothing to do: no rest.
    router.kick();
    assert_eq!(next().await, (true, 0));
    // The resync's does, told before the pass is reported.
    assert_eq!(next().await, (true, 1));
    worker.abort();
}
