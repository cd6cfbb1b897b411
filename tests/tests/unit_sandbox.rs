//! hagw under exactly the sandbox of the package's systemd unit (`packaging/deb/hagw.service`,
//! read here, so that the unit and this test cannot drift apart): its capability bounding set,
//! no-new-privileges, the whole file system read-only but the API file systems and the state
//! directory, homes hidden; its settings from the package's `hagw.env`. systemd does not run
//! here, so the sandbox is built the way systemd builds it — a mount namespace remounted
//! read-only, then `setpriv` — around `hagw run` on each of two OVS nodes, which must
//! converge one primary (released, configured, announced: the ToR learns the gateway MAC
//! there) and one standby (held in OVSDB and OpenFlow, never learnt at the ToR).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hagw_e2e::debroot::repo_root;
use hagw_e2e::gateway::{EXTERNAL_IP, GATEWAY_CIDR, GATEWAY_IP};
use hagw_e2e::hagw_bin;
use hagw_e2e::ovs::{OvsLab, OvsNode, fdb_has_gateway_on};

/// `[Service]` directives that shape the process (the rest only supervise it).
#[derive(Debug, Default)]
struct Sandbox {
    bounding: Vec<String>,
    ambient: Vec<String>,
    no_new_privs: bool,
    protect_system_strict: bool,
    protect_home: bool,
    read_write: Vec<String>,
    state_dir: Option<String>,
    environment_file: Option<String>,
}

/// Reads the unit; a directive this test does not know fails it (emulate it here first).
fn sandbox_of(unit: &str) -> Result<Sandbox> {
    let mut sandbox = Sandbox::default();
    let service = unit.split("[Service]").nth(1).context("no [Service]")?;
    let service = service.split("\n[").next().unwrap_or_default();
    let words = |v: &str| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    for line in service.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) =
            line.split_once('=').with_context(|| format!("not a directive: {line}"))?;
        match key {
            "Type" | "ExecStart" | "ExecReload" | "Restart" | "RestartSec" => {}
            "EnvironmentFile" => sandbox.environment_file = Some(value.to_owned()),
            "CapabilityBoundingSet" => sandbox.bounding = words(value),
            "AmbientCapabilities" => sandbox.ambient = words(value),
            "NoNewPrivileges" => sandbox.no_new_privs = value == "yes",
            "ProtectSystem" if value == "strict" => sandbox.protect_system_strict = true,
            "ProtectHome" if value == "yes" => sandbox.protect_home = true,
            "ReadWritePaths" => sandbox.read_write.extend(words(value)),
            "StateDirectory" => sandbox.state_dir = Some(format!("/var/lib/{value}")),
            _ => bail!("hagw.service has `{line}`, which this test does not emulate"),
        }
    }
    ensure!(sandbox.protect_system_strict, "the unit is expected to use ProtectSystem=strict");
    Ok(sandbox)
}

/// `CAP_NET_ADMIN` → `net_admin`, as setpriv spells it.
fn setpriv_caps(caps: &[String]) -> String {
    let names: Vec<String> =
        caps.iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())).collect();
    format!("-all{}{}", if names.is_empty() { "" } else { "," }, names.join(","))
}

/// The kernel's bit numbers of the capabilities the unit names (`CapEff` in /proc).
fn cap_mask(caps: &[String]) -> Result<u64> {
    caps.iter().try_fold(0u64, |mask, cap| {
        let bit = match cap.as_str() {
            "CAP_NET_RAW" => 13,
            "CAP_NET_ADMIN" => 12,
            "CAP_SYS_ADMIN" => 21,
            "CAP_SYS_PTRACE" => 19,
            "CAP_DAC_READ_SEARCH" => 2,
            "CAP_DAC_OVERRIDE" => 1,
            other => bail!("add {other}'s bit here"),
        };
        Ok(mask | 1 << bit)
    })
}

