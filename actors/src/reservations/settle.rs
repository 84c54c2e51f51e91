//! Ending a reservation: commit, release or expire, each claimed first so that racing
//! ones cannot both proceed, then settled line by line, then journaled.

use tokio::time::Instant;

use super::{RETRY_AFTER, Reservation, Reservations, busy};
use crate::error::{CoreError, Result};
use crate::expiry::Due;
use crate::journal::Lsn;
use crate::line_state::LineOp;
use crate::types::{LineKey, ReservationId, ReservationStatus, ReservedItem};

/// A claimed transition; if it is dropped before it finishes, the claim is given back.
pub(super) struct Claimed<'a> {
    reservations: &'a Reservations,
    id: ReservationId,
    held: bool,
}

impl Claimed<'_> {
    /// Gives the claim back without a transition: the reservation is as it was, and
    /// claimable again at once.
    pub(super) fn abandon(mut self) {
        self.held = false;
        self.reservations.set_settling(self.id, false);
    }

    /// The transition has booked its outcome (its finish step clears the claim).
    pub(super) fn finished(mut self) {
        self.held = false;
    }
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        if self.held {
            tracing::error!(reservation = %self.id, "a transition ended half-way; it will be retried");
            self.reservations.unclaim(self.id);
        }
    }
}

impl Reservations {
    /// Stock leaves: each line's `on_hand` and `reserved` drop by the held quantity.
    pub async fn commit(&self, id: ReservationId) -> Result<(Reservation, Lsn)> {
        self.transition(id, ReservationStatus::Committed).await
    }

    /// The held stock is available again.
    pub async fn release(&self, id: ReservationId) -> Result<(Reservation, Lsn)> {
        self.transition(id, ReservationStatus::Released).await
    }

    /// Refuses, before any line is touched, a commit of units not yet on hand: a commit
    /// is all or nothing, and a line's filled part only grows while its hold stays.
    pub(super) fn backordered(
        &self,
        id: ReservationId,
        wanted: &[(LineKey, u64)],
    ) -> Option<CoreError> {
        wanted.iter().find_map(|&(key, qty)| {
            let filled = self.0.registry.resident(key)?.filled(id);
            (filled < qty).then(|| CoreError::Backordered {
                product_id: key.product_id,
                backordered: qty - filled,
            })
        })
    }

    pub(crate) async fn expire(&self, id: ReservationId) {
        // A timer armed before an extension (or a retry armed early) finds time left: it
        // re-arms for the real deadline instead of cutting the hold short.
        let early = self.0.table.get(&id).and_then(|entry| {
            let pending = entry.reservation.status == ReservationStatus::Pending;
            (pending && Instant::now() < entry.deadline).then_some(entry.deadline)
        });
        if let Some(deadline) = early {
            self.0.expiry.schedule(id, deadline, Due::Expire);
            return;
        }
        match self.transition(id, ReservationStatus::Expired).await {
            Ok(_)
            | Err(CoreError::ReservationNotPending { .. } | CoreError::ReservationNotFound) => {}
            Err(error) => tracing::warn!(reservation = %id, %error, "expiry deferred"),
        }
    }

    /// Settles a pending reservation on every line, in a task of the core's own: the
    /// caller (an HTTP request whose client may hang up) only awaits the answer, so a
    /// reservation is never left half-settled by a caller going away.
    async fn transition(
        &self,
        id: ReservationId,
        target: ReservationStatus,
    ) -> Result<(Reservation, Lsn)> {
        self.to_end(move |this| this.settle(id, target)).await
    }

