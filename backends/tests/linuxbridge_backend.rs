//! Root-only kernel tests of the Linux bridge backend against real nftables and bridges.
//!
//! The backend acts on the process's own network namespace, so each test runs on a thread
//! that has unshared into a fresh namespace, with a current-thread runtime: the netlink
//! sockets the backend opens and the `nft` and `ip` children the test spawns (to tamper
//! with and cross-check what hagw wrote) all live in that namespace, and the host's ruleset
//! is never touched.

mod linux_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use hagw_backends::l2::LinuxbridgeBackend;
use hagw_core::observed::{HoldState, L2State};
use linux_support::can_run;
use nix::sched::{CloneFlags, unshare};

const TAP: &str = "tap1234abcd-56";
const QG: &str = "qg-1234abcd-56";
const BRQ: &str = "brq1234abcd-56";

/// Runs `test` in a fresh network namespace on its own thread and runtime.
fn in_fresh_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    if !can_run() {
        return;
    }
    let worker = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare netns");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(test());
    });
    if let Err(panic) = worker.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Runs a shell command (in the calling thread's namespace) and returns its stdout.
fn sh(cmd: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(cmd).output().expect("run bash");
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bridge() {
    sh(&format!(
        "ip link add {BRQ} type bridge stp_state 0 forward_delay 0 && ip link set {BRQ} up"
    ));
}

/// What the interface driver and the Linuxbridge agent do: the veth pair, the tap plugged.
fn plug() {
    sh(&format!("ip link add {TAP} type veth peer name {QG} && ip link set {QG} up"));
    sh(&format!("ip link set {TAP} master {BRQ} && ip link set {TAP} up"));
}

fn rules_in_hold_chain() -> usize {
    sh("nft list chain bridge hagw hold").lines().filter(|l| l.contains("drop")).count()
}

async fn state(lb: &LinuxbridgeBackend) -> L2State {
    lb.observe_port(TAP, BRQ).await.expect("observe")
}

#[test]
fn a_port_held_before_its_tap_exists_stays_held_when_plugged_and_is_released() {
    in_fresh_netns(|| async {
        let lb = LinuxbridgeBackend::new();
        bridge();
        assert_eq!(state(&lb).await, L2State { hold: HoldState::Released, wired: false });

        lb.hold_port(TAP).await.expect("hold without a tap");
        assert_eq!(state(&lb).await, L2State { hold: HoldState::Held, wired: false });

        plug();
        assert_eq!(state(&lb).await, L2State { hold: HoldState::Held, wired: true });

        lb.release_port(TAP).await.expect("release");
        assert_eq!(state(&lb).await, L2State { hold: HoldState::Released, wired: true });
        lb.release_port(TAP).await.expect("releasing twice is a no-op");
    })
}

#[test]
fn the_hold_survives_carrier_replug_and_recreation_of_tap_and_bridge() {
    in_fresh_netns(|| async {
        let lb = LinuxbridgeBackend::new();
        bridge();
        plug();
        lb.hold_port(TAP).await.unwrap();
        let steps = [
            ("carrier down", format!("ip link set {QG} down")),
            ("carrier up", format!("ip link set {QG} up")),
            ("unplugged", format!("ip link set {TAP} nomaster")),
            ("replugged", format!("ip link set {TAP} master {BRQ}")),
            ("veth deleted", format!("ip link del {TAP}")),
            ("bridge re-created", format!("ip link del {BRQ}")),
        ];
        for (what, cmd) in steps {
            sh(&cmd);
            assert_eq!(state(&lb).await.hold, HoldState::Held, "after {what}");
        }
        bridge();
        plug();
        assert_eq!(state(&lb).await, L2State { hold: HoldState::Held, wired: true });
    })
}

#[test]
fn unplugged_down_or_foreign_bridge_ports_are_not_wired() {
    in_fresh_netns(|| async {
        let lb = LinuxbridgeBackend::new();
        bridge();
        plug();
        assert!(state(&lb).await.wired);
        sh(&format!("ip link set {QG} down"));
        assert!(!state(&lb).await.wired, "no carrier");
        sh(&format!("ip link set {QG} up"));
        sh(&format!("ip link set {TAP} nomaster"));
        assert!(!state(&lb).await.wired, "unplugged");
        sh(&format!("ip link add brq-other type bridge && ip link set {TAP} master brq-other"));
        assert!(!state(&lb).await.wired, "in another bridge");
    })
}

#[test]
fn a_flushed_ruleset_reads_as_released_and_hold_rebuilds_it() {
    in_fresh_netns(|| async {
        let lb = LinuxbridgeBackend::new();
        lb.hold_port(TAP).await.unwrap();
        sh("nft flush ruleset");
        assert_eq!(state(&lb).await.hold, HoldState::Released);
        lb.release_port(TAP).await.expect("release without a table is a no-op");
        lb.hold_port(TAP).await.unwrap();
        assert_eq!(state(&lb).await.hold, HoldState::Held);
    })
}

#[test]
fn a_tampered_chain_is_not_a_hold_and_hold_repairs_it() {
    in_fresh_netns(|| async {
        let lb = LinuxbridgeBackend::new();
        lb.hold_port(TAP).await.unwrap();
        // An accept before our drop would let the port through.
        sh("nft insert rule bridge hagw hold accept");
        assert_eq!(state(&lb).await.hold, HoldState::Unknown);
        lb.hold_port(TAP).await.unwrap();
        assert_eq!(state(&lb).await.hold, HoldState::Held);
        assert_eq!(sh("nft list chain bridge hagw hold").matches("accept;").count(), 1);
        assert!(!sh("nft list chain bridge hagw hold").contains("\t\taccept"));

        sh("nft flush chain bridge hagw hold");
        assert_eq!(state(&lb).await.hold, HoldState::Unknown, "element without a rule");
        lb.hold_port(TAP).await.unwrap();
        assert_eq!(state(&lb).await.hold, HoldState::Held);
    })
}

#[test]
fn concurrent_holds_keep_one_rule_and_every_port() {
    in_fresh_netns(|| async {
        let lb = LinuxbridgeBackend::new();
        let ports: Vec<String> = (0..8).map(|i| format!("tap{i}")).collect();
        let holds = ports.iter().map(|p| lb.hold_port(p));
        for result in futures::future::join_all(holds).await {
            result.expect("hold");
        }
        lb.hold_port("tap0").await.expect("holding again is a no-op");
        assert_eq!(rules_in_hold_chain(), 1);
        let table = lb.table().await.unwrap();
        assert!(table.is_complete());
        for p in &ports {
            assert!(table.holds(p), "{p} held");
        }
        lb.release_port("tap3").await.unwrap();
        let table = lb.table().await.unwrap();
        assert!(!table.holds("tap3") && table.holds("tap4"));
    })
}

/// Someone else's `nft` edits that would let a held port through are read as "not a hold",
/// and the next hold repairs them: a drop policy (the chain no longer accepts what is not
/// held), an inverted match, a rule on another set.
#[test]
fn an_edited_table_is_read_as_incomplete_and_hold_repairs_it() {
    in_fresh_netns(|| async {
        let lb = LinuxbridgeBackend::new();
        lb.hold_port(TAP).await.unwrap();
        let edits = [
            (
                "policy drop",
                "nft add chain bridge hagw hold '{ type filter hook prerouting priority -300; \
                 policy drop; }'",
            ),
            (
                "inverted match",
                "nft flush chain bridge hagw hold && \
                 nft add rule bridge hagw hold iifname != @held_ports drop",
            ),
            (
                "another set",
                "nft add set bridge hagw other '{ type ifname; }' && \
                 nft flush chain bridge hagw hold && \
                 nft add rule bridge hagw hold iifname @other drop",
            ),
            (
                "oifname",
                "nft flush chain bridge hagw hold && nft add rule bridge hagw hold oifname @held_ports drop",
            ),
        ];
        for (what, edit) in edits {
            sh(edit);
            assert_eq!(state(&lb).await.hold, HoldState::Unknown, "after {what}");
            lb.hold_port(TAP).await.unwrap();
            assert_eq!(state(&lb).await.hold, HoldState::Held, "repaired after {what}");
            let chain = sh("nft list chain bridge hagw hold");
            assert!(chain.contains("policy accept;"), "{what}: {chain}");
            assert!(chain.contains("iifname @held_ports drop"), "{what}: {chain}");
            assert_eq!(rules_in_hold_chain(), 1, "{what}: {chain}");
        }
    })
}

/// A mass failover of a node: 300 routers hold, then release, all at once. Each wave must be
/// one batch or two, not one per router: each batch is a commit the kernel serialises (and
/// with an `nft` process per router, 1,000 routers took 114 s to start, docs/benchmarks.md).
/// Counted as the ruleset generations `nft monitor` reports from this test's process.
#[test]
fn a_wave_of_holds_or_releases_is_one_or_two_batches() {
    in_fresh_netns(|| async {
        let mut monitor = Command::new("nft")
            .arg("monitor")
            .stdout(Stdio::piped())
            .spawn()
            .expect("run nft monitor");
        let mut lines = BufReader::new(monitor.stdout.take().unwrap()).lines();
        // A generation of nft's own marks where each wave begins and ends.
        let mut mark = |n: usize| -> usize {
            sh(&format!("nft add table bridge mark{n}"));
            let mut ours = 0;
            for line in lines.by_ref() {
                let line = line.expect("nft monitor output");
                if line.contains(&format!("add table bridge mark{n}")) {
                    return ours;
                }
                if line.starts_with("# new generation") && !line.ends_with("(nft)") {
                    ours += 1;
                }
            }
            panic!("nft monitor ended");
        };
        let lb = LinuxbridgeBackend::new();
        let ports: Vec<String> = (0..300).map(|i| format!("tap{i:05}")).collect();
        mark(0);
        let holds = ports.iter().map(|p| lb.hold_port(p));
        for result in futures::future::join_all(holds).await {
            result.expect("hold");
        }
        let held = mark(1);
        let table = lb.table().await.unwrap();
        assert!(ports.iter().all(|p| table.holds(p)) && table.is_complete());

        let releases = ports.iter().map(|p| lb.release_port(p));
        for result in futures::future::join_all(releases).await {
            result.expect("release");
        }
        let released = mark(2);
        monitor.kill().unwrap();
        monitor.wait().unwrap();
        assert!((1..=2).contains(&held), "{held} batches for 300 holds");
        assert!((1..=2).contains(&released), "{released} batches for 300 releases");
        assert!(lb.table().await.unwrap().held.is_empty());
    })
}

/// Takes CAP_NET_ADMIN away from the calling thread for good (effective and permitted; the
/// other threads of the test process keep it).
fn drop_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset read and write exactly the header and the two data structs of
    // version 3, which outlive the calls.
    unsafe {
        assert_eq!(nix::libc::syscall(nix::libc::SYS_capget, &mut header, data.as_mut_ptr()), 0);
        data[0].effective &= !(1 << CAP_NET_ADMIN);
        data[0].permitted &= !(1 << CAP_NET_ADMIN);
        assert_eq!(nix::libc::syscall(nix::libc::SYS_capset, &mut header, data.as_ptr()), 0);
    }
}

/// The kernel's refusal comes back as the loop's error: permanent (a retry cannot help),
/// naming the object, the request and the fix.
#[test]
fn without_cap_net_admin_hold_and_observe_fail_permanently_and_say_why() {
    in_fresh_netns(|| async {
        drop_net_admin();
        let lb = LinuxbridgeBackend::new();
        for err in
            [lb.hold_port(TAP).await.unwrap_err(), lb.observe_port(TAP, BRQ).await.unwrap_err()]
        {
            assert!(!err.is_transient(), "{err}");
            assert!(err.to_string().contains("needs CAP_NET_ADMIN"), "{err}");
            assert!(err.to_string().contains("EPERM"), "{err}");
            assert!(err.target.contains("hagw"), "{err}");
        }
    })
}

/// The hold acts on frames: a held tap's frames never reach the bridge's other ports, and
/// they flow again once released. Checked with the bridge's FDB, which learns a source MAC
/// only from frames that passed prerouting.
#[test]
fn held_frames_never_reach_the_bridge() {
    in_fresh_netns(|| async {
        let lb = LinuxbridgeBackend::new();
        bridge();
        lb.hold_port(TAP).await.unwrap();
        plug();
        let mac = "fa:16:3e:11:22:33";
        sh(&format!("ip link set {QG} address {mac}"));
        // IPv6 on the up qg sends DAD and MLD; IPv4 ARP gives a steady stream.
        sh(&format!("ip addr add 192.0.2.10/24 dev {QG}"));
        let _ = Command::new("arping")
            .args(["-c", "3", "-w", "2", "-U", "-I", QG, "192.0.2.10"])
            .output();
        let fdb = sh(&format!("bridge fdb show br {BRQ}"));
        assert!(!fdb.contains(mac), "held MAC learned:\n{fdb}");
        let counted = sh("nft list set bridge hagw held_ports");
        assert!(!counted.contains("packets 0 "), "the element counts dropped frames:\n{counted}");

        lb.release_port(TAP).await.unwrap();
        let _ = Command::new("arping").args(["-c", "1", "-U", "-I", QG, "192.0.2.10"]).output();
        let fdb = sh(&format!("bridge fdb show br {BRQ}"));
        assert!(fdb.contains(mac), "released MAC not learned:\n{fdb}");
    })
}
