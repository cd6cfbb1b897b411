//! One network node of the testbed: its router namespace, keepalived and hagw.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

use super::{HA_DEV, PRIMARY_VIP, ROUTER_ID};
use crate::capture::Capture;
use crate::lab::{hagw_bin, sh};

/// One network node: its router namespace, keepalived and hagw.
pub struct KaNode {
    /// 1 or 2.
    pub index: usize,
    /// The node's own namespace (OVS daemons, brq, hagw).
    pub ns: String,
    pub qrouter: String,
    pub qg: String,
    pub tor_port: String,
    /// `<node>/ha_confs`: Neutron's layout.
    pub ha_confs: PathBuf,
    /// hagw's routers.yaml for this node.
    pub config: PathBuf,
    pub(super) keepalived: Option<Child>,
    pub(super) hagw: Option<Child>,
    pub(super) vip_monitor: Option<Child>,
    pub(super) capture: Option<Capture>,
    /// The capture of what this node put on the wire at its ToR port (`tcpdump -Q in`).
    pub pcap: PathBuf,
    pub(super) dir: PathBuf,
}

impl KaNode {
    pub fn name(&self) -> String {
        format!("node{}", self.index)
    }

    fn conf_dir(&self) -> PathBuf {
        self.ha_confs.join(ROUTER_ID)
    }

    /// Whether keepalived's primary VIP is on this node's HA device right now.
    pub fn has_vip(&self) -> bool {
        sh(&format!("ip -n {} -o addr show dev {HA_DEV} 2>/dev/null", self.qrouter))
            .map(|out| out.contains(PRIMARY_VIP))
            .unwrap_or(false)
    }

    pub fn router(&self, cmd: &str) -> Result<String> {
        sh(&format!("ip netns exec {} bash -c '{}'", self.qrouter, cmd.replace('\'', r"'\''")))
    }

    /// Starts keepalived the way the L3 agent does (plus foreground and console log).
    pub fn start_keepalived(&mut self) -> Result<()> {
        self.stop_keepalived();
        let dir = self.conf_dir();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("keepalived.log"))?;
        let conf = dir.join("keepalived.conf");
        let pid = self.ha_confs.join(format!("{ROUTER_ID}.pid.keepalived"));
        let vrrp = self.ha_confs.join(format!("{ROUTER_ID}.pid.keepalived-vrrp"));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.qrouter, "keepalived", "-n", "-l", "-G", "-P", "-f"])
            .arg(&conf)
            .arg("-p")
            .arg(&pid)
            .arg("-r")
            .arg(&vrrp)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting keepalived")?;
        self.keepalived = Some(child);
        Ok(())
    }

    /// Stops keepalived as an operator or a package upgrade would (SIGTERM): it sends a
    /// priority-0 advertisement and removes its VIPs, so the peer takes over at once.
    pub fn stop_keepalived(&mut self) {
        if let Some(mut child) = self.keepalived.take() {
            let _ = sh(&format!("kill -TERM {}", child.id()));
            let _ = child.wait();
        }
    }

    /// keepalived crashes (SIGKILL to the VRRP child and the parent): the VIPs and addresses
    /// stay behind; the peer takes over after the master-down interval. (SIGKILL to the
    /// parent alone is a clean stop: the child gets SIGTERM from its parent-death signal.)
    pub fn crash_keepalived(&mut self) {
        let vrrp = self.ha_confs.join(format!("{ROUTER_ID}.pid.keepalived-vrrp"));
        if let Ok(pid) = std::fs::read_to_string(&vrrp) {
            let _ = sh(&format!("kill -KILL {} 2>/dev/null", pid.trim()));
        }
        if let Some(mut child) = self.keepalived.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The orphaned VRRP child may linger as a zombie (nobody in a container need reap
        // it), and keepalived refuses to start while its pid file names a live pid: remove the
        // pid files, as a reboot clears /run.
        let _ = std::fs::remove_file(&vrrp);
        let _ = std::fs::remove_file(self.ha_confs.join(format!("{ROUTER_ID}.pid.keepalived")));
    }

    /// Starts `hagw run -c <routers.yaml>` in the node namespace; its log goes to
    /// `<lab>/node<i>/hagw.log`.
    pub fn start_hagw(&mut self) -> Result<()> {
        self.kill_hagw();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("hagw.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(hagw_bin())
            .arg("run")
            .arg("-c")
            .arg(&self.config)
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting hagw")?;
        self.hagw = Some(child);
        Ok(())
    }

    pub fn kill_hagw(&mut self) {
        if let Some(mut child) = self.hagw.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn hagw_running(&self) -> bool {
        self.hagw.is_some()
    }

    /// The default route in the router namespace, if any.
    pub fn default_route(&self) -> String {
        self.router("ip route show default").unwrap_or_default().trim().to_owned()
    }
}

pub(super) fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
