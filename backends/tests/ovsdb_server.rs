//! Integration tests against a real, throw-away `ovsdb-server` (openvswitch-switch) with the
//! vswitch schema: one server per test in its own temp dir, killed on drop even if the test fails.

mod ovsdb_support;

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use hagw_backends::ovsdb::{
    Atom, ClientConfig, Condition, InterfaceRow, MonitorEvent, MonitorRequest, MonitorRequests,
    MonitorStream, Mutation, Mutator, Op, OvsdbClient, OvsdbError, PortRow, RowValues, VSWITCH_DB,
    Value, WaitUntil,
};
use ovsdb_support::{OvsdbServer as Server, WAIT};

const PORT: &str = "qg-test";

async fn client(server: &Server) -> OvsdbClient {
    let config = ClientConfig {
        echo_interval: Duration::from_millis(500),
        request_timeout: WAIT,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
    };
    OvsdbClient::connect_with(server.endpoint.clone(), config).await.unwrap()
}

fn row(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> RowValues {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn by_name(name: &str) -> Vec<Condition> {
    vec![Condition::eq("name", name)]
}

/// Creates the root row, bridge `br-int` and port+interface `name` in one transaction, using
/// named UUIDs to link the new rows.
async fn create_port(client: &OvsdbClient, name: &str) {
    let ops = [
        Op::Insert {
            table: "Interface".into(),
            row: row([("name", name.into()), ("type", "internal".into())]),
            uuid_name: Some("iface".into()),
        },
        Op::Insert {
            table: "Port".into(),
            row: row([
                ("name", name.into()),
                ("interfaces", Value::set([Atom::named_uuid("iface")])),
            ]),
            uuid_name: Some("port".into()),
        },
        Op::Insert {
            table: "Bridge".into(),
            row: row([
                ("name", "br-int".into()),
                ("ports", Value::set([Atom::named_uuid("port")])),
            ]),
            uuid_name: Some("br".into()),
        },
        Op::Insert {
            table: "Open_vSwitch".into(),
            row: row([("bridges", Value::set([Atom::named_uuid("br")]))]),
            uuid_name: None,
        },
        Op::Comment("hagw test: create port".into()),
    ];
    let results = client.transact(VSWITCH_DB, &ops).await.unwrap();
    assert!(results[..4].iter().all(|r| r.uuid.is_some()), "{results:?}");
}

async fn select_port(client: &OvsdbClient, name: &str) -> PortRow {
    let res = client.transact(VSWITCH_DB, &[PortRow::select(by_name(name))]).await.unwrap();
    let rows = res[0].rows.as_ref().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    PortRow::from_row(None, &rows[0]).unwrap()
}

/// The dead-VLAN hold: the tag alone does not stop untagged frames, so tag, vlan_mode and trunks
/// go in one transaction, conditional on the port still looking like `expected`.
fn hold_ops(expected: RowValues) -> Vec<Op> {
    vec![
        Op::Wait {
            table: "Port".into(),
            conditions: by_name(PORT),
            columns: expected.keys().cloned().collect(),
            until: WaitUntil::Equal,
            rows: vec![expected],
            timeout_ms: Some(0),
        },
        Op::Update {
            table: "Port".into(),
            conditions: by_name(PORT),
            row: row([
                ("tag", 4095u16.into()),
                ("vlan_mode", "trunk".into()),
                ("trunks", Value::set([4095u16])),
            ]),
        },
        Op::Comment("hagw: hold qg-test in dead VLAN 4095".into()),
    ]
}

fn unheld() -> RowValues {
    row([("tag", Value::empty()), ("vlan_mode", Value::empty()), ("trunks", Value::empty())])
}

async fn next_event(stream: &mut MonitorStream) -> MonitorEvent {
    tokio::time::timeout(WAIT, stream.next()).await.expect("event in time").expect("stream open")
}

fn port_monitor() -> MonitorRequests {
    MonitorRequests::from([(PortRow::TABLE.into(), MonitorRequest::columns(PortRow::COLUMNS))])
}

fn port_from_event(updates: &hagw_backends::ovsdb::TableUpdates) -> PortRow {
    let (uuid, update) = updates["Port"].iter().next().expect("a Port row");
    PortRow::from_row(Some(uuid), update.new.as_ref().expect("new row")).unwrap()
}

#[tokio::test]
async fn transact_creates_and_selects_typed_rows() {
    let server = Server::unix();
    let client = client(&server).await;
    client.echo().await.unwrap();
    create_port(&client, PORT).await;

    let port = select_port(&client, PORT).await;
    assert_eq!((port.tag, port.vlan_mode.as_deref(), port.trunks.len()), (None, None, 0));
    assert_eq!(port.interfaces.len(), 1);
    assert_eq!(port.uuid.as_str(), server.vsctl(&["get", "Port", PORT, "_uuid"]));

    let ops = [
        Op::Mutate {
            table: "Interface".into(),
            conditions: by_name(PORT),
            mutations: vec![Mutation::new(
                "external_ids",
                Mutator::Insert,
                Value::map([("iface-id", "0f6a1c2e-neutron-port")]),
            )],
        },
        InterfaceRow::select(vec![Condition::eq("_uuid", port.interfaces[0].clone())]),
    ];
    let res = client.transact(VSWITCH_DB, &ops).await.unwrap();
    assert_eq!(res[0].count, Some(1));
    let iface = InterfaceRow::from_row(None, &res[1].rows.as_ref().unwrap()[0]).unwrap();
    assert_eq!(iface.external_ids["iface-id"], "0f6a1c2e-neutron-port");
    assert_eq!(iface.ofport, None, "no ovs-vswitchd, so no OpenFlow port");
}

#[tokio::test]
async fn hold_triple_under_wait_precondition() {
    let server = Server::unix();
    let client = client(&server).await;
    create_port(&client, PORT).await;

    let res = client.transact(VSWITCH_DB, &hold_ops(unheld())).await.unwrap();
    assert_eq!(res[1].count, Some(1));
    let port = select_port(&client, PORT).await;
    assert_eq!((port.tag, port.vlan_mode.as_deref()), (Some(4095), Some("trunk")));
    assert_eq!(port.trunks, vec![4095]);
    assert_eq!(
        server.vsctl(&["get", "Port", PORT, "tag", "vlan_mode", "trunks"]),
        "4095\ntrunk\n[4095]"
    );

    // Someone (the OVS agent) assigns the real tag; our stale precondition must now fail.
    server.vsctl(&["set", "Port", PORT, "tag=5", "vlan_mode=[]", "trunks=[]"]);
    let err = client.transact(VSWITCH_DB, &hold_ops(unheld())).await.unwrap_err();
    match &err {
        OvsdbError::OpFailed { index: 0, op, error, .. } => {
            assert_eq!((op.as_str(), error.as_str()), ("wait", "timed out"));
        }
        other => panic!("expected a failed wait, got {other}"),
    }
    assert!(!err.is_transient());
    assert_eq!(select_port(&client, PORT).await.tag, Some(5), "nothing applied");

    let seen =
        row([("tag", 5u16.into()), ("vlan_mode", Value::empty()), ("trunks", Value::empty())]);
    client.transact(VSWITCH_DB, &hold_ops(seen)).await.unwrap();
    assert_eq!(select_port(&client, PORT).await.tag, Some(4095));
}

#[tokio::test]
async fn constraint_and_schema_errors_are_typed() {
    let server = Server::unix();
    let client = client(&server).await;
    create_port(&client, PORT).await;

    let bad_tag = [
        Op::Comment("first".into()),
        Op::Update {
            table: "Port".into(),
            conditions: by_name(PORT),
            row: row([("tag", 5000u16.into())]),
        },
    ];
    let err = client.transact(VSWITCH_DB, &bad_tag).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, OvsdbError::OpFailed { index: 1, .. }), "{msg}");
    assert!(msg.contains("op #1 (update)") && msg.contains("constraint violation"), "{msg}");
    assert!(msg.contains("5000"), "details name the value: {msg}");
    assert!(!err.is_transient());

    let bad_column = [Op::Update {
        table: "Port".into(),
        conditions: by_name(PORT),
        row: row([("no_such_column", 1i64.into())]),
    }];
    let msg = client.transact(VSWITCH_DB, &bad_column).await.unwrap_err().to_string();
    assert!(msg.contains("op #0 (update)") && msg.contains("no_such_column"), "{msg}");

    let err = client.transact("No_Such_DB", &[Op::Comment("x".into())]).await.unwrap_err();
    assert!(matches!(err, OvsdbError::Rpc { .. }) && !err.is_transient(), "{err}");
}

