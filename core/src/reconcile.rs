//! One reconcile pass for one router: observe, plan, apply with bounded retry, re-observe
//! and verify. The I/O goes through the [`Dataplane`] boundary, implemented by the backends.

use std::future::Future;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::action::Action;
use crate::error::Error;
use crate::lane;
use crate::model::{Role, RouterSpec};
use crate::observed::{Observed, PortState};
use crate::planner::{HoldOnArrival, Plan, Wait, partial_hold_matters, plan};

/// Reads and changes the real port. Implemented by the backends; the reconcile loop is
/// generic over it so tests can drive it with a model.
pub trait Dataplane: Sync {
    fn observe(&self, spec: &RouterSpec) -> impl Future<Output = Result<PortState, Error>> + Send;
    /// [`Dataplane::observe`] for a pass whose plan cannot tell a partial L2 hold from a
    /// released one (`partial_matters` false: [`crate::planner::partial_hold_matters`]): a
    /// backend may then report a hold whose first half it found gone as released without
    /// reading the other half.
    fn observe_for(
        &self,
        spec: &RouterSpec,
        partial_matters: bool,
    ) -> impl Future<Output = Result<PortState, Error>> + Send {
        let _ = partial_matters;
        self.observe(spec)
    }
    fn apply(
        &self,
        spec: &RouterSpec,
        action: &Action,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Hands the backend the plan's standing decision for the time until the next pass
    /// ([`HoldOnArrival`]), which it applies when it sees the port arrive. Given with every
    /// plan of a pass, before its steps are applied (a takeover's plan says
    /// [`HoldOnArrival::Never`] before it releases). Backends that see arrivals no sooner than
    /// a pass ignore it.
    fn hold_on_arrival(&self, _spec: &RouterSpec, _hold: HoldOnArrival) {}
    /// A resync's pass found nothing to change and nothing to wait for: the router rests
    /// until an event or its next resync. A backend may let go of what it keeps open between
    /// a pass's steps (a namespace's netlink connection); the next pass opens it again.
    /// Every resync round of a thousand resting routers would otherwise keep hundreds of
    /// them open at once.
    fn at_rest(&self, _spec: &RouterSpec) {}
}

/// What the loop remembers about one router between passes; the planner gets it as part of
/// [`Observed`].
#[derive(Debug, Clone, Default)]
pub struct RouterMemory {
    silent_since: Option<Instant>,
    announce_pending: bool,
    last_role: Option<Role>,
    retired: Vec<IpNet>,
    hold_only: bool,
    hand_back: bool,
    /// In a hand-back: the side settings that failed in an earlier pass, not tried again
    /// and counted as applied for the silence it waits for ([`Observed::hand_back`]).
    unapplied: Vec<Action>,
}

impl RouterMemory {
    /// For a router whose spec changed: the addresses its previous spec had and the new one
    /// has not ([`Observed::retired_addresses`]).
    pub fn retiring(retired: Vec<IpNet>) -> RouterMemory {
        RouterMemory { retired, ..RouterMemory::default() }
    }

    /// For a router whose spec its source has not confirmed yet ([`Observed::hold_only`]).
    pub fn hold_only() -> RouterMemory {
        RouterMemory { hold_only: true, ..RouterMemory::default() }
    }

    /// For a router being handed back ([`Observed::hand_back`]).
    pub fn hand_back() -> RouterMemory {
        RouterMemory { hand_back: true, ..RouterMemory::default() }
    }

    /// The side settings a hand-back could not apply (reported by its passes as degraded).
    pub fn unapplied(&self) -> &[Action] {
        &self.unapplied
    }

