//! `hagw run` reacting to events on a real gateway port: the emulated L3 agent raising a
//! standby's link, the state file flipping, and keepalived's primary VIP appearing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Result, ensure};
use hagw_e2e::gateway::{GATEWAY_IP, GATEWAY_MAC, GatewayLab};
use hagw_e2e::wait::eventually;
use hagw_e2e::{Capture, hagw_bin};

/// These tests run hagw in the host's network namespace, in parallel: the default metrics
/// port would be contended (tests/tests/metrics.rs covers the endpoint).
const NO_ENDPOINT: [&str; 2] = ["--listen", "none"];

/// `hagw run` in the background, killed on drop.
struct Agent(Child);

impl Agent {
    fn start(config: &Path) -> Result<Agent> {
        Self::spawn(config, &[], None)
    }

    /// `hagw run` started by `wrapper` (e.g. `unshare …`).
    fn start_under(config: &Path, wrapper: &[&str]) -> Result<Agent> {
        Self::spawn(config, wrapper, None)
    }

    /// `hagw run` holding the node lock `lock` (`HAGW_LOCK_FILE`).
    fn start_locked(config: &Path, lock: &str) -> Result<Agent> {
        Self::spawn(config, &[], Some(lock))
    }

    fn spawn(config: &Path, wrapper: &[&str], lock: Option<&str>) -> Result<Agent> {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(hagw_bin());
                c
            }
            None => Command::new(hagw_bin()),
        };
        if let Some(lock) = lock {
            command.env("HAGW_LOCK_FILE", lock);
        }
        let child = command
            .args(["run", "-c", config.to_str().unwrap(), "--log-level", "info"])
            .args(NO_ENDPOINT)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(Agent(child))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A stand-in for a router's keepalived: a process named `keepalived` (what hagw checks in
/// `/proc/<pid>/stat`), its pid written to `pid_file` as keepalived does. Killed on drop.
struct StandInKeepalived(Child);

impl StandInKeepalived {
    /// A shell named `keepalived` in `dir`. A symlink, not a copy: the kernel names a process
    /// after the path it was executed by, and executing a file this process just wrote fails
    /// with ETXTBSY while a child forked by another test meanwhile still holds the write
    /// descriptor.
    fn program(dir: &Path) -> Result<PathBuf> {
        let program = dir.join("keepalived");
        if !program.exists() {
            std::os::unix::fs::symlink("/bin/sh", &program)?;
        }
        Ok(program)
    }

    /// What the stand-in runs: a loop, with the pid file on its command line as Neutron's
    /// keepalived has it (`-r`), which tells it apart from other routers' keepalived.
    fn args(pid_file: &Path) -> Vec<String> {
        let pid_file = pid_file.display().to_string();
        ["-c", "while :; do sleep 1; done", "keepalived", "-r", &pid_file]
            .map(String::from)
            .to_vec()
    }

    fn start(dir: &Path, pid_file: &Path) -> Result<StandInKeepalived> {
        let child = Command::new(Self::program(dir)?).args(Self::args(pid_file)).spawn()?;
        std::fs::write(pid_file, format!("{}\n", child.id()))?;
        Ok(StandInKeepalived(child))
    }

    /// As keepalived runs in a Neutron agent container: in a pid namespace of its own, where
    /// it is pid 1, which is what it writes to its pid file.
    fn start_in_own_pid_namespace(dir: &Path, pid_file: &Path) -> Result<StandInKeepalived> {
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(Self::program(dir)?)
            .args(Self::args(pid_file))
            .spawn()?;
        std::fs::write(pid_file, "1\n")?;
        Ok(StandInKeepalived(child))
    }

    /// Kills it without reaping it (a zombie until dropped), as after a crash; the pid file
    /// stays.
    fn crash(&mut self) -> Result<()> {
        Ok(self.0.kill()?)
    }
}

impl Drop for StandInKeepalived {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A state file saying primary, the router's keepalived pid file (not written yet) and a
/// config naming both.
fn primary_with_pid_file(gw: &GatewayLab) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let state = gw.lab.file("state", "primary")?;
    // Named after the router, as Neutron names it: what tells routers' keepalived apart.
    let pid_file = gw.lab.dir.path().join(format!("r-{}.pid.keepalived-vrrp", gw.lab.id));
    let config = gw.config("link-down", &state)
        + &format!("    keepalivedPidFile: {}\n", pid_file.display());
    let config = gw.lab.file("routers.yaml", &config)?;
    Ok((state, pid_file, config))
}

