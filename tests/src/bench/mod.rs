//! `hagw-bench`: on-demand benchmarks of `hagw run` (results in `docs/benchmarks.md`; not
//! run in CI). Needs root, iproute2, tcpdump and arping.
//!
//! 1. `takeover`: keepalived's primary VIP is added on the router's `ha-` device → the
//!    gateway link comes up (hold released) → the first gratuitous ARP with the gateway MAC is
//!    on the wire at the peer (ToR side); flipped back and forth `--failovers` times. With
//!    `--baseline-rounds N > 0` the same is measured for an emulation of the Neutron L3
//!    agent's reaction path (wait `ha_vrrp_advert_int` = 2 s, raise the link, arping).
//! 2. `mass`: `--routers` routers (one namespace each, wired per `--backend`: see `wiring`;
//!    `--strategy`, one shared state file) fail over at once when the state file says
//!    `primary`: time until the last one's first gARP is on the wire at the ToR.
//! 3. `cold`: `hagw run` starts with those routers: time until every router's first
//!    reconcile pass is done (from hagw's JSON logs).
//! 4. `idle`: RSS and CPU of the agent with those routers idle for `--idle-secs` (after the
//!    mass failover when both run).
//! 5. `retag`: on real OVS (one node: ovsdb-server, ovs-vswitchd, br-int), a held standby's
//!    port is retagged `--retags` times as the OVS agent does after a restart: time until
//!    hagw has held it again, as an independent OVSDB monitor sees it.
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
mod idle;
mod log;
mod mass;
mod retag;
mod stats;
mod takeover;
mod wiring;

use ctx::{Ctx, stop};
use fleet::build_fleet;
use stats::Table;
use wiring::Backend;

const USAGE: &str = "\
usage: hagw-bench [--only takeover|mass|cold|idle|retag] [--failovers N] [--routers N]
                  [--idle-secs S] [--baseline-rounds N] [--resync S] [--retags N]
                  [--backend generic|linuxbridge|ovs] [--strategy S]

  --failovers N        takeover rounds (default 200)
  --baseline-rounds N  rounds of the emulated Neutron L3 agent path (default 10; 0 = skip)
  --routers N          routers for mass/cold/idle (default 1000)
  --idle-secs S        idle window for RSS/CPU (default 60)
  --resync S           hagw run --resync (default: hagw's default, 60)
  --retags N           OVS retags to measure hagw's re-hold on (default 100; 0 = skip)
  --only WHAT          run one measurement (cold and idle come with the fleet anyway)
  --backend B          the fleet's backend (default generic): linuxbridge and ovs wire
                       qg-/qr-/ha- ports into a node's bridges with an uplink to the ToR
  --strategy S         the fleet's strategy: link-down, l2-hold or silence-only (default
                       link-down for generic, l2-hold otherwise)

Example: hagw-bench --only mass --backend ovs --routers 1000

The hagw binary is HAGW_BIN or `hagw` next to this executable (cargo build --release).";

const GATEWAY_CIDR: &str = "203.0.113.10/24";
const GATEWAY_IP: &str = "203.0.113.10";
const UPSTREAM_IP: &str = "203.0.113.1";
const VIP: &str = "169.254.0.1/24";

struct Opts {
    failovers: usize,
    baseline_rounds: usize,
    routers: usize,
    idle_secs: u64,
    resync: Option<u64>,
    retags: usize,
    only: Option<String>,
    backend: Backend,
    strategy: Option<String>,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut opts = Opts {
            failovers: 200,
            baseline_rounds: 10,
            routers: 1000,
            idle_secs: 60,
            resync: None,
            retags: 100,
            only: None,
            backend: Backend::Generic,
            strategy: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let value = args.next().with_context(|| format!("{arg} needs a value\n{USAGE}"))?;
            let num = || value.parse::<u64>().with_context(|| format!("{arg} {value}"));
            match arg.as_str() {
                "--failovers" => opts.failovers = num()? as usize,
                "--baseline-rounds" => opts.baseline_rounds = num()? as usize,
                "--routers" => opts.routers = num()?.clamp(1, 65535) as usize,
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
                    if !["takeover", "mass", "cold", "idle", "retag"].contains(&value.as_str()) {
                        bail!("--only takeover|mass|cold|idle|retag, not {value}");
                    }
                    opts.only = Some(value);
                }
                _ => bail!("unknown argument {arg}\n{USAGE}"),
            }
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

fn run(ctx: &Ctx, opts: &Opts, table: &mut Table, notes: &mut Vec<String>) -> Result<()> {
    if opts.wants("takeover") && opts.failovers > 0 {
        takeover::measure(ctx, opts, table, notes)?;
    }
    if opts.wants("retag") && opts.retags > 0 {
        retag::measure(ctx, opts, table, notes)?;
    }
    if !(opts.wants("mass") || opts.wants("cold") || opts.wants("idle")) {
        return Ok(());
    }

    let n = opts.routers;
    eprintln!("fleet: building {n} routers ({}) ...", opts.backend.name());
    let fleet = build_fleet(ctx, opts, notes)?;

    let (agent, pid, log) = fleet::cold_start(ctx, opts, &fleet, table, notes)?;

    // 2. mass failover
    if opts.wants("mass") {
        mass::measure(ctx, &fleet, pid, &log, table, notes)?;
    }

    // 4. idle: after the mass failover, with every router primary, when both run
    if opts.wants("idle") {
        idle::measure(opts, &fleet.label, pid, &log, table, notes)?;
    }
    stop(agent);
    Ok(())
}

/// The whole run: parses the arguments, measures, cleans up and prints the results.
pub fn main() -> Result<()> {
    let opts = Opts::parse()?;
    let ns_before = sh("ip netns list | wc -l")?.trim().to_string();
    let mut ctx = Ctx::new(&opts)?;
    let machine =
        sh("echo \"$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), \
         $(free -g | awk '/Mem/{print $2}') GiB, kernel $(uname -r)\"")?;
    let load_start = load();
    let mut table = Table { rows: Vec::new() };
    let mut notes = Vec::new();
    let result = run(&ctx, &opts, &mut table, &mut notes);
    let load_end = load();
    let t = Instant::now();
    ctx.finish();
    let cleanup = t.elapsed();
    let ns_after = sh("ip netns list | wc -l")?.trim().to_string();
    let ours = sh(&format!("ip netns list | grep -c '^{}-' || true", ctx.prefix))?;

    println!("hagw-bench: {}", ctx.hagw.display());
    println!("machine: {}", machine.trim());
    println!("load average at start: {load_start}; at end: {load_end}");
    for note in &notes {
        println!("{note}");
    }
    println!();
    table.print();
    println!(
        "\ncleanup: {:.1} s; namespaces before {ns_before}, after {ns_after} (other users' tests \
         may add or remove theirs); {} of ours ({}-*) left",
        cleanup.as_secs_f64(),
        ours.trim(),
        ctx.prefix
    );
    result
}
