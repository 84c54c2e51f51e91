//! Reserving the items of one reservation on their lines, all or nothing.
//!
//! No lock is held across lines: each line is reserved on its own, in turn, and if any
//! refuses, the holds already taken are released before the refusal is answered. Two
//! reservations racing for the same lines can both fail, but never deadlock or oversell.
//!
//! A product with a backorder limit may be held beyond what its lines have. What no line
//! has goes to one line, the product's first active warehouse by priority, with the room
//! the limit leaves after the other lines' backorders; that line's actor checks it. So
//! concurrent backorders are serialized by one actor and never exceed the limit.

use std::collections::BTreeMap;

use crate::error::{CoreError, Result};
use crate::handle::LineHandle;
use crate::journal::Lsn;
use crate::line_state::LineOp;
use crate::registry::Registry;
use crate::types::{
    ItemRequest, LineKey, ProductId, Quantity, ReservationId, ReservedItem, ShopId, WarehouseId,
};
use crate::warehouses::Warehouses;

/// How often allocation re-plans a product after a line refused a planned share (the line
/// was drained by another request between the plan and the reserve).
const REPLANS: usize = 8;

/// Holds taken so far for one reservation.
#[derive(Default)]
pub(crate) struct Holds {
    lines: BTreeMap<LineKey, (LineHandle, u64)>,
    pub(crate) lsn: Lsn,
}

impl Holds {
    fn add(&mut self, line: &LineHandle, qty: u64, lsn: Lsn) {
        self.lines
            .entry(line.key())
            .or_insert_with(|| (line.clone(), 0))
            .1 += qty;
        self.lsn = self.lsn.max(lsn);
    }

    fn held_of(&self, product_id: ProductId) -> u64 {
        self.lines
            .iter()
            .filter(|(key, _)| key.product_id == product_id)
            .map(|(_, (_, qty))| qty)
            .sum()
    }

    /// Gives back exactly what was taken here, leaving any earlier hold of the same
    /// reservation on those lines (a reshape that was refused). A line that cannot be
    /// reached keeps the extra until the reservation ends.
    pub(crate) async fn give_back(self, id: ReservationId) {
        for (key, (line, qty)) in self.lines {
            let Ok(qty) = Quantity::try_from(qty) else {
                continue;
            };
            let op = LineOp::SettlePart {
                id,
                qty,
                commit: false,
            };
            if let Err(error) = line.settle(op).await {
                tracing::warn!(line = %key, reservation = %id, %error, "giving back a refused growth failed");
            }
        }
    }

    /// One item per line, in (warehouse, product) order.
    pub(crate) fn items(&self) -> Vec<ReservedItem> {
        self.lines
            .iter()
            .map(|(key, (_, quantity))| ReservedItem {
                committed: 0,
                released: 0,
                product_id: key.product_id,
                warehouse_id: key.warehouse_id,
                quantity: *quantity,
            })
            .collect()
    }

    /// Releases every hold taken (after a refusal) and returns those that could not be
    /// released now (their line is restarting or stuck), for the caller to expire later.
    pub(crate) async fn release_all(self, id: ReservationId) -> Vec<ReservedItem> {
        let mut stranded = Vec::new();
        for (key, (line, qty)) in self.lines {
            match line.settle(LineOp::Release { id }).await {
                Ok(_) | Err(CoreError::NotHeld) => {}
                Err(error) => {
                    tracing::warn!(line = %key, reservation = %id, %error, "rollback of a hold deferred");
                    stranded.push(ReservedItem {
                        committed: 0,
                        released: 0,
                        product_id: key.product_id,
                        warehouse_id: key.warehouse_id,
                        quantity: qty,
                    });
                }
            }
        }
        stranded
    }
}

/// The allocator of one reservation request.
pub(crate) struct Allocator<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) warehouses: &'a Warehouses,
    pub(crate) id: ReservationId,
    /// Only this shop's warehouses, when set.
    pub(crate) shop_id: Option<ShopId>,
    /// Per product, how many units may be held beyond what is available (backorders).
    pub(crate) backorder_limits: &'a BTreeMap<ProductId, u64>,
}

