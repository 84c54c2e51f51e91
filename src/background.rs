//! The server's background tasks (the sweepers, the order-expiry watchers, the saga
//! recovery, the cluster's listener, the events' lead, sequencer, publisher and pruner):
//! each is spawned here, ends once [`Background::stop`] is called, and is waited for, so
//! that nothing of theirs is still running when the flusher writes what is left. As
//! mini-redis waits for its connection handlers before it returns.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Every background task of one server, and the token they end on.
#[derive(Clone, Debug, Default)]
pub struct Background {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Background {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancelled once the server stops: every task ends on it.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `task`; [`Background::stop`] waits for it to end.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Runs `work` every `period` (the first at once) until the server stops.
    pub fn every(&self, period: Duration, work: impl Fn() + Send + 'static) {
        let stop = self.stopping();
        self.spawn(async move {
            let mut every = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = every.tick() => work(),
                    _ = stop.cancelled() => return,
                }
            }
        });
    }

    /// How many tasks are running.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Tells every task to stop and waits until all have ended, or `grace` has passed:
    /// answers how many were still running then (0 when all ended).
    pub async fn stop(&self, grace: Duration) -> usize {
        self.stop.cancel();
        self.tasks.close();
        match tokio::time::timeout(grace, self.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tasks.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn stop_returns_once_every_task_finished_what_it_was_doing() {
        let background = Background::new();
        let finished = Arc::new(AtomicBool::new(false));
        let (stop, done) = (background.stopping(), finished.clone());
        background.spawn(async move {
            stop.cancelled().await;
            // Work a task does on its way out (a last write) is waited for.
            tokio::time::sleep(Duration::from_millis(100)).await;
            done.store(true, Ordering::SeqCst);
        });
        background.every(Duration::from_millis(10), || {});
        assert_eq!(background.running(), 2);
        assert_eq!(background.stop(Duration::from_secs(5)).await, 0);
        assert!(finished.load(Ordering::SeqCst));
        assert_eq!(background.running(), 0);
    }

    #[tokio::test]
    async fn a_task_that_never_ends_is_counted_after_the_grace() {
        let background = Background::new();
        background.spawn(std::future::pending::<()>());
        assert_eq!(background.stop(Duration::from_millis(50)).await, 1);
    }
}
