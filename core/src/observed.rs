//! Observed state of a gateway port, as the backends read it from the kernel and the switch.

use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use crate::action::Action;

use crate::model::RouteSpec;

/// `addr_gen_mode` value that makes the kernel generate no link-local address.
pub const ADDR_GEN_MODE_NONE: u32 = 1;

/// What the backends see of one gateway port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortState {
    /// The gateway device in the router namespace; `None` while it does not exist.
    pub link: Option<LinkState>,
    /// The switch side of the port.
    pub l2: L2State,
}

/// The kernel side of the gateway device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkState {
    /// IFF_UP: the device may transmit.
    pub admin_up: bool,
    /// Carrier and operational state.
    pub oper_up: bool,
    /// Every address on the device, IPv6 link-local included.
    pub addresses: Vec<IpNet>,
    pub ipv6: Ipv6Conf,
    /// Routes in the main table whose output device is the gateway device.
    pub routes: Vec<RouteSpec>,
    pub counters: LinkCounters,
}

/// The per-device IPv6 sysctls that decide whether the kernel originates IPv6 traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ipv6Conf {
    pub addr_gen_mode: u32,
    pub accept_ra: u32,
    pub forwarding: u32,
    pub disable_ipv6: u32,
}

impl Ipv6Conf {
    pub fn get(&self, sysctl: Ipv6Sysctl) -> u32 {
        match sysctl {
            Ipv6Sysctl::AddrGenMode => self.addr_gen_mode,
            Ipv6Sysctl::AcceptRa => self.accept_ra,
            Ipv6Sysctl::Forwarding => self.forwarding,
            Ipv6Sysctl::DisableIpv6 => self.disable_ipv6,
        }
    }

    pub fn set(&mut self, sysctl: Ipv6Sysctl, value: u32) {
        match sysctl {
            Ipv6Sysctl::AddrGenMode => self.addr_gen_mode = value,
            Ipv6Sysctl::AcceptRa => self.accept_ra = value,
            Ipv6Sysctl::Forwarding => self.forwarding = value,
            Ipv6Sysctl::DisableIpv6 => self.disable_ipv6 = value,
        }
    }
}

/// The IPv6 sysctls hagw manages, under `net.ipv6.conf.<device>.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ipv6Sysctl {
    AddrGenMode,
    AcceptRa,
    Forwarding,
    DisableIpv6,
}

impl Ipv6Sysctl {
    pub const ALL: [Ipv6Sysctl; 4] = [
        Ipv6Sysctl::AddrGenMode,
        Ipv6Sysctl::AcceptRa,
        Ipv6Sysctl::Forwarding,
        Ipv6Sysctl::DisableIpv6,
    ];

    /// The file name under `/proc/sys/net/ipv6/conf/<device>/`.
    pub fn key(self) -> &'static str {
        match self {
            Ipv6Sysctl::AddrGenMode => "addr_gen_mode",
            Ipv6Sysctl::AcceptRa => "accept_ra",
            Ipv6Sysctl::Forwarding => "forwarding",
            Ipv6Sysctl::DisableIpv6 => "disable_ipv6",
        }
    }
}

/// Transmit/receive counters of the gateway device, for the leak alarm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkCounters {
    pub tx_packets: u64,
    pub rx_packets: u64,
}

/// Whether the switch side of the port is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldState {
    /// Frames from the port cannot reach the uplink (generic backend: the kernel sends
    /// nothing out of the device; only packet sockets bypass that hold).
    Held,
    /// One half of a two-part hold is in place (OVS: the dead-VLAN triple or OpenFlow
    /// `no-receive`, not both, typically after the OVS agent's retag or an ovs-vswitchd
    /// restart). Either half keeps the port's frames off the uplink, so it counts as held;
    /// a standby completes it, a primary releases both halves.
    Partial,
    /// The port forwards normally.
    Released,
    /// The backend cannot hold (generic backend on a kernel without nf_tables).
    Unsupported,
    /// The port was not found on the switch side, or its state is unreadable: treated as
    /// not held.
    Unknown,
}

impl HoldState {
    /// Frames from the port are kept off the uplink (fully or partially held).
    pub fn is_held(self) -> bool {
        matches!(self, HoldState::Held | HoldState::Partial)
    }
}

/// The switch side of the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct L2State {
    pub hold: HoldState,
    /// The L2 agent has wired the port (OVS: a real local VLAN is known; Linux bridge: the
    /// port is in its bridge). Releasing a hold needs this.
    pub wired: bool,
}

impl PortState {
    /// The port can put frames on the wire: its link is up and nothing holds it at layer 2.
    pub fn is_exposed(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.admin_up) && !self.l2.hold.is_held()
    }

    /// The kernel will originate nothing from the port: no addresses at all (so no DAD, MLD
    /// or ARP replies), no link-local generation, no RA processing, no IPv6 forwarding. A
    /// missing device is silent.
    pub fn is_silent(&self) -> bool {
        self.link.as_ref().is_none_or(LinkState::is_silent)
    }

    /// Silent once `failed` (steps that could not be applied, e.g. sysctls on a read-only
    /// `/proc/sys`) are counted as if they had taken effect: as silent as the port can be
    /// made. Only a hand-back ([`Observed::hand_back`]) settles for this.
    pub fn is_silent_but_for(&self, failed: &[Action]) -> bool {
        let mut port = self.clone();
        for action in failed {
            action.apply_to(&mut port);
        }
        port.is_silent()
    }
}

impl LinkState {
    pub fn is_silent(&self) -> bool {
        self.addresses.is_empty()
            && self.ipv6.addr_gen_mode == ADDR_GEN_MODE_NONE
            && self.ipv6.accept_ra == 0
            && self.ipv6.forwarding == 0
    }
}

/// Everything the planner knows: the port plus what the reconcile loop remembers about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observed {
    pub port: PortState,
    /// How long the port has been continuously observed silent (zero if it is not).
    pub silent_for: Duration,
    /// This node became primary and has not announced the gateway addresses yet.
    pub announce_pending: bool,
    /// Steps that failed earlier in the current pass (in a hand-back, side settings that
    /// failed in any of its passes): the planner leaves them out and plans what follows as if
    /// they had not been taken (no announcement behind a failed release).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_steps: Vec<Action>,
    /// Addresses an earlier spec of this router put on the gateway that the current one no
    /// longer lists (Neutron removed a floating IP): a primary deletes them, never announces
    /// them, and so never brings back what Neutron removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retired_addresses: Vec<IpNet>,
    /// The spec is not confirmed by its source yet (a discovered router cached from before a
    /// restart, until Neutron's files are read again) and may be stale: only a standby's
    /// exposure is closed, nothing is released, added or announced from it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hold_only: bool,
    /// The port is being handed back (its router leaves the node, `helm uninstall`, `hagw
    /// release`): nobody will manage it afterwards, so a standby's guards are lifted once it
    /// is as silent as it can be made — what could not be applied (`failed_steps`) is
    /// reported, not waited for — since a port held with no agent left is dark when
    /// keepalived promotes it. A primary is served as usual.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hand_back: bool,
}
