//! What the observers saw, judged: leaks, takeover times and the ToR's FDB owner over time.

use std::fmt;
use std::time::Duration;

use super::{Event, FIP, KaLab};
use crate::gateway::{GATEWAY_IP, GATEWAY_MAC};
use crate::lab::sh;

impl KaLab {
    /// Frames with the gateway MAC received at node `i`'s ToR port so far, with their
    /// capture timestamps (tcpdump `-tt`).
    fn frames(&self, i: usize) -> Vec<(f64, String)> {
        let cmd = format!(
            "tcpdump -tt -e -nn -r {} 'ether src {GATEWAY_MAC}' 2>/dev/null || true",
            self.nodes[i].pcap.display()
        );
        sh(&cmd)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (t, rest) = l.split_once(' ')?;
                Some((t.parse().ok()?, rest.to_owned()))
            })
            .collect()
    }

    /// The intervals during which node `index` (1-based) held the primary VIP.
    fn primary_intervals(&self, events: &[(f64, Event)], index: usize) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        let mut up: Option<f64> = None;
        for (t, e) in events {
            match e {
                Event::VipUp(n) if *n == index && up.is_none() => up = Some(*t),
                Event::VipDown(n) if *n == index => {
                    if let Some(u) = up.take() {
                        out.push((u, *t));
                    }
                }
                _ => {}
            }
        }
        if let Some(u) = up {
            out.push((u, f64::INFINITY));
        }
        out
    }

    /// Everything observed so far.
    pub fn report(&self) -> Report {
        // Let tcpdump's buffered writes and the monitors catch up.
        std::thread::sleep(Duration::from_millis(300));
        let events = self.events.lock().unwrap().clone();
        let mut leaks = Vec::new();
        let mut demotion = Vec::new();
        let mut promotion = Vec::new();
        let mut takeovers = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let frames = self.frames(i);
            let intervals = self.primary_intervals(&events, node.index);
            for (t, line) in &frames {
                if intervals.iter().any(|(a, b)| t >= a && t <= b) {
                    continue;
                }
                let leak = Leak { node: node.index, at: t - self.started, frame: line.clone() };
                let other_primary = self.nodes.iter().any(|o| {
                    o.index != node.index
                        && self
                            .primary_intervals(&events, o.index)
                            .iter()
                            .any(|(a, b)| t >= a && t <= b)
                });
                if !other_primary && in_demotion(&events, node.index, *t) {
                    demotion.push(leak);
                } else if !other_primary && in_promotion(&events, node.index, *t) {
                    promotion.push(leak);
                } else {
                    leaks.push(leak);
                }
            }
            for (a, _) in &intervals {
                let garp = frames.iter().find(|(t, l)| t >= a && is_garp(l)).map(|(t, _)| *t);
                let first = frames.iter().find(|(t, _)| t >= a).map(|(t, _)| *t);
                takeovers.push(Takeover {
                    node: node.index,
                    vip_at: a - self.started,
                    garp_after: garp.map(|g| Duration::from_secs_f64(g - a)),
                    frame_after: first.map(|g| Duration::from_secs_f64(g - a)),
                });
            }
        }
        takeovers.sort_by(|a, b| a.vip_at.total_cmp(&b.vip_at));
        let port_names: Vec<(String, String)> =
            self.nodes.iter().map(|n| (n.tor_port.clone(), n.name())).collect();
        let fdb = events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::Fdb(owner) => Some((
                    t - self.started,
                    owner.as_ref().map(|p| {
                        port_names
                            .iter()
                            .find(|(port, _)| port == p)
                            .map(|(_, n)| n.clone())
                            .unwrap_or_else(|| p.clone())
                    }),
                )),
                _ => None,
            })
            .collect();
        Report { leaks, demotion, promotion, takeovers, fdb }
    }
}

/// Whether `t` falls after node `index` lost the primary VIP and before any other node got it:
/// the ToR still points at that node and nobody else serves, so its frames move nothing.
fn in_demotion(events: &[(f64, Event)], index: usize, t: f64) -> bool {
    let Some(down) = events
        .iter()
        .filter(|(at, e)| *at <= t && matches!(e, Event::VipDown(n) if *n == index))
        .map(|(at, _)| *at)
        .next_back()
    else {
        return false;
    };
    !events.iter().any(|(at, e)| *at > down && *at <= t && matches!(e, Event::VipUp(_)))
}

