//! What happens to the agent's pod in production, done to a Helm release on the test node:
//! the pod deleted, the chart upgraded to another image tag, the agent SIGKILLed, and the
//! agent OOM-killed under its memory limit. Each returns once the DaemonSet's next pod is
//! ready, so a test can check what the gap cost (leaked frames, lost pings).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::k8s::wait_for;
use crate::node::{Node, Release};

/// One disruption of the agent's pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disruption {
    /// `kubectl delete pod`: SIGTERM, and the DaemonSet creates a new pod.
    DeletePod,
    /// `helm upgrade` to another image tag: the DaemonSet's rolling update replaces the pod.
    Upgrade,
    /// The agent process SIGKILLed: the kubelet restarts the container.
    Kill,
    /// The kernel's OOM killer kills the agent under the pod's memory limit.
    OomKill,
}

pub const ALL: [Disruption; 4] =
    [Disruption::DeletePod, Disruption::Upgrade, Disruption::Kill, Disruption::OomKill];

/// The agent's container as `(container id, restart count)`, once it is ready.
pub(crate) fn ready_container(pod: &Value) -> Option<(String, u64)> {
    let status = &pod["status"]["containerStatuses"][0];
    if status["ready"] != true {
        return None;
    }
    let id = status["containerID"].as_str()?.trim_start_matches("containerd://").to_string();
    Some((id, status["restartCount"].as_u64().unwrap_or(0)))
}

/// Waits until the release runs a ready agent container other than `old`.
pub(crate) fn wait_replaced(release: &Release, old: &str) -> Result<Value> {
    wait_for("the next agent container ready", Duration::from_secs(180), || {
        let pod = match release.pod() {
            Ok(pod) => pod,
            Err(_) => return Ok(None),
        };
        Ok(ready_container(&pod).filter(|(id, _)| id != old).map(|_| pod))
    })
}

/// The host pid of the agent process in container `id`.
fn agent_pid(node: &Node, id: &str) -> Result<u32> {
    let tasks = node.ctr(&["tasks", "ls"])?;
    tasks
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next()? == id).then(|| fields.next()?.parse().ok()).flatten()
        })
        .with_context(|| format!("no task for container {id} in:\n{tasks}"))
}

/// Does `what` to the release's agent and returns the next, ready pod. `tag` is the image
/// tag the release runs; an upgrade moves it to `<tag>-next` (or back), imported first.
pub fn disrupt(
    node: &Node,
    release: &Release,
    what: Disruption,
    tag: &mut String,
) -> Result<Value> {
    let before = release.pod()?;
    let (id, _) = ready_container(&before).context("the agent is not ready before")?;
    match what {
        Disruption::DeletePod => {
            let name = before["metadata"]["name"].as_str().context("pod name")?;
            node.kubectl(&["delete", "pod", name, "-n", &release.namespace, "--wait=false"])?;
        }
        Disruption::Upgrade => {
            let next = match tag.strip_suffix("-next") {
                Some(base) => base.to_string(),
                None => format!("{tag}-next"),
            };
            node.tag_image(tag, &next)?;
            node.helm(&[
                "upgrade",
                &release.name,
                node.chart().to_str().context("chart path")?,
                "-n",
                &release.namespace,
                "--reuse-values",
                "--set",
                &format!("image.tag={next}"),
            ])?;
            *tag = next;
        }
        Disruption::Kill => {
            let pid = agent_pid(node, &id)?;
            crate::lab::sh(&format!("kill -KILL {pid}"))?;
        }
        Disruption::OomKill => oom_kill(node, &id)?,
    }
    let after = wait_replaced(release, &id)?;
    if what == Disruption::OomKill {
        let reason = &after["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"];
        ensure!(reason == "OOMKilled", "the agent ended as {reason}, not OOMKilled");
    }
    Ok(after)
}

