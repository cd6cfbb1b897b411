//! Turns one router directory into a [`NeutronRouter`]: reads its keepalived.conf, picks the
//! VRRP instance that manages the gateway, and fills in what the conf cannot say from the
//! [`NeutronDefaults`].

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::instance::{Vip, VirtualRoute, VrrpInstance};
use super::keepalived::{self, ConfError};
use super::{
    BackendDefault, BridgeLookup, DiscoveryError, NamespacePolicy, NeutronDefaults, NeutronRouter,
};
use crate::config::validate_router;
use crate::model::{L2BackendSpec, RoleSource, RouteSpec, RouterSpec};

/// Neutron's device prefixes: gateway, and the SNAT-side internal ports of DVR routers.
const GATEWAY_PREFIX: &str = "qg-";
/// Neutron's pid file of a router's keepalived VRRP process: `ha_confs/<id>` + this.
const PID_SUFFIX: &str = ".pid.keepalived-vrrp";
const SNAT_INTERNAL_PREFIX: &str = "sg-";

pub(super) fn load(
    id: &str,
    dir: &Path,
    defaults: &NeutronDefaults,
) -> Result<NeutronRouter, DiscoveryError> {
    let conf = dir.join("keepalived.conf");
    let conf_error = |line: Option<usize>, message: String| DiscoveryError::Conf {
        router_id: id.to_string(),
        file: conf.clone(),
        line,
        message,
    };
    let from_conf = |e: ConfError| conf_error(Some(e.line), e.message);
    let text = match std::fs::read_to_string(&conf) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DiscoveryError::NotReady { router_id: id.to_string(), conf });
        }
        Err(e) => return Err(conf_error(None, format!("cannot read: {e}"))),
    };
    let statements = keepalived::parse(&text).map_err(from_conf)?;
    let instances = VrrpInstance::all(&statements).map_err(from_conf)?;
    if instances.is_empty() {
        return Err(conf_error(None, "expected a `vrrp_instance` block".into()));
    }
    let mut managing = Vec::new();
    for instance in &instances {
        if let Some(device) = gateway_device(instance).map_err(from_conf)? {
            managing.push((instance, device));
        }
    }
    let (instance, gateway) = match managing.as_slice() {
        [] => return Err(DiscoveryError::NoGateway { router_id: id.to_string(), file: conf }),
        [one] => *one,
        [_, (second, _), ..] => {
            return Err(conf_error(
                Some(second.line),
                format!(
                    "`vrrp_instance {}` is a second instance with a `qg-` device; expected \
                     one per router",
                    second.name
                ),
            ));
        }
    };

    let backend = backend(id, gateway, &defaults.backend)?;
    let spec = RouterSpec {
        id: id.to_string(),
        namespace: namespace(id, instance, defaults.namespace),
        gateway_device: gateway.to_string(),
        ha_device: Some(instance.interface.clone()),
        primary_vip: primary_vip(instance),
        keepalived_pid_file: dir
            .parent()
            .map(|ha_confs| ha_confs.join(format!("{id}{PID_SUFFIX}"))),
        gateway_addresses: gateway_addresses(instance, gateway),
        routes: routes(instance, gateway),
        backend,
        strategy: defaults.strategy,
        announce: defaults.announce,
        role: RoleSource::StateFile(dir.join("state")),
        silence_settle_ms: defaults.silence_settle_ms,
    };
    validate_router(&spec).map_err(|(field, message)| {
        conf_error(None, format!("the spec built from it is invalid: `{field}`: {message}"))
    })?;
    Ok(NeutronRouter { spec, vrid: instance.vrid, conf })
}

/// The device an address entry lands on: keepalived uses the instance's interface when the
/// entry names none.
fn vip_device<'a>(instance: &'a VrrpInstance, vip: &'a Vip) -> &'a str {
    vip.dev.as_deref().unwrap_or(&instance.interface)
}

fn all_vips(instance: &VrrpInstance) -> impl Iterator<Item = &Vip> {
    instance.vips.iter().chain(&instance.excluded)
}

/// Every device the instance names, with the line naming it.
fn devices(instance: &VrrpInstance) -> impl Iterator<Item = (&str, usize)> {
    let addresses = all_vips(instance).map(|v| (vip_device(instance, v), v.line));
    let routes = instance.routes.iter().filter_map(|r| Some((r.dev.as_deref()?, r.line)));
    addresses.chain(routes)
}

