//! Keeps every router converged: one worker task per router, woken by role changes, by
//! events that touch its port (netlink, OVSDB), by a pending silence deadline, by a retry
//! after a failure, or by the periodic resync. A slow or broken router never blocks another.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{Instrument, info_span, warn};

use crate::action::Action;
use crate::model::{Role, RouterSpec};
use crate::planner::Wait;
use crate::reconcile::{Dataplane, RetryPolicy, RouterMemory, reconcile_router};

/// Timing of a worker.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Full re-observation even without events: the safety net for anything missed. Each
    /// wait is spread by ±10 % ([`spread`]).
    pub resync: Duration,
    pub retry: RetryPolicy,
    /// Delay before re-trying a failed pass; doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            resync: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// `resync` spread uniformly over ±10 %. Passes that ended together (a cold start, a mass
/// failover) would otherwise resync together for ever: on a node with a thousand routers,
/// a thousand namespaces' connections opened in the same instant every minute, each time a
/// peak of CPU and of memory the allocator keeps.
fn spread(resync: Duration) -> Duration {
    resync.mul_f64(0.9 + 0.2 * fastrand::f64())
}

/// What one pass of one router did, for status, metrics and events.
#[derive(Debug, Clone)]
pub struct RouterEvent {
    pub router: String,
    pub role: Role,
    /// The previous role, if this pass was the first after a change.
    pub transition_from: Option<Role>,
    pub started: SystemTime,
    pub duration: Duration,
    pub outcome: PassOutcome,
    /// Whether the port is held at layer 2 (or down) after the pass.
    pub held: bool,
    /// Transmit counter of the gateway device after the pass, for the leak alarm.
    pub tx_packets: Option<u64>,
    /// Whether the pass found the port exposed before its first step
    /// ([`crate::reconcile::PassReport::found_exposed`]); `true` when the pass failed, which
    /// observed nothing reliable.
    pub found_exposed: bool,
}

#[derive(Debug, Clone)]
pub enum PassOutcome {
    Converged {
        applied: Vec<Action>,
        wait: Option<Wait>,
        /// Side settings the pass could not apply: a primary forwards and a standby stays
        /// guarded without them. The worker retries them, with backoff unless all failed on
        /// a read-only file system (then at the resync interval: nothing will change sooner).
        degraded: Vec<DegradedSetting>,
        /// Guard lifted → first announcement, if the pass took the port over.
        takeover: Option<Duration>,
    },
    Failed {
        error: String,
        transient: bool,
        /// The step that failed after retries, if the pass failed applying one (not when
        /// observing or verifying).
        failed_action: Option<Action>,
        applied_fail_safe: Option<Action>,
    },
}

/// A side setting a pass could not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DegradedSetting {
    pub action: Action,
    pub error: String,
    /// It failed on a read-only file system ([`crate::Error::is_read_only`]): `/proc/sys` in
    /// a non-privileged container, where it will keep failing.
    pub read_only: bool,
}

/// The handle a source uses to reach a router's worker.
#[derive(Debug, Clone)]
pub struct RouterHandle {
    kick: Arc<Notify>,
    role: Arc<watch::Sender<Role>>,
}

impl RouterHandle {
    /// Something about the port may have changed: reconcile soon.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Sets the router's role; a change wakes the worker at once.
    pub fn set_role(&self, role: Role) {
        self.role.send_if_modified(|current| std::mem::replace(current, role) != role);
    }

    pub fn role(&self) -> Role {
        *self.role.borrow()
    }
}

/// Starts the worker of one router. It runs until the returned task is aborted. `memory` is
/// a new router's, or [`RouterMemory::retiring`] what a changed spec no longer lists.
pub fn spawn_router<D>(
    dataplane: Arc<D>,
    spec: RouterSpec,
    initial_role: Role,
    memory: RouterMemory,
    config: WorkerConfig,
    events: mpsc::UnboundedSender<RouterEvent>,
) -> (RouterHandle, JoinHandle<()>)
where
    D: Dataplane + Send + Sync + 'static,
{
    let (role_tx, role_rx) = watch::channel(initial_role);
    let handle = RouterHandle { kick: Arc::new(Notify::new()), role: Arc::new(role_tx) };
    let span = info_span!("router", router = %spec.id, netns = %spec.namespace, port = %spec.gateway_device);
    let worker = Worker {
        dataplane,
        spec,
        memory,
        config,
        events,
        kick: handle.kick.clone(),
        roles: role_rx,
    };
    (handle, tokio::spawn(worker.run().instrument(span)))
}

