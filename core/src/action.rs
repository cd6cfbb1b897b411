//! The steps a plan is made of, and the model of what each does to a port.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::model::RouteSpec;
use crate::observed::{ADDR_GEN_MODE_NONE, HoldState, Ipv6Sysctl, LinkState, PortState};

/// One change to a gateway port. Backends apply them in the order the planner gives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Action {
    /// Stop the switch from forwarding anything the port sends.
    HoldL2,
    /// Let the port forward again (restoring the L2 agent's wiring).
    ReleaseL2,
    SetLinkDown,
    SetLinkUp,
    SetSysctl {
        sysctl: Ipv6Sysctl,
        value: u32,
    },
    DeleteAddress {
        address: IpNet,
    },
    AddAddress {
        address: IpNet,
    },
    AddRoute {
        route: RouteSpec,
    },
    /// Gratuitous ARP for each IPv4 and unsolicited NA for each IPv6 address, on the
    /// router's announce schedule.
    Announce {
        addresses: Vec<IpAddr>,
    },
}

impl Action {
    /// Short kind name, for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::HoldL2 => "hold-l2",
            Action::ReleaseL2 => "release-l2",
            Action::SetLinkDown => "link-down",
            Action::SetLinkUp => "link-up",
            Action::SetSysctl { .. } => "set-sysctl",
            Action::DeleteAddress { .. } => "delete-address",
            Action::AddAddress { .. } => "add-address",
            Action::AddRoute { .. } => "add-route",
            Action::Announce { .. } => "announce",
        }
    }

    /// Whether this step only tunes the port (an IPv6 sysctl) rather than carrying a
    /// primary's traffic (link, addresses, routes, hold release, announcements). A primary
    /// whose side setting cannot be applied still forwards, degraded; one whose traffic step
    /// fails does not.
    pub fn is_side_setting(&self) -> bool {
        matches!(self, Action::SetSysctl { .. })
    }

    /// Applies the action to a model of the port, including what the kernel does on its own
    /// in response (a link-local address appears when IPv6 comes up with address generation
    /// on). The planner uses this to see the state its earlier steps leave behind; the
    /// property tests use it to step through plans.
    pub fn apply_to(&self, port: &mut PortState) {
        match self {
            Action::HoldL2 => port.l2.hold = HoldState::Held,
            Action::ReleaseL2 => port.l2.hold = HoldState::Released,
            Action::Announce { .. } => {}
            _ => {
                if let Some(link) = port.link.as_mut() {
                    self.apply_to_link(link);
                }
            }
        }
    }

    fn apply_to_link(&self, link: &mut LinkState) {
        match self {
            Action::SetLinkDown => link.admin_up = false,
            Action::SetLinkUp => {
                link.admin_up = true;
                kernel_autoconf(link);
            }
            Action::SetSysctl { sysctl, value } => {
                link.ipv6.set(*sysctl, *value);
                match sysctl {
                    Ipv6Sysctl::DisableIpv6 if *value != 0 => {
                        link.addresses.retain(|a| matches!(a, IpNet::V4(_)));
                    }
                    Ipv6Sysctl::DisableIpv6 | Ipv6Sysctl::AddrGenMode if link.admin_up => {
                        kernel_autoconf(link)
                    }
                    _ => {}
                }
            }
            Action::DeleteAddress { address } => link.addresses.retain(|a| a != address),
            Action::AddAddress { address } => {
                if !link.addresses.contains(address) {
                    link.addresses.push(*address);
                }
            }
            Action::AddRoute { route } => {
                if !link.routes.contains(route) {
                    link.routes.push(route.clone());
                }
            }
            Action::HoldL2 | Action::ReleaseL2 | Action::Announce { .. } => {}
        }
    }
}

/// The link-local address the model gives a device whose kernel generates one. Its exact
/// value does not matter: any generated address makes the port non-silent.
pub const MODEL_KERNEL_LINK_LOCAL: &str = "fe80::ff:fe00:1/64";

/// The kernel generates a link-local address when IPv6 is enabled on an up device with
/// address generation on.
fn kernel_autoconf(link: &mut LinkState) {
    let generates = link.ipv6.disable_ipv6 == 0 && link.ipv6.addr_gen_mode != ADDR_GEN_MODE_NONE;
    let has_link_local = link.addresses.iter().any(is_link_local);
    if generates && !has_link_local {
        link.addresses.push(MODEL_KERNEL_LINK_LOCAL.parse().expect("valid literal"));
    }
}

fn is_link_local(address: &IpNet) -> bool {
    matches!(address, IpNet::V6(v6) if v6.addr().segments()[0] & 0xffc0 == 0xfe80)
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::HoldL2 => write!(f, "hold the port at layer 2"),
            Action::ReleaseL2 => write!(f, "release the layer-2 hold"),
            Action::SetLinkDown => write!(f, "set link down"),
            Action::SetLinkUp => write!(f, "set link up"),
            Action::SetSysctl { sysctl, value } => write!(f, "set ipv6 {} = {value}", sysctl.key()),
            Action::DeleteAddress { address } => write!(f, "delete address {address}"),
            Action::AddAddress { address } => write!(f, "add address {address}"),
            Action::AddRoute { route } => match route.via {
                Some(via) => write!(f, "add route {} via {via}", route.destination),
                None => write!(f, "add route {} (on link)", route.destination),
            },
            Action::Announce { addresses } => {
                write!(f, "announce")?;
                for a in addresses {
                    write!(f, " {a}")?;
                }
                Ok(())
            }
        }
    }
}