    /// Combines a fresh observation with what was remembered, at time `now`.
    pub fn observed(&mut self, role: Role, port: PortState, now: Instant) -> Observed {
        if self.last_role != Some(role) {
            // Every arrival at primary (including hagw starting on one) announces once.
            self.announce_pending = role == Role::Primary;
            self.last_role = Some(role);
        }
        let silent = match self.hand_back {
            true => port.is_silent_but_for(&self.unapplied),
            false => port.is_silent(),
        };
        if silent {
            self.silent_since.get_or_insert(now);
        } else {
            self.silent_since = None;
        }
        let silent_for = self.silent_since.map(|t| now.duration_since(t)).unwrap_or_default();
        Observed {
            port,
            silent_for,
            announce_pending: self.announce_pending,
            failed_steps: self.unapplied.clone(),
            retired_addresses: self.retired.clone(),
            hold_only: self.hold_only,
            hand_back: self.hand_back,
        }
    }

    /// Whether a pass for `role` now is (still) part of a role change: the first pass after
    /// it, and on a primary every pass until it has announced ([`crate::lane`]).
    fn role_change_open(&self, role: Role) -> bool {
        self.last_role != Some(role) || (role == Role::Primary && self.announce_pending)
    }

    fn announced(&mut self) {
        self.announce_pending = false;
    }

    /// A side setting failed after retries: a hand-back goes on without it.
    fn side_setting_failed(&mut self, action: &Action) {
        if self.hand_back && !self.unapplied.contains(action) {
            self.unapplied.push(action.clone());
        }
    }
}

/// Retry bounds of a pass.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per action (and per observation) before the pass fails.
    pub attempts: u32,
    /// Delay before the first retry; doubles each time.
    pub backoff: Duration,
    /// Re-observations allowed for the result to match the plan.
    pub verify_attempts: u32,
    pub verify_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(50),
            verify_attempts: 5,
            verify_delay: Duration::from_millis(100),
        }
    }
}

/// What a successful pass did.
#[derive(Debug)]
pub struct PassReport {
    pub applied: Vec<Action>,
    /// What the router still waits for after verification, if anything.
    pub wait: Option<Wait>,
    /// The state verification saw.
    pub observed: Observed,
    /// Whether the pass found the port exposed (link up and not held at layer 2) when it
    /// first observed it, before any of its steps: what the time since the last pass left
    /// open, for the leak alarm.
    pub found_exposed: bool,
    /// Side settings that failed after retries and were left out of the pass (see
    /// [`Action::is_side_setting`]): a primary carries traffic without them, a standby stays
    /// guarded; the router is degraded, and the next pass tries them again.
    pub degraded: Vec<StepFailure>,
    /// How long after the pass lifted the port's guard (released the L2 hold or raised the
    /// link, whichever came last) its first announcement went out: the takeover's own
    /// latency. `None` if the pass did not announce after lifting a guard.
    pub takeover: Option<std::time::Duration>,
}

/// A step that failed after retries.
#[derive(Debug, thiserror::Error)]
#[error("step '{action}' failed after retries: {source}")]
pub struct StepFailure {
    pub action: Action,
    #[source]
    pub source: Error,
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("observing the port failed: {0}")]
    Observe(#[source] Error),
    #[error("step '{action}' failed after retries: {source}{}", fail_safe_note(.fail_safe))]
    Apply {
        action: Action,
        #[source]
        source: Error,
        /// The guard applied afterwards so a standby is not left exposed, if any was needed.
        fail_safe: Option<Action>,
    },
    #[error("verification failed: the port still needs {}", describe(.remaining))]
    Verify { remaining: Vec<Action> },
}

fn fail_safe_note(fail_safe: &Option<Action>) -> String {
    fail_safe.as_ref().map(|a| format!(" (fail-safe applied: {a})")).unwrap_or_default()
}