/// Fills the memory cgroup of container `id` with a second process after making the agent
/// the OOM killer's first choice (`oom_score_adj` 1000; lowering the hog's instead needs a
/// privilege this machine does not grant), so the kernel kills the agent under the pod's
/// limit as when the agent itself outgrows it; the hog goes as soon as the agent is dead.
fn oom_kill(node: &Node, id: &str) -> Result<()> {
    let pid = agent_pid(node, id)?;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let procs = memory_cgroup_procs(&cgroups).context("the agent's memory cgroup")?;
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), "1000")
        .context("making the agent the OOM killer's choice")?;
    let mut hog: Child = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {procs} && exec tail /dev/zero"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting the memory hog")?;
    let dead = wait_for("the agent OOM-killed", Duration::from_secs(60), || {
        Ok((!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(()))
    });
    let _ = hog.kill();
    let _ = hog.wait();
    dead
}

/// The `cgroup.procs` file of the memory cgroup in a `/proc/<pid>/cgroup` listing (v1's
/// `memory` hierarchy, or the unified v2 one).
fn memory_cgroup_procs(listing: &str) -> Option<String> {
    let v1 = listing.lines().find_map(|l| {
        let (_, rest) = l.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        controllers.split(',').any(|c| c == "memory").then(|| format!("memory{path}"))
    });
    let v2 = || listing.lines().find_map(|l| l.strip_prefix("0::").map(|p| p.to_string()));
    let path = v1.or_else(v2)?;
    Some(format!("/sys/fs/cgroup/{}/cgroup.procs", path.trim_start_matches('/')))
}

/// Pings `target` from namespace `ns` ten times a second until [`Pinger::stop`].
pub struct Pinger {
    child: Option<Child>,
}

impl Pinger {
    pub fn start(ns: &str, target: &str) -> Result<Pinger> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-n", "-i", "0.1", "-W", "1", target])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ping")?;
        Ok(Pinger { child: Some(child) })
    }

    /// Stops the pings and returns `(sent, lost)`. A ping answered late (queued while the
    /// path was down) counts as answered: [`Pinger::stop_with_max_rtt`] tells those apart.
    pub fn stop(self) -> Result<(u64, u64)> {
        self.stop_with_max_rtt().map(|(sent, lost, _)| (sent, lost))
    }

    /// `(sent, lost, slowest answer)`.
    pub fn stop_with_max_rtt(mut self) -> Result<(u64, u64, Duration)> {
        let child = self.child.take().context("stopped twice")?;
        crate::lab::sh(&format!("kill -INT {}", child.id()))?;
        let out = child.wait_with_output().context("waiting for ping")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let stats = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .with_context(|| format!("no ping summary in:\n{text}"))?;
        let numbers: Vec<u64> =
            stats.split(',').filter_map(|f| f.split_whitespace().next()?.parse().ok()).collect();
        // "rtt min/avg/max/mdev = 0.05/0.07/0.11/0.01 ms", absent when nothing came back.
        let max_ms = text
            .lines()
            .find_map(|l| l.strip_prefix("rtt min/avg/max/mdev = "))
            .and_then(|v| v.split('/').nth(2)?.parse::<f64>().ok())
            .unwrap_or(0.0);
        match numbers.as_slice() {
            [sent, received, ..] => {
                Ok((*sent, sent - received, Duration::from_secs_f64(max_ms / 1000.0)))
            }
            _ => bail!("cannot read {stats:?}"),
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory_cgroup_procs;

    #[test]
    fn finds_the_memory_cgroup_on_v1_and_v2() {
        let v1 = "12:pids:/kubepods/x\n4:cpuacct,memory:/kubepods/burstable/pod1/abc\n";
        assert_eq!(
            memory_cgroup_procs(v1).unwrap(),
            "/sys/fs/cgroup/memory/kubepods/burstable/pod1/abc/cgroup.procs"
        );
        let v2 = "0::/kubepods.slice/abc.scope\n";
        assert_eq!(
            memory_cgroup_procs(v2).unwrap(),
            "/sys/fs/cgroup/kubepods.slice/abc.scope/cgroup.procs"
        );
    }
}