fn link_up(gw: &GatewayLab) -> Result<bool> {
    Ok(gw.gateway("link")?.contains(",UP"))
}

#[test]
fn run_keeps_a_standby_down_and_takes_over_on_the_state_file() -> Result<()> {
    let gw = GatewayLab::build()?;
    let state = gw.lab.file("state", "backup")?;
    let config = gw.lab.file("routers.yaml", &gw.config("link-down", &state))?;
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    let _agent = Agent::start(&config)?;
    eventually(Duration::from_secs(5), "standby link down", || Ok(!link_up(&gw)?))?;
    eventually(Duration::from_secs(5), "standby silenced", || {
        Ok(gw.sysctl("addr_gen_mode")? == "1")
    })?;

    // The L3 agent raises the link again: hagw puts it back down on the netlink event; the
    // silence it set means nothing leaks in between.
    let capture = Capture::start(&gw.tor, &gw.tor_port, gw.lab.dir.path().join("tor.pcap"))?;
    gw.l3_agent_plug()?;
    eventually(Duration::from_secs(2), "link down again", || Ok(!link_up(&gw)?))?;
    std::thread::sleep(Duration::from_millis(1500));
    let frames = capture.stop_and_frames_from(GATEWAY_MAC)?;
    assert!(frames.is_empty(), "standby leaked:\n{}", frames.join("\n"));

    std::fs::write(&state, "primary")?;
    eventually(Duration::from_secs(3), "takeover", || {
        Ok(link_up(&gw)? && gw.gateway("addr")?.contains(GATEWAY_IP))
    })?;
    gw.lab.exec(&gw.external, &format!("ping -c 1 -W 2 {GATEWAY_IP}"))?;

    std::fs::write(&state, "backup")?;
    eventually(Duration::from_secs(3), "back to standby", || Ok(!link_up(&gw)?))?;
    Ok(())
}

/// keepalived dies on the primary and leaves its pid file and state file ("primary") behind:
/// nothing in the file system or netlink changes, hagw notices the exit itself (a pidfd) and
/// takes the port down as a standby's; a new keepalived (pid file rewritten) makes the state
/// file count again.
#[test]
fn a_dead_keepalived_makes_its_router_standby() -> Result<()> {
    let gw = GatewayLab::build()?;
    let (state, pid_file, config) = primary_with_pid_file(&gw)?;
    let keepalived = StandInKeepalived::start(gw.lab.dir.path(), &pid_file)?;
    let _agent = Agent::start(&config)?;
    let serving = || Ok(link_up(&gw)? && gw.gateway("addr")?.contains(GATEWAY_IP));
    eventually(Duration::from_secs(5), "primary while keepalived runs", serving)?;
    // Let the takeover's own aftermath (IPv6 DAD finishing, ~1 s) pass: its netlink events
    // would re-read the role too, and this test is about the exit alone waking hagw.
    std::thread::sleep(Duration::from_secs(3));

    // Killed and not yet reaped (a zombie), as after a crash; both files stay.
    let mut keepalived = keepalived;
    // Only the exit can wake hagw in time: its resync is 60 s away. The bound is not a
    // speed (a loaded machine took over 1 s); that is measured in docs/benchmarks.md.
    keepalived.crash()?;
    eventually(Duration::from_secs(10), "standby once keepalived died", || Ok(!link_up(&gw)?))?;
    drop(keepalived);
    ensure!(std::fs::read_to_string(&state)? == "primary", "the state file stays stale");

    let _keepalived = StandInKeepalived::start(gw.lab.dir.path(), &pid_file)?;
    eventually(Duration::from_secs(10), "primary again with keepalived back", serving)?;
    Ok(())
}

