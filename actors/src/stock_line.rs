//! The `StockLine` actor: one per (warehouse, product), applying [`LineOp`]s one at a time.
//!
//! The line's [`LineState`] sits in a mutex inside [`LineShared`] rather than in the actor's
//! own state, for two reasons. The supervisor restarts a failed line from exactly the state
//! its last accepted message left (the actor's own state dies with it), and operators and
//! the allocator read a line without queueing behind its mailbox. Only the actor writes it,
//! so the lock is uncontended except for those brief reads.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::error::{CoreError, Result};
use crate::journal::{Journal, Lsn, Record};
use crate::line_state::{LineOp, LineSnapshot, LineState};
use crate::types::LineKey;
use crate::types::lock;

/// Messages a line handles.
pub enum LineMsg {
    /// Apply an operation; the reply is optional for fire-and-forget settlement.
    Apply {
        op: LineOp,
        reply: Option<RpcReplyPort<Result<Applied>>>,
    },
    /// A read ordered after every message sent before it.
    Snapshot(RpcReplyPort<LineSnapshot>),
    /// Makes the actor fail, to prove the supervisor restarts it from its last state.
    #[cfg(test)]
    Fail,
}

/// An accepted change: the line after it, and the Lsn to await for durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub snapshot: LineSnapshot,
    /// The journal position of the change's records (0 when nothing was journaled).
    pub lsn: Lsn,
}

/// The bit of [`LineStats::inflight`] that marks a line retired: evicted from memory, its
/// state final. A caller that finds it set looks the line up again.
pub(crate) const RETIRED: usize = 1 << (usize::BITS - 1);

/// What a line shares with its handles, its supervisor and operators.
pub struct LineShared {
    pub key: LineKey,
    /// The line's state. Written only by the line's actor.
    pub(crate) state: Mutex<LineState>,
    /// The running actor; `None` while passivated or being restarted.
    pub(crate) actor: ArcSwapOption<ActorRef<LineMsg>>,
    pub(crate) stats: LineStats,
    /// The journal position of the line's newest record (0: nothing journaled here).
    pub(crate) last_lsn: AtomicU64,
}

impl LineShared {
    pub(crate) fn new(state: LineState, last_lsn: Lsn) -> Self {
        Self {
            key: state.key,
            state: Mutex::new(state),
            actor: ArcSwapOption::empty(),
            stats: LineStats::default(),
            last_lsn: AtomicU64::new(last_lsn),
        }
    }

    /// The line as it is now, read without a message.
    pub fn peek(&self) -> LineSnapshot {
        lock(&self.state).snapshot()
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.stats.inflight.load(Ordering::Acquire) & RETIRED != 0
    }

    /// Whether the line may leave memory: no actor, no call in flight, no work for
    /// `idle_after`, no holds (a line out of memory has none, so loading it never needs
    /// them), and its newest record durable (so a load reads exactly this state back).
    fn may_leave(&self, now: DateTime<Utc>, idle_after: Duration, durable: Lsn) -> bool {
        self.actor.load().is_none()
            && self.stats.is_idle(now, idle_after)
            && self.last_lsn.load(Ordering::Acquire) <= durable
            && lock(&self.state).holds.is_empty()
    }

