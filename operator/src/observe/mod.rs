//! What operators see of a running agent: Prometheus metrics, liveness and readiness, and
//! the log filter, served over HTTP by [`server`]. Both `hagw run` and
//! `hagw agent --kubernetes` feed an [`Observer`] from their router events.
//!
//! - **Live** (`/healthz`): the agent's event loop turned within [`LIVENESS_TIMEOUT`]. The
//!   loop ticks every second even when idle, so a stale heartbeat means it is wedged.
//! - **Ready** (`/readyz`): the routers' source has been read once (the configuration file,
//!   Neutron's `ha_confs`, or the first HARouter list / the local spec cache), every router
//!   managed now has finished at least one pass since its worker started, and no router's
//!   last pass is older than `2 × max(resync, max backoff) + 5 s` (a worker stuck that long
//!   is not enforcing anything).
//! - **Leak alarm**: after a pass that leaves a standby converged (silent, and held unless
//!   the strategy is silence-only), the next pass of the same standby compares the gateway
//!   device's tx counter. An increase is a leak unless the frames could not reach the wire:
//!   a hold on the switch, behind the device (OVS, Linux bridge), in place when the interval
//!   began (the first pass left the port held), when it ended (the next pass found it held
//!   before acting) and after that pass. See `docs/observability.md`.

pub mod metrics;
pub mod server;
pub mod status;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hagw_core::model::{Role, RouterSpec};
use hagw_core::supervisor::{PassOutcome, RouterEvent, WorkerConfig};
use tracing::{debug, warn};

use self::metrics::{
    ActionLabels, ActionResult, ErrorKind, ErrorLabels, Metrics, ObjectLabels, PassLabels,
    PassResult, RoleLabel, RoleLabels, RouterLabels, RouterRoleLabels, TransitionLabels,
    WriteLabels,
};
use self::status::RouterStatus;
use crate::roles::Resolved;

/// `/healthz` fails when the event loop has not turned for this long.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the event loop ticks when nothing else happens.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Shared handle: cheap to clone, used by the agent loop and the HTTP handlers.
#[derive(Debug, Clone)]
pub struct Observer(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    metrics: Metrics,
    routers: Mutex<HashMap<String, Track>>,
    sources_ready: AtomicBool,
    /// Whether the read-only `/proc/sys` has been told in the log (once per process).
    read_only_told: AtomicBool,
    heartbeat: Mutex<Instant>,
    /// A router whose last pass is older than this is reported as not ready.
    stale_after: Duration,
}

/// What the observer remembers of one router between its passes.
#[derive(Debug)]
struct Track {
    /// What `/status` shows of it.
    status: RouterStatus,
    /// End of the last pass since the worker (re)started.
    last_pass: Option<Instant>,
    role: Option<Role>,
    held_standby: bool,
    /// The tx counter after the last pass that left this router a converged standby.
    resting_tx: Option<u64>,
    /// Whether that pass left the port held (layer-2 hold, or link down).
    resting_held: bool,
    /// Whether the router's hold sits behind its gateway device
    /// ([`hagw_core::model::L2BackendSpec::holds_behind_the_device`]).
    holds_behind_the_device: bool,
}

impl Observer {
    pub fn new(worker: &WorkerConfig) -> Observer {
        let stale_after = 2 * worker.resync.max(worker.max_backoff) + Duration::from_secs(5);
        Observer(Arc::new(Inner {
            metrics: Metrics::new(),
            routers: Mutex::new(HashMap::new()),
            sources_ready: AtomicBool::new(false),
            read_only_told: AtomicBool::new(false),
            heartbeat: Mutex::new(Instant::now()),
            stale_after,
        }))
    }

    fn routers(&self) -> MutexGuard<'_, HashMap<String, Track>> {
        self.0.routers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The routers' source has been read once: readiness now depends on the routers alone.
    pub fn set_sources_ready(&self) {
        self.0.sources_ready.store(true, Ordering::Relaxed);
    }

