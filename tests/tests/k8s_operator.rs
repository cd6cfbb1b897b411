//! The operator against a real Kubernetes v1.34 control plane (see docs/kubernetes-testing.md):
//! the CRD, HARouter lifecycle, agents on two emulated nodes writing status concurrently, role
//! changes reaching status, the hand-back on removal, and the rendered chart.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hagw_e2e::k8s::{ApiServer, Nodes, node_entry, wait_for};
use serde_json::Value;

/// One control plane per test binary, with the CRD installed.
fn server() -> &'static ApiServer {
    static SERVER: OnceLock<ApiServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = ApiServer::start().expect("starting kube-apiserver");
        server.install_crd().expect("installing the HARouter CRD");
        server
    })
}

fn harouter(name: &str) -> Result<Value> {
    server().get("harouter", name, "default")
}

/// Waits until `node`'s entry has `role` (and `held`), returning how long it took.
fn wait_role(
    name: &str,
    node: &str,
    role: &str,
    held: bool,
    timeout: Duration,
) -> Result<Duration> {
    let t0 = Instant::now();
    wait_for(&format!("{name}: {node} {role} held={held}"), timeout, || {
        let entry = node_entry(&harouter(name)?, node);
        Ok(entry.filter(|e| e["role"] == role && e["held"] == held).map(|_| t0.elapsed()))
    })
}

#[test]
fn harouters_are_created_validated_updated_and_deleted() -> Result<()> {
    let s = server();
    let nodes = Nodes::build(&["n1"])?;
    let yaml = nodes.harouter("crud", &["n1"]);
    s.apply(&yaml)?;
    let created = harouter("crud")?;
    assert_eq!(created["metadata"]["generation"], 1);
    // Defaults come from the same Rust types as routers.yaml.
    assert_eq!(created["spec"]["router"]["announce"]["intervalMs"], 1000);

    s.apply(&yaml.replace("silenceSettleMs: 300", "silenceSettleMs: 400"))?;
    let updated = harouter("crud")?;
    assert_eq!(updated["metadata"]["generation"], 2);
    assert_eq!(updated["spec"]["router"]["silenceSettleMs"], 400);

    // What the schema can express, the API server enforces.
    let bad =
        yaml.replace("strategy: link-down", "strategy: loud").replace("name: crud", "name: bad");
    let err = s.apply(&bad).unwrap_err().to_string();
    assert!(err.contains("spec.router.strategy"), "{err}");
    let no_nodes = yaml.replace("nodes: [n1]", "nodes: []").replace("name: crud", "name: bad");
    let err = s.apply(&no_nodes).unwrap_err().to_string();
    assert!(err.contains("spec.nodes"), "{err}");

    s.kubectl(&["delete", "harouter", "crud", "-n", "default", "--wait=true"])?;
    let gone = s.kubectl(&["get", "harouters", "-n", "default", "-o", "name"])?;
    assert!(!gone.contains("harouter.hagw.dev/crud"), "{gone}");
    Ok(())
}

