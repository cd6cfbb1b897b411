//! `hagw-bench`: on-demand benchmarks of `hagw run` (results in `docs/benchmarks.md`; not
//! run in CI). Needs root, iproute2, tcpdump and arping.
//!
//! 1. `takeover`: keepalived's primary VIP is added on the router's `ha-` device → the
//!    gateway link comes up (hold released) → the first gratuitous ARP with the gateway MAC is
//!    on the wire at the peer (ToR side); flipped back and forth `--failovers` times. With
//!    `--baseline-rounds N > 0` the same is measured for an emulation of the Neutron L3
//!    agent's reaction path (wait `ha_vrrp_advert_int` = 2 s, raise the link, arping).
//! 2. `mass`: `--routers` routers (one namespace and veth gateway port each, generic backend,
//!    link-down strategy, one shared state file) fail over at once when the state file says
//!    `primary`: time until the last one's first gARP is on the wire.
//! 3. `cold`: `hagw run` starts with those routers: time until every router's first
//!    reconcile pass is done (from hagw's JSON logs).
//! 4. `idle`: RSS and CPU of the agent with those routers idle for `--idle-secs`.
//!
//! Timestamps are CLOCK_REALTIME everywhere: this process, `ip -ts monitor` (run with
//! TZ=UTC), tcpdump's packet timestamps and hagw's JSON log timestamps.
//!
//! Everything it creates (namespaces `hb<pid>-…`, processes, files) is removed at the end,
//! and also when it is interrupted or killed: a guardian shell, which ignores SIGINT, waits
//! for this process's end (EOF on its stdin) and cleans up.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use hagw_e2e::sh;

const USAGE: &str = "\
usage: hagw-bench [--only takeover|mass|cold|idle] [--failovers N] [--routers N]
                  [--idle-secs S] [--baseline-rounds N] [--resync S]

  --failovers N        takeover rounds (default 200)
  --baseline-rounds N  rounds of the emulated Neutron L3 agent path (default 10; 0 = skip)
  --routers N          routers for mass/cold/idle (default 1000)
  --idle-secs S        idle window for RSS/CPU (default 60)
  --resync S           hagw run --resync (default: hagw's default, 60)
  --only WHAT          run one measurement (cold and idle come with the fleet anyway)

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
    only: Option<String>,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut opts = Opts {
            failovers: 200,
            baseline_rounds: 10,
            routers: 1000,
            idle_secs: 60,
            resync: None,
            only: None,
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
                "--only" => {
                    if !["takeover", "mass", "cold", "idle"].contains(&value.as_str()) {
                        bail!("--only takeover|mass|cold|idle, not {value}");
                    }
                    opts.only = Some(value);
                }
                _ => bail!("unknown argument {arg}\n{USAGE}"),
            }
        }
        Ok(opts)
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

/// Names, files and processes of this run; the guardian removes them when we end.
struct Ctx {
    prefix: String,
    dir: PathBuf,
    hagw: PathBuf,
    hagw_args: Vec<String>,
    guardian: Option<(Child, ChildStdin)>,
}

