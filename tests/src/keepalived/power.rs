//! A network node's router through a power loss and a boot: everything in the router
//! namespace is gone, and Neutron's agents (stand-ins) create it again as at boot.

use anyhow::Result;

use super::{Base, KaLab, Rng, node::kill_child, now};
use crate::lab::sh;

impl KaLab {
    /// Node `i` (0-based) loses power, as far as its router goes: keepalived dies without a
    /// word, the router namespace goes with its HA and gateway ports, and the OVS port record
    /// with it (a boot re-plugs it); on OVS, ovs-vswitchd starts again without its OpenFlow
    /// state and the OVS agent installs its flows (it need not wait for hagw: nothing of the
    /// router is plugged yet). The ToR capture and the other node go on.
    pub fn power_off_router(&mut self, i: usize) -> Result<()> {
        self.nodes[i].crash_keepalived();
        self.nodes[i].kill_l3_agent();
        kill_child(&mut self.nodes[i].vip_monitor);
        match &mut self.base {
            Base::Ovs(l) => {
                l.nodes[i].unplug(&l.lab)?;
                l.nodes[i].restart_vswitchd()?;
            }
            Base::Lb(l) => l.nodes[i].delete_veth(&l.lab)?,
        }
        sh(&format!("ip netns del {}", self.nodes[i].qrouter))?;
        Ok(())
    }

    /// Neutron's agents boot node `i`'s router again: the L3 agent creates the namespace
    /// (with its sysctls), the HA and gateway ports race the L2 agent's wiring, keepalived
    /// starts (as BACKUP: the other node is primary). A stand-in L3 agent process, if the node
    /// has one ([`super::KaNode::discoverable`]), starts first, as the L3 agent does all that.
    pub fn boot_router(&mut self, i: usize, rng: &mut Rng) -> Result<()> {
        if self.nodes[i].discoverable() {
            self.nodes[i].start_l3_agent()?;
        }
        let qrouter = self.nodes[i].qrouter.clone();
        sh(&format!("ip netns add {qrouter} && ip -n {qrouter} link set lo up"))?;
        self.router_sysctls(&qrouter)?;
        self.watch_vip(i)?;
        self.plug_router(i, rng)?;
        self.nodes[i].start_keepalived()
    }

    /// Seconds since the observers started: the time base of [`super::Leak::at`] and the
    /// report's FDB entries.
    pub fn elapsed(&self) -> f64 {
        now() - self.started
    }
}
