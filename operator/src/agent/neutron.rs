//! Following a Neutron node's HA routers: where its state paths are (as they are, or through
//! the root of its L3 agent's or keepalived's processes), which routers they hold, and when
//! to look again. What is found is the desired state: a router, address or route Neutron
//! removed from keepalived.conf is gone from the next spec.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hagw_core::model::RouterSpec;
use hagw_core::neutron::{DiscoveryError, Located, NeutronDefaults, StateAccess, discover, locate};
use tracing::{info, warn};

use super::watch::{DirEvent, DirWatcher};

/// How often the state paths are looked for again: processes start and stop without an
/// event hagw could watch (a replaced agent pod has a new emptyDir, a restarted container a
/// new pid), and an `ha_confs` directory may appear after hagw started.
pub const RESCAN: Duration = Duration::from_secs(5);

/// How often while routers cached from before wait for Neutron's files (at a node's boot,
/// until the L3 agent's process runs): they are enforced hold-only until then.
pub const QUICK_RESCAN: Duration = Duration::from_millis(500);

/// Routers discovered from a Neutron node's `ha_confs` directories.
#[derive(Debug, Clone)]
pub struct NeutronSource {
    /// Neutron's `state_path`s (each holding `ha_confs`), as the L3 agent sees them.
    pub state_paths: Vec<PathBuf>,
    pub access: StateAccess,
    pub defaults: NeutronDefaults,
}

impl NeutronSource {
    /// One state path, read as it is (`hagw run --neutron`).
    pub fn at(state_path: PathBuf, defaults: NeutronDefaults) -> NeutronSource {
        NeutronSource { state_paths: vec![state_path], access: StateAccess::Direct, defaults }
    }
}

/// A source being followed: where its state paths were found last.
pub struct Following {
    source: NeutronSource,
    located: Located,
    /// Every state path found before is gone (logged once).
    vanished: bool,
}

impl Following {
    /// `source`, not looked at yet ([`Following::start`]).
    pub fn new(source: NeutronSource) -> Following {
        Following { source, located: Located::default(), vanished: false }
    }

    /// Starts following: the routers found now.
    pub fn start(&mut self, watcher: &mut DirWatcher) -> Vec<RouterSpec> {
        self.relocate();
        self.discover(watcher)
    }

    /// Looks for the state paths again: the routers, if where they are changed.
    pub fn rescan(&mut self, watcher: &mut DirWatcher) -> Option<Vec<RouterSpec>> {
        self.relocate().then(|| self.discover(watcher))
    }

    /// Whether the located state paths changed. When every one found before is gone at once
    /// (the L3 agent's process replaced: a new pod, a restarted container) its routers are
    /// kept, held or served as before, until the state paths are found again: losing sight
    /// of Neutron's files is no reason to hand the ports back.
    fn relocate(&mut self) -> bool {
        let located = locate(&self.source.state_paths, &self.source.access);
        let refused_before: Vec<u32> = self.located.refused.iter().map(|r| r.pid).collect();
        for refused in located.refused.iter().filter(|r| !refused_before.contains(&r.pid)) {
            warn!(
                pid = refused.pid, process = %refused.comm, error = %refused.error,
                "cannot look into the root of a Neutron process (hagw needs CAP_SYS_PTRACE \
                 to read the state path of a process holding more capabilities than itself)"
            );
        }
        if located.state_paths.is_empty() && !self.located.state_paths.is_empty() {
            if !self.vanished {
                warn!(
                    last = ?self.located.state_paths,
                    "Neutron's state paths are gone (its agent restarting?): keeping its routers \
                     until they are found again"
                );
                self.vanished = true;
            }
            self.located.refused = located.refused;
            return false;
        }
        self.vanished = false;
        let changed = located.state_paths != self.located.state_paths;
        if changed {
            if located.state_paths.is_empty() {
                info!(
                    looked_for = ?self.source.state_paths, access = ?self.source.access,
                    "no Neutron state path with an ha_confs directory found"
                );
            } else {
                info!(found = ?located.state_paths, "Neutron state paths");
            }
        }
        self.located = located;
        changed
    }

    /// Whether a state path was found: the routers come from Neutron's files (also while
    /// they are out of sight and kept, [`Following::relocate`]).
    pub fn found(&self) -> bool {
        !self.located.state_paths.is_empty()
    }

    /// Whether `event` is a router appearing, going or being reconfigured.
    pub fn concerns(&self, event: &DirEvent) -> bool {
        self.located.state_paths.iter().map(|p| p.join("ha_confs")).any(|ha_confs| {
            event.dir == ha_confs
                || (event.dir.parent() == Some(ha_confs.as_path())
                    && event.name.as_deref().is_some_and(|n| n == "keepalived.conf"))
        })
    }

