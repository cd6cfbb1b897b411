//! The retag-proof half of the hold: the OpenFlow port config bit `no-receive`
//! (`OFPPC_NO_RECV`) on the gateway's port in its bridge.
//!
//! The dead-VLAN triple lives in the OVSDB `Port` row, which the OVS agent rewrites when it
//! (re)wires the port: between its retag and hagw's monitor-driven re-hold the port forwards
//! on the local VLAN. `no-receive` is OpenFlow port state inside ovs-vswitchd (ofproto-dpif's
//! translation drops every packet received on such a port, before any table lookup), not an
//! OVSDB column, so no Port-row write touches it. It is lost when the port is re-created
//! (a new Port row, which the monitor reports) or ovs-vswitchd restarts.
//!
//! It is read and written over the bridge's management socket,
//! `unix:<OVS_RUNDIR>/<bridge>.mgmt`, speaking OpenFlow 1.3 directly ([`super::openflow`],
//! well under a millisecond). `ovs-ofctl` (a subprocess, about 5 ms) is the fallback when the
//! bridge refuses OpenFlow 1.3 or its port description does not list the port (a name
//! longer than OpenFlow's 15 characters).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use thiserror::Error;
use tokio::process::Command;

use super::listings::Listings;
use super::openflow::{self, OpenFlowError};

/// Where ovs-vswitchd puts its sockets when `OVS_RUNDIR` is not set.
pub const DEFAULT_RUNDIR: &str = "/var/run/openvswitch";

/// The OpenFlow versions the `ovs-ofctl` fallback offers (the highest both sides allow is
/// used; its `mod-port` and `dump-ports-desc` work with each).
const FALLBACK_PROTOCOLS: &str = "OpenFlow10,OpenFlow11,OpenFlow12,OpenFlow13,OpenFlow14";

/// Why reading or setting `no-receive` failed.
#[derive(Debug, Error)]
pub enum NoReceiveError {
    /// `ovs-ofctl` could not be run at all (not installed): retrying will not help.
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    /// `ovs-ofctl` ran and failed: vswitchd down or restarting (no management socket), or
    /// the port not (yet) in the bridge.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed { command: String, status: String, stderr: String },
    /// The port is in OVSDB but vswitchd has not added it to the bridge (yet).
    #[error("port {port} is not in OpenFlow bridge {bridge}")]
    NoSuchPort { bridge: String, port: String },
    /// Talking OpenFlow to the bridge failed: vswitchd down or restarting (no management
    /// socket), or it refused the change.
    #[error("OpenFlow to bridge {bridge}: {source}")]
    OpenFlow { bridge: String, source: Arc<OpenFlowError> },
}

impl NoReceiveError {
    /// Everything but a missing `ovs-ofctl` may resolve by itself (vswitchd coming back, the
    /// port being added).
    pub fn is_transient(&self) -> bool {
        !matches!(self, NoReceiveError::Spawn { .. })
    }
}

/// The run directory of the ovs-vswitchd that serves `endpoint`: `OVS_RUNDIR` if set, else
/// the directory of a `unix:` endpoint (the default `unix:/run/openvswitch/db.sock` lives in
/// the run dir), else [`DEFAULT_RUNDIR`].
pub fn rundir_for(endpoint: &str, env_rundir: Option<&str>) -> PathBuf {
    if let Some(dir) = env_rundir.filter(|d| !d.is_empty()) {
        return dir.into();
    }
    endpoint
        .strip_prefix("unix:")
        .and_then(|path| Path::new(path).parent())
        .filter(|dir| !dir.as_os_str().is_empty())
        .map_or_else(|| DEFAULT_RUNDIR.into(), Path::to_path_buf)
}

/// `no-receive` on the ports of one ovs-vswitchd's bridges: over each bridge's management
/// socket ([`openflow`]), with `ovs-ofctl` as the fallback. Clones share the bridges'
/// port listings ([`Listings`]).
#[derive(Debug, Clone)]
pub struct NoReceive {
    rundir: PathBuf,
    program: String,
    listings: Arc<Listings>,
}

impl NoReceive {
    pub fn new(rundir: impl Into<PathBuf>) -> Self {
        Self { rundir: rundir.into(), program: "ovs-ofctl".into(), listings: Arc::default() }
    }

    /// The `ovs-ofctl` to run for the fallback. A program that does not exist turns every
    /// fallback into [`NoReceiveError::Spawn`]: the tests of hagw's own OpenFlow exchange use that
    /// to prove it never fell back.
    pub fn with_program(mut self, program: impl Into<String>) -> Self {
        self.program = program.into();
        self
    }

    pub fn rundir(&self) -> &Path {
        &self.rundir
    }

    /// The bridge's management socket.
    fn socket(&self, bridge: &str) -> PathBuf {
        self.rundir.join(format!("{bridge}.mgmt"))
    }

    /// The bridge's management socket, as an `ovs-ofctl` target.
    pub fn target(&self, bridge: &str) -> String {
        format!("unix:{}", self.socket(bridge).display())
    }

