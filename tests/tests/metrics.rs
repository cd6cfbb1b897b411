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
use hagw_e2e::wait::eventually;

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
            .args(["--listen", &addr.to_string()])
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

/// `hagw status` run as `nobody` (a copy of the binary nobody can execute) against `agent`
/// after a takeover: the router's line says primary, why (the state file), released, and
/// the transition.
fn assert_status_as_nobody(agent: &Agent, router: &str) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("hagw-status-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let bin = dir.path().join("hagw");
    // Copied by cp, not in this process: a write descriptor of ours, inherited by a child
    // that another test thread forks meanwhile, makes exec fail with ETXTBSY.
    let copied = Command::new("cp").arg(hagw_bin()).arg(&bin).status()?;
    anyhow::ensure!(copied.success(), "cp {} failed", hagw_bin().display());
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
    if !(words[1] == "primary"
        && words[2] == "state-file"
        && words.contains(&"released")
        && line.contains("standby->primary"))
    {
        bail!("hagw status does not show the takeover:\n{text}");
    }
    Ok(())
}

fn link_up(gw: &GatewayLab) -> Result<bool> {
    Ok(gw.gateway("link")?.contains(",UP"))
}

const HELD: &str = "hagw_held_standby_ports";
/// How often the leak test scrapes, and the interval of the promtool test built from it.
const SCRAPE_MS: u64 = 200;
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
    let router = format!("r-{}", gw.lab.id);
    assert_status_as_nobody(&agent, &router)?;
    // Per router: role, hold, since when; the takeover's own latency; the build.
    let body = agent.get("/metrics")?.1;
    let role = |r: &str| format!("hagw_router_role{{router=\"{router}\",role=\"{r}\"}}");
    assert_eq!(value(&body, &role("primary")), Some(1.0), "{body}");
    assert_eq!(value(&body, &role("standby")), Some(0.0), "{body}");
    assert_eq!(value(&body, &format!("hagw_router_held{{router=\"{router}\"}}")), Some(0.0));
    let since = format!("hagw_router_last_transition_timestamp_seconds{{router=\"{router}\"}}");
    assert!(value(&body, &since).is_some_and(|t| t > 1.7e9), "{body}");
    assert!(value(&body, "hagw_takeover_duration_seconds_count").is_some_and(|n| n >= 1.0));
    let disagree = format!("hagw_role_sources_disagree{{router=\"{router}\"}}");
    assert_eq!(value(&body, &disagree), Some(0.0), "{body}");
    assert!(body.contains("hagw_build_info{version=\""), "{body}");
    promtool_check_metrics(&body)?;
    dashboard_uses_only_existing_metrics(&body)?;

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

    // The standby transmits although it must not. Both series are scraped every
    // SCRAPE_MS from before the leak until the alarm has cleared again.
    let scrape = || -> Result<(f64, f64)> { Ok((agent.metric(&alarm)?, agent.metric(&leaked)?)) };
    let mut samples = Vec::new();
    for _ in 0..3 {
        samples.push(scrape()?);
        std::thread::sleep(Duration::from_millis(SCRAPE_MS));
    }
    gw.lab.exec(&gw.qrouter, &format!("arping -D -c 1 -w 1 -I {} {EXTERNAL_IP} || true", gw.qg))?;
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        samples.push(scrape()?);
        let fired = samples.iter().position(|s| s.0 == 1.0);
        if fired.is_some_and(|i| samples[i..].iter().any(|s| s.0 == 0.0)) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the alarm did not fire and clear: {samples:?}");
        std::thread::sleep(Duration::from_millis(SCRAPE_MS));
    }
    let frames = samples.last().map(|s| s.1).unwrap_or_default();
    assert!(frames >= 1.0, "leaked frames not counted: {samples:?}");
    // It cleared after the next quiet interval; the counter keeps what it saw.
    let fired = samples.iter().position(|s| s.0 == 1.0).unwrap_or_default();
    assert!(samples[fired..].iter().all(|s| s.1 == frames), "{samples:?}");
    // Prometheus's rule engine, fed these very samples, fires the leak alerts.
    promtool_fires_the_leak_alerts(&router, &samples, &gw.lab.dir)?;

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

/// The role's reason and the node-local disagreement indicator on a real VIP: a state file
/// that says primary while keepalived's VIP is absent is a standby "because of the VIP", with
/// the inputs flagged as contradicting; the VIP arriving settles both.
#[test]
fn status_and_metrics_tell_why_and_whether_the_role_inputs_disagree() -> Result<()> {
    let gw = GatewayLab::build()?;
    let ha = gw.add_ha_device()?;
    let state = gw.lab.file("state", "primary")?;
    let config = gw.config("link-down", &state).replace(
        "    role:",
        &format!("    haDevice: {ha}\n    primaryVip: 169.254.0.1/24\n    role:"),
    );
    let config = gw.lab.file("routers.yaml", &config)?;
    let agent = Agent::start(&config, &[], Stdio::inherit())?;
    let router = format!("r-{}", gw.lab.id);
    let disagree = format!("hagw_role_sources_disagree{{router=\"{router}\"}}");
    let status = || -> Result<serde_json::Value> {
        let all: serde_json::Value = serde_json::from_str(&agent.get("/status")?.1)?;
        Ok(all[0].clone())
    };

    eventually(Duration::from_secs(5), "a standby by the VIP", || {
        let s = status()?;
        Ok(s["role"] == "standby" && s["roleReason"] == "vip" && s["roleSourcesDisagree"] == true)
    })?;
    assert_eq!(agent.metric(&disagree)?, 1.0);

    gw.lab.exec(&gw.qrouter, &format!("ip addr add 169.254.0.1/24 dev {ha}"))?;
    eventually(Duration::from_secs(5), "a primary by the VIP", || {
        let s = status()?;
        Ok(s["role"] == "primary" && s["roleReason"] == "vip" && s["roleSourcesDisagree"] == false)
    })?;
    assert_eq!(agent.metric(&disagree)?, 0.0);
    Ok(())
}