impl Ctx {
    fn new(opts: &Opts) -> Result<Ctx> {
        let prefix = format!("hb{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("hagw-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("pids"), "")?;
        let hagw = hagw_bin()?;
        let help = Command::new(&hagw).args(["run", "--help"]).output()?;
        let mut hagw_args = vec!["--log-format".into(), "json".into()];
        hagw_args.extend(["--log-level".into(), "info".into()]);
        if String::from_utf8_lossy(&help.stdout).contains("--metrics-addr") {
            hagw_args.extend(["--metrics-addr".into(), "none".into()]);
        }
        if let Some(resync) = opts.resync {
            hagw_args.extend(["--resync".into(), resync.to_string()]);
        }
        let d = dir.display();
        let script = format!(
            "trap '' INT TERM HUP; cat >/dev/null\n\
             xargs -r kill -9 < {d}/pids 2>/dev/null\n\
             ip netns list | awk '{{print $1}}' | grep '^{prefix}-' | sed 's/^/netns del /' > {d}/del\n\
             ip -force -batch {d}/del >/dev/null 2>&1\n\
             rm -rf {d}\n"
        );
        let mut child = Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the cleanup guardian")?;
        let stdin = child.stdin.take().context("guardian stdin")?;
        Ok(Ctx { prefix, dir, hagw, hagw_args, guardian: Some((child, stdin)) })
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Starts a process whose pid the guardian kills if we die.
    fn spawn(&self, cmd: &mut Command) -> Result<Child> {
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let mut pids = OpenOptions::new().append(true).open(self.dir.join("pids"))?;
        writeln!(pids, "{}", child.id())?;
        Ok(child)
    }

    fn start_hagw(&self, config: &Path) -> Result<Child> {
        let mut cmd = Command::new(&self.hagw);
        cmd.args(["run", "-c"]).arg(config).args(&self.hagw_args);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        self.spawn(&mut cmd)
    }

    /// Runs an `ip -batch` file built from `lines`, in namespace `ns` if given.
    fn batch(&self, ns: Option<&str>, name: &str, lines: &[String]) -> Result<()> {
        let file = self.dir.join(name);
        std::fs::write(&file, lines.join("\n") + "\n")?;
        let netns = ns.map(|n| format!("-n {n} ")).unwrap_or_default();
        sh(&format!("ip {netns}-batch {}", file.display()))?;
        Ok(())
    }

    /// Removes everything (the guardian does it; we wait for it).
    fn finish(&mut self) {
        let _ = std::fs::write(self.dir.join("pids"), "");
        if let Some((mut child, stdin)) = self.guardian.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// Stops a child: SIGTERM, then SIGKILL after a grace period.
fn stop(mut child: Child) {
    let _ = sh(&format!("kill -TERM {} 2>/dev/null", child.id()));
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads lines of `stream` on a thread.
fn lines_of(stream: impl Read + Send + 'static, mut each: impl FnMut(String) + Send + 'static) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(line) => each(line),
                Err(_) => break,
            }
        }
    });
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `2026-11-25T13:52:44.149277Z` (UTC; the `Z` is optional) as epoch seconds.
fn parse_utc(text: &str) -> Option<f64> {
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.trim_end_matches('Z');
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, mi, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    Some((days_from_civil(y, m, day) * 86400 + h * 3600 + mi * 60 + s) as f64 + frac)
}

/// One line of hagw's JSON log.
#[derive(Debug, Clone)]
struct LogEntry {
    ts: f64,
    message: String,
    router: Option<String>,
    level: String,
    /// The `to` field of a role transition.
    to: Option<String>,
}

fn parse_log(line: &str) -> Option<LogEntry> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let ts = parse_utc(v.get("timestamp")?.as_str()?)?;
    let fields = v.get("fields")?;
    let message = fields.get("message")?.as_str()?.to_string();
    let router = fields
        .get("router")
        .or_else(|| v.get("span").and_then(|s| s.get("router")))
        .and_then(|r| r.as_str())
        .map(str::to_owned);
    let level = v.get("level").and_then(|l| l.as_str()).unwrap_or("").to_string();
    let to = fields.get("to").and_then(|t| t.as_str()).map(str::to_owned);
    Some(LogEntry { ts, message, router, level, to })
}

/// hagw's log, collected as it is written.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<LogEntry>>>);

impl Log {
    fn collect(child: &mut Child) -> Result<Log> {
        let log = Log::default();
        let entries = Arc::clone(&log.0);
        let stderr = child.stderr.take().context("hagw stderr")?;
        // HAGW_BENCH_LOG=FILE keeps a copy of hagw's raw log (appended).
        let mut copy = std::env::var_os("HAGW_BENCH_LOG")
            .and_then(|path| OpenOptions::new().create(true).append(true).open(path).ok());
        lines_of(stderr, move |line| {
            if let Some(file) = copy.as_mut() {
                let _ = writeln!(file, "{line}");
            }
            match parse_log(&line) {
                Some(entry) => entries.lock().unwrap().push(entry),
                None => eprintln!("hagw: {line}"),
            }
        });
        Ok(log)
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn since(&self, from: usize) -> Vec<LogEntry> {
        self.0.lock().unwrap()[from..].to_vec()
    }

    /// The time of the first entry with `message` (and, if given, role `to`) of each router
    /// from index `from`, and the warnings and errors since then.
    fn routers_with(
        &self,
        from: usize,
        message: &str,
        to: Option<&str>,
    ) -> (HashMap<String, f64>, Vec<LogEntry>) {
        let mut first = HashMap::new();
        let mut failures = Vec::new();
        for e in self.since(from) {
            if e.message == message
                && (to.is_none() || e.to.as_deref() == to)
                && let Some(r) = &e.router
            {
                first.entry(r.clone()).or_insert(e.ts);
            }
            if e.level == "WARN" || e.level == "ERROR" {
                failures.push(e);
            }
        }
        (first, failures)
    }

    /// Waits until no entry has arrived for `quiet`, at most `within`.
    fn wait_quiet(&self, quiet: Duration, within: Duration) {
        let deadline = Instant::now() + within;
        let mut last = (self.len(), Instant::now());
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let n = self.len();
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return;
            }
        }
    }
}

