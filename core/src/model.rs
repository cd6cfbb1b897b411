//! Desired state of a router's gateway port, as written by an operator (YAML file, CRD) or
//! discovered from Neutron. One type serves every source, so the standalone file is a list of
//! the same specs the Kubernetes operator reads.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default time a standby must have been silent before a hold on it may be lifted. The kernel
/// retransmits MLD reports up to ~1 s after a flush and delays DAD by up to 1 s, so lifting a
/// hold right after silencing leaks one frame (measured in the testbed).
pub const DEFAULT_SILENCE_SETTLE_MS: u64 = 3000;

/// One HA router as hagw manages it on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouterSpec {
    /// Router id (Neutron's router UUID, or any name unique on this node).
    pub id: String,
    /// Network namespace holding the gateway port, e.g. `qrouter-<id>`.
    pub namespace: String,
    /// Gateway device inside `namespace`, e.g. `qg-1234abcd-56`.
    pub gateway_device: String,
    /// HA (VRRP) device inside `namespace`, e.g. `ha-1234abcd-56`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_device: Option<String>,
    /// keepalived's primary VIP on `haDevice` (Neutron: `169.254.0.<vrid>/24`). When set, the
    /// agent treats the router as primary exactly while this address is on the HA device —
    /// the earliest signal of a transition — and never releases a hold while it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub primary_vip: Option<IpNet>,
    /// Pid file of keepalived's VRRP process for this router (Neutron:
    /// `<state_path>/ha_confs/<id>.pid.keepalived-vrrp`). When set, the router is primary only
    /// while that process runs: a VIP or state file left behind by a keepalived that died is
    /// stale, and the port is held until keepalived runs again. hagw must see keepalived's
    /// processes (the same pid namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalived_pid_file: Option<PathBuf>,
    /// Addresses the gateway port carries on the primary only (gateway IPs, floating IPs,
    /// the IPv6 link-local VIP), in CIDR notation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub gateway_addresses: Vec<IpNet>,
    /// Routes through the gateway port that must exist on the primary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    /// How the port is attached at layer 2, which decides how it can be held.
    #[serde(default)]
    pub backend: L2BackendSpec,
    /// How a standby is kept from transmitting.
    #[serde(default)]
    pub strategy: Strategy,
    /// Gratuitous ARP / unsolicited NA schedule after a takeover.
    #[serde(default)]
    pub announce: AnnounceSchedule,
    /// Where this node's role for the router comes from.
    pub role: RoleSource,
    /// How long (ms) a standby must have been silent before a hold on it may be lifted.
    #[serde(default = "default_settle_ms")]
    pub silence_settle_ms: u64,
}

fn default_settle_ms() -> u64 {
    DEFAULT_SILENCE_SETTLE_MS
}

impl RouterSpec {
    pub fn silence_settle(&self) -> Duration {
        Duration::from_millis(self.silence_settle_ms)
    }

    /// Whether any IPv6 address belongs on the primary: only then does the primary need IPv6
    /// enabled and forwarding on (forwarding joins the all-routers group, which is noise we
    /// avoid when it serves nothing).
    pub fn serves_ipv6(&self) -> bool {
        self.gateway_addresses.iter().any(|a| matches!(a, IpNet::V6(_)))
    }
}

/// A route through the gateway port.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// Destination in CIDR notation, `0.0.0.0/0` for the default route.
    #[schemars(with = "String")]
    pub destination: IpNet,
    /// Next hop; absent for an on-link route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub via: Option<IpAddr>,
}

/// How the gateway port is attached at layer 2.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum L2BackendSpec {
    /// Nothing known about the switch side: only `link-down` and `silence-only` are possible.
    /// The port is held inside the router namespace instead (netfilter by device name).
    #[default]
    Generic,
    /// An Open vSwitch port (Neutron ML2/OVS). `port` defaults to the gateway device name.
    Ovs {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
    },
    /// A Linux bridge port (Neutron ML2/Linuxbridge): `port` is the bridge-side device (the
    /// `tap…` end of the gateway veth) in hagw's own namespace, `bridge` its `brq…` bridge.
    Linuxbridge { port: String, bridge: String },
}

