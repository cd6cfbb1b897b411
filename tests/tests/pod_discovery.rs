//! Neutron discovery by the Helm-installed pod where Neutron runs in containers, on the real
//! node: no HARouter, nothing HA under the host's /var/lib/neutron, two stand-in deployments
//! with real keepalived, each serving one router whose VRRP peer is another node's keepalived:
//! - openstack-helm-like: an L3 agent pod (hostNetwork, `shareProcessNamespace`, its state
//!   path an emptyDir at /var/lib/neutron, /run/netns shared Bidirectional), keepalived a
//!   child of the agent process, pid files naming pids of the pod's pid namespace;
//! - kolla-like: a container with a private pid namespace whose state path
//!   /var/lib/neutron/kolla is a host directory (the named volume).
//!
//! The pod finds both through the agent processes' roots, holds both standbys (judged at the
//! ToR: not a frame from the gateway while the peer is primary), takes over when the peer's
//! keepalived stops, follows a floating IP added and removed (the removed one stays absent and
//! is never announced again, also across an agent restart), and holds the port again once the
//! deployment's own keepalived stops. Each router is in its own [`NeutronRouter`] lab. From
//! the deployments' start to the end, a [`PrimaryWatch`] fails the test on any sample where
//! the node keepalived made primary has its port held past the watch's settle allowance.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hagw_e2e::Capture;
use hagw_e2e::gateway::{GATEWAY_IP, GATEWAY_MAC};
use hagw_e2e::k8s::{node_entry, wait_for};
use hagw_e2e::neutron::{FIP, FIP_ADDED, NeutronRouter};
use hagw_e2e::node::{Node, Release, STANDIN_IMAGE, node};
use hagw_e2e::primary_watch::{PrimaryWatch, Watched};
use serde_json::json;

/// The label of the objects the agents publish (`operator/src/k8s/source.rs`).
const DISCOVERED_LABEL: &str = "hagw.dev/discovered";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Helm,
    Kolla,
}

/// One stand-in deployment and its router.
struct Deployment<'a> {
    kind: Kind,
    router: NeutronRouter,
    node: &'a Node,
    pod: String,
}

impl Kind {
    /// Neutron's state_path inside the agent container.
    fn state_path(self) -> &'static str {
        match self {
            Kind::Helm => "/var/lib/neutron",
            Kind::Kolla => "/var/lib/neutron/kolla",
        }
    }
}

/// The stand-in L3 agent: writes the router's keepalived.conf into its state path and starts
/// keepalived as its child, in the router namespace, as Neutron does; then stays.
const AGENT: &str = r#"set -e
d=$STATE/ha_confs
mkdir -p "$d/$ROUTER"
printf '%s' "$CONF" > "$d/$ROUTER/keepalived.conf"
ip netns exec "qrouter-$ROUTER" keepalived -n -l -G -P -f "$d/$ROUTER/keepalived.conf" \
  -p "$d/$ROUTER.pid.keepalived" -r "$d/$ROUTER.pid.keepalived-vrrp" &
while :; do sleep 1; done
"#;

