//! The settled tail: which settled reservations stay in memory, and for how long.
//!
//! A settled reservation is kept so that a late commit or release, or a read, is answered
//! without the store. Kept for a fixed time, they grew with traffic: at 7,500 settled a
//! second, ten minutes of them were 4.5 million reservations and over a gigabyte. So the
//! tail is bounded by count (a memory budget) as well as by time: the oldest settled
//! reservation leaves once the tail is over its budget or its time is up, but never before
//! its last record is durable (until then the store could not answer for it). Older ones
//! are answered from the store, which has every reservation.
//!
//! Settled reservations arrive in the order they settle, so the oldest is always at the
//! front: trimming is a pop, not a search.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::journal::{DurableWatch, Lsn};
use crate::types::ReservationId;

/// The settled reservations in memory, oldest first.
pub(crate) struct SettledTail {
    queue: Mutex<VecDeque<Settled>>,
    /// At most this many are kept (more only while the oldest are not yet durable).
    budget: usize,
    /// None is kept longer than this.
    retention: Duration,
    durable: DurableWatch,
}

struct Settled {
    id: ReservationId,
    /// The Lsn of its settling record.
    lsn: Lsn,
    at: Instant,
}

impl SettledTail {
    pub(crate) fn new(budget: usize, retention: Duration, durable: DurableWatch) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            budget,
            retention,
            durable,
        }
    }

    /// Adds a reservation settled by the record at `lsn`; answers those that leave now.
    pub(crate) fn push(&self, id: ReservationId, lsn: Lsn) -> Vec<ReservationId> {
        let mut queue = self.lock();
        // Read under the lock: read before it, a push that waited on the lock could come
        // after a later one and break the queue's order (seen as this assertion failing).
        let now = Instant::now();
        debug_assert!(
            queue.back().is_none_or(|last| last.at <= now),
            "settled in order"
        );
        queue.push_back(Settled { id, lsn, at: now });
        self.trim(&mut queue, now)
    }

    /// Answers those whose time is up (or over the budget), durable.
    pub(crate) fn expired(&self) -> Vec<ReservationId> {
        let mut queue = self.lock();
        self.trim(&mut queue, Instant::now())
    }

    /// How many are kept now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn trim(&self, queue: &mut VecDeque<Settled>, now: Instant) -> Vec<ReservationId> {
        let durable = self.durable.current();
        let mut gone = Vec::new();
        while let Some(oldest) = queue.front() {
            let over = queue.len() > self.budget || now.duration_since(oldest.at) >= self.retention;
            if !over || oldest.lsn > durable {
                break;
            }
            gone.push(oldest.id);
            queue.pop_front();
        }
        gone
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Settled>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Watermark;

    #[tokio::test(start_paused = true)]
    async fn the_oldest_leave_past_the_budget_or_the_time_but_only_once_durable() {
        let watermark = Watermark::starting_at(0);
        let tail = SettledTail::new(2, Duration::from_secs(60), watermark.watch());
        let ids: Vec<_> = (0..4).map(|_| ReservationId::new()).collect();
        assert!(tail.push(ids[0], 1).is_empty());
        assert!(tail.push(ids[1], 2).is_empty());
        // Over the budget, but nothing durable yet: kept.
        assert!(tail.push(ids[2], 3).is_empty());
        assert_eq!(tail.len(), 3);
        watermark.advance(2);
        assert_eq!(tail.push(ids[3], 4), vec![ids[0], ids[1]]);
        assert_eq!(tail.len(), 2);
        watermark.advance(4);
        assert!(tail.expired().is_empty(), "within the budget and the time");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(tail.expired(), vec![ids[2], ids[3]]);
        assert_eq!(tail.len(), 0);
    }

    #[test]
    fn pushes_racing_from_several_threads_stay_in_order() {
        let watermark = Watermark::starting_at(0);
        let tail = std::sync::Arc::new(SettledTail::new(
            usize::MAX,
            Duration::from_secs(600),
            watermark.watch(),
        ));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let tail = tail.clone();
                std::thread::spawn(move || {
                    for lsn in 0..20_000 {
                        tail.push(ReservationId::new(), lsn);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no push out of order");
        }
        let queue = tail.lock();
        assert_eq!(queue.len(), 80_000);
        assert!(
            queue
                .iter()
                .zip(queue.iter().skip(1))
                .all(|(a, b)| a.at <= b.at)
        );
    }
}
