//! What this node enforces: the hand-written routers listing it, and the routers it
//! discovered with the overrides their `HARouter` objects carry.
//!
//! A hand-written router (an object with a `router`) wins over a discovered router with the
//! same id or gateway port. A discovered router is reported in the object the agents publish
//! for it (labelled [`DISCOVERED_LABEL`](super::source::DISCOVERED_LABEL)); until it exists,
//! the agent creates it. Overrides that make the router invalid are ignored as a whole (the
//! discovered settings are enforced) and named in the router's status.

use std::collections::HashSet;

use hagw_core::RouterSpec;
use hagw_core::config::validate_router;
use hagw_core::model::Strategy;

use super::source::{Assigned, NodeView, Origin, Rejected};

/// A router to enforce, where to report it, and what the report must add.
#[derive(Debug, Clone, PartialEq)]
pub struct Enforced {
    pub assigned: Assigned,
    /// Overrides that were ignored, and why.
    pub ignored: Option<String>,
    /// Found on this node (never cached: Neutron's files are read again at start-up).
    pub discovered: bool,
}

impl Enforced {
    pub fn strategy(&self) -> Strategy {
        self.assigned.spec.strategy
    }

    /// The router's spec, and where it is reported (kept apart by the agent's loop:
    /// [`crate::agent::Wanted`]).
    pub fn split(self) -> (RouterSpec, Reported) {
        let Enforced { assigned: Assigned { origin, spec }, ignored, discovered } = self;
        (spec, Reported { origin, ignored, discovered })
    }

    pub fn join(spec: RouterSpec, reported: &Reported) -> Enforced {
        let Reported { origin, ignored, discovered } = reported.clone();
        Enforced { assigned: Assigned { origin, spec }, ignored, discovered }
    }
}

/// Where a router's passes are reported: an [`Enforced`] without its spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Reported {
    pub origin: Origin,
    pub ignored: Option<String>,
    pub discovered: bool,
}

/// The outcome of [`merge`].
#[derive(Debug, Default)]
pub struct Desired {
    pub routers: Vec<Enforced>,
    pub rejected: Vec<Rejected>,
    /// Discovered routers without a published object yet, with their ids: the agent creates
    /// one each.
    pub publish: Vec<(Origin, String)>,
}

/// Joins the objects' view with the routers this node discovered. `home` is the namespace
/// the agent publishes objects in.
pub fn merge(view: NodeView, discovered: &[RouterSpec], home: &str) -> Desired {
    let ids: HashSet<&str> = view.assigned.iter().map(|a| a.spec.id.as_str()).collect();
    let ports: HashSet<(&str, &str)> = view
        .assigned
        .iter()
        .map(|a| (a.spec.namespace.as_str(), a.spec.gateway_device.as_str()))
        .collect();
    let mut desired = Desired { rejected: view.rejected, ..Desired::default() };
    for found in discovered {
        let port = (found.namespace.as_str(), found.gateway_device.as_str());
        if ids.contains(found.id.as_str()) || ports.contains(&port) {
            continue;
        }
        let local = view.views.get(&found.id);
        let origin = match local.and_then(|v| v.target.clone()) {
            Some(target) => target,
            None => {
                let origin = Origin {
                    namespace: home.to_string(),
                    name: object_name(&found.id),
                    uid: None,
                    generation: None,
                };
                desired.publish.push((origin.clone(), found.id.clone()));
                origin
            }
        };
        let (spec, ignored) = match local {
            Some(v) => {
                let spec = v.overrides.apply(found.clone());
                match validate_router(&spec) {
                    Ok(()) => (spec, None),
                    Err((field, message)) => {
                        let from = v.user.as_ref().unwrap_or(&origin);
                        let note = format!(
                            "overrides of HARouter {}/{} ignored: {field}: {message}",
                            from.namespace, from.name
                        );
                        (found.clone(), Some(note))
                    }
                }
            }
            None => (found.clone(), None),
        };
        let assigned = Assigned { origin, spec };
        desired.routers.push(Enforced { assigned, ignored, discovered: true });
    }
    desired.routers.extend(view.assigned.into_iter().map(|assigned| Enforced {
        assigned,
        ignored: None,
        discovered: false,
    }));
    desired
}

