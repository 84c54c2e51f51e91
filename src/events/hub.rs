//! The live side of the outbox: what the flusher has just committed, to every open stream
//! at once, and the newest event id, which wakes the readers that work from the table.
//!
//! The fan-out is one bounded broadcast ring shared by every stream, so memory does not
//! grow with the number of clients or with a slow one: a stream that falls a whole ring
//! behind is told so and cut off (`Lagged`), and its client resumes from the table with
//! `Last-Event-ID`. Nothing is formatted or kept while no stream is open.
//!
//! In cluster mode a batch's events are not numbered yet when it commits (they wait in the
//! intake for the sequencer, see [`sequence`](super::sequence)): the flusher's commit
//! wakes the sequencer, and the events reach this hub from the table, in the one order
//! every node shares, by the node's tail.

use std::sync::Arc;

use tokio::sync::{Notify, broadcast, watch};

use super::{Event, EventType};

/// One committed event, formatted once for every stream.
#[derive(Debug)]
pub struct Published {
    pub id: i64,
    pub kind: EventType,
    pub shop_ids: Vec<i64>,
    /// `{id, type, at, data}`.
    pub json: String,
}

pub struct EventHub {
    live: broadcast::Sender<Arc<Published>>,
    newest: watch::Sender<i64>,
    /// Cluster mode: woken when a batch with events has committed into the intake.
    intake: Option<Arc<Notify>>,
}

impl EventHub {
    /// `newest`: the highest event id already stored; `ring`: how many events a stream may
    /// fall behind before it is cut off.
    pub fn new(newest: i64, ring: usize) -> Self {
        Self {
            live: broadcast::channel(ring.max(1)).0,
            newest: watch::channel(newest).0,
            intake: None,
        }
    }

    /// A cluster node's hub: committed batches wake the sequencer, and events come in
    /// numbered, by [`fan_out`](Self::fan_out).
    pub fn sequenced(newest: i64, ring: usize) -> Self {
        Self {
            intake: Some(Arc::new(Notify::new())),
            ..Self::new(newest, ring)
        }
    }

    /// What a cluster node's sequencer waits on.
    pub fn intake(&self) -> Option<Arc<Notify>> {
        self.intake.clone()
    }

    /// Called by the flusher once the transaction holding `events` has committed.
    pub fn publish(&self, events: &[Event]) {
        match &self.intake {
            Some(intake) if !events.is_empty() => intake.notify_one(),
            Some(_) => {}
            None => self.fan_out(events),
        }
    }

    /// Events stored in `events` (in id order, each id above the last one fanned out): to
    /// every open stream, and the newest id to the readers of the table.
    pub fn fan_out(&self, events: &[Event]) {
        let Some(last) = events.iter().map(|e| e.id).max() else {
            return;
        };
        if self.live.receiver_count() > 0 {
            for event in events {
                // No receiver left in the meantime: nobody to tell.
                let _ = self.live.send(Arc::new(Published {
                    id: event.id,
                    kind: event.kind,
                    shop_ids: event.shop_ids.clone(),
                    json: event.to_json(),
                }));
            }
        }
        self.newest.send_if_modified(|newest| {
            let advanced = last > *newest;
            *newest = (*newest).max(last);
            advanced
        });
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.live.subscribe()
    }

    /// The newest event id fanned out.
    pub fn newest_id(&self) -> i64 {
        *self.newest.borrow()
    }

    /// The newest committed event id, to wait on.
    pub fn newest(&self) -> watch::Receiver<i64> {
        self.newest.subscribe()
    }

    /// How many streams are open.
    pub fn streams(&self) -> usize {
        self.live.receiver_count()
    }
}
