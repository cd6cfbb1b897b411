//! Benchmark 4, idle: RSS and CPU of the agent with the fleet idle, from /proc.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

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

/// What the idle window gave.
pub(super) struct Idle {
    pub(super) secs: f64,
    pub(super) rss_mib: f64,
    /// VmHWM: the process's peak RSS so far (cold start and mass failover included).
    pub(super) peak_mib: f64,
    pub(super) cpu_s: f64,
}

impl Idle {
    pub(super) fn rows(&self, table: &mut Table) {
        table.row(
            &format!("idle {:.0} s after the mass failover: RSS", self.secs),
            format!("{:.1} MiB (peak {:.1} MiB)", self.rss_mib, self.peak_mib),
            "<= 30 MiB",
            Some(self.rss_mib <= 30.0),
        );
        table.row(
            &format!("idle {:.0} s after the mass failover: CPU", self.secs),
            format!("{:.2} s = {:.2} % of a core", self.cpu_s, 100.0 * self.cpu_s / self.secs),
            "~0",
            None,
        );
    }
}

/// RSS and CPU of the agent (`pid`) with `n` routers over `secs`.
pub(super) fn measure(
    n: usize,
    secs: u64,
    pid: u32,
    log: &Log,
    notes: &mut Vec<String>,
) -> Result<Idle> {
    eprintln!("idle: {secs} s ...");
    let before = proc_sample(pid)?;
    let lines_before = log.len();
    std::thread::sleep(Duration::from_secs(secs));
    let after = proc_sample(pid)?;
    let secs = after.at.duration_since(before.at).as_secs_f64();
    let cpu_s = (after.ticks - before.ticks) as f64 / clk_tck();
    let idle = Idle {
        secs,
        rss_mib: after.rss_kb as f64 / 1024.0,
        peak_mib: after.hwm_kb as f64 / 1024.0,
        cpu_s,
    };
    notes.push(format!(
        "idle {secs:.0} s with {n} routers: VmRSS {:.1} MiB -> {:.1} MiB, VmHWM {:.1} MiB, \
         threads {}, fds {}, CPU {cpu_s:.2} s ({:.2} % of one core), {} log lines",
        before.rss_kb as f64 / 1024.0,
        idle.rss_mib,
        idle.peak_mib,
        after.threads,
        after.fds,
        100.0 * cpu_s / secs,
        log.len() - lines_before
    ));
    Ok(idle)
}
