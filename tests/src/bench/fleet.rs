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
use super::takeover::vip_router_yaml;
use super::wiring::{Backend, Wiring, add_ha_device};
use super::{GATEWAY_CIDR, UPSTREAM_IP, ms, now};
use crate::lab::sh;

/// The router id of the fleet's probe: one more router, after the fleet's, whose role is its
/// own VIP, taken over and back while the fleet fails over (`mass`).
pub(super) const PROBE: &str = "probe";

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
    /// The routers' namespaces (the fleet's, then the probe's).
    pub(super) namespaces: Vec<String>,
    pub(super) tor: String,
    pub(super) state: PathBuf,
    pub(super) config: PathBuf,
    pub(super) n: usize,
    pub(super) strategy: String,
    pub(super) wiring: Wiring,
}

/// Builds `n` routers and the probe (router `n`) on `backend`, configured with `strategy`.
pub(super) fn build_fleet(
    ctx: &Ctx,
    backend: Backend,
    strategy: &str,
    n: usize,
    lines: &mut Vec<String>,
) -> Result<Fleet> {
    let tor = ctx.ns("ftor");
    let t = Instant::now();
    let router_ns = |i: usize| ctx.ns(&format!("f{i}"));
    let namespaces: Vec<String> = (0..=n).map(router_ns).collect();
    let mut add: Vec<String> = namespaces.iter().map(|ns| format!("netns add {ns}")).collect();
    add.push(format!("netns add {tor}"));
    ctx.batch(None, "fleet-netns", &add)?;
    let t_ns = t.elapsed();
    let wired = Wiring::build(ctx, "f", backend, n + 1, &tor, router_ns, fleet_dev, fleet_mac)
        .and_then(|w| add_ha_device(backend, &router_ns(n), n).map(|()| w));
    let wiring = match wired {
        Ok(wiring) => wiring,
        Err(e) => {
            // The next fleet of this run needs the names (the OVS daemons stopped when the
            // wiring dropped).
            let node = ctx.ns("fnode");
            let _ = delete_namespaces(ctx, namespaces.iter().chain([&tor, &node]));
            let _ = std::fs::remove_dir_all(ctx.dir.join("f-ovs"));
            return Err(e);
        }
    };
    let ports = match backend {
        Backend::Generic => "veth gateway ports (peers up at the ToR side)",
        Backend::LinuxBridge => "qg-/qr-/ha- veths, their taps on the node's brq bridges",
        Backend::Ovs => "qg-/qr-/ha- veths in br-int, all attached by ovs-vswitchd",
    };
    lines.push(format!(
        "fleet ({}): {n} namespaces and the probe's in {:.1} s, with {ports} in {:.1} s",
        backend.name(),
        t_ns.as_secs_f64(),
        t.elapsed().as_secs_f64()
    ));
    if let Some(ovs) = &wiring.ovs {
        lines.push(super::wiring::ovs_floor(ovs, n, 3 * (n + 1) + 5)?);
    }
    let state = ctx.dir.join("fleet-state");
    std::fs::write(&state, "backup")?;
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
    let probe_state = ctx.dir.join("probe-state");
    std::fs::write(&probe_state, "backup")?;
    let backend_yaml = wiring.backend_yaml(n);
    yaml.push_str(&vip_router_yaml(PROBE, &router_ns(n), n, &backend_yaml, strategy, &probe_state));
    let config = ctx.dir.join("fleet-routers.yaml");
    std::fs::write(&config, yaml)?;
    Ok(Fleet { namespaces, tor, state, config, n, strategy: strategy.into(), wiring })
}

impl Fleet {
    /// Deletes the fleet: its OVS, node, routers and ToR (hagw stopped first).
    pub(super) fn remove(self, ctx: &Ctx) -> Result<()> {
        self.wiring.remove()?;
        delete_namespaces(ctx, self.namespaces.iter().chain([&self.tor]))
    }
}

/// Deletes these namespaces in one `ip -force -batch` (missing ones are skipped).
fn delete_namespaces<'a>(ctx: &Ctx, names: impl Iterator<Item = &'a String>) -> Result<()> {
    let del: Vec<String> = names.map(|ns| format!("netns del {ns}")).collect();
    let file = ctx.dir.join("fleet-del");
    std::fs::write(&file, del.join("\n") + "\n")?;
    sh(&format!("ip -force -batch {} 2>/dev/null || true", file.display()))?;
    Ok(())
}

/// What the cold start gave.
pub(super) struct Cold {
    /// Start of `hagw run` → the last router's first pass done.
    pub(super) ms: f64,
    /// Routers (of the fleet's, not the probe) whose first pass was done.
    pub(super) done: usize,
    /// hagw's CPU until then, seconds.
    pub(super) cpu_s: f64,
}

impl Cold {
    pub(super) fn row(&self, n: usize, table: &mut Table) {
        table.row(
            "cold start: every router's first pass done",
            format!("{:.0} ms ({} of {n}), hagw CPU {:.2} s", self.ms, self.done, self.cpu_s),
            "<= 1 s",
            Some(self.ms <= 1000.0 && self.done == n),
        );
    }
}

/// Cold start (benchmark 3): starts `hagw run` with the fleet and waits until every router
/// had its first pass and the log is quiet. Returns the agent, its pid and its log.
pub(super) fn cold_start(
    ctx: &Ctx,
    fleet: &Fleet,
    notes: &mut Vec<String>,
) -> Result<(Child, u32, Log, Cold)> {
    let n = fleet.n;
    let t_start = now();
    let (netns, env) = fleet.wiring.hagw_env();
    let mut agent = ctx.start_hagw_in(&fleet.config, netns, &env)?;
    let pid = agent.id();
    let log = Log::collect(&mut agent)?;
    let deadline = Instant::now() + Duration::from_secs(120.max(n as u64 / 10));
    let (first_pass, failures) = loop {
        let (mut seen, failures) = log.routers_with(0, "converged", None);
        seen.remove(PROBE);
        if seen.len() >= n || Instant::now() > deadline {
            break (seen, failures);
        }
        if let Ok(Some(status)) = agent.try_wait() {
            bail!("hagw exited during cold start: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let cold_cpu = proc_sample(pid)?;
    let (mut managed, _) = log.routers_with(0, "managing router", None);
    managed.remove(PROBE);
    let last_managed = managed.values().copied().fold(f64::NAN, f64::max);
    let last_first_pass = first_pass.values().copied().fold(f64::NAN, f64::max);
    let first_log = log.since(0).first().map(|e| e.ts).unwrap_or(f64::NAN);
    let cold = Cold {
        ms: ms(last_first_pass - t_start),
        done: first_pass.len(),
        cpu_s: cold_cpu.ticks as f64 / clk_tck(),
    };
    notes.push(format!(
        "cold start: {} of {n} routers had their first pass; first log line +{:.0} ms, last worker started +{:.0} ms, \
         last first pass done +{:.0} ms after the process was started; {} warnings; \
         CPU until then {:.2} s ({:.2} s in the kernel)",
        cold.done,
        ms(first_log - t_start),
        ms(last_managed - t_start),
        cold.ms,
        failures.len(),
        cold.cpu_s,
        cold_cpu.sys_ticks as f64 / clk_tck(),
    ));
    for f in failures.iter().take(5) {
        notes.push(format!("  warning: {} {}", f.router.as_deref().unwrap_or("-"), f.message));
    }
    log.wait_quiet(Duration::from_secs(2), Duration::from_secs(60));
    Ok((agent, pid, log, cold))
}