#[test]
fn two_agents_write_their_own_entries_and_role_changes_show_within_a_second() -> Result<()> {
    let s = server();
    let nodes = Nodes::build(&["n1", "n2"])?;
    nodes.set_state("n2", "primary")?;
    s.apply(&nodes.harouter("pair", &["n1", "n2"]))?;
    let mut a1 = nodes.agent(s, "n1")?;
    let mut a2 = nodes.agent(s, "n2")?;
    wait_role("pair", "n1", "standby", true, Duration::from_secs(20))?;
    wait_role("pair", "n2", "primary", false, Duration::from_secs(20))?;
    assert!(!nodes.link("n1")?.contains(",UP"), "standby port must be down");
    assert!(nodes.addresses("n2")?.contains("203.0.113.10"), "primary must carry the address");

    // Failovers back and forth: both agents write at the same moment every time, and both
    // entries must always be there and right, each within a second.
    for (primary, standby) in [("n1", "n2"), ("n2", "n1"), ("n1", "n2")] {
        nodes.set_state(standby, "backup")?;
        nodes.set_state(primary, "primary")?;
        let took = wait_role("pair", primary, "primary", false, Duration::from_secs(1))?;
        let took2 = wait_role("pair", standby, "standby", true, Duration::from_secs(1))?;
        eprintln!("failover to {primary}: status after {took:?} / {took2:?}");
    }
    let obj: Value = serde_json::from_str(&s.kubectl(&[
        "get",
        "harouter",
        "pair",
        "-n",
        "default",
        "-o",
        "json",
        "--show-managed-fields",
    ])?)?;
    let entries = obj["status"]["nodes"].as_array().expect("status.nodes");
    assert_eq!(entries.len(), 2, "{entries:?}");
    let managers: Vec<&str> = obj["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter(|f| f["subresource"] == "status" || f["operation"] == "Apply")
        .filter_map(|f| f["manager"].as_str())
        .collect();
    assert!(
        managers.contains(&"hagw-agent/n1") && managers.contains(&"hagw-agent/n2"),
        "{managers:?}"
    );
    let ready = &node_entry(&obj, "n1").expect("n1")["conditions"];
    assert!(ready.to_string().contains(r#""type":"Ready""#), "{ready}");
    let events = s.kubectl(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        "involvedObject.name=pair",
    ])?;
    assert!(events.contains("RoleChanged"), "{events}");
    a1.assert_running()?;
    a2.assert_running()?;
    Ok(())
}

/// The object-wide condition `type` of a HARouter: (status, reason, message).
fn condition(name: &str, type_: &str) -> Result<Option<(String, String, String)>> {
    let obj = harouter(name)?;
    let found = obj["status"]["conditions"].as_array().and_then(|all| {
        all.iter().find(|c| c["type"] == type_).map(|c| {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (text("status"), text("reason"), text("message"))
        })
    });
    Ok(found)
}

fn wait_condition(name: &str, type_: &str, status: &str, reason: &str) -> Result<String> {
    wait_for(&format!("{name}: {type_}={status} ({reason})"), Duration::from_secs(30), || {
        Ok(condition(name, type_)?.filter(|c| c.0 == status && c.1 == reason).map(|c| c.2))
    })
    .with_context(|| {
        format!("status: {}", harouter(name).map(|o| o["status"].to_string()).unwrap_or_default())
    })
}

/// Split brain forced: both nodes' keepalived state says primary. (Node names of its own: the
/// agents of the other tests, all `n1`/`n2`, would write the same entries.) The object's `SplitBrain`
/// condition turns True (and `Ready` False), a Warning Event is recorded and both agents
/// export `hagw_split_brain` 1; `kubectl get -o wide` shows both as primary. Once one steps
/// back, all of it clears.
#[test]
fn a_forced_split_brain_raises_its_condition_event_and_metric() -> Result<()> {
    let s = server();
    let nodes = Nodes::build(&["sb1", "sb2"])?;
    nodes.set_state("sb1", "primary")?;
    s.apply(&nodes.harouter("split", &["sb1", "sb2"]))?;
    let mut a1 = nodes.agent(s, "sb1")?;
    let mut a2 = nodes.agent(s, "sb2")?;
    wait_role("split", "sb1", "primary", false, Duration::from_secs(20))?;
    wait_role("split", "sb2", "standby", true, Duration::from_secs(20))?;
    wait_condition("split", "Ready", "True", "OnePrimary")?;
    wait_condition("split", "SplitBrain", "False", "AtMostOnePrimary")?;
    let series = r#"hagw_split_brain{namespace="default",harouter="split"}"#;
    let metric = |agent: &hagw_e2e::k8s::AgentProcess| -> Result<Option<String>> {
        let text = agent.metrics()?;
        Ok(text.lines().find_map(|l| l.strip_prefix(series)).map(|v| v.trim().to_string()))
    };
    assert_eq!(metric(&a1)?.as_deref(), Some("0"));

    nodes.set_state("sb2", "primary")?;
    wait_role("split", "sb2", "primary", false, Duration::from_secs(5))?;
    let message = wait_condition("split", "SplitBrain", "True", "MultiplePrimaries")?;
    assert_eq!(message, "primary on sb1, sb2");
    wait_condition("split", "Ready", "False", "SplitBrain")?;
    for agent in [&a1, &a2] {
        wait_for("hagw_split_brain 1", Duration::from_secs(5), || {
            Ok((metric(agent)?.as_deref() == Some("1")).then_some(()))
        })?;
    }
    let wide = s.kubectl(&["get", "harouter", "split", "-n", "default", "-o", "wide"])?;
    eprintln!("{wide}");
    let header: Vec<&str> = wide.lines().next().unwrap_or_default().split_whitespace().collect();
    let row: Vec<&str> = wide.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    let column =
        |name: &str| header.iter().position(|h| *h == name).and_then(|i| row.get(i).copied());
    assert_eq!(column("PRIMARY"), Some("sb1,sb2"), "{wide}");
    assert_eq!(column("READY"), Some("False"), "{wide}");
    assert_eq!(column("SPLITBRAIN"), Some("True"), "{wide}");
    let events = s.kubectl(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        "involvedObject.name=split,reason=SplitBrain",
    ])?;
    assert!(events.contains("primary on sb1, sb2"), "{events}");

    nodes.set_state("sb1", "backup")?;
    wait_condition("split", "SplitBrain", "False", "AtMostOnePrimary")?;
    wait_condition("split", "Ready", "True", "OnePrimary")?;
    wait_for("hagw_split_brain 0", Duration::from_secs(5), || {
        Ok((metric(&a1)?.as_deref() == Some("0")).then_some(()))
    })?;
    let wide = s.kubectl(&["get", "harouter", "split", "-n", "default", "-o", "wide"])?;
    eprintln!("{wide}");
    let header: Vec<&str> = wide.lines().next().unwrap_or_default().split_whitespace().collect();
    let row: Vec<&str> = wide.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    let column =
        |name: &str| header.iter().position(|h| *h == name).and_then(|i| row.get(i).copied());
    assert_eq!(column("PRIMARY"), Some("sb2"), "{wide}");
    assert_eq!(column("ROLES"), Some("sb1=standby(held),sb2=primary"), "{wide}");
    a1.assert_running()?;
    a2.assert_running()?;
    Ok(())
}

/// The other split brain, forced: no node primary (the role is pinned to standby) while one
/// node's keepalived holds the primary VIP (put on its HA device by hand, as keepalived would).
/// No other node takes over then, and nothing in keepalived says anything is wrong: the
/// entries carry `vipPresent`, the `SplitBrain` condition turns True with reason
/// `VipWithoutPrimary`, a Warning Event is recorded and `hagw_split_brain` is 1; removing the
/// VIP clears it all.
#[test]
fn no_primary_while_a_node_holds_the_vip_is_split_brain() -> Result<()> {
    let s = server();
    let nodes = Nodes::build(&["vw1", "vw2"])?;
    for node in ["vw1", "vw2"] {
        nodes.lab.exec(
            &nodes.netns(node),
            "ip link add ha-k8s type veth peer name ha-peer && ip link set ha-k8s up",
        )?;
    }
    let yaml = nodes.harouter("novip", &["vw1", "vw2"]).replace(
        &format!("role: {{stateFile: {}}}", nodes.state_file.display()),
        "role: {fixed: standby}\n    haDevice: ha-k8s\n    primaryVip: 169.254.0.1/24",
    );
    s.apply(&yaml)?;
    let a1 = nodes.agent(s, "vw1")?;
    let mut a2 = nodes.agent(s, "vw2")?;
    wait_role("novip", "vw1", "standby", true, Duration::from_secs(20))?;
    wait_role("novip", "vw2", "standby", true, Duration::from_secs(20))?;
    wait_condition("novip", "Ready", "False", "NoPrimary")?;
    wait_condition("novip", "SplitBrain", "False", "AtMostOnePrimary")?;

    nodes.lab.exec(&nodes.netns("vw1"), "ip addr add 169.254.0.1/24 dev ha-k8s")?;
    let message = wait_condition("novip", "SplitBrain", "True", "VipWithoutPrimary")?;
    assert_eq!(message, "no node is primary while the primary VIP is on vw1");
    wait_condition("novip", "Ready", "False", "SplitBrain")?;
    assert_eq!(
        node_entry(&harouter("novip")?, "vw1").map(|e| e["vipPresent"].clone()),
        Some(Value::Bool(true))
    );
    let series = r#"hagw_split_brain{namespace="default",harouter="novip"} "#;
    wait_for("hagw_split_brain 1", Duration::from_secs(5), || {
        Ok(a1.metrics()?.lines().any(|l| l == format!("{series}1")).then_some(()))
    })?;
    let events = s.kubectl(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        "involvedObject.name=novip,reason=SplitBrain",
    ])?;
    assert!(events.contains("the primary VIP is on vw1"), "{events}");

    nodes.lab.exec(&nodes.netns("vw1"), "ip addr del 169.254.0.1/24 dev ha-k8s")?;
    wait_condition("novip", "SplitBrain", "False", "AtMostOnePrimary")?;
    wait_for("hagw_split_brain 0", Duration::from_secs(5), || {
        Ok(a1.metrics()?.lines().any(|l| l == format!("{series}0")).then_some(()))
    })?;
    a2.assert_running()?;
    Ok(())
}

