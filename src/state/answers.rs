//! The answers to idempotent requests kept in memory, by (user, key): one running, or
//! done with its status, body and journal position (the idempotency
//! module runs requests against them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde_json::Value;
use stockline_actors::Lsn;
use tokio::sync::Notify;

/// How long answers stay in memory.
const IN_MEMORY: Duration = Duration::from_secs(3600);

pub(crate) enum AnswerState {
    Running {
        fingerprint: String,
        done: Arc<Notify>,
    },
    Done {
        fingerprint: String,
        status: StatusCode,
        body: Value,
        /// The journal position that makes the answered change durable (0: it is).
        lsn: Lsn,
        at: Instant,
    },
}

/// Answers by (user, key), in memory.
#[derive(Default)]
pub struct Answers {
    pub(crate) slots: DashMap<(i64, String), AnswerState>,
}

pub(crate) enum Claim {
    Mine,
    Wait(Arc<Notify>),
    /// Answer this again, once the change it describes is durable.
    Replay(StatusCode, Value, Lsn),
    Reused,
}

impl Answers {
    /// Drops answers older than an hour from memory; call now and then.
    pub fn sweep(&self) {
        self.slots.retain(
            |_, slot| !matches!(slot, AnswerState::Done { at, .. } if at.elapsed() > IN_MEMORY),
        );
    }

    pub(crate) fn claim(
        &self,
        user: i64,
        key: &str,
        fingerprint: &str,
        stored: Option<(String, StatusCode, Value)>,
    ) -> Claim {
        match self.slots.entry((user, key.to_owned())) {
            Entry::Occupied(slot) => match slot.get() {
                AnswerState::Running { fingerprint: f, .. }
                | AnswerState::Done { fingerprint: f, .. }
                    if f != fingerprint =>
                {
                    Claim::Reused
                }
                AnswerState::Running { done, .. } => Claim::Wait(done.clone()),
                AnswerState::Done {
                    status, body, lsn, ..
                } => Claim::Replay(*status, body.clone(), *lsn),
            },
            Entry::Vacant(vacant) => match stored {
                Some((f, _, _)) if f != fingerprint => Claim::Reused,
                Some((f, status, body)) => {
                    vacant.insert(AnswerState::Done {
                        fingerprint: f,
                        status,
                        body: body.clone(),
                        lsn: 0,
                        at: Instant::now(),
                    });
                    Claim::Replay(status, body, 0)
                }
                None => {
                    vacant.insert(AnswerState::Running {
                        fingerprint: fingerprint.to_owned(),
                        done: Arc::new(Notify::new()),
                    });
                    Claim::Mine
                }
            },
        }
    }

    /// Forgets the answer kept for `key` if it is the one journaled at `lsn`, whose batch
    /// was refused: the next try of the key runs the request again.
    pub(crate) fn forget_refused(&self, user: i64, key: &str, lsn: Lsn) {
        self.slots.remove_if(
            &(user, key.to_owned()),
            |_, slot| matches!(slot, AnswerState::Done { lsn: kept, .. } if *kept == lsn),
        );
    }

    pub(crate) fn finish(
        &self,
        user: i64,
        key: &str,
        outcome: Option<(String, StatusCode, Value, Lsn)>,
    ) {
        let slot_key = (user, key.to_owned());
        let previous = match outcome {
            Some((fingerprint, status, body, lsn)) => self.slots.insert(
                slot_key,
                AnswerState::Done {
                    fingerprint,
                    status,
                    body,
                    lsn,
                    at: Instant::now(),
                },
            ),
            None => self.slots.remove(&slot_key).map(|(_, slot)| slot),
        };
        if let Some(AnswerState::Running { done, .. }) = previous {
            done.notify_waiters();
        }
    }
}
