//! One OpenFlow session for every caller waiting on a bridge.
//!
//! OpenFlow 1.3 can only list a bridge's ports all at once (PORT_DESC), and a network node's
//! br-int has 3,000+ (192 KB per listing). Every observe and every `no-receive` change needs
//! one port of it, so a pass over 1,000 routers, or a mass failover, asked ovs-vswitchd for
//! 1,000 listings on 1,000 sessions, more than its management socket's listen backlog
//! admits (connects failed with EAGAIN). Callers now queue per bridge: one task opens one
//! session, lists the ports, applies every queued `no-receive` change with one barrier and
//! answers everyone queued when it started, then does it again for those who came
//! meanwhile. A caller is answered only by an exchange begun after it asked, so it never
//! sees the ports as they were before its request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::openflow::{self, OpenFlowError, Port};

/// A listing's outcome, shared by every caller it answers.
pub type Listing = Result<Arc<[Port]>, Arc<OpenFlowError>>;

/// A change's outcome: `Ok(false)` if the bridge lists no such port.
pub type Change = Result<bool, Arc<OpenFlowError>>;

/// What a caller waits for.
#[derive(Debug)]
enum Ask {
    Ports(oneshot::Sender<Listing>),
    Set { port: String, on: bool, reply: oneshot::Sender<Change> },
}

/// The callers queued per management socket; a socket has an entry while its task runs.
#[derive(Debug, Default)]
pub struct Listings {
    queued: Mutex<HashMap<PathBuf, Vec<Ask>>>,
}

fn abandoned() -> Arc<OpenFlowError> {
    Arc::new(OpenFlowError::Io(std::io::Error::other("OpenFlow exchange abandoned")))
}

impl Listings {
    /// Every port of the bridge behind `socket`, from a listing begun after this call.
    pub async fn ports(self: &Arc<Self>, socket: &Path) -> Listing {
        let (tx, rx) = oneshot::channel();
        self.ask(socket, Ask::Ports(tx));
        rx.await.unwrap_or_else(|_| Err(abandoned()))
    }

    /// Sets (`on`) or clears `no-receive` on `port` of the bridge behind `socket`.
    pub async fn set(self: &Arc<Self>, socket: &Path, port: &str, on: bool) -> Change {
        let (reply, rx) = oneshot::channel();
        self.ask(socket, Ask::Set { port: port.to_owned(), on, reply });
        rx.await.unwrap_or_else(|_| Err(abandoned()))
    }

    fn ask(self: &Arc<Self>, socket: &Path, ask: Ask) {
        let mut queued = self.queued.lock().expect("not poisoned");
        match queued.get_mut(socket) {
            Some(waiting) => waiting.push(ask),
            None => {
                queued.insert(socket.to_owned(), vec![ask]);
                // A task of its own: a caller that gives up must not strand the others.
                tokio::spawn(self.clone().serve(socket.to_owned()));
            }
        }
    }

