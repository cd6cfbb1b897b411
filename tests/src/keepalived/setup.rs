//! Building the testbed: the remote network, the HA network, the MLD querier, the nodes, and
//! plugging each router the way Neutron's agents do.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{Base, HA_DEV, KaLab, KaNode, REMOTE_IP, ROUTER_ID, Rng, keepalived_conf};
use crate::linuxbridge;

impl KaLab {
    pub(super) fn build_rest(&mut self) -> Result<()> {
        let tor = self.tor.clone();
        let ext = self.external.clone();
        // The remote network beyond the upstream gateway.
        self.remote = self.lab_mut().netns("rm")?;
        let remote = self.remote.clone();
        let lab = self.lab();
        lab.veth((&ext, "eth1"), (&remote, "eth0"))?;
        lab.exec(
            &ext,
            "ip addr add 198.51.100.1/24 dev eth1 && ip link set eth1 up && \
             sysctl -qw net.ipv4.ip_forward=1",
        )?;
        lab.exec(
            &remote,
            &format!(
                "ip addr add {REMOTE_IP}/24 dev eth0 && ip link set eth0 up && \
                 ip route add default via 198.51.100.1"
            ),
        )?;
        // The HA network.
        lab.bridge(&tor, "br-ha")?;
        // The MLD querier: MLDv2, a query every 3 s; it needs a non-tentative link-local
        // address on the bridge, else it sends nothing.
        lab.exec(
            &tor,
            "ip link set br-tor type bridge mcast_snooping 1 mcast_querier 1 \
             mcast_mld_version 2 mcast_query_interval 300 mcast_query_response_interval 100 \
             mcast_startup_query_interval 100",
        )?;

        let router_nodes: Vec<(String, String, String, String)> = match &self.base {
            Base::Ovs(l) => l
                .nodes
                .iter()
                .map(|n| (n.ns.clone(), n.qrouter.clone(), n.qg.clone(), n.tor_port.clone()))
                .collect(),
            Base::Lb(l) => l
                .nodes
                .iter()
                .map(|n| {
                    (n.ns.clone(), n.qrouter.clone(), linuxbridge::QG.into(), n.tor_port.clone())
                })
                .collect(),
        };
        for (i, (ns, qrouter, qg, tor_port)) in router_nodes.into_iter().enumerate() {
            let index = i + 1;
            let dir = self.lab().dir.path().join(format!("node{index}"));
            let ha_confs = dir.join("ha_confs");
            // A router Neutron's discovery finds is named after its namespace, `qrouter-<id>`.
            let router_id = match qrouter.strip_prefix("qrouter-") {
                Some(id) => id.to_owned(),
                None => ROUTER_ID.to_owned(),
            };
            std::fs::create_dir_all(ha_confs.join(&router_id))?;
            std::fs::write(
                ha_confs.join(&router_id).join("keepalived.conf"),
                keepalived_conf(&qg, self.ipv4_only),
            )?;
            let config = dir.join("routers.yaml");
            let names = (router_id.as_str(), ha_confs.as_path());
            std::fs::write(&config, self.hagw_config(index, &qrouter, &qg, names))?;
            self.router_sysctls(&qrouter)?;
            let pcap = dir.join("tor-port.pcap");
            self.nodes.push(KaNode {
                index,
                ns,
                qrouter,
                qg,
                tor_port,
                ha_confs,
                router_id,
                config,
                keepalived: None,
                l3_agent: None,
                hagw: None,
                vip_monitor: None,
                capture: None,
                pcap,
                dir,
            });
        }
        self.wait_querier()?;
        self.start_observers()?;
        if self.host_hagw.contains(&true) {
            for (node, _) in self.nodes.iter_mut().zip(self.host_hagw).filter(|(_, on)| *on) {
                node.start_hagw()?;
            }
            // Let the agents start and watch the (still empty) router namespaces.
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    }

    /// Plugs both routers the way Neutron's agents do, starts keepalived on node1 and then on
    /// node2, and waits until node1 is primary.
    pub fn boot(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].discoverable() {
                self.nodes[i].start_l3_agent()?;
            }
            self.plug_router(i, &mut Rng::seeded())?;
        }
        self.nodes[0].start_keepalived()?;
        std::thread::sleep(Duration::from_millis(500));
        self.nodes[1].start_keepalived()?;
        self.wait_primary(0, Duration::from_secs(10))?;
        Ok(())
    }

    /// The router namespace's sysctls as the L3 agent sets them.
    pub(super) fn router_sysctls(&self, qrouter: &str) -> Result<()> {
        self.lab().exec(
            qrouter,
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=0 \
             net.ipv6.conf.default.forwarding=0",
        )?;
        if self.legacy {
            self.lab().exec(
                qrouter,
                "sysctl -qw net.ipv6.conf.all.forwarding=1 net.ipv6.conf.default.forwarding=1",
            )?;
        }
        Ok(())
    }

    fn wait_querier(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = self.lab().exec(&self.tor, "ip -6 -o addr show dev br-tor scope link")?;
            if out.contains("fe80") && !out.contains("tentative") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("br-tor got no usable link-local address for its MLD querier: {out}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// the L2 agent's wiring racing the L3 agent's steps (random delays).
    pub(super) fn plug_router(&self, i: usize, rng: &mut Rng) -> Result<()> {
        let node = &self.nodes[i];
        let lab = self.lab();
        let (q, qg) = (&node.qrouter, &node.qg);
        // HA port: on the HA network, its fixed IP, up (the L3 agent).
        let hp = format!("h{}", node.index);
        lab.veth((q, HA_DEV), (&self.tor, &hp))?;
        lab.attach(&self.tor, &hp, "br-ha")?;
        lab.exec(
            q,
            &format!(
                "ip addr add 169.254.192.{}/18 dev {HA_DEV} && ip link set {HA_DEV} up",
                node.index
            ),
        )?;
        // Gateway port: created down with the port's MAC (and, on OVS, in the dead VLAN).
        match &self.base {
            Base::Ovs(l) => l.nodes[i].plug(lab)?,
            Base::Lb(l) => {
                l.nodes[i].create_veth(lab, self.legacy)?;
            }
        }
        let l2_delay = rng.below_ms(400);
        let l3_delay = rng.below_ms(400);
        std::thread::scope(|s| -> Result<()> {
            let l2 = s.spawn(|| -> Result<()> {
                std::thread::sleep(l2_delay);
                self.l2_agent_wire(i)
            });
            std::thread::sleep(l3_delay);
            // The L3 agent: link up, IPv6 addresses flushed on a (not yet known) backup.
            lab.exec(q, &format!("ip link set {qg} up"))?;
            std::thread::sleep(Duration::from_millis(300));
            lab.exec(q, &format!("ip -6 addr flush dev {qg} 2>/dev/null || true"))?;
            l2.join().expect("l2 agent thread")?;
            Ok(())
        })
    }

    /// The L2 agent wires the gateway port: OVS sets the local VLAN, Linuxbridge puts the tap
    /// into brq and up. Waits for the port to exist, as the agents' polling does.
    fn l2_agent_wire(&self, i: usize) -> Result<()> {
        let lab = self.lab();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let exists = match &self.base {
                Base::Ovs(l) => l.nodes[i].port_vlan().is_ok(),
                Base::Lb(l) => {
                    l.nodes[i].node(lab, &format!("ip link show {}", linuxbridge::TAP)).is_ok()
                }
            };
            if exists {
                break;
            }
            if Instant::now() > deadline {
                bail!("gateway port of node{} never appeared", i + 1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match &self.base {
            Base::Ovs(l) => l.nodes[i].agent_wire(),
            Base::Lb(l) => l.nodes[i].plug(lab),
        }
    }
}
