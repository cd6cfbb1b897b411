//! The host dataplane: the real kernel and switch behind the reconcile loop's
//! [`Dataplane`] boundary.
//!
//! Observation combines the Linux view of the gateway device with the L2 backend's view of
//! its switch port; each planned [`Action`] maps to exactly one kernel, switch or announce
//! operation, so the loop's per-action retry and fail-safe logic applies to each.

use std::time::Duration;

use hagw_core::Action;
use hagw_core::Error;
use hagw_core::config::Config;
use hagw_core::model::RouterSpec;
use hagw_core::observed::{Ipv6Sysctl, PortState};
use hagw_core::planner::HoldOnArrival;
use hagw_core::reconcile::Dataplane;
use tracing::{debug, instrument};

use crate::l2::{L2Backend, L2Backends};
use crate::linux::LinuxNet;
use crate::linux::forwarding::{self, Forwarding};
use crate::netns::Netns;

/// Applies plans to the host's namespaces and switch. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct HostDataplane {
    linux: LinuxNet,
    l2: L2Backends,
}

impl HostDataplane {
    pub fn new(linux: LinuxNet, l2: L2Backends) -> Self {
        HostDataplane { linux, l2 }
    }

    /// The dataplane for a configuration file. The OVS backend on `config.ovsdb` is always
    /// enabled: it connects only when a router with the `ovs` backend first needs it.
    pub fn for_config(config: &Config) -> Self {
        HostDataplane::new(LinuxNet::default(), L2Backends::with_ovsdb(config.ovsdb.clone()))
    }

    pub fn linux(&self) -> &LinuxNet {
        &self.linux
    }

    pub fn l2(&self) -> &L2Backends {
        &self.l2
    }
}

impl Dataplane for HostDataplane {
    async fn observe(&self, spec: &RouterSpec) -> Result<PortState, Error> {
        self.observe_for(spec, true).await
    }

    #[instrument(level = "debug", skip_all, fields(netns = %spec.namespace, device = %spec.gateway_device))]
    async fn observe_for(
        &self,
        spec: &RouterSpec,
        partial_matters: bool,
    ) -> Result<PortState, Error> {
        let backend = self.l2.for_router(spec)?;
        let netns = Netns::named(&spec.namespace);
        // Independent reads (the namespace, the switch): side by side.
        let (link, l2) = tokio::join!(
            self.linux.observe_link(&netns, &spec.gateway_device),
            backend.observe_for(spec, partial_matters)
        );
        Ok(PortState { link: link?, l2: l2? })
    }

    fn hold_on_arrival(&self, spec: &RouterSpec, hold: HoldOnArrival) {
        if let Ok(L2Backend::Ovs(ovs)) = self.l2.for_router(spec) {
            ovs.hold_on_arrival(crate::l2::ovs::port_name(spec), hold);
        }
    }

    fn at_rest(&self, spec: &RouterSpec) {
        self.linux.connections().close_unused(&Netns::named(&spec.namespace));
    }

    #[instrument(level = "debug", skip_all, fields(netns = %spec.namespace, device = %spec.gateway_device, action = action.kind()))]
    async fn apply(&self, spec: &RouterSpec, action: &Action) -> Result<(), Error> {
        let netns = Netns::named(&spec.namespace);
        let device = spec.gateway_device.as_str();
        match action {
            Action::HoldL2 => self.l2.for_router(spec)?.hold(spec).await,
            Action::ReleaseL2 => self.l2.for_router(spec)?.release(spec).await,
            Action::SetLinkDown => self.linux.set_link_down(&netns, device).await,
            Action::SetLinkUp => self.linux.set_link_up(&netns, device).await,
            Action::SetSysctl { sysctl: Ipv6Sysctl::AddrGenMode, value } => {
                self.linux.set_addr_gen_mode(&netns, device, *value).await
            }
            Action::SetSysctl { sysctl, value } => {
                let written = self.linux.write_ipv6_sysctl(&netns, device, *sysctl, *value).await?;
                debug!(written, "sysctl applied");
                Ok(())
            }
            Action::DeleteAddress { address } => {
                self.linux.delete_address(&netns, device, *address).await
            }
            Action::AddAddress { address } => {
                self.linux.add_address(&netns, device, *address).await
            }
            Action::AddRoute { route } => self.linux.add_route(&netns, device, route).await,
            Action::Announce { addresses } => {
                self.await_forwarding(&netns, device).await;
                let linux = &self.linux;
                crate::announce::announce_present(linux, &netns, device, addresses, spec.announce)
                    .await
            }
        }
    }
}

/// How long an announcement waits for the gateway's link to forward after it was raised.
const FORWARDING_WAIT: Duration = Duration::from_millis(500);

impl HostDataplane {
    /// Waits (bounded) until the gateway's link forwards: it and the device it is linked to
    /// (a veth's peer, whose bridge port is enabled with it) are operationally up (see
    /// [`crate::linux::forwarding`]). Frames sent before that are dropped, and the first,
    /// most useful round of gratuitous ARPs would be lost. On timeout the announcement goes
    /// ahead anyway; its later rounds still count.
    async fn await_forwarding(&self, netns: &Netns, device: &str) {
        match forwarding::await_forwarding(netns, device, FORWARDING_WAIT).await {
            Forwarding::Up { waited, linked } => {
                debug!(
                    netns = netns.name(),
                    device,
                    us = waited.as_micros() as u64,
                    linked,
                    "link forwards"
                )
            }
            Forwarding::TimedOut => {
                debug!(netns = netns.name(), device, "link not forwarding yet; announcing anyway")
            }
            Forwarding::Unknown => {
                debug!(netns = netns.name(), device, "cannot watch the link; announcing now")
            }
        }
    }
}
