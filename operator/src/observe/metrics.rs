//! The Prometheus metrics (prometheus-client, OpenMetrics text). Every metric is documented
//! in `docs/observability.md`; names here are registered without the `_total` suffix, which
//! the encoder appends to counters.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Result of an action: applied, or failed after the reconcile loop's retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionResult {
    Ok,
    Failed,
}

/// How a failed pass failed: transient errors are retried with backoff, permanent ones
/// need an operator (missing privileges, a device of the wrong type, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Transient,
    Permanent,
}

/// Outcome of a reconcile pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PassResult {
    Converged,
    Failed,
}

/// The role label: `primary`, `standby` or `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoleLabel(pub hagw_core::model::Role);

macro_rules! label_value {
    ($type:ty, $($variant:path => $text:literal),+) => {
        impl EncodeLabelValue for $type {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(match self { $($variant => $text),+ })
            }
        }
    };
}

label_value!(ActionResult, ActionResult::Ok => "ok", ActionResult::Failed => "failed");
label_value!(ErrorKind, ErrorKind::Transient => "transient", ErrorKind::Permanent => "permanent");
label_value!(PassResult, PassResult::Converged => "converged", PassResult::Failed => "failed");

impl EncodeLabelValue for RoleLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ActionLabels {
    /// `Action::kind()`: `hold-l2`, `link-down`, `announce`, …
    pub kind: &'static str,
    pub result: ActionResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PassLabels {
    pub result: PassResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TransitionLabels {
    pub to: RoleLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: RoleLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WriteLabels {
    /// `status` (a node's entry), `create` (a discovered router's object), `conditions`
    /// (the aggregated conditions).
    pub kind: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ObjectLabels {
    pub namespace: String,
    pub harouter: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouterLabels {
    pub router: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouterRoleLabels {
    pub router: String,
    pub role: RoleLabel,
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub reconcile_duration: Family<PassLabels, Histogram>,
    pub actions: Family<ActionLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub role_transitions: Family<TransitionLabels, Counter>,
    pub routers: Family<RoleLabels, Gauge>,
    pub held_standby_ports: Gauge,
    pub standby_tx_packets: Family<RouterLabels, Counter>,
    pub leak_alarm: Family<RouterLabels, Gauge>,
    pub degraded_settings: Family<RouterLabels, Gauge>,
    pub read_only_settings: Family<RouterLabels, Gauge>,
    pub kubernetes_writes: Family<WriteLabels, Counter>,
    pub split_brain: Family<ObjectLabels, Gauge>,
    pub router_role: Family<RouterRoleLabels, Gauge>,
    pub router_held: Family<RouterLabels, Gauge>,
    pub role_since: Family<RouterLabels, Gauge<f64, AtomicU64>>,
    pub role_sources_disagree: Family<RouterLabels, Gauge>,
    pub takeover_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let reconcile_duration =
            Family::<PassLabels, Histogram>::new_with_constructor(duration_histogram as fn() -> _);
        registry.register(
            "hagw_reconcile_duration_seconds",
            "Duration of one reconcile pass of one router (observe, apply, re-observe, verify)",
            reconcile_duration.clone(),
        );
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "hagw_actions",
            "Actions applied to gateway ports, by kind and result (failed = failed after retries)",
            actions.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("hagw_errors", "Failed reconcile passes, by error kind", errors.clone());
        let role_transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "hagw_role_transitions",
            "Role changes of routers reconciled on this node, by new role",
            role_transitions.clone(),
        );
        let routers = Family::<RoleLabels, Gauge>::default();
        registry.register("hagw_routers", "Routers managed by this node, by role", routers.clone());
        let held_standby_ports = Gauge::default();
        registry.register(
            "hagw_held_standby_ports",
            "Standby (or unknown-role) routers whose gateway port is held at layer 2 or down",
            held_standby_ports.clone(),
        );
        let standby_tx_packets = Family::<RouterLabels, Counter>::default();
        registry.register(
            "hagw_standby_tx_packets",
            "Frames a silenced standby gateway port transmitted (its tx counter grew between two passes)",
            standby_tx_packets.clone(),
        );
        let leak_alarm = Family::<RouterLabels, Gauge>::default();
        registry.register(
            "hagw_leak_alarm",
            "1 while the last interval between two passes saw a silenced standby port transmit",
            leak_alarm.clone(),
        );
        let degraded_settings = Family::<RouterLabels, Gauge>::default();
        registry.register(
            "hagw_degraded_settings",
            "Side settings (IPv6 sysctls) the last pass could not apply (a read-only /proc/sys aside); a primary forwards and a standby stays guarded without them, and they are retried",
            degraded_settings.clone(),
        );
        let read_only_settings = Family::<RouterLabels, Gauge>::default();
        registry.register(
            "hagw_read_only_settings",
            "Side settings (IPv6 sysctls) not applied because /proc/sys is read-only (a non-privileged pod): expected there, retried at the resync",
            read_only_settings.clone(),
        );
        let kubernetes_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "hagw_kubernetes_writes",
            "Writes of the Kubernetes agent to the API server, by kind and result",
            kubernetes_writes.clone(),
        );
        let split_brain = Family::<ObjectLabels, Gauge>::default();
        registry.register(
            "hagw_split_brain",
            "1 while more than one node reports the primary role for an HARouter (after the settle time), 0 otherwise; exported by every agent hosting it",
            split_brain.clone(),
        );
        let router_role = Family::<RouterRoleLabels, Gauge>::default();
        registry.register(
            "hagw_router_role",
            "1 for the role of a router's last pass (primary, standby, unknown), 0 for the others",
            router_role.clone(),
        );
        let router_held = Family::<RouterLabels, Gauge>::default();
        registry.register(
            "hagw_router_held",
            "1 while a router's gateway port is held at layer 2 or down after its last converged pass",
            router_held.clone(),
        );
        let role_since = Family::<RouterLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "hagw_router_last_transition_timestamp_seconds",
            "When a router's current role began (its last role change, or its first pass), Unix time",
            role_since.clone(),
        );
        let role_sources_disagree = Family::<RouterLabels, Gauge>::default();
        registry.register(
            "hagw_role_sources_disagree",
            "1 while a router's role inputs on this node contradict each other (primary VIP, state file, keepalived running)",
            role_sources_disagree.clone(),
        );
        let takeover_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "hagw_takeover_duration_seconds",
            "Takeovers: from lifting the port's guard (hold released or link raised) to the first announcement sent",
            takeover_duration.clone(),
        );
        registry.register(
            "hagw_build",
            "The running hagw's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(AnnouncementFrames));
        Metrics {
            registry,
            reconcile_duration,
            actions,
            errors,
            role_transitions,
            routers,
            held_standby_ports,
            standby_tx_packets,
            leak_alarm,
            degraded_settings,
            read_only_settings,
            kubernetes_writes,
            split_brain,
            router_role,
            router_held,
            role_since,
            role_sources_disagree,
            takeover_duration,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The same metrics in the Prometheus text format (0.0.4), for scrapers that do not ask
    /// for OpenMetrics (curl, `promtool check metrics`): the samples are the same; a
    /// counter's HELP and TYPE name its samples' `_total` name, an info metric is a gauge
    /// named `<name>_info`, and there is no `# UNIT` or `# EOF`.
    pub fn encode_prometheus_text(&self) -> String {
        let open = self.encode();
        let mut types: HashMap<&str, &str> = HashMap::new();
        for line in open.lines() {
            if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' '))
            {
                types.insert(name, kind);
            }
        }
        let rename = |name: &str| match types.get(name) {
            Some(&"counter") => format!("{name}_total"),
            Some(&"info") => format!("{name}_info"),
            _ => name.to_string(),
        };
        let mut out = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            if let Some((name, help)) = line.strip_prefix("# HELP ").and_then(|r| r.split_once(' '))
            {
                let _ = writeln!(out, "# HELP {} {help}", rename(name));
            } else if let Some((name, kind)) =
                line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' '))
            {
                let kind = if kind == "info" { "gauge" } else { kind };
                let _ = writeln!(out, "# TYPE {} {kind}", rename(name));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// 0.5 ms to ~16 s, doubling: a quiet pass takes about a millisecond, one that waits for
/// OVSDB or retries a step takes seconds.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// `hagw_announcement_frames_total`, read from the announcer's own counter at scrape time.
#[derive(Debug)]
struct AnnouncementFrames;

impl Collector for AnnouncementFrames {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(hagw_backends::announce::frames_sent());
        let metric = encoder.encode_descriptor(
            "hagw_announcement_frames",
            "Gratuitous ARP and unsolicited NA frames sent after takeovers (repeats included)",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hagw_core::model::Role;

    #[test]
    fn exposition_has_the_documented_names_and_labels() {
        let m = Metrics::new();
        m.actions
            .get_or_create(&ActionLabels { kind: "link-down", result: ActionResult::Ok })
            .inc();
        m.errors.get_or_create(&ErrorLabels { kind: ErrorKind::Transient }).inc();
        m.role_transitions.get_or_create(&TransitionLabels { to: RoleLabel(Role::Primary) }).inc();
        m.reconcile_duration
            .get_or_create(&PassLabels { result: PassResult::Converged })
            .observe(0.002);
        m.standby_tx_packets.get_or_create(&RouterLabels { router: "r1".into() }).inc_by(3);
        m.leak_alarm.get_or_create(&RouterLabels { router: "r1".into() }).set(1);
        m.held_standby_ports.set(2);
        m.kubernetes_writes.get_or_create(&WriteLabels { kind: "status", result: "ok" }).inc();
        let object = ObjectLabels { namespace: "ns".into(), harouter: "r1".into() };
        m.split_brain.get_or_create(&object).set(1);
        let text = m.encode();
        for line in [
            "hagw_actions_total{kind=\"link-down\",result=\"ok\"} 1",
            "hagw_errors_total{kind=\"transient\"} 1",
            "hagw_role_transitions_total{to=\"primary\"} 1",
            "hagw_reconcile_duration_seconds_count{result=\"converged\"} 1",
            "hagw_standby_tx_packets_total{router=\"r1\"} 3",
            "hagw_leak_alarm{router=\"r1\"} 1",
            "hagw_held_standby_ports 2",
            "hagw_kubernetes_writes_total{kind=\"status\",result=\"ok\"} 1",
            "hagw_split_brain{namespace=\"ns\",harouter=\"r1\"} 1",
            "# TYPE hagw_announcement_frames counter",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("hagw_announcement_frames_total "), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("hagw_build_info{version=\""), "{text}");
    }

    #[test]
    fn the_prometheus_text_format_names_counters_by_their_samples() {
        let m = Metrics::new();
        m.errors.get_or_create(&ErrorLabels { kind: ErrorKind::Transient }).inc();
        let text = m.encode_prometheus_text();
        assert!(text.contains("# TYPE hagw_errors_total counter\n"), "{text}");
        assert!(text.contains("# HELP hagw_errors_total Failed"), "{text}");
        assert!(text.contains("hagw_errors_total{kind=\"transient\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE hagw_build_info gauge\n"), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# TYPE hagw_errors counter"), "{text}");
    }
}
