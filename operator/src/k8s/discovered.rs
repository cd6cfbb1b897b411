//! The discovered routers across a restart or a node's boot. Neutron's files are found through
//! the root of the L3 agent's process (`neutron.root: process`), which at a node's boot runs
//! only once Neutron's agents start: until then the routers it had are known from the cache
//! alone, and its ports may be plugged the moment it runs. So the cached routers are enforced
//! at start, hold-only ([`hagw_core::observed::Observed::hold_only`]: a standby's port held
//! by name as it appears, nothing released, added or announced from a cache that may be
//! stale), until Neutron's files are read again; from then on what they say is the truth, and
//! a cached router they no longer have (deleted while the node was down) is dropped (handed
//! back like any router that goes) and leaves the cache.

use std::collections::BTreeSet;

use hagw_core::RouterSpec;

#[derive(Debug, Default)]
pub struct Discovered {
    /// What Neutron's files say (nothing until they are found).
    found: Vec<RouterSpec>,
    /// Cached routers waiting for Neutron's files to be read again.
    cached: Vec<RouterSpec>,
}

impl Discovered {
    /// Starts from the routers cached before the restart.
    pub fn cached(cached: Vec<RouterSpec>) -> Discovered {
        Discovered { found: Vec::new(), cached }
    }

    /// Takes what discovery found; `read` says whether Neutron's files were read (a state
    /// path found), which ends the cached routers' wait. Returns what to cache then.
    pub fn update(&mut self, found: Vec<RouterSpec>, read: bool) -> Option<&[RouterSpec]> {
        self.found = found;
        if !read {
            return None;
        }
        self.cached.clear();
        Some(&self.found)
    }

    /// Whether cached routers still wait for Neutron's files.
    pub fn waiting(&self) -> bool {
        !self.cached.is_empty()
    }

    /// The routers to enforce: those found, then the cached ones not found (yet).
    pub fn routers(&self) -> Vec<RouterSpec> {
        let waiting = self.cached.iter().filter(|c| !self.found.iter().any(|f| f.id == c.id));
        self.found.iter().chain(waiting).cloned().collect()
    }

    /// The ids of the routers to enforce hold-only: the cached ones not found (yet).
    pub fn hold_only(&self) -> BTreeSet<String> {
        let found: BTreeSet<&str> = self.found.iter().map(|f| f.id.as_str()).collect();
        self.cached.iter().map(|c| c.id.clone()).filter(|id| !found.contains(id.as_str())).collect()
    }
}

#[cfg(test)]
mod tests {
    use hagw_core::model::{Role, RoleSource};

    use super::*;

    fn router(id: &str, state_file: &str) -> RouterSpec {
        RouterSpec {
            gateway_addresses: vec![],
            backend: Default::default(),
            strategy: Default::default(),
            role: if state_file.is_empty() {
                RoleSource::Fixed(Role::Standby)
            } else {
                RoleSource::StateFile(state_file.into())
            },
            ..hagw_core::testing::router(id)
        }
    }

    fn ids(routers: &[RouterSpec]) -> Vec<&str> {
        routers.iter().map(|r| r.id.as_str()).collect()
    }

    /// A node's boot: the cached routers are enforced hold-only while the L3 agent's process
    /// is not there; once its files are read, they say which routers exist: one deleted while
    /// the node was down goes (from the routers and the cache), the others are enforced from
    /// their fresh specs, no longer hold-only.
    #[test]
    fn cached_routers_are_hold_only_until_neutron_is_read_and_then_it_decides() {
        let old = [router("a", "/proc/10/root/a"), router("b", "/proc/10/root/b")];
        let mut d = Discovered::cached(old.to_vec());
        assert!(d.waiting());
        assert_eq!(ids(&d.routers()), ["a", "b"]);
        assert_eq!(d.hold_only(), BTreeSet::from(["a".into(), "b".into()]));

        // Not found yet (no state path): nothing changes, nothing to cache.
        assert_eq!(d.update(Vec::new(), false), None);
        assert_eq!(ids(&d.routers()), ["a", "b"]);

        // Read through the new process: `b` was deleted while the node was down.
        let fresh = router("a", "/proc/77/root/a");
        let cache = d.update(vec![fresh.clone()], true).map(<[_]>::to_vec);
        assert_eq!(cache, Some(vec![fresh.clone()]));
        assert!(!d.waiting());
        assert_eq!(d.routers(), [fresh]);
        assert!(d.hold_only().is_empty());
    }

    /// Nothing cached (a first start): nothing waits, and the routers are what is found.
    #[test]
    fn without_a_cache_the_found_routers_are_all() {
        let mut d = Discovered::cached(Vec::new());
        assert!(!d.waiting());
        d.update(vec![router("a", "")], true);
        assert_eq!(ids(&d.routers()), ["a"]);
        assert!(d.hold_only().is_empty());
    }

    /// A router found before the others' files are read (found under one state path while
    /// the rest have not been read: not possible with one L3 agent, but the rule holds): a
    /// found spec wins over its cached one and is not hold-only.
    #[test]
    fn a_found_router_wins_over_its_cached_spec() {
        let mut d = Discovered::cached(vec![router("a", "/old/a"), router("b", "/old/b")]);
        d.update(vec![router("a", "/new/a")], false);
        assert_eq!(d.routers(), [router("a", "/new/a"), router("b", "/old/b")]);
        assert_eq!(d.hold_only(), BTreeSet::from(["b".into()]));
    }
}
