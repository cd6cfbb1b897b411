//! Whether a takeover's first announcement round reached the ToR: hagw's gratuitous ARPs for
//! the gateway address captured on the new primary's ToR port, against the rounds hagw's log
//! says it sent, and the time from the release to the first of them at the ToR.

use std::fmt;
use std::net::IpAddr;

use super::KaLab;
use crate::frames::{Announcement, Frame, Mac, read_pcap};
use crate::gateway::{GATEWAY_IP, GATEWAY_MAC};

/// Rounds due within [`BURST_WINDOW`] of the first: 0, 10, 50 and 200 ms
/// (`hagw_core::model::ANNOUNCE_BURST_MS`); the next one is due 1 s after the first.
pub const BURST_ROUNDS: usize = 4;
/// When round 2 is due after the first (`hagw_core::model::ANNOUNCE_BURST_MS[0]`; the test
/// checks they agree).
pub const ROUND2_DUE_MS: u64 = 10;
/// hagw's ARP frame: padded to the Ethernet minimum (without FCS).
const HAGW_ARP_LEN: usize = 60;
/// After the first round's log line: long enough for the burst under load, well before the
/// first regular round (1 s).
const BURST_WINDOW: f64 = 0.6;

/// One takeover as seen by hagw's log and the ToR.
#[derive(Debug, Clone)]
pub struct FirstRound {
    pub node: usize,
    /// hagw's "addresses announced round=1" line (seconds since the epoch).
    pub round1_logged: f64,
    /// hagw's last "release the layer-2 hold" before it, if this takeover released a hold.
    pub released: Option<f64>,
    /// Capture times of hagw's gratuitous ARPs for the gateway address at the ToR, from
    /// shortly before the first round's log line to the end of the burst.
    pub captured: Vec<f64>,
}

impl FirstRound {
    /// Round 1 was captured at the ToR: a frame from before round 2 could have been sent
    /// (round 2 is due 10 ms after the task that logs round 1 starts its schedule), or every
    /// round of the burst (a busy userspace datapath delivered round 1 late, next to round 2).
    pub fn first_captured(&self) -> bool {
        let round2 = ROUND2_DUE_MS as f64 / 1e3;
        self.captured.iter().any(|t| *t < self.round1_logged + round2)
            || self.captured.len() == BURST_ROUNDS
    }

    /// Release applied (as hagw logged it) → the first announcement frame at the ToR.
    pub fn release_to_first_frame_ms(&self) -> Option<f64> {
        Some((self.captured.first()? - self.released?) * 1e3)
    }
}

impl fmt::Display for FirstRound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at: Vec<String> = self
            .captured
            .iter()
            .map(|t| format!("{:+.1}", (t - self.round1_logged) * 1e3))
            .collect();
        write!(
            f,
            "node{}: round 1 {}, {} of {BURST_ROUNDS} burst rounds at the ToR (ms from round 1's \
             log line: [{}]); release -> first frame {}",
            self.node,
            if self.first_captured() { "captured" } else { "LOST" },
            self.captured.len(),
            at.join(", "),
            match self.release_to_first_frame_ms() {
                Some(ms) => format!("{ms:.2} ms"),
                None => "n/a".into(),
            }
        )
    }
}

impl KaLab {
    /// The first takeover of node `i` (0-based) whose first round hagw logged after `since`
    /// (seconds since the epoch), or `None` if hagw logged none.
    pub fn first_round(&self, i: usize, since: f64) -> Option<FirstRound> {
        let node = &self.nodes[i];
        let log = std::fs::read_to_string(node.dir.join("hagw.log")).unwrap_or_default();
        let mut released = None;
        let mut round1 = None;
        for line in log.lines().map(strip_ansi) {
            let Some(at) = line.split_whitespace().next().and_then(epoch_of) else { continue };
            if at < since {
                continue;
            }
            if line.contains("applied action=release the layer-2 hold") {
                released = Some(at);
            } else if line.contains("addresses announced") && line.contains("round=1") {
                round1 = Some(at);
                break;
            }
        }
        let round1_logged = round1?;
        let gateway: IpAddr = GATEWAY_IP.parse().ok()?;
        let captured = read_pcap(&node.pcap)
            .unwrap_or_default()
            .into_iter()
            .filter(|f| is_hagw_garp(f, gateway))
            .map(|f| f.time)
            .filter(|t| *t >= round1_logged - 0.1 && *t <= round1_logged + BURST_WINDOW)
            .collect();
        Some(FirstRound { node: node.index, round1_logged, released, captured })
    }
}

/// hagw's gratuitous ARP for `gateway` from the gateway MAC. Its fields are keepalived's
/// (tests/tests/keepalived_frames.rs), but hagw pads it to the Ethernet minimum of 60 bytes and
/// keepalived does not (42), and no veth or bridge here pads: the length tells them apart.
fn is_hagw_garp(frame: &Frame, gateway: IpAddr) -> bool {
    frame.bytes.len() == HAGW_ARP_LEN
        && matches!(
            Announcement::decode(&frame.bytes),
            Some(a @ Announcement::Arp(_))
                if a.address() == gateway && Some(a.eth_src()) == Mac::parse(GATEWAY_MAC)
        )
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `2026-12-02T16:42:18.443615Z` (tracing's UTC timestamps) as seconds since the epoch.
fn epoch_of(stamp: &str) -> Option<f64> {
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|x| x.parse::<f64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_stamps_become_epoch_seconds() {
        assert_eq!(epoch_of("1970-01-01T00:00:00Z"), Some(0.0));
        let t = epoch_of("2026-12-02T16:42:18.400655Z").unwrap();
        assert!((t - 1_796_229_738.400_655).abs() < 1e-5, "{t}");
        assert_eq!(epoch_of("garbage"), None);
        assert_eq!(strip_ansi("\u{1b}[2m2026\u{1b}[0m x"), "2026 x");
    }
}
