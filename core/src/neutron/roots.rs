//! Where a node's Neutron state paths are, as hagw can read them.
//!
//! On a host install the L3 agent's `state_path` (`/var/lib/neutron`) is the host's. Where
//! Neutron runs in containers it is not: openstack-helm keeps it in an emptyDir of the agent
//! pod, kolla-ansible at `/var/lib/neutron/kolla` inside a named volume. Both are visible
//! through the root of the processes that use them, `/proc/<pid>/root/<state_path>`, which
//! works for every deployment alike, given hagw sees those processes (host pid namespace) and
//! may look into their roots (`CAP_SYS_PTRACE`, since they hold more capabilities than hagw).
//!
//! Each `ha_confs` directory is reported once, through its most preferred process: the first
//! needle a process matches, then the longest running (an L3 agent outlives the keepalived it
//! restarts, and keepalived is the fallback where the agent is not visible).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::liveness::Process;

/// How hagw reaches Neutron's state paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateAccess {
    /// As they are in hagw's own mount namespace (the host's, or host paths mounted there).
    Direct,
    /// Inside the root of every process whose command line contains one of these strings,
    /// in order of preference.
    Processes(Vec<String>),
}

/// A process whose root hagw may not look into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub pid: u32,
    pub comm: String,
    pub error: String,
}

/// The state paths found, each `ha_confs` directory once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Located {
    /// State paths holding an `ha_confs` directory, as hagw reads them (for a process root:
    /// `/proc/<pid>/root/<state_path>`), in order of preference.
    pub state_paths: Vec<PathBuf>,
    /// Matching processes whose roots hagw was refused, by pid.
    pub refused: Vec<Refused>,
}

/// Finds the `state_paths` holding an `ha_confs` directory, reached as `access` says.
pub fn locate(state_paths: &[PathBuf], access: &StateAccess) -> Located {
    locate_in(Path::new("/proc"), state_paths, access)
}

/// A candidate: its preference (lower first), then the path.
type Candidate = ((usize, u64, u32), PathBuf);

fn locate_in(proc: &Path, state_paths: &[PathBuf], access: &StateAccess) -> Located {
    let mut located = Located::default();
    // By the `ha_confs` directory's identity (device, inode): one path per directory.
    let mut best: HashMap<(u64, u64), Candidate> = HashMap::new();
    let mut offer = |rank, path: PathBuf| -> io::Result<()> {
        let meta = std::fs::metadata(path.join("ha_confs"))?;
        if meta.is_dir() {
            let slot = best.entry((meta.dev(), meta.ino())).or_insert((rank, path.clone()));
            if rank < slot.0 {
                *slot = (rank, path);
            }
        }
        Ok(())
    };
    match access {
        StateAccess::Direct => {
            for (i, path) in state_paths.iter().enumerate() {
                let _ = offer((i, 0, 0), path.clone());
            }
        }
        StateAccess::Processes(needles) => {
            let own = std::process::id();
            for process in Process::all(proc).filter(|p| p.pid != own && !p.exited) {
                let cmdline = process.args.join(" ");
                let Some(needle) = needles.iter().position(|n| cmdline.contains(n.as_str())) else {
                    continue;
                };
                let root = proc.join(process.pid.to_string()).join("root");
                let rank = (needle, process.started_ticks as u64, process.pid);
                for path in state_paths {
                    let inside = root.join(path.strip_prefix("/").unwrap_or(path));
                    match offer(rank, inside) {
                        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                            located.refused.push(Refused {
                                pid: process.pid,
                                comm: process.comm.clone(),
                                error: e.to_string(),
                            });
                            break;
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let mut found: Vec<Candidate> = best.into_values().collect();
    found.sort();
    located.state_paths = found.into_iter().map(|(_, path)| path).collect();
    located
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Spawned, wait_until};

    /// A process in a mount namespace of its own, where `state` holds `ha_confs` on a tmpfs
    /// nobody else sees (as an emptyDir or a named volume in a container), its command line
    /// naming `tag`.
    fn contained(state: &Path, tag: &str) -> Spawned {
        let dir = state.display();
        Spawned::contained(&format!("mount -t tmpfs none {dir} && mkdir -p {dir}/ha_confs"), &[tag])
    }

    #[test]
    fn a_state_path_only_a_process_sees_is_found_through_its_root_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("neutron");
        std::fs::create_dir_all(&state).unwrap();
        let tag = format!("neutron-l3-agent-{}", dir.path().display());
        let mut agent = contained(&state, &tag);
        let needles =
            |n: &[&str]| StateAccess::Processes(n.iter().map(|s| s.to_string()).collect());
        let paths = [PathBuf::from("/nonexistent"), state.clone()];
        let located = || locate(&paths, &needles(&[&tag]));
        wait_until("the contained state path", || !located().state_paths.is_empty());
        let found = located();
        let through = PathBuf::from(format!("/proc/{}/root", agent.id()));
        assert_eq!(found.state_paths, vec![through.join(state.strip_prefix("/").unwrap())]);
        // Not on the host: the tmpfs is the process's own.
        assert!(!state.join("ha_confs").exists());
        assert!(locate(&paths, &StateAccess::Direct).state_paths.is_empty());
        // A process matching nothing is not looked into.
        assert!(locate(&paths, &needles(&["no-such-program-anywhere"])).state_paths.is_empty());
        agent.stop();
        assert!(located().state_paths.is_empty(), "gone with its process");
    }

    #[test]
    fn the_same_directory_seen_twice_is_reported_through_the_preferred_path() {
        let dir = tempfile::tempdir().unwrap();
        let kolla = dir.path().join("kolla");
        std::fs::create_dir_all(kolla.join("ha_confs")).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&kolla, &link).unwrap();
        let found = locate(&[link.clone(), kolla.clone()], &StateAccess::Direct);
        assert_eq!(found.state_paths, vec![link]);
        let found = locate(&[dir.path().to_path_buf(), kolla.clone()], &StateAccess::Direct);
        assert_eq!(found.state_paths, vec![kolla]);
    }
}
