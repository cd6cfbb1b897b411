//! One Neutron HA router as its L3 agent leaves it on a node, for the discovery tests: a
//! [`GatewayLab`] whose router namespace is `qrouter-<id>` (the router id is the lab id), an
//! HA device, Neutron's keepalived.conf with floating IPs (rewritten by rename, as the L3 agent
//! does), and optionally a VRRP peer: another node's keepalived on the HA network, run on the
//! host with its files outside any Neutron state path.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::gateway::GatewayLab;
use crate::keepalived::{PRIMARY_VIP, VRID, neutron_keepalived_conf};

/// A floating IP every router starts with, and one added and removed later.
pub const FIP: &str = "203.0.113.50";
pub const FIP_ADDED: &str = "203.0.113.51";

pub struct NeutronRouter {
    pub gw: GatewayLab,
    /// The router id (`qrouter-<id>`, `ha_confs/<id>`).
    pub id: String,
    /// The HA device in the router namespace.
    pub ha: String,
    peer: String,
    peer_keepalived: Option<Child>,
}

impl NeutronRouter {
    /// The router namespace with its gateway port (down, as plugged) and HA device, and the
    /// peer node's namespace on the other end of the HA network.
    pub fn build() -> Result<NeutronRouter> {
        let mut gw = GatewayLab::build()?;
        let id = gw.lab.id.clone();
        anyhow::ensure!(gw.qrouter == format!("qrouter-{id}"), "unexpected {}", gw.qrouter);
        let peer = gw.lab.netns("peer")?;
        let ha = format!("ha-{id}");
        gw.lab.veth((&gw.qrouter, &ha), (&peer, "ha-peer"))?;
        gw.lab.exec(
            &gw.qrouter,
            &format!("ip addr add 169.254.192.2/18 dev {ha} && ip link set {ha} up"),
        )?;
        gw.lab.exec(&peer, "ip addr add 169.254.192.1/18 dev ha-peer && ip link set ha-peer up")?;
        Ok(NeutronRouter { gw, id, ha, peer, peer_keepalived: None })
    }

    /// Neutron's keepalived.conf for this router with `fips`.
    pub fn conf(&self, fips: &[&str]) -> String {
        neutron_keepalived_conf(&self.ha, &self.gw.qg, fips, false)
    }

    /// Writes this router's keepalived.conf under `ha_confs` as the L3 agent does (a
    /// temporary file renamed over it).
    pub fn write_conf(&self, ha_confs: &Path, fips: &[&str]) -> Result<PathBuf> {
        let dir = ha_confs.join(&self.id);
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("keepalived.conf");
        std::fs::write(dir.join("keepalived.conf.tmp"), self.conf(fips))?;
        std::fs::rename(dir.join("keepalived.conf.tmp"), &conf)?;
        Ok(conf)
    }

    /// keepalived as the L3 agent runs it (plus foreground and console log), in the router
    /// namespace, with its pid files where Neutron keeps them.
    pub fn keepalived_command(&self, ha_confs: &Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.gw.qrouter, "keepalived", "-n", "-l", "-G", "-P", "-f"])
            .arg(ha_confs.join(&self.id).join("keepalived.conf"))
            .arg("-p")
            .arg(ha_confs.join(format!("{}.pid.keepalived", self.id)))
            .arg("-r")
            .arg(ha_confs.join(format!("{}.pid.keepalived-vrrp", self.id)));
        command
    }

    /// Whether this node holds the primary VIP.
    pub fn has_vip(&self) -> bool {
        self.gw
            .lab
            .exec(&self.gw.qrouter, &format!("ip -o addr show dev {}", self.ha))
            .is_ok_and(|out| out.contains(PRIMARY_VIP))
    }

    /// Starts the peer node's keepalived (same VRID, only the primary VIP); with `primary`,
    /// waits until it is primary, as the first node of a router is.
    pub fn start_peer(&mut self, primary: bool) -> Result<()> {
        let dir = self.gw.lab.dir.path().join("peer");
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("keepalived.conf");
        std::fs::write(
            &conf,
            format!(
                "vrrp_instance VR_{VRID} {{\n    state BACKUP\n    interface ha-peer\n    \
                 virtual_router_id {VRID}\n    priority 50\n    nopreempt\n    advert_int 1\n    \
                 virtual_ipaddress {{\n        {PRIMARY_VIP} dev ha-peer\n    }}\n}}\n"
            ),
        )?;
        self.spawn_peer(&conf, &dir.join("keepalived.pid"), &dir.join("vrrp.pid"), &dir)?;
        if primary { self.wait_peer_primary() } else { Ok(()) }
    }

    /// The peer as a Neutron node of its own, for a second agent to serve: its gateway port
    /// `qg-<id>` in its namespace (a veth whose other end stays there, so its frames go
    /// nowhere), Neutron's keepalived.conf for it with `fips` under `ha_confs`, and its
    /// keepalived run from that with the pid files beside it, as the L3 agent there would.
    /// Returns once it is primary.
    pub fn start_neutron_peer(&mut self, ha_confs: &Path, fips: &[&str]) -> Result<()> {
        let qg = &self.gw.qg;
        self.gw.lab.exec(
            &self.peer,
            &format!(
                "ip link add {qg} type veth peer name qp-{id} && ip link set qp-{id} up",
                id = self.id
            ),
        )?;
        let dir = ha_confs.join(&self.id);
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("keepalived.conf");
        std::fs::write(&conf, neutron_keepalived_conf("ha-peer", qg, fips, false))?;
        let pid = |suffix: &str| ha_confs.join(format!("{}.pid.{suffix}", self.id));
        self.spawn_peer(&conf, &pid("keepalived"), &pid("keepalived-vrrp"), &dir)?;
        self.wait_peer_primary()
    }

    /// The peer node's namespace (its end of the HA network, and its gateway port if it has
    /// one).
    pub fn peer_netns(&self) -> &str {
        &self.peer
    }

    /// Whether the peer node holds the primary VIP.
    pub fn peer_has_vip(&self) -> bool {
        self.gw
            .lab
            .exec(&self.peer, "ip -o addr show dev ha-peer")
            .is_ok_and(|out| out.contains(PRIMARY_VIP))
    }

    fn spawn_peer(&mut self, conf: &Path, pid: &Path, vrrp_pid: &Path, logs: &Path) -> Result<()> {
        let log = std::fs::File::create(logs.join("keepalived.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.peer, "keepalived", "-n", "-l", "-G", "-P", "-f"])
            .arg(conf)
            .arg("-p")
            .arg(pid)
            .arg("-r")
            .arg(vrrp_pid)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the peer's keepalived")?;
        self.peer_keepalived = Some(child);
        Ok(())
    }

    fn wait_peer_primary(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.peer_has_vip() {
            if Instant::now() > deadline {
                bail!("the peer's keepalived did not become primary");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the peer's keepalived as an operator would (SIGTERM: it gives up the VIP with a
    /// priority-0 advertisement, so this node takes over at once).
    pub fn stop_peer(&mut self) {
        if let Some(mut child) = self.peer_keepalived.take() {
            let _ = crate::lab::sh(&format!("kill -TERM {}", child.id()));
            let _ = child.wait();
        }
    }
}

impl Drop for NeutronRouter {
    fn drop(&mut self) {
        self.stop_peer();
    }
}
