//! Releases at once, against a real `ovsdb-server`: they share OVSDB transactions and waits
//! for ovs-vswitchd. The `ovs-vswitchd` here is a stand-in that applies the database as the
//! real one does, one reconfiguration at a time (it copies `next_cfg` to `cur_cfg`, each
//! taking a while), so that what is measured is what hagw asks of it, not its speed.

mod ovsdb_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hagw_backends::l2::ovs::OvsBackend;
use hagw_backends::ovsdb::{ClientConfig, Mutation, Mutator, Op, OvsdbClient, VSWITCH_DB};
use hagw_core::model::Role;
use ovsdb_support::{OvsdbServer as Server, port_router};

const PORTS: usize = 40;
const LOCAL_VLAN: u16 = 17;

fn cfg_ops() -> Vec<Op> {
    vec![Op::Select {
        table: "Open_vSwitch".into(),
        conditions: vec![],
        columns: Some(vec!["next_cfg".into(), "cur_cfg".into()]),
    }]
}

async fn cfg(client: &OvsdbClient) -> (i64, i64) {
    let results = client.transact(VSWITCH_DB, &cfg_ops()).await.unwrap();
    let row = results[0].rows.as_ref().unwrap()[0].clone();
    let get = |c: &str| row.get(c).and_then(|v| v.as_i64()).unwrap_or(0);
    (get("next_cfg"), get("cur_cfg"))
}

/// ovs-vswitchd's part: whenever `next_cfg` moved, a reconfiguration of `took`, then
/// `cur_cfg` is what `next_cfg` was when it started. Returns how many it did.
async fn vswitchd(client: OvsdbClient, took: Duration, stop: Arc<AtomicBool>) -> usize {
    let mut reconfigurations = 0;
    while !stop.load(Ordering::SeqCst) {
        let (next, cur) = cfg(&client).await;
        if next > cur {
            tokio::time::sleep(took).await;
            let set = Op::Mutate {
                table: "Open_vSwitch".into(),
                conditions: vec![],
                mutations: vec![Mutation::new("cur_cfg", Mutator::Add, next - cur)],
            };
            client.transact(VSWITCH_DB, &[set]).await.unwrap();
            reconfigurations += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    reconfigurations
}

/// 40 routers turning primary at once: their releases are a few transactions, not 40 (one
/// per batch of releases asked for while the one before was applied: 100 ms here), each
/// done only once ovs-vswitchd has applied it, and every port is back in its local VLAN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_at_once_share_transactions_and_waits_for_ovs_vswitchd() {
    let server = Server::unix();
    server.vsctl(&["add-br", "br-int"]);
    let names: Vec<String> = (0..PORTS).map(|i| format!("qg-rel{i}")).collect();
    // Held as hagw leaves a standby's port, wired by the OVS agent, one transaction.
    let mut args: Vec<String> = Vec::new();
    for name in &names {
        args.extend(
            ["--", "add-port", "br-int", name, "tag=4095", "vlan_mode=trunk", "trunks=4095"]
                .map(str::to_owned),
        );
        args.push(format!("other_config:tag={LOCAL_VLAN}"));
    }
    server.vsctl(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let endpoint = server.endpoint.to_string();
    let client = OvsdbClient::connect(&endpoint).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let fake = tokio::spawn(vswitchd(client.clone(), Duration::from_millis(100), stop.clone()));
    let (next_before, _) = cfg(&client).await;

    // With its OpenFlow half (no ports attached here, so nothing for it to do): the release
    // then waits for ovs-vswitchd, as on a node.
    let ovs = OvsBackend::with_config(endpoint, ClientConfig::default());
    let releases = names.iter().map(|name| {
        let ovs = ovs.clone();
        let spec = port_router(name, Role::Primary, 500);
        tokio::spawn(async move { ovs.release(&spec).await })
    });
    for release in futures::future::join_all(releases).await {
        release.unwrap().unwrap();
    }
    let (next, cur) = cfg(&client).await;
    assert!(
        cur >= next,
        "a release returned before ovs-vswitchd applied it: next_cfg {next}, cur_cfg {cur}"
    );
    let transactions = next - next_before;
    assert!(
        transactions <= 8,
        "{PORTS} releases at once took {transactions} transactions (next_cfg bumps)"
    );
    for name in &names {
        let tag = server.vsctl(&["get", "port", name, "tag"]);
        let mode = server.vsctl(&["get", "port", name, "vlan_mode"]);
        assert_eq!((tag.as_str(), mode.as_str()), ("17", "[]"), "{name}");
    }
    stop.store(true, Ordering::SeqCst);
    let reconfigurations = fake.await.unwrap();
    assert!(reconfigurations <= 8, "ovs-vswitchd reconfigured {reconfigurations} times");
}
