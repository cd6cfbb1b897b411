//! The one-shot commands on a Neutron node without a routers file: `hagw plan --neutron`
//! shows what the agent would do with the routers of `ha_confs` and changes nothing, a broken
//! router beside them is named and left out; `hagw release --neutron --all` hands their ports
//! back.

use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use hagw_e2e::hagw_bin;
use hagw_e2e::neutron::{FIP, NeutronRouter};

fn hagw(args: &[&str]) -> Result<Output> {
    Ok(Command::new(hagw_bin()).args(args).output()?)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn plan_and_release_take_the_routers_from_neutrons_files() -> Result<()> {
    let router = NeutronRouter::build()?;
    let gw = &router.gw;
    let state_path = gw.lab.dir.path().join("neutron");
    let ha_confs = state_path.join("ha_confs");
    router.write_conf(&ha_confs, &[FIP])?;
    let broken = ha_confs.join(format!("{}-broken", router.id));
    std::fs::create_dir_all(&broken)?;
    std::fs::write(broken.join("keepalived.conf"), "vrrp_instance VR_9 {\n")?;
    // As the L3 agent leaves a router whose keepalived does not run: a standby, its port up.
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    let link_up = || -> Result<bool> { Ok(gw.gateway("link")?.contains(",UP")) };
    let neutron = [
        "--neutron",
        state_path.to_str().unwrap(),
        "--backend",
        "generic",
        "--strategy",
        "link-down",
    ];

    let plan = hagw(&[&["plan"][..], &neutron, &["-o", "json"]].concat())?;
    ensure!(plan.status.success(), "{}", text(&plan));
    let plans: serde_json::Value = serde_json::from_slice(&plan.stdout).context(text(&plan))?;
    let plans = plans.as_array().context("a list of plans")?;
    ensure!(plans.len() == 1, "only the readable router: {plans:#?}");
    ensure!(plans[0]["router"] == router.id.as_str(), "{plans:#?}");
    ensure!(plans[0]["role"] == "standby", "keepalived does not run: {plans:#?}");
    let actions = plans[0]["plan"]["actions"].as_array().context("actions")?;
    ensure!(!actions.is_empty(), "an unheld standby needs a hold: {plans:#?}");
    let stderr = String::from_utf8_lossy(&plan.stderr);
    ensure!(stderr.contains(&format!("{}-broken", router.id)), "broken router not named: {stderr}");
    ensure!(link_up()?, "plan changed the port");

    // Held as the agent holds a link-down standby; handed back to the L3 agent's state.
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} down", gw.qg))?;
    let release = hagw(&[&["release"][..], &neutron, &["--all"]].concat())?;
    ensure!(release.status.success(), "{}", text(&release));
    ensure!(text(&release).contains(&format!("{}: released", router.id)), "{}", text(&release));
    ensure!(link_up()?, "release left the port down: {}", text(&release));

    let missing = hagw(&["plan", "--neutron", "/nonexistent/neutron"])?;
    ensure!(missing.status.code() == Some(2), "{}", text(&missing));
    ensure!(text(&missing).contains("/nonexistent/neutron/ha_confs"), "{}", text(&missing));
    Ok(())
}
