//! Benchmark 1, takeover reaction: the primary VIP appears -> link up -> first gARP at the
//! peer, with hagw and with an emulation of the Neutron L3 agent.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::ctx::{Ctx, lines_of, stop};
use super::log::{Log, parse_utc};
use super::stats::{Dist, Table};
use super::{GATEWAY_CIDR, GATEWAY_IP, Opts, UPSTREAM_IP, VIP, ms, now};
use crate::lab::sh;

/// What the observers in the router namespace and at the peer saw.
#[derive(Debug)]
pub(super) enum Ev {
    /// `ip -ts monitor`: the gateway link's admin state changed.
    Link { ts: f64, up: bool },
    /// `ip -ts monitor`: the primary VIP was added or removed.
    Vip { ts: f64, added: bool },
    /// tcpdump at the peer: an ARP frame from the gateway MAC.
    Arp { ts: f64 },
}

/// One event line of `TZ=UTC ip -ts monitor link address`.
pub(super) fn parse_monitor(line: &str, gateway: &str) -> Option<Ev> {
    let rest = line.strip_prefix('[')?;
    let (stamp, rest) = rest.split_once("] ")?;
    let ts = parse_utc(stamp)?;
    let vip_addr = VIP.split('/').next().unwrap_or(VIP);
    if rest.contains(&format!("inet {vip_addr}/")) {
        return Some(Ev::Vip { ts, added: !rest.starts_with("Deleted") });
    }
    let named = rest.contains(&format!(" {gateway}@")) || rest.contains(&format!(" {gateway}:"));
    if named && !rest.starts_with("Deleted") {
        let flags = rest.split_once('<')?.1.split_once('>')?.0;
        return Some(Ev::Link { ts, up: flags.split(',').any(|f| f == "UP") });
    }
    None
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

#[derive(Debug, Clone, Copy)]
pub(super) struct Round {
    /// Just before the VIP add was written to `ip -batch` (already running in the netns).
    pub(super) t0: f64,
    /// The VIP add as seen by `ip monitor` in the namespace (the add has happened).
    pub(super) vip: f64,
    /// The gateway link's admin UP as seen by `ip monitor` (hold released).
    pub(super) up: f64,
    /// First ARP with the gateway MAC at the peer (pcap timestamp).
    pub(super) garp: f64,
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Reactor {
    Hagw,
    /// Emulated Neutron L3 agent: VIP seen → sleep ha_vrrp_advert_int (2 s) → link up →
    /// arping.
    NeutronEmulation,
}

pub(super) struct TakeoverResult {
    pub(super) rounds: Vec<Round>,
    pub(super) failed: usize,
}

pub(super) fn bench_takeover(ctx: &Ctx, reactor: Reactor, rounds: usize) -> Result<TakeoverResult> {
    let tag = if reactor == Reactor::Hagw { "t" } else { "n" };
    let (r, t) = (ctx.ns(tag), ctx.ns(&format!("{tag}tor")));
    let mac = "fa:16:3e:00:00:01";
    ctx.batch(None, &format!("{tag}-ns"), &[format!("netns add {r}"), format!("netns add {t}")])?;
    sh(&format!(
        "ip -n {r} link set lo up && \
         ip link add qg0 address {mac} netns {r} type veth peer name qp0 netns {t} && \
         ip -n {t} link set qp0 up && \
         ip -n {r} link add ha0 type veth peer name hp0 && \
         ip -n {r} link set hp0 up && ip -n {r} link set ha0 up"
    ))?;
    let state = ctx.dir.join(format!("{tag}-state"));
    std::fs::write(&state, "backup")?;

    let (tx, rx) = channel::<Ev>();
    // Observers first, so that they see everything.
    let mut monitor = {
        let mut cmd = Command::new("ip");
        cmd.env("TZ", "UTC").args(["-n", &r, "-ts", "monitor", "link", "address"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        ctx.spawn(&mut cmd)?
    };
    let mon_tx = tx.clone();
    lines_of(monitor.stdout.take().context("monitor stdout")?, move |line| {
        if let Some(ev) = parse_monitor(&line, "qg0") {
            let _ = mon_tx.send(ev);
        }
    });
    let (arp_tx, arp_rx) = channel();
    let capture = start_arp_capture(ctx, &t, "qp0", arp_tx)?;
    let arp_fwd = tx.clone();
    let mac_owned = mac.to_string();
    std::thread::spawn(move || {
        for (ts, src) in arp_rx {
            if src == mac_owned && arp_fwd.send(Ev::Arp { ts }).is_err() {
                break;
            }
        }
    });

    let reactor_child = match reactor {
        Reactor::Hagw => {
            let config = ctx.dir.join(format!("{tag}-routers.yaml"));
            std::fs::write(
                &config,
                format!(
                    "routers:\n  - id: bench-takeover\n    namespace: {r}\n    gatewayDevice: qg0\n    \
                     haDevice: ha0\n    primaryVip: {VIP}\n    \
                     gatewayAddresses: [{GATEWAY_CIDR}, \"2001:db8::10/64\"]\n    \
                     routes:\n      - destination: 0.0.0.0/0\n        via: {UPSTREAM_IP}\n    \
                     strategy: link-down\n    announce: {{repeats: 0}}\n    silenceSettleMs: 500\n    \
                     role: {{stateFile: {}}}\n",
                    state.display()
                ),
            )?;
            let mut child = ctx.start_hagw(&config)?;
            let log = Log::collect(&mut child)?;
            // Standby reached: the gateway is silenced (addr_gen_mode 1) and quiet.
            let deadline = Instant::now() + Duration::from_secs(10);
            while sh(&format!("ip netns exec {r} cat /proc/sys/net/ipv6/conf/qg0/addr_gen_mode"))?
                .trim()
                != "1"
            {
                if Instant::now() > deadline {
                    bail!("hagw did not reconcile the standby");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            log.wait_quiet(Duration::from_millis(700), Duration::from_secs(5));
            child
        }
        Reactor::NeutronEmulation => {
            let vip_addr = VIP.split('/').next().unwrap_or(VIP);
            let script = format!(
                "ip monitor address dev ha0 | while read -r line; do\n\
                   case \"$line\" in\n\
                     Deleted*\"inet {vip_addr}/\"*) ip link set qg0 down ;;\n\
                     *\"inet {vip_addr}/\"*) sleep 2; ip link set qg0 up; \
                        ip addr replace {GATEWAY_CIDR} dev qg0; \
                        arping -q -U -c 1 -I qg0 {GATEWAY_IP} ;;\n\
                   esac\n\
                 done"
            );
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &r, "setsid", "bash", "-c", &script]);
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            let child = ctx.spawn(&mut cmd)?;
            std::thread::sleep(Duration::from_millis(300));
            child
        }
    };

    let mut batch = {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &r, "-batch", "-"]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::inherit());
        ctx.spawn(&mut cmd)?
    };
    let mut vip_cmd = batch.stdin.take().context("ip -batch stdin")?;
    std::thread::sleep(Duration::from_millis(200));
    while rx.try_recv().is_ok() {}

    let limit = match reactor {
        Reactor::Hagw => Duration::from_secs(3),
        Reactor::NeutronEmulation => Duration::from_secs(6),
    };
    let mut result = TakeoverResult { rounds: Vec::new(), failed: 0 };
    for i in 0..rounds {
        let t0 = now();
        writeln!(vip_cmd, "address add {VIP} dev ha0")?;
        vip_cmd.flush()?;
        let (mut vip, mut up, mut garp) = (None, None, None);
        let deadline = Instant::now() + limit;
        while (vip.is_none() || up.is_none() || garp.is_none()) && Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(Ev::Vip { ts, added: true }) => vip = vip.or(Some(ts)),
                Ok(Ev::Link { ts, up: true }) => up = up.or(Some(ts)),
                Ok(Ev::Arp { ts }) => garp = garp.or(Some(ts)),
                _ => {}
            }
        }
        match (vip, up, garp) {
            (Some(vip), Some(up), Some(garp)) => result.rounds.push(Round { t0, vip, up, garp }),
            _ => {
                result.failed += 1;
                eprintln!("round {i}: incomplete (vip {vip:?}, up {up:?}, garp {garp:?})");
            }
        }
        // Back to standby; wait for the hold (link down), then let the pass finish.
        std::thread::sleep(Duration::from_millis(50));
        writeln!(vip_cmd, "address del {VIP} dev ha0")?;
        vip_cmd.flush()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(Ev::Link { up: false, .. }) => break,
                _ if Instant::now() > deadline => bail!("round {i}: standby hold not seen"),
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(250));
        while rx.try_recv().is_ok() {}
        if (i + 1) % 50 == 0 {
            eprintln!("  {} rounds", i + 1);
        }
    }
    drop(vip_cmd);
    let _ = batch.wait();
    stop(reactor_child);
    stop(capture);
    stop(monitor);
    sh(&format!("ip netns del {r}; ip netns del {t}"))?;
    Ok(result)
}

