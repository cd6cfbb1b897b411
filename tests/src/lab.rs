//! Namespaces, links and processes of one test, torn down on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Runs a shell command, failing with its stderr if it exits non-zero.
pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("bash").arg("-c").arg(cmd).output().context("spawning bash")?;
    if !out.status.success() {
        bail!("`{cmd}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `hagw` binary under test: `HAGW_BIN`, or the one cargo built next to this test
/// (test executables live in `target/<profile>/deps/`).
pub fn hagw_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("HAGW_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let bin = profile_dir.join("hagw");
    assert!(bin.exists(), "{} missing: run `cargo build -p hagw` first", bin.display());
    bin
}

/// One test's world. `id` is short (device names are limited to 15 bytes) and unique across
/// the processes and labs running at the same time.
pub struct Lab {
    pub id: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Result<Lab> {
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        // The pid at a fixed width (pid_max is at most 2^22): variable-width pid and counter
        // digits run together, so pid 0x123 with lab 0x45 and pid 0x1234 with lab 0x5 would
        // share an id.
        let id = format!("{:06x}{n:x}", std::process::id() & 0xff_ffff);
        let dir = tempfile::Builder::new().prefix(&format!("hagw-lab-{id}-")).tempdir()?;
        Ok(Lab { id, namespaces: Vec::new(), children: Vec::new(), dir })
    }

    /// Creates a namespace named `<role>-<id>` with loopback up, and returns its name. One of
    /// that name can only be left over from a killed test process that had this pid: it is
    /// deleted first.
    pub fn netns(&mut self, role: &str) -> Result<String> {
        let name = format!("{role}-{}", self.id);
        sh(&format!(
            "ip netns del {name} 2>/dev/null; ip netns add {name} && ip -n {name} link set lo up"
        ))?;
        self.namespaces.push(name.clone());
        Ok(name)
    }

    /// Takes a namespace created otherwise (e.g. in an `ip -batch`) into this lab: it is
    /// deleted when the lab drops.
    pub fn adopt_netns(&mut self, name: &str) {
        self.namespaces.push(name.to_string());
    }

    /// The namespaces this lab deletes when it drops.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Runs a shell command inside a namespace.
    pub fn exec(&self, ns: &str, cmd: &str) -> Result<String> {
        sh(&format!("ip netns exec {ns} bash -c {}", shell_quote(cmd)))
    }

    /// Creates a veth pair with one end in each namespace (both ends down).
    pub fn veth(&self, (ns_a, a): (&str, &str), (ns_b, b): (&str, &str)) -> Result<()> {
        sh(&format!("ip link add {a} netns {ns_a} type veth peer name {b} netns {ns_b}"))?;
        Ok(())
    }

    /// Creates a bridge with STP off in a namespace, up.
    pub fn bridge(&self, ns: &str, name: &str) -> Result<()> {
        sh(&format!(
            "ip -n {ns} link add {name} type bridge stp_state 0 forward_delay 0 && \
             ip -n {ns} link set {name} up"
        ))?;
        Ok(())
    }

    /// Puts `port` (in `ns`) into `bridge` and brings it up.
    pub fn attach(&self, ns: &str, port: &str, bridge: &str) -> Result<()> {
        sh(&format!(
            "ip -n {ns} link set {port} master {bridge} && ip -n {ns} link set {port} up"
        ))?;
        Ok(())
    }

    /// Starts a long-running process inside a namespace; it is killed when the lab drops.
    pub fn spawn(&mut self, ns: &str, program: &str, args: &[&str]) -> Result<&mut Child> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {program} in {ns}"))?;
        self.children.push(child);
        Ok(self.children.last_mut().expect("just pushed"))
    }

    /// Writes a file into the lab's directory and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = sh(&format!("ip netns pids {ns} | xargs -r kill -9; ip netns del {ns}"));
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
