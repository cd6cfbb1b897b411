//! The HARouter as the view and the override of a discovered router, against a real control
//! plane: a router found in Neutron's files (real keepalived, no HARouter written by anyone)
//! gets its object, created by the agent, with the node's status and the columns of
//! `kubectl get -o wide`; a user-written object overrides its strategy; overrides that make
//! it invalid are ignored and named; the agent never rewrites what a user set on its object;
//! once the router is gone from Neutron, its published object is deleted, a user's is not.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Result, ensure};
use hagw_e2e::k8s::{AgentProcess, ApiServer, node_entry, wait_for};
use hagw_e2e::lab::hagw_bin;
use hagw_e2e::neutron::{FIP, NeutronRouter};
use serde_json::Value;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(server: &ApiServer, router: &NeutronRouter, run: u32) -> Result<AgentProcess> {
    let dir = router.gw.lab.dir.path();
    let mut command = Command::new(hagw_bin());
    command
        .args(["--log-level", "info", "agent", "--kubernetes", "--listen", "127.0.0.1:0"])
        .args(["--discover-neutron", "--neutron-root", "host", "--neutron-state-path"])
        .arg(dir.join("neutron"))
        .args(["--backend", "generic", "--strategy", "link-down", "--state-dir"])
        .arg(dir.join("hagw-state"))
        .env("POD_NAMESPACE", "default");
    AgentProcess::spawn(server, "v1", command, dir.join(format!("agent{run}.log")))
}

/// v1's entry in the router's object, once `check` accepts it.
fn wait_entry(
    s: &ApiServer,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    wait_for(what, Duration::from_secs(30), || {
        let Ok(object) = s.get("harouter", id, "default") else { return Ok(None) };
        Ok(node_entry(&object, "v1").filter(|e| check(e)))
    })
}

#[test]
fn a_discovered_router_gets_its_object_and_takes_overrides() -> Result<()> {
    let s = ApiServer::start()?;
    s.install_crd()?;
    let router = NeutronRouter::build()?;
    let gw = &router.gw;
    let ha_confs = gw.lab.dir.path().join("neutron/ha_confs");
    std::fs::create_dir_all(&ha_confs)?;
    router.write_conf(&ha_confs, &[FIP])?;
    let keepalived = Killed(router.keepalived_command(&ha_confs).stdin(Stdio::null()).spawn()?);
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    let mut first = agent(&s, &router, 1)?;
    let id = router.id.as_str();

    // Published: the router id, the label, nothing else in the spec; v1's entry in it.
    wait_entry(&s, id, "v1 primary in the published object", |e| {
        e["role"] == "primary" && e["strategy"] == "link-down"
    })
    .map_err(|e| e.context(std::fs::read_to_string(&first.log).unwrap_or_default()))?;
    let object = s.get("harouter", id, "default")?;
    assert_eq!(object["metadata"]["labels"]["hagw.dev/discovered"], "true");
    assert_eq!(object["spec"], serde_json::json!({"routerId": id}));
    wait_for("the roles column", Duration::from_secs(20), || {
        let wide = s.kubectl(&["get", "harouter", id, "-n", "default", "-o", "wide"])?;
        Ok(wide.contains("v1=primary").then_some(wide))
    })
    .map(|wide| eprintln!("{wide}"))?;

    // A user-written object overrides the strategy of the discovered router.
    let mine = format!(
        "apiVersion: hagw.dev/v1beta1\nkind: HARouter\nmetadata: {{name: mine, namespace: default}}\n\
         spec:\n  routerId: \"{id}\"\n  overrides: {{strategy: silence-only}}\n"
    );
    s.apply(&mine)?;
    wait_entry(&s, id, "the override enforced", |e| {
        e["strategy"] == "silence-only" && e["lastError"].is_null()
    })?;
    // One that makes the router invalid (l2-hold on the generic backend) is ignored whole.
    s.apply(&mine.replace("silence-only", "l2-hold"))?;
    let entry = wait_entry(&s, id, "the invalid override ignored", |e| {
        e["strategy"] == "link-down" && !e["lastError"].is_null()
    })?;
    let error = entry["lastError"].as_str().unwrap_or_default();
    ensure!(error.contains("overrides of HARouter default/mine ignored: strategy"), "{error}");
    s.kubectl(&["delete", "harouter", "mine", "-n", "default"])?;
    wait_entry(&s, id, "back to the discovered settings", |e| {
        e["strategy"] == "link-down" && e["lastError"].is_null()
    })?;

    // An override on the published object itself survives an agent restart: the agent
    // creates that object once and never writes its spec.
    s.kubectl(&[
        "patch",
        "harouter",
        id,
        "-n",
        "default",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"overrides":{"strategy":"silence-only"}}}"#,
    ])?;
    wait_entry(&s, id, "the override on the published object", |e| {
        e["strategy"] == "silence-only"
    })?;
    first.assert_running()?;
    drop(first);
    let mut second = agent(&s, &router, 2)?;
    std::thread::sleep(Duration::from_secs(3));
    second.assert_running()?;
    let object = s.get("harouter", id, "default")?;
    assert_eq!(object["spec"]["overrides"]["strategy"], "silence-only", "{object}");
    wait_entry(&s, id, "still overridden after the restart", |e| {
        e["strategy"] == "silence-only" && e["role"] == "primary"
    })?;

    // Neutron removes the router from the node (keepalived stopped, its files deleted): the
    // published object goes once no node hosts the router, unless a user set something on
    // it; a user-written object for the router is never deleted.
    let remove = r#"[{"op": "remove", "path": "/spec/overrides"}]"#;
    s.kubectl(&["patch", "harouter", id, "-n", "default", "--type", "json", "-p", remove])?;
    s.apply(&mine)?;
    wait_entry(&s, id, "the user's object's override", |e| e["strategy"] == "silence-only")?;
    drop(keepalived);
    std::fs::remove_dir_all(ha_confs.join(id))?;
    let names = || s.kubectl(&["get", "harouters", "-n", "default", "-o", "name"]);
    wait_for("the published object deleted", Duration::from_secs(30), || {
        Ok((!names()?.contains(&format!("harouter.hagw.dev/{id}"))).then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(names()?.contains("harouter.hagw.dev/mine"), "the user's object was deleted");
    second.assert_running()?;
    Ok(())
}
