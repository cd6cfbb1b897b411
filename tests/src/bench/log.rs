//! hagw's JSON log, parsed and collected while it is written.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::ctx::lines_of;

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `2026-11-25T13:52:44.149277Z` (UTC; the `Z` is optional) as epoch seconds.
pub(super) fn parse_utc(text: &str) -> Option<f64> {
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
pub(super) struct LogEntry {
    pub(super) ts: f64,
    pub(super) message: String,
    pub(super) router: Option<String>,
    pub(super) level: String,
    /// The `to` field of a role transition.
    pub(super) to: Option<String>,
    /// The `action` field of an `applied` step.
    pub(super) action: Option<String>,
}

pub(super) fn parse_log(line: &str) -> Option<LogEntry> {
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
    let action = fields.get("action").and_then(|a| a.as_str()).map(str::to_owned);
    Some(LogEntry { ts, message, router, level, to, action })
}

/// hagw's log, collected as it is written.
#[derive(Clone, Default)]
pub(super) struct Log(Arc<Mutex<Vec<LogEntry>>>);

impl Log {
    pub(super) fn collect(child: &mut Child) -> Result<Log> {
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

    pub(super) fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub(super) fn since(&self, from: usize) -> Vec<LogEntry> {
        self.0.lock().unwrap()[from..].to_vec()
    }

    /// The time of the first entry with `message` (and, if given, role `to`) of each router
    /// from index `from`, and the warnings and errors since then.
    pub(super) fn routers_with(
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

    /// The entries of router `id` from index `from`.
    pub(super) fn of_router(&self, from: usize, id: &str) -> Vec<LogEntry> {
        let entries = self.0.lock().unwrap();
        entries[from.min(entries.len())..]
            .iter()
            .filter(|e| e.router.as_deref() == Some(id))
            .cloned()
            .collect()
    }

    /// Waits until no entry has arrived for `quiet`, at most `within`.
    pub(super) fn wait_quiet(&self, quiet: Duration, within: Duration) {
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