impl<'a> Deployment<'a> {
    /// Starts the deployment's agent pod for `router`.
    fn start(node: &'a Node, kind: Kind, router: NeutronRouter) -> Result<Deployment<'a>> {
        let pod = format!("l3-{}-{}", format!("{kind:?}").to_lowercase(), router.id);
        let state = match kind {
            // An emptyDir: on the host it is under the kubelet's pod directory only.
            Kind::Helm => json!({"name": "state", "emptyDir": {}}),
            // The named volume's directory on the host.
            Kind::Kolla => {
                let volume = router.gw.lab.dir.path().join("volumes/neutron_metadata_socket/_data");
                std::fs::create_dir_all(&volume)?;
                json!({"name": "state", "hostPath": {"path": volume, "type": "Directory"}})
            }
        };
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "namespace": "default"},
            "spec": {
                "hostNetwork": true,
                "shareProcessNamespace": kind == Kind::Helm,
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{
                    "name": "l3-agent",
                    "image": STANDIN_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["bash", "-c", AGENT, "neutron-l3-agent"],
                    "env": [
                        {"name": "STATE", "value": kind.state_path()},
                        {"name": "ROUTER", "value": router.id},
                        {"name": "CONF", "value": router.conf(&[FIP])},
                    ],
                    "securityContext": {"privileged": true},
                    "volumeMounts": [
                        {"name": "state", "mountPath": kind.state_path()},
                        {"name": "netns", "mountPath": "/run/netns", "mountPropagation": "Bidirectional"},
                    ],
                }],
                "volumes": [state, {"name": "netns", "hostPath": {"path": "/run/netns"}}],
            },
        });
        node.apply(&manifest.to_string())?;
        let deployment = Deployment { kind, router, node, pod };
        node.kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{}", deployment.pod),
            "-n",
            "default",
            "--timeout=120s",
        ])?;
        Ok(deployment)
    }

    /// Runs `script` in the agent container, as the L3 agent would act.
    fn agent(&self, script: &str, args: &[&str]) -> Result<String> {
        let mut all = vec![
            "exec", &self.pod, "-n", "default", "-c", "l3-agent", "--", "bash", "-c", script,
            "agent",
        ];
        all.extend(args);
        self.node.kubectl(&all)
    }

    fn ha_confs(&self) -> String {
        format!("{}/ha_confs", self.kind.state_path())
    }

    /// Neutron changes the router's floating IPs: keepalived.conf rewritten, keepalived
    /// reloaded (SIGHUP), which adds or removes the addresses on a primary.
    fn set_fips(&self, fips: &[&str]) -> Result<()> {
        let conf = format!("{}/{}/keepalived.conf", self.ha_confs(), self.router.id);
        let pid = format!("{}/{}.pid.keepalived", self.ha_confs(), self.router.id);
        self.agent(
            r#"printf '%s' "$1" > "$2.tmp" && mv "$2.tmp" "$2" && kill -HUP "$(cat "$3")""#,
            &[&self.router.conf(fips), &conf, &pid],
        )?;
        Ok(())
    }

    /// Stops the deployment's keepalived (SIGTERM to the pid its pid file names, in the
    /// container's pid namespace).
    fn stop_keepalived(&self) -> Result<()> {
        let pid = format!("{}/{}.pid.keepalived", self.ha_confs(), self.router.id);
        self.agent(r#"kill -TERM "$(cat "$1")""#, &[&pid])?;
        Ok(())
    }

    fn link_up(&self) -> Result<bool> {
        Ok(self.router.gw.gateway("link")?.contains(",UP"))
    }

    fn addresses(&self) -> Result<String> {
        self.router.gw.gateway("addr")
    }

    fn name(&self) -> String {
        format!("{:?} ({})", self.kind, self.router.id)
    }
}

impl Drop for Deployment<'_> {
    fn drop(&mut self) {
        let _ = self.node.kubectl(&[
            "delete",
            "pod",
            &self.pod,
            "-n",
            "default",
            "--wait=true",
            "--timeout=30s",
        ]);
    }
}