    async fn serve(self: Arc<Self>, socket: PathBuf) {
        loop {
            let waiting = {
                let mut queued = self.queued.lock().expect("not poisoned");
                let waiting = queued.get_mut(&socket).map(std::mem::take).unwrap_or_default();
                if waiting.is_empty() {
                    queued.remove(&socket);
                    return;
                }
                waiting
            };
            let changes: Vec<(String, bool)> = waiting
                .iter()
                .filter_map(|ask| match ask {
                    Ask::Set { port, on, .. } => Some((port.clone(), *on)),
                    Ask::Ports(_) => None,
                })
                .collect();
            match openflow::exchange(&socket, &changes).await {
                Ok(done) => {
                    let ports: Arc<[Port]> = Arc::from(done.ports);
                    let mut outcomes = done.changes.into_iter();
                    for ask in waiting {
                        match ask {
                            Ask::Ports(reply) => drop(reply.send(Ok(ports.clone()))),
                            Ask::Set { reply, .. } => {
                                let outcome = outcomes.next().expect("one per change");
                                let _ = reply.send(outcome.map_err(Arc::new));
                            }
                        }
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for ask in waiting {
                        match ask {
                            Ask::Ports(reply) => drop(reply.send(Err(e.clone()))),
                            Ask::Set { reply, .. } => drop(reply.send(Err(e.clone()))),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{UnixListener, UnixStream};
    use tokio::sync::Semaphore;

    use super::*;

    /// An OpenFlow 1.3 message with this type and body, as the switch sends it.
    fn message(kind: u8, xid: [u8; 4], body: &[u8]) -> Vec<u8> {
        let len = u16::try_from(8 + body.len()).unwrap().to_be_bytes();
        [&[4, kind, len[0], len[1]], &xid[..], body].concat()
    }

    /// The next message's type and xid; `None` once the session is closed.
    async fn read_message(stream: &mut UnixStream) -> Option<(u8, [u8; 4])> {
        let mut header = [0u8; 8];
        stream.read_exact(&mut header).await.ok()?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes([header[2], header[3]])) - 8];
        stream.read_exact(&mut body).await.ok()?;
        Some((header[1], header[4..8].try_into().unwrap()))
    }

    /// What the fake switch was asked for.
    #[derive(Default)]
    struct Asked {
        listings: AtomicUsize,
        port_mods: AtomicUsize,
        /// Sessions that carried PORT_MODs.
        writers: AtomicUsize,
    }

    /// A switch whose br-int lists `ports` ports, `qg-1` … `qg-<ports>`, and answers a port
    /// listing only with a permit from `replies`; PORT_MODs are counted, barriers answered.
    fn switch(socket: &Path, ports: u8, replies: Arc<Semaphore>, asked: Arc<Asked>) {
        let listener = UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (replies, asked) = (replies.clone(), asked.clone());
                tokio::spawn(async move {
                    let (_, xid) = read_message(&mut stream).await.unwrap(); // HELLO
                    stream.write_all(&message(0, xid, &[])).await.unwrap();
                    let mut wrote = false;
                    while let Some((kind, xid)) = read_message(&mut stream).await {
                        match kind {
                            18 => {
                                asked.listings.fetch_add(1, Ordering::SeqCst);
                                replies.acquire().await.unwrap().forget();
                                let mut body = vec![0, 13, 0, 0, 0, 0, 0, 0];
                                for i in 1..=ports {
                                    let mut port = vec![0u8; 64];
                                    port[3] = i;
                                    let name = format!("qg-{i}");
                                    port[16..16 + name.len()].copy_from_slice(name.as_bytes());
                                    body.extend(port);
                                }
                                stream.write_all(&message(19, xid, &body)).await.unwrap();
                            }
                            16 => {
                                asked.port_mods.fetch_add(1, Ordering::SeqCst);
                                if !std::mem::replace(&mut wrote, true) {
                                    asked.writers.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            20 => stream.write_all(&message(21, xid, &[])).await.unwrap(),
                            _ => {}
                        }
                    }
                });
            }
        });
    }

    /// 120 changes at once: one listing, and the PORT_MODs spread over sessions of at most
    /// 50 (ovs-vswitchd reads 50 messages of a connection per pass of its main loop).
    #[tokio::test]
    async fn many_changes_go_over_several_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("br-int.mgmt");
        let (replies, asked) = (Arc::new(Semaphore::new(100)), Arc::new(Asked::default()));
        switch(&socket, 120, replies, asked.clone());
        let shared = Arc::new(Listings::default());
        let sets = (1..=120).map(|i| {
            let (shared, socket) = (shared.clone(), socket.clone());
            tokio::spawn(async move { shared.set(&socket, &format!("qg-{i}"), true).await })
        });
        for set in futures::future::join_all(sets).await {
            assert!(set.unwrap().unwrap(), "every port is listed");
        }
        assert_eq!(asked.port_mods.load(Ordering::SeqCst), 120);
        let (listings, writers) =
            (asked.listings.load(Ordering::SeqCst), asked.writers.load(Ordering::SeqCst));
        // The first caller may have had an exchange of its own.
        assert!(listings <= 2, "{listings} listings");
        assert!(writers >= 3, "120 changes over {writers} sessions");
    }

    #[tokio::test]
    async fn callers_queued_behind_an_exchange_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("br-int.mgmt");
        let (replies, asked) = (Arc::new(Semaphore::new(0)), Arc::new(Asked::default()));
        switch(&socket, 1, replies.clone(), asked.clone());
        let shared = Arc::new(Listings::default());
        let ask = |shared: Arc<Listings>, socket: PathBuf| {
            tokio::spawn(async move { shared.ports(&socket).await.unwrap() })
        };

        let first = ask(shared.clone(), socket.clone());
        while asked.listings.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Nine more while the first listing is under way: they must not take its answer,
        // which may predate them, and they need only one more session, which also makes
        // the changes queued with them.
        let rest: Vec<_> = (0..9).map(|_| ask(shared.clone(), socket.clone())).collect();
        let set = |on| {
            let (shared, socket) = (shared.clone(), socket.clone());
            tokio::spawn(async move { shared.set(&socket, "qg-1", on).await.unwrap() })
        };
        let (hold, release, missing) = (set(true), set(false), {
            let (shared, socket) = (shared.clone(), socket.clone());
            tokio::spawn(async move { shared.set(&socket, "qg-9", true).await.unwrap() })
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        replies.add_permits(10);
        assert_eq!(first.await.unwrap()[0].name, "qg-1");
        for caller in rest {
            assert_eq!(caller.await.unwrap()[0].port_no, 1);
        }
        assert!(hold.await.unwrap() && release.await.unwrap(), "qg-1 is listed");
        assert!(!missing.await.unwrap(), "qg-9 is not");
        assert_eq!(asked.listings.load(Ordering::SeqCst), 2, "listings for 10 callers");
        assert_eq!(asked.port_mods.load(Ordering::SeqCst), 2, "one per listed change");
        assert!(shared.queued.lock().unwrap().is_empty(), "the task ended");
    }
}
