//! A real Kubernetes node for the tests (`scripts/k8s-node.sh`: etcd, kube-apiserver,
//! controller-manager, scheduler, containerd, kubelet), the hagw image imported into it, and
//! the real `helm` and `kubectl` against it.
//!
//! The node takes host-wide resources (an address on `lo`, a cgroup root, its ports), so one
//! test binary uses one node, started by the first test that asks and stopped when the test
//! process exits (a watchdog, since statics are never dropped). The API server and etcd ports
//! are reserved like every other test port. A host-wide lock file makes a node wait for
//! another test process's node (a second test run on the machine) instead of failing.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::keepalived::KaLab;
use crate::lab::hagw_bin;
use crate::ports::{self, ReservedPort};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The image the chart runs in the tests: the hagw under test, packed offline.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/hagw/hagw";
pub const IMAGE_TAG: &str = "test";
/// A stand-in for a containerized Neutron L3 agent: Debian with keepalived and iproute2
/// (`scripts/image.sh build-neutron-standin`), imported by [`Node::import_standin`].
pub const STANDIN_IMAGE: &str = "localhost/neutron-standin:test";

pub struct Node {
    pub kubeconfig: PathBuf,
    pub name: String,
    /// The network namespace the whole node runs in (its hostNetwork pods share it), if not
    /// the host's.
    netns: Option<String>,
    bin: PathBuf,
    runtime_socket: String,
    env: Vec<(String, String)>,
    _ports: [ReservedPort; 3],
    /// `None` once [`Node::die`] left it behind, as a killed test process would.
    state: Option<tempfile::TempDir>,
    /// Held while this node may run; released after `Drop` has stopped it, or at exit.
    _host: std::fs::File,
}

/// The lock file every test node holds (host-wide, like the node's names).
const HOST_LOCK: &str = "/run/lock/hagw-k8s-node-test.lock";

/// The node of this test process, started (and the image imported) on first use.
pub fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| Node::start_in(None).expect("starting the Kubernetes node"))
}

/// `program` run in `netns` (network namespace only, unlike `ip netns exec`, whose private
/// mount namespace would hide the node's mounts from the rest of the test), or as it is.
fn command_in(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(program);
            c
        }
        None => Command::new(program),
    }
}

impl Node {
    /// A node in the network namespace `netns` (a lab node's), stopped when dropped: its
    /// hostNetwork pods live in that namespace, with that node's bridges and ports. It still
    /// takes a few host-wide names, so run it in a test binary of its own.
    pub fn start_in_netns(netns: &str) -> Result<Node> {
        Node::start_in(Some(netns))
    }