#[tokio::test]
async fn monitor_sees_external_vsctl_change() {
    let server = Server::unix();
    let client = client(&server).await;
    create_port(&client, PORT).await;

    let (initial, mut stream) = client.monitor(VSWITCH_DB, "ports", &port_monitor()).await.unwrap();
    assert_eq!(port_from_event(&initial).name, PORT);

    server.vsctl(&["set", "Port", PORT, "tag=5"]);
    let MonitorEvent::Update(updates) = next_event(&mut stream).await else {
        panic!("expected an update")
    };
    assert_eq!(port_from_event(&updates).tag, Some(5));
    let old = updates["Port"].values().next().unwrap().old.as_ref().unwrap();
    assert_eq!(old["tag"], serde_json::json!(["set", []]), "old holds the previous value");
}

#[tokio::test]
async fn reconnect_after_server_restart_resyncs_monitor() {
    let mut server = Server::unix();
    let client = client(&server).await;
    create_port(&client, PORT).await;
    let (_, mut stream) = client.monitor(VSWITCH_DB, "ports", &port_monitor()).await.unwrap();

    server.stop();
    assert_eq!(next_event(&mut stream).await, MonitorEvent::Disconnected);
    let err = client.echo().await.unwrap_err();
    assert!(err.is_transient(), "{err}");

    server.restart();
    let MonitorEvent::Resync(full) = next_event(&mut stream).await else {
        panic!("expected a resync")
    };
    assert_eq!(port_from_event(&full).name, PORT);

    server.vsctl(&["set", "Port", PORT, "tag=7"]);
    let MonitorEvent::Update(updates) = next_event(&mut stream).await else {
        panic!("expected an update")
    };
    assert_eq!(port_from_event(&updates).tag, Some(7));
    client.transact(VSWITCH_DB, &hold_ops(row([("tag", 7u16.into())]))).await.unwrap();
    assert_eq!(select_port(&client, PORT).await.tag, Some(4095));
}