impl L2BackendSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            L2BackendSpec::Generic => "generic",
            L2BackendSpec::Ovs { .. } => "ovs",
            L2BackendSpec::Linuxbridge { .. } => "linuxbridge",
        }
    }

    /// Whether the hold sits on the switch, behind the gateway device: what the device
    /// transmits (its tx counter) reaches the hold and is dropped there (OVS, Linux bridge).
    /// The generic backend holds with netfilter inside the router namespace, in front of
    /// the device: what the device counts as transmitted has passed that hold.
    pub fn holds_behind_the_device(&self) -> bool {
        !matches!(self, L2BackendSpec::Generic)
    }
}

/// How a standby's gateway port is kept from transmitting. Every strategy also silences IPv6
/// on the standby (no addresses, no link-local generation, no RA, no forwarding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Hold the port at layer 2 (OVS dead VLAN, Linux bridge filter); the link stays up.
    #[default]
    L2Hold,
    /// Keep the gateway link administratively down on the standby.
    LinkDown,
    /// Rely on IPv6 silence alone; the port stays up and wired.
    SilenceOnly,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::L2Hold => "l2-hold",
            Strategy::LinkDown => "link-down",
            Strategy::SilenceOnly => "silence-only",
        }
    }
}

/// Gratuitous ARP / unsolicited NA rounds after a takeover: one round at once, then
/// `repeats` more, `intervalMs` apart (default: at once, then every 1 s for 5 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnnounceSchedule {
    #[serde(default = "default_repeats")]
    pub repeats: u32,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
}

fn default_repeats() -> u32 {
    5
}

fn default_interval_ms() -> u64 {
    1000
}

impl Default for AnnounceSchedule {
    fn default() -> Self {
        AnnounceSchedule { repeats: default_repeats(), interval_ms: default_interval_ms() }
    }
}

/// Extra rounds right after the first (ms after it): a frame lost while the switch is still
/// applying a release, or while the ToR is busy, then costs milliseconds instead of a whole
/// `intervalMs`. Only those before the first regular round are sent.
pub const ANNOUNCE_BURST_MS: [u64; 3] = [10, 50, 200];

impl AnnounceSchedule {
    /// When the rounds after the first are due, as offsets from the first: the burst
    /// ([`ANNOUNCE_BURST_MS`] below `interval_ms`), then `repeats` rounds `interval_ms` apart.
    /// None when `repeats` is 0 (one round only).
    pub fn later_rounds(&self) -> Vec<Duration> {
        if self.repeats == 0 {
            return Vec::new();
        }
        let interval = self.interval_ms;
        let burst = ANNOUNCE_BURST_MS.into_iter().filter(|ms| *ms < interval);
        let regular = (1..=u64::from(self.repeats)).map(|k| k * interval);
        burst.chain(regular).map(Duration::from_millis).collect()
    }
}

/// Where the role of this node for a router comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum RoleSource {
    /// A fixed role, for nodes managed by hand or by another controller.
    Fixed(Role),
    /// Neutron's `ha_confs/<router_id>/state` file (`primary`, `master` or `backup`).
    StateFile(#[schemars(with = "String")] PathBuf),
}

/// This node's role for a router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Primary,
    Standby,
    /// Not known (missing or unreadable state): handled exactly like standby.
    Unknown,
}

impl Role {
    /// Whether the port must be kept silent: anything but a known primary.
    pub fn is_standby(self) -> bool {
        !matches!(self, Role::Primary)
    }

    /// Parses the words Neutron's state file holds (`primary`, older `master`, `backup`).
    pub fn from_state_word(word: &str) -> Option<Role> {
        match word.trim() {
            "primary" | "master" => Some(Role::Primary),
            "backup" | "standby" => Some(Role::Standby),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Unknown => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn the_schedule_is_dense_right_after_the_first_round() {
        let default = AnnounceSchedule::default();
        assert_eq!(default.later_rounds(), ms(&[10, 50, 200, 1000, 2000, 3000, 4000, 5000]));
        let short = AnnounceSchedule { repeats: 2, interval_ms: 50 };
        assert_eq!(short.later_rounds(), ms(&[10, 50, 100]), "burst rounds before the first");
        let once = AnnounceSchedule { repeats: 0, interval_ms: 1000 };
        assert_eq!(once.later_rounds(), ms(&[]), "repeats 0: the first round only");
    }
}
