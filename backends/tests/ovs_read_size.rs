//! What one observe costs on a crowded bridge, against a real ovsdb-server: a network node's
//! br-int lists 3,000+ ports, and a read that selected every Bridge's `ports` column moved
//! ~145 KB per router there, so a pass over 1,000 routers timed out on one connection. The
//! bytes the server sends are counted by a proxy in front of it, so the check is exact and
//! independent of the machine's speed.

mod ovsdb_support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hagw_backends::l2::ovs::OvsBackend;
use hagw_backends::ovsdb::{ClientConfig, Endpoint};
use hagw_core::observed::HoldState;
use ovsdb_support::OvsdbServer as Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const PORT: &str = "qg-crowd";
/// Other ports on br-int: enough that a read listing them (~46 bytes each) stands out.
const CROWD: usize = 400;

/// Forwards every connection on `listen` to `upstream`, adding what the server sends to
/// `received`.
fn counting_proxy(listen: PathBuf, upstream: PathBuf, received: Arc<AtomicUsize>) {
    let listener = UnixListener::bind(listen).unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = UnixStream::connect(&upstream).await.unwrap();
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut client_rx, &mut server_tx).await });
            let received = received.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
                    received.fetch_add(n, Ordering::Relaxed);
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

#[tokio::test]
async fn an_observe_reads_the_port_not_the_bridge_s_port_list() {
    let server = Server::with_br_int();
    let mut args = vec![];
    for i in 0..CROWD {
        args.extend(["--".to_owned(), "add-port".into(), "br-int".into(), format!("qr-{i}")]);
    }
    server.vsctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    server.vsctl(&["add-port", "br-int", PORT, "tag=4095"]);
    // Attached as ovs-vswitchd would (there is none here), so the read looks up its bridge.
    server.vsctl(&["set", "interface", PORT, "ofport=7"]);

    let Endpoint::Unix(socket) = &server.endpoint else { unreachable!("a unix server") };
    let proxy = server.path("proxy.sock");
    let received = Arc::new(AtomicUsize::new(0));
    counting_proxy(proxy.clone(), socket.clone(), received.clone());
    let config = ClientConfig { request_timeout: Duration::from_secs(10), ..Default::default() };
    // Not `ovsdb_only`: `no-receive` applies, so the bridge is read. Without ovs-vswitchd it
    // is unreadable and taken as not set.
    let ovs = OvsBackend::with_config(format!("unix:{}", proxy.display()), config);
    assert_eq!(ovs.observe_port(PORT).await.unwrap().hold, HoldState::Released);

    const READS: usize = 10;
    let before = received.load(Ordering::Relaxed);
    for _ in 0..READS {
        assert_eq!(ovs.observe_port(PORT).await.unwrap().hold, HoldState::Released);
    }
    let per_read = (received.load(Ordering::Relaxed) - before) / READS;
    // The port's rows and its bridge's name are well under 2 KB; br-int's port list alone
    // is over 18 KB.
    assert!(per_read < 2048, "an observe received {per_read} bytes from ovsdb-server");
}
