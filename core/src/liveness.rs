//! Whether the keepalived a pid file names is running, also when it runs in another pid
//! namespace than hagw.
//!
//! keepalived writes its pid as its own pid namespace sees it. Where Neutron runs in
//! containers (openstack-helm always, kolla-ansible before its agent wrappers) that is the
//! agent container's namespace: in hagw's namespace the same number names another process, or
//! none. So a pid that does not name a keepalived here is looked up as the innermost pid
//! (`NSpid:` in `/proc/<pid>/status`) of every keepalived hagw can see. Where hagw cannot see
//! such namespaces at all (it runs in a pid namespace of its own, e.g. a pod without
//! `hostPID`), a keepalived that is not found may still run: liveness cannot be told, and the
//! role rule then decides without it rather than demote a primary.

use std::path::Path;
use std::time::Duration;

use crate::role::RunningProcess;

/// What hagw can tell about the process a pid file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It runs; `pid` as hagw's own namespace sees it (what a pidfd needs).
    Running(RunningProcess),
    /// No such process (or no pid file: keepalived writes it when it starts).
    NotRunning,
    /// It is not visible from here, and it may run where hagw cannot look.
    CannotTell,
}

impl Liveness {
    /// As the role rule takes it: `None` when it cannot be told, else whether it runs.
    pub fn known(self) -> Option<Option<RunningProcess>> {
        match self {
            Liveness::Running(process) => Some(Some(process)),
            Liveness::NotRunning => Some(None),
            Liveness::CannotTell => None,
        }
    }
}

const PROGRAM: &str = "keepalived";

