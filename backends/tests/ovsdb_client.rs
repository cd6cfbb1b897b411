//! Connection-actor behaviour against a scripted fake server on a unix socket: echo handling,
//! message routing, liveness, timeouts, reconnect after garbage, monitor cancellation.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hagw_backends::ovsdb::codec::JsonRpcCodec;
use hagw_backends::ovsdb::{
    ClientConfig, Endpoint, MonitorEvent, MonitorRequest, MonitorRequests, Op, OvsdbClient,
    OvsdbError,
};
use serde_json::{Value as Json, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;

const U: &str = "36a9f2c1-0b4e-4c7d-9f0e-1a2b3c4d5e6f";
const WAIT: Duration = Duration::from_secs(5);

type ServerConn = Framed<UnixStream, JsonRpcCodec>;

struct Fake {
    listener: UnixListener,
    endpoint: Endpoint,
    _dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sock");
        Self {
            listener: UnixListener::bind(&path).unwrap(),
            endpoint: Endpoint::Unix(path),
            _dir: dir,
        }
    }

    async fn client(&self, config: ClientConfig) -> (OvsdbClient, ServerConn) {
        let (client, accepted) =
            tokio::join!(OvsdbClient::connect_with(self.endpoint.clone(), config), self.accept());
        (client.unwrap(), accepted)
    }

    async fn accept(&self) -> ServerConn {
        let (stream, _) = timeout(WAIT, self.listener.accept()).await.unwrap().unwrap();
        Framed::new(stream, JsonRpcCodec::default())
    }
}

fn quiet() -> ClientConfig {
    ClientConfig {
        echo_interval: Duration::from_secs(3600),
        request_timeout: WAIT,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
    }
}

async fn recv(conn: &mut ServerConn) -> Json {
    timeout(WAIT, conn.next()).await.expect("message in time").expect("open").expect("valid")
}

fn reply(request: &Json, result: Json) -> Json {
    json!({"id": request["id"], "result": result, "error": null})
}

fn monitor_requests() -> MonitorRequests {
    MonitorRequests::from([("Port".into(), MonitorRequest::columns(&["name", "tag"]))])
}

#[tokio::test]
async fn echo_both_ways_without_jsonrpc_member() {
    let fake = Fake::new();
    let (client, mut conn) = fake.client(quiet()).await;

    conn.send(json!({"id": "probe-1", "method": "echo", "params": [1, "x"]})).await.unwrap();
    assert_eq!(recv(&mut conn).await, json!({"id": "probe-1", "result": [1, "x"], "error": null}));

    let (result, ()) = tokio::join!(client.echo(), async {
        let req = recv(&mut conn).await;
        assert_eq!(req["method"], "echo");
        assert!(req.get("jsonrpc").is_none(), "ovsdb-server rejects a jsonrpc member: {req}");
        conn.send(reply(&req, req["params"].clone())).await.unwrap();
    });
    result.unwrap();
}

#[tokio::test]
async fn burst_of_reply_and_updates_in_one_write() {
    let fake = Fake::new();
    let (client, mut conn) = fake.client(quiet()).await;
    let server = async {
        let req = recv(&mut conn).await;
        assert_eq!(req["method"], "monitor");
        assert_eq!(req["params"][1], "m1");
        let mut burst =
            reply(&req, json!({"Port": {U: {"new": {"name": "p", "tag": 1}}}})).to_string();
        for tag in [2, 3] {
            let update = json!({"id": null, "method": "update",
                "params": ["m1", {"Port": {U: {"old": {"tag": tag - 1}, "new": {"name": "p", "tag": tag}}}}]});
            burst.push_str(&update.to_string());
        }
        conn.get_mut().write_all(burst.as_bytes()).await.unwrap();
        conn
    };
    let reqs = monitor_requests();
    let (monitor, _conn) = tokio::join!(client.monitor("Open_vSwitch", "m1", &reqs), server);
    let (initial, mut stream) = monitor.unwrap();
    assert_eq!(initial["Port"].len(), 1);
    for tag in [2, 3] {
        let Some(MonitorEvent::Update(u)) = timeout(WAIT, stream.next()).await.unwrap() else {
            panic!("expected an update")
        };
        let row = u["Port"].values().next().unwrap();
        assert_eq!(row.new.as_ref().unwrap()["tag"], json!(tag));
    }
}

#[tokio::test]
async fn duplicate_monitor_id_is_refused() {
    let fake = Fake::new();
    let (client, mut conn) = fake.client(quiet()).await;
    let reqs = monitor_requests();
    let (first, _) = tokio::join!(client.monitor("db", "m", &reqs), async {
        let req = recv(&mut conn).await;
        conn.send(reply(&req, json!({}))).await.unwrap();
    });
    let _stream = first.unwrap().1;
    let err = client.monitor("db", "m", &monitor_requests()).await.unwrap_err();
    assert!(matches!(err, OvsdbError::Protocol(_)) && !err.is_transient(), "{err}");
}