/// Each test installs the chart, whose pod would manage every router on the node: one at a
/// time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fails if `fip` shows up on `d`'s gateway during `during`, or if the gateway (a primary's)
/// is held meanwhile.
fn stays_absent(d: &Deployment, fip: &str, during: Duration) -> Result<()> {
    let end = Instant::now() + during;
    while Instant::now() < end {
        let now = d.addresses()?;
        ensure!(!now.contains(&format!("{fip}/32")), "{}: {fip} is back:\n{now}", d.name());
        ensure!(d.link_up()?, "{}: the primary's gateway is held", d.name());
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Installs the chart as release `hagw-<lab id><suffix>` with `raw` helm arguments.
fn install<'a>(
    node: &'a Node,
    lab: &NeutronRouter,
    suffix: &str,
    raw: &[&str],
) -> Result<Release<'a>> {
    let dir = lab.gw.lab.dir.path();
    // The host's /var/lib/neutron as kolla-ansible and openstack-helm leave it: nothing HA.
    let host_state = dir.join("host-var-lib-neutron");
    std::fs::create_dir_all(&host_state)?;
    let sets = [
        "backend=generic".into(),
        "neutron.strategy=link-down".into(),
        "resync=1".into(),
        format!("neutronStatePath={}", host_state.display()),
        format!("stateDir={}", dir.join("hagw-state").display()),
    ];
    node.install(&format!("{}{suffix}", lab.id), &sets, raw)
}

fn pod_names(node: &Node, release: &Release) -> Result<String> {
    node.kubectl(&[
        "get",
        "pods",
        "-n",
        &release.namespace,
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])
}

/// The hagw pod's log, for failure messages.
fn agent_log(node: &Node, release: &Release) -> String {
    node.kubectl(&[
        "logs",
        "-n",
        &release.namespace,
        "-l",
        "app.kubernetes.io/name=hagw",
        "--tail=200",
    ])
    .unwrap_or_else(|e| e.to_string())
}

