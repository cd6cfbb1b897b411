//! Sharing one read or one batch of the hold table among every router that needs it at the
//! same moment.
//!
//! The hold table is one object for the whole node: every router's pass reads it, and a mass
//! failover releases hundreds of its elements at once. One `nft` process per router and
//! operation (before the table was spoken over netlink) meant, with 1,000 routers, 1,000
//! processes each printing the whole 1,000-element set: 114 s for a cold start and a load
//! average above 100; over netlink each read still dumps the whole set and each batch is a
//! commit the kernel serialises. So concurrent callers join one run. A caller always joins a run that *starts after it arrived* — the one queued behind the
//! run in flight — so what it reads is never older than its call, and a write it asked for is
//! done when it returns.

use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// Runs of an operation over a batch of inputs, one at a time; callers that arrive while a
/// run is in flight are batched into the next one.
pub struct Coalescer<I, T: Clone> {
    inner: Arc<Inner<I, T>>,
}

struct Inner<I, T: Clone> {
    queue: Mutex<Queue<I, T>>,
    /// Held by the run in flight.
    running: tokio::sync::Mutex<()>,
}

struct Queue<I, T: Clone> {
    /// Inputs of the callers waiting for the next run.
    inputs: Vec<I>,
    /// The next run, not started yet, that new callers join.
    next: Option<Shared<BoxFuture<'static, T>>>,
}

impl<I, T: Clone> std::fmt::Debug for Coalescer<I, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Coalescer")
    }
}

impl<I, T: Clone> Default for Coalescer<I, T> {
    fn default() -> Self {
        Coalescer {
            inner: Arc::new(Inner {
                queue: Mutex::new(Queue { inputs: Vec::new(), next: None }),
                running: tokio::sync::Mutex::new(()),
            }),
        }
    }
}

impl<I: Send + 'static, T: Clone + Send + Sync + 'static> Coalescer<I, T> {
    /// Adds `input` to the next run and waits for that run's result. `run` is what the run
    /// does with all its inputs if this caller is the one that queues it.
    pub async fn call<F, Fut>(&self, input: I, run: F) -> T
    where
        F: FnOnce(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let next = {
            let mut queue = self.inner.queue.lock().expect("coalescer queue poisoned");
            queue.inputs.push(input);
            match &queue.next {
                Some(next) => next.clone(),
                None => {
                    let inner = self.inner.clone();
                    // A task of its own, polled by the runtime only: a run that waits on
                    // nothing (a netlink exchange is answered within the call) would
                    // otherwise be polled to its end by its first caller, before any other
                    // could join. Yielding once inside it lets every caller that is ready
                    // in this turn of the scheduler add its input first.
                    let task = tokio::spawn(async move {
                        let _running = inner.running.lock().await;
                        tokio::task::yield_now().await;
                        let inputs = {
                            let mut queue = inner.queue.lock().expect("coalescer queue poisoned");
                            queue.next = None;
                            std::mem::take(&mut queue.inputs)
                        };
                        run(inputs).await
                    });
                    let next = async move {
                        match task.await {
                            Ok(result) => result,
                            // Cancelled only when the runtime shuts down, with its callers.
                            Err(e) => std::panic::resume_unwind(e.into_panic()),
                        }
                    }
                    .boxed()
                    .shared();
                    queue.next = Some(next.clone());
                    next
                }
            }
        };
        next.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Callers that arrive together share one run, even one that waits on nothing, and each
    /// gets the run that saw its input.
    #[tokio::test]
    async fn concurrent_callers_share_the_run_after_the_one_in_flight() {
        let coalescer: Arc<Coalescer<usize, Arc<Vec<usize>>>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let calls = (0..100).map(|i| {
            let (coalescer, runs) = (coalescer.clone(), runs.clone());
            async move {
                let seen = coalescer
                    .call(i, move |inputs| async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Arc::new(inputs)
                    })
                    .await;
                assert!(seen.contains(&i), "call {i} got a run without its input: {seen:?}");
                seen.len()
            }
        });
        let sizes = futures::future::join_all(calls).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "batch sizes {sizes:?}");
        assert!(sizes.iter().all(|&n| n == 100), "batch sizes {sizes:?}");
    }

    /// A caller that arrives while a run is in flight does not get that run's result: its
    /// input was not in it.
    #[tokio::test]
    async fn a_caller_never_gets_a_run_that_started_before_it_arrived() {
        let coalescer: Arc<Coalescer<usize, Arc<Vec<usize>>>> = Arc::default();
        let slow = |inputs: Vec<usize>| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Arc::new(inputs)
        };
        let first = tokio::spawn({
            let coalescer = coalescer.clone();
            async move { coalescer.call(1, slow).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = coalescer.call(2, slow).await;
        assert_eq!(*first.await.unwrap(), vec![1]);
        assert_eq!(*second, vec![2]);
    }
}
