//! A clean Debian 12 root per test, for the package tests: extracted from the tarball that
//! `scripts/debian-root.sh` builds once (mmdebstrap) and caches outside the clone. Commands
//! run in it with chroot, in a mount and pid namespace of their own whose `/proc` is mounted
//! inside the root: there systemctl sees that it runs in a chroot (its pid 1 is outside the
//! root), as it would on a node being set up, and skips what needs a running systemd.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::lab::sh;

pub struct DebRoot {
    pub dir: tempfile::TempDir,
}

impl DebRoot {
    pub fn new() -> Result<DebRoot> {
        let script = repo_root().join("scripts/debian-root.sh");
        let tarball = sh(&script.display().to_string())?;
        let dir = tempfile::Builder::new().prefix("hagw-debroot-").tempdir()?;
        sh(&format!("tar -C {} -xf {}", dir.path().display(), tarball.trim()))?;
        Ok(DebRoot { dir })
    }

    /// `path` (absolute, as seen inside the root) on the host.
    pub fn path(&self, path: &str) -> PathBuf {
        self.dir.path().join(path.trim_start_matches('/'))
    }

    /// Runs `script` with bash (`-euo pipefail`) inside the root, in `cwd`; fails with its
    /// output if it exits non-zero, else returns stdout and stderr together.
    pub fn run(&self, cwd: &str, script: &str) -> Result<String> {
        let root = self.dir.path().display().to_string();
        let inner = format!("cd {cwd}\n{script}");
        let out = Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t proc proc "$0/proc" && chroot "$0" /bin/bash -euo pipefail -c "$1""#)
            .args([&root, &inner])
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("spawning unshare")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("in the Debian root ({}): {script}\n{text}", out.status);
        }
        Ok(text)
    }

    /// Every path in the root except those dpkg and apt keep their own records in, sorted:
    /// what an install adds and a purge must take away again.
    pub fn files(&self) -> Result<Vec<String>> {
        let listing = self.run(
            "/",
            "find / -xdev \\( -path /proc -o -path /var/lib/dpkg -o -path /var/log \
             -o -path /var/cache -o -path /tmp -o -path /var/lib/apt \\) -prune -o -print | sort",
        )?;
        Ok(listing.lines().map(str::to_owned).collect())
    }
}

/// The repository's root (this crate is `tests/` in it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Builds hagw's Debian package from `bin` with `scripts/package.sh` into `out`; `version`
/// overrides the package version. Returns the .deb's path.
pub fn build_package(bin: &Path, version: Option<&str>, out: &Path) -> Result<PathBuf> {
    let script = repo_root().join("scripts/package.sh");
    let mut cmd = format!("{} --bin {} --out {}", script.display(), bin.display(), out.display());
    if let Some(v) = version {
        cmd.push_str(&format!(" --version {v}"));
    }
    Ok(PathBuf::from(sh(&cmd)?.trim()))
}