    fn start_in(netns: Option<&str>) -> Result<Node> {
        let host = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(HOST_LOCK)
            .with_context(|| format!("opening {HOST_LOCK}"))?;
        if host.try_lock().is_err() {
            eprintln!("waiting for another test process's Kubernetes node ({HOST_LOCK})");
            host.lock().with_context(|| format!("locking {HOST_LOCK}"))?;
        }
        let ports = [ports::reserve()?, ports::reserve()?, ports::reserve()?];
        let state = tempfile::Builder::new().prefix("hagw-node-test-").tempdir()?;
        let env: Vec<(String, String)> = vec![
            ("HAGW_K8S_NODE_STATE".into(), state.path().display().to_string()),
            ("HAGW_K8S_NODE_API_PORT".into(), ports[0].port.to_string()),
            ("HAGW_K8S_NODE_ETCD_PORT".into(), ports[1].port.to_string()),
            ("HAGW_K8S_NODE_ETCD_PEER_PORT".into(), ports[2].port.to_string()),
        ];
        let mut env = env;
        if netns.is_some() {
            let cgroup = format!("/hagw-node-{}", std::process::id());
            env.push(("HAGW_K8S_NODE_CGROUP".into(), cgroup));
        }
        let script = repo().join("scripts/k8s-node.sh");
        // A node takes host-wide names (its address, cgroup, sockets): one stopped by the
        // watchdog of a test process that just ended may still hold them for a few seconds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        let out = loop {
            let out = command_in(netns, &script)
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
        let get = |key: &str| crate::k8s::export(&exports, key);
        // Stop the node when this process is gone, whatever way it ends.
        // In its namespace while that exists (a lab may be gone first).
        let enter =
            netns.map(|ns| format!("nsenter --net=/run/netns/{ns} -- ")).unwrap_or_default();
        let stop = format!(
            "export {env}; {enter}{script} stop || {script} stop",
            env = env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
            script = script.display(),
        );
        crate::k8s::spawn_watchdog(&stop).context("starting the node watchdog")?;
        let node = Node {
            kubeconfig: get("KUBECONFIG")?.into(),
            name: get("HAGW_K8S_NODE_NAME")?,
            netns: netns.map(str::to_string),
            bin: get("HAGW_K8S_NODE_BIN")?.into(),
            runtime_socket: get("CONTAINER_RUNTIME_ENDPOINT")?
                .trim_start_matches("unix://")
                .to_string(),
            env,
            _ports: ports,
            state: Some(state),
            _host: host,
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
        self.import(&work.path().join(format!("hagw-{IMAGE_TAG}.oci.tar")))
    }

    /// Builds [`STANDIN_IMAGE`] offline and imports it into the node's containerd, once per
    /// test process.
    pub fn import_standin(&self) -> Result<()> {
        static IMPORTED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
        let mut imported = IMPORTED.lock().unwrap_or_else(|p| p.into_inner());
        if *imported {
            return Ok(());
        }
        let work = tempfile::Builder::new().prefix("hagw-image-").tempdir()?;
        run(Command::new(repo().join("scripts/image.sh"))
            .arg("build-neutron-standin")
            .env("HAGW_IMAGE_TAG", IMAGE_TAG)
            .env("HAGW_IMAGE_OUT", work.path()))?;
        self.import(&work.path().join(format!("neutron-standin-{IMAGE_TAG}.oci.tar")))?;
        *imported = true;
        Ok(())
    }

    fn import(&self, archive: &std::path::Path) -> Result<()> {
        self.ctr(&["images", "import", archive.to_str().context("archive path")?]).map(drop)
    }

    /// `ctr` in the node's containerd, Kubernetes' namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ctr")
            .args(["--address", &self.runtime_socket, "-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running ctr")?;
        if !out.status.success() {
            bail!("ctr {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The image under test, also as `IMAGE_REPOSITORY:to` (an upgrade's new tag).
    pub fn tag_image(&self, from: &str, to: &str) -> Result<()> {
        let image = |tag: &str| format!("{IMAGE_REPOSITORY}:{tag}");
        self.ctr(&["images", "tag", "--force", &image(from), &image(to)]).map(drop)
    }

    fn tool(&self, name: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let command = command_in(self.netns.as_deref(), self.bin.join(name));
        crate::k8s::run_client(command, &self.kubeconfig, args, stdin)
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
        Ok(command_in(self.netns.as_deref(), self.bin.join("kubectl"))
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

    /// The node loses power (`k8s-node.sh power-off`): its kubelet, containerd and every
    /// container SIGKILLed, what a boot clears removed; the control plane stays.
    pub fn power_off(&self) -> Result<()> {
        self.script("power-off")
    }

    /// The node boots again (`k8s-node.sh power-on`): containerd and the kubelet start, and
    /// the kubelet restarts the pods bound to the node. Returns once the node is Ready.
    pub fn power_on(&self) -> Result<()> {
        self.script("power-on")
    }

    /// The node dies as with the test process that ran it: every one of its processes
    /// SIGKILLed (`k8s-node.sh power-off`, then the control plane), nothing stopped, its state
    /// dir left behind, so its names (the address on `lo`, the bridge, the cgroup root) stay
    /// taken. Its lock is released: the next node of this process may start.
    pub fn die(mut self) -> Result<()> {
        self.script("power-off")?;
        let state = self.state.take().expect("a live node has its state dir").keep();
        for component in ["scheduler", "kcm", "apiserver", "etcd"] {
            let pid = std::fs::read_to_string(state.join(format!("{component}.pid")))?;
            run(Command::new("kill").args(["-KILL", pid.trim()]))?;
        }
        Ok(())
    }

    fn script(&self, action: &str) -> Result<()> {
        run(command_in(self.netns.as_deref(), repo().join("scripts/k8s-node.sh"))
            .arg(action)
            .envs(self.env.iter().cloned()))
    }
}

impl Drop for Node {
    /// A node in a lab's namespace stops with the test, before the lab removes the namespace
    /// (the static host node never drops: its watchdog stops it).
    fn drop(&mut self) {
        if self.state.is_none() {
            return; // died: a later start reclaims what it left
        }
        let script = repo().join("scripts/k8s-node.sh");
        let _ = command_in(self.netns.as_deref(), &script)
            .arg("stop")
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .output();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A Helm release of the chart, uninstalled (with its namespace) on drop.
pub struct Release<'a> {
    pub node: &'a Node,
    pub name: String,
    pub namespace: String,
}

impl Release<'_> {
    /// This node's entry in the status of the object the agent published for the discovered
    /// router `id` (in the release's namespace).
    pub fn entry(&self, id: &str) -> Result<Option<Value>> {
        let object = self.node.get("harouter", id, &self.namespace)?;
        Ok(crate::k8s::node_entry(&object, &self.node.name))
    }

    /// The pod's `/metrics` text (hostNetwork: on the node's loopback, at the chart's
    /// `metricsPort`).
    pub fn metrics(&self) -> Result<String> {
        let pod = self.pod()?;
        let port = pod["spec"]["containers"][0]["ports"]
            .as_array()
            .and_then(|ports| ports.iter().find(|p| p["name"] == "metrics"))
            .and_then(|p| p["containerPort"].as_u64())
            .context("the pod's metrics port")?;
        crate::k8s::http_get(&format!("127.0.0.1:{port}"), "/metrics")
    }

    /// The release's one live pod, as the API server has it.
    pub fn pod(&self) -> Result<Value> {
        let pods: Value = serde_json::from_str(&self.node.kubectl(&[
            "get",
            "pods",
            "-n",
            &self.namespace,
            "-o",
            "json",
        ])?)?;
        let items = pods["items"].as_array().context("a pod list")?;
        let live: Vec<&Value> =
            items.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).collect();
        match live.as_slice() {
            [pod] => Ok((*pod).clone()),
            other => bail!("{} live pods in {}", other.len(), self.namespace),
        }
    }
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let _ = self.node.helm(&["uninstall", &self.name, "-n", &self.namespace, "--wait"]);
        let _ = self.node.kubectl(&["delete", "namespace", &self.namespace, "--wait=false"]);
    }
}

/// An HARouter in namespace `default`, deleted on drop.
pub struct HaRouter<'a> {
    node: &'a Node,
    pub name: String,
}

impl Drop for HaRouter<'_> {
    fn drop(&mut self) {
        let _ =
            self.node.kubectl(&["delete", "harouter", &self.name, "-n", "default", "--wait=false"]);
    }
}

impl Node {
    /// Installs the chart as release `hagw-<id>` with the image under test, the API server
    /// address a hostNetwork pod needs here (no kube-proxy), a reserved metrics port, no ready
    /// file, `sets`
    /// (`--set` values) and then `raw` helm arguments, and waits for the pod to be ready.
    pub fn install(&self, id: &str, sets: &[String], raw: &[&str]) -> Result<Release<'_>> {
        let release =
            Release { node: self, name: format!("hagw-{id}"), namespace: format!("hagw-{id}") };
        let metrics = ports::reserve()?;
        let env = format!(
            "env=[{{\"name\":\"KUBERNETES_SERVICE_HOST\",\"value\":\"127.0.0.1\"}},\
              {{\"name\":\"KUBERNETES_SERVICE_PORT\",\"value\":\"{}\"}}]",
            self.api_port()
        );
        let chart = self.chart();
        let mut all_sets = vec![
            format!("image.repository={IMAGE_REPOSITORY}"),
            format!("image.tag={IMAGE_TAG}"),
            "image.pullPolicy=Never".into(),
            format!("metricsPort={}", metrics.port),
            // The host's /run/hagw is not a test's to write: a test of the ready file gives
            // its own (tests/tests/pod_reboot.rs).
            "readyFile=".into(),
        ];
        all_sets.extend(sets.iter().cloned());
        let mut args = vec![
            "install",
            &release.name,
            chart.to_str().context("chart path")?,
            "-n",
            &release.namespace,
            "--create-namespace",
            "--wait",
            "--timeout",
            "180s",
            "--set-json",
            &env,
        ];
        for set in &all_sets {
            args.extend(["--set", set]);
        }
        args.extend(raw);
        self.helm(&args)?;
        // Helm's --wait takes a DaemonSet whose pod is not scheduled yet as ready.
        self.kubectl(&[
            "rollout",
            "status",
            &format!("daemonset/{}", release.name),
            "-n",
            &release.namespace,
            "--timeout=180s",
        ])?;
        Ok(release)
    }

    /// Applies an HARouter named `name` listing this node, whose `spec.router` is `router`
    /// (YAML lines indented by four spaces).
    pub fn harouter(&self, name: &str, router: &str) -> Result<HaRouter<'_>> {
        self.apply(&format!(
            "apiVersion: hagw.dev/v1beta1\nkind: HARouter\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  nodes: [{node}]\n  router:\n{router}",
            node = self.name
        ))?;
        Ok(HaRouter { node: self, name: name.to_string() })
    }