/// The one `qg-` device of an instance, if it has one.
fn gateway_device(instance: &VrrpInstance) -> Result<Option<&str>, ConfError> {
    let mut found: Option<&str> = None;
    for (device, line) in devices(instance).filter(|(d, _)| d.starts_with(GATEWAY_PREFIX)) {
        match found {
            None => found = Some(device),
            Some(first) if first != device => {
                return Err(ConfError {
                    line,
                    message: format!(
                        "second gateway device `{device}` (already have `{first}`); expected \
                         one per router"
                    ),
                });
            }
            Some(_) => {}
        }
    }
    Ok(found)
}

fn namespace(id: &str, instance: &VrrpInstance, policy: NamespacePolicy) -> String {
    let snat = match policy {
        NamespacePolicy::Qrouter => false,
        NamespacePolicy::Snat => true,
        NamespacePolicy::Detect => {
            devices(instance).any(|(d, _)| d.starts_with(SNAT_INTERNAL_PREFIX))
        }
    };
    if snat { format!("snat-{id}") } else { format!("qrouter-{id}") }
}

/// The first address keepalived puts on the HA device: Neutron's `169.254.0.<vrid>/24`.
fn primary_vip(instance: &VrrpInstance) -> Option<IpNet> {
    instance.vips.iter().find(|v| vip_device(instance, v) == instance.interface).map(|v| v.address)
}

fn gateway_addresses(instance: &VrrpInstance, gateway: &str) -> Vec<IpNet> {
    let mut addresses = Vec::new();
    for vip in all_vips(instance).filter(|v| vip_device(instance, v) == gateway) {
        if !addresses.contains(&vip.address) {
            addresses.push(vip.address);
        }
    }
    addresses
}

/// Routes through the gateway: those naming the `qg-` device, and those naming no device
/// whose next hop is on a gateway subnet only. Neutron writes extra routes without `dev`,
/// and a next hop on an internal (`qr-`/`sg-`) subnet, or on a link-local prefix every
/// device shares, does not go through the gateway port.
fn routes(instance: &VrrpInstance, gateway: &str) -> Vec<RouteSpec> {
    let on_gateway_subnet = |via: IpAddr| {
        let mut devices = all_vips(instance)
            .filter(|v| v.address.contains(&via))
            .map(|v| vip_device(instance, v))
            .peekable();
        devices.peek().is_some() && devices.all(|d| d == gateway)
    };
    let through_gateway = |route: &&VirtualRoute| match (&route.dev, route.via) {
        (Some(dev), _) => dev == gateway,
        (None, Some(via)) => on_gateway_subnet(via),
        (None, None) => false,
    };
    let mut routes = Vec::new();
    for route in instance.routes.iter().filter(through_gateway) {
        let spec = RouteSpec { destination: route.destination, via: route.via };
        if !routes.contains(&spec) {
            routes.push(spec);
        }
    }
    routes
}

fn backend(
    id: &str,
    gateway: &str,
    default: &BackendDefault,
) -> Result<L2BackendSpec, DiscoveryError> {
    Ok(match default {
        BackendDefault::Ovs => L2BackendSpec::Ovs { port: None },
        BackendDefault::Generic => L2BackendSpec::Generic,
        BackendDefault::Linuxbridge(lookup) => {
            // Both veth ends carry the port id's first 11 characters after their prefix.
            let port = format!("tap{}", &gateway[GATEWAY_PREFIX.len()..]);
            let bridge = bridge(&port, lookup).map_err(|message| DiscoveryError::Backend {
                router_id: id.to_string(),
                message: format!("linuxbridge: cannot find the bridge of `{port}`: {message}"),
            })?;
            L2BackendSpec::Linuxbridge { port, bridge }
        }
    })
}

fn bridge(port: &str, lookup: &BridgeLookup) -> Result<String, String> {
    match lookup {
        BridgeLookup::Fixed(bridge) => Ok(bridge.clone()),
        BridgeLookup::Sysfs(dir) => {
            let master: PathBuf = dir.join(port).join("master");
            let target = std::fs::read_link(&master).map_err(|e| {
                format!("{}: {e} (not plugged into a bridge yet?)", master.display())
            })?;
            target.file_name().and_then(|n| n.to_str()).map(str::to_string).ok_or_else(|| {
                format!("{}: unexpected target {}", master.display(), target.display())
            })
        }
    }
}
