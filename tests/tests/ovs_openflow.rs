//! hagw's own OpenFlow 1.3 exchange with a real ovs-vswitchd (netdev datapath): `no-receive`
//! read and written on the bridge's management socket, judged by `ovs-ofctl`; on a bridge
//! with thousands of ports, whose description comes in several parts; and the `ovs-ofctl`
//! fallback when the bridge refuses OpenFlow 1.3.
//!
//! Knob: `HAGW_OF_PORTS`, the ports added to br-int for the scale test (default 5,000; about
//! 30 s, see docs/backends.md).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use hagw_backends::l2::ovs::ofport::NoReceive;
use hagw_backends::l2::ovs::openflow::{self, OpenFlowError, Refusal};
use hagw_e2e::ovs::{Ovs, OvsLab};
use serde_json::json;

/// OpenFlow 1.0's port list, one FEATURES_REPLY of at most 64 KiB, holds this many ports.
const OPENFLOW_1_0_PORTS: u32 = 1_360;

/// `ovsdb-client transact` takes the transaction as one argument, which Linux caps at
/// 128 KiB: about 300 ports. (`ovs-vsctl` can add them in one transaction, but takes time
/// quadratic in their number: 80 s of CPU for 5,000.)
const PORTS_PER_TRANSACTION: usize = 250;

