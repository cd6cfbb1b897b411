//! The meaning of a `vrrp_instance` block: which device carries VRRP, the virtual router id,
//! and the addresses and routes keepalived adds on the primary. Only what hagw needs is
//! read; every other keyword (priority, authentication, track_script, …) is ignored so that
//! options added by other Neutron releases or by hand do not break discovery.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use super::keepalived::{ConfError, Statement};

/// An entry of `virtual_ipaddress` or `virtual_ipaddress_excluded`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub line: usize,
    /// Address with its prefix length (a bare address is a host prefix, as in keepalived).
    pub address: IpNet,
    /// `dev …`; keepalived puts the address on the instance's `interface` when absent.
    pub dev: Option<String>,
}

/// An entry of `virtual_routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualRoute {
    pub line: usize,
    pub destination: IpNet,
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
}

/// What one `vrrp_instance` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpInstance {
    pub line: usize,
    /// The instance name, `VR_<vrid>` in Neutron's files.
    pub name: String,
    /// `interface`: the device VRRP adverts go out of (Neutron: `ha-…`).
    pub interface: String,
    pub vrid: u8,
    /// `virtual_ipaddress`: tracked addresses; Neutron puts only the primary VIP here.
    pub vips: Vec<Vip>,
    /// `virtual_ipaddress_excluded`: addresses not carried in adverts (gateway, FIPs, …).
    pub excluded: Vec<Vip>,
    pub routes: Vec<VirtualRoute>,
}

/// Options of address and route entries that take a value, so the value is not mistaken
/// for a keyword. Flags (`no_track`, `onlink`, `home`, …) need no listing.
const VALUE_OPTIONS: &[&str] = &[
    "scope",
    "label",
    "brd",
    "broadcast",
    "track_group",
    "preferred_lft",
    "peer",
    "src",
    "or",
    "table",
    "metric",
    "protocol",
    "realms",
    "mtu",
    "advmss",
    "rtt",
    "rttvar",
    "reordering",
    "window",
    "cwnd",
    "ssthresh",
    "rto_min",
    "initcwnd",
    "initrwnd",
    "features",
    "quickack",
    "congctl",
    "pref",
    "tos",
    "dsfield",
    "expires",
];

/// Route types keepalived accepts before the destination; such routes use no device.
const ROUTE_TYPES: &[&str] =
    &["unicast", "blackhole", "unreachable", "prohibit", "throw", "local", "broadcast"];

impl VrrpInstance {
    /// Every `vrrp_instance` among the top-level statements, in file order.
    pub fn all(statements: &[Statement]) -> Result<Vec<VrrpInstance>, ConfError> {
        statements
            .iter()
            .filter(|s| s.keyword() == "vrrp_instance")
            .map(VrrpInstance::from_statement)
            .collect()
    }

    fn from_statement(statement: &Statement) -> Result<VrrpInstance, ConfError> {
        let name = statement.args().first().cloned().ok_or_else(|| ConfError {
            line: statement.line,
            message: "expected a name after `vrrp_instance`".into(),
        })?;
        let body = statement.block.as_deref().ok_or_else(|| ConfError {
            line: statement.line,
            message: format!("expected `{{` after `vrrp_instance {name}`"),
        })?;
        let missing = |keyword: &str| ConfError {
            line: statement.line,
            message: format!("expected `{keyword}` in `vrrp_instance {name}`"),
        };
        let (mut interface, mut vrid) = (None, None);
        let (mut vips, mut excluded, mut routes) = (Vec::new(), Vec::new(), Vec::new());
        for item in body {
            match item.keyword() {
                "interface" => interface = Some(single_arg(item)?.to_string()),
                "virtual_router_id" => vrid = Some(parse_vrid(item)?),
                "virtual_ipaddress" => vips = entries(item, parse_vip)?,
                "virtual_ipaddress_excluded" => excluded = entries(item, parse_vip)?,
                "virtual_routes" => routes = entries(item, parse_route)?,
                _ => {}
            }
        }
        Ok(VrrpInstance {
            line: statement.line,
            interface: interface.ok_or_else(|| missing("interface"))?,
            vrid: vrid.ok_or_else(|| missing("virtual_router_id"))?,
            name,
            vips,
            excluded,
            routes,
        })
    }
}

fn single_arg(statement: &Statement) -> Result<&str, ConfError> {
    match statement.args() {
        [arg] => Ok(arg),
        _ => Err(ConfError {
            line: statement.line,
            message: format!("expected exactly one value after `{}`", statement.keyword()),
        }),
    }
}

fn parse_vrid(statement: &Statement) -> Result<u8, ConfError> {
    let value = single_arg(statement)?;
    value.parse::<u8>().ok().filter(|v| *v >= 1).ok_or_else(|| ConfError {
        line: statement.line,
        message: format!("expected a virtual_router_id from 1 to 255, found `{value}`"),
    })
}

/// The entries of a block such as `virtual_ipaddress { … }`, one per line.
fn entries<T>(
    statement: &Statement,
    parse: fn(&Statement) -> Result<T, ConfError>,
) -> Result<Vec<T>, ConfError> {
    let block = statement.block.as_deref().ok_or_else(|| ConfError {
        line: statement.line,
        message: format!("expected `{{` after `{}`", statement.keyword()),
    })?;
    block.iter().map(parse).collect()
}

fn parse_net(word: &str, line: usize, what: &str) -> Result<IpNet, ConfError> {
    IpNet::from_str(word)
        .or_else(|_| IpAddr::from_str(word).map(IpNet::from))
        .map_err(|_| ConfError { line, message: format!("expected {what}, found `{word}`") })
}

