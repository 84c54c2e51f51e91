//! One timer structure for every reservation: a [`DelayQueue`] owned by one task.
//!
//! A task per reservation would cost a task, a timer and a stack-sized future for each of
//! the hundreds of thousands a flash sale leaves pending; here a pending reservation costs
//! one queue slot. The task is a plain tokio task rather than a ractor actor because it must
//! poll the queue and its mailbox together, which ractor's `handle` loop cannot.
//!
//! A reservation's timer is cancelled when it settles: the queue holds pending
//! reservations only. (Which settled ones stay in memory is the settled tail's call, see
//! `settled.rs`.)

use std::collections::HashMap;
use std::future::poll_fn;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::time::{DelayQueue, delay_queue};

use crate::types::ReservationId;

/// What to do with a reservation when its time comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// A pending reservation reached `expires_at`: expire it.
    Expire,
}

/// Arms (or re-arms: one timer per reservation) the timer of a reservation, or cancels it.
enum Command {
    Arm(ReservationId, Instant, Due),
    Cancel(ReservationId),
}

/// The way to the expiry task. Sending never blocks.
#[derive(Clone)]
pub(crate) struct ExpiryHandle(mpsc::UnboundedSender<Command>);

impl ExpiryHandle {
    /// Starts the task, which hands each reservation whose time has come to `on_due`; it
    /// ends once `on_due` answers false (the reservations it serves are gone).
    pub(crate) fn start(on_due: impl Fn(ReservationId, Due) -> bool + Send + 'static) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, on_due));
        Self(tx)
    }

    /// Arms (or re-arms) the one timer of a reservation.
    pub(crate) fn schedule(&self, id: ReservationId, at: Instant, due: Due) {
        // Fails only once the task has ended, at shutdown, when no timer matters.
        let _ = self.0.send(Command::Arm(id, at, due));
    }

    /// Cancels the timer of a reservation that settled.
    pub(crate) fn cancel(&self, id: ReservationId) {
        let _ = self.0.send(Command::Cancel(id));
    }
}

async fn run(
    mut commands: mpsc::UnboundedReceiver<Command>,
    on_due: impl Fn(ReservationId, Due) -> bool,
) {
    let mut queue: DelayQueue<(ReservationId, Due)> = DelayQueue::new();
    let mut keys: HashMap<ReservationId, delay_queue::Key> = HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => break,
                Some(Command::Arm(id, at, due)) => {
                    if let Some(key) = keys.remove(&id) {
                        queue.try_remove(&key);
                    }
                    keys.insert(id, queue.insert_at((id, due), at));
                }
                Some(Command::Cancel(id)) => {
                    if let Some(key) = keys.remove(&id) {
                        queue.try_remove(&key);
                    }
                }
            },
            Some(expired) = poll_fn(|cx| queue.poll_expired(cx)), if !queue.is_empty() => {
                let (id, due) = expired.into_inner();
                keys.remove(&id);
                if !on_due(id, due) {
                    break;
                }
            }
        }
    }
}