struct Worker<D> {
    dataplane: Arc<D>,
    spec: RouterSpec,
    memory: RouterMemory,
    config: WorkerConfig,
    events: mpsc::UnboundedSender<RouterEvent>,
    kick: Arc<Notify>,
    roles: watch::Receiver<Role>,
}

impl<D: Dataplane + Send + Sync + 'static> Worker<D> {
    async fn run(mut self) {
        let mut memory = std::mem::take(&mut self.memory);
        let mut last_role: Option<Role> = None;
        let mut backoff = self.config.backoff;
        // Whether this pass is the resync's (its timer woke the worker), not an event's.
        let mut resync = false;
        loop {
            let role = *self.roles.borrow_and_update();
            let transition_from = last_role.filter(|r| *r != role);
            last_role = Some(role);
            let started = SystemTime::now();
            let t0 = Instant::now();
            // Boxed: a pass's future is several KiB and lives only while the pass runs;
            // inline, it would be part of every idle worker (a thousand on a network node).
            let result = Box::pin(reconcile_router(
                &*self.dataplane,
                &self.spec,
                role,
                &mut memory,
                &self.config.retry,
                Some(&self.kick),
            ))
            .await;
            let duration = t0.elapsed();
            let (outcome, next, held, tx_packets, found_exposed) = match result {
                Ok(report) => {
                    // Events usually wake the worker first; these bounds are the safety net
                    // for waits on something outside hagw that sends no event here.
                    let mut next = match report.wait {
                        Some(Wait::SilenceSettling { remaining }) => remaining,
                        Some(Wait::L2NotWired) => self.config.resync.min(Duration::from_secs(1)),
                        Some(Wait::DeviceMissing) => self.config.resync.min(Duration::from_secs(5)),
                        None => spread(self.config.resync),
                    };
                    if report.degraded.iter().all(|f| f.source.is_read_only()) {
                        // Nothing failed, or only what a read-only /proc/sys refuses: retried
                        // at the resync, told once by the agent rather than on every pass.
                        backoff = self.config.backoff;
                        // After an event, more tend to follow (a takeover's own changes,
                        // a switch applying them): only a resync that changed nothing rests.
                        if resync && report.applied.is_empty() && report.wait.is_none() {
                            self.dataplane.at_rest(&self.spec);
                        }
                    } else {
                        for failure in &report.degraded {
                            warn!(error = %failure, retry_in_ms = backoff.as_millis() as u64, "degraded");
                        }
                        next = next.min(backoff);
                        backoff = (backoff * 2).min(self.config.max_backoff);
                    }
                    let port = &report.observed.port;
                    let held = !port.is_exposed();
                    let tx = port.link.as_ref().map(|l| l.counters.tx_packets);
                    let degraded = report
                        .degraded
                        .into_iter()
                        .map(|f| DegradedSetting {
                            read_only: f.source.is_read_only(),
                            error: f.source.to_string(),
                            action: f.action,
                        })
                        .collect();
                    let outcome = PassOutcome::Converged {
                        applied: report.applied,
                        wait: report.wait,
                        degraded,
                        takeover: report.takeover,
                    };
                    (outcome, next, held, tx, report.found_exposed)
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "reconcile failed");
                    let next = backoff;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    let (failed_action, applied_fail_safe) = match &e {
                        crate::reconcile::ReconcileError::Apply { action, fail_safe, .. } => {
                            (Some(action.clone()), fail_safe.clone())
                        }
                        _ => (None, None),
                    };
                    let outcome = PassOutcome::Failed {
                        error: e.to_string(),
                        transient: e.is_transient(),
                        failed_action,
                        applied_fail_safe,
                    };
                    (outcome, next, false, None, true)
                }
            };
            let event = RouterEvent {
                router: self.spec.id.clone(),
                role,
                transition_from,
                started,
                duration,
                outcome,
                held,
                tx_packets,
                found_exposed,
            };
            if self.events.send(event).is_err() {
                return;
            }
            let deadline = Instant::now() + next;
            resync = false;
            tokio::select! {
                changed = self.roles.changed() => if changed.is_err() { return },
                _ = self.kick.notified() => {}
                _ = sleep_until(deadline) => resync = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resyncs_are_spread_within_ten_percent() {
        let resync = Duration::from_secs(60);
        let waits: Vec<Duration> = (0..1000).map(|_| spread(resync)).collect();
        let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(
            *min >= Duration::from_secs(54) && *max <= Duration::from_secs(66),
            "{min:?}..{max:?}"
        );
        // Spread, not merely bounded: a thousand draws cover most of the 12 s window.
        assert!(*max - *min >= Duration::from_secs(10), "{min:?}..{max:?}");
    }
}
