//! The demo: builds a small namespace topology with the bug in it, shows the leak without
//! hagw, then runs `hagw plan` and `hagw reconcile --once` on it and shows that the same
//! boot sequence leaks nothing. Everything is removed at the end (also on failure).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hagw_e2e::gateway::{GATEWAY_IP, GATEWAY_MAC, GatewayLab};
use hagw_e2e::{Capture, hagw_bin};

fn main() -> Result<()> {
    println!("hagw demo: ToR bridge <- standby node's gateway port qg (MAC {GATEWAY_MAC})\n");
    let leaked = boot_standby(false)?;
    println!(
        "without hagw: the L3 agent plugs the standby's gateway -> {leaked} frame(s) with the gateway MAC reached the ToR"
    );
    let leaked_with = boot_standby(true)?;
    println!(
        "with hagw:    same sequence after `hagw reconcile --once` -> {leaked_with} frame(s)\n"
    );
    takeover()?;
    if leaked_with != 0 {
        bail!("hagw let {leaked_with} frame(s) through");
    }
    Ok(())
}

fn hagw(args: &[&str]) -> Result<String> {
    let out = Command::new(hagw_bin()).args(args).output().context("running hagw")?;
    if !out.status.success() {
        bail!("hagw {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A standby node boots: the L3 agent brings the gateway up and flushes IPv6.
fn boot_standby(with_hagw: bool) -> Result<usize> {
    let gw = GatewayLab::build()?;
    let state = gw.lab.file("state", "backup")?;
    let config = gw.lab.file("routers.yaml", &gw.config("link-down", &state))?;
    let config = config.to_str().context("path")?;
    if with_hagw {
        println!("$ hagw plan -c routers.yaml\n{}", indent(&hagw(&["plan", "-c", config])?));
        println!(
            "$ hagw reconcile -c routers.yaml --once\n{}",
            indent(&hagw(&["reconcile", "-c", config, "--once"])?)
        );
    }
    let capture = Capture::start(&gw.tor, &gw.tor_port, gw.lab.dir.path().join("tor.pcap"))?;
    gw.l3_agent_plug()?;
    std::thread::sleep(Duration::from_millis(2500));
    let frames = capture.stop_and_frames_from(GATEWAY_MAC)?;
    for f in frames.iter().take(5) {
        println!("    {f}");
    }
    Ok(frames.len())
}

/// The node becomes primary: hagw brings the port up with its addresses and routes.
fn takeover() -> Result<()> {
    let gw = GatewayLab::build()?;
    let state = gw.lab.file("state", "backup")?;
    let config = gw.lab.file("routers.yaml", &gw.config("link-down", &state))?;
    let config = config.to_str().context("path")?;
    hagw(&["reconcile", "-c", config, "--once"])?;
    std::fs::write(&state, "primary")?;
    println!(
        "state file now says primary\n$ hagw reconcile -c routers.yaml --once\n{}",
        indent(&hagw(&["reconcile", "-c", config, "--once"])?)
    );
    gw.lab.exec(&gw.external, &format!("ping -c 1 -W 2 {GATEWAY_IP}"))?;
    println!("external host pings the gateway {GATEWAY_IP}: ok");
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
