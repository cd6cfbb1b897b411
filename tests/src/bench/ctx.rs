//! The run's context: namespace prefix, work directory, the hagw binary and its arguments, and
//! the guardian that removes everything when this process ends.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Opts, hagw_bin};
use crate::lab::sh;

/// Names, files and processes of this run; the guardian removes them when we end.
pub(super) struct Ctx {
    pub(super) prefix: String,
    pub(super) dir: PathBuf,
    pub(super) hagw: PathBuf,
    pub(super) hagw_args: Vec<String>,
    pub(super) guardian: Option<(Child, ChildStdin)>,
}

impl Ctx {
    pub(super) fn new(opts: &Opts) -> Result<Ctx> {
        let prefix = format!("hb{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("hagw-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("pids"), "")?;
        std::fs::write(dir.join("netns"), "")?;
        let hagw = hagw_bin()?;
        let help = Command::new(&hagw).args(["run", "--help"]).output()?;
        let mut hagw_args = vec!["--log-format".into(), "json".into()];
        hagw_args.extend(["--log-level".into(), "info".into()]);
        // No endpoint: its port would be shared by the runs. Older builds (compared in
        // docs/benchmarks.md) named the flag --metrics-addr, the oldest had none.
        let help = String::from_utf8_lossy(&help.stdout);
        if let Some(flag) = ["--listen", "--metrics-addr"].into_iter().find(|f| help.contains(f)) {
            hagw_args.extend([flag.into(), "none".into()]);
        }
        if let Some(resync) = opts.resync {
            hagw_args.extend(["--resync".into(), resync.to_string()]);
        }
        let d = dir.display();
        let script = format!(
            "trap '' INT TERM HUP; cat >/dev/null\n\
             xargs -r kill -9 < {d}/pids 2>/dev/null\n\
             ip netns list | awk '{{print $1}}' | grep '^{prefix}-' | sed 's/^/netns del /' > {d}/del\n\
             sed 's/^/netns del /' {d}/netns >> {d}/del 2>/dev/null\n\
             ip -force -batch {d}/del >/dev/null 2>&1\n\
             rm -rf {d}\n"
        );
        let mut child = Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the cleanup guardian")?;
        let stdin = child.stdin.take().context("guardian stdin")?;
        Ok(Ctx { prefix, dir, hagw, hagw_args, guardian: Some((child, stdin)) })
    }

    pub(super) fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Starts a process whose pid the guardian kills if we die.
    pub(super) fn spawn(&self, cmd: &mut Command) -> Result<Child> {
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let mut pids = OpenOptions::new().append(true).open(self.dir.join("pids"))?;
        writeln!(pids, "{}", child.id())?;
        Ok(child)
    }

    /// Has the guardian kill `pid` (a daemon started otherwise) if we die.
    pub(super) fn adopt_pid(&self, pid: &str) -> Result<()> {
        let mut pids = OpenOptions::new().append(true).open(self.dir.join("pids"))?;
        writeln!(pids, "{pid}")?;
        Ok(())
    }

    /// Has the guardian delete `lab`'s namespaces if we die before it drops (it deletes them
    /// itself when it does).
    pub(super) fn adopt_lab(&self, lab: &crate::lab::Lab) -> Result<()> {
        let mut file = OpenOptions::new().append(true).open(self.dir.join("netns"))?;
        for ns in lab.namespaces() {
            writeln!(file, "{ns}")?;
        }
        Ok(())
    }

    /// `hagw run` in network namespace `netns` (`ip netns exec`, which execs it: the child's
    /// pid is hagw's), with `env` added.
    pub(super) fn start_hagw_in(
        &self,
        config: &Path,
        netns: Option<&str>,
        env: &[(String, PathBuf)],
    ) -> Result<Child> {
        let mut cmd = match netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(&self.hagw);
                cmd
            }
            None => Command::new(&self.hagw),
        };
        cmd.args(["run", "-c"]).arg(config).args(&self.hagw_args);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        self.spawn(&mut cmd)
    }

    /// Runs an `ip -batch` file built from `lines`, in namespace `ns` if given.
    pub(super) fn batch(&self, ns: Option<&str>, name: &str, lines: &[String]) -> Result<()> {
        let file = self.dir.join(name);
        std::fs::write(&file, lines.join("\n") + "\n")?;
        let netns = ns.map(|n| format!("-n {n} ")).unwrap_or_default();
        sh(&format!("ip {netns}-batch {}", file.display()))?;
        Ok(())
    }

    /// Removes everything (the guardian does it; we wait for it).
    pub(super) fn finish(&mut self) {
        let _ = std::fs::write(self.dir.join("pids"), "");
        if let Some((mut child, stdin)) = self.guardian.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// Children stopped when this drops, on every path: a child left running after its
/// measurement failed would outlive the bench (the guardian only kills what is still running
/// when the bench dies) and keep the bench lock's file descriptor open.
#[derive(Default)]
pub(super) struct Procs(pub(super) Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in self.0.drain(..) {
            stop(child);
        }
    }
}

/// Stops a child: SIGTERM, then SIGKILL after a grace period.
pub(super) fn stop(mut child: Child) {
    let _ = sh(&format!("kill -TERM {} 2>/dev/null", child.id()));
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads lines of `stream` on a thread.
pub(super) fn lines_of(
    stream: impl Read + Send + 'static,
    mut each: impl FnMut(String) + Send + 'static,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(line) => each(line),
                Err(_) => break,
            }
        }
    });
}
