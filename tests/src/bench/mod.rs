//! `hagw-bench`: on-demand benchmarks of `hagw run` (results in `docs/benchmarks.md`; not
//! run in CI). Needs root, iproute2, tcpdump, keepalived and Open vSwitch. Per backend ×
//! strategy (`--backend`, `--strategy`; `--matrix`: every combination the product supports),
//! one table:
//!
//! 1. `takeover`: keepalived's primary VIP is added on a router's `ha-` device → hagw releases
//!    the hold → the first gratuitous ARP with the gateway MAC reaches the ToR; `--failovers`
//!    rounds, next to keepalived's floor (`floor`: keepalived's own VIP → gARP at the ToR on
//!    the same wiring, no hagw; `--baseline-rounds`, measured once per backend).
//! 2. `mass`: `--routers` routers (one namespace each, wired per backend: see `wiring`; one
//!    shared state file) fail over at once when the state file says `primary`: time until the
//!    last one's first gARP is at the ToR; `--waves` times (back to standby between). An
//!    unrelated router (the probe) is taken over and back throughout.
//! 3. `cold`: `hagw run` starts with those routers: time until every router's first
//!    reconcile pass is done (from hagw's JSON logs).
//! 4. `idle`: RSS and CPU of the agent with those routers idle for `--idle-secs` after the
//!    mass failover.
//!
//! Apart: `--curve N,N,…` (the fleet at each size: what an added router costs) and `retag`
//! (on real OVS, a held standby's port retagged `--retags` times as the OVS agent does after
//! a restart: time until hagw has held it again, as an independent OVSDB monitor sees it).
//!
//! Timestamps are CLOCK_REALTIME everywhere: this process, `ip -ts monitor` (run with
//! TZ=UTC), tcpdump's packet timestamps and hagw's JSON log timestamps.
//!
//! Everything it creates (namespaces `hb<pid>-…`, processes, files) is removed at the end,
//! and also when it is interrupted or killed: a guardian shell, which ignores SIGINT, waits
//! for this process's end (EOF on its stdin) and cleans up.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::lab::sh;

mod ctx;
mod fleet;
mod floor;
mod idle;
mod log;
mod mass;
mod matrix;
mod restart;
mod retag;
mod stats;
mod takeover;
mod wiring;

use ctx::Ctx;
use matrix::Section;
use wiring::Backend;

const USAGE: &str = "\
usage: hagw-bench [--matrix] [--backend generic|linuxbridge|ovs] [--strategy S]
                  [--only takeover|mass|cold|idle|retag|ovs-restart] [--failovers N]
                  [--baseline-rounds N]
                  [--routers N] [--waves N] [--idle-secs S] [--resync S] [--retags N]
                  [--curve N,N,...]

  --matrix             every backend x strategy the product supports, one table each
  --backend B          the backend (default generic): linuxbridge and ovs wire qg-/qr-/ha-
                       ports into a node's bridges with an uplink to the ToR
  --strategy S         link-down, l2-hold or silence-only (default link-down for generic,
                       l2-hold otherwise)
  --failovers N        takeover rounds (default 200)
  --baseline-rounds N  rounds of keepalived's floor, per backend (default 50; 0 = skip)
  --routers N          routers for mass/cold/idle (default 1000)
  --waves N            mass failovers of the fleet, back to standby between (default 1)
  --idle-secs S        idle window for RSS/CPU (default 60)
  --resync S           hagw run --resync (default: hagw's default, 60)
  --retags N           OVS retags to measure hagw's re-hold on (default 100; 0 = skip)
  --only WHAT          run one measurement (cold comes with the fleet anyway);
                       ovs-restart (only when asked, --backend ovs): ovs-vswitchd restarted
                       under the fleet's held standby routers
  --curve N,N,...      only the fleet at each size, on --backend/--strategy: cold start,
                       mass failover, idle, and the cost per added router between sizes

Example: hagw-bench --matrix --waves 5 --idle-secs 30

The hagw binary is HAGW_BIN or `hagw` next to this executable (cargo build --release).";

const GATEWAY_CIDR: &str = "203.0.113.10/24";
const UPSTREAM_IP: &str = "203.0.113.1";
const VIP: &str = "169.254.0.1/24";

struct Opts {
    matrix: bool,
    failovers: usize,
    baseline_rounds: usize,
    routers: usize,
    waves: usize,
    idle_secs: u64,
    resync: Option<u64>,
    retags: usize,
    only: Option<String>,
    backend: Backend,
    strategy: Option<String>,
    curve: Vec<usize>,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut opts = Opts {
            matrix: false,
            failovers: 200,
            baseline_rounds: 50,
            routers: 1000,
            waves: 1,
            idle_secs: 60,
            resync: None,
            retags: 100,
            only: None,
            backend: Backend::Generic,
            strategy: None,
            curve: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            if arg == "--matrix" {
                opts.matrix = true;
                continue;
            }
            let value = args.next().with_context(|| format!("{arg} needs a value\n{USAGE}"))?;
            let num = || value.parse::<u64>().with_context(|| format!("{arg} {value}"));
            match arg.as_str() {
                "--failovers" => opts.failovers = num()? as usize,
                "--baseline-rounds" => opts.baseline_rounds = num()? as usize,
                "--routers" => opts.routers = num()?.clamp(1, 65534) as usize,
                "--waves" => opts.waves = num()?.max(1) as usize,
                "--idle-secs" => opts.idle_secs = num()?,
                "--resync" => opts.resync = Some(num()?),
                "--retags" => opts.retags = num()? as usize,
                "--backend" => opts.backend = Backend::parse(&value)?,
                "--strategy" => {
                    if !["link-down", "l2-hold", "silence-only"].contains(&value.as_str()) {
                        bail!("--strategy link-down|l2-hold|silence-only, not {value}");
                    }
                    opts.strategy = Some(value);
                }
                "--only" => {
                    let known = ["takeover", "mass", "cold", "idle", "retag", "ovs-restart"];
                    if !known.contains(&value.as_str()) {
                        bail!("--only takeover|mass|cold|idle|retag|ovs-restart, not {value}");
                    }
                    opts.only = Some(value);
                }
                "--curve" => {
                    opts.curve = value
                        .split(',')
                        .map(|n| n.trim().parse::<usize>().map(|n| n.clamp(1, 65534)))
                        .collect::<Result<_, _>>()
                        .with_context(|| format!("--curve {value}"))?;
                }
                _ => bail!("unknown argument {arg}\n{USAGE}"),
            }
        }
        if !opts.backend.strategies().contains(&opts.strategy()) {
            bail!(
                "{} is not a strategy of the {} backend (docs/backends.md): {}",
                opts.strategy(),
                opts.backend.name(),
                opts.backend.strategies().join(", ")
            );
        }
        Ok(opts)
    }

    fn strategy(&self) -> &str {
        self.strategy.as_deref().unwrap_or(self.backend.default_strategy())
    }

    fn wants(&self, what: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == what)
    }
}

