//! The Helm-installed pod serving a Linux bridge node of the keepalived lab. The pod holds the
//! standby with nftables on the node's own `brq` bridge, so it must share that node's network
//! namespace: here the whole Kubernetes node (control plane, containerd, kubelet) runs inside
//! the lab node's namespace, and its hostNetwork pod with it. A test binary of its own: this
//! node takes a few host-wide names, and tests/tests/pod.rs keeps its node for its lifetime.

use anyhow::Result;
use hagw_e2e::keepalived::{KaLab, Wiring};
use hagw_e2e::node::{Node, pod_served_reboot_and_failover};

/// As the OVS case in tests/tests/pod.rs: node 2 is served only by the pod through a standby
/// reboot race and a keepalived crash on node 1; no frame from node 2 without the primary VIP.
#[test]
fn the_pod_serves_a_linuxbridge_node_through_a_reboot_and_a_failover() -> Result<()> {
    let mut lab = KaLab::prepare(Wiring::Linuxbridge, [true, false])?;
    // Dropped before the lab: the node runs in one of its namespaces.
    let node = Node::start_in_netns(&lab.nodes[1].ns)?;
    pod_served_reboot_and_failover(&node, &mut lab)
}
