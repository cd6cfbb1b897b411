//! A real Kubernetes v1.34 control plane for the operator tests (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler from `scripts/k8s-node.sh` with
//! `HAGW_K8S_NODE_KUBELET=0`: no kubelet, no container runtime, nothing host-wide), the
//! `kubectl` built with it, and hagw agents emulating separate nodes on one machine.
//!
//! Each test binary starts its own control plane on reserved ports and in its own state dir,
//! so several run at once, also next to the full node of `crate::node`. A watchdog process
//! stops it when the test process exits, however it exits (static values are never dropped, a
//! panic may abort), so nothing outlives the tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::lab::{Lab, hagw_bin, sh};
use crate::ports::{self, ReservedPort};
pub use crate::wait::wait_for;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script() -> PathBuf {
    repo().join("scripts/k8s-node.sh")
}

/// A running control plane. [`ApiServer::stop`] and [`ApiServer::restart`] keep its data,
/// ports and credentials.
pub struct ApiServer {
    state: tempfile::TempDir,
    /// API server, etcd client and etcd peer ports, reserved while the server lives.
    ports: [ReservedPort; 3],
    pub kubeconfig: PathBuf,
    /// The `kubectl` of the same Kubernetes version (`$HAGW_K8S_NODE_BIN/kubectl`).
    kubectl: PathBuf,
}

impl ApiServer {
    /// Starts etcd + kube-apiserver + kube-controller-manager + kube-scheduler and waits for
    /// `/readyz` and the `default` ServiceAccount; fails (never skips) if the binaries are not
    /// built.
    pub fn start() -> Result<ApiServer> {
        let cache =
            std::env::var("HAGW_K8S_NODE_CACHE").unwrap_or("/var/cache/hagw/k8s-node".into());
        for name in ["kube-apiserver", "kubectl", "BUILD_ID"] {
            let bin = Path::new(&cache).join("bin").join(name);
            if !bin.exists() {
                bail!(
                    "{} is missing: run `scripts/k8s-node.sh install` first (scripts/test.sh \
                     does; it builds Kubernetes v1.34 from its Go modules into {cache}, ~15 min \
                     once)",
                    bin.display()
                );
            }
        }
        let state = tempfile::Builder::new().prefix("hagw-k8s-test-").tempdir()?;
        let ports = [ports::reserve()?, ports::reserve()?, ports::reserve()?];
        let mut server = ApiServer {
            kubeconfig: state.path().join("kubeconfig"),
            kubectl: Path::new(&cache).join("bin/kubectl"),
            state,
            ports,
        };
        let exports = server.run_script("start", false)?;
        let get = |key: &str| export(&exports, key);
        server.kubeconfig = get("KUBECONFIG")?.into();
        server.kubectl = Path::new(&get("HAGW_K8S_NODE_BIN")?).join("kubectl");
        // Stop the control plane when this process is gone, whatever way it ends.
        let stop = format!("{} {} stop", server.env().join(" "), script().display());
        spawn_watchdog(&stop).context("starting the apiserver watchdog")?;
        Ok(server)
    }

    /// The script's environment: control plane only, in this server's state dir and ports.
    fn env(&self) -> Vec<String> {
        let [api, etcd, peer] = [&self.ports[0], &self.ports[1], &self.ports[2]].map(|p| p.port);
        vec![
            "HAGW_K8S_NODE_KUBELET=0".to_string(),
            format!("HAGW_K8S_NODE_STATE={}", self.state.path().display()),
            format!("HAGW_K8S_NODE_API_PORT={api}"),
            format!("HAGW_K8S_NODE_ETCD_PORT={etcd}"),
            format!("HAGW_K8S_NODE_ETCD_PEER_PORT={peer}"),
        ]
    }

