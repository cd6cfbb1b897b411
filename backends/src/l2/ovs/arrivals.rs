//! The planner's [`HoldOnArrival`] in force between passes.
//!
//! A standby's new port must be held before the OVS agent wires it, which it does a few
//! milliseconds after ovs-vswitchd attaches the port: faster than a pass, which observes
//! everything before it acts, can follow. So every plan says ahead what to do when the port
//! arrives, the reconcile loop hands that to the backend (`Dataplane::hold_on_arrival`), and
//! this task applies it to what [`crate::ovs_watch`] reports. It decides nothing itself:
//! without a decision for a port it does nothing, and a hold lifted by someone else (the OVS
//! agent's retag) is left to the router's next pass, which the same report wakes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hagw_core::planner::HoldOnArrival;
use tokio::sync::watch;
use tracing::{Instrument, debug, info_span, warn};

use super::{OvsBackend, Rehold, target};
use crate::ovs_watch::{PortChange, PortEvent};

/// Attempts per hold: a lost `wait` race (against the writer whose change we saw) is retried
/// at once on a fresh read.
const ATTEMPTS: u32 = 3;

/// How long to wait before trying to watch OVSDB again while it cannot be reached.
const RETRY_WATCH: Duration = Duration::from_secs(1);

/// The decisions per port, and whether the task applying them runs.
#[derive(Debug)]
pub(super) struct Arrivals {
    decisions: watch::Sender<BTreeMap<String, HoldOnArrival>>,
    started: Mutex<bool>,
}

impl Default for Arrivals {
    fn default() -> Self {
        Arrivals { decisions: watch::Sender::new(BTreeMap::new()), started: Mutex::new(false) }
    }
}

impl Arrivals {
    /// Records the planner's decision for `port`; the first one to hold starts the task.
    pub(super) fn set(&self, backend: &OvsBackend, port: &str, hold: HoldOnArrival) {
        self.decisions.send_if_modified(|decisions| match hold {
            HoldOnArrival::Never => decisions.remove(port).is_some(),
            hold => decisions.insert(port.to_owned(), hold) != Some(hold),
        });
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        if hold != HoldOnArrival::Never && !*started {
            *started = true;
            let span = info_span!("ovs_arrivals", endpoint = %backend.endpoint);
            tokio::spawn(apply(backend.clone(), self.decisions.subscribe()).instrument(span));
        }
    }
}

/// Whether `event` means to hold a port whose standing decision is `hold`: an arrived port
/// the planner holds on arrival, and after an OVSDB reconnect or an ovs-vswitchd restart
/// (which may have lost a hold with nothing to see in OVSDB) a port it keeps held. Anything
/// else is the passes'.
fn due(event: &PortEvent, hold: Option<&HoldOnArrival>) -> bool {
    match event {
        PortEvent::Change(PortChange::Arrived(_)) => {
            hold.is_some_and(|h| *h != HoldOnArrival::Never)
        }
        PortEvent::Change(PortChange::Resync) | PortEvent::Restarted(_) => {
            hold == Some(&HoldOnArrival::Always)
        }
        PortEvent::Change(PortChange::Port(_)) | PortEvent::Recheck => false,
    }
}

/// The ports `event` means to hold under `decisions` (see [`due`]).
fn to_hold(event: &PortEvent, decisions: &BTreeMap<String, HoldOnArrival>) -> Vec<String> {
    match event {
        PortEvent::Change(PortChange::Arrived(port)) => {
            if due(event, decisions.get(port)) {
                vec![port.clone()]
            } else {
                vec![]
            }
        }
        _ => decisions
            .iter()
            .filter(|(_, hold)| due(event, Some(hold)))
            .map(|(port, _)| port.clone())
            .collect(),
    }
}

/// Applies `decisions` to every reported event, for as long as the backend's events last.
async fn apply(backend: OvsBackend, decisions: watch::Receiver<BTreeMap<String, HoldOnArrival>>) {
    let mut events = loop {
        match backend.events(None).await {
            Ok(events) => break events,
            Err(e) => debug!(error = %e, "cannot watch OVS ports yet; retrying"),
        }
        tokio::time::sleep(RETRY_WATCH).await;
    };
    while let Some(event) = events.next().await {
        let ports = to_hold(&event, &decisions.borrow());
        // After a resync or an ovs-vswitchd restart that is every held port: all at once,
        // so their `no-receive` goes out in one OpenFlow exchange per bridge (one after the
        // other, 1,000 ports took one exchange each, each listing 3,000+ ports).
        let holds = ports.iter().map(|port| {
            let (backend, decisions, event) = (&backend, &decisions, &event);
            async move {
                // A router that turned primary since the event has withdrawn its decision,
                // and its released port must not be held again (seen in a mass failover of
                // 1,000 routers).
                if !due(event, decisions.borrow().get(port)) {
                    debug!(port, "no longer held on arrival, skipped");
                    return;
                }
                hold(backend, port).instrument(info_span!("arrival", target = %target(port))).await;
            }
        });
        futures::future::join_all(holds).await;
    }
}

/// Holds `port`, retrying at once on a transient failure; a failure after that is left to
/// the router's pass, which the same report woke.
async fn hold(backend: &OvsBackend, port: &str) {
    for attempt in 1..=ATTEMPTS {
        match backend.hold_if_present(port).await {
            Ok(Rehold::Held | Rehold::Absent) => return,
            // Its attach is reported and completes the hold.
            Ok(Rehold::AwaitingAttach) => {
                debug!(port, "held in OVSDB; no-receive once ovs-vswitchd attaches it");
                return;
            }
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                debug!(port, attempt, error = %e, "hold on arrival raced, retrying");
            }
            Err(e) => warn!(port, error = %e, "hold on arrival failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_arrivals_and_lost_holds_are_held_and_only_as_the_planner_decided() {
        let decisions: BTreeMap<String, HoldOnArrival> = [
            ("qg-kept".to_owned(), HoldOnArrival::Always),
            ("qg-settled".to_owned(), HoldOnArrival::NewPort),
            ("qg-primary".to_owned(), HoldOnArrival::Never),
        ]
        .into();
        let arrived = |p: &str| PortEvent::Change(PortChange::Arrived(p.into()));
        for (event, due) in [
            (arrived("qg-kept"), vec!["qg-kept"]),
            (arrived("qg-settled"), vec!["qg-settled"]),
            (arrived("qg-primary"), vec![]),
            (arrived("qg-unmanaged"), vec![]),
            // A retag is the next pass's to repair.
            (PortEvent::Change(PortChange::Port("qg-kept".into())), vec![]),
            (PortEvent::Recheck, vec![]),
            // A settled silence-only standby's released port stays released.
            (PortEvent::Change(PortChange::Resync), vec!["qg-kept"]),
            (PortEvent::Restarted("br-int".into()), vec!["qg-kept"]),
        ] {
            assert_eq!(to_hold(&event, &decisions), due, "{event:?}");
        }
    }

    #[test]
    fn a_decision_withdrawn_during_a_resync_stops_its_hold() {
        let resync = PortEvent::Change(PortChange::Resync);
        assert!(due(&resync, Some(&HoldOnArrival::Always)));
        // The router turned primary: its plan withdrew the decision (`Never` removes it).
        assert!(!due(&resync, None));
        assert!(!due(&resync, Some(&HoldOnArrival::NewPort)));
        let arrived = PortEvent::Change(PortChange::Arrived("qg-1".into()));
        assert!(due(&arrived, Some(&HoldOnArrival::NewPort)));
        assert!(!due(&arrived, None));
    }
}