    async fn run(&self, args: &[&str]) -> Result<String, NoReceiveError> {
        let out = Command::new(&self.program)
            // `ovs-ofctl` offers only 1.0 by default; a bridge may allow only later versions.
            .arg(format!("--protocols={FALLBACK_PROTOCOLS}"))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| NoReceiveError::Spawn { program: self.program.clone(), source })?;
        if !out.status.success() {
            return Err(NoReceiveError::Failed {
                command: format!("{} {}", self.program, args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The OpenFlow port named `port` in `bridge`, from a listing shared with concurrent
    /// callers; `None` where the fallback must answer (not listed, or no OpenFlow 1.3).
    async fn find(
        &self,
        bridge: &str,
        port: &str,
    ) -> Result<Option<openflow::Port>, NoReceiveError> {
        match self.listings.ports(&self.socket(bridge)).await {
            Ok(ports) => Ok(ports.iter().find(|p| p.name == port).cloned()),
            Err(e) if matches!(*e, OpenFlowError::VersionRefused(_)) => Ok(None),
            Err(source) => Err(NoReceiveError::OpenFlow { bridge: bridge.into(), source }),
        }
    }

    /// Whether `port` of `bridge` has `no-receive` set.
    pub async fn get(&self, bridge: &str, port: &str) -> Result<bool, NoReceiveError> {
        if let Some(found) = self.find(bridge, port).await? {
            return Ok(found.no_receive());
        }
        let out = self.run(&["dump-ports-desc", &self.target(bridge)]).await?;
        port_no_receive(&out, port)
            .ok_or_else(|| NoReceiveError::NoSuchPort { bridge: bridge.into(), port: port.into() })
    }

    /// Sets (`true`) or clears `no-receive` on `port` of `bridge`. Idempotent.
    pub async fn set(
        &self,
        bridge: &str,
        port: &str,
        no_receive: bool,
    ) -> Result<(), NoReceiveError> {
        match self.listings.set(&self.socket(bridge), port, no_receive).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) if matches!(*e, OpenFlowError::VersionRefused(_)) => {}
            Err(source) => return Err(NoReceiveError::OpenFlow { bridge: bridge.into(), source }),
        }
        let config = if no_receive { "no-receive" } else { "receive" };
        match self.run(&["mod-port", &self.target(bridge), port, config]).await {
            Err(NoReceiveError::Failed { stderr, .. })
                if stderr.contains("couldn't find port") || stderr.contains("unknown port") =>
            {
                Err(NoReceiveError::NoSuchPort { bridge: bridge.into(), port: port.into() })
            }
            other => other.map(drop),
        }
    }
}

/// Reads `port`'s `no-receive` bit from `ovs-ofctl dump-ports-desc` (or `show`) output:
///
/// ```text
///  1(tg1-x): addr:56:0c:3e:72:d0:44
///      config:     NO_RECV
/// ```
///
/// `None` if the port is not listed.
pub fn port_no_receive(output: &str, port: &str) -> Option<bool> {
    let mut lines = output.lines();
    while let Some(line) = lines.next() {
        let Some((_, rest)) = line.trim_start().split_once('(') else { continue };
        let Some((name, _)) = rest.split_once("):") else { continue };
        if name != port {
            continue;
        }
        for detail in lines.by_ref() {
            if let Some(config) = detail.trim_start().strip_prefix("config:") {
                return Some(config.split_whitespace().any(|flag| flag == "NO_RECV"));
            }
            if !detail.starts_with("     ") {
                break;
            }
        }
        return Some(false);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: &str = "OFPST_PORT_DESC reply (xid=0x4):
 1(tg1-ab): addr:56:0c:3e:72:d0:44
     config:     NO_RECV
     state:      0
     current:    10GB-FD COPPER
 2(int-br-ex): addr:f2:7c:7c:ad:b1:ab
     config:     0
     state:      0
 3(tg2-ab): addr:f2:7c:7c:ad:b1:ac
     config:     PORT_DOWN NO_RECV NO_FWD
     state:      LINK_DOWN
 LOCAL(br-int): addr:72:45:cc:25:25:47
     config:     PORT_DOWN
     state:      LINK_DOWN
";

    #[test]
    fn reads_the_no_receive_bit_of_the_named_port() {
        assert_eq!(port_no_receive(DESC, "tg1-ab"), Some(true));
        assert_eq!(port_no_receive(DESC, "int-br-ex"), Some(false));
        assert_eq!(port_no_receive(DESC, "tg2-ab"), Some(true));
        assert_eq!(port_no_receive(DESC, "br-int"), Some(false));
        assert_eq!(port_no_receive(DESC, "tg1"), None);
        assert_eq!(port_no_receive("", "tg1-ab"), None);
    }

    #[test]
    fn rundir_from_env_then_endpoint_then_default() {
        assert_eq!(
            rundir_for("unix:/run/openvswitch/db.sock", None),
            Path::new("/run/openvswitch")
        );
        assert_eq!(rundir_for("unix:/run/openvswitch/db.sock", Some("/x")), Path::new("/x"));
        assert_eq!(rundir_for("unix:/run/x/db.sock", Some("")), Path::new("/run/x"));
        assert_eq!(rundir_for("tcp:127.0.0.1:6640", None), Path::new(DEFAULT_RUNDIR));
        assert_eq!(rundir_for("unix:db.sock", None), Path::new(DEFAULT_RUNDIR));
    }

    #[test]
    fn targets_the_bridge_management_socket() {
        assert_eq!(NoReceive::new("/run/ovs").target("br-int"), "unix:/run/ovs/br-int.mgmt");
    }

    #[test]
    fn only_a_missing_program_is_permanent() {
        let spawn = NoReceiveError::Spawn {
            program: "x".into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert!(!spawn.is_transient());
        assert!(NoReceiveError::NoSuchPort { bridge: "b".into(), port: "p".into() }.is_transient());
    }
}