/// The object name for a router id: the id itself when it is a valid object name (Neutron's
/// UUIDs are), else `router-` and a stable hash of it.
pub fn object_name(id: &str) -> String {
    let valid = !id.is_empty()
        && id.len() <= 253
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if valid {
        return id.to_string();
    }
    // FNV-1a: stable across releases and platforms, unlike std's hasher.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("router-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hagw_core::model::{L2BackendSpec, RoleSource};
    use kube::api::{ApiResource, DynamicObject};
    use serde_json::json;

    use super::*;
    use crate::k8s::crd::HARouter;
    use crate::k8s::source::node_view;

    fn router(id: &str, device: &str) -> RouterSpec {
        RouterSpec {
            gateway_device: device.into(),
            role: RoleSource::StateFile("/var/lib/neutron/ha_confs/x/state".into()),
            ..hagw_core::testing::router(id)
        }
    }

    fn object(name: &str, discovered: bool, spec: serde_json::Value) -> Arc<DynamicObject> {
        let mut obj = DynamicObject::new(name, &ApiResource::erase::<HARouter>(&()))
            .within("hagw")
            .data(json!({ "spec": spec }));
        if discovered {
            obj.metadata.labels = Some([("hagw.dev/discovered".into(), "true".into())].into());
        }
        Arc::new(obj)
    }

    fn merged(objects: &[Arc<DynamicObject>], discovered: &[RouterSpec]) -> Desired {
        merge(node_view(objects, "n1"), discovered, "hagw")
    }

    fn spec_of<'a>(d: &'a Desired, id: &str) -> &'a Enforced {
        d.routers.iter().find(|e| e.assigned.spec.id == id).expect("router enforced")
    }

    #[test]
    fn a_discovered_router_without_an_object_is_enforced_and_published() {
        let d = merged(&[], &[router("r1", "qg-1")]);
        assert_eq!(d.routers.len(), 1);
        let e = spec_of(&d, "r1");
        assert_eq!(e.assigned.spec, router("r1", "qg-1"));
        assert_eq!(
            (e.assigned.origin.namespace.as_str(), e.assigned.origin.name.as_str()),
            ("hagw", "r1")
        );
        assert_eq!(d.publish, vec![(e.assigned.origin.clone(), "r1".to_string())]);
    }

    #[test]
    fn a_published_object_is_the_status_target_and_is_not_published_again() {
        let objects = [object("r1", true, json!({"routerId": "r1"}))];
        let d = merged(&objects, &[router("r1", "qg-1")]);
        assert!(d.publish.is_empty());
        assert_eq!(spec_of(&d, "r1").assigned.origin.name, "r1");
        assert_eq!(spec_of(&d, "r1").assigned.spec, router("r1", "qg-1"));
    }

    #[test]
    fn overrides_replace_only_the_fields_they_set_and_a_user_object_wins_per_field() {
        let objects = [
            object(
                "r1",
                true,
                json!({"routerId": "r1", "overrides": {
                "strategy": "link-down", "silenceSettleMs": 500}}),
            ),
            object(
                "mine",
                false,
                json!({"routerId": "r1", "overrides": {
                "announce": {"repeats": 1}, "silenceSettleMs": 700}}),
            ),
        ];
        let d = merged(&objects, &[router("r1", "qg-1")]);
        let e = spec_of(&d, "r1");
        assert_eq!(e.assigned.spec.strategy, Strategy::LinkDown);
        assert_eq!(e.assigned.spec.silence_settle_ms, 700);
        assert_eq!(e.assigned.spec.announce.repeats, 1);
        // Untouched: what discovery found.
        assert_eq!(e.assigned.spec.backend, L2BackendSpec::Ovs { port: None });
        assert_eq!(e.assigned.spec.gateway_addresses, router("r1", "qg-1").gateway_addresses);
        assert_eq!(e.assigned.origin.name, "r1", "status goes to the published object");
        assert_eq!(e.ignored, None);
    }

    #[test]
    fn a_backend_override_is_typed_like_the_routers_file() {
        let objects = [object(
            "mine",
            false,
            json!({"routerId": "r1", "overrides": {
            "backend": {"linuxbridge": {"port": "tap1", "bridge": "brq1"}}}}),
        )];
        let d = merged(&objects, &[router("r1", "qg-1")]);
        let e = spec_of(&d, "r1");
        assert_eq!(
            e.assigned.spec.backend,
            L2BackendSpec::Linuxbridge { port: "tap1".into(), bridge: "brq1".into() }
        );
        // The user object is no status target: the router is still to be published.
        assert_eq!(d.publish.len(), 1);
    }

    #[test]
    fn overrides_making_the_router_invalid_are_ignored_as_a_whole_and_named() {
        let objects = [object(
            "mine",
            false,
            json!({"routerId": "r1", "overrides": {
            "backend": "generic", "silenceSettleMs": 10}}),
        )];
        let d = merged(&objects, &[router("r1", "qg-1")]);
        let e = spec_of(&d, "r1");
        assert_eq!(e.assigned.spec, router("r1", "qg-1"), "nothing half-applied");
        let note = e.ignored.as_deref().expect("ignored overrides are reported");
        assert!(note.contains("HARouter hagw/mine") && note.contains("strategy"), "{note}");
    }

    #[test]
    fn a_hand_written_router_wins_by_id_and_by_port() {
        let mut hand = router("r1", "qg-1");
        hand.strategy = Strategy::LinkDown;
        hand.backend = L2BackendSpec::Generic;
        let spec = json!({"nodes": ["n1"], "router": serde_json::to_value(&hand).unwrap()});
        let objects = [object("static", false, spec)];
        let mut same_port = router("r2", "qg-1");
        same_port.namespace = hand.namespace.clone();
        let d = merged(&objects, &[router("r1", "qg-1"), same_port, router("r3", "qg-3")]);
        let ids: Vec<&str> = d.routers.iter().map(|e| e.assigned.spec.id.as_str()).collect();
        assert_eq!(ids, ["r3", "r1"]);
        assert_eq!(spec_of(&d, "r1").assigned.spec, hand);
        assert_eq!(spec_of(&d, "r1").assigned.origin.name, "static");
    }

    #[test]
    fn static_routers_work_without_discovery() {
        let hand = router("r1", "qg-1");
        let spec = json!({"nodes": ["n1"], "router": serde_json::to_value(&hand).unwrap()});
        let d = merged(&[object("static", false, spec.clone())], &[]);
        assert_eq!(d.routers.len(), 1);
        assert!(d.publish.is_empty());
        let other = merge(node_view(&[object("static", false, spec)], "n2"), &[], "hagw");
        assert!(other.routers.is_empty(), "not listed: not enforced");
    }

    #[test]
    fn a_second_user_override_or_an_object_with_neither_router_nor_id_is_rejected() {
        let objects = [
            object("a", false, json!({"routerId": "r1", "overrides": {"silenceSettleMs": 1}})),
            object("b", false, json!({"routerId": "r1", "overrides": {"silenceSettleMs": 2}})),
            object("c", false, json!({"nodes": ["n1"]})),
        ];
        let d = merged(&objects, &[router("r1", "qg-1")]);
        let rejected: Vec<&str> = d.rejected.iter().map(|r| r.origin.name.as_str()).collect();
        assert_eq!(rejected, ["b", "c"]);
        assert!(d.rejected[0].error.contains("HARouter hagw/a"), "{}", d.rejected[0].error);
        assert!(d.rejected[1].error.contains("routerId"), "{}", d.rejected[1].error);
        assert_eq!(spec_of(&d, "r1").assigned.spec.silence_settle_ms, 1);
    }

    #[test]
    fn object_names_are_the_id_when_valid_and_a_stable_hash_otherwise() {
        let uuid = "6f3c5e9a-1b2d-4c8e-9f00-0123456789ab";
        assert_eq!(object_name(uuid), uuid);
        let odd = object_name("Router_1");
        assert!(odd.starts_with("router-") && odd.len() == 23, "{odd}");
        assert_eq!(odd, object_name("Router_1"));
        assert_ne!(odd, object_name("Router_2"));
    }
}
