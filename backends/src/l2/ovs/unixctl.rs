//! ovs-vswitchd's control socket (what `ovs-appctl` talks to): JSON-RPC 1.0 over a Unix
//! socket, one request at a time, the reply's `result` a text (the command's output).
//!
//! The socket is `<rundir>/ovs-vswitchd.<pid>.ctl`, the pid read from
//! `<rundir>/ovs-vswitchd.pid`, as `ovs-appctl -t ovs-vswitchd` finds it.

use std::path::{Path, PathBuf};

use futures::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use thiserror::Error;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::ovsdb::OvsdbError;
use crate::ovsdb::codec::JsonRpcCodec;

/// Why a control-socket command failed.
#[derive(Debug, Error)]
pub enum UnixctlError {
    /// No pid file or control socket: ovs-vswitchd is not running (or runs elsewhere).
    #[error("cannot reach ovs-vswitchd's control socket {path}: {source}")]
    Unreachable { path: PathBuf, source: std::io::Error },
    /// The connection broke or carried something that is not JSON-RPC.
    #[error("ovs-vswitchd's control socket: {0}")]
    Protocol(#[from] OvsdbError),
    /// ovs-vswitchd answered the command with an error.
    #[error("`{command}` failed: {error}")]
    Command { command: String, error: String },
}

/// The control socket of the ovs-vswitchd whose run directory is `rundir`.
pub fn socket_path(rundir: &Path) -> Result<PathBuf, UnixctlError> {
    let pidfile = rundir.join("ovs-vswitchd.pid");
    let text = std::fs::read_to_string(&pidfile)
        .map_err(|source| UnixctlError::Unreachable { path: pidfile.clone(), source })?;
    let pid = text.trim();
    Ok(rundir.join(format!("ovs-vswitchd.{pid}.ctl")))
}

/// One connection to the control socket.
pub struct Unixctl {
    io: Framed<UnixStream, JsonRpcCodec>,
    next_id: u64,
}

impl Unixctl {
    /// Connects to the ovs-vswitchd of `rundir`.
    pub async fn connect(rundir: &Path) -> Result<Unixctl, UnixctlError> {
        let path = socket_path(rundir)?;
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| UnixctlError::Unreachable { path, source })?;
        Ok(Unixctl { io: Framed::new(stream, JsonRpcCodec::default()), next_id: 0 })
    }

    /// Runs `method` with `params` (as `ovs-appctl method params…`) and returns its output.
    pub async fn call(&mut self, method: &str, params: &[&str]) -> Result<String, UnixctlError> {
        let id = self.next_id;
        self.next_id += 1;
        self.io.send(json!({"method": method, "params": params, "id": id})).await?;
        loop {
            let reply = match self.io.next().await {
                Some(reply) => reply?,
                None => return Err(OvsdbError::ConnectionLost("control socket closed".into()))?,
            };
            if reply.get("id").and_then(Json::as_u64) != Some(id) {
                continue;
            }
            return match reply.get("error") {
                Some(Json::Null) | None => {
                    Ok(reply.get("result").and_then(Json::as_str).unwrap_or_default().to_owned())
                }
                Some(error) => Err(UnixctlError::Command {
                    command: format!("{method} {}", params.join(" ")),
                    error: error.as_str().map_or_else(|| error.to_string(), str::to_owned),
                }),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_named_after_the_pid_in_the_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(socket_path(dir.path()), Err(UnixctlError::Unreachable { .. })));
        std::fs::write(dir.path().join("ovs-vswitchd.pid"), "4242\n").unwrap();
        assert_eq!(socket_path(dir.path()).unwrap(), dir.path().join("ovs-vswitchd.4242.ctl"));
    }

    #[tokio::test]
    async fn a_command_returns_its_output_and_an_error_names_the_command() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ovs-vswitchd.pid"), "7").unwrap();
        let listener =
            tokio::net::UnixListener::bind(dir.path().join("ovs-vswitchd.7.ctl")).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut io = Framed::new(stream, JsonRpcCodec::default());
            for reply in [
                json!({"result": "ok\n", "error": null}),
                json!({"result": null, "error": "no such flow"}),
            ] {
                let request = io.next().await.unwrap().unwrap();
                let mut reply = reply;
                reply["id"] = request["id"].clone();
                io.send(reply).await.unwrap();
            }
        });
        let mut ctl = Unixctl::connect(dir.path()).await.unwrap();
        assert_eq!(ctl.call("dpctl/dump-flows", &["-m"]).await.unwrap(), "ok\n");
        let err = ctl.call("dpctl/del-flow", &["ufid:1"]).await.unwrap_err().to_string();
        assert!(err.contains("dpctl/del-flow ufid:1") && err.contains("no such flow"), "{err}");
        server.await.unwrap();
    }
}