/// `KEY=value` lines of an EnvironmentFile.
fn environment(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The shell that builds the mount namespace, then execs setpriv → hagw ("$@").
fn sandbox_script(sandbox: &Sandbox, writable: &[PathBuf]) -> String {
    let mut script = String::from("set -e\n");
    if sandbox.protect_home {
        script.push_str(
            "for d in /home /root /run/user; do [ -d $d ] && mount -t tmpfs -o mode=000 tmpfs $d; done\n",
        );
    }
    for dir in writable {
        script.push_str(&format!("mount --bind {0} {0}\n", dir.display()));
    }
    // ProtectSystem=strict: every mount read-only except /dev, /proc and /sys. Namespace
    // files (nsfs, thousands under /run/netns on a busy node) have no data to protect, and
    // remounting each would take minutes. A mount other tests remove meanwhile (propagated
    // here) is gone, not writable.
    script.push_str(
        "findmnt -rn -o TARGET,FSTYPE | while read -r m fstype; do\n\
         \x20 [ \"$fstype\" = nsfs ] && continue\n\
         \x20 case $m in /dev|/dev/*|/proc|/proc/*|/sys|/sys/*) continue;; esac\n\
         \x20 mount -o remount,bind,ro \"$m\" || ! mountpoint -q \"$m\"\n\
         done\n",
    );
    for dir in writable {
        script.push_str(&format!("mount -o remount,bind,rw {}\n", dir.display()));
    }
    script.push_str(&format!(
        "exec setpriv {} --inh-caps={} --ambient-caps={} --bounding-set={} -- \"$@\"\n",
        if sandbox.no_new_privs { "--no-new-privs" } else { "" },
        setpriv_caps(&sandbox.ambient),
        setpriv_caps(&sandbox.ambient),
        setpriv_caps(&sandbox.bounding),
    ));
    script
}

/// `hagw run` as the unit runs it, in a node's namespace; killed on drop.
struct Sandboxed {
    child: Child,
    log: PathBuf,
}

impl Sandboxed {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sandboxed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(lab: &OvsLab, i: usize, role: &str, sandbox: &Sandbox, bin: &Path) -> Result<Sandboxed> {
    let node = &lab.nodes[i];
    let dir = lab.lab.dir.path();
    let config = lab.lab.file(&format!("routers-{i}.yaml"), &routers_yaml(lab, node, role))?;
    // The state directory systemd would make: a directory of the lab standing for it.
    let state = dir.join(format!("state-{i}"));
    std::fs::create_dir_all(&state)?;
    let unit_state = sandbox.state_dir.clone().context("the unit has no StateDirectory")?;
    let env_file = sandbox.environment_file.as_deref().context("no EnvironmentFile")?;
    ensure!(env_file == "/etc/hagw/hagw.env", "EnvironmentFile is {env_file}");
    let mut env =
        environment(&std::fs::read_to_string(repo_root().join("packaging/deb/hagw.env"))?);
    // Routers from this lab's file instead of Neutron's; the lock where the unit's is.
    env.retain(|k, _| !k.starts_with("HAGW_NEUTRON"));
    env.insert("HAGW_CONFIG".into(), config.display().to_string());
    let lock = env.get("HAGW_LOCK_FILE").context("no HAGW_LOCK_FILE")?;
    let in_state = lock.strip_prefix(&format!("{unit_state}/")).with_context(|| {
        format!("HAGW_LOCK_FILE={lock} is outside the unit's StateDirectory {unit_state}")
    })?;
    env.insert("HAGW_LOCK_FILE".into(), state.join(in_state).display().to_string());
    let mut writable = vec![state];
    writable.extend(sandbox.read_write.iter().map(PathBuf::from));

    let log = dir.join(format!("hagw-{i}.log"));
    let out = std::fs::File::create(&log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", &node.ns, "unshare", "--mount", "--propagation", "slave"])
        .args(["sh", "-c", &sandbox_script(sandbox, &writable), "sandbox"])
        .arg(bin)
        .arg("run")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(&env)
        // The lab's OVS keeps its sockets in its own run dir (production: /run/openvswitch).
        .env("OVS_RUNDIR", &node.ovs.dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    Ok(Sandboxed { child, log })
}

fn routers_yaml(lab: &OvsLab, node: &OvsNode, role: &str) -> String {
    format!(
        "ovsdb: {endpoint}\n\
         routers:\n\
         \x20 - id: r-{id}\n\
         \x20   namespace: {ns}\n\
         \x20   gatewayDevice: {qg}\n\
         \x20   gatewayAddresses: [{GATEWAY_CIDR}, \"2001:db8::10/64\"]\n\
         \x20   routes: [{{destination: 0.0.0.0/0, via: {EXTERNAL_IP}}}]\n\
         \x20   backend: {{ovs: {{port: {port}}}}}\n\
         \x20   strategy: l2-hold\n\
         \x20   silenceSettleMs: 500\n\
         \x20   role: {{fixed: {role}}}\n",
        endpoint = node.ovs.endpoint(),
        id = lab.lab.id,
        ns = node.qrouter,
        qg = node.qg,
        port = node.port,
    )
}

/// What the kernel says of the running process: its effective capabilities, no_new_privs,
/// and whether its root is mounted read-only.
fn process_sandbox(pid: u32) -> Result<(u64, bool, bool)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("").to_owned()
    };
    let eff = u64::from_str_radix(&field("CapEff:"), 16)?;
    let nnp = field("NoNewPrivs:") == "1";
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root_ro = mountinfo.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(4) == Some(&"/") && f.get(5).is_some_and(|o| o.split(',').any(|o| o == "ro"))
    });
    Ok((eff, nnp, root_ro))
}

