//! How the agent's memory goes back to the system: glibc's allocator tuned at start, and what
//! a burst of work freed handed back once the agent is quiet again (docs/benchmarks.md, "Idle
//! memory").

use std::time::Duration;

use tokio::time::Instant;

/// How often the agent looks whether it has just become quiet.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// CPU time within one look above which the agent counts as busy. A resting fleet of 1,000
/// routers uses well under it (its resyncs are spread over 12 s); a burst of passes (a mass
/// failover, a resync round, a cold start) uses far more.
const BUSY: Duration = Duration::from_millis(20);

/// The longest time between two trims: what a quiet stretch frees (a namespace's netlink
/// connection closing 10 s after its last pass) is handed back too.
const TRIM_AT_LEAST_EVERY: Duration = Duration::from_secs(30);

/// Whether to trim now, from the CPU time each look saw.
#[derive(Debug)]
struct Trimmer {
    busy: bool,
    last_trim: Instant,
}

impl Trimmer {
    fn new(now: Instant) -> Self {
        Trimmer { busy: false, last_trim: now }
    }

    /// `used`: the process's CPU time since the previous look.
    fn look(&mut self, used: Duration, now: Instant) -> bool {
        let busy = used >= BUSY;
        // Also when it never becomes quiet (a Linux bridge agent's 4-6 % of a core at rest).
        let due = (self.busy && !busy) || now >= self.last_trim + TRIM_AT_LEAST_EVERY;
        self.busy = busy || (self.busy && !due);
        if due {
            self.last_trim = now;
        }
        due
    }
}

/// The CPU time this process has used (all threads).
fn cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// glibc gives freed memory back to the system only from the top of a heap. What a burst of
/// passes frees (a mass failover of 1,000 routers: their passes, announcements and
/// connections at once) stayed resident: 45.7 MiB 15 s after such a failover, 33.2 MiB after
/// one `malloc_trim`. Trimming every 30 s left up to 30 s of it resident after each burst
/// (66 MiB for 25 s after a Linux bridge mass failover, 36 MiB once trimmed), so the agent
/// trims as soon as a burst is over, and at least every 30 s, busy or not.
/// `malloc_trim` walks every arena, so it runs on the blocking pool, not on a runtime thread
/// a takeover may be waiting for.
pub async fn give_back_freed_memory() {
    let mut every = tokio::time::interval(LOOK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut trimmer = Trimmer::new(Instant::now());
    let mut last = cpu_time();
    loop {
        every.tick().await;
        let now = cpu_time();
        let used = now.saturating_sub(last);
        last = now;
        if trimmer.look(used, Instant::now()) {
            // SAFETY: malloc_trim only hands free pages of the allocator back to the system.
            let _ = tokio::task::spawn_blocking(|| unsafe { nix::libc::malloc_trim(0) }).await;
            // The trim's own CPU time is not the agent's work.
            last = cpu_time();
        }
    }
}

/// Lets every allocation of 64 KiB or more have a mapping of its own, returned to the system
/// when freed, instead of coming from glibc's arenas (below its default threshold of 128 KiB,
/// which adapts upward). Each rtnetlink connection has a 64 KiB read buffer of which a
/// message touches a page or two; in an arena, the buffers of a thousand namespaces'
/// connections stayed resident after they were closed (idle RSS with 1,000 routers 56.6 MiB
/// without this, 32.4 MiB with it; docs/benchmarks.md). Limiting glibc to two arenas was
/// tried as well and made it worse (46.6 MiB): the main arena grew and kept what it freed.
pub fn tune_allocator() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before the runtime's
    // threads exist.
    unsafe { nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 64 * 1024) };
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn trims_once_when_a_burst_is_over() {
        let start = Instant::now();
        let mut trimmer = Trimmer::new(start);
        let at = |s: u64| start + Duration::from_secs(s);
        // Busy: no trim while it lasts.
        assert!(!trimmer.look(500 * MS, at(1)));
        assert!(!trimmer.look(900 * MS, at(2)));
        // The first quiet look trims, the next ones do not.
        assert!(trimmer.look(2 * MS, at(3)));
        assert!(!trimmer.look(2 * MS, at(4)));
        assert!(!trimmer.look(MS, at(20)));
        // Another burst, another trim.
        assert!(!trimmer.look(BUSY, at(21)));
        assert!(trimmer.look(Duration::ZERO, at(22)));
    }

    #[test]
    fn a_busy_agent_still_trims_every_30_s() {
        let start = Instant::now();
        let mut trimmer = Trimmer::new(start);
        let trims: Vec<u64> =
            (1..=100).filter(|&s| trimmer.look(BUSY, start + Duration::from_secs(s))).collect();
        assert_eq!(trims, [30, 60, 90]);
        // Quiet at last: one more trim, for what the last busy stretch freed.
        assert!(trimmer.look(MS, start + Duration::from_secs(101)));
    }

    #[test]
    fn a_quiet_agent_trims_every_30_s() {
        let start = Instant::now();
        let mut trimmer = Trimmer::new(start);
        let trims: Vec<u64> =
            (1..=100).filter(|&s| trimmer.look(MS, start + Duration::from_secs(s))).collect();
        assert_eq!(trims, [30, 60, 90]);
    }
}
