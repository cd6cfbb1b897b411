//! Root-only: the per-namespace connection cache follows namespace re-creation.

mod linux_support;

use std::time::Duration;

use hagw_backends::linux::{ConnectionCache, LinuxNet};
use linux_support::{DEVICE, TempNetns, can_run, ip};

#[tokio::test]
async fn reconnects_after_namespace_is_recreated() {
    if !can_run() {
        return;
    }
    let linux = LinuxNet::new();
    let ns = TempNetns::new("");
    let netns = ns.netns();
    ns.ip(&["link", "add", DEVICE, "type", "veth", "peer", "name", "old-peer"]);
    assert!(linux.link(&netns, DEVICE).await.unwrap().is_some());
    let first = linux.connections().cached_id(&netns).expect("connection cached");
    // Reused while the namespace is the same.
    linux.link(&netns, DEVICE).await.unwrap();
    assert_eq!(linux.connections().cached_id(&netns), Some(first));

    // Deleted: observing yields None and drops the connection (which would otherwise keep
    // the dead namespace alive).
    ip(&["netns", "del", &ns.name]);
    assert_eq!(linux.observe_link(&netns, DEVICE).await.unwrap(), None);
    assert_eq!(linux.connections().cached_id(&netns), None);
    assert!(linux.link(&netns, DEVICE).await.unwrap_err().is_transient());

    // Re-created under the same name, with a differently named peer to tell them apart.
    ip(&["netns", "add", &ns.name]);
    ns.ip(&["link", "add", DEVICE, "type", "veth", "peer", "name", "new-peer"]);
    assert!(linux.link(&netns, DEVICE).await.unwrap().is_some());
    assert!(linux.link(&netns, "new-peer").await.unwrap().is_some());
    assert!(linux.link(&netns, "old-peer").await.unwrap().is_none());
    assert_ne!(linux.connections().cached_id(&netns), Some(first));
}

#[tokio::test]
async fn recreation_without_observing_in_between_is_detected() {
    if !can_run() {
        return;
    }
    let linux = LinuxNet::new();
    let ns = TempNetns::new("");
    let netns = ns.netns();
    ns.ip(&["link", "add", "first0", "type", "veth", "peer", "name", "first1"]);
    assert!(linux.link(&netns, "first0").await.unwrap().is_some());

    // The cached connection still points at the old instance when the name comes back.
    ip(&["netns", "del", &ns.name]);
    ip(&["netns", "add", &ns.name]);
    ns.ip(&["link", "add", "second0", "type", "veth", "peer", "name", "second1"]);
    assert!(linux.link(&netns, "first0").await.unwrap().is_none());
    assert!(linux.link(&netns, "second0").await.unwrap().is_some());
}

/// A connection whose task died (here: its runtime shut down) is replaced on next use
/// rather than failing every request.
#[test]
fn reconnects_after_connection_task_died() {
    if !can_run() {
        return;
    }
    let linux = LinuxNet::new();
    let ns = TempNetns::new("");
    let netns = ns.netns();
    ns.ip(&["link", "add", DEVICE, "type", "veth", "peer", "name", "peer0"]);
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let first = runtime();
    assert!(first.block_on(linux.link(&netns, DEVICE)).unwrap().is_some());
    drop(first);

    let second = runtime();
    let link = second.block_on(linux.link(&netns, DEVICE)).expect("reconnected");
    assert!(link.is_some());
}

/// Many routers in one namespace observed at once share one connection and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_use_shares_a_connection() {
    if !can_run() {
        return;
    }
    let linux = LinuxNet::new();
    let ns = TempNetns::new("");
    let netns = ns.netns();
    ns.ip(&["link", "add", DEVICE, "type", "veth", "peer", "name", "peer0"]);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (linux, netns) = (linux.clone(), netns.clone());
            tokio::spawn(async move { linux.observe_link(&netns, DEVICE).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().unwrap().is_some());
    }
    let id = linux.connections().cached_id(&netns).expect("one connection cached");
    assert!(linux.link(&netns, DEVICE).await.unwrap().is_some());
    assert_eq!(linux.connections().cached_id(&netns), Some(id));
}

/// A connection unused for its idle time closes and leaves the cache: an ended connection's
/// entry kept its task and request channel (a kilobyte per namespace) until the next pass.
#[tokio::test]
async fn an_idle_connection_leaves_the_cache() {
    if !can_run() {
        return;
    }
    let linux = LinuxNet::with_connections(ConnectionCache::with_idle(Duration::from_millis(100)));
    let ns = TempNetns::new("");
    let netns = ns.netns();
    ns.ip(&["link", "add", DEVICE, "type", "veth", "peer", "name", "peer0"]);
    assert!(linux.link(&netns, DEVICE).await.unwrap().is_some());
    assert!(linux.connections().cached_id(&netns).is_some());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while linux.connections().cached_id(&netns).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the idle connection is still cached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next request opens a new one.
    assert!(linux.link(&netns, DEVICE).await.unwrap().is_some());
    assert!(linux.connections().cached_id(&netns).is_some());
}

/// Resting routers' connection closes at once, unless a request holds it.
#[tokio::test]
async fn close_unused_spares_a_connection_in_use() {
    if !can_run() {
        return;
    }
    let linux = LinuxNet::new();
    let ns = TempNetns::new("");
    let netns = ns.netns();
    ns.ip(&["link", "add", DEVICE, "type", "veth", "peer", "name", "peer0"]);
    let in_use = linux.connections().handle(&netns).await.unwrap();
    linux.connections().close_unused(&netns);
    assert!(linux.connections().cached_id(&netns).is_some(), "closed under a request");
    drop(in_use);
    linux.connections().close_unused(&netns);
    assert_eq!(linux.connections().cached_id(&netns), None);
    assert!(linux.link(&netns, DEVICE).await.unwrap().is_some());
}
