//! One network node of the testbed: its router namespace, keepalived and hagw.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

use super::{HA_DEV, PRIMARY_VIP};
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
    /// The router's id on this node: its `ha_confs` directory and pid file names.
    pub router_id: String,
    /// hagw's routers.yaml for this node.
    pub config: PathBuf,
    pub(super) keepalived: Option<Child>,
    /// The stand-in L3 agent of a router Neutron's discovery finds ([`KaNode::discoverable`]).
    pub(super) l3_agent: Option<Child>,
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
        self.ha_confs.join(&self.router_id)
    }

    /// Whether this node's router is laid out as Neutron names it
    /// ([`super::KaLab::prepare_discoverable`]): then a stand-in L3 agent runs beside it.
    pub fn discoverable(&self) -> bool {
        self.qrouter == format!("qrouter-{}", self.router_id)
    }

    /// Starts the stand-in for a containerized L3 agent (kolla-ansible's `neutron_l3_agent`)
    /// whose state path `/var/lib/neutron/kolla` (in the chart's default `neutron.statePaths`)
    /// is this node's directory, holding `ha_confs` (the named volume): a process whose command
    /// line names `neutron-l3-agent`, in a mount namespace of its own where that directory is
    /// mounted. hagw's discovery (`neutron.root: process`) reads the router's files through its
    /// root, so only while it runs. Returns once they are there.
    pub fn start_l3_agent(&mut self) -> Result<()> {
        kill_child(&mut self.l3_agent);
        // A tmpfs over /var/lib in its own mount namespace: nothing is created on the host.
        let script = "mount -t tmpfs none /var/lib && mkdir -p /var/lib/neutron/kolla && \
                      mount --bind \"$1\" /var/lib/neutron/kolla && \
                      exec -a neutron-l3-agent sleep infinity";
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "bash", "-c", script, "l3-agent"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .spawn()
            .context("starting the stand-in L3 agent")?;
        let ha_confs = format!("/proc/{}/root/var/lib/neutron/kolla/ha_confs", child.id());
        let cmdline = format!("/proc/{}/cmdline", child.id());
        self.l3_agent = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !(std::path::Path::new(&ha_confs).is_dir()
            && std::fs::read(&cmdline).is_ok_and(|c| c.starts_with(b"neutron-l3-agent")))
        {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the stand-in L3 agent is not up"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// The stand-in L3 agent loses power (SIGKILL).
    pub fn kill_l3_agent(&mut self) {
        kill_child(&mut self.l3_agent);
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
        let pid = self.ha_confs.join(format!("{}.pid.keepalived", self.router_id));
        let vrrp = self.ha_confs.join(format!("{}.pid.keepalived-vrrp", self.router_id));
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
        let vrrp = self.ha_confs.join(format!("{}.pid.keepalived-vrrp", self.router_id));
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
        let _ =
            std::fs::remove_file(self.ha_confs.join(format!("{}.pid.keepalived", self.router_id)));
    }

    /// Starts `hagw run -c <routers.yaml>` in the node namespace; its log goes to
    /// `<lab>/node<i>/hagw.log`.
    pub fn start_hagw(&mut self) -> Result<()> {
        let config = self.config.clone();
        self.start_hagw_with(&config, None)
    }

    /// [`KaNode::start_hagw`] with `config` instead of the node's routers.yaml, and the node
    /// lock `lock` (`--lock-file`), as the packaged unit runs it.
    pub fn start_hagw_with(&mut self, config: &Path, lock: Option<&Path>) -> Result<()> {
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
            .arg(config)
            .args(lock.map(|l| [OsStr::new("--lock-file"), l.as_os_str()]).into_iter().flatten())
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

    /// What `hagw run` logged on this node.
    pub fn hagw_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("hagw.log")).unwrap_or_default()
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
