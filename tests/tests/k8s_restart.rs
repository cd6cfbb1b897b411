//! An agent keeps enforcing while the API server is down and its status catches up when it
//! is back. This binary has its own control plane, since the test stops it.

use std::time::{Duration, Instant};

use anyhow::Result;
use hagw_e2e::k8s::{ApiServer, Nodes, node_entry, wait_for};

#[test]
fn an_agent_survives_an_apiserver_restart() -> Result<()> {
    let s = ApiServer::start()?;
    s.install_crd()?;
    let nodes = Nodes::build(&["n1"])?;
    s.apply(&nodes.harouter("restart", &["n1"]))?;
    let mut agent = nodes.agent(&s, "n1")?;
    let role = |want: &str| -> Result<Option<()>> {
        let obj = s.get("harouter", "restart", "default")?;
        Ok(node_entry(&obj, "n1").filter(|e| e["role"] == want).map(|_| ()))
    };
    wait_for("standby in status", Duration::from_secs(20), || role("standby"))?;

    s.stop()?;
    // A failover while the API server is away is enforced locally at once.
    nodes.set_state("n1", "primary")?;
    wait_for("the port configured as primary", Duration::from_secs(2), || {
        Ok(nodes.addresses("n1")?.contains("203.0.113.10").then_some(()))
    })?;
    agent.assert_running()?;

    let t0 = Instant::now();
    s.restart()?;
    wait_for("status to catch up", Duration::from_secs(30), || role("primary"))?;
    eprintln!("status caught up {:?} after the restart began", t0.elapsed());

    // And the watch works again: a spec change reaches the agent.
    s.apply(&nodes.harouter("restart", &["n1"]).replace("203.0.113.10/24", "203.0.113.11/24"))?;
    wait_for("the new address", Duration::from_secs(15), || {
        Ok(nodes.addresses("n1")?.contains("203.0.113.11").then_some(()))
    })?;
    agent.assert_running()?;
    Ok(())
}
