//! hagw as users deploy it: the image built offline, the chart installed with the real `helm`
//! on a real node (kubelet + containerd), and the DaemonSet's pod, under the runtime's
//! defaults (read-only `/proc/sys`, masked paths, the chart's securityContext), holding a
//! standby's gateway port and taking over when the router turns primary.

use std::time::{Duration, Instant};

use anyhow::Result;
use hagw_e2e::gateway::{EXTERNAL_IP, GATEWAY_CIDR, GATEWAY_IP, GatewayLab};
use hagw_e2e::k8s::wait_for;
use hagw_e2e::keepalived::{KaLab, Wiring};
use hagw_e2e::node::{
    HaRouter, IMAGE_REPOSITORY, IMAGE_TAG, Node, Release, node, pod_served_reboot_and_failover,
};

fn link_up(gw: &GatewayLab) -> Result<bool> {
    Ok(gw.gateway("link")?.contains(",UP"))
}

/// The chart's pods all serve the one node, so two releases at once would both manage every
/// router listing it: the tests here run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A gateway lab with Neutron's state file for its router, as the chart mounts it.
struct Router {
    gw: GatewayLab,
    state: std::path::PathBuf,
    name: String,
}

impl Router {
    fn build(role: &str) -> Result<Router> {
        let gw = GatewayLab::build()?;
        let state = gw.lab.dir.path().join("neutron/ha_confs").join(&gw.lab.id).join("state");
        std::fs::create_dir_all(state.parent().expect("dir"))?;
        std::fs::write(&state, role)?;
        // As the L3 agent leaves it: up, with the kernel's link-local address.
        gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
        let name = format!("r-{}", gw.lab.id);
        Ok(Router { gw, state, name })
    }

    /// Installs the chart for this router's node with `values` on top of what the test node
    /// needs, and waits for the pod to be ready.
    fn install<'a>(&self, node: &'a Node, values: &[&str]) -> Result<Release<'a>> {
        let dir = self.gw.lab.dir.path();
        let sets = [
            // This router's port is on no switch hagw knows (generic); the OVS run dir the
            // default backend mounts does not exist on this host.
            "backend=linuxbridge".into(),
            format!("neutronStatePath={}", dir.join("neutron").display()),
            format!("stateDir={}", dir.join("hagw-state").display()),
        ];
        node.install(&self.gw.lab.id, &sets, values)
    }

    /// The HARouter for this router on the test node (generic backend, link-down).
    fn apply<'a>(&self, node: &'a Node) -> Result<HaRouter<'a>> {
        let gw = &self.gw;
        let router = format!(
            "    id: {name}\n    namespace: {ns}\n    gatewayDevice: {qg}\n    \
             gatewayAddresses: [{GATEWAY_CIDR}, \"2001:db8::10/64\"]\n    \
             routes: [{{destination: 0.0.0.0/0, via: {EXTERNAL_IP}}}]\n    strategy: link-down\n    \
             announce: {{repeats: 0}}\n    silenceSettleMs: 500\n    role: {{stateFile: {state}}}\n",
            name = self.name,
            ns = gw.qrouter,
            qg = gw.qg,
            state = self.state.display(),
        );
        node.harouter(&self.name, &router)
    }
}