fn describe(actions: &[Action]) -> String {
    actions.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

impl ReconcileError {
    pub fn is_transient(&self) -> bool {
        match self {
            ReconcileError::Observe(e) | ReconcileError::Apply { source: e, .. } => {
                e.is_transient()
            }
            ReconcileError::Verify { .. } => true,
        }
    }
}

/// Plans without applying: what `hagw plan` shows, and each step of a pass. `wake` as for
/// [`reconcile_router`].
pub async fn dry_run<D: Dataplane>(
    dataplane: &D,
    spec: &RouterSpec,
    role: Role,
    memory: &mut RouterMemory,
    policy: &RetryPolicy,
    wake: Option<&Notify>,
) -> Result<(Observed, Plan), ReconcileError> {
    Pass { dataplane, spec, role, memory, policy, wake, urgent: false }.dry_run(&[]).await
}

/// One full pass: observe, plan, apply, verify.
///
/// A failed side setting (an IPv6 sysctl, e.g. on a read-only `/proc/sys`) never stops a
/// pass: the rest is planned again without it and applied, and the pass reports it as
/// degraded. The planner never lifts a standby's guard on a setting's assumed effect, only on
/// observed silence, so a standby stays held or down — except in a hand-back
/// ([`RouterMemory::hand_back`]), which remembers the settings that failed, does not try them
/// again, and lifts the guards once the rest of the silence has settled. Any other failed step
/// ends a standby's pass after the fail-safe guard, because the guard itself may be what
/// failed. A primary's pass goes on past it too (every step that can still be applied brings
/// traffic back sooner, and a primary has nothing to keep quiet) and then fails with it.
///
/// `wake` is notified when something about the port changed outside the pass (the worker's
/// events): it cuts the pass's waits short, so a step that failed because its object was not
/// there yet (an OVS port not yet plugged) is retried as soon as it appears, and a change that
/// undid a step is answered by applying it again rather than by waiting for it to show.
pub async fn reconcile_router<D: Dataplane>(
    dataplane: &D,
    spec: &RouterSpec,
    role: Role,
    memory: &mut RouterMemory,
    policy: &RetryPolicy,
    wake: Option<&Notify>,
) -> Result<PassReport, ReconcileError> {
    let span = info_span!("reconcile", router = %spec.id, netns = %spec.namespace,
        port = %spec.gateway_device, role = role.as_str());
    let urgent = memory.role_change_open(role);
    Pass { dataplane, spec, role, memory, policy, wake, urgent }.run().instrument(span).await
}

/// The context every step of one pass shares: which port, in which role, with what memory,
/// retried how, woken by what.
struct Pass<'a, D> {
    dataplane: &'a D,
    spec: &'a RouterSpec,
    role: Role,
    memory: &'a mut RouterMemory,
    policy: &'a RetryPolicy,
    wake: Option<&'a Notify>,
    /// Whether the pass's I/O is on a role change's critical path ([`crate::lane`]): from its
    /// first observation until a primary has announced, or a standby's first round is
    /// applied; its verification after that, and passes without a role change (resyncs,
    /// events), are not.
    urgent: bool,
}

