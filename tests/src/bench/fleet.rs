//! Benchmarks 2-4 share a fleet of routers (mass failover, cold start, idle); benchmark 3, the
//! cold start, is here too.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::ctx::Ctx;
use super::idle::{clk_tck, proc_sample};
use super::log::Log;
use super::stats::Table;
use super::wiring::{Backend, Wiring};
use super::{GATEWAY_CIDR, Opts, UPSTREAM_IP, ms, now};

/// Gateway device of router `i`: unique, as Neutron's `qg-<port id>` names are. (With the
/// same name in every namespace, each /proc/sys/net/ipv6/conf/<dev> lookup walks a dcache
/// hash chain holding that name once per namespace: O(routers) per sysctl access.)
pub(super) fn fleet_dev(i: usize) -> String {
    format!("qg-{i:05}")
}

pub(super) fn fleet_mac(i: usize) -> String {
    format!("fa:16:3e:01:{:02x}:{:02x}", i >> 8, i & 0xff)
}

pub(super) struct Fleet {
    pub(super) tor: String,
    pub(super) state: PathBuf,
    pub(super) config: PathBuf,
    pub(super) n: usize,
    /// "backend, strategy", for the table.
    pub(super) label: String,
    pub(super) wiring: Wiring,
}

pub(super) fn build_fleet(ctx: &Ctx, opts: &Opts, lines: &mut Vec<String>) -> Result<Fleet> {
    let n = opts.routers;
    let tor = ctx.ns("ftor");
    let t = Instant::now();
    let mut add: Vec<String> =
        (0..n).map(|i| format!("netns add {}", ctx.ns(&format!("f{i}")))).collect();
    add.push(format!("netns add {tor}"));
    ctx.batch(None, "fleet-netns", &add)?;
    let t_ns = t.elapsed();
    let router_ns = |i: usize| ctx.ns(&format!("f{i}"));
    let wiring = Wiring::build(ctx, opts.backend, n, &tor, router_ns, fleet_dev, fleet_mac)?;
    let ports = match opts.backend {
        Backend::Generic => "veth gateway ports (peers up at the ToR side)",
        Backend::LinuxBridge => "qg-/qr-/ha- veths, their taps on the node's brq bridges",
        Backend::Ovs => "qg-/qr-/ha- veths in br-int, all attached by ovs-vswitchd",
    };
    lines.push(format!(
        "fleet ({}): {n} namespaces in {:.1} s, with {ports} in {:.1} s",
        opts.backend.name(),
        t_ns.as_secs_f64(),
        t.elapsed().as_secs_f64()
    ));
    let state = ctx.dir.join("fleet-state");
    std::fs::write(&state, "backup")?;
    let strategy = opts.strategy();
    let mut yaml = wiring.header_yaml();
    yaml.push_str("routers:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  - id: r{i}\n    namespace: {}\n    gatewayDevice: {}\n    \
             gatewayAddresses: [{GATEWAY_CIDR}, \"2001:db8::10/64\"]\n    \
             routes:\n      - destination: 0.0.0.0/0\n        via: {UPSTREAM_IP}\n    \
             backend: {}\n    strategy: {strategy}\n    announce: {{repeats: 0}}\n    \
             silenceSettleMs: 500\n    role: {{stateFile: {}}}\n",
            router_ns(i),
            fleet_dev(i),
            wiring.backend_yaml(i),
            state.display()
        ));
    }
    let config = ctx.dir.join("fleet-routers.yaml");
    std::fs::write(&config, yaml)?;
    let label = format!("{}, {strategy}", opts.backend.name());
    Ok(Fleet { tor, state, config, n, label, wiring })
}

/// Cold start (benchmark 3): starts `hagw run` with the fleet and waits until every router
/// had its first pass and the log is quiet. Returns the agent, its pid and its log.
pub(super) fn cold_start(
    ctx: &Ctx,
    opts: &Opts,
    fleet: &Fleet,
    table: &mut Table,
    notes: &mut Vec<String>,
) -> Result<(Child, u32, Log)> {
    let n = opts.routers;
    let t_start = now();
    let (netns, env) = fleet.wiring.hagw_env();
    let mut agent = ctx.start_hagw_in(&fleet.config, netns, &env)?;
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
            &format!("3 cold start, {n} routers ({}): all reconciled", fleet.label),
            format!("{cold:.0} ms ({} of {n})", first_pass.len()),
            "<= 1 s",
            Some(cold <= 1000.0 && first_pass.len() == n),
        );
    }
    log.wait_quiet(Duration::from_secs(2), Duration::from_secs(60));
    Ok((agent, pid, log))
}
