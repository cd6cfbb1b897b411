//! Which of a pass's work is on the critical path of a role change.
//!
//! A router's takeover (observe, release its guard, announce) shares the machine with every
//! other router's passes: on a node where a thousand routers fail over, or resync, at once,
//! a single unrelated takeover queued behind all of their verifications and resyncs waited
//! for the whole wave. The reconcile loop marks the work of a pass that a role change waits
//! for as urgent ([`urgent`]); shared resources with a queue (the backends' namespace
//! threads) serve urgent work first ([`is_urgent`]). Urgency orders work and nothing else: it
//! never skips a step or changes what the planner decided, so the order of one router's
//! steps is the same either way.

use std::future::Future;

tokio::task_local! {
    static URGENT: bool;
}

/// Runs `work` with its urgency set to `urgent` (for everything it awaits on this task).
pub async fn urgent<F: Future>(urgent: bool, work: F) -> F::Output {
    URGENT.scope(urgent, work).await
}

/// Whether the work running now is on a role change's critical path: false outside
/// [`urgent`], e.g. on a task spawned by the pass (an announcement's later rounds).
pub fn is_urgent() -> bool {
    URGENT.try_with(|u| *u).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urgency_is_scoped_to_the_work() {
        assert!(!is_urgent());
        assert!(urgent(true, async { is_urgent() }).await);
        assert!(!urgent(false, async { is_urgent() }).await);
        // Nested: the innermost scope wins, and a spawned task starts without it.
        let inner = urgent(true, async {
            let nested = urgent(false, async { is_urgent() }).await;
            let spawned = tokio::spawn(async { is_urgent() }).await.unwrap();
            (nested, spawned, is_urgent())
        })
        .await;
        assert_eq!(inner, (false, false, true));
    }
}