impl Allocator<'_> {
    /// Reserves every item, adding to `holds`; on error the caller releases `holds`.
    pub(crate) async fn reserve_all(&self, items: &[ItemRequest], holds: &mut Holds) -> Result<()> {
        let (pinned, free) = grouped(items);
        for (key, qty) in pinned {
            self.reserve_pinned(key, quantity(qty)?, holds).await?;
        }
        for (product_id, qty) in free {
            self.reserve_free(product_id, quantity(qty)?, holds).await?;
        }
        Ok(())
    }

    /// What [`reserve_all`](Self::reserve_all) would hold if it ran now, or the refusal it
    /// would give, read from the lines without holding anything (a dry run). Racing
    /// requests may of course change the answer a moment later.
    pub(crate) async fn preview(&self, items: &[ItemRequest]) -> Result<Vec<ReservedItem>> {
        let (pinned, free) = grouped(items);
        let mut taken: BTreeMap<LineKey, u64> = BTreeMap::new();
        for (key, qty) in pinned {
            self.check_pinned(key)?;
            let now = self.registry.line(key).await?.peek();
            if !now.active {
                return Err(CoreError::WarehouseInactive {
                    warehouse_id: key.warehouse_id,
                });
            }
            let left = now.available() - taken.get(&key).copied().unwrap_or(0);
            if qty > left {
                return Err(CoreError::InsufficientStock {
                    product_id: key.product_id,
                    requested: qty,
                    available: left,
                });
            }
            *taken.entry(key).or_default() += qty;
        }
        for (product_id, qty) in free {
            let (mut remaining, mut available) = (qty, 0);
            for (line, line_available) in self.plan(product_id).await? {
                let left =
                    line_available.saturating_sub(taken.get(&line.key()).copied().unwrap_or(0));
                let take = left.min(remaining);
                available += left;
                remaining -= take;
                if take > 0 {
                    *taken.entry(line.key()).or_default() += take;
                }
            }
            let limit = self.backorder_limit(product_id);
            if remaining > 0 && limit > 0 {
                let room = limit.saturating_sub(self.beyond_available(product_id, None).await?);
                if let Some(line) = self.backorder_line(product_id).await?
                    && remaining <= room
                {
                    *taken.entry(line.key()).or_default() += remaining;
                    remaining = 0;
                }
                available += room;
            }
            if remaining > 0 {
                return Err(CoreError::InsufficientStock {
                    product_id,
                    requested: qty,
                    available,
                });
            }
        }
        Ok(taken
            .into_iter()
            .map(|(key, quantity)| ReservedItem {
                committed: 0,
                released: 0,
                product_id: key.product_id,
                warehouse_id: key.warehouse_id,
                quantity,
            })
            .collect())
    }

    /// A pinned item's warehouse must be known, of the shop (if one is set), and active.
    fn check_pinned(&self, key: LineKey) -> Result<()> {
        let info = self
            .warehouses
            .get(key.warehouse_id)
            .ok_or(CoreError::UnknownWarehouse {
                warehouse_id: key.warehouse_id,
            })?;
        if self.shop_id.is_some() && info.shop_id != self.shop_id {
            return Err(CoreError::NotInShop {
                warehouse_id: key.warehouse_id,
            });
        }
        if !info.active {
            return Err(CoreError::WarehouseInactive {
                warehouse_id: key.warehouse_id,
            });
        }
        Ok(())
    }

    /// An item that names its warehouse: that line only.
    async fn reserve_pinned(&self, key: LineKey, qty: Quantity, holds: &mut Holds) -> Result<()> {
        self.check_pinned(key)?;
        let line = self.registry.line(key).await?;
        let applied = line.call(LineOp::Reserve { id: self.id, qty }).await?;
        holds.add(&line, qty.get(), applied.lsn);
        Ok(())
    }

    /// An item without a warehouse: across active warehouses by priority, then most
    /// available, split over several when one is short. With a backorder limit, what no
    /// line has is held as a backorder on the product's first warehouse by priority, within
    /// what the limit leaves over all its lines.
    async fn reserve_free(
        &self,
        product_id: ProductId,
        qty: Quantity,
        holds: &mut Holds,
    ) -> Result<()> {
        let limit = self.backorder_limit(product_id);
        let before = holds.held_of(product_id);
        let mut remaining = qty.get();
        for _ in 0..REPLANS {
            let plan = self.plan(product_id).await?;
            let available: u64 = plan.iter().map(|(_, a)| a).sum();
            let room = match limit {
                0 => 0,
                _ => limit.saturating_sub(self.beyond_available(product_id, None).await?),
            };
            if available + room < remaining {
                self.count_refusal(product_id).await?;
                return Err(CoreError::InsufficientStock {
                    product_id,
                    requested: qty.get(),
                    available: available + room + (qty.get() - remaining),
                });
            }
            for (line, line_available) in plan {
                let take = line_available.min(remaining);
                if take == 0 {
                    continue;
                }
                let op = LineOp::Reserve {
                    id: self.id,
                    qty: quantity(take)?,
                };
                match line.call(op).await {
                    Ok(applied) => {
                        holds.add(&line, take, applied.lsn);
                        remaining -= take;
                    }
                    // Drained or deactivated since the plan: plan again from fresh reads.
                    Err(
                        CoreError::InsufficientStock { .. } | CoreError::WarehouseInactive { .. },
                    ) => break,
                    Err(other) => return Err(other),
                }
            }
            if remaining > 0
                && limit > 0
                && let Some(line) = self.backorder_line(product_id).await?
            {
                let others = self.beyond_available(product_id, Some(line.key())).await?;
                let op = LineOp::Backorder {
                    id: self.id,
                    qty: quantity(remaining)?,
                    room: limit.saturating_sub(others),
                };
                match line.call(op).await {
                    Ok(applied) => {
                        holds.add(&line, remaining, applied.lsn);
                        remaining = 0;
                    }
                    // Another backorder took the room first: plan again.
                    Err(
                        CoreError::InsufficientStock { .. } | CoreError::WarehouseInactive { .. },
                    ) => {}
                    Err(other) => return Err(other),
                }
            }
            if remaining == 0 {
                return Ok(());
            }
        }
        let available: u64 = self.plan(product_id).await?.iter().map(|(_, a)| a).sum();
        self.count_refusal(product_id).await?;
        Err(CoreError::InsufficientStock {
            product_id,
            requested: qty.get(),
            available: available + holds.held_of(product_id) - before,
        })
    }

    /// A refusal for stock decided from the lines' reads (before any message) counts on
    /// every line that could have served, so that operators see it where it happens.
    async fn count_refusal(&self, product_id: ProductId) -> Result<()> {
        for line in self.registry.lines_of_product(product_id).await? {
            let serves = self
                .warehouses
                .get(line.key().warehouse_id)
                .is_some_and(|w| w.active && (self.shop_id.is_none() || w.shop_id == self.shop_id));
            if serves {
                line.count_refusal();
            }
        }
        Ok(())
    }

    fn backorder_limit(&self, product_id: ProductId) -> u64 {
        self.backorder_limits.get(&product_id).copied().unwrap_or(0)
    }

    /// What the product's lines (all but `except`) hold beyond what they may reserve: the
    /// part of the backorder limit in use.
    async fn beyond_available(
        &self,
        product_id: ProductId,
        except: Option<LineKey>,
    ) -> Result<u64> {
        Ok(self
            .registry
            .lines_of_product(product_id)
            .await?
            .iter()
            .filter(|line| Some(line.key()) != except)
            .map(|line| line.peek().beyond_available())
            .sum())
    }

    /// The line backorders go to: the product's line in its first active warehouse by
    /// priority (then id), of the shop if one is set; created if the product was never
    /// stocked there (a pre-order).
    async fn backorder_line(&self, product_id: ProductId) -> Result<Option<LineHandle>> {
        let first = self
            .warehouses
            .active_ids()
            .into_iter()
            .filter(|w| self.warehouses.serves(*w, self.shop_id))
            .filter_map(|w| Some((self.warehouses.get(w)?.priority, w)))
            .min();
        match first {
            Some((_, warehouse_id)) => Ok(Some(
                self.registry
                    .line(LineKey::new(warehouse_id, product_id))
                    .await?,
            )),
            None => Ok(None),
        }
    }

    /// The product's lines in active warehouses (of the shop, if one is set), in allocation order, with what each has
    /// available now (cold lines are loaded for it, together).
    async fn plan(&self, product_id: ProductId) -> Result<Vec<(LineHandle, u64)>> {
        let mut candidates: Vec<(i32, WarehouseId, LineHandle, u64)> = self
            .registry
            .lines_of_product(product_id)
            .await?
            .into_iter()
            .filter_map(|line| {
                let info = self.warehouses.get(line.key().warehouse_id)?;
                let in_shop = self.shop_id.is_none() || info.shop_id == self.shop_id;
                let now = line.peek();
                (in_shop && info.active && now.active && now.available() > 0)
                    .then(|| (info.priority, now.key.warehouse_id, line, now.available()))
            })
            .collect();
        candidates.sort_by(|a, b| {
            (a.0, std::cmp::Reverse(a.3), a.1).cmp(&(b.0, std::cmp::Reverse(b.3), b.1))
        });
        Ok(candidates
            .into_iter()
            .map(|(_, _, line, available)| (line, available))
            .collect())
    }
}

/// The items merged per pinned line and per free product, in a stable order.
fn grouped(items: &[ItemRequest]) -> (BTreeMap<LineKey, u64>, BTreeMap<ProductId, u64>) {
    let mut pinned: BTreeMap<LineKey, u64> = BTreeMap::new();
    let mut free: BTreeMap<ProductId, u64> = BTreeMap::new();
    for item in items {
        let qty = item.quantity.get();
        match item.warehouse_id {
            Some(w) => *pinned.entry(LineKey::new(w, item.product_id)).or_default() += qty,
            None => *free.entry(item.product_id).or_default() += qty,
        }
    }
    (pinned, free)
}

fn quantity(qty: u64) -> Result<Quantity> {
    Quantity::try_from(qty).map_err(|e| CoreError::InvalidQuantity(e.to_string()))
}
