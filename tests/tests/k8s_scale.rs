//! Benchmark, run by hand (results in docs/benchmarks.md): API requests per failover of many
//! routers, counted by the API server itself (`apiserver_request_total`), on the real
//! control plane with two emulated nodes and their agents.
//!
//! ```text
//! cargo build -p hagw && cargo test -p hagw-e2e --test k8s_scale -- --ignored --nocapture
//! ```
//! `HAGW_SCALE_ROUTERS` (default 1000) sets the number of routers; `HAGW_BIN` picks the hagw
//! binary (an older one, to compare).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hagw_e2e::k8s::{ApiServer, Nodes, wait_for};
use serde_json::Value;

/// Write requests (anything but GET, LIST and WATCH) by `resource[/subresource] VERB`.
fn writes(s: &ApiServer) -> Result<BTreeMap<String, u64>> {
    let text = s.kubectl(&["get", "--raw", "/metrics"])?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let (labels, value) = line.rsplit_once(' ').context("metric line")?;
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        if ["GET", "LIST", "WATCH"].contains(&verb.as_str())
            || !["harouters", "events"].contains(&resource.as_str())
        {
            continue;
        }
        let key = if sub.is_empty() {
            format!("{resource} {verb}")
        } else {
            format!("{resource}/{sub} {verb}")
        };
        *out.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0) as u64;
    }
    Ok(out)
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// How many of the routers show `primary` primary and `standby` standby and held.
fn settled(s: &ApiServer, primary: &str, standby: &str) -> Result<usize> {
    let list: Value =
        serde_json::from_str(&s.kubectl(&["get", "harouters", "-n", "default", "-o", "json"])?)?;
    let items = list["items"].as_array().context("items")?;
    Ok(items
        .iter()
        .filter(|o| {
            let nodes = o["status"]["nodes"].as_array().cloned().unwrap_or_default();
            let entry =
                |n: &str| nodes.iter().find(|e| e["node"] == n).cloned().unwrap_or_default();
            entry(primary)["role"] == "primary"
                && entry(standby)["role"] == "standby"
                && entry(standby)["held"] == true
        })
        .count())
}

/// Waits until the write counters have not moved for `quiet`.
fn quiet(s: &ApiServer, quiet: Duration) -> Result<BTreeMap<String, u64>> {
    let mut last = writes(s)?;
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = writes(s)?;
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return Ok(now);
        }
    }
}

#[test]
#[ignore = "benchmark: cargo test -p hagw-e2e --test k8s_scale -- --ignored --nocapture"]
fn api_requests_per_failover_of_many_routers() -> Result<()> {
    let n: usize =
        std::env::var("HAGW_SCALE_ROUTERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let s = ApiServer::start()?;
    s.install_crd()?;
    let mut nodes = Nodes::build(&["n1", "n2"])?;
    nodes.log_level = "info";
    // Each agent re-observes every router every resync: the default (60 s), not the other
    // tests' 5 s, or 1,000 routers keep the machine busy with resyncs alone.
    nodes.resync = 60;
    let routers = nodes.add_routers(n)?;
    nodes.set_state("n1", "primary")?;
    let yaml: Vec<String> = routers
        .iter()
        .enumerate()
        .map(|(i, (ns, dev))| {
            nodes.harouter_on(&format!("r{i:05}"), dev, &["n1", "n2"]).replace(
                &format!("namespace: {}\n", nodes.namespace),
                &format!("namespace: {ns}\n"),
            )
        })
        .collect();
    s.kubectl_stdin(&["create", "-f", "-"], Some(&yaml.join("---\n")))?;
    let t0 = Instant::now();
    let mut a1 = nodes.agent(&s, "n1")?;
    let mut a2 = nodes.agent(&s, "n2")?;
    wait_for("every router's initial status", Duration::from_secs(600), || {
        Ok((settled(&s, "n1", "n2")? == n).then_some(()))
    })?;
    let start_status = t0.elapsed();
    let before = quiet(&s, Duration::from_secs(5))?;
    let start_writes = before.clone();

    nodes.set_state("n1", "backup")?;
    nodes.set_state("n2", "primary")?;
    let t1 = Instant::now();
    wait_for("every router's status after the failover", Duration::from_secs(600), || {
        Ok((settled(&s, "n2", "n1")? == n).then_some(()))
    })
    .with_context(|| {
        // How far it got, for the record when a run does not finish.
        let done = settled(&s, "n2", "n1").map(|d| d.to_string()).unwrap_or_default();
        let writes = writes(&s).map(|w| diff(&w, &before)).unwrap_or_default();
        format!("{done} of {n} routers failed over; writes meanwhile: {writes:?}")
    })?;
    let failover_status = t1.elapsed();
    let after = quiet(&s, Duration::from_secs(5))?;
    a1.assert_running()?;
    a2.assert_running()?;

    let failover = diff(&after, &before);
    for (node, agent) in [("n1", &a1), ("n2", &a2)] {
        let text = agent.metrics()?;
        let writes: Vec<&str> =
            text.lines().filter(|l| l.starts_with("hagw_kubernetes_writes_total")).collect();
        eprintln!("{node} since start: {writes:?}");
    }
    let total: u64 = failover.values().sum();
    eprintln!("routers: {n}, two nodes");
    eprintln!("start-up: every status after {start_status:.1?}; writes {start_writes:?}");
    eprintln!("failover: every status after {failover_status:.1?}");
    for (what, count) in &failover {
        eprintln!("  {what}: {count} ({:.2} per router)", *count as f64 / n as f64);
    }
    eprintln!("  total writes: {total} ({:.2} per router)", total as f64 / n as f64);
    Ok(())
}
