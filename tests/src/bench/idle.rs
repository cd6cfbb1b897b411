//! Benchmark 4, idle: RSS and CPU of the agent with the fleet idle, from /proc.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Opts;
use super::log::Log;
use super::stats::Table;
use crate::lab::sh;

/// utime+stime (clock ticks) and a few lines of /proc/<pid>/status.
pub(super) struct ProcSample {
    pub(super) ticks: u64,
    /// Of which in the kernel (stime).
    pub(super) sys_ticks: u64,
    pub(super) rss_kb: u64,
    pub(super) hwm_kb: u64,
    pub(super) threads: u64,
    pub(super) fds: usize,
    pub(super) at: Instant,
}

pub(super) fn proc_sample(pid: u32) -> Result<ProcSample> {
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

pub(super) fn clk_tck() -> f64 {
    sh("getconf CLK_TCK").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(100.0)
}

/// RSS and CPU of the agent (`pid`) over `--idle-secs`.
pub(super) fn measure(
    opts: &Opts,
    label: &str,
    pid: u32,
    log: &Log,
    table: &mut Table,
    notes: &mut Vec<String>,
) -> Result<()> {
    let n = opts.routers;
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
        &format!("4 idle {secs:.0} s, {n} routers ({label}): RSS"),
        format!("{rss_mb:.1} MiB (peak {:.1} MiB)", after.hwm_kb as f64 / 1024.0),
        "<= 30 MiB",
        Some(after.rss_kb <= 30 * 1024),
    );
    table.row(
        &format!("4 idle {secs:.0} s, {n} routers ({label}): CPU"),
        format!("{cpu_s:.2} s CPU = {cpu_pct:.2} % of a core"),
        "~0",
        None,
    );
    Ok(())
}