impl<D: Dataplane> Pass<'_, D> {
    async fn run(mut self) -> Result<PassReport, ReconcileError> {
        let (entered, mut plan) = self.plan(&[]).await?;
        let found_exposed = entered.port.is_exposed();
        let mut applied = Vec::with_capacity(plan.actions.len());
        let mut failed: Vec<StepFailure> = Vec::new();
        let mut takeover = Takeover::default();
        let mut round = 0;
        loop {
            let round_actions = plan.actions;
            let mut cut_short = false;
            for action in &round_actions {
                match self.apply(action).await {
                    Ok(()) => {
                        takeover.step(action);
                        applied.push(action.clone());
                    }
                    Err(source) if self.role.is_standby() && !action.is_side_setting() => {
                        let fail_safe = self.fail_safe(action).await;
                        return Err(ReconcileError::Apply {
                            action: action.clone(),
                            source,
                            fail_safe,
                        });
                    }
                    Err(source) => {
                        if source.is_read_only() {
                            // The same on every pass of every router: the agent tells it once.
                            debug!(action = %action, error = %source, "step failed on a read-only file system; the other steps go on");
                        } else {
                            warn!(action = %action, error = %source, "step failed; the other steps go on");
                        }
                        if action.is_side_setting() {
                            self.memory.side_setting_failed(action);
                        }
                        failed.push(StepFailure { action: action.clone(), source });
                        cut_short = true;
                        break;
                    }
                }
            }
            if self.role.is_standby() {
                // The guard is in place (or failed, and the pass has ended): what is left is
                // checking it.
                self.urgent = false;
            }
            if cut_short {
                // The rest of the round was planned on the failed step's effect (an
                // announcement on a release): plan it again from what is there. This ends:
                // a failed step is never planned again in this pass.
                let (observed, next) = self.plan(&failed).await?;
                if next.is_converged() {
                    return finish(PassReport {
                        applied,
                        wait: next.wait,
                        observed,
                        found_exposed,
                        degraded: failed,
                        takeover: takeover.duration,
                    });
                }
                plan = next;
                continue;
            }
            round += 1;
            match self.verify(&round_actions, &failed).await? {
                Verified::Converged { observed, wait } => {
                    return finish(PassReport {
                        applied,
                        wait,
                        observed,
                        found_exposed,
                        degraded: failed,
                        takeover: takeover.duration,
                    });
                }
                Verified::FollowUp(next) if round < MAX_ROUNDS => {
                    debug!(round, next = %describe(&next.actions), "steps made more possible");
                    plan = next;
                }
                Verified::FollowUp(next) => {
                    return Err(ReconcileError::Verify { remaining: next.actions });
                }
            }
        }
    }

    /// Observes the port (no more of it than the plan can use, with the steps in `skip`
    /// failed) and combines it with the loop's memory.
    async fn observe(&mut self, skip: &[Action]) -> Result<Observed, ReconcileError> {
        let (dataplane, spec) = (self.dataplane, self.spec);
        let partial = partial_hold_matters(spec, self.role, skip, self.memory.hand_back);
        let observe = || dataplane.observe_for(spec, partial);
        let observed = with_retry(self.policy, self.wake, "observe", observe);
        let port = lane::urgent(self.urgent, observed).await.map_err(ReconcileError::Observe)?;
        Ok(self.memory.observed(self.role, port, Instant::now()))
    }

    /// [`Pass::dry_run`] inside a pass: the plan's standing decision goes to the backend at
    /// once, so it is in force before any of the plan's steps.
    async fn plan(&mut self, skip: &[StepFailure]) -> Result<(Observed, Plan), ReconcileError> {
        let (observed, plan) = self.dry_run(skip).await?;
        self.dataplane.hold_on_arrival(self.spec, plan.hold_on_arrival);
        Ok((observed, plan))
    }

    /// Observes and plans, without the steps in `skip`, which failed earlier in the pass.
    async fn dry_run(&mut self, skip: &[StepFailure]) -> Result<(Observed, Plan), ReconcileError> {
        let failed: Vec<Action> = skip.iter().map(|f| f.action.clone()).collect();
        let mut observed = self.observe(&failed).await?;
        for action in failed {
            if !observed.failed_steps.contains(&action) {
                observed.failed_steps.push(action);
            }
        }
        let plan = plan(self.spec, self.role, &observed);
        Ok((observed, plan))
    }

    async fn apply(&mut self, action: &Action) -> Result<(), Error> {
        let (dataplane, spec) = (self.dataplane, self.spec);
        let applied =
            with_retry(self.policy, self.wake, action.kind(), || dataplane.apply(spec, action));
        lane::urgent(self.urgent, applied).await?;
        info!(action = %action, "applied");
        if matches!(action, Action::Announce { .. }) {
            self.memory.announced();
            // The takeover is out; the rest of the pass is verification.
            self.urgent = false;
        }
        Ok(())
    }

    /// Re-observes until the round's steps are seen to have taken effect. Steps of the round
    /// that still show up may just not be visible yet (re-checked after a delay), unless a
    /// change came in meanwhile: then someone may have undone them, and they are applied
    /// again. Steps the round did not contain mean it made new ones possible. Steps in `skip`
    /// failed earlier in the pass and are not expected, nor tried again, until the next pass.
    async fn verify(
        &mut self,
        round: &[Action],
        skip: &[StepFailure],
    ) -> Result<Verified, ReconcileError> {
        let mut remaining = Vec::new();
        for attempt in 0..self.policy.verify_attempts.max(1) {
            let woken = attempt > 0 && pause(self.policy.verify_delay, self.wake).await;
            let (observed, again) = self.plan(skip).await?;
            if again.is_converged() {
                return Ok(Verified::Converged { observed, wait: again.wait });
            }
            if woken || again.actions.iter().any(|a| !round.contains(a)) {
                return Ok(Verified::FollowUp(again));
            }
            debug!(attempt, remaining = %describe(&again.actions), "not converged yet");
            remaining = again.actions;
        }
        Err(ReconcileError::Verify { remaining })
    }

    /// After a failed step on a standby: if the port is exposed and not silent, close it with
    /// whichever guard still works, so a failure never leaves a standby transmitting.
    async fn fail_safe(&self, failed: &Action) -> Option<Action> {
        // A standby possibly left exposed: as urgent as any role change.
        lane::urgent(true, self.close_exposure(failed)).await
    }

    async fn close_exposure(&self, failed: &Action) -> Option<Action> {
        let (dataplane, spec) = (self.dataplane, self.spec);
        let port = match dataplane.observe(spec).await {
            Ok(port) if !port.is_exposed() || port.is_silent() => return None,
            Ok(port) => Some(port),
            Err(_) => None,
        };
        // Every backend can hold (the generic one inside the router namespace); where it
        // cannot (no nf_tables), the hold fails and link-down is next.
        for guard in [Action::HoldL2, Action::SetLinkDown].into_iter().filter(|g| g != failed) {
            let applied =
                with_retry(self.policy, self.wake, guard.kind(), || dataplane.apply(spec, &guard))
                    .await;
            match applied {
                Ok(()) => {
                    warn!(guard = %guard, exposed = port.is_some(), "fail-safe guard applied");
                    return Some(guard);
                }
                Err(e) => warn!(guard = %guard, error = %e, "fail-safe guard failed"),
            }
        }
        None
    }
}