#[test]
fn the_pod_discovers_containerized_neutron_routers_and_serves_them() -> Result<()> {
    let _serial = serial();
    let node = node();
    node.import_standin()?;
    for ha_confs in ["/var/lib/neutron/ha_confs", "/var/lib/neutron/kolla/ha_confs"] {
        ensure!(!std::path::Path::new(ha_confs).exists(), "{ha_confs} exists on this host");
    }
    let mut helm = NeutronRouter::build()?;
    let mut kolla = NeutronRouter::build()?;
    // The other node of each router is primary first.
    helm.start_peer(true)?;
    kolla.start_peer(true)?;
    // The agent first: the routers appear while it runs, as Neutron sets them up.
    let release = install(node, &helm, "", &[])?;
    let mut deployments =
        [Deployment::start(node, Kind::Helm, helm)?, Deployment::start(node, Kind::Kolla, kolla)?];
    let log = || agent_log(node, &release);
    // No primary is ever held: sampled for the rest of the test, through the takeover, the
    // floating IP changes and the agent's restart (tests/src/primary_watch.rs).
    let watched = deployments.iter().map(|d| Watched {
        name: d.name(),
        netns: d.router.gw.qrouter.clone(),
        ha: d.router.ha.clone(),
        port: d.router.gw.qg.clone(),
    });
    let watch = PrimaryWatch::start(watched.collect());

    // Discovered through the agents' roots and held (link down, IPv6 silenced): no HARouter.
    for d in &deployments {
        wait_for(&format!("{} held", d.name()), Duration::from_secs(60), || {
            Ok((!d.link_up()? && d.router.gw.sysctl("addr_gen_mode")? == "1").then_some(()))
        })
        .with_context(log)?;
    }
    // Nobody wrote an HARouter: the objects there are the ones the agent publishes for the
    // routers it discovered (`kubectl get harouters` shows them), this node's entry standby.
    let published = || -> Result<Vec<serde_json::Value>> {
        let out = node.kubectl(&["get", "harouters", "-A", "-o", "json"])?;
        let list: serde_json::Value = serde_json::from_str(&out)?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    };
    for d in &deployments {
        wait_for(&format!("{}'s published object", d.name()), Duration::from_secs(60), || {
            let objects = published()?;
            let object = objects.iter().find(|o| o["metadata"]["name"] == d.router.id.as_str());
            let entry = object.and_then(|o| node_entry(o, &node.name));
            Ok(entry.filter(|e| e["role"] == "standby" && e["held"] == true).map(drop))
        })
        .with_context(log)?;
    }
    // `kubectl get harouters -o wide` shows this node's role in the ROLES column.
    let roles = |d: &Deployment, role: &str| -> Result<()> {
        let want = format!("{}={role}", node.name);
        wait_for(&format!("{}: {want} in ROLES", d.name()), Duration::from_secs(30), || {
            let wide = node.kubectl(&["get", "harouters", "-A", "-o", "wide"])?;
            let line = wide.lines().find(|l| l.contains(d.router.id.as_str())).map(str::to_string);
            Ok(line.filter(|l| l.split_whitespace().any(|c| c == want)))
        })
        .map(|line| println!("{line}"))
        .with_context(log)
    };
    for d in &deployments {
        roles(d, "standby(held)")?;
    }
    let objects = published()?;
    let written: Vec<&serde_json::Value> = objects
        .iter()
        .filter(|o| o["metadata"]["labels"][DISCOVERED_LABEL] != "true")
        .map(|o| &o["metadata"]["name"])
        .collect();
    ensure!(
        written.is_empty() && objects.len() == 2,
        "not only the published objects: {objects:#?}"
    );

    // The L3 agent raises the gateway link: held again, and not a frame at the ToR.
    let mut captures = Vec::new();
    for d in &deployments {
        let gw = &d.router.gw;
        captures.push(Capture::start(
            &gw.tor,
            &gw.tor_port,
            gw.lab.dir.path().join("standby.pcap"),
        )?);
        d.agent(r#"ip -n "qrouter-$1" link set "$2" up"#, &[&d.router.id, &gw.qg])?;
    }
    std::thread::sleep(Duration::from_secs(5));
    for (d, capture) in deployments.iter().zip(captures.drain(..)) {
        ensure!(!d.link_up()?, "{}: the standby's link is up", d.name());
        let frames = capture.stop_and_frames_from(GATEWAY_MAC)?;
        ensure!(frames.is_empty(), "{}: the standby spoke:\n{}", d.name(), frames.join("\n"));
    }

    // The peer's keepalived stops: each deployment's keepalived takes over, and so does hagw.
    for d in &mut deployments {
        d.router.stop_peer();
    }
    for d in &deployments {
        wait_for(&format!("{} primary", d.name()), Duration::from_secs(20), || {
            let serving = d.link_up()? && d.addresses()?.contains(GATEWAY_IP);
            Ok((d.router.has_vip() && serving && d.addresses()?.contains(FIP)).then_some(()))
        })
        .with_context(log)?;
        let gw = &d.router.gw;
        gw.lab
            .exec(&gw.external, &format!("ping -c 1 -W 2 {GATEWAY_IP} && ping -c 1 -W 2 {FIP}"))?;
        roles(d, "primary")?;
    }

    // Neutron adds a floating IP, then removes it.
    for d in &deployments {
        d.set_fips(&[FIP, FIP_ADDED])?;
    }
    for d in &deployments {
        wait_for(
            &format!("{} serves the new floating IP", d.name()),
            Duration::from_secs(10),
            || Ok(d.addresses()?.contains(FIP_ADDED).then_some(())),
        )?;
        let gw = &d.router.gw;
        gw.lab.exec(&gw.external, &format!("ping -c 1 -W 2 {FIP_ADDED}"))?;
        d.set_fips(&[FIP])?;
    }
    for d in &deployments {
        let gw = &d.router.gw;
        wait_for(&format!("{} without it", d.name()), Duration::from_secs(10), || {
            Ok((!d.addresses()?.contains(FIP_ADDED)).then_some(()))
        })?;
        captures.push(Capture::start(
            &gw.tor,
            &gw.tor_port,
            gw.lab.dir.path().join("removed.pcap"),
        )?);
    }
    // It stays gone across resyncs (every second here) and an agent restart.
    for d in &deployments {
        stays_absent(d, FIP_ADDED, Duration::from_secs(3))?;
    }
    let before = pod_names(node, &release)?;
    node.kubectl(&["delete", "pod", "-n", &release.namespace, "--all", "--wait=false"])?;
    wait_for("the agent pod replaced", Duration::from_secs(120), || {
        let ready = node.kubectl(&[
            "get",
            "pods",
            "-n",
            &release.namespace,
            "-o",
            "jsonpath={.items[*].status.containerStatuses[*].ready}",
        ])?;
        let names = pod_names(node, &release)?;
        Ok((ready.trim() == "true" && names.trim() != before.trim()).then_some(()))
    })?;
    for d in &deployments {
        stays_absent(d, FIP_ADDED, Duration::from_secs(5))?;
        ensure!(d.link_up()? && d.addresses()?.contains(FIP), "{}: not serving", d.name());
        let gw = &d.router.gw;
        gw.lab.exec(&gw.external, &format!("ping -c 1 -W 2 {FIP}"))?;
    }
    for (d, capture) in deployments.iter().zip(captures.drain(..)) {
        let frames = capture.stop_and_frames_from(GATEWAY_MAC)?;
        let announced: Vec<&String> = frames.iter().filter(|f| f.contains(FIP_ADDED)).collect();
        ensure!(
            announced.is_empty(),
            "{}: the removed floating IP was announced: {announced:?}",
            d.name()
        );
    }

    // The deployment's own keepalived stops (the peer's is back): held again.
    for d in &mut deployments {
        d.router.start_peer(false)?;
    }
    for d in &deployments {
        d.stop_keepalived()?;
    }
    for d in &deployments {
        wait_for(
            &format!("{} held after its keepalived stopped", d.name()),
            Duration::from_secs(20),
            || Ok((!d.link_up()?).then_some(())),
        )
        .with_context(log)?;
    }
    let summary = watch.finish().with_context(log)?;
    println!(
        "no primary held: {} samples ({} of a primary, at most {:?} apart); longest hold after \
         the VIP came: {:?}",
        summary.samples, summary.primary_samples, summary.longest_gap, summary.longest_release
    );
    let text = log();
    println!("agent log (tail):\n{text}");
    drop(release);
    Ok(())
}

/// What the pod needs, by proof: without `SYS_PTRACE` it may not look into the roots of the
/// (privileged) agent's processes, says so, and finds nothing: the standby's port stays as the
/// L3 agent raised it. The chart's default securityContext grants it: then the port is held.
#[test]
fn without_sys_ptrace_containerized_routers_are_not_found() -> Result<()> {
    let _serial = serial();
    let node = node();
    node.import_standin()?;
    let mut router = NeutronRouter::build()?;
    router.start_peer(true)?;
    let no_ptrace = "securityContext={\"privileged\":false,\"allowPrivilegeEscalation\":false,\
                     \"readOnlyRootFilesystem\":true,\"capabilities\":{\"drop\":[\"ALL\"],\
                     \"add\":[\"NET_ADMIN\",\"SYS_ADMIN\",\"NET_RAW\"]}}";
    let release = install(node, &router, "a", &["--set-json", no_ptrace])?;
    let d = Deployment::start(node, Kind::Helm, router)?;
    let gw = &d.router.gw;
    d.agent(r#"ip -n "qrouter-$1" link set "$2" up"#, &[&d.router.id, &gw.qg])?;
    let log = wait_for("the refusal logged", Duration::from_secs(60), || {
        let log = agent_log(node, &release);
        Ok(log.contains("CAP_SYS_PTRACE").then_some(log))
    })?;
    println!("without SYS_PTRACE:\n{log}");
    std::thread::sleep(Duration::from_secs(3));
    ensure!(d.link_up()?, "the port was held although the router cannot have been found");

    drop(release);
    let release = install(node, &d.router, "b", &[])?;
    wait_for("the standby held with SYS_PTRACE", Duration::from_secs(120), || {
        Ok((!d.link_up()?).then_some(()))
    })
    .with_context(|| agent_log(node, &release))?;
    drop(d);
    drop(release);
    Ok(())
}
