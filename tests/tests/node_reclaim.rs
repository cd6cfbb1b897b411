//! The test node's own lifecycle (`scripts/k8s-node.sh`): a node whose processes all died
//! without `stop` (its test process SIGKILLed, the machine's session cut) leaves its names
//! taken — the address on `lo`, the CNI bridge, the cgroup root. The next `start` must find
//! that node dead and reclaim them, not fail with "another node running?". A test binary of
//! its own: the node runs in a namespace of its own and takes a host-wide cgroup name.

use anyhow::{Context, Result, ensure};
use hagw_e2e::lab::Lab;
use hagw_e2e::node::Node;

#[test]
fn start_reclaims_the_names_of_a_dead_node() -> Result<()> {
    let mut lab = Lab::new()?;
    let ns = lab.netns("node")?;
    lab.exec(&ns, "ip link set lo up")?;

    let first = Node::start_in_netns(&ns).context("the first node")?;
    first.die()?;
    let taken = lab.exec(&ns, "ip -o addr show dev lo label lo:hagwnode")?;
    ensure!(!taken.trim().is_empty(), "the dead node left no address on lo to reclaim");

    let second = Node::start_in_netns(&ns).context("a node after the first died")?;
    let ready = second.kubectl(&[
        "get",
        "node",
        &second.name,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ])?;
    ensure!(ready.trim() == "True", "the second node is not Ready: {ready}");
    drop(second);
    let left = lab.exec(&ns, "ip -o addr show dev lo label lo:hagwnode")?;
    ensure!(left.trim().is_empty(), "the second node's stop left its address: {left}");
    Ok(())
}
