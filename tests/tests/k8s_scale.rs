//! Benchmark, run by hand (results in docs/benchmarks.md): API requests per failover of many
//! routers, counted by the API server itself (`apiserver_request_total`, writes and reads;
//! `apiserver_watch_events_total`, what the watches delivered), on the real control plane
//! with two emulated nodes and their agents.
//!
//! ```text
//! cargo build -p hagw && cargo test -p hagw-e2e --test k8s_scale -- --ignored --nocapture
//! ```
//! `HAGW_SCALE_ROUTERS` (default 1000) sets the number of routers; `HAGW_BIN` picks the hagw
//! binary (an older one, to compare).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hagw_e2e::k8s::{ApiServer, Nodes, wait_for};
use serde_json::Value;

/// Requests on `harouters` and `events` by `resource[/subresource] VERB`, and the watch
/// events the API server sent for them (`watch-events <resource>`).
fn requests(s: &ApiServer) -> Result<BTreeMap<String, u64>> {
    let text = s.kubectl(&["get", "--raw", "/metrics"])?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_watch_events_total{")) {
        let (labels, value) = line.rsplit_once(' ').context("metric line")?;
        // (The label is `resource` or `kind` depending on the Kubernetes version.)
        for what in ["harouters", "HARouter", "events", "Event"] {
            if labels.contains(&format!("=\"{what}\"")) {
                let key = format!("watch-events {}", what.to_lowercase().trim_end_matches('s'));
                *out.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0) as u64;
            }
        }
    }
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
        if !["harouters", "events"].contains(&resource.as_str()) {
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

/// The write requests of `counts` (every verb but GET, LIST and WATCH).
fn writes(counts: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let read = |k: &str| {
        k.starts_with("watch-events") || ["GET", "LIST", "WATCH"].iter().any(|v| k.ends_with(v))
    };
    counts.iter().filter(|(k, _)| !read(k)).map(|(k, v)| (k.clone(), *v)).collect()
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// The benchmark's own look at the objects: one LIST of every HARouter (not in chunks of 500,
/// kubectl's default, so that it is one request), at most once a second
/// (a LIST of 1,000 objects costs the API server and kubectl far more than a status write;
/// every 50 ms it took a core from the agents), counted so that the agents' reads can be told
/// from it.
struct Looker<'a> {
    server: &'a ApiServer,
    lists: Cell<u64>,
}

impl Looker<'_> {
    /// How many of the routers show `primary` primary and `standby` standby and held.
    fn settled(&self, primary: &str, standby: &str) -> Result<usize> {
        std::thread::sleep(Duration::from_secs(1));
        self.lists.set(self.lists.get() + 1);
        settled(self.server, primary, standby)
    }
}

/// How many of the routers show `primary` primary and `standby` standby and held.
fn settled(s: &ApiServer, primary: &str, standby: &str) -> Result<usize> {
    let list: Value = serde_json::from_str(&s.kubectl(&[
        "get",
        "harouters",
        "-n",
        "default",
        "-o",
        "json",
        "--chunk-size=0",
    ])?)?;
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

/// Waits until the write counters have not moved for `quiet`; returns every counter.
fn quiet(s: &ApiServer, quiet: Duration) -> Result<BTreeMap<String, u64>> {
    let mut last = requests(s)?;
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = requests(s)?;
        if writes(&now) != writes(&last) {
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
    let t_setup = Instant::now();
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
    eprintln!("routers: {n}, two nodes; set up in {:.1?}", t_setup.elapsed());
    let look = Looker { server: &s, lists: Cell::new(0) };
    let created = requests(&s)?;
    let t0 = Instant::now();
    let mut a1 = nodes.agent(&s, "n1")?;
    let mut a2 = nodes.agent(&s, "n2")?;
    wait_for("every router's initial status", Duration::from_secs(1800), || {
        Ok((look.settled("n1", "n2")? == n).then_some(()))
    })?;
    let start_status = t0.elapsed();
    let before = quiet(&s, Duration::from_secs(5))?;
    report(
        n,
        &format!("start-up: every status after {start_status:.1?}"),
        &diff(&before, &created),
        look.lists.take(),
    );
    let cpu_before = [a1.cpu_time()?, a2.cpu_time()?];

    nodes.set_state("n1", "backup")?;
    nodes.set_state("n2", "primary")?;
    let t1 = Instant::now();
    wait_for("every router's status after the failover", Duration::from_secs(1200), || {
        Ok((look.settled("n2", "n1")? == n).then_some(()))
    })
    .with_context(|| {
        // How far it got, for the record when a run does not finish.
        let done = settled(&s, "n2", "n1").map(|d| d.to_string()).unwrap_or_default();
        let writes = requests(&s).map(|w| writes(&diff(&w, &before))).unwrap_or_default();
        format!("{done} of {n} routers failed over; writes meanwhile: {writes:?}")
    })?;
    let failover_status = t1.elapsed();
    let after = quiet(&s, Duration::from_secs(5))?;
    let cpu = [a1.cpu_time()? - cpu_before[0], a2.cpu_time()? - cpu_before[1]];
    a1.assert_running()?;
    a2.assert_running()?;

    for (node, agent) in [("n1", &a1), ("n2", &a2)] {
        let text = agent.metrics()?;
        let writes: Vec<&str> =
            text.lines().filter(|l| l.starts_with("hagw_kubernetes_writes_total")).collect();
        eprintln!("{node} since start: {writes:?}");
    }
    report(
        n,
        &format!(
            "failover: every status after {failover_status:.1?}; agents' CPU until quiet: n1 {:.1?}, n2 {:.1?}",
            cpu[0], cpu[1]
        ),
        &diff(&after, &before),
        look.lists.take(),
    );
    Ok(())
}

/// Prints the requests of one phase, the benchmark's own `lists` of HARouters taken out.
fn report(n: usize, title: &str, counts: &BTreeMap<String, u64>, lists: u64) {
    let per = |count: u64| count as f64 / n as f64;
    eprintln!("{title}");
    eprintln!("  (the benchmark's own LISTs of harouters, not counted below: {lists})");
    let mut agents = counts.clone();
    if let Some(list) = agents.get_mut("harouters LIST") {
        *list = list.saturating_sub(lists);
    }
    agents.retain(|_, v| *v > 0);
    for (what, count) in &agents {
        eprintln!("  {what}: {count} ({:.2} per router)", per(*count));
    }
    let total: u64 = writes(&agents).values().sum();
    let reads: u64 =
        agents.iter().filter(|(k, _)| !k.starts_with("watch-events")).map(|(_, v)| v).sum::<u64>()
            - total;
    eprintln!("  total writes: {total} ({:.2} per router)", per(total));
    eprintln!("  total reads (GET, LIST, WATCH): {reads} ({:.2} per router)", per(reads));
}