    /// Retires the line if it may leave memory. Nothing reaches a retired line's state
    /// again: callers count themselves in flight before using it, and retiring takes the
    /// count from 0 to [`RETIRED`] in one step, so it happens only with no caller inside,
    /// and every later caller sees the mark.
    pub(crate) fn retire(&self, now: DateTime<Utc>, idle_after: Duration, durable: Lsn) -> bool {
        if !self.may_leave(now, idle_after, durable) {
            return false;
        }
        let inflight = &self.stats.inflight;
        if inflight
            .compare_exchange(0, RETIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        // A caller may have activated the line and left between the check and the mark.
        if !self.may_leave(now, idle_after, durable) {
            inflight.fetch_sub(RETIRED, Ordering::AcqRel);
            return false;
        }
        true
    }
}

impl LineShared {
    /// Retires the line whatever it holds, if no caller is inside: cluster mode, its shard
    /// is another node's now, so nothing of this memory may be used again (the store, or
    /// the new owner, has the truth). Its actor, if any, is drained and stops.
    pub(crate) fn retire_now(&self) -> bool {
        if self
            .stats
            .inflight
            .compare_exchange(0, RETIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        if let Some(actor) = self.actor.swap(None) {
            actor.drain().ok();
        }
        true
    }
}

/// Operator counters, kept in atomics so reading them never stops the line.
#[derive(Default)]
pub struct LineStats {
    /// Messages the actor has handled. Written by the actor.
    pub(crate) handled: AtomicU64,
    /// Unix time in microseconds of the last message handled (0: none yet).
    pub(crate) last_message_us: AtomicI64,
    /// Calls sent and not yet answered: the mailbox depth the bounds apply to.
    /// Raised by the caller before sending, lowered when its call ends.
    pub(crate) inflight: AtomicUsize,
    /// Times the supervisor restarted this line.
    pub(crate) restarts: AtomicU64,
    /// Times the line gave up its actor for being idle.
    pub(crate) passivations: AtomicU64,
    /// Operations refused: for stock, state or load (at the door or by the actor).
    pub(crate) refusals: AtomicU64,
    /// Unix time in microseconds the line last had work: a message or an activation.
    pub(crate) last_active_us: AtomicI64,
    /// Messages per second, for "busiest now": the second being counted (Unix, high 32
    /// bits) and the count of the second before it (low 32 bits); written by the actor.
    second_and_before: AtomicU64,
    /// Messages handled in the second being counted.
    this_second: AtomicU64,
}

/// A copy of a line's operator counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineStatsSnapshot {
    pub messages_handled: u64,
    pub last_message_at: Option<DateTime<Utc>>,
    pub mailbox_len: usize,
    pub restarts: u64,
    pub passivations: u64,
    pub refusals: u64,
    /// Messages handled in the last whole second.
    pub messages_last_second: u64,
}

impl LineStats {
    fn record_message(&self, now: DateTime<Utc>) {
        self.handled.fetch_add(1, Ordering::Relaxed);
        let second = now.timestamp() as u32 as u64;
        let packed = self.second_and_before.load(Ordering::Relaxed);
        if packed >> 32 != second {
            // Only the actor writes these; a reader may see a turn half made (for eyes only).
            let before = match (packed >> 32) + 1 == second {
                true => self
                    .this_second
                    .load(Ordering::Relaxed)
                    .min(u32::MAX as u64),
                false => 0,
            };
            self.this_second.store(0, Ordering::Relaxed);
            self.second_and_before
                .store(second << 32 | before, Ordering::Relaxed);
        }
        self.this_second.fetch_add(1, Ordering::Relaxed);
        self.last_message_us
            .store(now.timestamp_micros(), Ordering::Relaxed);
        self.touch(now);
    }