    /// Runs `k8s-node.sh action`; returns its stdout (the `export` lines of `start`).
    fn run_script(&self, action: &str, keep_data: bool) -> Result<String> {
        let mut cmd = Command::new(script());
        cmd.arg(action).stdin(Stdio::null());
        for kv in self.env() {
            let (k, v) = kv.split_once('=').expect("k=v");
            cmd.env(k, v);
        }
        // 1: `stop` keeps the state dir (etcd data, certs, token) and `start` reuses it.
        cmd.env("HAGW_K8S_NODE_KEEP_DATA", if keep_data { "1" } else { "0" });
        let out = cmd.output().with_context(|| format!("running k8s-node.sh {action}"))?;
        if !out.status.success() {
            bail!("k8s-node.sh {action} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the control plane (etcd data is kept for [`ApiServer::restart`]).
    pub fn stop(&self) -> Result<()> {
        self.run_script("stop", true).map(drop)
    }

    /// Starts it again on the same ports with the same data and credentials.
    pub fn restart(&self) -> Result<()> {
        self.run_script("start", true).map(drop)
    }

    /// Runs kubectl against this server; fails with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        run_client(Command::new(&self.kubectl), &self.kubeconfig, args, stdin)
    }

    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.kubectl_stdin(&["apply", "-f", "-"], Some(yaml))
    }

    /// `kubectl get -o json` of one object.
    pub fn get(&self, what: &str, name: &str, namespace: &str) -> Result<Value> {
        let out = self.kubectl(&["get", what, name, "-n", namespace, "-o", "json"])?;
        Ok(serde_json::from_str(&out)?)
    }

    /// The value etcd holds under `key` (e.g. `/registry/hagw.dev/harouters/<ns>/<name>`),
    /// read through etcd's JSON gateway: what the API server stored, in the version it
    /// stored it in.
    pub fn etcd_get(&self, key: &str) -> Result<String> {
        let script = format!(
            "set -o pipefail; k=$(printf %s '{key}' | base64 -w0); \
             curl -sf -X POST http://127.0.0.1:{port}/v3/kv/range -d \"{{\\\"key\\\": \\\"$k\\\"}}\" \
             | python3 -c 'import base64, json, sys; print(base64.b64decode(json.load(sys.stdin)[\"kvs\"][0][\"value\"]).decode())'",
            port = self.ports[1].port,
        );
        sh(&script).with_context(|| format!("reading {key} from etcd"))
    }

    /// Installs the HARouter CRD from `hagw crd` and waits until it is served.
    pub fn install_crd(&self) -> Result<()> {
        let out = Command::new(hagw_bin()).arg("crd").output()?;
        if !out.status.success() {
            bail!("hagw crd: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.kubectl_stdin(
            &["apply", "--server-side", "-f", "-"],
            Some(&String::from_utf8(out.stdout)?),
        )?;
        // (`kubectl wait` fails outright while the new CRD has no conditions yet.)
        let established = r#"{.status.conditions[?(@.type=="Established")].status}"#;
        wait_for("the HARouter CRD established", Duration::from_secs(30), || {
            let out = self.kubectl(&[
                "get",
                "crd",
                "harouters.hagw.dev",
                "-o",
                &format!("jsonpath={established}"),
            ])?;
            Ok((out.trim() == "True").then_some(()))
        })
        .map(drop)
    }
}

impl Drop for ApiServer {
    /// Stops the control plane while its state dir (pid files) still exists; the watchdog
    /// covers the servers that are never dropped (statics) and aborted processes.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Runs the shell command `stop` once this test process is gone, however it ends (statics
/// are never dropped, a panic may abort): a detached watchdog polls for the process.
pub fn spawn_watchdog(stop: &str) -> std::io::Result<()> {
    let script =
        format!("while kill -0 {} 2>/dev/null; do sleep 0.5; done; {stop}", std::process::id());
    Command::new("setsid")
        .args(["bash", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
}

/// Runs a Kubernetes client (`kubectl`, `helm`) with `kubeconfig`, feeding it `stdin`;
/// fails with its stderr.
pub fn run_client(
    mut command: Command,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    // The program with what wraps it (e.g. `nsenter --net=… -- kubectl`).
    let program = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = command
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of `export KEY=VALUE` in what `k8s-node.sh start` printed.
pub fn export(exports: &str, key: &str) -> Result<String> {
    exports
        .lines()
        .find_map(|l| l.strip_prefix(&format!("export {key}=")))
        .map(str::to_string)
        .with_context(|| format!("k8s-node.sh start printed no {key}:\n{exports}"))
}

/// Emulated network nodes on one machine. Every node has the same router namespace and
/// gateway device names, as with Neutron, and its own state file at the same path: each
/// node's agent runs in a private mount namespace where `/run/netns` and the state directory
/// are that node's own.
pub struct Nodes {
    pub lab: Lab,
    /// The router namespace name every node's agent sees.
    pub namespace: String,
    pub device: &'static str,
    /// The state file path in the spec (the same on every node).
    pub state_file: PathBuf,
    names: Vec<String>,
    /// Routers added by [`Nodes::add_routers`].
    extra: usize,
    /// The agents' `--log-level`.
    pub log_level: &'static str,
    /// The agents' `--resync` (seconds).
    pub resync: u32,
}

impl Nodes {
    pub fn build(names: &[&str]) -> Result<Nodes> {
        let mut lab = Lab::new()?;
        let namespace = format!("qrouter-{}", lab.id);
        let device = "qg-k8s";
        for (i, name) in names.iter().enumerate() {
            let qr = lab.netns(&format!("q{i}"))?;
            let tor = lab.netns(&format!("t{i}"))?;
            lab.veth((&qr, device), (&tor, "tor-port"))?;
            lab.exec(&tor, "ip link set tor-port up")?;
            // The gateway port as the L3 agent leaves it: up.
            lab.exec(&qr, &format!("ip link set {device} up"))?;
            let dir = lab.dir.path().join(name);
            std::fs::create_dir_all(dir.join("netns"))?;
            std::fs::create_dir_all(dir.join("ha"))?;
            std::fs::write(dir.join("ha/state"), "backup")?;
        }
        let state_file = lab.dir.path().join("ha/state");
        std::fs::create_dir_all(lab.dir.path().join("ha"))?;
        Ok(Nodes {
            lab,
            namespace,
            device,
            state_file,
            names: names.iter().map(|s| s.to_string()).collect(),
            extra: 0,
            log_level: "info,hagw=debug",
            resync: 5,
        })
    }

    fn index(&self, node: &str) -> usize {
        self.names.iter().position(|n| n == node).expect("known node")
    }

    /// The host name of `node`'s router namespace.
    pub fn netns(&self, node: &str) -> String {
        format!("q{}-{}", self.index(node), self.lab.id)
    }

    /// Writes `node`'s keepalived state (`primary`/`backup`).
    pub fn set_state(&self, node: &str, state: &str) -> Result<()> {
        std::fs::write(self.lab.dir.path().join(node).join("ha/state"), state)?;
        Ok(())
    }

    /// `ip -o link` of the gateway device on `node`.
    pub fn link(&self, node: &str) -> Result<String> {
        self.lab.exec(&self.netns(node), &format!("ip -o link show {}", self.device))
    }

    pub fn addresses(&self, node: &str) -> Result<String> {
        self.lab.exec(&self.netns(node), &format!("ip -o addr show dev {}", self.device))
    }

    /// Adds `count` more routers, each in its own router namespace
    /// (`qrouter-<lab>-<j>`, as Neutron has one per router) with its own gateway device
    /// (`qg-<j>`, a veth whose peer stays in the namespace), up, on every node. Returns the
    /// (namespace, device) of each; agents started afterwards see them.
    pub fn add_routers(&mut self, count: usize) -> Result<Vec<(String, String)>> {
        let id = self.lab.id.clone();
        for (i, _) in self.names.iter().enumerate() {
            let hosts: Vec<String> = (0..count).map(|j| format!("q{i}-{id}-{j}")).collect();
            let batch = self.lab.dir.path().join(format!("routers-{i}.batch"));
            let lines: Vec<String> = hosts
                .iter()
                .enumerate()
                .flat_map(|(j, h)| {
                    [
                        format!("netns add {h}"),
                        format!(
                            "link add qg-{j:05} netns {h} type veth peer name qp-{j:05} netns {h}"
                        ),
                    ]
                })
                .collect();
            std::fs::write(&batch, lines.join("\n") + "\n")?;
            for h in &hosts {
                self.lab.adopt_netns(h);
            }
            sh(&format!("ip -batch {}", batch.display()))?;
            // One `ip` per namespace (entering it is what costs), not one per link.
            let up = format!(
                "for j in $(seq 0 {last}); do n=$(printf %05d $j); \
                 printf 'link set lo up\\nlink set qp-%s up\\nlink set qg-%s up\\n' $n $n \
                 | ip -n q{i}-{id}-$j -batch - || exit 1; done",
                last = count - 1
            );
            sh(&up)?;
        }
        self.extra = count;
        Ok((0..count).map(|j| (format!("qrouter-{id}-{j}"), format!("qg-{j:05}"))).collect())
    }

    /// An HARouter for these nodes (link-down, generic backend, 300 ms settle).
    pub fn harouter(&self, name: &str, nodes: &[&str]) -> String {
        self.harouter_on(name, self.device, nodes)
    }

    /// [`Nodes::harouter`] for the gateway device `device`.
    pub fn harouter_on(&self, name: &str, device: &str, nodes: &[&str]) -> String {
        format!(
            "apiVersion: hagw.dev/v1beta1\nkind: HARouter\nmetadata:\n  name: {name}\n  namespace: default\n\
             spec:\n  nodes: [{nodes}]\n  router:\n    id: {name}\n    namespace: {ns}\n    \
             gatewayDevice: {dev}\n    gatewayAddresses: [203.0.113.10/24]\n    strategy: link-down\n    \
             silenceSettleMs: 300\n    announce: {{repeats: 0}}\n    role: {{stateFile: {state}}}\n",
            nodes = nodes.join(", "),
            ns = self.namespace,
            dev = device,
            state = self.state_file.display(),
        )
    }

    /// Starts `node`'s agent against `server`; it is killed when the returned value drops.
    pub fn agent(&self, server: &ApiServer, node: &str) -> Result<AgentProcess> {
        self.agent_with_env(server, node, &[])
    }

    /// [`Nodes::agent`] with extra environment (the agent's `HAGW_*` settings).
    pub fn agent_with_env(
        &self,
        server: &ApiServer,
        node: &str,
        env: &[(&str, &str)],
    ) -> Result<AgentProcess> {
        let dir = self.lab.dir.path().join(node);
        let netns_dir = dir.join("netns");
        let extra = match self.extra {
            0 => String::new(),
            n => format!(
                "for j in $(seq 0 {last}); do touch {nd}/qrouter-{id}-$j; \
                 mount --bind /run/netns/q{i}-{id}-$j {nd}/qrouter-{id}-$j; done; ",
                last = n - 1,
                nd = netns_dir.display(),
                id = self.lab.id,
                i = self.index(node),
            ),
        };
        let script = format!(
            "set -e; touch {nd}/{ns}; mount --bind /run/netns/{host} {nd}/{ns}; {extra}\
             mount --rbind {nd} /run/netns; mount --bind {ha} {shared}; \
             exec {hagw} --log-level {level} agent --kubernetes --state-dir {state} --listen 127.0.0.1:0 --resync {resync}",
            level = self.log_level,
            resync = self.resync,
            nd = netns_dir.display(),
            ns = self.namespace,
            host = self.netns(node),
            ha = dir.join("ha").display(),
            shared = self.state_file.parent().expect("dir").display(),
            hagw = hagw_bin().display(),
            state = dir.join("cache").display(),
        );
        let mut command = Command::new("unshare");
        command.args(["--mount", "--propagation", "private", "bash", "-c", &script]);
        command.envs(env.iter().copied());
        AgentProcess::spawn(server, node, command, dir.join("agent.log"))
    }
}

pub struct AgentProcess {
    child: Child,
    pub log: PathBuf,
}

impl AgentProcess {
    /// Starts `command` (an agent) as `node` against `server`, its output into `log`.
    pub fn spawn(
        server: &ApiServer,
        node: &str,
        command: Command,
        log: PathBuf,
    ) -> Result<AgentProcess> {
        AgentProcess::spawn_with(&server.kubeconfig, node, command, log)
    }

    /// [`AgentProcess::spawn`] against the API server `kubeconfig` names (a real node's).
    pub fn spawn_with(
        kubeconfig: &Path,
        node: &str,
        mut command: Command,
        log: PathBuf,
    ) -> Result<AgentProcess> {
        let file = std::fs::File::create(&log)?;
        let child = command
            .env("KUBECONFIG", kubeconfig)
            .env("NODE_NAME", node)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting the agent")?;
        Ok(AgentProcess { child, log })
    }

    /// The agent's `/metrics` text (its address is in its log: agents listen on port 0).
    pub fn metrics(&self) -> Result<String> {
        let log = strip_ansi(&std::fs::read_to_string(&self.log)?);
        let addr = log
            .split("health=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("no health address in the agent's log:\n{log}"))?;
        http_get(addr, "/metrics")
    }

    /// The agent's CPU time so far (user and system; `unshare` and the shell exec it, so it
    /// is the child's own process).
    pub fn cpu_time(&self) -> Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name, which is in parentheses: state is the first.
        let fields: Vec<&str> =
            stat.rsplit_once(')').context("stat")?.1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // USER_HZ is 100 on Linux.
        Ok(Duration::from_millis(ticks * 10))
    }

    /// Fails with the agent's log if it has exited.
    pub fn assert_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("agent exited ({status}):\n{}", std::fs::read_to_string(&self.log)?);
        }
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` without terminal colour codes (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The body of `GET path` from hagw's HTTP endpoint at `addr`.
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    use std::io::{Read, Write};
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (_, body) = response.split_once("\r\n\r\n").context("no end of headers")?;
    Ok(body.to_string())
}

/// The status entry of `node` in a HARouter, if present.
pub fn node_entry(harouter: &Value, node: &str) -> Option<Value> {
    harouter["status"]["nodes"].as_array()?.iter().find(|e| e["node"] == node).cloned()
}
