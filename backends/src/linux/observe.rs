//! Reading everything the planner needs about a gateway device in one call.

use hagw_core::Error;
use hagw_core::observed::LinkState;
use tracing::{debug, info, instrument};

use super::LinuxNet;
use super::error::{Target, from_io};
use crate::netns::Netns;

impl LinuxNet {
    /// The kernel state of `device` in `netns`: `None` if the device does not exist, or if
    /// the namespace does not (the L3 agent has not created it yet, or has removed the
    /// router); the planner treats both as "nothing to do until it appears".
    #[instrument(level = "debug", skip(self, netns), fields(netns = netns.name()))]
    pub async fn observe_link(
        &self,
        netns: &Netns,
        device: &str,
    ) -> Result<Option<LinkState>, Error> {
        if let Err(e) = netns.id() {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(from_io("observe link", Target::dev(netns.name(), device), e));
            }
            self.cache.forget(netns);
            self.files.forget_netns(netns);
            if self.note_missing(netns, true) {
                info!(path = %netns.path().display(), "namespace does not exist");
            } else {
                debug!("namespace still does not exist");
            }
            return Ok(None);
        }
        if self.note_missing(netns, false) {
            info!("namespace appeared");
        }
        let Some(link) = self.link(netns, device).await? else {
            debug!("device does not exist");
            return Ok(None);
        };
        let addresses = self.addresses_of_index(netns, device, link.index).await?;
        let ipv6 = match link.ipv6 {
            Some(conf) => conf,
            None => self.ipv6_conf(netns, device).await?,
        };
        let routes = self.routes_of_index(netns, device, link.index).await?;
        Ok(Some(LinkState {
            admin_up: link.admin_up,
            oper_up: link.oper_up,
            addresses,
            ipv6,
            routes,
            counters: link.counters,
        }))
    }

    /// Records whether `netns` is missing; returns whether that changed.
    fn note_missing(&self, netns: &Netns, missing: bool) -> bool {
        let mut set = self.missing.lock().unwrap_or_else(|p| p.into_inner());
        if missing { set.insert(netns.name().to_string()) } else { set.remove(netns.name()) }
    }
}
