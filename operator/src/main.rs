//! `hagw`: keeps the gateway ports of HA routers silent on standby nodes and loud on the
//! primary. See `hagw --help`.

mod agent;
mod cli;
mod k8s;
mod lock;
mod logging;
mod observe;
mod ready;
mod roles;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tune_allocator();
    let args = cli::Cli::parse();
    logging::init(&args.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hagw: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.spawn(give_back_freed_memory());
    runtime.block_on(cli::run(args))
}

/// How often memory freed since is given back to the system.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// glibc gives freed memory back to the system only from the top of a heap. What a burst of
/// passes frees (a mass failover of 1,000 routers: their passes, announcements and
/// connections at once) stayed resident: 45.7 MiB 15 s after such a failover, 33.2 MiB after
/// one `malloc_trim` (docs/benchmarks.md). It walks every arena, so it runs on the blocking
/// pool, not on a runtime thread a takeover may be waiting for.
async fn give_back_freed_memory() {
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        // SAFETY: malloc_trim only hands free pages of the allocator back to the system.
        let _ = tokio::task::spawn_blocking(|| unsafe { nix::libc::malloc_trim(0) }).await;
    }
}

/// Lets every allocation of 64 KiB or more have a mapping of its own, returned to the system
/// when freed, instead of coming from glibc's arenas (below its default threshold of 128 KiB,
/// which adapts upward). Each rtnetlink connection has a 64 KiB read buffer of which a
/// message touches a page or two; in an arena, the buffers of a thousand namespaces'
/// connections stayed resident after they were closed (idle RSS with 1,000 routers 56.6 MiB
/// without this, 32.4 MiB with it; docs/benchmarks.md). Limiting glibc to two arenas was
/// tried as well and made it worse (46.6 MiB): the main arena grew and kept what it freed.
fn tune_allocator() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before the runtime's
    // threads exist.
    unsafe { nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 64 * 1024) };
}
