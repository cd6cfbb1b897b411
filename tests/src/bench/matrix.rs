//! One table per backend × strategy (`--matrix`: every combination the product supports),
//! and the cost curve over fleet sizes (`--curve`).

use anyhow::Result;

use super::ctx::{Ctx, stop};
use super::fleet::{Cold, build_fleet, cold_start};
use super::idle::Idle;
use super::mass::Mass;
use super::stats::{Dist, Table};
use super::takeover::TakeoverLab;
use super::wiring::Backend;
use super::{Opts, floor, idle, load, mass, takeover};

/// One table with its title, the load around it and the detail lines.
pub(super) struct Section {
    pub(super) title: String,
    pub(super) load: (String, String),
    pub(super) table: Table,
    pub(super) notes: Vec<String>,
}

impl Section {
    pub(super) fn new(title: String) -> Section {
        Section {
            title,
            load: (load(), String::new()),
            table: Table { rows: Vec::new() },
            notes: Vec::new(),
        }
    }

    /// Prints it (stdout, at once: a long run keeps what it has measured).
    pub(super) fn print(&mut self) {
        if self.load.1.is_empty() {
            self.load.1 = load();
        }
        println!("\n### {}\n", self.title);
        println!("load average at start {}; at end {}\n", self.load.0, self.load.1);
        self.table.print();
        println!();
        for note in &self.notes {
            println!("    {note}");
        }
    }

    /// An error ends this section, not the run: the next combination still runs.
    fn failed(&mut self, what: &str, error: anyhow::Error) {
        eprintln!("{}: {what} failed: {error:#}", self.title);
        self.notes.push(format!("{what} FAILED: {error:#}"));
        self.table.row(what, "failed (see below)".into(), "", Some(false));
    }
}

/// The fleet's figures of one combination.
struct FleetRun {
    cold: Cold,
    mass: Option<Mass>,
    idle: Option<Idle>,
}

/// Builds a fleet of `n` routers, starts hagw (the cold start), fails it over
/// (`--waves`), lets it idle (`--idle-secs`), and removes it.
fn fleet_run(
    ctx: &Ctx,
    opts: &Opts,
    backend: Backend,
    strategy: &str,
    n: usize,
    notes: &mut Vec<String>,
) -> Result<FleetRun> {
    eprintln!("fleet: building {n} routers ({}, {strategy}) ...", backend.name());
    let fleet = build_fleet(ctx, backend, strategy, n, notes)?;
    let run = (|| {
        let (agent, pid, log, cold) = cold_start(ctx, &fleet, notes)?;
        let measured = (|| {
            let mass = match opts.wants("mass") {
                true => Some(mass::measure(ctx, &fleet, pid, &log, opts.waves, notes)?),
                false => None,
            };
            let idle = match opts.wants("idle") {
                true => Some(idle::measure(n, opts.idle_secs, pid, &log, notes)?),
                false => None,
            };
            Ok(FleetRun { cold, mass, idle })
        })();
        stop(agent);
        measured
    })();
    fleet.remove(ctx)?;
    run
}

/// Every (backend, strategy) of this run: all the product supports with `--matrix`, else the
/// one of `--backend` and `--strategy`.
fn combinations(opts: &Opts) -> Vec<(Backend, Vec<String>)> {
    if opts.matrix {
        [Backend::Generic, Backend::LinuxBridge, Backend::Ovs]
            .into_iter()
            .map(|b| (b, b.strategies().iter().map(|s| s.to_string()).collect()))
            .collect()
    } else {
        vec![(opts.backend, vec![opts.strategy().to_string()])]
    }
}

