//! The smallest topology with the bug in it: a ToR bridge, one node's router namespace whose
//! gateway veth plugs straight into a ToR port, and an external host on the ToR.

use anyhow::Result;

use crate::lab::Lab;

/// MAC of the gateway port; with Neutron it is the same on every node.
pub const GATEWAY_MAC: &str = "fa:16:3e:00:00:01";
/// The external host, which also acts as the upstream gateway.
pub const EXTERNAL_IP: &str = "203.0.113.1";
pub const GATEWAY_CIDR: &str = "203.0.113.10/24";
pub const GATEWAY_IP: &str = "203.0.113.10";

pub struct GatewayLab {
    pub lab: Lab,
    pub tor: String,
    pub qrouter: String,
    pub external: String,
    /// Gateway device in `qrouter`.
    pub qg: String,
    /// The ToR port facing the node.
    pub tor_port: String,
}

impl GatewayLab {
    /// Builds the topology; the gateway port exists, down, with kernel defaults.
    pub fn build() -> Result<GatewayLab> {
        let mut lab = Lab::new()?;
        let tor = lab.netns("tor")?;
        let qrouter = lab.netns("qrouter")?;
        let external = lab.netns("ext")?;
        let id = lab.id.clone();
        let qg = format!("qg-{id}");
        let tor_port = format!("t1-{id}");
        lab.bridge(&tor, "br-tor")?;
        lab.veth((&qrouter, &qg), (&tor, &tor_port))?;
        lab.exec(&qrouter, &format!("ip link set {qg} address {GATEWAY_MAC}"))?;
        lab.attach(&tor, &tor_port, "br-tor")?;
        lab.veth((&external, "eth0"), (&tor, &format!("te-{id}")))?;
        lab.attach(&tor, &format!("te-{id}"), "br-tor")?;
        lab.exec(
            &external,
            &format!("ip addr add {EXTERNAL_IP}/24 dev eth0 && ip link set eth0 up"),
        )?;
        Ok(GatewayLab { lab, tor, qrouter, external, qg, tor_port })
    }

    /// A routers.yaml for this lab's gateway with the given strategy and role state file.
    pub fn config(&self, strategy: &str, state_file: &std::path::Path) -> String {
        format!(
            "routers:\n\
             \x20 - id: r-{id}\n\
             \x20   namespace: {ns}\n\
             \x20   gatewayDevice: {qg}\n\
             \x20   gatewayAddresses: [{GATEWAY_CIDR}, \"2001:db8::10/64\"]\n\
             \x20   routes:\n\
             \x20     - destination: 0.0.0.0/0\n\
             \x20       via: {EXTERNAL_IP}\n\
             \x20   strategy: {strategy}\n\
             \x20   announce: {{repeats: 0}}\n\
             \x20   silenceSettleMs: 500\n\
             \x20   role: {{stateFile: {state}}}\n",
            id = self.lab.id,
            ns = self.qrouter,
            qg = self.qg,
            state = state_file.display(),
        )
    }

    /// What the emulated L3 agent does to a gateway port on a node that boots: link up,
    /// wait for the kernel's link-local address (if it makes one), flush IPv6 addresses.
    pub fn l3_agent_plug(&self) -> Result<()> {
        let qg = &self.qg;
        self.lab.exec(&self.qrouter, &format!("ip link set {qg} up"))?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        self.lab.exec(&self.qrouter, &format!("ip -6 addr flush dev {qg}"))?;
        Ok(())
    }

    /// Adds the router's HA device (`ha-<id>`, a veth, up) to the router namespace, for
    /// keepalived's primary VIP; returns its name.
    pub fn add_ha_device(&self) -> Result<String> {
        let ha = format!("ha-{}", self.lab.id);
        self.lab.exec(
            &self.qrouter,
            &format!(
                "ip link add {ha} type veth peer name hp-{} && ip link set {ha} up",
                self.lab.id
            ),
        )?;
        Ok(ha)
    }

    /// `ip -o link` / `ip -o addr` output of the gateway device.
    pub fn gateway(&self, what: &str) -> Result<String> {
        self.lab.exec(&self.qrouter, &format!("ip -o {what} show dev {}", self.qg))
    }

    pub fn sysctl(&self, key: &str) -> Result<String> {
        let path = format!("/proc/sys/net/ipv6/conf/{}/{key}", self.qg);
        Ok(self.lab.exec(&self.qrouter, &format!("cat {path}"))?.trim().to_string())
    }
}
