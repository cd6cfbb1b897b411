//! What `GET /status` answers and `hagw status` prints: one entry per router the agent
//! manages, as its last pass left it.

use std::time::SystemTime;

use hagw_core::model::{Role, RouterSpec};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One router as the agent last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterStatus {
    pub router: String,
    pub namespace: String,
    pub gateway_device: String,
    pub strategy: String,
    pub backend: String,
    /// `primary`, `standby` or `unknown`; absent until the first pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Which input decided the role: `fixed`, `keepalived-down`, `keepalived-starting`,
    /// `vip`, `notify`, `state-file`, `no-source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_reason: Option<String>,
    /// The node's role inputs contradict each other (VIP, state file, keepalived).
    #[serde(default)]
    pub role_sources_disagree: bool,
    /// The router's live keepalived holds the primary VIP on this node; absent when unread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_present: Option<bool>,
    /// The port is held (L2 hold, or link down) after the last converged pass.
    pub held: bool,
    /// When `held` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_since: Option<String>,
    /// When the role last changed (RFC 3339), and from what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_role: Option<String>,
    /// The last pass's error, if it failed; cleared by a converged pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Side settings the router runs without (e.g. an IPv6 sysctl that could not be written),
    /// with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<String>,
    /// Side settings not applied because `/proc/sys` is read-only here (a non-privileged
    /// container): expected there, and the same on every router.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<String>,
    /// The standby's port transmitted between two passes while it was meant to be silent.
    pub leak_alarm: bool,
}

impl RouterStatus {
    pub(super) fn new(spec: &RouterSpec) -> RouterStatus {
        RouterStatus {
            router: spec.id.clone(),
            namespace: spec.namespace.clone(),
            gateway_device: spec.gateway_device.clone(),
            strategy: spec.strategy.as_str().to_string(),
            backend: spec.backend.kind().to_string(),
            role: None,
            role_reason: None,
            role_sources_disagree: false,
            vip_present: None,
            held: false,
            held_since: None,
            last_transition: None,
            previous_role: None,
            last_error: None,
            degraded: Vec::new(),
            read_only: Vec::new(),
            leak_alarm: false,
        }
    }

    /// Records the role of a pass that started at `at`.
    pub(super) fn role(&mut self, role: Role, from: Option<Role>, at: SystemTime) {
        if let Some(from) = from {
            self.previous_role = Some(from.as_str().to_string());
            self.last_transition = Some(rfc3339(at));
        }
        self.role = Some(role.as_str().to_string());
    }

    pub(super) fn held(&mut self, held: bool, at: SystemTime) {
        if self.held_since.is_none() || self.held != held {
            self.held_since = Some(rfc3339(at));
        }
        self.held = held;
    }
}

fn rfc3339(at: SystemTime) -> String {
    Timestamp::try_from(at).map(|t| t.to_string()).unwrap_or_default()
}