/// [`hagw_e2e::wait::eventually`], with both agents' logs in the error.
fn eventually(what: &str, logs: &[&Sandboxed], check: impl FnMut() -> Result<bool>) -> Result<()> {
    // A bound on a hang, not a speed: the sandbox remounts the machine's mounts read-only.
    hagw_e2e::wait::eventually(Duration::from_secs(120), what, check).map_err(|e| {
        let logs: Vec<String> = logs.iter().map(|s| s.log()).collect();
        anyhow::anyhow!("{e:#}; hagw's logs:\n{}", logs.join("\n---\n"))
    })
}

#[test]
fn the_units_sandbox_converges_a_primary_and_a_standby_on_ovs() -> Result<()> {
    let unit = std::fs::read_to_string(repo_root().join("packaging/deb/hagw.service"))?;
    let sandbox = sandbox_of(&unit)?;
    let lab = OvsLab::build(2)?;
    for node in &lab.nodes {
        node.plug(&lab.lab)?;
        node.agent_wire()?;
    }
    // A copy of the binary in the lab: the checkout may be under a home the unit hides.
    let bin = lab.lab.dir.path().join("hagw");
    std::fs::copy(hagw_bin(), &bin)?;
    let primary = start(&lab, 0, "primary", &sandbox, &bin)?;
    let standby = start(&lab, 1, "standby", &sandbox, &bin)?;
    let logs = [&primary, &standby];

    // The processes run with exactly the unit's sandbox.
    let expected = cap_mask(&sandbox.bounding)?;
    for agent in logs {
        let pid = agent.child.id();
        eventually("the sandboxed hagw", &logs, || {
            Ok(std::fs::read_to_string(format!("/proc/{pid}/comm"))?.trim() == "hagw")
        })?;
        let (eff, nnp, root_ro) = process_sandbox(pid)?;
        ensure!(eff == expected, "CapEff {eff:#x}, the unit allows {expected:#x}");
        ensure!(nnp == sandbox.no_new_privs, "NoNewPrivs is {nnp}");
        ensure!(root_ro, "/ is writable for hagw");
    }

    let (p, s) = (&lab.nodes[0], &lab.nodes[1]);
    eventually("the primary to serve and announce", &logs, || {
        let addr = lab.lab.exec(&p.qrouter, &format!("ip -o addr show dev {}", p.qg))?;
        Ok(addr.contains(GATEWAY_IP) && fdb_has_gateway_on(&lab.tor, &p.tor_port)?)
    })?;
    ensure!(p.port_vlan()? != "4095 trunk [4095]", "the primary is held: {}", p.port_vlan()?);
    ensure!(!p.no_receive()?, "the primary keeps no-receive");
    eventually("the standby to be held", &logs, || {
        Ok(s.port_vlan()? == "4095 trunk [4095]" && s.no_receive()?)
    })?;
    let route = lab.lab.exec(&p.qrouter, "ip route show default")?;
    ensure!(route.contains(EXTERNAL_IP), "no default route on the primary: {route}");
    // /proc/sys stays writable (no ProtectKernelTunables=): IPv6 forwarding on the primary.
    let forwarding = format!("cat /proc/sys/net/ipv6/conf/{}/forwarding", p.qg);
    eventually("IPv6 forwarding on the primary", &logs, || {
        Ok(lab.lab.exec(&p.qrouter, &forwarding)?.trim() == "1")
    })?;
    // Traffic through the primary's gateway reaches the external host.
    lab.lab.exec(&p.qrouter, &format!("ping -c 1 -W 2 {EXTERNAL_IP}"))?;
    ensure!(!fdb_has_gateway_on(&lab.tor, &s.tor_port)?, "the ToR learnt the MAC on the standby");
    for agent in logs {
        let log = agent.log();
        ensure!(!log.contains("ERROR") && !log.contains("not permitted"), "{log}");
    }
    Ok(())
}
