//! Releases committed together, and waited for together.
//!
//! A release is only done once ovs-vswitchd has applied it ([`super::applied`]), and
//! ovs-vswitchd reconfigures the whole bridge (3,000+ ports on a network node) for each
//! database change it sees. 1,000 routers failing over at once committed 1,000 transactions
//! and each waited for its own `cur_cfg`: 949 of them gave up after 500 ms and were announced
//! into ports still held. So releases that arrive while a batch is under way join the next
//! one: one transaction with every port's guarded release and one `next_cfg` bump, then one
//! wait for `cur_cfg` to reach it, which answers them all. A port whose `wait` guard fails
//! (someone changed it since it was read) is answered with that failure and the batch is
//! committed again without it. Holds never queue here: they need no wait for ovs-vswitchd
//! (the triple is committed, and `no-receive` is set over OpenFlow), and a standby must not
//! wait behind a batch of releases.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::applied::{self, Applied};
use crate::ovsdb::{Op, OvsdbClient, OvsdbError, VSWITCH_DB};

/// A release's outcome: the commit failed, or it was committed and then applied (or not
/// within the bound) by ovs-vswitchd, or it could not be told.
pub type Outcome = Result<Result<Applied, Arc<OvsdbError>>, Arc<OvsdbError>>;

struct Request {
    ops: Vec<Op>,
    done: oneshot::Sender<Outcome>,
}

/// The releases of one OVSDB client, committed in batches. Cheap to clone.
#[derive(Clone, Default)]
pub struct Releases {
    pending: Arc<Mutex<Vec<Request>>>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Releases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Releases")
    }
}

impl Releases {
    /// Commits `ops` (one port's guarded release) with every release asked for meanwhile,
    /// then waits up to `within` for ovs-vswitchd to apply them. The next batch is committed
    /// once this one is applied: ovs-vswitchd would not start on it any sooner (it applies
    /// one reconfiguration after the other), and everything asked for meanwhile is one
    /// transaction and one reconfiguration.
    pub async fn commit(&self, client: &OvsdbClient, ops: Vec<Op>, within: Duration) -> Outcome {
        let (done, reply) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push(Request { ops, done });
        {
            let _turn = self.turn.lock().await;
            let batch =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
            // Empty: the batch before ours took our request along.
            if let Some((batch, target)) = commit_batch(client, batch).await {
                let applied = match target {
                    Some(target) => {
                        applied::wait_applied(client, target, within).await.map_err(Arc::new)
                    }
                    None => Err(Arc::new(OvsdbError::Protocol("no next_cfg read".into()))),
                };
                for request in batch {
                    let _ = request.done.send(Ok(applied.clone()));
                }
            }
        }
        reply.await.unwrap_or_else(|_| Err(Arc::new(OvsdbError::Closed)))
    }
}

/// Commits `batch` in one transaction, answering and dropping the requests whose ops fail
/// (their `wait` guard: the port changed since it was read); the requests committed and the
/// `next_cfg` their commit asks ovs-vswitchd for. `None` once every request is answered
/// (or there was none).
async fn commit_batch(
    client: &OvsdbClient,
    mut batch: Vec<Request>,
) -> Option<(Vec<Request>, Option<i64>)> {
    loop {
        if batch.is_empty() {
            return None;
        }
        let (ops, owners) = combine(&batch);
        match client.transact(VSWITCH_DB, &ops).await {
            Ok(results) => return Some((batch, applied::target_cfg(&results))),
            Err(OvsdbError::OpFailed { index, op, error, details }) if index < owners.len() => {
                let failed = batch.remove(owners[index]);
                let e = OvsdbError::OpFailed { index, op, error, details };
                let _ = failed.done.send(Err(Arc::new(e)));
            }
            Err(e) => {
                let e = Arc::new(e);
                for request in batch {
                    let _ = request.done.send(Err(e.clone()));
                }
                return None;
            }
        }
    }
}

/// The batch's transaction (every request's ops, then the `next_cfg` bump) and, per op of a
/// request, the request's index.
fn combine(batch: &[Request]) -> (Vec<Op>, Vec<usize>) {
    let mut ops = Vec::new();
    let mut owners = Vec::new();
    for (i, request) in batch.iter().enumerate() {
        ops.extend(request.ops.iter().cloned());
        owners.resize(ops.len(), i);
    }
    ops.extend(applied::bump_ops());
    (ops, owners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_op_of_the_batch_names_its_request_and_the_bump_comes_last() {
        let op = |name: &str| Op::Comment(name.into());
        let request = |ops: Vec<Op>| Request { ops, done: oneshot::channel().0 };
        let batch = vec![request(vec![op("a"), op("a")]), request(vec![op("b")])];
        let (ops, owners) = combine(&batch);
        assert_eq!(owners, [0, 0, 1]);
        assert_eq!(ops.len(), 3 + applied::bump_ops().len());
        assert!(matches!(&ops[2], Op::Comment(c) if c == "b"));
        assert!(owners.get(3).is_none(), "a failure in the bump is the whole batch's");
    }
}