#[tokio::test]
async fn rpc_error_is_permanent() {
    let fake = Fake::new();
    let (client, mut conn) = fake.client(quiet()).await;
    let ops = [Op::Comment("c".into())];
    let (result, ()) = tokio::join!(client.transact("nope", &ops), async {
        let req = recv(&mut conn).await;
        assert_eq!(req["params"], json!(["nope", {"op": "comment", "comment": "c"}]));
        let err = json!({"error": "unknown database", "details": "nope"});
        conn.send(json!({"id": req["id"], "result": null, "error": err})).await.unwrap();
    });
    let err = result.unwrap_err();
    assert!(!err.is_transient());
    assert!(
        err.to_string().contains("transact failed") && err.to_string().contains("unknown database"),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_fails_pending_then_reconnects() {
    let fake = Fake::new();
    let (client, mut conn) = fake.client(quiet()).await;
    let ops = [Op::Comment("c".into())];
    let (result, ()) = tokio::join!(client.transact("db", &ops), async {
        recv(&mut conn).await;
        conn.get_mut().write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await.unwrap();
    });
    let err = result.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("HTTP/1.1 400"), "{err}");

    let mut conn = fake.accept().await;
    let echo = async {
        loop {
            match client.echo().await {
                Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(10)).await,
                other => return other,
            }
        }
    };
    let (result, ()) = tokio::join!(echo, async {
        let req = recv(&mut conn).await;
        conn.send(reply(&req, req["params"].clone())).await.unwrap();
    });
    result.unwrap();
}

#[tokio::test]
async fn silent_server_is_detected_by_echo_probe() {
    let fake = Fake::new();
    let config = ClientConfig { echo_interval: Duration::from_millis(100), ..quiet() };
    let (_client, mut conn) = fake.client(config).await;
    let probe = recv(&mut conn).await;
    assert_eq!(probe["method"], "echo");
    // Never answer: the client must give up on this connection and dial again.
    let end = timeout(WAIT, conn.next()).await.expect("client closes the dead connection");
    assert!(end.is_none());
    let mut second = fake.accept().await;
    assert_eq!(recv(&mut second).await["method"], "echo");
}

#[tokio::test]
async fn request_timeout_is_transient() {
    let fake = Fake::new();
    let config = ClientConfig { request_timeout: Duration::from_millis(100), ..quiet() };
    let (client, _conn) = fake.client(config).await;
    let err = client.echo().await.unwrap_err();
    assert!(matches!(err, OvsdbError::Timeout { .. }) && err.is_transient(), "{err}");
}

#[tokio::test]
async fn requests_fail_fast_while_disconnected_and_monitor_sees_it() {
    let fake = Fake::new();
    let (client, mut conn) = fake.client(quiet()).await;
    let reqs = monitor_requests();
    let (monitor, ()) = tokio::join!(client.monitor("db", "m", &reqs), async {
        let req = recv(&mut conn).await;
        conn.send(reply(&req, json!({}))).await.unwrap();
    });
    let (_, mut stream) = monitor.unwrap();
    let Fake { listener, endpoint, _dir } = fake;
    drop((listener, conn));
    assert_eq!(timeout(WAIT, stream.next()).await.unwrap(), Some(MonitorEvent::Disconnected));
    let err = client.echo().await.unwrap_err();
    assert!(matches!(err, OvsdbError::ConnectionLost(_)) && err.is_transient(), "{err}");
    assert!(err.to_string().contains(&endpoint.to_string()), "{err}");
}

#[tokio::test]
async fn dropped_stream_cancels_monitor() {
    let fake = Fake::new();
    let (client, mut conn) = fake.client(quiet()).await;
    let reqs = monitor_requests();
    let (monitor, ()) = tokio::join!(client.monitor("db", "m", &reqs), async {
        let req = recv(&mut conn).await;
        conn.send(reply(&req, json!({}))).await.unwrap();
    });
    drop(monitor.unwrap());
    let update =
        json!({"id": null, "method": "update", "params": ["m", {"Port": {U: {"new": {}}}}]});
    conn.send(update).await.unwrap();
    let cancel = recv(&mut conn).await;
    assert_eq!(cancel["method"], "monitor_cancel");
    assert_eq!(cancel["params"], json!(["m"]));
}

#[tokio::test]
async fn malformed_update_forces_reconnect_and_resync() {
    let fake = Fake::new();
    let (client, mut conn) = fake.client(quiet()).await;
    let reqs = monitor_requests();
    let (monitor, ()) = tokio::join!(client.monitor("db", "m", &reqs), async {
        let req = recv(&mut conn).await;
        conn.send(reply(&req, json!({}))).await.unwrap();
    });
    let (_, mut stream) = monitor.unwrap();
    conn.send(json!({"id": null, "method": "update", "params": ["m", {"Port": 5}]})).await.unwrap();
    assert_eq!(timeout(WAIT, stream.next()).await.unwrap(), Some(MonitorEvent::Disconnected));

    let mut conn = fake.accept().await;
    let req = recv(&mut conn).await;
    assert_eq!(req["method"], "monitor");
    assert_eq!(req["params"][1], "m");
    conn.send(reply(&req, json!({"Port": {U: {"new": {"name": "p"}}}}))).await.unwrap();
    let Some(MonitorEvent::Resync(full)) = timeout(WAIT, stream.next()).await.unwrap() else {
        panic!("expected a resync")
    };
    assert_eq!(full["Port"].len(), 1);
}

#[tokio::test]
async fn dropping_all_handles_closes_the_connection() {
    let fake = Fake::new();
    let (client, mut conn) = fake.client(quiet()).await;
    let clone = client.clone();
    drop(client);
    drop(clone);
    assert!(timeout(WAIT, conn.next()).await.unwrap().is_none());
}