/// Removing a node from `nodes`, or deleting the HARouter, hands the port back: the hold is
/// lifted once the port has been silent for the settle time, addresses stay off and IPv6
/// stays silenced on a standby, and the node's status entry goes away.
#[test]
fn removal_hands_the_port_back_and_drops_the_status_entry() -> Result<()> {
    let s = server();
    let nodes = Nodes::build(&["n1", "n2"])?;
    let yaml = nodes.harouter("gone", &["n1", "n2"]);
    s.apply(&yaml)?;
    let _a1 = nodes.agent(s, "n1")?;
    let _a2 = nodes.agent(s, "n2")?;
    wait_role("gone", "n1", "standby", true, Duration::from_secs(20))?;
    wait_role("gone", "n2", "standby", true, Duration::from_secs(20))?;
    assert!(!nodes.link("n2")?.contains(",UP"));

    s.apply(&yaml.replace("nodes: [n1, n2]", "nodes: [n1]"))?;
    wait_for("n2's entry to go", Duration::from_secs(10), || {
        Ok(node_entry(&harouter("gone")?, "n2").is_none().then_some(()))
    })?;
    wait_for("n2's port handed back", Duration::from_secs(5), || {
        Ok(nodes.link("n2")?.contains(",UP").then_some(()))
    })?;
    assert_eq!(nodes.addresses("n2")?.trim(), "", "a handed-back standby carries no address");
    let gen_mode = nodes.lab.exec(
        &nodes.netns("n2"),
        &format!("cat /proc/sys/net/ipv6/conf/{}/addr_gen_mode", nodes.device),
    )?;
    assert_eq!(gen_mode.trim(), "1", "IPv6 stays silenced");
    assert!(!nodes.link("n1")?.contains(",UP"), "n1 still enforces");

    s.kubectl(&["delete", "harouter", "gone", "-n", "default"])?;
    wait_for("n1's port handed back", Duration::from_secs(5), || {
        Ok(nodes.link("n1")?.contains(",UP").then_some(()))
    })?;
    Ok(())
}