/// How far the VIP monitor's stamp may trail keepalived's adding the VIP: it is the time the
/// test read `ip monitor`'s line, which under CPU load comes tens of milliseconds after the
/// new primary (woken by the same netlink event) has configured its port and the kernel has
/// sent its first MLD report (seen: 0.2–16 ms before the stamp, sources the addresses
/// keepalived adds at MASTER), and up to 214 ms at load 18 on 2 cores (the new primary's own
/// takeover gARPs, which only a MASTER sends). A frame in that window while no node holds the
/// VIP cannot take traffic from a primary: there is none, and the sender is the next one.
const MONITOR_LAG: f64 = 0.5;

/// Whether `t` falls within [`MONITOR_LAG`] before node `index` was seen getting the primary
/// VIP while no node held it: the ToR is moved to the node that is primary by then, and
/// nobody else serves.
fn in_promotion(events: &[(f64, Event)], index: usize, t: f64) -> bool {
    events.iter().any(|(at, e)| {
        matches!(e, Event::VipUp(n) if *n == index) && *at >= t && *at - t <= MONITOR_LAG
    })
}

fn is_garp(line: &str) -> bool {
    [GATEWAY_IP, FIP].iter().any(|ip| {
        // keepalived's and hagw's: `who-has IP (ff:ff:ff:ff:ff:ff) tell IP` (docs/backends.md).
        (line.contains(&format!("who-has {ip} ")) && line.contains(&format!("tell {ip},")))
            || line.contains(&format!("Reply {ip} is-at"))
    })
}

/// A frame with the gateway MAC from a node while it did not hold the primary VIP.
#[derive(Debug, Clone)]
pub struct Leak {
    pub node: usize,
    /// Seconds since the observers started.
    pub at: f64,
    pub frame: String,
}

/// A node's primary VIP appearing, and the first gratuitous ARP for the gateway or floating
/// IP from that node seen at the ToR after it.
#[derive(Debug, Clone)]
pub struct Takeover {
    pub node: usize,
    pub vip_at: f64,
    pub garp_after: Option<Duration>,
    /// The first frame of any kind from that node at the ToR (what moves the FDB).
    pub frame_after: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Report {
    /// Frames from a node without the primary VIP while another node held it or before it
    /// ever held it: each one can move the ToR's FDB entry away from the primary.
    pub leaks: Vec<Leak>,
    /// Frames from a node that just lost the VIP, before any other node took it over (the
    /// kernel's MLD report when keepalived removes the link-local VIP): the ToR already
    /// points at that node, so they move nothing. Reported, not judged.
    pub demotion: Vec<Leak>,
    /// Frames from a node in the last [`MONITOR_LAG`] before its VIP was seen, while no node
    /// held it: the observer's lag, not a standby's leak. Reported, not judged.
    pub promotion: Vec<Leak>,
    pub takeovers: Vec<Takeover>,
    /// The ToR's FDB entry for the gateway MAC over time: (seconds, owner node or port).
    pub fdb: Vec<(f64, Option<String>)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "frames with the gateway MAC {GATEWAY_MAC} from a node without the primary VIP: {}",
            self.leaks.len()
        )?;
        for l in self.leaks.iter().take(12) {
            writeln!(f, "  +{:7.3}s node{}: {}", l.at, l.node, l.frame)?;
        }
        if self.leaks.len() > 12 {
            writeln!(f, "  … {} more", self.leaks.len() - 12)?;
        }
        if !self.demotion.is_empty() {
            writeln!(
                f,
                "(plus {} frame(s) from a primary right after it lost the VIP, before any other node \
                 took over: harmless, the ToR pointed at it anyway)",
                self.demotion.len()
            )?;
        }
        if !self.promotion.is_empty() {
            writeln!(
                f,
                "(plus {} frame(s) from a node within {:.0} ms before its VIP was seen, while no \
                 node held it: the VIP monitor's lag)",
                self.promotion.len(),
                MONITOR_LAG * 1e3
            )?;
        }
        writeln!(f, "takeovers (primary VIP appears -> first gARP seen at the ToR):")?;
        for t in &self.takeovers {
            let ms = |d: Option<Duration>| match d {
                Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
                None => "none seen".to_owned(),
            };
            writeln!(
                f,
                "  +{:7.3}s node{}: first gARP {} (first frame of any kind {})",
                t.vip_at,
                t.node,
                ms(t.garp_after),
                ms(t.frame_after)
            )?;
        }
        writeln!(f, "ToR FDB owner of {GATEWAY_MAC} over time:")?;
        let mut last: Option<&Option<String>> = None;
        for (t, owner) in &self.fdb {
            if last == Some(owner) {
                continue;
            }
            last = Some(owner);
            writeln!(f, "  +{t:7.3}s {}", owner.as_deref().unwrap_or("(none)"))?;
        }
        Ok(())
    }
}