#[test]
fn the_primary_vip_decides_before_the_state_file() -> Result<()> {
    let gw = GatewayLab::build()?;
    let ha = gw.add_ha_device()?;
    // A stale state file says primary; the VIP is absent, so the router must stay held.
    let state = gw.lab.file("state", "primary")?;
    let config = gw.config("link-down", &state).replace(
        "    strategy:",
        &format!("    haDevice: {ha}\n    primaryVip: 169.254.0.1/24\n    strategy:"),
    );
    let config = gw.lab.file("routers.yaml", &config)?;
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    let _agent = Agent::start(&config)?;
    eventually(Duration::from_secs(5), "held despite the stale state file", || Ok(!link_up(&gw)?))?;

    // keepalived adds the VIP: that netlink event alone makes the takeover.
    gw.lab.exec(&gw.qrouter, &format!("ip addr add 169.254.0.1/24 dev {ha}"))?;
    eventually(Duration::from_secs(3), "takeover on the VIP", || {
        Ok(link_up(&gw)? && gw.gateway("addr")?.contains(GATEWAY_IP))
    })?;
    gw.lab.exec(&gw.qrouter, &format!("ip addr del 169.254.0.1/24 dev {ha}"))?;
    eventually(Duration::from_secs(3), "standby when the VIP leaves", || Ok(!link_up(&gw)?))?;
    Ok(())
}

/// Zero configuration on a Neutron node: the router is discovered from `ha_confs` (written
/// after the agent started, as the L3 agent does), held, and taken over on the VIP.
#[test]
fn run_discovers_neutron_routers_and_follows_keepalived() -> Result<()> {
    let gw = GatewayLab::build()?;
    let id = gw.lab.id.clone();
    let ha = format!("ha-{id}");
    gw.lab.exec(
        &gw.qrouter,
        &format!("ip link add {ha} type veth peer name hp-{id} && ip link set {ha} up"),
    )?;
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    let state_path = gw.lab.dir.path().join("neutron");
    std::fs::create_dir_all(state_path.join("ha_confs"))?;
    let child = Command::new(hagw_bin())
        .args(["run", "--neutron", state_path.to_str().unwrap()])
        .args(["--backend", "generic", "--strategy", "link-down", "--log-level", "info"])
        .args(NO_ENDPOINT)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let _agent = Agent(child);
    std::thread::sleep(Duration::from_millis(300));

    let router_dir = state_path.join("ha_confs").join(&id);
    std::fs::create_dir_all(&router_dir)?;
    std::fs::write(router_dir.join("state"), "backup")?;
    let qg = &gw.qg;
    std::fs::write(
        router_dir.join("keepalived.conf"),
        format!(
            "global_defs {{\n    notification_email_from neutron@openstack.local\n    router_id neutron\n}}\n\
             vrrp_instance VR_1 {{\n    state BACKUP\n    interface {ha}\n    virtual_router_id 1\n    \
             priority 50\n    garp_master_delay 60\n    nopreempt\n    advert_int 2\n    \
             track_interface {{\n        {ha}\n    }}\n    virtual_ipaddress {{\n        169.254.0.1/24 dev {ha}\n    }}\n    \
             virtual_ipaddress_excluded {{\n        {GATEWAY_IP}/24 dev {qg} no_track\n    }}\n    \
             virtual_routes {{\n        0.0.0.0/0 via 203.0.113.1 dev {qg} no_track protocol static\n    }}\n}}\n"
        ),
    )?;
    eventually(Duration::from_secs(5), "discovered standby held", || Ok(!link_up(&gw)?))?;
    // keepalived runs, with its VRRP pid file where Neutron keeps it; then it takes over.
    let pid_file = state_path.join("ha_confs").join(format!("{id}.pid.keepalived-vrrp"));
    let mut keepalived = StandInKeepalived::start(gw.lab.dir.path(), &pid_file)?;
    gw.lab.exec(&gw.qrouter, &format!("ip addr add 169.254.0.1/24 dev {ha}"))?;
    eventually(Duration::from_secs(3), "takeover on the VIP", || {
        Ok(link_up(&gw)? && gw.gateway("addr")?.contains(GATEWAY_IP))
    })?;
    let routes = gw.lab.exec(&gw.qrouter, "ip route show default")?;
    assert!(routes.contains("via 203.0.113.1"), "default route missing: {routes}");
    // keepalived crashes and leaves the VIP behind: the discovered pid file tells.
    keepalived.crash()?;
    eventually(Duration::from_secs(3), "standby once keepalived died", || Ok(!link_up(&gw)?))?;
    Ok(())
}