    /// The event loop is turning.
    pub fn beat(&self) {
        *self.0.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// One write of the Kubernetes agent to the API server.
    pub fn kubernetes_write(&self, kind: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.0.metrics.kubernetes_writes.get_or_create(&WriteLabels { kind, result }).inc();
    }

    /// Whether an HARouter is in split brain; `None` removes its series.
    pub fn split_brain(&self, namespace: &str, harouter: &str, split: Option<bool>) {
        let labels = ObjectLabels { namespace: namespace.into(), harouter: harouter.into() };
        match split {
            Some(split) => {
                self.0.metrics.split_brain.get_or_create(&labels).set(i64::from(split));
            }
            None => {
                self.0.metrics.split_brain.remove(&labels);
            }
        }
    }

    /// A worker was (re)started for `router`: it is not ready until its first pass.
    pub fn router_started(&self, spec: &RouterSpec) {
        let mut routers = self.routers();
        let track = routers.entry(spec.id.clone()).or_insert_with(|| Track {
            status: RouterStatus::new(spec),
            last_pass: None,
            role: None,
            held_standby: false,
            resting_tx: None,
            resting_held: false,
            holds_behind_the_device: false,
        });
        // A changed spec restarts the worker: what it shows is the new spec's.
        let fresh = RouterStatus::new(spec);
        track.status.namespace = fresh.namespace;
        track.status.gateway_device = fresh.gateway_device;
        track.status.strategy = fresh.strategy;
        track.status.backend = fresh.backend;
        track.last_pass = None;
        track.resting_tx = None;
        track.holds_behind_the_device = spec.backend.holds_behind_the_device();
        let labels = RouterLabels { router: spec.id.clone() };
        // Created at zero, so rate() and alerts see the series from the start.
        let _ = self.0.metrics.standby_tx_packets.get_or_create(&labels);
        let _ = self.0.metrics.leak_alarm.get_or_create(&labels);
        let _ = self.0.metrics.degraded_settings.get_or_create(&labels);
        let _ = self.0.metrics.read_only_settings.get_or_create(&labels);
        let _ = self.0.metrics.router_held.get_or_create(&labels);
        let _ = self.0.metrics.role_sources_disagree.get_or_create(&labels);
    }

    /// What decided a router's role, whether its inputs contradict each other, and whether
    /// its keepalived holds the primary VIP here, as the agent last read them.
    pub fn role_inputs(&self, router: &str, resolved: &Resolved) {
        let &Resolved { reason, disagree, vip, .. } = resolved;
        let mut routers = self.routers();
        let Some(track) = routers.get_mut(router) else { return };
        track.status.role_reason = Some(reason.as_str().to_string());
        track.status.role_sources_disagree = disagree;
        track.status.vip_present = vip;
        let labels = RouterLabels { router: router.to_string() };
        self.0.metrics.role_sources_disagree.get_or_create(&labels).set(i64::from(disagree));
    }

    /// Whether `router`'s keepalived holds the primary VIP here ([`Resolved::vip`]).
    pub fn vip_present(&self, router: &str) -> Option<bool> {
        self.routers().get(router).and_then(|t| t.status.vip_present)
    }

    /// `router` is no longer managed: its series go away and it no longer counts anywhere.
    pub fn router_removed(&self, router: &str) {
        let Some(track) = self.routers().remove(router) else { return };
        let m = &self.0.metrics;
        if let Some(role) = track.role {
            m.routers.get_or_create(&RoleLabels { role: RoleLabel(role) }).dec();
        }
        if track.held_standby {
            m.held_standby_ports.dec();
        }
        let labels = RouterLabels { router: router.to_string() };
        m.standby_tx_packets.remove(&labels);
        m.leak_alarm.remove(&labels);
        m.degraded_settings.remove(&labels);
        m.read_only_settings.remove(&labels);
        m.router_held.remove(&labels);
        m.role_since.remove(&labels);
        m.role_sources_disagree.remove(&labels);
        for role in [Role::Primary, Role::Standby, Role::Unknown] {
            let labels = RouterRoleLabels { router: router.to_string(), role: RoleLabel(role) };
            m.router_role.remove(&labels);
        }
    }

    /// Accounts for one pass of one router. Events of routers no longer managed (from a
    /// worker that was just stopped) are ignored.
    pub fn record(&self, event: &RouterEvent) {
        let m = &self.0.metrics;
        let mut routers = self.routers();
        let Some(track) = routers.get_mut(&event.router) else { return };

        let converged = matches!(event.outcome, PassOutcome::Converged { .. });
        let result = if converged { PassResult::Converged } else { PassResult::Failed };
        m.reconcile_duration
            .get_or_create(&PassLabels { result })
            .observe(event.duration.as_secs_f64());
        let action = |kind, result| m.actions.get_or_create(&ActionLabels { kind, result }).inc();
        let labels = RouterLabels { router: event.router.clone() };
        track.status.role(event.role, event.transition_from, event.started);
        match &event.outcome {
            PassOutcome::Converged { applied, degraded, takeover, .. } => {
                track.status.held(event.held, event.started);
                m.router_held.get_or_create(&labels).set(i64::from(event.held));
                if let Some(took) = takeover {
                    m.takeover_duration.observe(took.as_secs_f64());
                }
                track.status.last_error = None;
                let (read_only, failed): (Vec<_>, Vec<_>) =
                    degraded.iter().partition(|d| d.read_only);
                track.status.degraded =
                    failed.iter().map(|d| format!("{}: {}", d.action, d.error)).collect();
                track.status.read_only = read_only.iter().map(|d| d.action.to_string()).collect();
                for a in applied {
                    action(a.kind(), ActionResult::Ok);
                }
                for d in degraded {
                    action(d.action.kind(), ActionResult::Failed);
                }
                m.degraded_settings.get_or_create(&labels).set(failed.len() as i64);
                m.read_only_settings.get_or_create(&labels).set(read_only.len() as i64);
                if let Some(first) = read_only.first()
                    && !self.0.read_only_told.swap(true, Ordering::Relaxed)
                {
                    // Once per process: it is the same for every router and stays so.
                    warn!(example = %first.error, "/proc/sys is read-only (a non-privileged \
                        container): IPv6 settings only it can set are not applied on any router; \
                        see hagw_read_only_settings and, in Kubernetes, Degraded=SysctlsReadOnly");
                }
            }
            PassOutcome::Failed { error, transient, failed_action, applied_fail_safe } => {
                track.status.last_error = Some(error.clone());
                let kind = if *transient { ErrorKind::Transient } else { ErrorKind::Permanent };
                m.errors.get_or_create(&ErrorLabels { kind }).inc();
                if let Some(a) = failed_action {
                    action(a.kind(), ActionResult::Failed);
                }
                if let Some(a) = applied_fail_safe {
                    action(a.kind(), ActionResult::Ok);
                }
            }
        }
        if event.transition_from.is_some() {
            m.role_transitions.get_or_create(&TransitionLabels { to: RoleLabel(event.role) }).inc();
        }

        // The leak alarm: tx between a converged standby pass and the next standby pass.
        let standby = event.role.is_standby();
        let sent = match (track.resting_tx, event.tx_packets) {
            (Some(before), Some(after)) if standby && event.transition_from.is_none() => {
                // A smaller counter is a re-created device, not a leak.
                after.saturating_sub(before)
            }
            _ => 0,
        };
        // A switch-side hold in place at both ends of the interval and after this pass
        // dropped what the device transmitted: the kernel's delayed MLD reports after the
        // silencing steps, a packet socket, a link raised by another agent. Only the hold,
        // not the device, can tell those frames from a leak. The watchers wake a pass when
        // a hold is lifted, so a hold lifted meanwhile is found missing.
        let into_hold = track.holds_behind_the_device
            && track.resting_held
            && !event.found_exposed
            && event.held;
        let leaked = if into_hold { 0 } else { sent };
        if into_hold && sent > 0 {
            debug!(router = %event.router, frames = sent, "the held standby port transmitted into its hold");
        }
        if leaked > 0 {
            m.standby_tx_packets.get_or_create(&labels).inc_by(leaked);
            warn!(
                router = %event.router,
                frames = leaked,
                held = event.held,
                found_exposed = event.found_exposed,
                "leak alarm: the standby gateway port transmitted frames that could reach the wire"
            );
        }
        m.leak_alarm.get_or_create(&labels).set(i64::from(leaked > 0));
        track.status.leak_alarm = leaked > 0;
        track.resting_tx = if standby && converged { event.tx_packets } else { None };
        track.resting_held = event.held;

        if track.role != Some(event.role) {
            if let Some(old) = track.role {
                m.routers.get_or_create(&RoleLabels { role: RoleLabel(old) }).dec();
            }
            m.routers.get_or_create(&RoleLabels { role: RoleLabel(event.role) }).inc();
            track.role = Some(event.role);
            for role in [Role::Primary, Role::Standby, Role::Unknown] {
                let labels =
                    RouterRoleLabels { router: event.router.clone(), role: RoleLabel(role) };
                m.router_role.get_or_create(&labels).set(i64::from(role == event.role));
            }
            let since = event.started.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            m.role_since.get_or_create(&labels).set(since.as_secs_f64());
        }
        // A failed pass observed nothing reliable: the hold is as it was.
        let held_standby = standby && if converged { event.held } else { track.held_standby };
        if held_standby != track.held_standby {
            if held_standby {
                m.held_standby_ports.inc();
            } else {
                m.held_standby_ports.dec();
            }
            track.held_standby = held_standby;
        }
        track.last_pass = Some(Instant::now());
    }

    /// Every managed router as its last pass left it, by router id.
    pub fn statuses(&self) -> Vec<RouterStatus> {
        let mut all: Vec<RouterStatus> =
            self.routers().values().map(|t| t.status.clone()).collect();
        all.sort_by(|a, b| a.router.cmp(&b.router));
        all
    }

    /// `Ok` if live, else why not.
    pub fn liveness(&self) -> Result<(), String> {
        let since = self.0.heartbeat.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
        if since > LIVENESS_TIMEOUT {
            return Err(format!("event loop stalled for {} s", since.as_secs()));
        }
        Ok(())
    }

    /// `Ok` if ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.0.sources_ready.load(Ordering::Relaxed) {
            return Err("waiting for the router source to be read".into());
        }
        let routers = self.routers();
        let mut waiting: Vec<&str> = Vec::new();
        let mut stale: Vec<&str> = Vec::new();
        for (id, track) in routers.iter() {
            match track.last_pass {
                None => waiting.push(id),
                Some(at) if at.elapsed() > self.0.stale_after => stale.push(id),
                Some(_) => {}
            }
        }
        let list = |ids: &mut Vec<&str>| {
            ids.sort_unstable();
            let more = ids.len().saturating_sub(10);
            let mut text = ids.iter().take(10).copied().collect::<Vec<_>>().join(", ");
            if more > 0 {
                text.push_str(&format!(" and {more} more"));
            }
            text
        };
        if !waiting.is_empty() {
            return Err(format!(
                "waiting for the first pass of {} router(s): {}",
                waiting.len(),
                list(&mut waiting)
            ));
        }
        if !stale.is_empty() {
            return Err(format!(
                "no pass for more than {} s: {}",
                self.0.stale_after.as_secs(),
                list(&mut stale)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use hagw_core::action::Action;
    use hagw_core::role::RoleReason;

    use super::*;

    fn spec() -> RouterSpec {
        serde_json::from_value(serde_json::json!({
            "id": "r1", "namespace": "qrouter-1", "gatewayDevice": "qg-1",
            "strategy": "link-down", "role": {"fixed": "standby"},
        }))
        .expect("a valid spec")
    }

    fn event(role: Role, held: bool, tx: u64, applied: Vec<Action>) -> RouterEvent {
        RouterEvent {
            router: "r1".into(),
            role,
            transition_from: None,
            started: SystemTime::now(),
            duration: Duration::from_millis(2),
            outcome: PassOutcome::Converged {
                applied,
                wait: None,
                degraded: Vec::new(),
                takeover: None,
            },
            held,
            tx_packets: Some(tx),
            found_exposed: !held,
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn a_router_counts_once_it_has_passed_and_leaks_raise_the_alarm() {
        let o = Observer::new(&WorkerConfig::default());
        assert!(o.readiness().is_err(), "not ready before the source is read");
        o.set_sources_ready();
        assert!(o.readiness().is_ok(), "no routers: ready");
        o.router_started(&spec());
        assert!(o.readiness().unwrap_err().contains("r1"));

        o.record(&event(Role::Standby, true, 10, vec![Action::SetLinkDown]));
        assert!(o.readiness().is_ok());
        let text = o.metrics().encode();
        assert_eq!(value(&text, "hagw_held_standby_ports"), Some(1.0));
        assert_eq!(value(&text, "hagw_actions_total{kind=\"link-down\",result=\"ok\"}"), Some(1.0));
        assert_eq!(value(&text, "hagw_leak_alarm{router=\"r1\"}"), Some(0.0));

        o.record(&event(Role::Standby, true, 13, vec![]));
        let text = o.metrics().encode();
        assert_eq!(value(&text, "hagw_standby_tx_packets_total{router=\"r1\"}"), Some(3.0));
        assert_eq!(value(&text, "hagw_leak_alarm{router=\"r1\"}"), Some(1.0));
        let status = &o.statuses()[0];
        assert_eq!(
            (status.role.as_deref(), status.held, status.leak_alarm),
            (Some("standby"), true, true)
        );
        assert_eq!((status.strategy.as_str(), status.backend.as_str()), ("link-down", "generic"));
        assert!(status.held_since.is_some() && status.last_transition.is_none());

        o.record(&event(Role::Standby, true, 13, vec![]));
        let text = o.metrics().encode();
        assert_eq!(value(&text, "hagw_standby_tx_packets_total{router=\"r1\"}"), Some(3.0));
        assert_eq!(value(&text, "hagw_leak_alarm{router=\"r1\"}"), Some(0.0));

        // Takeover: the primary's own traffic is no leak.
        let mut takeover = event(Role::Primary, false, 40, vec![Action::SetLinkUp]);
        takeover.transition_from = Some(Role::Standby);
        o.record(&takeover);
        o.record(&event(Role::Primary, false, 90, vec![]));
        let text = o.metrics().encode();
        assert_eq!(value(&text, "hagw_standby_tx_packets_total{router=\"r1\"}"), Some(3.0));
        assert_eq!(value(&text, "hagw_role_transitions_total{to=\"primary\"}"), Some(1.0));
        assert_eq!(value(&text, "hagw_held_standby_ports"), Some(0.0));
        assert_eq!(value(&text, "hagw_routers{role=\"primary\"}"), Some(1.0));
        assert_eq!(value(&text, "hagw_routers{role=\"standby\"}"), Some(0.0));
        assert_eq!(value(&text, "hagw_router_role{router=\"r1\",role=\"primary\"}"), Some(1.0));
        assert_eq!(value(&text, "hagw_router_role{router=\"r1\",role=\"standby\"}"), Some(0.0));
        assert_eq!(value(&text, "hagw_router_held{router=\"r1\"}"), Some(0.0));
        let since = value(&text, "hagw_router_last_transition_timestamp_seconds{router=\"r1\"}");
        assert!(since.is_some_and(|t| t > 1.7e9), "{text}");
        let status = &o.statuses()[0];
        assert_eq!((status.role.as_deref(), status.held), (Some("primary"), false));
        assert_eq!(status.previous_role.as_deref(), Some("standby"));
        assert!(status.last_transition.is_some() && !status.leak_alarm);

        let resolved = Resolved {
            role: Role::Primary,
            reason: RoleReason::Vip,
            disagree: true,
            vip: Some(true),
            keepalived: None,
        };
        o.role_inputs("r1", &resolved);
        assert_eq!(o.vip_present("r1"), Some(true));
        let text = o.metrics().encode();
        assert_eq!(value(&text, "hagw_role_sources_disagree{router=\"r1\"}"), Some(1.0));
        let status = &o.statuses()[0];
        assert_eq!(
            (status.role_reason.as_deref(), status.role_sources_disagree),
            (Some("vip"), true)
        );

        o.router_removed("r1");
        assert!(o.statuses().is_empty());
        let text = o.metrics().encode();
        assert_eq!(value(&text, "hagw_routers{role=\"primary\"}"), Some(0.0));
        assert!(!text.contains("router=\"r1\""), "{text}");
        o.record(&event(Role::Standby, true, 0, vec![]));
        assert!(!o.metrics().encode().contains("router=\"r1\""), "late event ignored");
    }

    /// Behind a switch-side hold, frames count only when the hold was not in place at one
    /// end of the interval; the generic backend's hold is in front of the device (above).
    #[test]
    fn frames_into_a_switch_side_hold_are_no_leak_unless_the_hold_was_missing() {
        let o = Observer::new(&WorkerConfig::default());
        let mut lb = spec();
        lb.strategy = hagw_core::model::Strategy::L2Hold;
        lb.backend = hagw_core::model::L2BackendSpec::Linuxbridge {
            port: "tap1".into(),
            bridge: "brq1".into(),
        };
        o.router_started(&lb);
        let leaked = |o: &Observer| {
            let text = o.metrics().encode();
            let alarm = value(&text, "hagw_leak_alarm{router=\"r1\"}");
            (value(&text, "hagw_standby_tx_packets_total{router=\"r1\"}"), alarm)
        };
        o.record(&event(Role::Standby, true, 10, vec![Action::HoldL2]));
        // The kernel's delayed MLD reports after the pass, dropped by the hold.
        o.record(&event(Role::Standby, true, 13, vec![]));
        assert_eq!(leaked(&o), (Some(0.0), Some(0.0)));
        // The hold was lifted behind hagw's back: this pass found the port exposed.
        let mut lifted = event(Role::Standby, true, 15, vec![Action::HoldL2]);
        lifted.found_exposed = true;
        o.record(&lifted);
        assert_eq!(leaked(&o), (Some(2.0), Some(1.0)));
        // A pass that left the port exposed: what follows counts whatever comes next.
        o.record(&event(Role::Standby, false, 15, vec![Action::ReleaseL2]));
        o.record(&event(Role::Standby, true, 16, vec![Action::HoldL2]));
        assert_eq!(leaked(&o), (Some(3.0), Some(1.0)));
        o.record(&event(Role::Standby, true, 20, vec![]));
        assert_eq!(leaked(&o), (Some(3.0), Some(0.0)));
    }

    #[test]
    fn failed_passes_count_errors_and_the_failed_step() {
        let o = Observer::new(&WorkerConfig::default());
        o.router_started(&spec());
        let mut e = event(Role::Standby, false, 0, vec![]);
        e.outcome = PassOutcome::Failed {
            error: "boom".into(),
            transient: false,
            failed_action: Some(Action::HoldL2),
            applied_fail_safe: Some(Action::SetLinkDown),
        };
        e.tx_packets = None;
        o.record(&e);
        let text = o.metrics().encode();
        assert_eq!(value(&text, "hagw_errors_total{kind=\"permanent\"}"), Some(1.0));
        assert_eq!(
            value(&text, "hagw_actions_total{kind=\"hold-l2\",result=\"failed\"}"),
            Some(1.0)
        );
        assert_eq!(value(&text, "hagw_actions_total{kind=\"link-down\",result=\"ok\"}"), Some(1.0));
        assert_eq!(
            value(&text, "hagw_reconcile_duration_seconds_count{result=\"failed\"}"),
            Some(1.0)
        );
    }
}
