//! What happens to a router's port when this node stops hosting it (its HARouter deleted,
//! or this node removed from `nodes`).
//!
//! Simply forgetting the router would leave a standby's port held (link down or on the dead
//! VLAN) with nobody left to release it: if keepalived later made this node primary, the
//! router would be unreachable. So the agent hands the port back: it reconciles it to
//! convergence once more in the planner's hand-back mode, with the role from the router's
//! own source, then stops managing it. A standby is silenced as far as it can be (addresses
//! removed, address generation off, `accept_ra` and `forwarding` off where `/proc/sys` is
//! writable), its hold lifted once that silence has settled, its link up; what could not be
//! applied is logged and does not keep the hold (a read-only `/proc/sys` in a non-privileged
//! pod). The port is then as Neutron's agents would leave it without hagw. `hagw release`
//! does the same for the routers of a configuration file.

use std::time::Duration;

use hagw_backends::dataplane::HostDataplane;
use hagw_core::action::Action;
use hagw_core::reconcile::{RetryPolicy, RouterMemory, reconcile_router};
use hagw_core::{RouterSpec, Wait};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

use crate::roles::RoleReader;

/// Passes before giving up (each waits for the silence to settle or retries after a failure).
const MAX_PASSES: u32 = 10;
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Starts handing back `spec`'s port; abort the task if the router is managed again.
pub fn spawn(dataplane: HostDataplane, node: &str, spec: RouterSpec) -> JoinHandle<()> {
    let span = info_span!("hand_back", router = %spec.id, node, netns = %spec.namespace);
    tokio::spawn(
        async move {
            hand_back(dataplane, spec).await;
        }
        .instrument(span),
    )
}

/// Hands `spec`'s port back; `None` if it did not converge (the port may still be held),
/// else the settings it could not apply.
pub async fn hand_back(dataplane: HostDataplane, spec: RouterSpec) -> Option<Vec<Action>> {
    let mut memory = RouterMemory::hand_back();
    let policy = RetryPolicy::default();
    let roles = RoleReader::new(dataplane.linux().clone());
    for _ in 0..MAX_PASSES {
        let (role, _) = roles.resolve(&spec).await;
        match reconcile_router(&dataplane, &spec, role, &mut memory, &policy, None).await {
            Ok(report) => match report.wait {
                Some(Wait::SilenceSettling { remaining }) => tokio::time::sleep(remaining).await,
                _ => {
                    let unapplied = memory.unapplied().to_vec();
                    if unapplied.is_empty() {
                        info!(role = role.as_str(), "port handed back; no longer managed");
                    } else {
                        let unapplied: Vec<String> =
                            unapplied.iter().map(ToString::to_string).collect();
                        warn!(
                            role = role.as_str(),
                            ?unapplied,
                            "port handed back without the settings that could not be applied; no longer managed"
                        );
                    }
                    return Some(unapplied);
                }
            },
            Err(e) => {
                warn!(error = %e, "hand-back pass failed; retrying");
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
    warn!("hand-back did not converge; the port may still be held");
    None
}