/// Adds patch ports named `names` to br-int in the dead VLAN, their peers missing, in one
/// OVSDB transaction.
fn add_patch_ports(ovs: &Ovs, names: &[String]) -> Result<()> {
    let mut ops = vec![json!("Open_vSwitch")];
    for (i, name) in names.iter().enumerate() {
        let peer = format!("{name}-nowhere");
        ops.push(json!({"op": "insert", "table": "Interface", "uuid-name": format!("i{i}"),
            "row": {"name": name, "type": "patch", "options": ["map", [["peer", peer]]]}}));
        ops.push(json!({"op": "insert", "table": "Port", "uuid-name": format!("p{i}"),
            "row": {"name": name, "tag": 4095, "interfaces": ["named-uuid", format!("i{i}")]}}));
    }
    let ports: Vec<_> = (0..names.len()).map(|i| json!(["named-uuid", format!("p{i}")])).collect();
    ops.push(json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", "br-int"]],
        "mutations": [["ports", "insert", ["set", ports]]]}));
    let out = Command::new("ovsdb-client")
        .args(["transact", &ovs.endpoint(), &serde_json::Value::Array(ops).to_string()])
        .output()?;
    let reply = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success() && !reply.contains("\"error\""), "adding ports: {reply}");
    Ok(())
}

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Plugs the node's gateway port and waits until ovs-vswitchd has attached it.
fn plug(lab: &OvsLab, within: Duration) -> Result<()> {
    let node = &lab.nodes[0];
    node.plug(&lab.lab)?;
    let deadline = Instant::now() + within;
    while !node.attached() {
        ensure!(Instant::now() < deadline, "ovs-vswitchd never attached {}", node.port);
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One node whose gateway port ovs-vswitchd has attached to br-int.
fn plugged_node() -> Result<OvsLab> {
    let lab = OvsLab::build(1)?;
    plug(&lab, Duration::from_secs(10))?;
    Ok(lab)
}

#[tokio::test]
async fn no_receive_over_openflow_is_what_ovs_ofctl_sees() -> Result<()> {
    let lab = plugged_node()?;
    let node = &lab.nodes[0];
    let socket = node.ovs.dir.join("br-int.mgmt");

    let port = openflow::port(&socket, &node.port).await?.expect("the port is in br-int");
    ensure!(!port.no_receive() && !node.no_receive()?, "a fresh port receives");
    for on in [true, false, true] {
        ensure!(openflow::set_no_receive(&socket, &node.port, on).await?, "port not found");
        ensure!(node.no_receive()? == on, "ovs-ofctl disagrees after setting {on}");
        let read = openflow::port(&socket, &node.port).await?.expect("still there");
        ensure!(read.no_receive() == on && read.port_no == port.port_no);
    }
    // Only the one bit changed: the port is still up and forwarding.
    let config = node.port_config()?;
    ensure!(config == ["NO_RECV"], "{config:?}");

    ensure!(!openflow::set_no_receive(&socket, "tg-missing", true).await?);
    ensure!(openflow::port(&socket, "tg-missing").await?.is_none());
    let gone = openflow::port(&node.ovs.dir.join("br-gone.mgmt"), &node.port).await;
    ensure!(matches!(gone, Err(OpenFlowError::Io(_))), "{gone:?}");
    Ok(())
}

/// A network node's br-int with 1,000 routers has 3,000+ ports: more than OpenFlow 1.0's one
/// port list holds, and more than one part of a 1.3 port description (~1,020 each). The
/// gateway port, added after all of them, is numbered beyond both; hagw must find and update
/// it on its own, the `ovs-ofctl` fallback pointed at a program that does not exist.
#[tokio::test]
async fn a_port_among_thousands_is_found_and_updated_without_ovs_ofctl() -> Result<()> {
    let extra = knob("HAGW_OF_PORTS", 5_000);
    let lab = OvsLab::build(1)?;
    let node = &lab.nodes[0];
    // Patch ports whose peer does not exist: OpenFlow ports with no device behind them that
    // drop what is sent to them (paired with each other, NORMAL's floods looped through them
    // and stalled ovs-vswitchd), in the dead VLAN so that floods pass them by.
    let started = Instant::now();
    let names: Vec<String> = (0..extra).map(|i| format!("of{i}")).collect();
    for chunk in names.chunks(PORTS_PER_TRANSACTION) {
        add_patch_ports(&node.ovs, chunk)?;
    }
    let added = started.elapsed();
    // ovs-vswitchd reconfigures the whole bridge on every change: slow with this many ports.
    plug(&lab, Duration::from_secs(120))?;
    let attached = started.elapsed();
    let ofport: u32 =
        node.ovs.vsctl(&format!("get interface {} ofport", node.port))?.trim().parse()?;
    ensure!(ofport > OPENFLOW_1_0_PORTS, "the gateway port is number {ofport}");

    let socket = node.ovs.dir.join("br-int.mgmt");
    let listing = Instant::now();
    let listed = openflow::ports(&socket).await?;
    let listing = listing.elapsed();
    // The extra ports, the gateway, the patch to br-ex and the bridge's local port: every
    // part of the reply was read.
    ensure!(listed.len() == extra + 3, "{} ports listed of {}", listed.len(), extra + 3);
    let found = listed.iter().find(|p| p.name == node.port).expect("the gateway is listed");
    ensure!(found.port_no == ofport, "listed as {}, OVSDB says {ofport}", found.port_no);

    let no_recv = NoReceive::new(&node.ovs.dir).with_program("/nonexistent/ovs-ofctl");
    for on in [true, false, true] {
        no_recv.set("br-int", &node.port, on).await?;
        ensure!(no_recv.get("br-int", &node.port).await? == on, "hagw reads back {}", !on);
        ensure!(node.no_receive()? == on, "ovs-ofctl disagrees after setting {on}");
    }
    let config = node.port_config()?;
    ensure!(config == ["NO_RECV"], "{config:?}");
    // Ports spread over the whole bridge: OVS lists ports in hash order, so a list cut short
    // (OpenFlow 1.0's FEATURES_REPLY keeps the first ~1,360) misses most of them.
    for name in names.iter().step_by(100) {
        ensure!(!no_recv.get("br-int", name).await?, "{name} has no-receive");
    }
    eprintln!(
        "{extra} ports: in OVSDB after {added:?}, gateway attached after {attached:?}, all \
         listed over OpenFlow in {listing:?}, done after {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_bridge_without_openflow_1_3_falls_back_to_ovs_ofctl() -> Result<()> {
    let lab = plugged_node()?;
    let node = &lab.nodes[0];
    node.ovs.vsctl("set bridge br-int protocols=OpenFlow10")?;
    let socket = node.ovs.dir.join("br-int.mgmt");
    let refused = openflow::port(&socket, &node.port).await;
    // OVS's HELLO says 1.0 and nothing above (bit 1 of a version bitmap).
    let only_1_0 = Refusal::Offers(0b10);
    ensure!(
        matches!(&refused, Err(OpenFlowError::VersionRefused(r)) if *r == only_1_0),
        "{refused:?}"
    );

    let no_recv = NoReceive::new(&node.ovs.dir);
    no_recv.set("br-int", &node.port, true).await?;
    ensure!(no_recv.get("br-int", &node.port).await?, "set through the fallback");
    no_recv.set("br-int", &node.port, false).await?;
    ensure!(!no_recv.get("br-int", &node.port).await?, "cleared through the fallback");
    Ok(())
}