/// `promtool check metrics` (Prometheus's naming and format lint) on an exposition.
fn promtool_check_metrics(body: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (Debian package prometheus; scripts/setup.sh installs it)")?;
    child.stdin.take().context("stdin")?.write_all(body.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "promtool check metrics: {}{}\n{body}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn repo_file(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// `promtool test rules` on the project's rule file with the scraped (alarm, leaked frames)
/// samples, `SCRAPE_MS` apart: HagwStandbyLeak fires at the first scrape with the alarm and
/// not before; HagwStandbyTransmitted fires then too.
fn promtool_fires_the_leak_alerts(
    router: &str,
    samples: &[(f64, f64)],
    dir: &tempfile::TempDir,
) -> Result<()> {
    let fired = samples.iter().position(|s| s.0 == 1.0).context("no alarm sample")?;
    let values = |pick: fn(&(f64, f64)) -> f64| {
        samples.iter().map(|s| pick(s).to_string()).collect::<Vec<_>>().join(" ")
    };
    let labels = format!("router=\"{router}\",instance=\"net-1:9477\",job=\"hagw\"");
    let at = |i: usize| format!("{}ms", i as u64 * SCRAPE_MS);
    let test = format!(
        "rule_files: [{rules}]\n\
         evaluation_interval: {SCRAPE_MS}ms\n\
         tests:\n\
         \x20 - interval: {SCRAPE_MS}ms\n\
         \x20   input_series:\n\
         \x20     - series: 'hagw_leak_alarm{{{labels}}}'\n\
         \x20       values: '{alarm}'\n\
         \x20     - series: 'hagw_standby_tx_packets_total{{{labels}}}'\n\
         \x20       values: '{frames}'\n\
         \x20   alert_rule_test:\n\
         \x20     - {{eval_time: {before}, alertname: HagwStandbyLeak, exp_alerts: []}}\n\
         \x20     - eval_time: {fired_at}\n\
         \x20       alertname: HagwStandbyLeak\n\
         \x20       exp_alerts:\n\
         \x20         - exp_labels: {{router: {router}, severity: critical}}\n\
         \x20           exp_annotations:\n\
         \x20             summary: A silenced standby gateway port of router {router} transmitted\n\
         \x20     - eval_time: {fired_at}\n\
         \x20       alertname: HagwStandbyTransmitted\n\
         \x20       exp_alerts:\n\
         \x20         - exp_labels: {{router: {router}, instance: 'net-1:9477', job: hagw, severity: warning}}\n\
         \x20           exp_annotations:\n\
         \x20             summary: A standby gateway port of router {router} transmitted in the last 10 minutes\n",
        rules = repo_file("deploy/prometheus/hagw-rules.yaml").display(),
        alarm = values(|s| s.0),
        frames = values(|s| s.1),
        before = at(fired.saturating_sub(1)),
        fired_at = at(fired),
    );
    let file = dir.path().join("leak-test.yaml");
    std::fs::write(&file, &test)?;
    let out = Command::new("promtool").args(["test", "rules"]).arg(&file).output()?;
    if !out.status.success() {
        bail!(
            "promtool test rules: {}{}\n{test}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The Grafana dashboard is valid JSON and names only metrics that a real agent exposes
/// (`body`) or that the alert rules use (the Kubernetes agent's).
fn dashboard_uses_only_existing_metrics(body: &str) -> Result<()> {
    let text = std::fs::read_to_string(repo_file("deploy/grafana/hagw-dashboard.json"))?;
    let dashboard: serde_json::Value = serde_json::from_str(&text).context("dashboard JSON")?;
    anyhow::ensure!(dashboard["panels"].as_array().is_some_and(|p| !p.is_empty()), "no panels");
    let rules = std::fs::read_to_string(repo_file("deploy/prometheus/hagw-rules.yaml"))?;
    let exposed: Vec<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let names = metric_names(&text);
    anyhow::ensure!(names.len() >= 10, "the dashboard shows too little: {names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !exposed.contains(&n.as_str()) && !metric_names(&rules).contains(*n))
        .collect();
    anyhow::ensure!(missing.is_empty(), "the dashboard uses unknown metrics {missing:?}");
    Ok(())
}

/// Every `hagw_…` identifier in a text.
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("hagw_"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}