/// The liveness of the keepalived `pid_file` names.
pub fn keepalived_liveness(pid_file: &Path) -> Liveness {
    liveness(Path::new("/proc"), pid_file, PROGRAM)
}

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`): 100 on every Linux architecture
/// hagw builds for.
const USER_HZ: f64 = 100.0;

/// One process as `/proc` shows it.
pub(crate) struct Process {
    /// The pid in the namespace of this `/proc`.
    pub(crate) pid: u32,
    pub(crate) comm: String,
    pub(crate) exited: bool,
    pub(crate) started_ticks: f64,
    /// Its pid in each pid namespace from this `/proc`'s down to its own.
    nspid: Vec<u32>,
    pub(crate) args: Vec<String>,
}

impl Process {
    pub(crate) fn read(proc: &Path, pid: u32) -> Option<Process> {
        let dir = proc.join(pid.to_string());
        // `pid (comm) state … starttime …`: comm may itself contain parentheses, so split at
        // the last one; after it come the fields from the third (state) on, starttime is the
        // 22nd.
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        let mut fields = rest.split_whitespace();
        // A zombie has exited; only its parent has not collected it yet.
        let exited = matches!(fields.next()?.chars().next()?, 'Z' | 'X' | 'x');
        let started_ticks = fields.nth(22 - 4)?.parse().ok()?;
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let nspid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .map(|ids| ids.split_whitespace().filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_else(|| vec![pid]);
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Some(Process { pid, comm, exited, started_ticks, nspid, args })
    }

    /// Whether this is a running `program` that may have written `pid_file`: Neutron names
    /// the pid files on keepalived's command line (`-p`, `-r`), so one that names another
    /// router's is not this one (a small pid is taken in many containers).
    /// Every process this `/proc` shows (those gone while it is read are skipped).
    pub(crate) fn all(proc: &Path) -> impl Iterator<Item = Process> + '_ {
        std::fs::read_dir(proc)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter_map(|p| Process::read(proc, p))
    }

    fn may_own(&self, program: &str, pid_file: &str) -> bool {
        let other_pid_file = self.args.iter().any(|a| {
            let name = Path::new(a).file_name().and_then(|n| n.to_str()).unwrap_or(a);
            name.contains(".pid.") && name != pid_file && !pid_file.starts_with(name)
        });
        self.comm == program && !self.exited && !other_pid_file
    }

    fn names(&self, pid_file: &str) -> bool {
        self.args
            .iter()
            .any(|a| Path::new(a).file_name().and_then(|n| n.to_str()) == Some(pid_file))
    }

    fn running(&self, proc: &Path) -> Option<RunningProcess> {
        let uptime: f64 = std::fs::read_to_string(proc.join("uptime"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let age = Duration::from_secs_f64((uptime - self.started_ticks / USER_HZ).max(0.0));
        Some(RunningProcess { pid: self.pid, age })
    }
}

fn liveness(proc: &Path, pid_file: &Path, program: &str) -> Liveness {
    let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|t| t.trim().parse().ok())
    else {
        return if through_a_gone_root(proc, pid_file) {
            Liveness::CannotTell
        } else {
            Liveness::NotRunning
        };
    };
    let file_name = pid_file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    // Written in this namespace (hagw on the host beside a host keepalived, or both in one
    // container): the pid names it directly.
    if let Some(process) = Process::read(proc, pid)
        && process.nspid.len() == 1
        && process.may_own(program, file_name)
    {
        return process.running(proc).map_or(Liveness::NotRunning, Liveness::Running);
    }
    // Written in a namespace below this one.
    let candidates: Vec<Process> = Process::all(proc)
        .filter(|p| p.nspid.len() > 1 && p.nspid.last() == Some(&pid))
        .filter(|p| p.may_own(program, file_name))
        .collect();
    let chosen = match candidates.as_slice() {
        [one] => Some(one),
        [] => None,
        many => {
            let named: Vec<&Process> = many.iter().filter(|p| p.names(file_name)).collect();
            match named.as_slice() {
                [one] => Some(*one),
                _ => return Liveness::CannotTell,
            }
        }
    };
    if let Some(process) = chosen {
        return process.running(proc).map_or(Liveness::NotRunning, Liveness::Running);
    }
    // hagw in a pid namespace of its own sees neither the host's nor its siblings' processes.
    if own_namespace_is_nested(proc) { Liveness::CannotTell } else { Liveness::NotRunning }
}

/// Whether `path` is read through the root of a process that is gone
/// (`/proc/<pid>/root/...`, a containerized Neutron's files found through its agent, which
/// is restarting): its keepalived may well run on, seen through another process once the
/// state paths are looked for again.
fn through_a_gone_root(proc: &Path, path: &Path) -> bool {
    let Ok(rest) = path.strip_prefix(proc) else { return false };
    let mut parts = rest.components();
    match (parts.next(), parts.next()) {
        (Some(pid), Some(root)) if root.as_os_str() == "root" => {
            pid.as_os_str().to_str().is_some_and(|p| p.parse::<u32>().is_ok())
                && !proc.join(pid).exists()
        }
        _ => false,
    }
}

/// The inode of the initial pid namespace (`PROC_PID_INIT_INO`): fixed by the kernel.
const INITIAL_PID_NAMESPACE: &str = "pid:[4026531836]";

/// Whether hagw runs in a pid namespace below the initial one (`NSpid:` cannot tell: it
/// lists only the levels from the reading `/proc`'s namespace down).
fn own_namespace_is_nested(proc: &Path) -> bool {
    std::fs::read_link(proc.join("self/ns/pid"))
        .is_ok_and(|ns| ns.to_str() != Some(INITIAL_PID_NAMESPACE))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::testing::{Spawned, wait_until};

    #[test]
    fn a_pid_file_counts_while_its_process_runs_that_program() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("r.pid");
        let live = |program| liveness(Path::new("/proc"), &pid_file, program);
        assert_eq!(live("sleep"), Liveness::NotRunning, "no pid file");
        let mut child = Spawned::start(Command::new("sleep").arg("30"));
        std::fs::write(&pid_file, format!("{}\n", child.id())).unwrap();
        let Liveness::Running(fresh) = live("sleep") else { panic!("not running") };
        assert_eq!(fresh.pid, child.id());
        assert!(fresh.startup_left().is_some(), "just started: {fresh:?}");
        assert_eq!(live("keepalived"), Liveness::NotRunning, "another program");
        child.kill();
        wait_until("a killed, unreaped child no longer counts", || {
            live("sleep") == Liveness::NotRunning
        });
        child.stop();
        std::fs::write(&pid_file, "not a pid").unwrap();
        assert_eq!(live("sleep"), Liveness::NotRunning);
    }

    /// keepalived in a container's pid namespace writes its pid there (here 1, the first
    /// process of a fresh namespace): found by its innermost pid, as its host pid.
    #[test]
    fn a_process_in_another_pid_namespace_is_found_by_its_own_pid() {
        let dir = tempfile::tempdir().unwrap();
        // Named after a router id of this test's own: another process's test runs the same
        // pid-1 shell, and a shared file name would make the two indistinguishable.
        let router = dir.path().file_name().unwrap().to_string_lossy().replace('.', "");
        let pid_file = dir.path().join(format!("{router}.pid.keepalived-vrrp"));
        std::fs::write(&pid_file, "1").unwrap();
        // A shell naming the pid file on its command line as Neutron's keepalived does, which
        // tells it apart from other tests' pid-1 shells.
        let mut child = Spawned::start(
            Command::new("unshare")
                .args(["--pid", "--fork", "--kill-child", "sh", "-c", "while :; do sleep 1; done"])
                .args(["x", "-r"])
                .arg(&pid_file),
        );
        let live = || liveness(Path::new("/proc"), &pid_file, "sh");
        wait_until("the namespaced sleep to run", || matches!(live(), Liveness::Running(_)));
        let Liveness::Running(found) = live() else { unreachable!() };
        let status = std::fs::read_to_string(format!("/proc/{}/status", found.pid)).unwrap();
        assert!(
            status.contains("NSpid:")
                && status.lines().any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
            "{status}"
        );
        assert_ne!(found.pid, 1, "the host pid, for the exit watch");
        child.stop();
        wait_until("gone", || live() == Liveness::NotRunning);
    }

    /// A pid file read through the root of a process that has exited (Neutron's agent
    /// restarting) cannot tell whether keepalived runs; a missing one elsewhere says it does
    /// not.
    #[test]
    fn a_pid_file_behind_a_gone_process_root_cannot_tell() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path();
        std::fs::create_dir_all(proc.join("4242/root/var/lib/neutron/ha_confs")).unwrap();
        let live = |path: &str| liveness(proc, &proc.join(path), PROGRAM);
        let file = "root/var/lib/neutron/ha_confs/r1.pid.keepalived-vrrp";
        assert_eq!(live(&format!("4243/{file}")), Liveness::CannotTell, "process gone");
        assert_eq!(live(&format!("4242/{file}")), Liveness::NotRunning, "process there, no file");
        assert_eq!(live("elsewhere/r1.pid.keepalived-vrrp"), Liveness::NotRunning);
    }

    /// Another router's keepalived with the same pid in its own namespace is not this one.
    #[test]
    fn another_routers_keepalived_is_not_taken_for_this_one() {
        let mine = Process {
            pid: 40,
            comm: PROGRAM.into(),
            exited: false,
            started_ticks: 0.0,
            nspid: vec![40, 1],
            args: [
                "keepalived",
                "-p",
                "/var/lib/neutron/ha_confs/r2.pid.keepalived",
                "-r",
                "/var/lib/neutron/ha_confs/r2.pid.keepalived-vrrp",
            ]
            .map(String::from)
            .to_vec(),
        };
        assert!(!mine.may_own(PROGRAM, "r1.pid.keepalived-vrrp"));
        assert!(mine.may_own(PROGRAM, "r2.pid.keepalived-vrrp"));
        assert!(mine.names("r2.pid.keepalived-vrrp"));
        let stand_in = Process { args: vec!["keepalived".into(), "3600".into()], ..mine };
        assert!(stand_in.may_own(PROGRAM, "r1.pid.keepalived-vrrp"));
    }
}
