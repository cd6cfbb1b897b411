//! Packet captures with tcpdump, judged by source MAC: what a switch port received.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::sh;

/// A running capture of frames *received* by a device (`-Q in`): on a ToR bridge port that
/// is exactly what the node behind it put on the wire.
pub struct Capture {
    child: Child,
    pub file: PathBuf,
}

impl Capture {
    /// Starts tcpdump in `ns` on `dev`, writing to `file`, and waits until it listens.
    pub fn start(ns: &str, dev: &str, file: PathBuf) -> Result<Capture> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-i", dev, "-Q", "in", "-U", "-n"])
            .args(["--immediate-mode", "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump")?;
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(_)) => {}
                _ => bail!("tcpdump on {ns}/{dev} did not start"),
            }
            if Instant::now() > deadline {
                bail!("tcpdump on {ns}/{dev} did not start in time");
            }
        }
        // Keep draining stderr so tcpdump never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Capture { child, file })
    }

    /// Stops the capture and returns one summary line per frame whose source MAC is `mac`.
    pub fn stop_and_frames_from(mut self, mac: &str) -> Result<Vec<String>> {
        // SIGINT makes tcpdump flush; give it a moment.
        let _ = sh(&format!("kill -INT {}", self.child.id()));
        let _ = self.child.wait();
        let out = sh(&format!(
            "tcpdump -r {} -e -nn 'ether src {mac}' 2>/dev/null",
            self.file.display()
        ))?;
        Ok(out.lines().map(str::to_owned).collect())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