    /// This node's entry in an HARouter's status.
    pub fn entry(&self, harouter: &str) -> Result<Option<Value>> {
        Ok(crate::k8s::node_entry(&self.get("harouter", harouter, "default")?, &self.name))
    }

    /// Serves node `i` (0-based) of a keepalived lab prepared without a host agent there
    /// (`KaLab::prepare`) by the chart's pod: its router becomes an HARouter, its OVS run dir
    /// (if any) and `ha_confs` are mounted, `hostPID` lets it see keepalived; `sets` add to
    /// that. Returns once the pod manages the router (as standby: nothing is plugged yet).
    pub fn serve_lab_node(
        &self,
        lab: &KaLab,
        i: usize,
        sets: &[String],
    ) -> Result<(Release<'_>, HaRouter<'_>)> {
        let served = &lab.nodes[i];
        let config = std::fs::read_to_string(&served.config)?;
        let (_, routers) = config.split_once("routers:\n").context("a routers list")?;
        let router = routers.replacen("  - ", "    ", 1);
        let mut all_sets =
            vec![format!("neutronStatePath={}", served.ha_confs.display()), "hostPID=true".into()];
        all_sets.extend(lab_node_sets(lab, i));
        all_sets.extend(sets.iter().cloned());
        let release = self.install(&lab.lab().id, &all_sets, &[])?;
        let harouter = self.harouter(&format!("lab-{}", lab.lab().id), &router)?;
        crate::k8s::wait_for("the pod to manage the router", Duration::from_secs(60), || {
            Ok(self.entry(&harouter.name)?.filter(|e| e["role"] == "standby").map(drop))
        })?;
        Ok((release, harouter))
    }

