//! The observers: `ip monitor address` in each router namespace (the primary VIP), tcpdump on
//! each node's ToR port, and `bridge monitor fdb` on the ToR.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use super::{KaLab, PRIMARY_VIP, now};
use crate::capture::Capture;
use crate::gateway::GATEWAY_MAC;

/// What the monitors saw, each with the wall-clock time it was read.
#[derive(Debug, Clone)]
pub enum Event {
    VipUp(usize),
    VipDown(usize),
    /// The ToR learned the gateway MAC on this port (`None`: the entry was deleted).
    Fdb(Option<String>),
}

pub(super) type Events = Arc<Mutex<Vec<(f64, Event)>>>;

impl KaLab {
    pub(super) fn start_observers(&mut self) -> Result<()> {
        self.started = now();
        for node in &mut self.nodes {
            node.capture = Some(Capture::start(&self.tor, &node.tor_port, node.pcap.clone())?);
            let mut child = Command::new("ip")
                .args(["-n", &node.qrouter, "monitor", "address"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting ip monitor")?;
            let out = child.stdout.take().context("ip monitor stdout")?;
            let events = self.events.clone();
            let index = node.index;
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let t = now();
                    if line.contains(PRIMARY_VIP) {
                        let event = if line.starts_with("Deleted") {
                            Event::VipDown(index)
                        } else {
                            Event::VipUp(index)
                        };
                        events.lock().unwrap().push((t, event));
                    }
                }
            });
            node.vip_monitor = Some(child);
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.tor, "stdbuf", "-oL", "bridge", "monitor", "fdb"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bridge monitor")?;
        let out = child.stdout.take().context("bridge monitor stdout")?;
        let events = self.events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let t = now();
                let deleted = line.starts_with("Deleted");
                let line = line.trim_start_matches("Deleted ");
                if !line.starts_with(GATEWAY_MAC) || !line.contains("master br-tor") {
                    continue;
                }
                let port = line.split_whitespace().skip_while(|w| *w != "dev").nth(1);
                let owner = if deleted { None } else { port.map(str::to_owned) };
                events.lock().unwrap().push((t, Event::Fdb(owner)));
            }
        });
        self.fdb_monitor = Some(child);
        // Give the monitors a moment to subscribe.
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }
}
