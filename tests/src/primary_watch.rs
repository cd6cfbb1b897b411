//! "No primary is ever held", checked for the whole of a test rather than at chosen moments: a
//! thread per watched router namespace samples it, every [`PERIOD`], for whether keepalived made
//! this node primary (the primary VIP on its HA device) and whether hagw holds the gateway
//! port (link administratively down, or the port in hagw's nftables hold set). A sample where
//! the port is held although the VIP has been there for longer than [`SETTLE`] is a primary
//! held: a router dark on the node keepalived chose.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::keepalived::PRIMARY_VIP;
use crate::lab::sh;

/// How often each router is sampled.
pub const PERIOD: Duration = Duration::from_millis(100);

/// How long a port may stay held after keepalived added the VIP: hagw sees the address appear
/// (a netlink event), resolves the role and brings the port up, which takes milliseconds
/// (`ovs_failover`/`keepalived_*` measure it); the rest is room for a machine running several
/// test binaries and pods at once. Past it, the router is dark, not slow.
pub const SETTLE: Duration = Duration::from_secs(2);

/// One router on this node.
#[derive(Debug, Clone)]
pub struct Watched {
    /// For messages.
    pub name: String,
    pub netns: String,
    /// keepalived's HA device in `netns`.
    pub ha: String,
    /// The gateway port in `netns`.
    pub port: String,
}

/// What one sample saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    vip: bool,
    held: bool,
}

/// What the watch saw over its whole run.
#[derive(Debug, Default)]
pub struct Summary {
    pub samples: usize,
    /// Samples in which the node held the VIP.
    pub primary_samples: usize,
    /// The longest a port stayed held after its VIP appeared (within [`SETTLE`]), as seen
    /// by the samples.
    pub longest_release: Duration,
    /// The longest time between two samples of one router (a sample takes a few processes).
    pub longest_gap: Duration,
    violations: Vec<String>,
}

pub struct PrimaryWatch {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<Summary>>>,
}

impl PrimaryWatch {
    /// Starts sampling `routers`, each in a thread of its own (a sample takes a few
    /// processes, and one router's must not space out another's).
    pub fn start(routers: Vec<Watched>) -> PrimaryWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = routers
            .into_iter()
            .map(|router| {
                let flag = stop.clone();
                std::thread::spawn(move || watch(&router, &flag))
            })
            .collect();
        PrimaryWatch { stop, threads }
    }

    /// Stops sampling; fails naming each sample that saw a primary held past [`SETTLE`], or
    /// if a sample could not be taken (then nothing was checked at that moment).
    pub fn finish(mut self) -> Result<Summary> {
        self.stop.store(true, Ordering::Relaxed);
        let mut summary = Summary::default();
        for thread in self.threads.drain(..) {
            let Ok(one) = thread.join() else { bail!("a primary watch thread panicked") };
            let one = one?;
            summary.samples += one.samples;
            summary.primary_samples += one.primary_samples;
            summary.longest_release = summary.longest_release.max(one.longest_release);
            summary.longest_gap = summary.longest_gap.max(one.longest_gap);
            summary.violations.extend(one.violations);
        }
        if !summary.violations.is_empty() {
            bail!(
                "a primary was held ({} samples):\n{}",
                summary.violations.len(),
                summary.violations.join("\n")
            );
        }
        Ok(summary)
    }
}

impl Drop for PrimaryWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn watch(router: &Watched, stop: &AtomicBool) -> Result<Summary> {
    let start = Instant::now();
    let mut summary = Summary::default();
    // Since when the VIP has been on this node, and whether the port was let go since then.
    let mut since: Option<(Instant, bool)> = None;
    let mut last: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        let sample = sample(router)?;
        summary.samples += 1;
        if let Some(last) = last {
            summary.longest_gap = summary.longest_gap.max(at.duration_since(last));
        }
        last = Some(at);
        if !sample.vip {
            since = None;
        } else {
            summary.primary_samples += 1;
            let (first, released) = since.get_or_insert((at, false));
            let held_for = at.duration_since(*first);
            if !sample.held {
                if !*released {
                    summary.longest_release = summary.longest_release.max(held_for);
                }
                *released = true;
            } else if held_for > SETTLE || *released {
                summary.violations.push(format!(
                    "{:>8.1?} into the watch: {} held, its VIP here for {held_for:.1?}{}",
                    at.duration_since(start),
                    router.name,
                    if *released { " (held again after release)" } else { "" },
                ));
            }
        }
        std::thread::sleep(PERIOD);
    }
    Ok(summary)
}

fn sample(router: &Watched) -> Result<Sample> {
    let Watched { netns, ha, port, .. } = router;
    // One process per sample, in the namespace's network only (`ip netns exec` would also
    // make a mount namespace every time).
    let out = sh(&format!(
        "nsenter --net=/run/netns/{netns} sh -c 'ip -o addr show dev {ha}; echo SAMPLE-PART; \
         ip -o link show dev {port}; echo SAMPLE-PART; nft list set inet hagw held 2>/dev/null || true'"
    ))?;
    let parts: Vec<&str> = out.split("SAMPLE-PART").collect();
    let [addresses, link, hold] = parts.as_slice() else {
        bail!("{}: unexpected sample {out:?}", router.name)
    };
    let vip = addresses.contains(&format!(" {PRIMARY_VIP} "));
    // `<BROADCAST,MULTICAST,UP,LOWER_UP>`: UP is the administrative state.
    let flags = link.split_once('<').and_then(|(_, rest)| rest.split_once('>')).map(|(f, _)| f);
    let up = flags.is_some_and(|f| f.split(',').any(|f| f == "UP"));
    let in_hold_set = hold.contains(&format!("\"{port}\""));
    Ok(Sample { vip, held: !up || in_hold_set })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neutron::NeutronRouter;

    /// The watch can fail: a port held while its VIP stays past the allowance is caught, and
    /// the same port let go in time is not.
    #[test]
    fn a_held_primary_is_caught_and_a_released_one_is_not() -> Result<()> {
        let router = NeutronRouter::build()?;
        let gw = &router.gw;
        let watched = || {
            vec![Watched {
                name: router.id.clone(),
                netns: gw.qrouter.clone(),
                ha: router.ha.clone(),
                port: gw.qg.clone(),
            }]
        };
        gw.lab.exec(&gw.qrouter, &format!("ip addr add {PRIMARY_VIP} dev {}", router.ha))?;
        let watch = PrimaryWatch::start(watched());
        std::thread::sleep(SETTLE + Duration::from_millis(500));
        let err = watch.finish().expect_err("a held primary passed");
        assert!(err.to_string().contains("a primary was held"), "{err:#}");

        let watch = PrimaryWatch::start(watched());
        gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
        std::thread::sleep(Duration::from_millis(500));
        let summary = watch.finish()?;
        assert!(summary.primary_samples > 0, "{summary:?}");
        Ok(())
    }
}
