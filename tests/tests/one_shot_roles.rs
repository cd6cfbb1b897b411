//! The one-shot commands (`plan`, `reconcile --once`, `notify`) decide a router's role by the
//! same rule as the agent: keepalived's primary VIP on the HA device outranks Neutron's state
//! file (stale after a crash, lagging behind a fresh takeover) and a notify script's word
//! (which can arrive late).

use std::process::{Command, Output};

use anyhow::Result;
use hagw_e2e::gateway::{GATEWAY_IP, GatewayLab};
use hagw_e2e::hagw_bin;

const VIP: &str = "169.254.0.1/24";

/// The gateway lab plus an HA device, and a config naming it and the primary VIP.
fn lab(state_word: &str) -> Result<(GatewayLab, std::path::PathBuf, String)> {
    let gw = GatewayLab::build()?;
    let ha = gw.add_ha_device()?;
    let state = gw.lab.file("state", state_word)?;
    let config =
        format!("{}    haDevice: {ha}\n    primaryVip: {VIP}\n", gw.config("link-down", &state));
    let config = gw.lab.file("routers.yaml", &config)?;
    // As the L3 agent leaves it: up, with the kernel's link-local address.
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    Ok((gw, config, ha))
}

fn hagw(args: &[&str]) -> Result<Output> {
    Ok(Command::new(hagw_bin()).args(args).output()?)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn link_up(gw: &GatewayLab) -> Result<bool> {
    Ok(gw.gateway("link")?.contains(",UP"))
}

#[test]
fn a_stale_primary_state_file_does_not_release_a_standby() -> Result<()> {
    let (gw, config, _) = lab("primary")?;
    let config = config.to_str().unwrap();
    let plan = hagw(&["plan", "-c", config, "-o", "json"])?;
    assert!(plan.status.success(), "{}", text(&plan));
    assert!(text(&plan).contains("\"role\": \"standby\""), "{}", text(&plan));
    let run = hagw(&["reconcile", "--once", "-c", config])?;
    assert!(run.status.success(), "{}", text(&run));
    assert!(!link_up(&gw)?, "the VIP is absent: the port must be held");
    assert!(!gw.gateway("addr")?.contains(GATEWAY_IP));
    // keepalived's MASTER arriving late, with the VIP already gone again: still standby.
    let notify = hagw(&["notify", "-c", config, &format!("r-{}", gw.lab.id), "MASTER"])?;
    assert!(notify.status.success(), "{}", text(&notify));
    assert!(!link_up(&gw)?, "a late MASTER must not release a port whose VIP is gone");
    Ok(())
}

#[test]
fn a_state_file_lagging_behind_a_takeover_does_not_hold_the_primary() -> Result<()> {
    let (gw, config, ha) = lab("backup")?;
    gw.lab.exec(&gw.qrouter, &format!("ip addr add {VIP} dev {ha}"))?;
    let config = config.to_str().unwrap();
    let plan = hagw(&["plan", "-c", config, "-o", "json"])?;
    assert!(text(&plan).contains("\"role\": \"primary\""), "{}", text(&plan));
    let run = hagw(&["reconcile", "--once", "-c", config])?;
    // Degraded or not (IPv6 forwarding may be writable here), the primary carries traffic.
    assert!(link_up(&gw)?, "{}", text(&run));
    assert!(gw.gateway("addr")?.contains(GATEWAY_IP), "{}", text(&run));
    let notify = hagw(&["notify", "-c", config, &format!("r-{}", gw.lab.id), "BACKUP"])?;
    assert!(notify.status.success(), "{}", text(&notify));
    assert!(link_up(&gw)?, "a late BACKUP must not hold a port that has the VIP");
    Ok(())
}
