//! A network node's reboot on the real node: its kubelet, containerd and containers lose
//! power together with its router (keepalived, namespace, ports), then the node's services
//! and Neutron's agents (stand-ins on the host, as systemd units or kolla's containers run)
//! start again in one of three orders, so that a test can count what the rebooted standby
//! put on the wire. Neutron's agents either start as they please or wait for hagw's ready
//! file first, as docs/kubernetes.md ("Node reboot") tells an operator to configure them.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, anyhow};

use crate::disrupt::{ready_container, wait_replaced};
use crate::keepalived::{KaLab, Rng};
use crate::lab::sh;
use crate::node::{Node, Release};

/// When Neutron's agents start, relative to the node's kubelet and containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Neutron's agents start first (host units, containers outside Kubernetes); ungated,
    /// they are done before the kubelet starts.
    Before,
    /// Both at once (e.g. Neutron's agents as pods of the same kubelet).
    Together,
    /// Once hagw's pod is ready.
    After,
}

pub const ORDERS: [Order; 3] = [Order::Before, Order::Together, Order::After];

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Order::Before => "before",
            Order::Together => "together",
            Order::After => "after",
        })
    }
}

impl std::str::FromStr for Order {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Order> {
        ORDERS
            .into_iter()
            .find(|o| o.to_string() == s)
            .ok_or_else(|| anyhow!("unknown order {s} (before, together, after)"))
    }
}

/// What a Neutron agent's unit runs before it starts when it is ordered after hagw
/// (docs/kubernetes.md, "Node reboot": `ExecStartPre=`, an init container), for the ready
/// file `file`: waits until hagw has enforced its holds, gives up after five minutes.
pub fn gate_command(file: &Path) -> String {
    format!("timeout 300 sh -c 'until [ -e {} ]; do sleep 0.2; done'", file.display())
}

/// Reboots node `i` (0-based) of `lab`, whose router `release`'s pod on `node` serves:
/// powers off the node's services and the router, clears `ready_file` (a boot clears
/// `/run`), then starts the node's services and Neutron's agents in `order`, the agents
/// behind [`gate_command`] if `gated`. Returns once the router is plugged, keepalived runs and
/// the next agent container is ready.
pub fn reboot(
    node: &Node,
    release: &Release,
    lab: &mut KaLab,
    i: usize,
    order: Order,
    (ready_file, gated): (&Path, bool),
    rng: &mut Rng,
) -> Result<()> {
    let (old, _) = ready_container(&release.pod()?).context("the agent is not ready before")?;
    node.power_off()?;
    lab.power_off_router(i)?;
    match std::fs::remove_file(ready_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let neutron = |lab: &mut KaLab, rng: &mut Rng| -> Result<()> {
        if gated {
            sh(&gate_command(ready_file)).context("Neutron's agents waiting for hagw")?;
        }
        lab.boot_router(i, rng)
    };
    match (order, gated) {
        (Order::After, _) => {
            node.power_on()?;
            wait_replaced(release, &old)?;
            neutron(lab, rng)?;
        }
        (Order::Before, false) => {
            neutron(lab, rng)?;
            node.power_on()?;
        }
        // Together; or Neutron's units started first and waiting at the gate.
        _ => std::thread::scope(|s| -> Result<()> {
            let agents = s.spawn(|| neutron(lab, rng));
            let booted = node.power_on();
            agents.join().map_err(|_| anyhow!("Neutron's agents panicked"))??;
            booted
        })?,
    }
    wait_replaced(release, &old).map(drop)
}
