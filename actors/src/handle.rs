//! [`LineHandle`]: the way to one line, from [`Registry::line`](crate::registry::Registry::line).
//!
//! A handle keeps the in-flight bounds: ractor mailboxes are unbounded, so past `per_line`
//! calls waiting on one line, or `total` on all of them, new work is refused with
//! `Overloaded` at once. It also copes with the line's life going on under it: an actor
//! drained by passivation hands a message back unapplied and the handle activates the line
//! again; a line evicted from memory (retired) is looked up afresh, which loads it again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, MessagingErr};

use crate::error::{CoreError, Result};
use crate::journal::Journal;
use crate::line_state::{LineOp, LineSnapshot};
use crate::loading::BatchLimits;
use crate::stock_line::{Applied, LineContext, LineMsg, LineShared, LineStatsSnapshot, RETIRED};
use crate::supervisor::SupervisorMsg;
use crate::types::LineKey;

/// Bounds and timeouts of calls to lines.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Calls that may wait on one line before new work is refused.
    pub per_line: usize,
    /// Calls that may wait on all lines together.
    pub total: usize,
    /// How long a caller waits for a line's answer; `None` (the default) waits without a
    /// timer. The wait is bounded anyway: a line's `handle` never awaits, so a live line
    /// answers within `per_line` messages' work, and a dead one drops the reply port, which
    /// answers at once. A timer per call costs ~10% of a round trip (BENCHMARKS.md), so it
    /// is left to the edge's request timeout unless asked for here.
    pub call_timeout: Option<Duration>,
    /// How long loading a line, or starting its actor, may take.
    pub spawn_timeout: Duration,
    /// A line with no work for this long gives up its actor until its next message, and
    /// leaves memory once it may (`None`: never).
    pub passivate_after: Option<Duration>,
    /// How first touches are gathered into loads.
    pub loads: BatchLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_line: 10_000,
            total: 200_000,
            call_timeout: None,
            spawn_timeout: Duration::from_secs(10),
            passivate_after: Some(Duration::from_secs(60)),
            loads: BatchLimits::default(),
        }
    }
}

/// What a handle needs of the registry that gave it out. The registry implements it; the
/// handle sees only this, so the two files do not import each other.
pub(crate) trait Lookup: Send + Sync + 'static {
    /// The line now, loading it if it left memory.
    fn line(
        self: Arc<Self>,
        key: LineKey,
    ) -> Pin<Box<dyn Future<Output = Result<LineHandle>> + Send>>;
    fn journal(&self) -> &Arc<dyn Journal>;
    fn supervisor(&self) -> &ActorRef<SupervisorMsg>;
    fn limits(&self) -> &Limits;
    /// Calls in flight on all lines together.
    fn total(&self) -> &AtomicUsize;
}

/// The way to one line. Cheap to clone (two `Arc`s).
#[derive(Clone)]
pub struct LineHandle {
    pub(crate) shared: Arc<LineShared>,
    pub(crate) lines: Arc<dyn Lookup>,
}

/// How often a send refused by a draining actor, or by a line retired meanwhile, is
/// tried again.
const SEND_TRIES: usize = 4;

/// Counts one call in flight on a line and in total, for as long as it lives.
struct InFlight<'a> {
    line: &'a AtomicUsize,
    total: &'a AtomicUsize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.line.fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What happened to one try of a send.
enum Tried {
    Done(Result<Applied>),
    /// The actor was being drained and handed the op back: activate and send again.
    Drained(LineOp),
    /// The line left memory: look it up again and send there.
    Retired(LineOp),
}

impl LineHandle {
    pub fn key(&self) -> LineKey {
        self.shared.key
    }

    /// New work (reserve, adjust, set level, transfer out): refused past the bounds.
    pub async fn call(&self, op: LineOp) -> Result<Applied> {
        self.send(op, true).await
    }

    /// Settling work (commit, release, expire, transfer in, set active): never refused
    /// for load, so what was accepted can always be finished.
    pub async fn settle(&self, op: LineOp) -> Result<Applied> {
        self.send(op, false).await
    }

    async fn send(&self, mut op: LineOp, bounded: bool) -> Result<Applied> {
        // Not a clone of `self` per call: its `lines` is one `Arc` shared by every line,
        // whose count all cores would write (the hottest instruction across many lines).
        let mut fresh: Option<LineHandle> = None;
        for _ in 0..SEND_TRIES {
            let line = fresh.as_ref().unwrap_or(self);
            op = match line.try_send(op, bounded).await {
                Tried::Done(result) => return result,
                Tried::Drained(op) => op,
                Tried::Retired(op) => {
                    let next = line.lines.clone().line(line.key()).await?;
                    fresh = Some(next);
                    op
                }
            };
        }
        Err(CoreError::Unavailable(format!(
            "line {} kept stopping",
            self.key()
        )))
    }

