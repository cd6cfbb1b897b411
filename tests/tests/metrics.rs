//! `hagw run`'s `/metrics`, `/healthz`, `/readyz` and `/log-level` on a real gateway port:
//! the counters move with a standby hold, a failover and a leak, and each value is checked
//! before the event that should move it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hagw_e2e::gateway::{EXTERNAL_IP, GATEWAY_IP, GatewayLab};
use hagw_e2e::hagw_bin;
use hagw_e2e::ports::{self, ReservedPort};

/// `hagw run` in the background with its endpoint on a loopback port reserved for it;
/// killed on drop.
struct Agent {
    child: Child,
    addr: SocketAddr,
    _port: ReservedPort,
}

impl Agent {
    fn start(config: &Path, extra: &[&str], stderr: Stdio) -> Result<Agent> {
        let port = ports::reserve()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port.port));
        let child = Command::new(hagw_bin())
            .args(["run", "-c", config.to_str().unwrap(), "--log-level", "info"])
            .args(["--metrics-addr", &addr.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        let agent = Agent { child, addr, _port: port };
        eventually(Duration::from_secs(5), "the endpoint to answer", || {
            Ok(agent.get("/healthz").is_ok())
        })?;
        Ok(agent)
    }

    /// One plain HTTP/1.1 request; returns the status code and the body.
    fn request(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").context("no end of headers")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line in {head:?}"))?;
        Ok((status, body.to_string()))
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        self.request("GET", path, "")
    }

    /// The current value of one series (`name{labels}` exactly as exposed), 0 if absent.
    fn metric(&self, series: &str) -> Result<f64> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(value(&body, series).unwrap_or(0.0))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `check` until it holds or `within` passes.
fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + within;
    let mut last_error = None;
    while Instant::now() < deadline {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match last_error {
        Some(e) => bail!("timed out waiting for {what} (last error: {e:#})"),
        None => bail!("timed out waiting for {what}"),
    }
}

