//! `ovs-restart` (OVS fleet only): ovs-vswitchd killed and started again under the fleet's
//! held standby routers. A restart loses every port's `no-receive` (OpenFlow port state,
//! not in OVSDB) and Neutron's flows; the OVS agent installs the flows again, hagw must set
//! `no-receive` again on every standby port. Timed from the kill until ovs-vswitchd lists
//! every gateway port with `no-receive` again; the ToR capture counts any frame from a
//! gateway MAC meanwhile.

use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::ctx::{Ctx, lines_of, stop};
use super::fleet::{Fleet, build_fleet, cold_start};
use super::stats::Table;
use super::wiring::Backend;
use super::{Opts, ms, now};
use crate::lab::sh;
use crate::ovs::install_neutron_flows;

/// Builds the OVS fleet, starts hagw (every router standby, held), restarts ovs-vswitchd
/// once and measures the re-hold.
pub(super) fn run(
    ctx: &Ctx,
    opts: &Opts,
    table: &mut Table,
    notes: &mut Vec<String>,
) -> Result<()> {
    if opts.backend != Backend::Ovs {
        bail!("--only ovs-restart needs --backend ovs");
    }
    let n = opts.routers;
    eprintln!("fleet: building {n} routers (ovs, {}) ...", opts.strategy());
    let mut fleet = build_fleet(ctx, Backend::Ovs, opts.strategy(), n, notes)?;
    let measured = (|| {
        let (agent, _pid, _log, _cold) = cold_start(ctx, &fleet, notes)?;
        let measured = measure(ctx, &mut fleet, table, notes);
        stop(agent);
        measured
    })();
    fleet.remove(ctx)?;
    measured
}

/// Restarts the fleet's ovs-vswitchd once and measures the re-hold of every gateway port
/// (the fleet's and the probe's, all standby).
fn measure(ctx: &Ctx, fleet: &mut Fleet, table: &mut Table, notes: &mut Vec<String>) -> Result<()> {
    let n = fleet.n + 1;
    let label = format!("{}, {}", fleet.wiring.backend.name(), fleet.strategy);
    let Some(ovs) = fleet.wiring.ovs.as_mut() else { bail!("not an OVS fleet") };
    let held = |ovs: &crate::ovs::Ovs| -> Result<(usize, usize)> {
        let desc = ovs.ofctl("-O OpenFlow13 dump-ports-desc br-int 2>/dev/null || true")?;
        Ok(gateway_ports(&desc))
    };
    let (listed, no_recv) = held(ovs)?;
    if no_recv < n {
        bail!("before the restart only {no_recv} of {n} gateway ports ({listed} listed) are held");
    }
    eprintln!("ovs-vswitchd restart under {n} held routers ...");
    let tor = fleet.tor.clone();
    // Frames whose source is a gateway MAC (fa:16:3e:01:xx:xx) reaching the ToR.
    let pcap = ctx.dir.join("restart.pcap");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &tor, "tcpdump", "-i", "up0", "-Q", "in", "-n"]);
    cmd.args(["-B", "65536", "--immediate-mode", "-w"]).arg(&pcap);
    cmd.arg("ether[6:4] == 0xfa163e01");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut capture = ctx.spawn(&mut cmd)?;
    let (ready_tx, ready_rx) = channel();
    lines_of(capture.stderr.take().context("tcpdump stderr")?, move |line| {
        if line.contains("listening on") {
            let _ = ready_tx.send(());
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).context("tcpdump did not start")?;

    let t0 = now();
    ovs.respawn_vswitchd()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    // What the OVS agent does when it sees the restart, as soon as the bridges take flows.
    while let Err(e) = install_neutron_flows(ovs) {
        if Instant::now() > deadline {
            return Err(e.context("Neutron's flows after the restart"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let flows = now();
    ctx.adopt_pid(std::fs::read_to_string(ovs.dir.join("ovs-vswitchd.pid"))?.trim())?;
    let mut first_listed = None;
    let (all, last) = loop {
        let (listed, no_recv) = held(ovs)?;
        if listed == n && first_listed.is_none() {
            first_listed = Some(now());
        }
        if no_recv == n {
            break (Some(now()), (listed, no_recv));
        }
        if Instant::now() > deadline {
            break (None, (listed, no_recv));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(2));
    stop(capture);
    let leaked = sh(&format!("tcpdump -r {} -n 2>/dev/null | wc -l", pcap.display()))?;
    let leaked: usize = leaked.trim().parse().unwrap_or(usize::MAX);
    let after = |t: Option<f64>| t.map_or("never".into(), |t| format!("+{:.0} ms", ms(t - t0)));
    notes.push(format!(
        "ovs-vswitchd restart ({n} held routers, {} interfaces): killed and started again, \
         Neutron's flows back {}, every gateway port listed {}, every one \
         with no-receive {} (last poll: {} listed, {} held); {leaked} frames from gateway \
         MACs at the ToR until 2 s after",
        3 * n + 5,
        after(Some(flows)),
        after(first_listed),
        after(all),
        last.0,
        last.1,
    ));
    table.row(
        &format!("ovs-vswitchd restart, {n} routers ({label}): all held again"),
        format!("{} ({leaked} frames leaked)", after(all)),
        "0 frames",
        Some(all.is_some() && leaked == 0),
    );
    Ok(())
}

/// How many gateway ports (`tg…`) `ovs-ofctl dump-ports-desc` lists, and how many of them
/// with `NO_RECV`.
fn gateway_ports(desc: &str) -> (usize, usize) {
    let mut lines = desc.lines().peekable();
    let (mut listed, mut held) = (0, 0);
    while let Some(line) = lines.next() {
        if !line.contains("(tg") {
            continue;
        }
        listed += 1;
        if lines
            .peek()
            .is_some_and(|config| config.contains("config:") && config.contains("NO_RECV"))
        {
            held += 1;
        }
    }
    (listed, held)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_gateway_ports_and_their_no_receive() {
        let desc = " 1(tg00000): addr:aa:bb:cc:dd:ee:ff\n     config:     NO_RECV\n     state: 0\n \
                    2(tr00000): addr:aa:bb:cc:dd:ee:fe\n     config:     NO_RECV\n \
                    3(tg00001): addr:aa:bb:cc:dd:ee:fd\n     config:     0\n";
        assert_eq!(super::gateway_ports(desc), (2, 1));
    }
}
