//! hagw's own OpenFlow 1.0 exchange with a real ovs-vswitchd (netdev datapath): `no-receive`
//! read and written on the bridge's management socket, judged by `ovs-ofctl`; and the
//! `ovs-ofctl` fallback when the bridge refuses OpenFlow 1.0.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use hagw_backends::l2::ovs::ofport::NoReceive;
use hagw_backends::l2::ovs::openflow::{self, OpenFlowError};
use hagw_e2e::ovs::OvsLab;

/// One node whose gateway port ovs-vswitchd has attached to br-int.
fn plugged_node() -> Result<OvsLab> {
    let lab = OvsLab::build(1)?;
    let node = &lab.nodes[0];
    node.plug(&lab.lab)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.attached() {
        ensure!(Instant::now() < deadline, "ovs-vswitchd never attached {}", node.port);
        std::thread::sleep(Duration::from_millis(20));
    }
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

#[tokio::test]
async fn a_bridge_without_openflow_1_0_falls_back_to_ovs_ofctl() -> Result<()> {
    let lab = plugged_node()?;
    let node = &lab.nodes[0];
    node.ovs.vsctl("set bridge br-int protocols=OpenFlow13")?;
    let socket = node.ovs.dir.join("br-int.mgmt");
    let refused = openflow::port(&socket, &node.port).await;
    ensure!(matches!(refused, Err(OpenFlowError::VersionRefused)), "{refused:?}");

    let no_recv = NoReceive::new(&node.ovs.dir);
    no_recv.set("br-int", &node.port, true).await?;
    ensure!(no_recv.get("br-int", &node.port).await?, "set through the fallback");
    no_recv.set("br-int", &node.port, false).await?;
    ensure!(!no_recv.get("br-int", &node.port).await?, "cleared through the fallback");
    Ok(())
}
