//! Benchmark 5, retag reaction on real OVS: a standby's port is held (dead-VLAN triple and
//! OpenFlow `no-receive`), a foreign writer retags it the way the OVS agent does after a
//! restart (`other_config:tag`, `tag`, `vlan_mode`/`trunks` cleared, one transaction), and
//! hagw holds it again. Measured from the moment the retag is sent (one `transact` on a
//! connection the bench keeps open, as the OVS agent does) to the update that put the triple
//! back, as an independent OVSDB monitor (`ovsdb-client monitor`, each update stamped when its
//! line arrives) sees it. The figure includes the monitor's delivery of that update.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::ctx::{Ctx, lines_of, stop};
use super::log::Log;
use super::stats::{Dist, Table};
use super::{GATEWAY_CIDR, Opts, ms, now};
use crate::ovs::{OvsLab, OvsNode};

/// The triple as the monitor shows it: `tag`, `trunks`, `vlan_mode`.
const HELD: (i64, &str, &str) = (4095, "4095", "trunk");

/// One Port update seen by the monitor for the gateway port: when, and whether it is held.
struct Update {
    ts: f64,
    held: bool,
}

/// Parses one `ovsdb-client --format=json monitor … Port name,tag,trunks,vlan_mode` line:
/// the gateway port's new row, if the update has one.
fn parse_update(line: &str, port: &str, ts: f64) -> Option<Update> {
    let update: Value = serde_json::from_str(line).ok()?;
    let rows = update.get("data")?.as_array()?;
    let new = rows.iter().filter_map(Value::as_array).find(|row| {
        matches!(row.get(1).and_then(Value::as_str), Some("new" | "initial"))
            && row.get(2).and_then(Value::as_str) == Some(port)
    })?;
    let atom = |v: Option<&Value>| match v {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let tag = new.get(3).and_then(Value::as_i64).unwrap_or(-1);
    let held = (tag, atom(new.get(4)).as_str(), atom(new.get(5)).as_str()) == HELD;
    Some(Update { ts, held })
}

/// Starts the monitor of the node's Port table; its updates arrive on the returned channel.
fn monitor(ctx: &Ctx, node: &OvsNode) -> Result<(std::process::Child, Receiver<Update>)> {
    let mut cmd = Command::new("ovsdb-client");
    cmd.args(["--format=json", "monitor", &node.ovs.endpoint(), "Open_vSwitch", "Port"]);
    cmd.arg("name,tag,trunks,vlan_mode");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = ctx.spawn(&mut cmd)?;
    let (tx, rx) = channel();
    let port = node.port.clone();
    lines_of(child.stdout.take().context("ovsdb-client stdout")?, move |line| {
        if let Some(update) = parse_update(&line, &port, now()) {
            let _ = tx.send(update);
        }
    });
    Ok((child, rx))
}

/// The OVS agent's retag of `port` to `vlan` as one OVSDB transaction: the local VLAN in
/// `other_config` and on the port, `vlan_mode` and `trunks` cleared.
fn retag_request(id: usize, port: &str, vlan: usize) -> Value {
    serde_json::json!({
        "method": "transact",
        "id": id,
        "params": ["Open_vSwitch", {
            "op": "update", "table": "Port", "where": [["name", "==", port]],
            "row": {
                "tag": vlan,
                "vlan_mode": ["set", []],
                "trunks": ["set", []],
                "other_config": ["map", [["tag", vlan.to_string()]]],
            },
        }],
    })
}

/// Waits for the next update of the gateway port whose hold state is `held`.
fn next(updates: &Receiver<Update>, held: bool, limit: Duration) -> Option<f64> {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match updates.recv_timeout(left) {
            Ok(u) if u.held == held => return Some(u.ts),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

pub(super) fn measure(
    ctx: &Ctx,
    opts: &Opts,
    table: &mut Table,
    notes: &mut Vec<String>,
) -> Result<()> {
    eprintln!("retag: building an OVS node ...");
    let lab = OvsLab::build(1)?;
    ctx.adopt_lab(&lab.lab)?;
    let node = &lab.nodes[0];
    for pid in ["ovsdb.pid", "ovs-vswitchd.pid"] {
        ctx.adopt_pid(std::fs::read_to_string(node.ovs.dir.join(pid))?.trim())?;
    }
    node.plug(&lab.lab)?;
    node.agent_wire()?;
    let config = ctx.dir.join("retag-routers.yaml");
    std::fs::write(
        &config,
        format!(
            "ovsdb: {endpoint}\nrouters:\n  - id: bench-retag\n    namespace: {ns}\n    \
             gatewayDevice: {qg}\n    gatewayAddresses: [{GATEWAY_CIDR}]\n    \
             backend: {{ovs: {{port: {port}}}}}\n    strategy: l2-hold\n    \
             announce: {{repeats: 0}}\n    role: {{fixed: standby}}\n",
            endpoint = node.ovs.endpoint(),
            ns = node.qrouter,
            qg = node.qg,
            port = node.port,
        ),
    )?;
    let (mut monitor, updates) = monitor(ctx, node)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.ns]).arg(&ctx.hagw).args(["run", "-c"]).arg(&config);
    cmd.args(&ctx.hagw_args).env("OVS_RUNDIR", &node.ovs.dir);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut hagw = ctx.spawn(&mut cmd)?;
    let log = Log::collect(&mut hagw)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(node.port_vlan()? == "4095 trunk [4095]" && node.no_receive()?) {
        if Instant::now() > deadline {
            bail!("hagw did not hold the standby's port: {}", node.port_vlan()?);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    log.wait_quiet(Duration::from_millis(700), Duration::from_secs(5));
    while updates.try_recv().is_ok() {}

    let mut writer = UnixStream::connect(node.ovs.dir.join("db.sock"))?;
    let mut replies =
        serde_json::Deserializer::from_reader(writer.try_clone()?).into_iter::<Value>();
    let (mut reactions, mut incomplete) = (Vec::new(), 0);
    for i in 0..opts.retags {
        // Varying local VLANs and pauses, so no two retags look alike and nothing phase-locks.
        let vlan = 100 + i % 3000;
        let request = serde_json::to_vec(&retag_request(i, &node.port, vlan))?;
        let sent = now();
        writer.write_all(&request)?;
        let reply = replies.next().context("OVSDB closed the connection")??;
        let result = &reply["result"];
        ensure!(result[0]["count"] == 1, "retag {i} failed: {reply}");
        let lifted = next(&updates, false, Duration::from_secs(3));
        let held = lifted.and_then(|_| next(&updates, true, Duration::from_secs(3)));
        match (lifted, held) {
            (Some(_), Some(held)) => reactions.push(ms(held - sent)),
            _ => {
                incomplete += 1;
                eprintln!("retag {i}: incomplete (lifted {lifted:?}, held again {held:?})");
            }
        }
        std::thread::sleep(Duration::from_millis(50 + (i as u64 * 37) % 100));
    }
    ensure!(node.no_receive()?, "no-receive must survive every retag");
    stop(hagw);
    stop_child(&mut monitor);
    let warnings = log.since(0).iter().filter(|e| e.level == "WARN" || e.level == "ERROR").count();
    let dist = Dist::of(reactions);
    notes.push(format!(
        "retag reaction, hagw run (ovs backend, l2-hold standby, real ovsdb-server + \
         ovs-vswitchd): {} retags ok, {incomplete} incomplete, {warnings} warnings\n  \
         retag sent -> triple back (OVSDB monitor) {}",
        dist.n,
        dist.show()
    ));
    table.row(
        "retag reaction: foreign retag → held again (OVSDB)",
        format!(
            "p50 {:.2} / p99 {:.2} / max {:.2} ms (n={}, {incomplete} incomplete)",
            dist.p50, dist.p99, dist.max, dist.n
        ),
        "",
        None,
    );
    Ok(())
}

fn stop_child(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}