    /// Serves node `i` of a keepalived lab prepared with its router discoverable
    /// (`KaLab::prepare_discoverable`, booted) by the chart's pod with Neutron discovery as the
    /// chart has it by default (`neutron.root: process`): no HARouter, nothing HA under the
    /// host path the chart mounts, the router found through its stand-in L3 agent's root.
    /// Returns once the router's published object shows it standby and held.
    pub fn discover_lab_node(&self, lab: &KaLab, i: usize, sets: &[String]) -> Result<Release<'_>> {
        let host_state = lab.lab().dir.path().join("host-var-lib-neutron");
        std::fs::create_dir_all(&host_state)?;
        let mut all_sets = vec![format!("neutronStatePath={}", host_state.display())];
        all_sets.extend(lab_node_sets(lab, i));
        all_sets.extend(sets.iter().cloned());
        let release = self.install(&lab.lab().id, &all_sets, &[])?;
        let router = &lab.nodes[i].router_id;
        crate::k8s::wait_for("the pod to discover the router", Duration::from_secs(60), || {
            Ok(release.entry(router)?.filter(|e| e["role"] == "standby" && e["held"] == true))
        })?;
        Ok(release)
    }
}

/// The chart's values for the pod serving node `i` of a keepalived lab: its state directory,
/// and its OVS (or else its Linux bridge) backend.
fn lab_node_sets(lab: &KaLab, i: usize) -> Vec<String> {
    let state = lab.lab().dir.path().join(format!("hagw-state{i}"));
    let mut sets = vec![format!("stateDir={}", state.display())];
    match lab.ovs_dir(i) {
        Some(dir) => sets.extend([
            "backend=ovs".into(),
            format!("ovsdb=unix:{}", dir.join("db.sock").display()),
            format!("ovsRunDir={}", dir.display()),
        ]),
        None => sets.push("backend=linuxbridge".into()),
    }
    sets
}

/// Node 2 of `lab` (prepared without a host agent there) served only by the pod on
/// `node`: booted, its router rebooted racing the agents, keepalived crashed on the other
/// node; fails on any frame from the served node while it did not hold the primary VIP, and
/// unless its status says it took over.
pub fn pod_served_reboot_and_failover(node: &Node, lab: &mut KaLab) -> Result<()> {
    let (_release, harouter) = node.serve_lab_node(lab, 1, &[])?;
    lab.boot()?;
    let mut rng = crate::keepalived::Rng::seeded();
    println!("HAGW_SEED={}", rng.0);
    let took = lab.reboot_then_crash(&mut rng)?;
    let report = lab.report();
    println!("{} node 2 served by the pod (VRRP took over {took:?}):\n{report}", lab.wiring);
    anyhow::ensure!(report.leaks.is_empty(), "node 2 leaked:\n{report}");
    crate::k8s::wait_for("the takeover reported", Duration::from_secs(20), || {
        let entry = node.entry(&harouter.name)?;
        Ok(entry.filter(|e| e["role"] == "primary" && e["held"] == false).map(drop))
    })?;
    Ok(())
}