/// Seconds since the epoch (CLOCK_REALTIME).
fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}

fn ms(seconds: f64) -> f64 {
    seconds * 1000.0
}

/// The `hagw` binary: `HAGW_BIN`, or the one next to this executable.
fn hagw_bin() -> Result<PathBuf> {
    if let Ok(bin) = std::env::var("HAGW_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("executable directory")?.join("hagw");
    if !bin.exists() {
        bail!("{} missing: cargo build --release -p hagw -p hagw-e2e --bins", bin.display());
    }
    Ok(bin)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn run(ctx: &Ctx, opts: &Opts) -> Result<Vec<Section>> {
    if !opts.curve.is_empty() {
        return Ok(vec![matrix::curve(ctx, opts)?]);
    }
    let mut sections = matrix::run(ctx, opts)?;
    if !opts.matrix && opts.wants("retag") && opts.retags > 0 {
        let mut s = Section::new("retag reaction (OVS)".into());
        retag::measure(ctx, opts, &mut s.table, &mut s.notes)?;
        s.print();
        sections.push(s);
    }
    if opts.only.as_deref() == Some("ovs-restart") {
        let mut s = Section::new("ovs-vswitchd restart (OVS)".into());
        restart::run(ctx, opts, &mut s.table, &mut s.notes)?;
        s.print();
        sections.push(s);
    }
    Ok(sections)
}

/// The whole run: parses the arguments, measures (printing each table as it is done), cleans
/// up.
pub fn main() -> Result<()> {
    let opts = Opts::parse()?;
    let ns_before = sh("ip netns list | wc -l")?.trim().to_string();
    let mut ctx = Ctx::new(&opts)?;
    let machine =
        sh("echo \"$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), \
         $(free -g | awk '/Mem/{print $2}') GiB, kernel $(uname -r)\"")?;
    let commit = sh("git describe --always --dirty 2>/dev/null || echo unknown")?;
    println!("hagw-bench {}", std::env::args().skip(1).collect::<Vec<_>>().join(" "));
    println!("date: {}", sh("date -u '+%Y-%m-%d %H:%M UTC'")?.trim());
    println!("commit (working directory): {}; hagw: {}", commit.trim(), ctx.hagw.display());
    println!("machine: {}", machine.trim());
    println!("load average at start: {}", load());
    let result = run(&ctx, &opts);
    let load_end = load();
    let t = Instant::now();
    ctx.finish();
    let cleanup = t.elapsed();
    let ns_after = sh("ip netns list | wc -l")?.trim().to_string();
    let ours = sh(&format!("ip netns list | grep -c '^{}-' || true", ctx.prefix))?;
    println!(
        "\nload average at end: {load_end}; cleanup: {:.1} s; namespaces before {ns_before}, after \
         {ns_after} (other users' tests may add or remove theirs); {} of ours ({}-*) left",
        cleanup.as_secs_f64(),
        ours.trim(),
        ctx.prefix
    );
    result.map(|_| ())
}
