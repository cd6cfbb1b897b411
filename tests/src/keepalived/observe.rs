//! The observers: `ip monitor address` in each router namespace (the primary VIP), tcpdump on
//! each node's ToR port, and `bridge monitor fdb` on the ToR.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
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
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let capture = Capture::start(&self.tor, &node.tor_port, node.pcap.clone())?;
            self.nodes[i].capture = Some(capture);
            self.watch_vip(i)?;
        }
        let monitor = ["netns", "exec", &self.tor, "stdbuf", "-oL", "bridge", "monitor", "fdb"];
        self.fdb_monitor = Some(follow_lines(&monitor, &self.events, |line| {
            let deleted = line.starts_with("Deleted");
            let line = line.trim_start_matches("Deleted ");
            if !line.starts_with(GATEWAY_MAC) || !line.contains("master br-tor") {
                return None;
            }
            let port = line.split_whitespace().skip_while(|w| *w != "dev").nth(1);
            Some(Event::Fdb(if deleted { None } else { port.map(str::to_owned) }))
        })?);
        // Give the monitors a moment to subscribe.
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }

    /// Follows the primary VIP in node `i`'s router namespace (again, once it is re-created).
    pub(super) fn watch_vip(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let index = node.index;
        let monitor = ["-n", &node.qrouter, "monitor", "address"];
        let child = follow_lines(&monitor, &self.events, move |line| {
            if !line.contains(PRIMARY_VIP) {
                return None;
            }
            Some(if line.starts_with("Deleted") {
                Event::VipDown(index)
            } else {
                Event::VipUp(index)
            })
        })?;
        self.nodes[i].vip_monitor = Some(child);
        Ok(())
    }
}

/// Runs `ip <args>` and, on a thread, turns each line of its output into an event (or none),
/// stamped with the wall-clock time the line was read.
fn follow_lines(
    args: &[&str],
    events: &Events,
    event_of: impl Fn(&str) -> Option<Event> + Send + 'static,
) -> Result<Child> {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting ip {}", args.join(" ")))?;
    let out = child.stdout.take().context("monitor stdout")?;
    let events = events.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let t = now();
            if let Some(event) = event_of(&line) {
                events.lock().unwrap().push((t, event));
            }
        }
    });
    Ok(child)
}
