//! What happens to a router's port when this node stops hosting it (its HARouter deleted,
//! or this node removed from `nodes`).
//!
//! Simply forgetting the router would leave a standby's port held (link down or on the dead
//! VLAN) with nobody left to release it: if keepalived later made this node primary, the
//! router would be unreachable. So the agent hands the port back: it reconciles it to
//! convergence once more with the `silence-only` strategy and the role from the router's own
//! source, which lifts any hold only after the port has been silent for the settle time
//! (no leak) and leaves IPv6 silenced on a standby, then stops managing it. The port is then
//! exactly as Neutron's agents would leave it without hagw. `hagw release` does the same for
//! the routers of a configuration file.

use std::time::Duration;

use hagw_backends::dataplane::HostDataplane;
use hagw_core::reconcile::{RetryPolicy, RouterMemory, reconcile_router};
use hagw_core::{RouterSpec, Strategy, Wait};
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

/// Hands `spec`'s port back; `false` if it did not converge (the port may still be held).
pub async fn hand_back(dataplane: HostDataplane, mut spec: RouterSpec) -> bool {
    spec.strategy = Strategy::SilenceOnly;
    let mut memory = RouterMemory::default();
    let policy = RetryPolicy::default();
    let roles = RoleReader::new(dataplane.linux().clone());
    for _ in 0..MAX_PASSES {
        let (role, _) = roles.resolve(&spec).await;
        match reconcile_router(&dataplane, &spec, role, &mut memory, &policy, None).await {
            Ok(report) => match report.wait {
                Some(Wait::SilenceSettling { remaining }) => tokio::time::sleep(remaining).await,
                _ => {
                    info!(role = role.as_str(), "port handed back; no longer managed");
                    return true;
                }
            },
            Err(e) => {
                warn!(error = %e, "hand-back pass failed; retrying");
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
    warn!("hand-back did not converge; the port may still be held");
    false
}