pub(super) fn report_takeover(name: &str, res: &TakeoverResult) -> Vec<String> {
    let d = |f: &dyn Fn(&Round) -> f64| Dist::of(res.rounds.iter().map(|r| ms(f(r))).collect());
    vec![
        format!("{name}: {} rounds ok, {} incomplete", res.rounds.len(), res.failed),
        format!("  VIP add written -> VIP seen (ip monitor) {}", d(&|r| r.vip - r.t0).show()),
        format!("  VIP add written -> link up (hold released) {}", d(&|r| r.up - r.t0).show()),
        format!("  VIP add written -> first gARP on the wire  {}", d(&|r| r.garp - r.t0).show()),
        format!("  VIP seen        -> first gARP on the wire  {}", d(&|r| r.garp - r.vip).show()),
        format!("  link up         -> first gARP on the wire  {}", d(&|r| r.garp - r.up).show()),
    ]
}

/// The takeover measurement with hagw and, with `--baseline-rounds`, the emulated L3 agent.
pub(super) fn measure(
    ctx: &Ctx,
    opts: &Opts,
    table: &mut Table,
    notes: &mut Vec<String>,
) -> Result<()> {
    eprintln!("takeover: {} failovers with hagw run ...", opts.failovers);
    let res = bench_takeover(ctx, Reactor::Hagw, opts.failovers)?;
    notes.extend(report_takeover("takeover, hagw run (generic backend, link-down)", &res));
    let garp = Dist::of(res.rounds.iter().map(|r| ms(r.garp - r.t0)).collect());
    let up = Dist::of(res.rounds.iter().map(|r| ms(r.up - r.t0)).collect());
    table.row(
        "1 takeover: VIP add -> link up",
        format!("p50 {:.2} / p99 {:.2} / max {:.2} ms (n={})", up.p50, up.p99, up.max, up.n),
        "",
        None,
    );
    table.row(
        "1 takeover: VIP add -> first gARP",
        format!(
            "p50 {:.2} / p99 {:.2} / max {:.2} ms (n={}, {} incomplete)",
            garp.p50, garp.p99, garp.max, garp.n, res.failed
        ),
        "p99 <= 5 ms",
        Some(garp.p99 <= 5.0 && res.failed == 0),
    );
    if opts.baseline_rounds > 0 {
        eprintln!(
            "takeover baseline: {} rounds of the emulated L3 agent ...",
            opts.baseline_rounds
        );
        let base = bench_takeover(ctx, Reactor::NeutronEmulation, opts.baseline_rounds)?;
        notes.extend(report_takeover(
            "baseline: emulated Neutron L3 agent (wait ha_vrrp_advert_int 2 s, link up, arping)",
            &base,
        ));
        let garp = Dist::of(base.rounds.iter().map(|r| ms(r.garp - r.t0)).collect());
        table.row(
            "1 baseline: emulated L3 agent, VIP -> gARP",
            format!(
                "p50 {:.1} / p99 {:.1} / max {:.1} ms (n={})",
                garp.p50, garp.p99, garp.max, garp.n
            ),
            "",
            None,
        );
    }
    Ok(())
}
