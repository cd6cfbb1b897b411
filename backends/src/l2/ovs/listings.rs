//! One OpenFlow port listing for every caller waiting on a bridge.
//!
//! OpenFlow 1.3 can only list a bridge's ports all at once (PORT_DESC), and a network node's
//! br-int has 3,000+ (192 KB per listing). Every observe and every `no-receive` change
//! needs one port of it, so a pass over 1,000 routers, or a mass failover, asked
//! ovs-vswitchd for 1,000 listings. Callers now queue per bridge: one task lists the ports
//! and answers everyone queued when it started, then lists again for those who came
//! meanwhile. A caller is answered only by a listing begun after it asked, so it never sees
//! the ports as they were before its request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::openflow::{self, OpenFlowError, Port};

/// A listing's outcome, shared by every caller it answers.
pub type Listing = Result<Arc<[Port]>, Arc<OpenFlowError>>;

/// The callers queued per management socket; a socket has an entry while its task runs.
#[derive(Debug, Default)]
pub struct Listings {
    queued: Mutex<HashMap<PathBuf, Vec<oneshot::Sender<Listing>>>>,
}

impl Listings {
    /// Every port of the bridge behind `socket`, from a listing begun after this call.
    pub async fn ports(self: &Arc<Self>, socket: &Path) -> Listing {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queued = self.queued.lock().expect("not poisoned");
            match queued.get_mut(socket) {
                Some(waiting) => {
                    waiting.push(tx);
                    false
                }
                None => {
                    queued.insert(socket.to_owned(), vec![tx]);
                    true
                }
            }
        };
        if start {
            // A task of its own: a caller that gives up must not strand the others.
            tokio::spawn(self.clone().serve(socket.to_owned()));
        }
        rx.await.unwrap_or_else(|_| {
            Err(Arc::new(OpenFlowError::Io(std::io::Error::other("port listing abandoned"))))
        })
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
            let listing: Listing = openflow::ports(&socket).await.map(Arc::from).map_err(Arc::new);
            for tx in waiting {
                let _ = tx.send(listing.clone());
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

    async fn read_message(stream: &mut UnixStream) -> (u8, [u8; 4]) {
        let mut header = [0u8; 8];
        stream.read_exact(&mut header).await.unwrap();
        let mut body = vec![0u8; usize::from(u16::from_be_bytes([header[2], header[3]])) - 8];
        stream.read_exact(&mut body).await.unwrap();
        (header[1], header[4..8].try_into().unwrap())
    }

    /// A switch whose br-int lists one port, `qg-1`, and answers a port listing only with a
    /// permit from `replies`; it counts the listings it was asked for.
    fn switch(socket: &Path, replies: Arc<Semaphore>, listings: Arc<AtomicUsize>) {
        let listener = UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (replies, listings) = (replies.clone(), listings.clone());
                tokio::spawn(async move {
                    let (_, xid) = read_message(&mut stream).await; // HELLO
                    stream.write_all(&message(0, xid, &[])).await.unwrap();
                    let (_, xid) = read_message(&mut stream).await; // PORT_DESC
                    listings.fetch_add(1, Ordering::SeqCst);
                    replies.acquire().await.unwrap().forget();
                    let mut port = vec![0u8; 64];
                    port[3] = 1;
                    port[16..20].copy_from_slice(b"qg-1");
                    let body = [&[0, 13, 0, 0, 0, 0, 0, 0][..], &port].concat();
                    stream.write_all(&message(19, xid, &body)).await.unwrap();
                });
            }
        });
    }

    #[tokio::test]
    async fn callers_queued_behind_a_listing_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("br-int.mgmt");
        let (replies, asked) = (Arc::new(Semaphore::new(0)), Arc::new(AtomicUsize::new(0)));
        switch(&socket, replies.clone(), asked.clone());
        let shared = Arc::new(Listings::default());
        let ask = |shared: Arc<Listings>, socket: PathBuf| {
            tokio::spawn(async move { shared.ports(&socket).await.unwrap() })
        };

        let first = ask(shared.clone(), socket.clone());
        while asked.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Nine more while the first listing is under way: they must not take its answer,
        // which may predate them, and they need only one more.
        let rest: Vec<_> = (0..9).map(|_| ask(shared.clone(), socket.clone())).collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        replies.add_permits(10);
        assert_eq!(first.await.unwrap()[0].name, "qg-1");
        for caller in rest {
            assert_eq!(caller.await.unwrap()[0].port_no, 1);
        }
        assert_eq!(asked.load(Ordering::SeqCst), 2, "listings for 10 callers");
        assert!(shared.queued.lock().unwrap().is_empty(), "the task ended");
    }
}
