//! A real Kubernetes node for the tests (`scripts/k8s-node.sh`: etcd, kube-apiserver,
//! controller-manager, scheduler, containerd, kubelet), the hagw image imported into it, and
//! the real `helm` and `kubectl` against it.
//!
//! The node takes host-wide resources (an address on `lo`, a cgroup root, its ports), so one
//! test binary uses one node, started by the first test that asks and stopped when the test
//! process exits (a watchdog, since statics are never dropped). The API server and etcd ports
//! are reserved like every other test port.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::lab::hagw_bin;
use crate::ports::{self, ReservedPort};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The image the chart runs in the tests: the hagw under test, packed offline.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/hagw/hagw";
pub const IMAGE_TAG: &str = "test";

pub struct Node {
    pub kubeconfig: PathBuf,
    pub name: String,
    bin: PathBuf,
    runtime_socket: String,
    env: Vec<(String, String)>,
    _ports: [ReservedPort; 3],
    _state: tempfile::TempDir,
}

/// The node of this test process, started (and the image imported) on first use.
pub fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| Node::start().expect("starting the Kubernetes node"))
}

impl Node {
    fn start() -> Result<Node> {
        let ports = [ports::reserve()?, ports::reserve()?, ports::reserve()?];
        let state = tempfile::Builder::new().prefix("hagw-node-test-").tempdir()?;
        let env: Vec<(String, String)> = vec![
            ("HAGW_K8S_NODE_STATE".into(), state.path().display().to_string()),
            ("HAGW_K8S_NODE_API_PORT".into(), ports[0].port.to_string()),
            ("HAGW_K8S_NODE_ETCD_PORT".into(), ports[1].port.to_string()),
            ("HAGW_K8S_NODE_ETCD_PEER_PORT".into(), ports[2].port.to_string()),
        ];
        let script = repo().join("scripts/k8s-node.sh");
        // A node takes host-wide names (its address, cgroup, sockets): one stopped by the
        // watchdog of a test process that just ended may still hold them for a few seconds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        let out = loop {
            let out = Command::new(&script)
                .arg("start")
                .envs(env.iter().cloned())
                .stdin(Stdio::null())
                .output()
                .context("running k8s-node.sh start")?;
            let busy = String::from_utf8_lossy(&out.stderr).contains("another node running?");
            if out.status.success() || !busy || std::time::Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        };
        if !out.status.success() {
            bail!("k8s-node.sh start failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let exports = String::from_utf8(out.stdout)?;
        let get = |key: &str| -> Result<String> {
            exports
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {key}=")))
                .map(str::to_string)
                .with_context(|| format!("k8s-node.sh start printed no {key}:\n{exports}"))
        };
        // Stop the node when this process is gone, whatever way it ends.
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {env} {script} stop",
            pid = std::process::id(),
            env = env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
            script = script.display(),
        );
        Command::new("setsid")
            .args(["bash", "-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the node watchdog")?;
        let node = Node {
            kubeconfig: get("KUBECONFIG")?.into(),
            name: get("HAGW_K8S_NODE_NAME")?,
            bin: get("HAGW_K8S_NODE_BIN")?.into(),
            runtime_socket: get("CONTAINER_RUNTIME_ENDPOINT")?
                .trim_start_matches("unix://")
                .to_string(),
            env,
            _ports: ports,
            _state: state,
        };
        node.import_image()?;
        Ok(node)
    }

    /// The API server as a hostNetwork pod reaches it (there is no kube-proxy on this node).
    pub fn api_port(&self) -> &str {
        &self.env.iter().find(|(k, _)| k == "HAGW_K8S_NODE_API_PORT").expect("set").1
    }

    /// Builds the image offline from the hagw under test (debug symbols stripped) and imports
    /// it into the node's containerd.
    fn import_image(&self) -> Result<()> {
        let work = tempfile::Builder::new().prefix("hagw-image-").tempdir()?;
        let bin = work.path().join("hagw");
        run(Command::new("objcopy").arg("--strip-debug").arg(hagw_bin()).arg(&bin))?;
        run(Command::new(repo().join("scripts/image.sh"))
            .arg("build-offline")
            .env("HAGW_BIN", &bin)
            .env("HAGW_IMAGE_TAG", IMAGE_TAG)
            .env("HAGW_IMAGE_OUT", work.path()))?;
        let archive = work.path().join(format!("hagw-{IMAGE_TAG}.oci.tar"));
        run(Command::new("ctr")
            .args(["--address", &self.runtime_socket, "-n", "k8s.io", "images", "import"])
            .arg(&archive))?;
        Ok(())
    }

    fn tool(&self, name: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut child = Command::new(self.bin.join(name))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {name}"))?;
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().expect("piped").write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("{name} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.tool("kubectl", args, None)
    }

    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.tool("kubectl", &["apply", "-f", "-"], Some(yaml))
    }

    /// `kubectl` in the background (e.g. `logs -f`), its output into `out`.
    pub fn kubectl_follow(
        &self,
        args: &[&str],
        out: &std::path::Path,
    ) -> Result<std::process::Child> {
        let file = std::fs::File::create(out)?;
        Ok(Command::new(self.bin.join("kubectl"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?)
    }

    pub fn helm(&self, args: &[&str]) -> Result<String> {
        self.tool("helm", args, None)
    }

    /// `kubectl get -o json` of one object.
    pub fn get(&self, what: &str, name: &str, namespace: &str) -> Result<Value> {
        let out = self.kubectl(&["get", what, name, "-n", namespace, "-o", "json"])?;
        Ok(serde_json::from_str(&out)?)
    }

    /// The chart in this repository.
    pub fn chart(&self) -> PathBuf {
        repo().join("charts/hagw")
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
