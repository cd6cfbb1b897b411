//! What each node is configured with: Neutron's keepalived.conf and hagw's routers.yaml.

use super::{ADVERT_INT, Base, FIP, GATEWAY_LLA, HA_DEV, KaLab, PRIMARY_VIP, VRID, Wiring};
use crate::gateway::{EXTERNAL_IP, GATEWAY_CIDR};
use crate::linuxbridge;

/// Neutron's keepalived.conf for the router on one node (`advert_int` shortened); an
/// IPv4-only router has no link-local VIP.
pub fn keepalived_conf(qg: &str, ipv4_only: bool) -> String {
    neutron_keepalived_conf(HA_DEV, qg, &[FIP], ipv4_only)
}

/// Neutron's keepalived.conf of a router whose HA device is `ha` and gateway `qg`, with these
/// floating IPs (`advert_int` shortened); an IPv4-only router has no link-local VIP.
pub fn neutron_keepalived_conf(ha: &str, qg: &str, fips: &[&str], ipv4_only: bool) -> String {
    let fips: String = fips.iter().map(|f| format!("        {f}/32 dev {qg} no_track\n")).collect();
    let lla = if ipv4_only {
        String::new()
    } else {
        format!("        {GATEWAY_LLA} dev {qg} scope link no_track\n")
    };
    format!(
        "global_defs {{\n    notification_email_from neutron@openstack.local\n    router_id neutron\n}}\n\
         vrrp_instance VR_{VRID} {{\n    state BACKUP\n    interface {ha}\n    virtual_router_id {VRID}\n    \
         priority 50\n    garp_master_delay 60\n    nopreempt\n    advert_int {ADVERT_INT}\n    \
         track_interface {{\n        {ha}\n    }}\n    virtual_ipaddress {{\n        {PRIMARY_VIP} dev {ha}\n    }}\n    \
         virtual_ipaddress_excluded {{\n        {GATEWAY_CIDR} dev {qg} no_track\n{fips}{lla}    }}\n    \
         virtual_routes {{\n        0.0.0.0/0 via {EXTERNAL_IP} dev {qg} no_track protocol static\n    }}\n}}\n"
    )
}

impl KaLab {
    pub(super) fn hagw_config(
        &self,
        index: usize,
        qrouter: &str,
        qg: &str,
        (router_id, ha_confs): (&str, &std::path::Path),
    ) -> String {
        let (ovsdb, backend, strategy) = match (&self.base, self.wiring) {
            (Base::Ovs(l), _) => {
                let node = &l.nodes[index - 1];
                (
                    format!("ovsdb: {}\n", node.ovs.endpoint()),
                    format!("{{ovs: {{port: {}}}}}", node.port),
                    self.strategy,
                )
            }
            (Base::Lb(_), Wiring::Linuxbridge) => (
                String::new(),
                format!(
                    "{{linuxbridge: {{port: {}, bridge: {}}}}}",
                    linuxbridge::TAP,
                    linuxbridge::BRQ
                ),
                self.strategy,
            ),
            (Base::Lb(_), _) => (String::new(), "generic".to_owned(), self.strategy),
        };
        let lla = if self.ipv4_only { String::new() } else { format!(", \"{GATEWAY_LLA}\"") };
        format!(
            "{ovsdb}routers:\n\
             \x20 - id: {router_id}\n\
             \x20   namespace: {qrouter}\n\
             \x20   gatewayDevice: {qg}\n\
             \x20   haDevice: {HA_DEV}\n\
             \x20   primaryVip: {PRIMARY_VIP}\n\
             \x20   gatewayAddresses: [{GATEWAY_CIDR}, {FIP}/32{lla}]\n\
             \x20   routes:\n\
             \x20     - destination: 0.0.0.0/0\n\
             \x20       via: {EXTERNAL_IP}\n\
             \x20   backend: {backend}\n\
             \x20   strategy: {strategy}\n\
             \x20   role: {{stateFile: {state}}}\n\
             \x20   keepalivedPidFile: {pid_file}\n",
            state = ha_confs.join(router_id).join("state").display(),
            pid_file = ha_confs.join(format!("{router_id}.pid.keepalived-vrrp")).display(),
        )
    }
}
