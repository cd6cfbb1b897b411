//! Fixtures for the root-only kernel tests: throw-away named namespaces joined by a veth
//! pair, removed on drop (also when the test panics). Names embed the process id and a
//! counter so tests in one or several processes can run in parallel.

#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use hagw_backends::netns::Netns;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Whether the tests can run: they need CAP_SYS_ADMIN and CAP_NET_ADMIN to create
/// namespaces and devices. Tests return early (pass vacuously) otherwise.
pub fn can_run() -> bool {
    // Effective uid is the second field of the `Uid:` line.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0");
    if !root {
        eprintln!("skipped: needs root");
    }
    root
}

/// The gateway device name inside the router namespace.
pub const DEVICE: &str = "qg-test";
/// The far end of the veth, in the peer namespace.
pub const PEER_DEVICE: &str = "peer0";

/// Runs `ip ARGS…` and panics with its stderr if it fails.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A unique namespace name for this test process.
pub fn unique_name(tag: &str) -> String {
    format!("hagwt-{}-{}{tag}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A named namespace that is deleted on drop.
pub struct TempNetns {
    pub name: String,
}

impl TempNetns {
    pub fn new(tag: &str) -> Self {
        let ns = TempNetns { name: unique_name(tag) };
        ip(&["netns", "add", &ns.name]);
        ns
    }

    pub fn netns(&self) -> Netns {
        Netns::named(&self.name)
    }

    /// `ip -n NAME ARGS…`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `sysctl -w SETTING` inside the namespace; panics if it fails.
    pub fn sysctl(&self, setting: &str) {
        ip(&["netns", "exec", &self.name, "sysctl", "-q", "-w", setting]);
    }

    /// Runs a command inside the namespace and returns whether it succeeded.
    pub fn exec(&self, cmd: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("run ip netns exec")
            .status
            .success()
    }
}

impl Drop for TempNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A router namespace holding [`DEVICE`], whose veth peer [`PEER_DEVICE`] sits up in a
/// second namespace (so the device has carrier and traffic can flow).
pub struct Fixture {
    // Field order is drop order: the router namespace goes first.
    pub router: TempNetns,
    pub peer: TempNetns,
}

impl Fixture {
    pub fn new() -> Self {
        let router = TempNetns::new("");
        let peer = TempNetns::new("p");
        router.ip(&[
            "link",
            "add",
            DEVICE,
            "type",
            "veth",
            "peer",
            "name",
            PEER_DEVICE,
            "netns",
            &peer.name,
        ]);
        peer.ip(&["link", "set", PEER_DEVICE, "up"]);
        Fixture { router, peer }
    }

    pub fn netns(&self) -> Netns {
        self.router.netns()
    }

    /// `ip -o` output for the device's addresses, for cross-checking against hagw's view.
    pub fn ip_addresses(&self) -> String {
        self.router.ip(&["-o", "addr", "show", "dev", DEVICE])
    }
}