/// Percentile (nearest rank) of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[derive(Debug, Clone)]
struct Dist {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
    min: f64,
}

impl Dist {
    fn of(mut values: Vec<f64>) -> Dist {
        values.sort_by(|a, b| a.total_cmp(b));
        Dist {
            n: values.len(),
            p50: pct(&values, 50.0),
            p99: pct(&values, 99.0),
            max: values.last().copied().unwrap_or(f64::NAN),
            min: values.first().copied().unwrap_or(f64::NAN),
        }
    }

    fn show(&self) -> String {
        format!(
            "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  min {:.2} ms  (n={})",
            self.p50, self.p99, self.max, self.min, self.n
        )
    }
}

// ---------------------------------------------------------------------------------------
// 1. takeover reaction
// ---------------------------------------------------------------------------------------

/// What the observers in the router namespace and at the peer saw.
#[derive(Debug)]
enum Ev {
    /// `ip -ts monitor`: the gateway link's admin state changed.
    Link { ts: f64, up: bool },
    /// `ip -ts monitor`: the primary VIP was added or removed.
    Vip { ts: f64, added: bool },
    /// tcpdump at the peer: an ARP frame from the gateway MAC.
    Arp { ts: f64 },
}

/// One event line of `TZ=UTC ip -ts monitor link address`.
fn parse_monitor(line: &str, gateway: &str) -> Option<Ev> {
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
fn parse_tcpdump(line: &str) -> Option<(f64, String)> {
    let mut tokens = line.split_whitespace();
    let ts = tokens.next()?.parse().ok()?;
    let mac = tokens.find(|t| t.len() == 17 && t.matches(':').count() == 5)?;
    Some((ts, mac.to_ascii_lowercase()))
}

/// Starts tcpdump for ARP frames received on `dev` in `ns`; waits until it listens.
fn start_arp_capture(ctx: &Ctx, ns: &str, dev: &str, each: Sender<(f64, String)>) -> Result<Child> {
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
struct Round {
    /// Just before the VIP add was written to `ip -batch` (already running in the netns).
    t0: f64,
    /// The VIP add as seen by `ip monitor` in the namespace (the add has happened).
    vip: f64,
    /// The gateway link's admin UP as seen by `ip monitor` (hold released).
    up: f64,
    /// First ARP with the gateway MAC at the peer (pcap timestamp).
    garp: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Reactor {
    Hagw,
    /// Emulated Neutron L3 agent: VIP seen → sleep ha_vrrp_advert_int (2 s) → link up →
    /// arping.
    NeutronEmulation,
}

struct TakeoverResult {
    rounds: Vec<Round>,
    failed: usize,
}

fn bench_takeover(ctx: &Ctx, reactor: Reactor, rounds: usize) -> Result<TakeoverResult> {
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

fn report_takeover(name: &str, res: &TakeoverResult) -> Vec<String> {
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

// ---------------------------------------------------------------------------------------
// 2-4. the fleet: cold start, idle, mass failover
// ---------------------------------------------------------------------------------------

/// Gateway device of router `i`: unique, as Neutron's `qg-<port id>` names are. (With the
/// same name in every namespace, each /proc/sys/net/ipv6/conf/<dev> lookup walks a dcache
/// hash chain holding that name once per namespace: O(routers) per sysctl access.)
fn fleet_dev(i: usize) -> String {
    format!("qg-{i:05}")
}

fn fleet_mac(i: usize) -> String {
    format!("fa:16:3e:01:{:02x}:{:02x}", i >> 8, i & 0xff)
}

struct Fleet {
    tor: String,
    state: PathBuf,
    config: PathBuf,
    n: usize,
}

fn build_fleet(ctx: &Ctx, n: usize, lines: &mut Vec<String>) -> Result<Fleet> {
    let tor = ctx.ns("ftor");
    let t = Instant::now();
    let mut add: Vec<String> =
        (0..n).map(|i| format!("netns add {}", ctx.ns(&format!("f{i}")))).collect();
    add.push(format!("netns add {tor}"));
    ctx.batch(None, "fleet-netns", &add)?;
    let t_ns = t.elapsed();
    let links: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "link add {} address {} netns {} type veth peer name qp{i} netns {tor}",
                fleet_dev(i),
                fleet_mac(i),
                ctx.ns(&format!("f{i}"))
            )
        })
        .collect();
    ctx.batch(None, "fleet-links", &links)?;
    let ups: Vec<String> = (0..n).map(|i| format!("link set qp{i} up")).collect();
    ctx.batch(Some(&tor), "fleet-up", &ups)?;
    lines.push(format!(
        "fleet: {n} namespaces in {:.1} s, with veth gateway ports (peers up at the ToR side) in {:.1} s (ip -batch)",
        t_ns.as_secs_f64(),
        t.elapsed().as_secs_f64()
    ));
    let state = ctx.dir.join("fleet-state");
    std::fs::write(&state, "backup")?;
    let mut yaml = String::from("routers:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  - id: r{i}\n    namespace: {}\n    gatewayDevice: {}\n    \
             gatewayAddresses: [{GATEWAY_CIDR}, \"2001:db8::10/64\"]\n    \
             routes:\n      - destination: 0.0.0.0/0\n        via: {UPSTREAM_IP}\n    \
             strategy: link-down\n    announce: {{repeats: 0}}\n    silenceSettleMs: 500\n    \
             role: {{stateFile: {}}}\n",
            ctx.ns(&format!("f{i}")),
            fleet_dev(i),
            state.display()
        ));
    }
    let config = ctx.dir.join("fleet-routers.yaml");
    std::fs::write(&config, yaml)?;
    Ok(Fleet { tor, state, config, n })
}

