//! Fixtures for unit tests (this crate's and the operator's, through the `testing` feature):
//! a router spec, and real processes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A router as Neutron's files describe one: `qrouter-<id>` with `qg-<id>`, one gateway
/// address, OVS `l2-hold`, its role from `ha_confs/<id>/state`. Tests change what they need
/// with struct update syntax.
pub fn router(id: &str) -> crate::RouterSpec {
    use crate::model::{AnnounceSchedule, L2BackendSpec, RoleSource, Strategy};
    crate::RouterSpec {
        id: id.into(),
        namespace: format!("qrouter-{id}"),
        gateway_device: format!("qg-{id}"),
        ha_device: None,
        primary_vip: None,
        keepalived_pid_file: None,
        gateway_addresses: vec!["203.0.113.5/24".parse().expect("an address")],
        routes: Vec::new(),
        backend: L2BackendSpec::Ovs { port: None },
        strategy: Strategy::L2Hold,
        announce: AnnounceSchedule::default(),
        role: RoleSource::StateFile(format!("/var/lib/neutron/ha_confs/{id}/state").into()),
        silence_settle_ms: 3000,
    }
}

/// How long a test waits for another process before it fails. Generous on purpose: CI shares
/// two cores with the whole suite, and a deadline here only bounds a hang, it measures nothing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` until it holds; panics naming `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {PATIENCE:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process killed and reaped when it goes out of scope, also when the test panics: a
/// looping helper left behind runs forever and keeps the test harness's output pipe open.
#[derive(Debug)]
pub struct Spawned(Child);

impl Spawned {
    /// Starts `command` with stdin closed.
    pub fn start(command: &mut Command) -> Self {
        Self(command.stdin(Stdio::null()).spawn().expect("spawning a test process"))
    }

    /// A shell in a mount namespace of its own (as a container's), running `setup` and then
    /// staying until stopped; `args` are its `$0`, `$1`… (`$0` shows on its command line).
    ///
    /// Once `setup`'s effects show, the shell forks no more: it blocks reading a FIFO (made
    /// before `setup`, on a tmpfs of its own namespace), not in a `sleep` loop. A fork has,
    /// until it execs, the shell's command line and mount namespace, so a scan of processes
    /// could find it — also after the shell was killed, as an orphan.
    pub fn contained(setup: &str, args: &[&str]) -> Self {
        let script = format!(
            "mount -t tmpfs hagw-test-block /mnt && mkfifo /mnt/block && {setup} && read x < /mnt/block"
        );
        Self::start(
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c", &script])
                .args(args),
        )
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Sends SIGKILL and leaves it unreaped (a zombie) until [`stop`](Self::stop) or drop.
    pub fn kill(&mut self) {
        // Already exited is fine: reaping is what matters, and stop does it.
        let _ = self.0.kill();
    }

    /// Kills and reaps it now.
    pub fn stop(&mut self) {
        self.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}
