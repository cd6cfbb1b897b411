//! Reads a router's role inputs (its configured source and, when the spec names them, the
//! presence of keepalived's primary VIP on the HA device and whether keepalived runs) and
//! applies the one role rule ([`RoleInputs::resolve`]). Every command and mode gets its role
//! here: the agents, `plan`, `reconcile`, `notify` and the Kubernetes hand-back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use hagw_backends::linux::LinuxNet;
use hagw_backends::netns::Netns;
use hagw_core::liveness::keepalived_liveness;
use hagw_core::model::{Role, RoleSource, RouterSpec};
use hagw_core::role::{RoleInputs, RoleReason, RunningProcess, read_state_file};
use tracing::debug;

/// A router's role, why, and whether its inputs agree.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    pub role: Role,
    pub reason: RoleReason,
    pub disagree: bool,
    /// Whether keepalived's primary VIP is on the HA device, as a live keepalived put it
    /// there: `None` when it cannot be read, or when keepalived is down or just started (a
    /// VIP it left behind then is stale and does not count).
    pub vip: Option<bool>,
    /// Its keepalived, when the spec names a pid file and it runs.
    pub keepalived: Option<RunningProcess>,
}

pub struct RoleReader {
    linux: LinuxNet,
    /// The last non-empty reading of each state file: Neutron truncates the file before
    /// writing the new word, and an inotify event can land in between. Reading that empty
    /// moment as "unknown" would hold a primary's port for an instant.
    last_reading: Mutex<HashMap<PathBuf, Role>>,
}

impl RoleReader {
    pub fn new(linux: LinuxNet) -> Self {
        RoleReader { linux, last_reading: Mutex::new(HashMap::new()) }
    }

    /// The router's role now, and its keepalived if the spec names a pid file and that
    /// keepalived runs (the agent watches it: the end of its start-up, its exit).
    pub async fn resolve(&self, spec: &RouterSpec) -> (Role, Option<RunningProcess>) {
        self.resolve_notified(spec, None).await
    }

    /// As [`RoleReader::resolve`], with the state keepalived announced to a notify script.
    pub async fn resolve_notified(
        &self,
        spec: &RouterSpec,
        notified: Option<Role>,
    ) -> (Role, Option<RunningProcess>) {
        let resolved = self.explain(spec, notified).await;
        (resolved.role, resolved.keepalived)
    }

    /// The role with the input that decided it and whether the inputs contradict each
    /// other (what `/status` and the metrics show).
    pub async fn explain(&self, spec: &RouterSpec, notified: Option<Role>) -> Resolved {
        // Where keepalived's liveness cannot be told (it runs in a pid namespace hagw cannot
        // see), the rule goes on as if no pid file were named.
        let keepalived =
            spec.keepalived_pid_file.as_deref().and_then(|f| keepalived_liveness(f).known());
        let inputs = RoleInputs {
            configured: self.configured(&spec.role),
            vip_present: self.vip_present(spec).await,
            keepalived,
            notified,
        };
        let (role, reason) = inputs.decide(&spec.role);
        let stale = matches!(reason, RoleReason::KeepalivedDown | RoleReason::KeepalivedStarting);
        Resolved {
            role,
            reason,
            disagree: inputs.disagree(&spec.role),
            vip: inputs.vip_present.filter(|_| !stale),
            keepalived: keepalived.flatten(),
        }
    }

    /// The configured role: the fixed one, or the state file's last non-empty reading
    /// (`None` before the first).
    fn configured(&self, source: &RoleSource) -> Option<Role> {
        let path = match source {
            RoleSource::Fixed(role) => return Some(*role),
            RoleSource::StateFile(path) => path,
        };
        let mut last = self.last_reading.lock().unwrap_or_else(|p| p.into_inner());
        match read_state_file(path) {
            Some(role) => Some(*last.entry(path.clone()).insert_entry(role).get()),
            None => last.get(path).copied(),
        }
    }

    /// Whether the primary VIP is on the HA device; `None` if the spec names no VIP or the
    /// device cannot be read (then the configured source decides).
    async fn vip_present(&self, spec: &RouterSpec) -> Option<bool> {
        let (vip, device) = (spec.primary_vip?, spec.ha_device.as_deref()?);
        match self.linux.addresses(&Netns::named(&spec.namespace), device).await {
            Ok(addresses) => Some(addresses.iter().any(|a| a.addr() == vip.addr())),
            Err(e) => {
                debug!(router = %spec.id, error = %e, "cannot read the HA device");
                None
            }
        }
    }
}