/// keepalived's notify script path: with no agent running, `hagw notify` alone completes a
/// takeover and a demotion.
#[test]
fn notify_completes_a_takeover_without_the_agent() -> Result<()> {
    let gw = GatewayLab::build()?;
    let state = gw.lab.file("state", "backup")?;
    let config = gw.lab.file("routers.yaml", &gw.config("link-down", &state))?;
    let router = format!("r-{}", gw.lab.id);
    let notify = |word: &str| -> Result<std::process::Output> {
        Ok(Command::new(hagw_bin())
            .args(["notify", "-c", config.to_str().unwrap(), &router, word])
            .output()?)
    };
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    assert!(notify("BACKUP")?.status.success());
    assert!(!link_up(&gw)?, "BACKUP must hold the port");
    assert!(notify("MASTER")?.status.success());
    assert!(link_up(&gw)? && gw.gateway("addr")?.contains(GATEWAY_IP));
    gw.lab.exec(&gw.external, &format!("ping -c 1 -W 2 {GATEWAY_IP}"))?;
    assert!(notify("FAULT")?.status.success());
    assert!(!link_up(&gw)?, "FAULT is handled as standby");
    let bad = notify("SIDEWAYS")?;
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    Ok(())
}

/// keepalived in the Neutron agent container's pid namespace (openstack-helm, kolla-ansible
/// before its wrappers) writes a pid that names another process, or none, where hagw runs:
/// hagw finds it by its own-namespace pid, serves the primary while it runs, and holds the
/// port once it dies.
#[test]
fn a_keepalived_in_another_pid_namespace_is_followed() -> Result<()> {
    let gw = GatewayLab::build()?;
    let (_state, pid_file, config) = primary_with_pid_file(&gw)?;
    let mut keepalived =
        StandInKeepalived::start_in_own_pid_namespace(gw.lab.dir.path(), &pid_file)?;
    let _agent = Agent::start(&config)?;
    let serving = || Ok(link_up(&gw)? && gw.gateway("addr")?.contains(GATEWAY_IP));
    eventually(Duration::from_secs(5), "primary while keepalived runs", serving)?;
    std::thread::sleep(Duration::from_secs(2));
    keepalived.crash()?;
    eventually(Duration::from_secs(3), "standby once keepalived died", || Ok(!link_up(&gw)?))?;
    Ok(())
}

/// hagw in a pid namespace of its own (a pod without hostPID) cannot see keepalived at all:
/// its liveness cannot be told, which must not demote a primary; the state file decides.
#[test]
fn a_keepalived_hagw_cannot_see_does_not_demote_the_primary() -> Result<()> {
    let gw = GatewayLab::build()?;
    let (state, pid_file, config) = primary_with_pid_file(&gw)?;
    let _keepalived = StandInKeepalived::start(gw.lab.dir.path(), &pid_file)?;
    let _agent = Agent::start_under(
        &config,
        &["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"],
    )?;
    let serving = || Ok(link_up(&gw)? && gw.gateway("addr")?.contains(GATEWAY_IP));
    eventually(Duration::from_secs(5), "primary from the state file", serving)?;
    std::fs::write(&state, "backup")?;
    eventually(Duration::from_secs(3), "standby from the state file", || Ok(!link_up(&gw)?))?;
    Ok(())
}

/// Two agents on one node never fight: the second waits on the node lock without touching
/// anything (here with the first one frozen, nobody undoes the L3 agent raising the standby's
/// link), and takes over the moment the first exits.
#[test]
fn a_second_agent_waits_for_the_first_and_takes_over() -> Result<()> {
    let gw = GatewayLab::build()?;
    let state = gw.lab.file("state", "backup")?;
    let config = gw.lab.file("routers.yaml", &gw.config("link-down", &state))?;
    let lock = gw.lab.dir.path().join("hagw/agent.lock");
    let lock_arg = lock.to_str().unwrap();
    let first = Agent::start_locked(&config, lock_arg)?;
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    eventually(Duration::from_secs(5), "the first agent holds the standby", || Ok(!link_up(&gw)?))?;
    let second = Agent::start_locked(&config, lock_arg)?;
    std::thread::sleep(Duration::from_millis(500));
    // Freeze the first agent: only the second could react now, and it must not.
    signal(first.0.id(), "STOP")?;
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    std::thread::sleep(Duration::from_millis(1500));
    ensure!(link_up(&gw)?, "the waiting agent acted while the first one held the lock");
    // The first one exits (killed while frozen): the second takes over at once.
    drop(first);
    eventually(Duration::from_secs(3), "the second agent to take over", || Ok(!link_up(&gw)?))?;
    drop(second);
    Ok(())
}