    /// Messages handled in the whole second before `now`'s.
    fn last_second(&self, now: DateTime<Utc>) -> u64 {
        let second = now.timestamp() as u32 as u64;
        let packed = self.second_and_before.load(Ordering::Relaxed);
        match packed >> 32 {
            counted if counted == second => packed & u32::MAX as u64,
            counted if counted + 1 == second => self.this_second.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    pub(crate) fn refused(&self) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn touch(&self, now: DateTime<Utc>) {
        self.last_active_us
            .store(now.timestamp_micros(), Ordering::Relaxed);
    }

    /// No call in flight and no work for at least `idle_after`.
    pub(crate) fn is_idle(&self, now: DateTime<Utc>, idle_after: Duration) -> bool {
        let idle_us = now.timestamp_micros() - self.last_active_us.load(Ordering::Relaxed);
        self.inflight.load(Ordering::Acquire) & !RETIRED == 0
            && idle_us >= idle_after.as_micros() as i64
    }

    pub fn snapshot(&self) -> LineStatsSnapshot {
        self.snapshot_at(crate::types::now())
    }

    /// The counters, with the messages of the whole second before `now`'s.
    pub(crate) fn snapshot_at(&self, now: DateTime<Utc>) -> LineStatsSnapshot {
        let last = self.last_message_us.load(Ordering::Relaxed);
        LineStatsSnapshot {
            messages_handled: self.handled.load(Ordering::Relaxed),
            last_message_at: (last != 0)
                .then(|| DateTime::from_timestamp_micros(last))
                .flatten(),
            mailbox_len: self.inflight.load(Ordering::Relaxed) & !RETIRED,
            restarts: self.restarts.load(Ordering::Relaxed),
            passivations: self.passivations.load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
            messages_last_second: self.last_second(now),
        }
    }
}

/// The actor. Its state is the [`LineContext`] it was started with.
pub struct StockLine;

/// Everything a line actor works with.
#[derive(Clone)]
pub struct LineContext {
    pub shared: Arc<LineShared>,
    pub journal: Arc<dyn Journal>,
}

impl LineContext {
    /// Applies one op under the line's lock and journals what it changed.
    fn apply(&self, op: LineOp, now: DateTime<Utc>) -> Result<Applied> {
        if op.is_new_work() && self.journal.is_backlogged() {
            return Err(CoreError::Overloaded);
        }
        let mut state = lock(&self.shared.state);
        let lsn = match state.apply(op, now)? {
            Some(change) => {
                let movement = state.movement(change);
                let lsn = self.journal.append(vec![
                    Record::Line(state.record()),
                    Record::Movement(movement),
                ]);
                self.shared.last_lsn.store(lsn, Ordering::Release);
                lsn
            }
            None => 0,
        };
        Ok(Applied {
            snapshot: state.snapshot(),
            lsn,
        })
    }
}

impl Actor for StockLine {
    type Msg = LineMsg;
    type State = LineContext;
    type Arguments = LineContext;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        context: LineContext,
    ) -> Result<LineContext, ActorProcessingErr> {
        Ok(context)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        context: &mut LineContext,
    ) -> Result<(), ActorProcessingErr> {
        let now = crate::types::now();
        context.shared.stats.record_message(now);
        match message {
            LineMsg::Apply { op, reply } => {
                let result = context.apply(op, now);
                if result.is_err() {
                    context.shared.stats.refused();
                }
                if let Some(reply) = reply {
                    // The caller may have timed out and gone; nothing to do then.
                    let _ = reply.send(result);
                }
            }
            LineMsg::Snapshot(reply) => {
                let _ = reply.send(context.shared.peek());
            }
            #[cfg(test)]
            LineMsg::Fail => {
                let _state = lock(&context.shared.state);
                panic!("line {} asked to fail", context.shared.key);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn the_last_whole_second_is_counted_and_forgotten_after_it() {
        let stats = LineStats::default();
        let t0 = DateTime::from_timestamp(1_000, 0).unwrap();
        let at = |ms: i64| t0 + chrono::Duration::milliseconds(ms);
        for i in 0..5 {
            stats.record_message(at(i * 100));
        }
        assert_eq!(stats.last_second(at(900)), 0, "the second is not whole yet");
        assert_eq!(stats.last_second(at(1_500)), 5);
        stats.record_message(at(1_200));
        stats.record_message(at(1_300));
        assert_eq!(stats.last_second(at(1_900)), 5);
        assert_eq!(stats.last_second(at(2_100)), 2);
        assert_eq!(
            stats.last_second(at(3_100)),
            0,
            "nothing in the second before"
        );
        // A gap of several seconds: what was counted before it is not carried over.
        stats.record_message(at(9_000));
        assert_eq!(stats.last_second(at(9_500)), 0);
        assert_eq!(stats.last_second(at(10_000)), 1);
    }
}