    async fn settle(
        self,
        id: ReservationId,
        target: ReservationStatus,
    ) -> Result<(Reservation, Lsn)> {
        let (effective, items, mut settled) = self.claim(id, target)?;
        let claimed = Claimed {
            reservations: &self,
            id,
            held: true,
        };
        if effective == ReservationStatus::Committed {
            let unsettled = items.iter().zip(&settled).filter(|(_, done)| !**done);
            let wanted: Vec<_> = unsettled
                .map(|(item, _)| (item.key(), item.held()))
                .collect();
            if let Some(short) = self.backordered(id, &wanted) {
                claimed.abandon();
                return Err(short);
            }
        }
        let op = |id| match effective {
            ReservationStatus::Committed => LineOp::Commit { id },
            ReservationStatus::Released => LineOp::Release { id },
            _ => LineOp::Expire { id },
        };
        let mut lsn = 0;
        let mut failure = None;
        for (item, done) in items.iter().zip(settled.iter_mut()).filter(|(_, d)| !**d) {
            let line = match self.0.registry.line(item.key()).await {
                Ok(line) => line,
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            };
            match line.settle(op(id)).await {
                Ok(applied) => lsn = lsn.max(applied.lsn),
                Err(CoreError::NotHeld) => {
                    tracing::warn!(reservation = %id, line = %item.key(), "hold already gone while settling");
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
            *done = true;
        }
        claimed.finished();
        let (reservation, record_lsn) = self.finish(id, effective, settled, failure)?;
        if effective != target {
            return Err(CoreError::ReservationNotPending { status: effective });
        }
        Ok((reservation, lsn.max(record_lsn)))
    }

    /// Claims a pending reservation for a transition. A commit or release that arrives
    /// after `expires_at` (before the timer fired) expires it instead.
    fn claim(
        &self,
        id: ReservationId,
        target: ReservationStatus,
    ) -> Result<(ReservationStatus, Vec<ReservedItem>, Vec<bool>)> {
        let mut entry = self
            .0
            .table
            .get_mut(&id)
            .ok_or(CoreError::ReservationNotFound)?;
        if entry.reservation.status != ReservationStatus::Pending {
            return Err(CoreError::ReservationNotPending {
                status: entry.reservation.status,
            });
        }
        if entry.settling {
            // Another transition is under way and will end (it runs in its own task):
            // the caller retries and then learns how it ended.
            return Err(busy());
        }
        entry.settling = true;
        let effective = if Instant::now() >= entry.deadline {
            ReservationStatus::Expired
        } else {
            target
        };
        Ok((
            effective,
            entry.reservation.items.clone(),
            entry.settled.clone(),
        ))
    }

    /// Claims a pending reservation for a change that keeps it pending (a reshape, a
    /// partial settlement). One whose time has come is expired instead: not pending.
    pub(super) async fn claim_pending(
        &self,
        id: ReservationId,
    ) -> Result<(Vec<ReservedItem>, Claimed<'_>)> {
        let (effective, items, _) = self.claim(id, ReservationStatus::Pending)?;
        let claimed = Claimed {
            reservations: self,
            id,
            held: true,
        };
        if effective == ReservationStatus::Expired {
            claimed.abandon();
            self.clone().settle(id, ReservationStatus::Expired).await?;
            return Err(CoreError::ReservationNotPending {
                status: ReservationStatus::Expired,
            });
        }
        Ok((items, claimed))
    }

    /// Gives a claim back when its transition ended without finishing (a panic): the
    /// reservation is pending and claimable again, and the timer retries it.
    fn unclaim(&self, id: ReservationId) {
        if let Some(mut entry) = self.0.table.get_mut(&id) {
            entry.settling = false;
        }
        self.0
            .expiry
            .schedule(id, Instant::now() + RETRY_AFTER, Due::Expire);
    }

    fn finish(
        &self,
        id: ReservationId,
        status: ReservationStatus,
        settled: Vec<bool>,
        failure: Option<CoreError>,
    ) -> Result<(Reservation, Lsn)> {
        let mut entry = self
            .0
            .table
            .get_mut(&id)
            .ok_or(CoreError::ReservationNotFound)?;
        entry.settling = false;
        // What each item newly settled here did: all it still held left or went back.
        let fresh = &mut *entry;
        for ((item, before), now) in fresh
            .reservation
            .items
            .iter_mut()
            .zip(&fresh.settled)
            .zip(&settled)
        {
            if *now && !*before {
                match status {
                    ReservationStatus::Committed => item.committed += item.held(),
                    _ => item.released += item.held(),
                }
            }
        }
        entry.settled = settled;
        if let Some(error) = failure {
            let retry = entry.deadline.max(Instant::now() + RETRY_AFTER);
            drop(entry);
            self.0.expiry.schedule(id, retry, Due::Expire);
            return Err(error);
        }
        // Releasing the rest of a partly committed reservation ends it committed.
        let partly_committed = entry.reservation.items.iter().any(|i| i.committed > 0);
        entry.reservation.status = match status {
            ReservationStatus::Released if partly_committed => ReservationStatus::Committed,
            other => other,
        };
        entry.reservation.updated_at = crate::types::now();
        let reservation = entry.reservation.clone();
        drop(entry);
        let lsn = self.0.journal.append(vec![reservation.record()]);
        self.settled(id, lsn);
        let status = reservation.status;
        self.count_end(status);
        let listener = self.0.on_expired.get();
        if let (ReservationStatus::Expired, Some(listener)) = (status, listener) {
            let _ = listener.send(reservation.clone());
        }
        Ok((reservation, lsn))
    }
}