fn parse_addr(word: Option<&String>, line: usize, after: &str) -> Result<IpAddr, ConfError> {
    let word = word.ok_or_else(|| ConfError {
        line,
        message: format!("expected an address after `{after}`"),
    })?;
    IpAddr::from_str(word).map_err(|_| ConfError {
        line,
        message: format!("expected an address after `{after}`, found `{word}`"),
    })
}

/// Reads `dev` and `via`/`gw` from the options after an entry's address, skipping the
/// values of other options.
fn options(words: &[String], line: usize) -> Result<(Option<String>, Option<IpAddr>), ConfError> {
    let mut dev = None;
    let mut via = None;
    let mut rest = words.iter();
    while let Some(word) = rest.next() {
        match word.as_str() {
            "dev" => {
                let name = rest.next().ok_or_else(|| ConfError {
                    line,
                    message: "expected a device name after `dev`".into(),
                })?;
                dev = Some(name.clone());
            }
            "via" | "gw" => via = Some(parse_addr(rest.next(), line, word)?),
            option if VALUE_OPTIONS.contains(&option) => {
                rest.next();
            }
            _ => {}
        }
    }
    Ok((dev, via))
}

fn parse_vip(entry: &Statement) -> Result<Vip, ConfError> {
    let address = parse_net(entry.keyword(), entry.line, "an address in CIDR notation")?;
    if entry.block.is_some() {
        return Err(ConfError {
            line: entry.line,
            message: "unexpected `{` after an address".into(),
        });
    }
    let (dev, _) = options(entry.args(), entry.line)?;
    Ok(Vip { line: entry.line, address, dev })
}

fn parse_route(entry: &Statement) -> Result<VirtualRoute, ConfError> {
    if entry.block.is_some() {
        return Err(ConfError { line: entry.line, message: "unexpected `{` after a route".into() });
    }
    let mut words = entry.words.as_slice();
    // `[src ADDR] [TYPE] [to] DESTINATION …`
    if let [src, _, tail @ ..] = words
        && src == "src"
    {
        words = tail;
    }
    if let [kind, tail @ ..] = words
        && ROUTE_TYPES.contains(&kind.as_str())
    {
        words = tail;
    }
    if let [to, tail @ ..] = words
        && to == "to"
    {
        words = tail;
    }
    let [destination, tail @ ..] = words else {
        return Err(ConfError { line: entry.line, message: "expected a route destination".into() });
    };
    let destination = parse_net(destination, entry.line, "a route destination in CIDR notation")?;
    let (dev, via) = options(tail, entry.line)?;
    if let Some(via) = via
        && via.is_ipv4() != destination.addr().is_ipv4()
    {
        return Err(ConfError {
            line: entry.line,
            message: format!("route to {destination} via {via} mixes IPv4 and IPv6"),
        });
    }
    Ok(VirtualRoute { line: entry.line, destination, via, dev })
}

#[cfg(test)]
mod tests {
    use super::super::keepalived::parse;
    use super::*;

    fn instance(body: &str) -> Result<VrrpInstance, ConfError> {
        let tree = parse(&format!("vrrp_instance VR_7 {{\n{body}\n}}\n"))?;
        VrrpInstance::all(&tree).map(|mut all| all.remove(0))
    }

    #[test]
    fn reads_entries_and_ignores_unknown_keywords() {
        let i = instance(
            "interface ha-1\nvirtual_router_id 7\nfancy_new_option 3 { x }\n\
             virtual_ipaddress {\n 169.254.0.7/24 dev ha-1\n}\n\
             virtual_ipaddress_excluded {\n 10.0.0.5 label x dev qg-1 no_track\n}\n\
             virtual_routes {\n src 10.0.0.5 to 0.0.0.0/0 gw 10.0.0.1 dev qg-1 table 5\n\
             blackhole 192.0.2.0/24\n}",
        )
        .unwrap();
        assert_eq!((instance_key(&i)), ("VR_7", "ha-1", 7));
        assert_eq!(i.vips[0].address.to_string(), "169.254.0.7/24");
        assert_eq!(i.excluded[0].address.to_string(), "10.0.0.5/32");
        assert_eq!(i.excluded[0].dev.as_deref(), Some("qg-1"));
        assert_eq!(i.routes[0].destination.to_string(), "0.0.0.0/0");
        assert_eq!(i.routes[0].via, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(i.routes[1].dev, None);
        assert_eq!(i.routes[1].via, None);
    }

    fn instance_key(i: &VrrpInstance) -> (&str, &str, u8) {
        (&i.name, &i.interface, i.vrid)
    }

    #[test]
    fn requires_interface_and_vrid() {
        let err = instance("virtual_router_id 7").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.message.contains("expected `interface`"), "{err}");
        let err = instance("interface ha-1").unwrap_err();
        assert!(err.message.contains("expected `virtual_router_id`"), "{err}");
        let err = instance("interface ha-1\nvirtual_router_id 0").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("from 1 to 255"), "{err}");
    }

    #[test]
    fn names_the_line_of_a_bad_entry() {
        let err = instance(
            "interface ha-1\nvirtual_router_id 7\nvirtual_ipaddress_excluded {\n\
             10.0.0.5/24 dev qg-1\n 10.0.0.999/24 dev qg-1\n}",
        )
        .unwrap_err();
        assert_eq!(err.line, 6);
        assert!(err.message.contains("`10.0.0.999/24`"), "{err}");
        let err = instance("virtual_routes {\n 0.0.0.0/0 via 2001:db8::1 dev qg-1\n}").unwrap_err();
        assert!(err.message.contains("mixes IPv4 and IPv6"), "{err}");
        let err = instance("virtual_routes {\n 0.0.0.0/0 via\n}").unwrap_err();
        assert!(err.message.contains("expected an address after `via`"), "{err}");
    }
}