/// `hagw status` run as `nobody` (a copy of the binary nobody can execute) against `agent`
/// after a takeover: the router's line says primary, released, and the transition.
fn assert_status_as_nobody(agent: &Agent, router: &str) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("hagw-status-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let bin = dir.path().join("hagw");
    std::fs::copy(hagw_bin(), &bin)?;
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(["status", "--addr", &agent.addr.to_string()])
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("hagw status as nobody failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = text.lines().find(|l| l.starts_with(router)).with_context(|| text.to_string())?;
    let words: Vec<&str> = line.split_whitespace().collect();
    if !(words[1] == "primary" && words.contains(&"released") && line.contains("standby->primary"))
    {
        bail!("hagw status does not show the takeover:\n{text}");
    }
    Ok(())
}

fn link_up(gw: &GatewayLab) -> Result<bool> {
    Ok(gw.gateway("link")?.contains(",UP"))
}

const HELD: &str = "hagw_held_standby_ports";
const TO_PRIMARY: &str = "hagw_role_transitions_total{to=\"primary\"}";
const FRAMES: &str = "hagw_announcement_frames_total";
const LINK_DOWN_OK: &str = "hagw_actions_total{kind=\"link-down\",result=\"ok\"}";

#[test]
fn metrics_follow_a_standby_hold_and_a_failover() -> Result<()> {
    let gw = GatewayLab::build()?;
    let state = gw.lab.file("state", "backup")?;
    let config = gw.lab.file("routers.yaml", &gw.config("link-down", &state))?;
    // The L3 agent left the port up: hagw has to take it down.
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    let agent = Agent::start(&config, &[], Stdio::inherit())?;

    eventually(Duration::from_secs(5), "ready", || Ok(agent.get("/readyz")?.0 == 200))?;
    eventually(Duration::from_secs(5), "standby held", || Ok(!link_up(&gw)?))?;
    assert_eq!(agent.get("/healthz")?, (200, "ok\n".to_string()));

    // (1) The standby hold.
    eventually(Duration::from_secs(3), "held_standby_ports 1", || Ok(agent.metric(HELD)? == 1.0))?;
    assert!(agent.metric(LINK_DOWN_OK)? >= 1.0, "the link-down action is not counted");
    assert!(
        agent.metric("hagw_reconcile_duration_seconds_count{result=\"converged\"}")? >= 1.0,
        "no pass in the duration histogram"
    );
    assert_eq!(agent.metric("hagw_routers{role=\"standby\"}")?, 1.0);
    let (transitions, frames) = (agent.metric(TO_PRIMARY)?, agent.metric(FRAMES)?);
    assert_eq!((transitions, frames), (0.0, 0.0), "a standby neither takes over nor announces");

    // (2) A failover through the state file.
    std::fs::write(&state, "primary")?;
    eventually(Duration::from_secs(3), "takeover", || {
        Ok(link_up(&gw)? && gw.gateway("addr")?.contains(GATEWAY_IP))
    })?;
    eventually(Duration::from_secs(3), "the transition counted", || {
        Ok(agent.metric(TO_PRIMARY)? == 1.0)
    })?;
    let frames = agent.metric(FRAMES)?;
    // One gratuitous ARP and one unsolicited NA (announce repeats: 0 in this lab).
    assert!(frames >= 2.0, "announcement frames: {frames}");
    assert_eq!(agent.metric(HELD)?, 0.0, "a primary is not a held standby");
    assert_eq!(agent.metric("hagw_routers{role=\"primary\"}")?, 1.0);
    assert!(agent.metric("hagw_actions_total{kind=\"announce\",result=\"ok\"}")? >= 1.0);
    assert_eq!(agent.metric("hagw_errors_total{kind=\"transient\"}")?, 0.0);
    assert_eq!(agent.metric("hagw_errors_total{kind=\"permanent\"}")?, 0.0);
    assert_eq!(agent.get("/readyz")?.0, 200);
    assert_status_as_nobody(&agent, &format!("r-{}", gw.lab.id))?;

    // Back to standby: held again, and a second transition of the other kind.
    std::fs::write(&state, "backup")?;
    eventually(Duration::from_secs(3), "held again", || Ok(agent.metric(HELD)? == 1.0))?;
    assert_eq!(agent.metric("hagw_role_transitions_total{to=\"standby\"}")?, 1.0);
    assert_eq!(agent.metric(TO_PRIMARY)?, 1.0);

    // The log filter can be read and changed at run time, from localhost.
    assert_eq!(agent.get("/log-level")?, (200, "info\n".to_string()));
    assert_eq!(agent.request("PUT", "/log-level", "debug")?.0, 200);
    assert_eq!(agent.get("/log-level")?, (200, "debug\n".to_string()));
    assert_eq!(agent.request("PUT", "/log-level", "no=such=filter")?.0, 400);
    assert_eq!(agent.get("/log-level")?, (200, "debug\n".to_string()));
    Ok(())
}

/// With `silence-only` the standby's port stays up; a frame sent out of it anyway (here an
/// ARP probe, as a stray process in the namespace would send) shows in the tx counter at the
/// next pass and raises the leak alarm, with a warning that names router, netns and port.
#[test]
fn the_leak_alarm_fires_when_a_silenced_standby_transmits() -> Result<()> {
    let gw = GatewayLab::build()?;
    let state = gw.lab.file("state", "backup")?;
    let config = gw.lab.file("routers.yaml", &gw.config("silence-only", &state))?;
    let router = format!("r-{}", gw.lab.id);
    let log_path = gw.lab.dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let agent =
        Agent::start(&config, &["--resync", "1", "--log-format", "json"], Stdio::from(log))?;
    let leaked = format!("hagw_standby_tx_packets_total{{router=\"{router}\"}}");
    let alarm = format!("hagw_leak_alarm{{router=\"{router}\"}}");

    // Settled: silenced and up (hagw raises it once silence has settled), never held.
    eventually(Duration::from_secs(5), "silenced standby up", || {
        Ok(link_up(&gw)? && gw.sysctl("addr_gen_mode")? == "1")
    })?;
    eventually(Duration::from_secs(3), "ready", || Ok(agent.get("/readyz")?.0 == 200))?;
    // A few resyncs of a quiet standby: the series exist and stay at zero.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(agent.metric(HELD)?, 0.0, "silence-only does not hold");
    let body = agent.get("/metrics")?.1;
    assert_eq!(value(&body, &leaked), Some(0.0), "a silent standby leaked:\n{body}");
    assert_eq!(value(&body, &alarm), Some(0.0), "alarm without a leak:\n{body}");

    // The standby transmits although it must not.
    gw.lab.exec(&gw.qrouter, &format!("arping -D -c 1 -w 1 -I {} {EXTERNAL_IP} || true", gw.qg))?;
    eventually(Duration::from_secs(4), "the alarm", || Ok(agent.metric(&alarm)? == 1.0))?;
    let frames = agent.metric(&leaked)?;
    assert!(frames >= 1.0, "leaked frames not counted: {frames}");
    // It clears after the next quiet interval; the counter keeps what it saw.
    eventually(Duration::from_secs(4), "the alarm to clear", || Ok(agent.metric(&alarm)? == 0.0))?;
    assert_eq!(agent.metric(&leaked)?, frames);

    // The warning is a JSON line inside the router's span: router, netns and port.
    let log = std::fs::read_to_string(&log_path)?;
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"].as_str().is_some_and(|m| m.contains("leak alarm")))
        .with_context(|| format!("no leak alarm warning in\n{log}"))?;
    assert_eq!(line["level"], "WARN", "{line}");
    let span = &line["span"];
    assert_eq!(span["router"], router.as_str(), "{line}");
    assert_eq!(span["netns"], gw.qrouter.as_str(), "{line}");
    assert_eq!(span["port"], gw.qg.as_str(), "{line}");
    Ok(())
}
