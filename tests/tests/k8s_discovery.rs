//! `hagw agent --kubernetes --discover-neutron` against a real control plane, with no
//! HARouter at all: the router comes from Neutron's files and real keepalived, and what is
//! discovered is the desired state. A floating IP Neutron adds is served; one it removes
//! stays absent on the primary across resyncs and an agent restart (nothing cached brings it
//! back, and the agent deletes it if it shows up again), while one that disappears without
//! Neutron removing it is put back.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use hagw_e2e::gateway::GATEWAY_IP;
use hagw_e2e::k8s::{AgentProcess, ApiServer, wait_for};
use hagw_e2e::lab::{hagw_bin, sh};
use hagw_e2e::neutron::{FIP, FIP_ADDED, NeutronRouter};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(server: &ApiServer, router: &NeutronRouter, run: u32) -> Result<AgentProcess> {
    let dir = router.gw.lab.dir.path();
    let mut command = Command::new(hagw_bin());
    command
        .args(["--log-level", "info", "agent", "--kubernetes", "--listen", "127.0.0.1:0"])
        .args(["--resync", "1", "--discover-neutron", "--neutron-root", "host"])
        .arg("--neutron-state-path")
        .arg(dir.join("neutron"))
        .args(["--backend", "generic", "--strategy", "link-down", "--state-dir"])
        .arg(dir.join("hagw-state"));
    AgentProcess::spawn(server, "n1", command, dir.join(format!("agent{run}.log")))
}

fn addresses(router: &NeutronRouter) -> Result<String> {
    router.gw.gateway("addr")
}

/// Fails if `fip` shows up on the gateway during `during`.
fn stays_absent(router: &NeutronRouter, fip: &str, during: Duration) -> Result<()> {
    let end = Instant::now() + during;
    while Instant::now() < end {
        let now = addresses(router)?;
        ensure!(!now.contains(&format!("{fip}/32")), "{fip} is back:\n{now}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn a_discovered_router_follows_neutron_and_a_removed_floating_ip_stays_gone() -> Result<()> {
    let server = ApiServer::start()?;
    let router = NeutronRouter::build()?;
    let dir = router.gw.lab.dir.path().to_path_buf();
    scenario(&server, &router).map_err(|e| {
        let logs: String = ["agent1.log", "agent2.log", "keepalived.log"]
            .iter()
            .map(|f| {
                format!("--- {f}\n{}", std::fs::read_to_string(dir.join(f)).unwrap_or_default())
            })
            .collect();
        e.context(logs)
    })
}

fn scenario(server: &ApiServer, router: &NeutronRouter) -> Result<()> {
    server.install_crd()?;
    let gw = &router.gw;
    let ha_confs = gw.lab.dir.path().join("neutron/ha_confs");
    std::fs::create_dir_all(&ha_confs)?;
    let mut first = agent(server, router, 1)?;

    // The L3 agent sets the router up after hagw started: conf, keepalived (alone on its HA
    // network, it becomes primary), the gateway link up.
    router.write_conf(&ha_confs, &[FIP, FIP_ADDED])?;
    let log = std::fs::File::create(gw.lab.dir.path().join("keepalived.log"))?;
    let keepalived = Killed(
        router
            .keepalived_command(&ha_confs)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    wait_for("the primary with both floating IPs", Duration::from_secs(30), || {
        let now = addresses(router)?;
        Ok((now.contains(GATEWAY_IP) && now.contains(FIP) && now.contains(FIP_ADDED)).then_some(()))
    })?;
    first.assert_running()?;

    // An address Neutron still wants, lost without Neutron removing it: hagw puts it back.
    gw.lab.exec(&gw.qrouter, &format!("ip addr del {FIP}/32 dev {}", gw.qg))?;
    wait_for("the floating IP put back", Duration::from_secs(5), || {
        Ok(addresses(router)?.contains(&format!("{FIP}/32")).then_some(()))
    })?;

    // Neutron removes a floating IP: conf rewritten, keepalived reloaded (it drops the
    // address itself); hagw must not add it back, at a resync or after a restart.
    let neutron_sets = |fips: &[&str]| -> Result<()> {
        router.write_conf(&ha_confs, fips)?;
        sh(&format!("kill -HUP {}", keepalived.0.id()))?;
        Ok(())
    };
    neutron_sets(&[FIP])?;
    wait_for("the removed floating IP gone", Duration::from_secs(10), || {
        Ok((!addresses(router)?.contains(FIP_ADDED)).then_some(()))
    })?;
    // A pass under the previous spec may put it back just after keepalived dropped it (seen
    // here: the agent learns of the new keepalived.conf a moment after keepalived does): the
    // router's new worker deletes what its previous spec had and this one has not.
    gw.lab.exec(&gw.qrouter, &format!("ip addr add {FIP_ADDED}/32 dev {}", gw.qg))?;
    wait_for("the removed floating IP deleted again", Duration::from_secs(5), || {
        Ok((!addresses(router)?.contains(FIP_ADDED)).then_some(()))
    })?;
    stays_absent(router, FIP_ADDED, Duration::from_secs(4))?;
    first.assert_running()?;

    // Added again, and removed while the agent is down: the restarted agent enforces what
    // Neutron's files say now, not what it enforced before.
    neutron_sets(&[FIP, FIP_ADDED])?;
    wait_for("the floating IP added again", Duration::from_secs(10), || {
        Ok(addresses(router)?.contains(FIP_ADDED).then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(2));
    drop(first);
    neutron_sets(&[FIP])?;
    wait_for("the floating IP removed by keepalived", Duration::from_secs(10), || {
        Ok((!addresses(router)?.contains(FIP_ADDED)).then_some(()))
    })?;
    let mut second = agent(server, router, 2)?;
    stays_absent(router, FIP_ADDED, Duration::from_secs(5))?;
    second.assert_running()?;
    let log = std::fs::read_to_string(&second.log)?;
    ensure!(log.contains(&router.id) && log.contains("managing router"), "{log}");
    ensure!(addresses(router)?.contains(&format!("{FIP}/32")), "the kept floating IP is gone");
    gw.lab.exec(&gw.external, &format!("ping -c 1 -W 2 {FIP}"))?;
    Ok(())
}