#[test]
fn the_rendered_chart_is_accepted_by_the_apiserver() -> Result<()> {
    let s = server();
    let dir = tempfile::tempdir()?;
    let rendered = dir.path().join("rendered.yaml");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/chart-check.sh");
    let out = std::process::Command::new(script)
        .args(["--render-to", rendered.to_str().expect("utf-8")])
        .output()?;
    assert!(
        out.status.success(),
        "chart-check.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.kubectl(&["create", "namespace", "hagw-system"])?;
    let applied =
        s.kubectl(&["apply", "-n", "hagw-system", "-f", rendered.to_str().expect("utf-8")])?;
    for kind in [
        "serviceaccount/",
        "clusterrole.rbac.authorization.k8s.io/",
        "clusterrolebinding.rbac.authorization.k8s.io/",
        "daemonset.apps/",
    ] {
        assert!(applied.contains(kind), "{kind} missing from:\n{applied}");
    }
    let ds = s.get("daemonset", "hagw", "hagw-system")?;
    assert_eq!(ds["spec"]["template"]["spec"]["hostNetwork"], true);
    // The ServiceAccount may do exactly what the agent needs.
    let can = |verb: &str, what: &str| {
        let (resource, sub) = what.split_once('/').unwrap_or((what, ""));
        let sa = "system:serviceaccount:hagw-system:hagw";
        let mut args = vec!["auth", "can-i", verb, resource, "--as", sa];
        if !sub.is_empty() {
            args.extend(["--subresource", sub]);
        }
        s.kubectl(&args).map(|o| o.trim() == "yes").unwrap_or(false)
    };
    assert!(can("watch", "harouters.hagw.dev"));
    assert!(can("patch", "harouters.hagw.dev/status"));
    assert!(can("create", "events.events.k8s.io"));
    assert!(!can("patch", "harouters.hagw.dev"), "the agent must not write specs");
    // Discovered routers get their objects created in the agent's namespace, nowhere else.
    let sa = "system:serviceaccount:hagw-system:hagw";
    let create = |ns: &str| {
        s.kubectl(&["auth", "can-i", "create", "harouters.hagw.dev", "-n", ns, "--as", sa])
            .map(|o| o.trim() == "yes")
            .unwrap_or(false)
    };
    assert!(create("hagw-system") && !create("default"));
    assert!(!can("update", "harouters.hagw.dev") && !can("delete", "harouters.hagw.dev"));
    assert!(!can("list", "secrets"));
    Ok(())
}
