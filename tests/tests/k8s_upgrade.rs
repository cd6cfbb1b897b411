//! The API version upgrade on a real v1.34 control plane: objects written under the released
//! `v1alpha1`-only CRD, the new CRD applied (v1beta1 stored, v1alpha1 still served with the
//! same schema), what both versions enforce, and the storage-version migration by
//! `hagw migrate`, checked in etcd itself. An upgraded agent enforces the object before and
//! after its migration.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use hagw_e2e::k8s::{ApiServer, Nodes, node_entry, wait_for};
use hagw_e2e::lab::hagw_bin;
use serde_json::Value;

/// The CRD as released before v1beta1 (`charts/hagw/crds/harouter.yaml` at that time).
const V1ALPHA1_CRD: &str = include_str!("../fixtures/harouter-crd-v1alpha1.yaml");

fn stored(s: &ApiServer, name: &str) -> Result<Value> {
    Ok(serde_json::from_str(&s.etcd_get(&format!("/registry/hagw.dev/harouters/default/{name}"))?)?)
}

fn stored_versions(s: &ApiServer) -> Result<Value> {
    Ok(s.get("crd", "harouters.hagw.dev", "default")?["status"]["storedVersions"].clone())
}

fn migrate(s: &ApiServer) -> Result<(bool, String)> {
    let out = Command::new(hagw_bin()).arg("migrate").env("KUBECONFIG", &s.kubeconfig).output()?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// A status entry of a node `zz` written by server-side apply, as an agent writes its own.
fn status_write(s: &ApiServer, name: &str) -> Result<String> {
    let entry = format!(
        "apiVersion: hagw.dev/v1beta1\nkind: HARouter\nmetadata: {{name: {name}, namespace: default}}\n\
         status: {{nodes: [{{node: zz, role: standby, held: true}}]}}\n"
    );
    let args = ["apply", "--server-side", "--subresource=status", "--field-manager=zz", "-f", "-"];
    s.kubectl_stdin(&args, Some(&entry))
}

/// `yaml` as a v1beta1 object must be refused, naming `expect`.
fn refused(s: &ApiServer, yaml: &str, expect: &str) -> Result<()> {
    match s.apply(yaml) {
        Ok(out) => bail!("accepted ({out}):\n{yaml}"),
        Err(e) if e.to_string().contains(expect) => Ok(()),
        Err(e) => bail!("refused without naming {expect:?}: {e}"),
    }
}

#[test]
fn v1alpha1_objects_are_served_as_v1beta1_then_migrated_and_enforced() -> Result<()> {
    let s = ApiServer::start()?;
    s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(V1ALPHA1_CRD))?;
    s.kubectl(&["wait", "--for=condition=Established", "--timeout=30s", "crd/harouters.hagw.dev"])?;
    let nodes = Nodes::build(&["u1"])?;
    let as_alpha = |yaml: String| yaml.replace("hagw.dev/v1beta1", "hagw.dev/v1alpha1");
    let alpha = as_alpha(nodes.harouter("generic", &["u1"]))
        .replace("    strategy: link-down\n", "    strategy: link-down\n    backend: generic\n");
    assert!(alpha.contains("apiVersion: hagw.dev/v1alpha1") && alpha.contains("backend: generic"));
    s.apply(&alpha)?;
    // Accepted by the released v1alpha1, which left addresses unchecked.
    let sloppy = as_alpha(nodes.harouter("sloppy", &["elsewhere"]))
        .replace("203.0.113.10/24", "203.0.113.300/24");
    s.apply(&sloppy)?;
    assert_eq!(stored(&s, "generic")?["apiVersion"], "hagw.dev/v1alpha1");

    s.install_crd()?;
    assert_eq!(stored_versions(&s)?, serde_json::json!(["v1alpha1", "v1beta1"]));
    // `conversion: None` only rewrites apiVersion: until it is written again, the object keeps
    // the released shape, whichever version it is read through.
    let as_beta = s.get("harouters.v1beta1.hagw.dev", "generic", "default")?;
    assert_eq!(as_beta["apiVersion"], "hagw.dev/v1beta1");
    assert_eq!(as_beta["spec"]["router"]["backend"], "generic");
    let read_alpha = s.get("harouters.v1alpha1.hagw.dev", "generic", "default")?;
    assert_eq!(read_alpha["spec"], as_beta["spec"]);
    assert_eq!(stored(&s, "generic")?["apiVersion"], "hagw.dev/v1alpha1");

    // What both versions now enforce at the API server: v1alpha1 is served with the v1beta1
    // schema, so nothing written after the upgrade can have the released shape.
    let beta = nodes.harouter("bad", &["u1"]);
    let generic_string =
        beta.replace("strategy: link-down", "strategy: link-down\n    backend: generic");
    refused(&s, &generic_string, "spec.router.backend")?;
    refused(&s, &as_alpha(generic_string.clone()), "spec.router.backend")?;
    refused(&s, &beta.replace("203.0.113.10/24", "203.0.113.300/24"), "CIDR notation")?;
    refused(
        &s,
        &as_alpha(beta.replace("203.0.113.10/24", "203.0.113.300/24")),
        "spec.router.gatewayAddresses[0]",
    )?;
    refused(
        &s,
        &beta.replace(
            "strategy: link-down",
            "strategy: link-down\n    backend: {generic: {}, ovs: {}}",
        ),
        "exactly one of `generic`, `ovs`, `linuxbridge`",
    )?;
    refused(&s, &beta.replace("strategy: link-down", "strategy: l2-hold"), "spec.router.strategy")?;
    refused(
        &s,
        &beta.replace("gatewayDevice: qg-k8s", "gatewayDevice: qg-much-too-long-name"),
        "spec.router.gatewayDevice",
    )?;
    refused(&s, &beta.replace("  nodes: [u1]\n", ""), "spec.nodes")?;
    refused(
        &s,
        &beta.replace("  nodes: [u1]\n", "  nodes: [u1]\n  overrides: {strategy: link-down}\n"),
        "spec.overrides",
    )?;
    let bare = "apiVersion: hagw.dev/v1beta1\nkind: HARouter\nmetadata: {name: bare, namespace: default}\nspec: {}\n";
    refused(&s, bare, "needs `router`")?;
    s.apply(
        &beta
            .replace("strategy: link-down", "strategy: link-down\n    backend: {generic: {}}")
            .replace("name: bad", "name: typed")
            .replace("nodes: [u1]", "nodes: [elsewhere]"),
    )?;

    // The upgraded agent enforces the object in its released shape before the migration...
    let mut agent = nodes.agent(&s, "u1")?;
    let down = || Ok((!nodes.link("u1")?.contains(",UP")).then_some(()));
    wait_for("generic: u1's port down (link-down)", Duration::from_secs(20), down)?;
    // ...but nobody can write its status: the API server checks the whole object against the
    // v1beta1 schema, and a string `backend` is not a map.
    let Err(e) = status_write(&s, "generic") else { bail!("a status write to the released shape") };
    assert!(e.to_string().contains(".spec.router.backend: expected map"), "{e}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node_entry(&s.get("harouter", "generic", "default")?, "u1"), None);

    let (ok, text) = migrate(&s)?;
    assert!(ok, "{text}");
    // Kept by the API server's validation ratcheting (unchanged), and named.
    assert!(
        text.contains("warning: HARouter default/sloppy is invalid and not enforced: spec: invalid IP address syntax"),
        "{text}"
    );
    assert_eq!(stored(&s, "sloppy")?["apiVersion"], "hagw.dev/v1beta1");
    assert!(
        text.contains(
            "wrote HARouter default/generic as v1beta1 (backend: generic -> {generic: {}})"
        ),
        "{text}"
    );
    assert_eq!(stored_versions(&s)?, serde_json::json!(["v1beta1"]));
    let raw = stored(&s, "generic")?;
    assert_eq!(raw["apiVersion"], "hagw.dev/v1beta1", "{raw}");
    assert_eq!(raw["spec"]["router"]["backend"], serde_json::json!({"generic": {}}));
    assert_eq!(
        s.get("harouters.v1alpha1.hagw.dev", "generic", "default")?["spec"]["router"]["backend"],
        serde_json::json!({"generic": {}})
    );

    // ...and after it: its status is written, and the port is still down.
    let migrated = raw["metadata"]["generation"].as_i64().expect("a generation");
    wait_for("generic: u1 standby, held", Duration::from_secs(20), || {
        let entry = node_entry(&s.get("harouter", "generic", "default")?, "u1");
        Ok(entry.filter(|e| {
            e["role"] == "standby" && e["held"] == true && e["observedGeneration"] == migrated
        }))
    })?;
    assert!(!nodes.link("u1")?.contains(",UP"));
    status_write(&s, "generic")?;
    agent.assert_running()?;
    Ok(())
}
