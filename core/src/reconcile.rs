//! One reconcile pass for one router: observe, plan, apply with bounded retry, re-observe
//! and verify. The I/O goes through the [`Dataplane`] boundary, implemented by the backends.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, sleep};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::action::Action;
use crate::error::Error;
use crate::model::{Role, RouterSpec};
use crate::observed::{Observed, PortState};
use crate::planner::{Plan, Wait, plan};

/// Reads and changes the real port. Implemented by the backends; the reconcile loop is
/// generic over it so tests can drive it with a model.
pub trait Dataplane: Sync {
    fn observe(&self, spec: &RouterSpec) -> impl Future<Output = Result<PortState, Error>> + Send;
    fn apply(
        &self,
        spec: &RouterSpec,
        action: &Action,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// What the loop remembers about one router between passes; the planner gets it as part of
/// [`Observed`].
#[derive(Debug, Clone, Default)]
pub struct RouterMemory {
    silent_since: Option<Instant>,
    announce_pending: bool,
    last_role: Option<Role>,
}

impl RouterMemory {
    /// Combines a fresh observation with what was remembered, at time `now`.
    pub fn observed(&mut self, role: Role, port: PortState, now: Instant) -> Observed {
        if self.last_role != Some(role) {
            // Every arrival at primary (including hagw starting on one) announces once.
            self.announce_pending = role == Role::Primary;
            self.last_role = Some(role);
        }
        if port.is_silent() {
            self.silent_since.get_or_insert(now);
        } else {
            self.silent_since = None;
        }
        let silent_for = self.silent_since.map(|t| now.duration_since(t)).unwrap_or_default();
        Observed { port, silent_for, announce_pending: self.announce_pending }
    }

    fn announced(&mut self) {
        self.announce_pending = false;
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
#[derive(Debug, Clone)]
pub struct PassReport {
    pub applied: Vec<Action>,
    /// What the router still waits for after verification, if anything.
    pub wait: Option<Wait>,
    /// The state verification saw.
    pub observed: Observed,
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

/// Observes the port and combines it with the loop's memory.
async fn observe<D: Dataplane>(
    dataplane: &D,
    spec: &RouterSpec,
    role: Role,
    memory: &mut RouterMemory,
    policy: &RetryPolicy,
    wake: Option<&Notify>,
) -> Result<Observed, ReconcileError> {
    let port = with_retry(policy, wake, "observe", || dataplane.observe(spec))
        .await
        .map_err(ReconcileError::Observe)?;
    Ok(memory.observed(role, port, Instant::now()))
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
    let observed = observe(dataplane, spec, role, memory, policy, wake).await?;
    let plan = plan(spec, role, &observed);
    Ok((observed, plan))
}

/// One full pass: observe, plan, apply, verify.
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
    async {
        let (_, mut plan) = dry_run(dataplane, spec, role, memory, policy, wake).await?;
        let mut applied = Vec::with_capacity(plan.actions.len());
        for round in 1..=MAX_ROUNDS {
            let round_actions = plan.actions;
            for action in &round_actions {
                apply_one(dataplane, spec, role, memory, policy, wake, action).await?;
                applied.push(action.clone());
            }
            match verify(dataplane, spec, role, memory, policy, wake, &round_actions).await? {
                Verified::Converged { observed, wait } => {
                    return Ok(PassReport { applied, wait, observed });
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
        unreachable!("the last round returns")
    }
    .instrument(span)
    .await
}

/// Rounds one pass may take when its own steps make further steps possible: raising a
/// primary's link gives the switch side carrier, and only then can the L2 hold be released
/// and the addresses announced.
const MAX_ROUNDS: usize = 3;

async fn apply_one<D: Dataplane>(
    dataplane: &D,
    spec: &RouterSpec,
    role: Role,
    memory: &mut RouterMemory,
    policy: &RetryPolicy,
    wake: Option<&Notify>,
    action: &Action,
) -> Result<(), ReconcileError> {
    let applied = with_retry(policy, wake, action.kind(), || dataplane.apply(spec, action)).await;
    if let Err(source) = applied {
        let fail_safe = if role.is_standby() {
            fail_safe(dataplane, spec, action, policy, wake).await
        } else {
            None
        };
        return Err(ReconcileError::Apply { action: action.clone(), source, fail_safe });
    }
    info!(action = %action, "applied");
    if matches!(action, Action::Announce { .. }) {
        memory.announced();
    }
    Ok(())
}

/// What re-observing after a round showed.
enum Verified {
    Converged {
        observed: Observed,
        wait: Option<Wait>,
    },
    /// Steps the round did not plan are possible now: another round.
    FollowUp(Plan),
}

/// Re-observes until the round's steps are seen to have taken effect. Steps of the round
/// that still show up may just not be visible yet (re-checked after a delay), unless a change
/// came in meanwhile: then someone may have undone them, and they are applied again. Steps
/// the round did not contain mean it made new ones possible.
async fn verify<D: Dataplane>(
    dataplane: &D,
    spec: &RouterSpec,
    role: Role,
    memory: &mut RouterMemory,
    policy: &RetryPolicy,
    wake: Option<&Notify>,
    round: &[Action],
) -> Result<Verified, ReconcileError> {
    let mut remaining = Vec::new();
    for attempt in 0..policy.verify_attempts.max(1) {
        let woken = attempt > 0 && pause(policy.verify_delay, wake).await;
        let (observed, again) = dry_run(dataplane, spec, role, memory, policy, wake).await?;
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
async fn fail_safe<D: Dataplane>(
    dataplane: &D,
    spec: &RouterSpec,
    failed: &Action,
    policy: &RetryPolicy,
    wake: Option<&Notify>,
) -> Option<Action> {
    let port = match dataplane.observe(spec).await {
        Ok(port) if !port.is_exposed() || port.is_silent() => return None,
        Ok(port) => Some(port),
        Err(_) => None,
    };
    let mut guards = Vec::new();
    if spec.backend.can_hold() {
        guards.push(Action::HoldL2);
    }
    guards.push(Action::SetLinkDown);
    for guard in guards.into_iter().filter(|g| g != failed) {
        match with_retry(policy, wake, guard.kind(), || dataplane.apply(spec, &guard)).await {
            Ok(()) => {
                warn!(guard = %guard, exposed = port.is_some(), "fail-safe guard applied");
                return Some(guard);
            }
            Err(e) => warn!(guard = %guard, error = %e, "fail-safe guard failed"),
        }
    }
    None
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