#[test]
fn the_helm_installed_pod_holds_a_standby_and_takes_over() -> Result<()> {
    let _serial = serial();
    let node = node();
    let router = Router::build("backup")?;
    let (gw, state, name) = (&router.gw, &router.state, &router.name);
    let release = router.install(node, &[])?;

    // The pod runs the image under test with the chart's own securityContext (not privileged).
    let pod = &release.pod()?;
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}"), "{pod}");
    assert_eq!(container["securityContext"]["privileged"], false, "{pod}");
    assert_eq!(container["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{pod}");
    assert_eq!(pod["status"]["containerStatuses"][0]["ready"], true, "{pod}");
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let _harouter = router.apply(node)?;

    // The standby: held (link down) and silenced by the pod, and so reported.
    wait_for("the standby held", Duration::from_secs(60), || {
        let held = !link_up(gw)? && gw.sysctl("addr_gen_mode")? == "1";
        let reported =
            node.entry(name)?.is_some_and(|e| e["role"] == "standby" && e["held"] == true);
        Ok((held && reported).then_some(()))
    })?;

    // The takeover: link, both address families and the route, reachable from outside. The
    // pod cannot write /proc/sys (forwarding = 1): the router forwards, and the entry names
    // the setting as what a read-only /proc/sys refuses, expected here and no error.
    std::fs::write(state, "primary")?;
    wait_for("the takeover", Duration::from_secs(20), || {
        let addresses = gw.gateway("addr")?;
        Ok((link_up(gw)? && addresses.contains(GATEWAY_IP) && addresses.contains("2001:db8::10"))
            .then_some(()))
    })?;
    let routes = gw.lab.exec(&gw.qrouter, "ip route show default")?;
    assert!(routes.contains(&format!("via {EXTERNAL_IP}")), "default route missing: {routes}");
    gw.lab.exec(&gw.external, &format!("ping -c 1 -W 2 {GATEWAY_IP}"))?;
    let degraded = wait_for("the primary reported", Duration::from_secs(20), || {
        let Some(e) = node.entry(name)? else { return Ok(None) };
        let degraded = e["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Degraded").cloned());
        Ok(degraded.filter(|_| e["role"] == "primary").map(|d| (d, e["lastError"].clone())))
    })?;
    let (degraded, last_error) = degraded;
    assert_eq!(degraded["status"], "True", "{degraded}");
    assert_eq!(degraded["reason"], "SysctlsReadOnly", "{degraded}");
    let message = degraded["message"].as_str().unwrap_or_default();
    assert!(message.contains("forwarding") && message.contains("read-only"), "{degraded}");
    assert!(last_error.is_null(), "{last_error}");

    // The pod's own log says it once (with the first setting refused: the standby's
    // accept_ra), not on every pass of the standby and then the primary.
    let log = node.kubectl(&["logs", "-n", &release.namespace, &pod_name])?;
    let told = log.lines().filter(|l| l.contains("/proc/sys is read-only")).count();
    let failed = log.lines().filter(|l| l.contains("step failed")).count();
    assert!(told == 1 && failed == 0, "told {told} times, {failed} failures:\n{log}");

    // Back to standby: held again.
    std::fs::write(state, "backup")?;
    wait_for("held again", Duration::from_secs(20), || Ok((!link_up(gw)?).then_some(())))?;
    Ok(())
}

/// Each capability the chart grants is needed: without it the pod cannot take a router over,
/// and says why in the router's status.
#[test]
fn each_granted_capability_is_needed() -> Result<()> {
    let _serial = serial();
    let node = node();
    let all = ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"];
    for missing in all {
        let router = Router::build("primary")?;
        let caps: Vec<String> =
            all.iter().filter(|c| **c != missing).map(|c| format!("\"{c}\"")).collect();
        let context = format!(
            "securityContext={{\"privileged\":false,\"allowPrivilegeEscalation\":false,\
             \"readOnlyRootFilesystem\":true,\"capabilities\":{{\"drop\":[\"ALL\"],\"add\":[{}]}}}}",
            caps.join(",")
        );
        let _release = router.install(node, &["--set-json", &context])?;
        let _harouter = router.apply(node)?;
        let error =
            wait_for(&format!("the error without {missing}"), Duration::from_secs(60), || {
                Ok(node
                    .entry(&router.name)?
                    .and_then(|e| e["lastError"].as_str().map(String::from)))
            })?;
        println!("without {missing}: {error}");
        assert!(error.contains("Operation not permitted"), "without {missing}: {error}");
        let addresses = router.gw.gateway("addr")?;
        if missing == "NET_RAW" {
            // Configured, but the takeover's announcement cannot be sent.
            assert!(error.contains("announce"), "without {missing}: {error}");
            assert!(addresses.contains(GATEWAY_IP), "without {missing}: {addresses}");
        } else {
            assert!(!addresses.contains(GATEWAY_IP), "without {missing}: {addresses}");
        }
    }
    Ok(())
}

