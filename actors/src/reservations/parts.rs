//! Settling a pending reservation in parts (partial fulfilment): given quantities of given
//! lines committed or released; it ends once nothing is held.

use super::{Reservation, Reservations};
use crate::error::{CoreError, Result};
use crate::journal::Lsn;
use crate::line_state::LineOp;
use crate::types::{LineKey, Quantity, ReservationId, ReservationStatus};

impl Reservations {
    /// Commits (or releases) only the given quantities of the given lines (partial
    /// fulfilment). The reservation stays pending while anything is held, then ends
    /// `committed` if anything was committed, else `released`. Asking for more than a line
    /// holds refuses the whole request and changes nothing.
    pub async fn settle_part(
        &self,
        id: ReservationId,
        parts: Vec<(LineKey, Quantity)>,
        commit: bool,
    ) -> Result<(Reservation, Lsn)> {
        self.to_end(move |this| this.settle_lines(id, parts, commit))
            .await
    }

    async fn settle_lines(
        self,
        id: ReservationId,
        parts: Vec<(LineKey, Quantity)>,
        commit: bool,
    ) -> Result<(Reservation, Lsn)> {
        let (items, claimed) = self.claim_pending(id).await?;
        // Per item, what this request takes of it; checked whole before any line is touched.
        let mut asked = vec![0u64; items.len()];
        for (key, qty) in &parts {
            let index = items.iter().position(|item| item.key() == *key);
            let held = index.map_or(0, |i| items[i].held());
            match index {
                Some(i) if asked[i] + qty.get() <= held => asked[i] += qty.get(),
                _ => {
                    claimed.abandon();
                    return Err(CoreError::PartNotHeld {
                        product_id: key.product_id,
                        warehouse_id: key.warehouse_id,
                        requested: qty.get() + index.map_or(0, |i| asked[i]),
                        held,
                    });
                }
            }
        }
        if commit {
            let wanted: Vec<_> = items
                .iter()
                .zip(&asked)
                .filter(|(_, qty)| **qty > 0)
                .map(|(item, qty)| (item.key(), *qty))
                .collect();
            if let Some(short) = self.backordered(id, &wanted) {
                claimed.abandon();
                return Err(short);
            }
        }
        let mut done = vec![0u64; items.len()];
        let (mut lsn, mut failure) = (0, None);
        for (i, item) in items.iter().enumerate().filter(|(i, _)| asked[*i] > 0) {
            let qty = Quantity::try_from(asked[i])
                .map_err(|e| CoreError::InvalidQuantity(e.to_string()))?;
            let settled = match self.0.registry.line(item.key()).await {
                Ok(line) => line.settle(LineOp::SettlePart { id, qty, commit }).await,
                Err(error) => Err(error),
            };
            match settled {
                Ok(applied) => {
                    lsn = lsn.max(applied.lsn);
                    done[i] = asked[i];
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        claimed.finished();
        let (reservation, record_lsn) = self.finish_part(id, &done, commit)?;
        match failure {
            Some(error) => Err(error),
            None => Ok((reservation, lsn.max(record_lsn))),
        }
    }

    /// Books what a partial settlement did on its lines and journals the reservation; ends
    /// it once nothing is held.
    fn finish_part(
        &self,
        id: ReservationId,
        done: &[u64],
        commit: bool,
    ) -> Result<(Reservation, Lsn)> {
        let mut entry = self
            .0
            .table
            .get_mut(&id)
            .ok_or(CoreError::ReservationNotFound)?;
        entry.settling = false;
        let entry = &mut *entry;
        for ((item, settled), qty) in entry
            .reservation
            .items
            .iter_mut()
            .zip(entry.settled.iter_mut())
            .zip(done)
        {
            if commit {
                item.committed += qty;
            } else {
                item.released += qty;
            }
            *settled = item.held() == 0;
        }
        let items = &entry.reservation.items;
        let ended = items.iter().all(|item| item.held() == 0);
        if ended {
            entry.reservation.status = if items.iter().any(|item| item.committed > 0) {
                ReservationStatus::Committed
            } else {
                ReservationStatus::Released
            };
        }
        entry.reservation.updated_at = crate::types::now();
        let reservation = entry.reservation.clone();
        let lsn = self.0.journal.append(vec![reservation.record()]);
        if ended {
            self.count_end(reservation.status);
            self.settled(id, lsn);
        }
        Ok((reservation, lsn))
    }
}
