//! Reads a router's role inputs: its configured source and, when the spec names one, the
//! presence of keepalived's primary VIP on the HA device.

use hagw_backends::linux::LinuxNet;
use hagw_backends::netns::Netns;
use hagw_core::model::{Role, RouterSpec};
use hagw_core::role::{RoleInputs, current_role};
use tracing::debug;

pub struct RoleReader {
    linux: LinuxNet,
}

impl RoleReader {
    pub fn new(linux: LinuxNet) -> Self {
        RoleReader { linux }
    }

    pub async fn resolve(&self, spec: &RouterSpec) -> Role {
        let inputs = RoleInputs {
            configured: Some(current_role(&spec.role)),
            vip_present: self.vip_present(spec).await,
        };
        inputs.resolve(&spec.role)
    }

    /// Whether the primary VIP is on the HA device; `None` if the spec names no VIP or the
    /// device cannot be read (then the configured source decides).
    async fn vip_present(&self, spec: &RouterSpec) -> Option<bool> {
        let (vip, device) = (spec.primary_vip?, spec.ha_device.as_deref()?);
        match self.linux.addresses(&Netns::named(&spec.namespace), device).await {
            Ok(addresses) => Some(addresses.iter().any(|a| a.addr() == vip.addr())),
            Err(e) => {
                debug!(router = %spec.id, error = %e, "cannot read the HA device");
                None
            }
        }
    }
}