/// The E2E lab with real keepalived and OVS on two nodes; node 2 is served only by the
/// Helm-installed pod (node 1 by `hagw run` on the host, as before). Node 2's router reboots
/// racing the agents while node 1 is primary, keepalived on node 1 crashes, node 2 takes
/// over. Judged at the ToR: no frame from node 2 while it does not hold the primary VIP, and
/// traffic through node 2 afterwards.
#[test]
fn the_pod_serves_an_ovs_node_through_a_reboot_and_a_failover() -> Result<()> {
    let _serial = serial();
    pod_served_reboot_and_failover(node(), &mut KaLab::prepare(Wiring::Ovs, [true, false])?)
}

/// A pod restart keeps the standby held throughout (the next agent takes over where the old
/// one stopped); `helm uninstall` hands the port back as Neutron's agents would leave it
/// without hagw: up, silent, no hold left behind. Privileged here, so the hand-back can also
/// write `accept_ra` and `forwarding`; the chart's default pod releases the port without them
/// (`pod_lifecycle.rs`, `an_uninstall_hands_back_and_a_failover_works_without_hagw`).
#[test]
fn a_restart_keeps_the_hold_and_an_uninstall_hands_the_port_back() -> Result<()> {
    let _serial = serial();
    let node = node();
    let router = Router::build("backup")?;
    let gw = &router.gw;
    let privileged = [
        "--set",
        "securityContext.privileged=true",
        "--set",
        "securityContext.allowPrivilegeEscalation=true",
    ];
    let release = router.install(node, &privileged)?;
    let _harouter = router.apply(node)?;
    wait_for("the standby held", Duration::from_secs(60), || {
        let reported = node.entry(&router.name)?.is_some_and(|e| e["held"] == true);
        Ok((!link_up(gw)? && reported).then_some(()))
    })?;

    let pods = node.kubectl(&[
        "get",
        "pods",
        "-n",
        &release.namespace,
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])?;
    node.kubectl(&["delete", "pod", &pods, "-n", &release.namespace, "--wait=false"])?;
    // Until the new pod is ready, and a little after, nothing may lift the hold.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(!link_up(gw)?, "the hold was lifted during a pod restart");
        let ready = node.kubectl(&[
            "get",
            "pods",
            "-n",
            &release.namespace,
            "-o",
            "jsonpath={.items[*].status.containerStatuses[*].ready}",
        ])?;
        let names = node.kubectl(&[
            "get",
            "pods",
            "-n",
            &release.namespace,
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])?;
        if ready.trim() == "true" && names.trim() != pods.trim() {
            break;
        }
        assert!(Instant::now() < deadline, "the DaemonSet did not restart its pod");
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..20 {
        assert!(!link_up(gw)?, "the hold was lifted after a pod restart");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The agent's last words, for when the hand-back does not come.
    let log = gw.lab.dir.path().join("agent.log");
    let mut follow = node.kubectl_follow(
        &["logs", "-f", "-n", &release.namespace, "-l", "app.kubernetes.io/name=hagw"],
        &log,
    )?;
    node.helm(&["uninstall", &release.name, "-n", &release.namespace, "--wait"])?;
    let handed_back = wait_for("the port handed back", Duration::from_secs(40), || {
        let silent = gw.sysctl("addr_gen_mode")? == "1" && gw.gateway("addr")?.trim().is_empty();
        Ok((link_up(gw)? && silent).then_some(()))
    });
    let _ = follow.kill();
    let _ = follow.wait();
    handed_back.map_err(|e| e.context(std::fs::read_to_string(&log).unwrap_or_default()))?;
    Ok(())
}
