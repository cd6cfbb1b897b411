//! hagw where `/proc/sys` is read-only, as container runtimes mount it in every
//! non-privileged container: `hagw reconcile --once` runs in a private mount namespace with
//! `/proc/sys` bound read-only over itself. A primary still carries traffic (link, both
//! address families, routes) and names the setting it could not apply; a standby ends guarded
//! (held; link-down also down) and without addresses, its `addr_gen_mode` set over netlink,
//! and names the setting too. `hagw release` hands such a standby back all the same (held
//! with no agent left, it would be dark once keepalived promoted it) and names what it could
//! not set.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::Result;
use hagw_e2e::gateway::{GATEWAY_IP, GATEWAY_MAC, GatewayLab};
use hagw_e2e::{Capture, hagw_bin, sh};

/// `hagw <command> -c <config>` with a read-only `/proc/sys`.
fn read_only(command: &str, config: &Path) -> Result<Output> {
    let script = format!(
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && \
         exec {hagw} {command} -c {config}",
        hagw = hagw_bin().display(),
        config = config.display(),
    );
    Ok(Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()?)
}

/// `hagw reconcile --once` with a read-only `/proc/sys`.
fn reconcile_read_only(config: &Path) -> Result<Output> {
    read_only("reconcile --once", config)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_primary_carries_traffic_without_writable_sysctls() -> Result<()> {
    let gw = GatewayLab::build()?;
    let state = gw.lab.file("state", "primary")?;
    let config = gw.lab.file("routers.yaml", &gw.config("link-down", &state))?;
    assert_eq!(gw.sysctl("forwarding")?, "0", "the lab must need the forwarding sysctl");

    let out = reconcile_read_only(&config)?;
    let output = text(&out);
    // Not fully converged: the exit status and the output say which setting failed.
    assert_eq!(out.status.code(), Some(1), "{output}");
    assert!(output.contains("DEGRADED") && output.contains("forwarding = 1"), "{output}");
    assert!(output.contains("Read-only file system"), "{output}");

    let link = gw.gateway("link")?;
    assert!(link.contains(",UP"), "gateway link not up: {link}");
    let addresses = gw.gateway("addr")?;
    assert!(addresses.contains(GATEWAY_IP), "{addresses}");
    assert!(addresses.contains("2001:db8::10/64"), "{addresses}");
    let routes = gw.lab.exec(&gw.qrouter, "ip route show default")?;
    assert!(routes.contains("via"), "default route missing: {routes}");
    gw.lab.exec(&gw.external, &format!("ping -c 1 -W 2 {GATEWAY_IP}"))?;
    assert_eq!(gw.sysctl("forwarding")?, "0", "the sysctl could not have been written");
    Ok(())
}

#[test]
fn a_standby_ends_guarded_without_writable_sysctls() -> Result<()> {
    for strategy in ["link-down", "silence-only"] {
        let gw = GatewayLab::build()?;
        let state = gw.lab.file("state", "backup")?;
        let config = gw.lab.file("routers.yaml", &gw.config(strategy, &state))?;
        // As the L3 agent leaves it: up, with the kernel's link-local address.
        gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;

        let out = reconcile_read_only(&config)?;
        let output = text(&out);
        // accept_ra can only be written through /proc/sys: degraded, and guarded.
        assert_eq!(out.status.code(), Some(1), "{strategy}: {output}");
        assert!(output.contains("accept_ra"), "{strategy}: {output}");

        // Guarded: held in the router namespace (a silence-only standby whose silence cannot
        // be completed is never released), and link-down takes the link down as well.
        let held = sh(&format!("ip netns exec {} nft list set inet hagw held", gw.qrouter))?;
        assert!(held.contains(&gw.qg), "{strategy}: standby not held: {held}");
        if strategy == "link-down" {
            assert!(!gw.gateway("link")?.contains(",UP"), "{strategy}: standby link up");
        }
        assert_eq!(gw.gateway("addr")?.trim(), "", "{strategy}: standby keeps addresses");
        assert_eq!(gw.sysctl("addr_gen_mode")?, "1", "{strategy}: set over netlink");
        // The port was up with IPv6 before hagw ran, so the kernel's own DAD and MLD from
        // that moment may have left already; nothing may leave once hagw is done.
        let capture = Capture::start(&gw.tor, &gw.tor_port, gw.lab.dir.path().join("tor.pcap"))?;
        std::thread::sleep(Duration::from_millis(1500));
        let frames = capture.stop_and_frames_from(GATEWAY_MAC)?;
        assert!(frames.is_empty(), "{strategy}: standby leaked:\n{}", frames.join("\n"));
    }
    Ok(())
}

/// A held standby whose `accept_ra` cannot be written (guarded by `reconcile` above) is handed
/// back by `hagw release`: link up, released, without addresses or link-local generation,
/// the unwritable settings printed. Without that the port would stay held for good.
#[test]
fn release_hands_back_a_standby_it_cannot_fully_silence() -> Result<()> {
    let gw = GatewayLab::build()?;
    let state = gw.lab.file("state", "backup")?;
    let config = gw.lab.file("routers.yaml", &gw.config("link-down", &state))?;
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    reconcile_read_only(&config)?;
    let held = || sh(&format!("ip netns exec {} nft list set inet hagw held", gw.qrouter));
    assert!(held()?.contains(&gw.qg), "standby not held: {}", held()?);
    assert!(!gw.gateway("link")?.contains(",UP"), "standby link up");
    assert_eq!(gw.sysctl("accept_ra")?, "1", "the lab must need the accept_ra sysctl");

    let out = read_only("release --all", &config)?;
    let output = text(&out);
    assert!(out.status.success(), "{output}");
    let id = format!("r-{}", gw.lab.id);
    assert!(output.contains(&format!("{id}: released")), "{output}");
    assert!(output.contains("without: set ipv6 accept_ra = 0"), "{output}");
    assert!(!held()?.contains(&gw.qg), "still held: {}", held()?);
    assert!(gw.gateway("link")?.contains(",UP"), "link left down");
    assert_eq!(gw.gateway("addr")?.trim(), "", "addresses after the release");
    assert_eq!(gw.sysctl("addr_gen_mode")?, "1", "set over netlink");
    Ok(())
}