/// When a pass lifted a guard and when it first announced after that.
#[derive(Default)]
struct Takeover {
    lifted: Option<Instant>,
    duration: Option<std::time::Duration>,
}

impl Takeover {
    /// `action` was just applied.
    fn step(&mut self, action: &Action) {
        match action {
            Action::ReleaseL2 | Action::SetLinkUp => self.lifted = Some(Instant::now()),
            Action::Announce { .. } if self.duration.is_none() => {
                self.duration = self.lifted.map(|at| at.elapsed());
            }
            _ => {}
        }
    }
}

/// A pass whose failed steps were all side settings is degraded; any other failed step fails
/// it.
#[allow(clippy::result_large_err)] // the same error type as the pass it ends returns
fn finish(mut report: PassReport) -> Result<PassReport, ReconcileError> {
    match report.degraded.iter().position(|f| !f.action.is_side_setting()) {
        None => Ok(report),
        Some(i) => {
            let StepFailure { action, source } = report.degraded.swap_remove(i);
            Err(ReconcileError::Apply { action, source, fail_safe: None })
        }
    }
}

/// Rounds one pass may take when its own steps make further steps possible: raising a
/// primary's link gives the switch side carrier, and only then can the L2 hold be released
/// and the addresses announced.
const MAX_ROUNDS: usize = 3;

/// What re-observing after a round showed.
enum Verified {
    Converged {
        observed: Observed,
        wait: Option<Wait>,
    },
    /// Steps the round did not plan are possible now: another round.
    FollowUp(Plan),
}

/// Sleeps for `delay`, or until `wake` is notified; returns whether it was woken.
async fn pause(delay: Duration, wake: Option<&Notify>) -> bool {
    let Some(wake) = wake else {
        sleep(delay).await;
        return false;
    };
    tokio::select! {
        () = wake.notified() => true,
        () = sleep(delay) => false,
    }
}

/// Runs `op` until it succeeds, fails permanently or has had `policy.attempts`; a retry comes
/// after the backoff or as soon as `wake` reports a change, which may be what it waits for.
async fn with_retry<T, F, Fut>(
    policy: &RetryPolicy,
    wake: Option<&Notify>,
    what: &str,
    mut op: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut delay = policy.backoff;
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempt < policy.attempts => {
                debug!(what, attempt, error = %e, "retrying");
                pause(delay, wake).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