/// utime+stime (clock ticks) and a few lines of /proc/<pid>/status.
struct ProcSample {
    ticks: u64,
    /// Of which in the kernel (stime).
    sys_ticks: u64,
    rss_kb: u64,
    hwm_kb: u64,
    threads: u64,
    fds: usize,
    at: Instant,
}

fn proc_sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); `after` starts at field 3.
    let sys_ticks = f[12].parse::<u64>()?;
    let ticks = f[11].parse::<u64>()? + sys_ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    Ok(ProcSample {
        ticks,
        sys_ticks,
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
        threads: field("Threads:"),
        fds,
        at: Instant::now(),
    })
}

fn clk_tck() -> f64 {
    sh("getconf CLK_TCK").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(100.0)
}

struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    fn row(&mut self, what: &str, result: String, target: &str, ok: Option<bool>) {
        let verdict = match ok {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        };
        self.rows.push([what.into(), result, target.into(), verdict.into()]);
    }

    fn print(&self) {
        let header = ["measurement", "result", "target", ""];
        let mut widths = header.map(str::len);
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let line = |cells: [&str; 4]| {
            let mut s = String::from("|");
            for (c, w) in cells.iter().zip(widths) {
                s.push_str(&format!(" {c:<w$} |"));
            }
            println!("{s}");
        };
        line(header);
        println!("|{}|", widths.map(|w| "-".repeat(w + 2)).join("|"));
        for r in &self.rows {
            line([&r[0], &r[1], &r[2], &r[3]]);
        }
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn run(ctx: &Ctx, opts: &Opts, table: &mut Table, notes: &mut Vec<String>) -> Result<()> {
    if opts.wants("takeover") && opts.failovers > 0 {
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
    }
    if !(opts.wants("mass") || opts.wants("cold") || opts.wants("idle")) {
        return Ok(());
    }

    let n = opts.routers;
    eprintln!("fleet: building {n} routers ...");
    let fleet = build_fleet(ctx, n, notes)?;

    // 3. cold start
    let t_start = now();
    let mut agent = ctx.start_hagw(&fleet.config)?;
    let pid = agent.id();
    let log = Log::collect(&mut agent)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (first_pass, failures) = loop {
        let (seen, failures) = log.routers_with(0, "converged", None);
        if seen.len() >= fleet.n || Instant::now() > deadline {
            break (seen, failures);
        }
        if let Ok(Some(status)) = agent.try_wait() {
            bail!("hagw exited during cold start: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let cold_cpu = proc_sample(pid)?;
    let (managed, _) = log.routers_with(0, "managing router", None);
    let last_managed = managed.values().copied().fold(f64::NAN, f64::max);
    let last_first_pass = first_pass.values().copied().fold(f64::NAN, f64::max);
    let first_log = log.since(0).first().map(|e| e.ts).unwrap_or(f64::NAN);
    let cold = ms(last_first_pass - t_start);
    notes.push(format!(
        "cold start: {} of {n} routers had their first pass; first log line +{:.0} ms, last worker started +{:.0} ms, \
         last first pass done +{cold:.0} ms after the process was started; {} warnings; \
         CPU until then {:.2} s ({:.2} s in the kernel)",
        first_pass.len(),
        ms(first_log - t_start),
        ms(last_managed - t_start),
        failures.len(),
        cold_cpu.ticks as f64 / clk_tck(),
        cold_cpu.sys_ticks as f64 / clk_tck(),
    ));
    for f in failures.iter().take(5) {
        notes.push(format!("  warning: {} {}", f.router.as_deref().unwrap_or("-"), f.message));
    }
    if opts.wants("cold") {
        table.row(
            &format!("3 cold start, {n} routers: all reconciled"),
            format!("{cold:.0} ms ({} of {n})", first_pass.len()),
            "<= 1 s",
            Some(cold <= 1000.0 && first_pass.len() == n),
        );
    }
    log.wait_quiet(Duration::from_secs(2), Duration::from_secs(60));

    // 4. idle
    if opts.wants("idle") {
        eprintln!("idle: {} s ...", opts.idle_secs);
        let before = proc_sample(pid)?;
        let lines_before = log.len();
        std::thread::sleep(Duration::from_secs(opts.idle_secs));
        let after = proc_sample(pid)?;
        let secs = after.at.duration_since(before.at).as_secs_f64();
        let cpu_s = (after.ticks - before.ticks) as f64 / clk_tck();
        let cpu_pct = 100.0 * cpu_s / secs;
        let rss_mb = after.rss_kb as f64 / 1024.0;
        notes.push(format!(
            "idle {secs:.0} s with {n} routers: VmRSS {:.1} MiB -> {rss_mb:.1} MiB, VmHWM {:.1} MiB, \
             threads {}, fds {}, CPU {cpu_s:.2} s ({cpu_pct:.2} % of one core), {} log lines",
            before.rss_kb as f64 / 1024.0,
            after.hwm_kb as f64 / 1024.0,
            after.threads,
            after.fds,
            log.len() - lines_before
        ));
        table.row(
            &format!("4 idle {secs:.0} s, {n} routers: RSS"),
            format!("{rss_mb:.1} MiB (peak {:.1} MiB)", after.hwm_kb as f64 / 1024.0),
            "<= 30 MB",
            Some(after.rss_kb as f64 * 1024.0 <= 30e6),
        );
        table.row(
            &format!("4 idle {secs:.0} s, {n} routers: CPU"),
            format!("{cpu_s:.2} s CPU = {cpu_pct:.2} % of a core"),
            "~0",
            None,
        );
    }

    // 2. mass failover
    if opts.wants("mass") {
        eprintln!("mass failover of {n} routers ...");
        let (arp_tx, arp_rx) = channel();
        let capture = start_arp_capture(ctx, &fleet.tor, "any", arp_tx)?;
        std::thread::sleep(Duration::from_millis(200));
        while arp_rx.try_recv().is_ok() {}
        let from = log.len();
        let cpu_before = proc_sample(pid)?;
        let t0 = now();
        std::fs::write(&fleet.state, "primary")?;
        let wanted: HashSet<String> = (0..n).map(fleet_mac).collect();
        let mut garp: HashMap<String, f64> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while garp.len() < n && Instant::now() < deadline {
            if let Ok((ts, mac)) = arp_rx.recv_timeout(Duration::from_millis(50))
                && wanted.contains(&mac)
            {
                garp.entry(mac).or_insert(ts);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let (transitions, failures) = loop {
            let (seen, failures) = log.routers_with(from, "transition reconciled", Some("primary"));
            if seen.len() >= n || Instant::now() > deadline {
                break (seen, failures);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let cpu_after = proc_sample(pid)?;
        stop(capture);
        notes.push(format!(
            "mass failover: hagw CPU {:.2} s ({:.2} s in the kernel) until all were announced and logged",
            (cpu_after.ticks - cpu_before.ticks) as f64 / clk_tck(),
            (cpu_after.sys_ticks - cpu_before.sys_ticks) as f64 / clk_tck(),
        ));
        let arps = Dist::of(garp.values().map(|ts| ms(ts - t0)).collect());
        let logged = Dist::of(transitions.values().map(|ts| ms(ts - t0)).collect());
        notes.push(format!(
            "mass failover ({n} routers, one state file rewritten): first gARP per router after the write: {}",
            arps.show()
        ));
        notes.push(format!(
            "  'transition reconciled' logged after the write: {}; {} warnings",
            logged.show(),
            failures.len()
        ));
        for f in failures.iter().take(5) {
            notes.push(format!("  warning: {} {}", f.router.as_deref().unwrap_or("-"), f.message));
        }
        table.row(
            &format!("2 mass failover, {n} routers: last gARP"),
            format!("{:.0} ms ({} of {n} announced; p50 {:.0} ms)", arps.max, arps.n, arps.p50),
            "<= 250 ms",
            Some(arps.max <= 250.0 && arps.n == n),
        );
    }
    stop(agent);
    Ok(())
}

fn main() -> Result<()> {
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