    async fn try_send(&self, op: LineOp, bounded: bool) -> Tried {
        let stats = &self.shared.stats;
        let total = self.lines.total();
        let on_line = stats.inflight.fetch_add(1, Ordering::AcqRel) + 1;
        let in_total = total.fetch_add(1, Ordering::AcqRel) + 1;
        let _in_flight = InFlight {
            line: &stats.inflight,
            total,
        };
        if on_line & RETIRED != 0 {
            return Tried::Retired(op);
        }
        let limits = self.lines.limits();
        if bounded && (on_line > limits.per_line || in_total > limits.total) {
            stats.refused();
            return Tried::Done(Err(CoreError::Overloaded));
        }
        let actor = match self.actor().await {
            Ok(actor) => actor,
            Err(error) => return Tried::Done(Err(error)),
        };
        let reply = actor
            .call(
                |reply| LineMsg::Apply {
                    op,
                    reply: Some(reply),
                },
                limits.call_timeout,
            )
            .await;
        match reply {
            // Refused at the door by an actor being passivated: it never saw the op.
            // Unpublish it if it is still the line's actor, so the retry activates.
            Err(MessagingErr::SendErr(LineMsg::Apply { op: back, .. })) => {
                self.shared.actor.compare_and_swap(&actor, None);
                Tried::Drained(back)
            }
            other => Tried::Done(unwrap_call(other).and_then(|applied| applied)),
        }
    }

    /// A read ordered after every message sent to the line before it. A passivated line
    /// has no messages in flight, so its state is read directly.
    pub async fn snapshot(&self) -> Result<LineSnapshot> {
        let Some(actor) = self.shared.actor.load_full() else {
            return Ok(self.peek());
        };
        match actor
            .call(LineMsg::Snapshot, self.lines.limits().call_timeout)
            .await
        {
            Err(MessagingErr::SendErr(_)) => Ok(self.peek()),
            other => unwrap_call(other),
        }
    }

    /// The line as it is now, read without a message (never waits on the mailbox).
    pub fn peek(&self) -> LineSnapshot {
        self.shared.peek()
    }

    /// How much of reservation `id`'s hold here the stock on hand covers (the rest is
    /// backordered).
    pub fn filled(&self, id: crate::types::ReservationId) -> u64 {
        crate::types::lock(&self.shared.state).filled(id)
    }

    /// Counts a refusal of an operation meant for this line that was decided without it.
    pub(crate) fn count_refusal(&self) {
        self.shared.stats.refused();
    }

    pub fn stats(&self) -> LineStatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Whether the line has a running actor (false while passivated).
    pub fn is_active(&self) -> bool {
        self.shared.actor.load().is_some()
    }

    /// The running actor, activating the line first if it is passivated. Called only
    /// with a call counted in flight, so the line cannot be retired meanwhile.
    async fn actor(&self) -> Result<Arc<ActorRef<LineMsg>>> {
        if let Some(actor) = self.shared.actor.load_full() {
            return Ok(actor);
        }
        let context = LineContext {
            shared: self.shared.clone(),
            journal: self.lines.journal().clone(),
        };
        activate(
            self.lines.supervisor(),
            context,
            self.lines.limits().spawn_timeout,
        )
        .await?;
        self.shared
            .actor
            .load_full()
            .ok_or_else(|| CoreError::Unavailable(format!("line {} did not start", self.key())))
    }

    #[cfg(test)]
    pub(crate) fn fail_for_test(&self) {
        if let Some(actor) = self.shared.actor.load_full() {
            let _ = actor.cast(LineMsg::Fail);
        }
    }
}

/// Asks the supervisor to give the line a running actor (a no-op if it has one).
async fn activate(
    supervisor: &ActorRef<SupervisorMsg>,
    context: LineContext,
    timeout: Duration,
) -> Result<()> {
    let activated = supervisor
        .call(
            |reply| SupervisorMsg::Activate(context, reply),
            Some(timeout),
        )
        .await;
    unwrap_call(activated)?.map_err(CoreError::Unavailable)
}

fn unwrap_call<T, M>(reply: Result<CallResult<T>, MessagingErr<M>>) -> Result<T> {
    match reply {
        Ok(CallResult::Success(value)) => Ok(value),
        Ok(CallResult::Timeout) => Err(CoreError::Unavailable(
            "the line did not answer in time".into(),
        )),
        Ok(CallResult::SenderError) | Err(_) => Err(CoreError::Unavailable(
            "the line stopped before answering".into(),
        )),
    }
}
