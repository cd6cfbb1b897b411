//! A real, throw-away `ovsdb-server` (openvswitch-switch) with the vswitch schema, for the
//! OVSDB client and OVS backend tests: one server per test in its own temp dir, killed on drop
//! even if the test fails.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hagw_backends::ovsdb::Endpoint;
use tempfile::TempDir;

pub const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
/// How long the server may take to come up, and a request to be answered.
pub const WAIT: Duration = Duration::from_secs(10);

/// A foreground ovsdb-server child process serving a fresh database.
pub struct OvsdbServer {
    dir: TempDir,
    remote: String,
    pub endpoint: Endpoint,
    child: Option<Child>,
}

impl OvsdbServer {
    pub fn unix() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("db.sock");
        Self::start(dir, format!("punix:{}", sock.display()), Endpoint::Unix(sock))
    }

    /// On a port the kernel picks when ovsdb-server binds (a port picked beforehand could be
    /// taken by anything in between); the endpoint is read from the server's log.
    pub fn tcp() -> Self {
        let endpoint = Endpoint::Tcp { host: "127.0.0.1".into(), port: 0 };
        Self::start(tempfile::tempdir().unwrap(), "ptcp:0:127.0.0.1".into(), endpoint)
    }

    fn start(dir: TempDir, remote: String, endpoint: Endpoint) -> Self {
        let db = dir.path().join("conf.db");
        let status = Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg(SCHEMA)
            .status()
            .expect("ovsdb-tool not installed (apt-get install openvswitch-switch)");
        assert!(status.success(), "ovsdb-tool create failed");
        let mut server = Self { dir, remote, endpoint, child: None };
        server.spawn();
        server
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn spawn(&mut self) {
        let child = Command::new("ovsdb-server")
            .arg(self.path("conf.db"))
            .arg(format!("--remote={}", self.remote))
            .arg(format!("--unixctl={}", self.path("ctl").display()))
            .arg(format!("--log-file={}", self.path("log").display()))
            .arg("-vconsole:off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ovsdb-server not installed (apt-get install openvswitch-switch)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        if let Endpoint::Tcp { port: port @ 0, .. } = &mut self.endpoint {
            // socket_util logs `0:127.0.0.1: listening on port N` for a port-0 remote.
            *port = loop {
                let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
                if let Some(n) = log.lines().find_map(|l| l.split("listening on port ").nth(1)) {
                    break n.trim().parse().expect("port number in the log");
                }
                assert!(Instant::now() < deadline, "ovsdb-server did not listen: {log}");
                std::thread::sleep(Duration::from_millis(20));
            };
        }
        while !self.accepts() {
            assert!(Instant::now() < deadline, "ovsdb-server did not come up: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn accepts(&self) -> bool {
        match &self.endpoint {
            Endpoint::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            Endpoint::Tcp { host, port } => {
                std::net::TcpStream::connect((host.as_str(), *port)).is_ok()
            }
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("log")).unwrap_or_default()
    }

    /// Runs `ovs-vsctl` against this server, as an operator or the Neutron agent would.
    pub fn vsctl(&self, args: &[&str]) -> String {
        let out = Command::new("ovs-vsctl")
            .arg(format!("--db={}", self.endpoint))
            .args(["--no-wait", "--timeout=10"])
            .args(args)
            .output()
            .expect("ovs-vsctl not installed");
        assert!(
            out.status.success(),
            "ovs-vsctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for OvsdbServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl OvsdbServer {
    /// A unix-socket server whose database has `br-int` (userspace datapath), as a Neutron
    /// node's has.
    pub fn with_br_int() -> Self {
        let server = Self::unix();
        server.vsctl(&["init"]);
        server.vsctl(&[
            "add-br",
            "br-int",
            "--",
            "set",
            "bridge",
            "br-int",
            "datapath_type=netdev",
        ]);
        server
    }
}

/// A router whose gateway is the OVS port `port` of this host (no namespace, no addresses), with
/// a fixed role and no repeated announcements.
pub fn port_router(
    port: &str,
    role: hagw_core::model::Role,
    silence_settle_ms: u64,
) -> hagw_core::RouterSpec {
    use hagw_core::model::{AnnounceSchedule, L2BackendSpec, RoleSource};
    hagw_core::RouterSpec {
        namespace: "unused".into(),
        gateway_device: port.into(),
        gateway_addresses: Vec::new(),
        backend: L2BackendSpec::Ovs { port: Some(port.into()) },
        announce: AnnounceSchedule { repeats: 0, interval_ms: 1000 },
        role: RoleSource::Fixed(role),
        silence_settle_ms,
        ..hagw_core::testing::router(&format!("r-{port}"))
    }
}
