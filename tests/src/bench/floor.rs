//! keepalived's floor: how soon keepalived's own first gratuitous ARP reaches the ToR once it
//! has added the primary VIP, with no hagw and the gateway port up and wired (the legacy
//! setup, whose standby leaks): the least any takeover can take on that wiring. Real
//! keepalived in the takeover lab's router namespace, with Neutron's VRRP instance (VIP on
//! `ha-`, the gateway address excluded on `qg-`), VRRPv3 with `advert_int 0.1` so that a
//! round takes half a second. A round: a tracked interface goes down (FAULT: keepalived
//! removes the VIP), then up (BACKUP, then MASTER three adverts later: VIP, gARPs).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::ctx::{Ctx, Procs, lines_of};
use super::fleet::{fleet_dev, fleet_mac};
use super::stats::{Dist, Table};
use super::takeover::{Ev, TakeoverLab, parse_monitor, split_arps, start_arp_capture};
use super::wiring::ha_dev;
use super::{GATEWAY_CIDR, VIP, ms};
use crate::lab::sh;

/// Neutron's instance (keepalived.conf as the L3 agent writes it, `advert_int` shortened)
/// tracking `trk` as well.
fn keepalived_conf(ha: &str, qg: &str, trk: &str) -> String {
    format!(
        "global_defs {{\n    router_id bench\n    vrrp_version 3\n}}\n\
         vrrp_instance VR_1 {{\n    state BACKUP\n    interface {ha}\n    virtual_router_id 1\n    \
         priority 50\n    garp_master_delay 60\n    nopreempt\n    advert_int 0.1\n    \
         track_interface {{\n        {ha}\n        {trk}\n    }}\n    \
         virtual_ipaddress {{\n        {VIP} dev {ha}\n    }}\n    \
         virtual_ipaddress_excluded {{\n        {GATEWAY_CIDR} dev {qg} no_track\n    }}\n}}\n"
    )
}

/// keepalived's VIP seen → first gARP at the ToR, over `rounds` transitions to MASTER.
/// Incomplete rounds are reported, not counted.
pub(super) fn measure(ctx: &Ctx, lab: &TakeoverLab, rounds: usize) -> Result<Dist> {
    let backend = lab.wiring.backend.name();
    eprintln!("keepalived's floor ({backend}): {rounds} rounds ...");
    let r = &lab.router;
    let (ha, qg, trk) = (ha_dev(0), fleet_dev(0), "kt0");
    sh(&format!(
        "ip -n {r} link add {trk} type veth peer name kt1 && ip -n {r} link set kt1 up && \
         ip -n {r} link set {trk} up && ip -n {r} link set {qg} up"
    ))?;
    let conf = ctx.dir.join("floor-keepalived.conf");
    std::fs::write(&conf, keepalived_conf(&ha, &qg, trk))?;

    let (frames_tx, frames) = channel();
    // Stopped when this returns, whichever way (the writer after its stdin closed).
    let mut procs = Procs(vec![start_arp_capture(ctx, &lab.tor, "any", frames_tx)?]);
    let (arps, _rest) = split_arps(frames, fleet_mac(0));
    let (tx, events) = channel();
    let mut monitor = {
        let mut cmd = Command::new("ip");
        cmd.env("TZ", "UTC").args(["-n", r, "-ts", "monitor", "address"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        ctx.spawn(&mut cmd)?
    };
    let mon_tx = tx.clone();
    let stdout = monitor.stdout.take().context("monitor stdout")?;
    procs.0.push(monitor);
    lines_of(stdout, move |line| {
        if let Some(ev) = parse_monitor(&line) {
            let _ = mon_tx.send(ev);
        }
    });
    std::thread::spawn(move || {
        for ts in arps {
            if tx.send(Ev::Arp { ts }).is_err() {
                break;
            }
        }
    });
    let d = ctx.dir.display();
    let keepalived = {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", r, "keepalived", "-n", "-l", "-G", "-P", "-f"]).arg(&conf);
        cmd.args(["-p", &format!("{d}/floor-ka.pid"), "-r", &format!("{d}/floor-vrrp.pid")]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        ctx.spawn(&mut cmd)?
    };
    procs.0.push(keepalived);
    let mut batch = {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", r, "-batch", "-"]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::inherit());
        ctx.spawn(&mut cmd)?
    };
    let mut link = batch.stdin.take().context("ip -batch stdin")?;
    procs.0.push(batch);

    // The first MASTER (after start-up) is not a round; then down/up per round.
    let mut res = Vec::new();
    let mut failed = 0;
    let wait_vip = |added: bool, within: Duration| -> Option<f64> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Ev::Vip { ts, added: a }) = events.recv_timeout(Duration::from_millis(20))
                && a == added
            {
                return Some(ts);
            }
        }
        None
    };
    if wait_vip(true, Duration::from_secs(10)).is_none() {
        bail!("keepalived did not become MASTER within 10 s");
    }
    if let Ok(pid) = std::fs::read_to_string(ctx.dir.join("floor-vrrp.pid")) {
        ctx.adopt_pid(pid.trim())?;
    }
    for i in 0..rounds {
        writeln!(link, "link set {trk} down")?;
        link.flush()?;
        if wait_vip(false, Duration::from_secs(3)).is_none() {
            bail!("round {i}: keepalived did not remove the VIP (FAULT)");
        }
        std::thread::sleep(Duration::from_millis(50));
        while events.try_recv().is_ok() {}
        writeln!(link, "link set {trk} up")?;
        link.flush()?;
        let (mut vip, mut garp) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(5);
        while (vip.is_none() || garp.is_none()) && Instant::now() < deadline {
            match events.recv_timeout(Duration::from_millis(20)) {
                Ok(Ev::Vip { ts, added: true }) => vip = vip.or(Some(ts)),
                Ok(Ev::Arp { ts }) => garp = garp.or(Some(ts)),
                _ => {}
            }
        }
        match (vip, garp) {
            (Some(vip), Some(garp)) => res.push(ms(garp - vip)),
            _ => {
                failed += 1;
                eprintln!("floor round {i}: incomplete (vip {vip:?}, garp {garp:?})");
            }
        }
    }
    drop(link);
    drop(procs);
    sh(&format!("ip -n {r} link del {trk}"))?;
    if failed > 0 {
        eprintln!("keepalived's floor: {failed} incomplete rounds");
    }
    Ok(Dist::of(res))
}

/// The floor's row in a combination's table.
pub(super) fn row(table: &mut Table, floor: &Dist) {
    table.row(
        "keepalived's floor (no hagw): VIP seen -> first gARP at the ToR",
        floor.brief(),
        "",
        None,
    );
}
