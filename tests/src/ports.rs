//! TCP ports that no other test, and no outgoing connection, can take.
//!
//! Binding port 0, reading the number and releasing it races: before the server under test
//! binds it, the kernel may hand the same number to any connection as its source port. Ports
//! here come from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, which
//! starts at 32768 by default), where the kernel never allocates on its own, and each is
//! reserved with a lock file that the test process holds for as long as it uses the port.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The ports handed out: above the well-known and commonly configured ones, below the
/// ephemeral range.
const RANGE: std::ops::Range<u16> = 20000..32000;
const LOCK_DIR: &str = "/tmp/hagw-test-ports";

/// A port reserved for this process until dropped.
pub struct ReservedPort {
    pub port: u16,
    _lock: File,
}

/// Reserves a port that is free now: its lock file is held, and nothing listens on it.
pub fn reserve() -> Result<ReservedPort> {
    check_range()?;
    std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
    let span = RANGE.end - RANGE.start;
    // Start where other processes are unlikely to be looking, to keep the scan short.
    let start = (std::process::id() as u16).wrapping_mul(97) % span;
    for i in 0..span {
        let port = RANGE.start + (start + i) % span;
        let path = Path::new(LOCK_DIR).join(port.to_string());
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        if lock.try_lock().is_err() {
            continue;
        }
        // Something outside the tests may listen there.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
            || std::net::TcpListener::bind(("0.0.0.0", port)).is_err()
        {
            continue;
        }
        return Ok(ReservedPort { port, _lock: lock });
    }
    bail!("no free port in {RANGE:?}")
}

/// The range must lie outside the kernel's ephemeral ports, or the kernel could pick one.
fn check_range() -> Result<()> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")?;
    let low: u16 = text.split_whitespace().next().unwrap_or("0").parse()?;
    if low < RANGE.end {
        bail!("net.ipv4.ip_local_port_range starts at {low}, inside the test ports {RANGE:?}");
    }
    Ok(())
}
