//! Benchmark 1, takeover reaction of one router, judged at the ToR: keepalived's primary VIP
//! appears on the router's `ha-` device → hagw releases the hold → the first gratuitous ARP
//! with the gateway MAC reaches the ToR (through the node's bridges on linuxbridge and ovs).
//! [`Probe`] drives the rounds; it also measures an unrelated router's takeovers while the
//! fleet fails over (`mass`). keepalived's own floor on the same wiring: `floor`.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::ctx::{Ctx, Procs, lines_of};
use super::fleet::{fleet_dev, fleet_mac};
use super::log::{Log, parse_utc};
use super::stats::{Dist, Table};
use super::wiring::{Backend, Wiring, add_ha_device, ha_dev};
use super::{GATEWAY_CIDR, UPSTREAM_IP, VIP, ms, now};
use crate::lab::sh;

/// What the observers saw: `ip -ts monitor address` in the router namespace (the VIP), and
/// the ToR capture (a gratuitous ARP with the router's gateway MAC).
#[derive(Debug)]
pub(super) enum Ev {
    Vip { ts: f64, added: bool },
    Arp { ts: f64 },
}

/// One event line of `TZ=UTC ip -ts monitor address`: the primary VIP added or removed.
pub(super) fn parse_monitor(line: &str) -> Option<Ev> {
    let rest = line.strip_prefix('[')?;
    let (stamp, rest) = rest.split_once("] ")?;
    let ts = parse_utc(stamp)?;
    let vip_addr = VIP.split('/').next().unwrap_or(VIP);
    rest.contains(&format!("inet {vip_addr}/"))
        .then(|| Ev::Vip { ts, added: !rest.starts_with("Deleted") })
}

/// `tcpdump -tt -e -n` line: timestamp and source MAC.
pub(super) fn parse_tcpdump(line: &str) -> Option<(f64, String)> {
    let mut tokens = line.split_whitespace();
    let ts = tokens.next()?.parse().ok()?;
    let mac = tokens.find(|t| t.len() == 17 && t.matches(':').count() == 5)?;
    Some((ts, mac.to_ascii_lowercase()))
}