#[tokio::test]
async fn tcp_endpoint() {
    let server = Server::tcp();
    let client = OvsdbClient::connect(&server.endpoint.to_string()).await.unwrap();
    client.echo().await.unwrap();
    create_port(&client, PORT).await;
    assert_eq!(select_port(&client, PORT).await.name, PORT);
}

#[tokio::test]
async fn connect_to_missing_server_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix:{}", Path::new(dir.path()).join("absent.sock").display());
    let err = OvsdbClient::connect(&endpoint).await.unwrap_err();
    assert!(err.is_transient() && err.to_string().contains("absent.sock"), "{err}");
}

/// ovsdb-server reads no request while a reply to the client is unsent. A burst of requests
/// (a pass over 1,000 routers) fills both directions of the socket; a client that stops
/// reading replies while it waits to write the next request deadlocks with the server, and
/// every request times out.
#[tokio::test]
async fn a_burst_larger_than_the_socket_buffers_is_answered() {
    let server = Server::unix();
    let client = client(&server).await;
    create_port(&client, PORT).await;
    // ~2 KB each way per request: 1,000 of them are far beyond the buffers of a unix socket.
    let note = "x".repeat(2048);
    let marked = Op::Mutate {
        table: "Port".into(),
        conditions: by_name(PORT),
        mutations: vec![Mutation::new(
            "external_ids",
            Mutator::Insert,
            Value::map([("note", note.as_str())]),
        )],
    };
    client.transact(VSWITCH_DB, &[marked]).await.unwrap();
    let burst = (0..1000).map(|i| {
        let client = client.clone();
        let ops = [Op::Comment(format!("{i} {note}")), PortRow::select(by_name(PORT))];
        async move { client.transact(VSWITCH_DB, &ops).await }
    });
    for result in futures::future::join_all(burst).await {
        let rows = result.unwrap()[1].rows.clone().unwrap();
        assert_eq!(rows.len(), 1);
    }
}