/// The takeover (next to keepalived's floor, measured once per backend) and the fleet, per
/// combination; each section is printed as soon as it is done.
pub(super) fn run(ctx: &Ctx, opts: &Opts) -> Result<Vec<Section>> {
    let mut sections = Vec::new();
    let fleet = opts.wants("mass") || opts.wants("cold") || opts.wants("idle");
    for (backend, strategies) in combinations(opts) {
        let takeover = opts.wants("takeover") && opts.failovers > 0;
        let lab = if takeover { Some(TakeoverLab::build(ctx, backend)?) } else { None };
        let mut floor: Option<Result<Dist>> = None;
        if let Some(lab) = &lab
            && opts.baseline_rounds > 0
        {
            floor = Some(floor::measure(ctx, lab, opts.baseline_rounds));
        }
        for strategy in strategies {
            let mut s = Section::new(format!("{}, {strategy}", backend.name()));
            if let Some(lab) = &lab {
                let rounds = opts.failovers;
                if let Err(e) =
                    takeover::measure(ctx, lab, &strategy, rounds, &mut s.table, &mut s.notes)
                {
                    s.failed("takeover", e);
                }
                match &floor {
                    Some(Ok(dist)) => floor::row(&mut s.table, dist),
                    Some(Err(e)) => s.failed("keepalived's floor", anyhow::anyhow!("{e:#}")),
                    None => {}
                }
            }
            if fleet {
                match fleet_run(ctx, opts, backend, &strategy, opts.routers, &mut s.notes) {
                    Ok(run) => {
                        if let Some(m) = &run.mass {
                            m.rows(opts.routers, &mut s.table);
                        }
                        run.cold.row(opts.routers, &mut s.table);
                        if let Some(i) = &run.idle {
                            i.rows(&mut s.table);
                        }
                    }
                    Err(e) => s.failed(&format!("fleet of {} routers", opts.routers), e),
                }
            }
            s.print();
            sections.push(s);
        }
        if let Some(lab) = lab {
            lab.remove()?;
        }
    }
    Ok(sections)
}

/// `--curve`: the fleet at each size, and what each added router costs between sizes.
pub(super) fn curve(ctx: &Ctx, opts: &Opts) -> Result<Section> {
    let strategy = opts.strategy().to_string();
    let mut s = Section::new(format!(
        "cost per router, {}, {strategy}: {} routers",
        opts.backend.name(),
        opts.curve.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" / ")
    ));
    let mut points: Vec<(usize, FleetRun)> = Vec::new();
    for &n in &opts.curve {
        match fleet_run(ctx, opts, opts.backend, &strategy, n, &mut s.notes) {
            Ok(run) => {
                let mass = run.mass.as_ref().and_then(|m| m.waves.first());
                let idle = run.idle.as_ref();
                s.table.row(
                    &format!("{n} routers"),
                    format!(
                        "cold start {:.0} ms, CPU {:.2} s; mass failover last gARP {}, CPU {}; idle RSS {} (peak {})",
                        run.cold.ms,
                        run.cold.cpu_s,
                        mass.map_or("-".into(), |w| format!("{:.0} ms ({} of {n})", w.garps.max, w.garps.n)),
                        mass.map_or("-".into(), |w| format!("{:.2} s", w.cpu_s)),
                        idle.map_or("-".into(), |i| format!("{:.1} MiB", i.rss_mib)),
                        idle.map_or("-".into(), |i| format!("{:.1} MiB", i.peak_mib)),
                    ),
                    "",
                    None,
                );
                points.push((n, run));
            }
            Err(e) => s.failed(&format!("{n} routers"), e),
        }
    }
    for pair in points.windows(2) {
        let ((a, ra), (b, rb)) = (&pair[0], &pair[1]);
        let added = (*b - *a) as f64;
        let per = |x: Option<f64>, y: Option<f64>, scale: f64, unit: &str| match (x, y) {
            (Some(x), Some(y)) => format!("{:.1} {unit}", (y - x) * scale / added),
            _ => "-".into(),
        };
        let mass_cpu =
            |r: &FleetRun| r.mass.as_ref().and_then(|m| m.waves.first()).map(|w| w.cpu_s);
        let rss = |r: &FleetRun| r.idle.as_ref().map(|i| i.rss_mib);
        let peak = |r: &FleetRun| r.idle.as_ref().map(|i| i.peak_mib);
        s.table.row(
            &format!("per router added, {a} -> {b}"),
            format!(
                "idle RSS {}, peak RSS {}, cold-start CPU {}, mass-failover CPU {}",
                per(rss(ra), rss(rb), 1024.0, "KiB"),
                per(peak(ra), peak(rb), 1024.0, "KiB"),
                per(Some(ra.cold.cpu_s), Some(rb.cold.cpu_s), 1000.0, "ms"),
                per(mass_cpu(ra), mass_cpu(rb), 1000.0, "ms"),
            ),
            "no super-linear growth",
            None,
        );
    }
    s.print();
    Ok(s)
}
