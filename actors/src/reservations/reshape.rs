//! Reshaping a pending reservation to hold exactly other quantities (what a held cart
//! does): growth reserved first, all or nothing, then what is no longer wanted released.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{ItemRequest, Reservation, Reservations};
use crate::allocation::{Allocator, Holds};
use crate::error::{CoreError, Result};
use crate::expiry::Due;
use crate::journal::Lsn;
use crate::line_state::LineOp;
use crate::types::{
    LineKey, ProductId, Quantity, ReservationId, ReservationStatus, ReservedItem, ShopId,
};

impl Reservations {
    /// Makes a pending reservation hold exactly `wanted` (units per product, allocated
    /// like a new reservation, within `shop_id` if set) and extends it to `ttl` from now:
    /// all or nothing. Growth is reserved first under the same id; if any of it is refused,
    /// what this call took is given back and nothing changes. Then what is no longer
    /// wanted is released, from the lines that came last.
    pub async fn reshape(
        &self,
        id: ReservationId,
        wanted: Vec<(ProductId, u64)>,
        ttl: Duration,
        shop_id: Option<ShopId>,
        backorder_limits: BTreeMap<ProductId, u64>,
    ) -> Result<(Reservation, Lsn)> {
        self.to_end(move |this| this.hold_exactly(id, wanted, ttl, shop_id, backorder_limits))
            .await
    }

    async fn hold_exactly(
        self,
        id: ReservationId,
        wanted: Vec<(ProductId, u64)>,
        ttl: Duration,
        shop_id: Option<ShopId>,
        backorder_limits: BTreeMap<ProductId, u64>,
    ) -> Result<(Reservation, Lsn)> {
        let (items, claimed) = self.claim_pending(id).await?;
        let held_of = |product: ProductId| -> u64 {
            items
                .iter()
                .filter(|i| i.product_id == product)
                .map(|i| i.held())
                .sum()
        };
        let mut growth = Vec::new();
        let mut shrink = Vec::new();
        for &(product_id, units) in &wanted {
            let now = held_of(product_id);
            if units > now {
                growth.push(ItemRequest {
                    product_id,
                    quantity: Quantity::try_from(units - now)
                        .map_err(|e| CoreError::InvalidQuantity(e.to_string()))?,
                    warehouse_id: None,
                });
            } else if units < now {
                shrink.push((product_id, now - units));
            }
        }
        for item in &items {
            if !wanted.iter().any(|(p, _)| *p == item.product_id) && item.held() > 0 {
                shrink.push((item.product_id, item.held()));
            }
        }
        shrink.sort_unstable();
        shrink.dedup_by_key(|(p, _)| *p);
        let allocator = Allocator {
            registry: &self.0.registry,
            warehouses: &self.0.warehouses,
            id,
            shop_id,
            backorder_limits: &backorder_limits,
        };
        let mut taken = Holds::default();
        if let Err(refusal) = allocator.reserve_all(&growth, &mut taken).await {
            taken.give_back(id).await;
            claimed.abandon();
            return Err(refusal);
        }
        let mut lsn = taken.lsn;
        // Released from the last lines first: the first by priority keep their stock.
        let mut released: Vec<(LineKey, u64)> = Vec::new();
        for (product_id, mut excess) in shrink {
            for item in items.iter().rev().filter(|i| i.product_id == product_id) {
                let give = item.held().min(excess);
                let Ok(qty) = Quantity::try_from(give) else {
                    continue;
                };
                let op = LineOp::SettlePart {
                    id,
                    qty,
                    commit: false,
                };
                match self.0.registry.line(item.key()).await {
                    Ok(line) => match line.settle(op).await {
                        Ok(applied) => {
                            lsn = lsn.max(applied.lsn);
                            released.push((item.key(), give));
                            excess -= give;
                        }
                        Err(error) => {
                            tracing::warn!(reservation = %id, line = %item.key(), %error, "a hold could not be shrunk; it stays until the reservation ends")
                        }
                    },
                    Err(error) => {
                        tracing::warn!(reservation = %id, line = %item.key(), %error, "a hold could not be shrunk; it stays until the reservation ends")
                    }
                }
            }
        }
        claimed.finished();
        let (reservation, record_lsn) = self.finish_reshape(id, taken.items(), released, ttl)?;
        Ok((reservation, lsn.max(record_lsn)))
    }

    /// Books a reshape: quantities grown and shrunk, the new expiry; a reservation left
    /// holding nothing ends released.
    fn finish_reshape(
        &self,
        id: ReservationId,
        grown: Vec<ReservedItem>,
        shrunk: Vec<(LineKey, u64)>,
        ttl: Duration,
    ) -> Result<(Reservation, Lsn)> {
        let mut guard = self
            .0
            .table
            .get_mut(&id)
            .ok_or(CoreError::ReservationNotFound)?;
        let entry = &mut *guard;
        entry.settling = false;
        let items = &mut entry.reservation.items;
        for add in grown {
            match items.iter_mut().find(|i| i.key() == add.key()) {
                Some(item) => item.quantity += add.quantity,
                None => items.push(add),
            }
        }
        for (key, give) in shrunk {
            if let Some(item) = items.iter_mut().find(|i| i.key() == key) {
                item.quantity -= give;
            }
        }
        entry.settled = items.iter().map(|i| i.held() == 0).collect();
        let now = Instant::now();
        let ended = items.iter().all(|i| i.held() == 0);
        if ended {
            entry.reservation.status = ReservationStatus::Released;
        } else {
            entry.deadline = now + ttl;
        }
        let updated_at = crate::types::now();
        if !ended {
            entry.reservation.expires_at = updated_at + ttl;
        }
        entry.reservation.updated_at = updated_at;
        let reservation = entry.reservation.clone();
        drop(guard);
        let lsn = self.0.journal.append(vec![reservation.record()]);
        if ended {
            self.count_end(reservation.status);
            self.settled(id, lsn);
        } else {
            self.0.expiry.schedule(id, now + ttl, Due::Expire);
        }
        Ok((reservation, lsn))
    }
}