/// SIGHUP re-reads the configuration: the same file again and an invalid one never lift the
/// standby's hold (nothing leaks, the agent keeps enforcing), a changed strategy takes effect.
#[test]
fn sighup_reloads_the_configuration_without_lifting_a_hold() -> Result<()> {
    let gw = GatewayLab::build()?;
    let state = gw.lab.file("state", "backup")?;
    let link_down = gw.config("link-down", &state);
    let config = gw.lab.file("routers.yaml", &link_down)?;
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    let mut agent = Agent::start(&config)?;
    eventually(Duration::from_secs(5), "standby link down", || Ok(!link_up(&gw)?))?;
    eventually(Duration::from_secs(5), "standby silenced", || {
        Ok(gw.sysctl("addr_gen_mode")? == "1")
    })?;

    let capture = Capture::start(&gw.tor, &gw.tor_port, gw.lab.dir.path().join("tor.pcap"))?;
    for content in [link_down.as_str(), "routers:\n  - id: broken\n"] {
        std::fs::write(&config, content)?;
        signal(agent.0.id(), "HUP")?;
        for _ in 0..10 {
            ensure!(!link_up(&gw)?, "a reload lifted the hold");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    ensure!(agent.0.try_wait()?.is_none(), "an invalid configuration on SIGHUP stopped the agent");
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    eventually(Duration::from_secs(2), "still enforcing: link down again", || Ok(!link_up(&gw)?))?;
    let frames = capture.stop_and_frames_from(GATEWAY_MAC)?;
    ensure!(frames.is_empty(), "standby leaked around the reloads:\n{}", frames.join("\n"));

    // silence-only: the standby's link is up, silent.
    std::fs::write(&config, gw.config("silence-only", &state))?;
    signal(agent.0.id(), "HUP")?;
    eventually(Duration::from_secs(5), "the new strategy (link up)", || link_up(&gw))?;
    ensure!(gw.sysctl("addr_gen_mode")? == "1", "the standby is no longer silenced");
    Ok(())
}

/// `hagw release` refuses while an agent holds the node lock; once the agent is gone it hands
/// the held standby's port back: link up, silent (no address, no link-local generation),
/// nothing leaked on the way.
#[test]
fn release_hands_a_held_standby_back_once_the_agent_is_gone() -> Result<()> {
    let gw = GatewayLab::build()?;
    let state = gw.lab.file("state", "backup")?;
    let config = gw.lab.file("routers.yaml", &gw.config("link-down", &state))?;
    let lock = gw.lab.dir.path().join("hagw/agent.lock");
    let release = |which: &str| -> Result<bool> {
        let out = Command::new(hagw_bin())
            .args(["release", "-c", config.to_str().unwrap(), which])
            .args(["--lock-file", lock.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()?;
        Ok(out.status.success())
    };
    gw.lab.exec(&gw.qrouter, &format!("ip link set {} up", gw.qg))?;
    let agent = Agent::start_locked(&config, lock.to_str().unwrap())?;
    eventually(Duration::from_secs(5), "standby held", || Ok(!link_up(&gw)?))?;
    ensure!(!release("--all")?, "release went ahead while the agent ran");
    ensure!(!link_up(&gw)?, "a refused release lifted the hold");

    drop(agent);
    let capture = Capture::start(&gw.tor, &gw.tor_port, gw.lab.dir.path().join("tor.pcap"))?;
    ensure!(release(&format!("r-{}", gw.lab.id))?, "release failed");
    ensure!(link_up(&gw)?, "the port was not handed back");
    ensure!(gw.sysctl("addr_gen_mode")? == "1", "the standby is no longer silenced");
    ensure!(!gw.gateway("addr")?.contains("inet"), "the standby has addresses");
    std::thread::sleep(Duration::from_millis(1000));
    let frames = capture.stop_and_frames_from(GATEWAY_MAC)?;
    ensure!(frames.is_empty(), "the release leaked:\n{}", frames.join("\n"));
    Ok(())
}

fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status()?;
    ensure!(status.success(), "kill -{signal} {pid}");
    Ok(())
}