    /// Watches every `ha_confs` and router directory (a keepalived.conf written later is
    /// seen) and discovers the routers; a router found under two state paths is taken from
    /// the first. A broken router is reported and skipped, never fatal.
    pub fn discover(&self, watcher: &mut DirWatcher) -> Vec<RouterSpec> {
        let mut routers: BTreeMap<String, (RouterSpec, PathBuf)> = BTreeMap::new();
        for state_path in &self.located.state_paths {
            watch_dirs(watcher, &state_path.join("ha_confs"));
            let found = discover(state_path, &self.source.defaults);
            for error in &found.errors {
                match error {
                    DiscoveryError::NotReady { .. } => info!(%error, "router not ready yet"),
                    _ => warn!(%error, "router skipped"),
                }
            }
            for router in found.routers {
                match routers.get(&router.spec.id) {
                    Some((_, first)) => warn!(
                        router = %router.spec.id, used = %first.display(),
                        ignored = %router.conf.display(), "router found twice"
                    ),
                    None => {
                        routers.insert(router.spec.id.clone(), (router.spec, router.conf));
                    }
                }
            }
        }
        routers.into_values().map(|(spec, _)| spec).collect()
    }
}

/// Watches `ha_confs` and each router directory in it.
fn watch_dirs(watcher: &mut DirWatcher, ha_confs: &Path) {
    if let Err(e) = watcher.watch(ha_confs) {
        warn!(dir = %ha_confs.display(), error = %e, "cannot watch ha_confs; relying on rescans");
        return;
    }
    let Ok(entries) = std::fs::read_dir(ha_confs) else { return };
    for dir in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        if let Err(e) = watcher.watch(&dir) {
            warn!(dir = %dir.display(), error = %e, "cannot watch router directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use hagw_core::neutron::NeutronDefaults;
    use hagw_core::testing::{PATIENCE, Spawned};

    use super::*;

    /// An agent whose state path is a tmpfs only it sees (an emptyDir), with one router.
    /// `ha_confs` appears with the router's file in it (renamed into place): a state path
    /// found before its files are written would read as "no routers" in the test's rescan.
    fn contained_agent(state: &Path, tag: &str, conf: &str) -> Spawned {
        let setup = format!(
            "mount -t tmpfs none {dir} && mkdir -p {dir}/staged/r1 && printf '%s' \"$1\" > \
             {dir}/staged/r1/keepalived.conf && mv {dir}/staged {dir}/ha_confs",
            dir = state.display()
        );
        Spawned::contained(&setup, &[tag, conf])
    }

    /// The agent's process replaced: its routers are kept until their files are found again,
    /// then read from there.
    #[tokio::test]
    async fn routers_are_kept_while_their_state_path_is_gone_and_reread_when_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("neutron");
        std::fs::create_dir_all(&state).unwrap();
        let tag = format!("neutron-l3-agent-{}", dir.path().display());
        let conf = "vrrp_instance VR_1 {\n interface ha-r1\n virtual_router_id 1\n \
                    virtual_ipaddress {\n  169.254.0.1/24 dev ha-r1\n }\n \
                    virtual_ipaddress_excluded {\n  203.0.113.10/24 dev qg-r1\n }\n}\n";
        let source = NeutronSource {
            state_paths: vec![state.clone()],
            access: StateAccess::Processes(vec![tag.clone()]),
            defaults: NeutronDefaults::default(),
        };
        let (mut watcher, _events) = DirWatcher::start().unwrap();
        let mut agent = contained_agent(&state, &tag, conf);
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut following = Following::new(source);
        let mut routers = following.start(&mut watcher);
        while routers.is_empty() {
            assert!(std::time::Instant::now() < deadline, "never found");
            tokio::time::sleep(Duration::from_millis(20)).await;
            routers = following.rescan(&mut watcher).unwrap_or_default();
        }
        assert_eq!(routers[0].id, "r1");
        let first = routers[0].clone();
        agent.stop();
        assert_eq!(following.rescan(&mut watcher), None, "kept while gone");
        let _agent = contained_agent(&state, &tag, conf);
        let deadline = std::time::Instant::now() + PATIENCE;
        let again = loop {
            if let Some(routers) = following.rescan(&mut watcher) {
                break routers;
            }
            assert!(std::time::Instant::now() < deadline, "never found again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].gateway_addresses, first.gateway_addresses);
        assert_ne!(again[0].role, first.role, "read through the new process's root");
    }
}