/// Starts tcpdump for ARP frames received on `dev` in `ns`; waits until it listens.
pub(super) fn start_arp_capture(
    ctx: &Ctx,
    ns: &str,
    dev: &str,
    each: Sender<(f64, String)>,
) -> Result<Child> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "tcpdump", "-i", dev, "-Q", "in", "-l", "-n", "-tt", "-e"]);
    cmd.args(["-B", "65536", "--immediate-mode", "arp"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ctx.spawn(&mut cmd)?;
    let stdout = child.stdout.take().context("tcpdump stdout")?;
    lines_of(stdout, move |line| {
        if let Some(frame) = parse_tcpdump(&line) {
            let _ = each.send(frame);
        }
    });
    let (ready_tx, ready_rx) = channel();
    let stderr = child.stderr.take().context("tcpdump stderr")?;
    lines_of(stderr, move |line| {
        if line.contains("listening on") {
            let _ = ready_tx.send(());
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).context("tcpdump did not start")?;
    Ok(child)
}

/// Splits the ToR capture's frames: those from `mac` (their timestamps) and the rest.
pub(super) fn split_arps(
    frames: Receiver<(f64, String)>,
    mac: String,
) -> (Receiver<f64>, Receiver<(f64, String)>) {
    let (mine_tx, mine) = channel();
    let (rest_tx, rest) = channel();
    std::thread::spawn(move || {
        for (ts, src) in frames {
            if src == mac {
                let _ = mine_tx.send(ts);
            } else {
                let _ = rest_tx.send((ts, src));
            }
        }
    });
    (mine, rest)
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Round {
    /// Just before the VIP add was written to `ip -batch` (already running in the netns).
    pub(super) t0: f64,
    /// The VIP add as seen by `ip monitor` in the namespace (the add has happened).
    pub(super) vip: f64,
    /// The last hold of the pass released (hagw's `applied` log line: the L2 hold, the link
    /// up); none when the takeover released nothing (a settled `silence-only` standby).
    pub(super) released: Option<f64>,
    /// First ARP with the gateway MAC at the ToR (pcap timestamp).
    pub(super) garp: f64,
}

/// The steps that lift a standby's hold, as hagw logs them (`action` of `applied`).
const RELEASES: [&str; 2] = ["release the layer-2 hold", "set link up"];

/// The spec of a router whose role is keepalived's VIP on its `ha-` device (the state file
/// stays `backup`), as routers.yaml lines.
pub(super) fn vip_router_yaml(
    id: &str,
    ns: &str,
    i: usize,
    backend: &str,
    strategy: &str,
    state: &std::path::Path,
) -> String {
    format!(
        "  - id: {id}\n    namespace: {ns}\n    gatewayDevice: {}\n    haDevice: {}\n    \
         primaryVip: {VIP}\n    gatewayAddresses: [{GATEWAY_CIDR}, \"2001:db8::10/64\"]\n    \
         routes:\n      - destination: 0.0.0.0/0\n        via: {UPSTREAM_IP}\n    \
         backend: {backend}\n    strategy: {strategy}\n    announce: {{repeats: 0}}\n    \
         silenceSettleMs: 500\n    role: {{stateFile: {}}}\n",
        fleet_dev(i),
        ha_dev(i),
        state.display()
    )
}

/// Takes one router over and back, round after round: writes the VIP, waits for hagw's
/// release and the first gARP at the ToR, removes the VIP and waits until hagw has the
/// router standby again (for `silence-only`, until it has let go of the port once silence
/// settled, the state a standby rests in).
pub(super) struct Probe {
    id: String,
    ha: String,
    silence_only: bool,
    events: Receiver<Ev>,
    vip_cmd: ChildStdin,
    /// The observer and the writer, stopped when the probe drops (after `vip_cmd` closed).
    _procs: Procs,
}

impl Probe {
    /// Starts the VIP observer and writer in `ns`; `arps` are the ToR capture's frames with
    /// this router's gateway MAC.
    pub(super) fn start(
        ctx: &Ctx,
        id: &str,
        ns: &str,
        ha: &str,
        strategy: &str,
        arps: Receiver<f64>,
    ) -> Result<Probe> {
        let (tx, events) = channel::<Ev>();
        let mut monitor = {
            let mut cmd = Command::new("ip");
            cmd.env("TZ", "UTC").args(["-n", ns, "-ts", "monitor", "address"]);
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
            ctx.spawn(&mut cmd)?
        };
        let mon_tx = tx.clone();
        lines_of(monitor.stdout.take().context("monitor stdout")?, move |line| {
            if let Some(ev) = parse_monitor(&line) {
                let _ = mon_tx.send(ev);
            }
        });
        std::thread::spawn(move || {
            for ts in arps {
                if tx.send(Ev::Arp { ts }).is_err() {
                    break;
                }
            }
        });
        let mut batch = {
            let mut cmd = Command::new("ip");
            cmd.args(["-n", ns, "-batch", "-"]);
            cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::inherit());
            ctx.spawn(&mut cmd)?
        };
        let vip_cmd = batch.stdin.take().context("ip -batch stdin")?;
        std::thread::sleep(Duration::from_millis(200));
        while events.try_recv().is_ok() {}
        Ok(Probe {
            id: id.into(),
            ha: ha.into(),
            silence_only: strategy == "silence-only",
            events,
            vip_cmd,
            _procs: Procs(vec![monitor, batch]),
        })
    }

    /// One takeover and the way back; `None` if the VIP or the gARP was not seen within
    /// `limit`. Pauses `pause` after the router is standby again; an error if it is not
    /// within a minute.
    pub(super) fn round(
        &mut self,
        log: &Log,
        pause: Duration,
        limit: Duration,
    ) -> Result<Option<Round>> {
        let from = log.len();
        let t0 = now();
        writeln!(self.vip_cmd, "address add {VIP} dev {}", self.ha)?;
        self.vip_cmd.flush()?;
        let (mut vip, mut garp) = (None, None);
        let deadline = Instant::now() + limit;
        while (vip.is_none() || garp.is_none()) && Instant::now() < deadline {
            match self.events.recv_timeout(Duration::from_millis(20)) {
                Ok(Ev::Vip { ts, added: true }) => vip = vip.or(Some(ts)),
                Ok(Ev::Arp { ts }) => garp = garp.or(Some(ts)),
                _ => {}
            }
        }
        // The pass's steps are all logged once it logs the transition.
        self.wait_log(log, from, "primary", limit);
        let released = log
            .of_router(from, &self.id)
            .iter()
            .filter(|e| {
                e.message == "applied" && RELEASES.contains(&e.action.as_deref().unwrap_or(""))
            })
            .map(|e| e.ts)
            .reduce(f64::max);
        let from = log.len();
        writeln!(self.vip_cmd, "address del {VIP} dev {}", self.ha)?;
        self.vip_cmd.flush()?;
        if !self.wait_log(log, from, "standby", Duration::from_secs(60)) {
            bail!("router {}: back to standby not logged within 60 s", self.id);
        }
        if self.silence_only {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline
                && !log
                    .of_router(from, &self.id)
                    .iter()
                    .any(|e| e.message == "applied" && e.action.as_deref() == Some(RELEASES[0]))
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        std::thread::sleep(pause);
        while self.events.try_recv().is_ok() {}
        Ok(match (vip, garp) {
            (Some(vip), Some(garp)) => Some(Round { t0, vip, released, garp }),
            _ => {
                eprintln!("{}: round incomplete (vip {vip:?}, garp {garp:?})", self.id);
                None
            }
        })
    }

    /// Waits until hagw logs this router's transition to `role` (from entry `from` on).
    fn wait_log(&self, log: &Log, from: usize, role: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if log
                .of_router(from, &self.id)
                .iter()
                .any(|e| e.message == "transition reconciled" && e.to.as_deref() == Some(role))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }
}

/// One router wired as on a node of `backend`, with its ToR, for the takeover and
/// keepalived's floor: router 0 (`qg-00000`, `ha-00000`) in namespace `<prefix>-t0`.
pub(super) struct TakeoverLab {
    pub(super) router: String,
    pub(super) tor: String,
    pub(super) wiring: Wiring,
}

impl TakeoverLab {
    pub(super) fn build(ctx: &Ctx, backend: Backend) -> Result<TakeoverLab> {
        let (router, tor) = (ctx.ns("t0"), ctx.ns("ttor"));
        ctx.batch(None, "t-ns", &[format!("netns add {router}"), format!("netns add {tor}")])?;
        let ns = router.clone();
        let wiring =
            Wiring::build(ctx, "t", backend, 1, &tor, |_| ns.clone(), fleet_dev, fleet_mac)?;
        add_ha_device(backend, &router, 0)?;
        Ok(TakeoverLab { router, tor, wiring })
    }

    pub(super) fn remove(self) -> Result<()> {
        self.wiring.remove()?;
        sh(&format!("ip netns del {}; ip netns del {}", self.router, self.tor))?;
        Ok(())
    }
}

/// What the takeover rounds gave.
pub(super) struct Takeovers {
    pub(super) rounds: Vec<Round>,
    pub(super) failed: usize,
}

impl Takeovers {
    pub(super) fn dist(&self, f: impl Fn(&Round) -> Option<f64>) -> Dist {
        Dist::of(self.rounds.iter().filter_map(|r| f(r).map(ms)).collect())
    }

    /// The detail lines of the notes.
    pub(super) fn report(&self, name: &str) -> Vec<String> {
        vec![
            format!("{name}: {} rounds ok, {} incomplete", self.rounds.len(), self.failed),
            format!(
                "  VIP add written -> VIP seen (ip monitor)   {}",
                self.dist(|r| Some(r.vip - r.t0)).show()
            ),
            format!(
                "  VIP add written -> hold released (log)     {}",
                self.dist(|r| r.released.map(|x| x - r.t0)).show()
            ),
            format!(
                "  VIP add written -> first gARP at the ToR   {}",
                self.dist(|r| Some(r.garp - r.t0)).show()
            ),
            format!(
                "  VIP seen        -> first gARP at the ToR   {}",
                self.dist(|r| Some(r.garp - r.vip)).show()
            ),
            format!(
                "  hold released   -> first gARP at the ToR   {}",
                self.dist(|r| r.released.map(|x| r.garp - x)).show()
            ),
        ]
    }
}

/// `rounds` takeovers of the lab's router by `hagw run` with `strategy`.
pub(super) fn measure(
    ctx: &Ctx,
    lab: &TakeoverLab,
    strategy: &str,
    rounds: usize,
    table: &mut Table,
    notes: &mut Vec<String>,
) -> Result<()> {
    let backend = lab.wiring.backend;
    eprintln!("takeover ({}, {strategy}): {rounds} rounds ...", backend.name());
    let state = ctx.dir.join("t-state");
    std::fs::write(&state, "backup")?;
    let config = ctx.dir.join("t-routers.yaml");
    let id = "takeover";
    let yaml = vip_router_yaml(id, &lab.router, 0, &lab.wiring.backend_yaml(0), strategy, &state);
    std::fs::write(&config, format!("{}routers:\n{yaml}", lab.wiring.header_yaml()))?;

    let (frames_tx, frames) = channel();
    let mut procs = Procs(vec![start_arp_capture(ctx, &lab.tor, "any", frames_tx)?]);
    let (arps, _rest) = split_arps(frames, fleet_mac(0));
    let (netns, env) = lab.wiring.hagw_env();
    let mut agent = ctx.start_hagw_in(&config, netns, &env)?;
    let log = Log::collect(&mut agent)?;
    procs.0.push(agent);
    // Standby reached and quiet before the first round.
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.routers_with(0, "converged", None).0.is_empty() {
        if Instant::now() > deadline {
            bail!("hagw did not reconcile the standby in 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    log.wait_quiet(Duration::from_millis(1000), Duration::from_secs(10));
    let mut probe = Probe::start(ctx, id, &lab.router, &ha_dev(0), strategy, arps)?;
    let mut res = Takeovers { rounds: Vec::new(), failed: 0 };
    for i in 0..rounds {
        match probe.round(&log, Duration::from_millis(100), Duration::from_secs(3))? {
            Some(round) => res.rounds.push(round),
            None => res.failed += 1,
        }
        if (i + 1) % 50 == 0 {
            eprintln!("  {} rounds", i + 1);
        }
    }
    drop(probe);
    drop(procs);
    notes.extend(res.report(&format!("takeover, hagw run ({}, {strategy})", backend.name())));
    let garp = res.dist(|r| Some(r.garp - r.t0));
    let seen = res.dist(|r| Some(r.garp - r.vip));
    let released = res.dist(|r| r.released.map(|x| x - r.t0));
    table.row(
        "takeover: VIP add -> hold released (hagw's log)",
        if released.n == 0 { "nothing to release".into() } else { released.brief() },
        "",
        None,
    );
    table.row(
        "takeover: VIP add -> first gARP at the ToR",
        format!("{}, {} incomplete", garp.brief(), res.failed),
        "p99 <= 5 ms",
        Some(garp.p99 <= 5.0 && res.failed == 0),
    );
    table.row("takeover: VIP seen -> first gARP at the ToR", seen.brief(), "", None);
    Ok(())
}
