//! What the service does, as one node asks another: the core's own operations in plain
//! numbers, the shard each names (whose owner serves it) and the products and warehouses
//! it names (which the owner must know). They travel over the shard protocol
//! (`cluster::routing::protocol`), versioned; the owner checks quantities again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stockline_actors::{
    Home, ItemRequest, Quantity, ReservationId, ReservationRequest, types::ShopId,
};
use uuid::Uuid;

use super::carts::CartStep;
use super::lines::{LineChange, Move};
use super::orders::OrderStep;
use crate::cluster::{Shard, shard_of};
use crate::error::{AppError, Result};
use crate::idempotency::Keyed;

/// What the service does: the core's own operations, as one node asks another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Operation {
    /// Holds stock, at most once per `key` of `user` (the request's fingerprint in it).
    Reserve {
        user: i64,
        key: Option<Keyed>,
        request: Hold,
    },
    /// The allocation a reservation would get now, holding nothing.
    DryRun { request: Hold },
    /// Commits (`commit`) or releases a reservation: all of it, or the (warehouse,
    /// product, quantity) lines.
    Settle {
        id: Uuid,
        commit: bool,
        lines: Option<Vec<(i64, i64, u64)>>,
    },
    /// Moves a pending reservation's expiry to `ttl_secs` from now.
    Extend { id: Uuid, ttl_secs: u64 },
    /// Makes a pending reservation hold exactly `items` (product, units; none: released)
    /// and extends it to `ttl_secs` from now, all or nothing.
    Reshape {
        id: Uuid,
        items: Vec<(i64, u64)>,
        ttl_secs: u64,
        shop: Option<ShopId>,
    },
    /// Reads a reservation.
    Read { id: Uuid },
    /// A product's availability over its lines (those of one shop's warehouses).
    Availability { product: i64, shop: Option<i64> },
    /// Changes one line (an adjustment: at most once per `key` of its maker).
    Change {
        key: Option<Keyed>,
        change: LineChange,
    },
    /// Changes lines of one shard, each on its own (a bulk adjustment's share of them).
    Changes { changes: Vec<LineChange> },
    /// Moves stock between two warehouses, at most once per `key` of its maker.
    Transfer { key: Option<Keyed>, moved: Move },
    /// Deletes a product none of whose lines holds anything.
    Retire { product: i64 },
    /// A step of one shard's part of a reservation across shards, sent by the node that
    /// coordinates it (`saga`): `part` is the part's own reservation id (derived from the
    /// saga's and the shard, or a held cart's reservation in that shard).
    Part {
        part: Uuid,
        shard: Shard,
        step: Step,
    },
    /// A step of an order, served by the order's owner.
    Order(OrderStep),
    /// A step of a customer's cart, served by the owner of the customer's shard.
    Cart(CartStep),
    /// Returns units that left a line for `order` (paid, now cancelled) to it, at most
    /// once per order and line.
    Return {
        order: Uuid,
        warehouse: i64,
        product: i64,
        quantity: u64,
    },
}

/// What a reservation across shards asks of one of its parts.
#[derive(Debug, Serialize, Deserialize)]
pub enum Step {
    /// Holds the part's items (refused if the part was settled or given up before).
    Reserve(Hold),
    /// The allocation the part would get now, holding nothing.
    DryRun(Hold),
    Extend {
        ttl_secs: u64,
    },
    /// Commits or releases the part: all of it, or the (warehouse, product, quantity) lines.
    Settle {
        commit: bool,
        lines: Option<Vec<(i64, i64, u64)>>,
    },
    /// Released if held, buried if not held yet: a reserve that arrives later is refused.
    GiveUp,
}

/// A [`ReservationRequest`] as it travels: plain numbers, checked again where it lands.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hold {
    /// (product, quantity, warehouse pinned)
    items: Vec<(i64, u64, Option<i64>)>,
    ttl_ms: u64,
    reference: Option<String>,
    shop_id: Option<ShopId>,
    backorder_limits: Vec<(i64, u64)>,
}

impl From<ReservationRequest> for Hold {
    fn from(request: ReservationRequest) -> Self {
        Self {
            items: request
                .items
                .iter()
                .map(|i| (i.product_id, i.quantity.get(), i.warehouse_id))
                .collect(),
            ttl_ms: u64::try_from(request.ttl.as_millis()).unwrap_or(u64::MAX),
            reference: request.reference,
            shop_id: request.shop_id,
            backorder_limits: request.backorder_limits.into_iter().collect(),
        }
    }
}

impl TryFrom<Hold> for ReservationRequest {
    type Error = AppError;

    fn try_from(hold: Hold) -> Result<Self> {
        let items = hold
            .items
            .into_iter()
            .map(|(product_id, quantity, warehouse_id)| {
                Ok(ItemRequest {
                    product_id,
                    quantity: quantity_of(quantity)?,
                    warehouse_id,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            items,
            ttl: Duration::from_millis(hold.ttl_ms),
            reference: hold.reference,
            shop_id: hold.shop_id,
            backorder_limits: hold.backorder_limits.into_iter().collect(),
        })
    }
}

pub(super) fn quantity_of(quantity: u64) -> Result<Quantity> {
    Quantity::try_from(quantity).map_err(|e| AppError::validation("quantity", e.to_string()))
}

impl Hold {
    /// The part of `request` in each shard: its items there, the same expiry, reference
    /// and shop.
    pub fn by_shard(request: &ReservationRequest) -> BTreeMap<Shard, Hold> {
        let mut parts: BTreeMap<Shard, Hold> = Default::default();
        for item in &request.items {
            let part = parts
                .entry(shard_of(item.product_id))
                .or_insert_with(|| Hold {
                    items: Vec::new(),
                    ttl_ms: u64::try_from(request.ttl.as_millis()).unwrap_or(u64::MAX),
                    reference: request.reference.clone(),
                    shop_id: request.shop_id,
                    backorder_limits: Vec::new(),
                });
            part.items
                .push((item.product_id, item.quantity.get(), item.warehouse_id));
            if let Some(limit) = request.backorder_limits.get(&item.product_id)
                && !part
                    .backorder_limits
                    .iter()
                    .any(|(p, _)| *p == item.product_id)
            {
                part.backorder_limits.push((item.product_id, *limit));
            }
        }
        parts
    }

    /// The one shard every item is in; `None` if they span shards (or there are none).
    fn shard(&self) -> Option<Shard> {
        let mut shards = self.items.iter().map(|(product, ..)| shard_of(*product));
        let first = shards.next()?;
        shards.all(|s| s == first).then_some(first)
    }

    fn named(&self) -> (Vec<i64>, Vec<i64>) {
        (
            self.items.iter().map(|(p, ..)| *p).collect(),
            self.items.iter().filter_map(|(.., w)| *w).collect(),
        )
    }
}

fn named_lines(lines: &[(i64, i64, u64)]) -> (Vec<i64>, Vec<i64>) {
    (
        lines.iter().map(|(_, p, _)| *p).collect(),
        lines.iter().map(|(w, ..)| *w).collect(),
    )
}

impl Operation {
    /// The shard whose owner serves this operation; `None`: any node (a reservation whose
    /// id names no single shard is the saga's, which the edge coordinates).
    pub(super) fn shard(&self) -> Option<Shard> {
        match self {
            Self::Reserve { request, .. } | Self::DryRun { request } => request.shard(),
            Self::Settle { id, .. }
            | Self::Extend { id, .. }
            | Self::Read { id }
            | Self::Reshape { id, .. } => match ReservationId(*id).home() {
                Some(Home::One(shard)) => Some(shard),
                _ => None,
            },
            Self::Order(step) => step.shard(),
            Self::Cart(step) => Some(step.shard()),
            Self::Availability { product, .. }
            | Self::Retire { product }
            | Self::Return { product, .. }
            | Self::Change {
                change: LineChange { product, .. },
                ..
            }
            | Self::Transfer {
                moved: Move { product, .. },
                ..
            } => Some(shard_of(*product)),
            Self::Changes { changes } => {
                let mut shards = changes.iter().map(|c| shard_of(c.product));
                let first = shards.next()?;
                shards.all(|s| s == first).then_some(first)
            }
            // A part's items are all in its shard, or it is no part.
            Self::Part {
                shard,
                step: Step::Reserve(hold) | Step::DryRun(hold),
                ..
            } => (hold.shard() == Some(*shard)).then_some(*shard),
            Self::Part {
                shard,
                step: Step::Settle {
                    lines: Some(lines), ..
                },
                ..
            } => lines
                .iter()
                .all(|(_, p, _)| shard_of(*p) == *shard)
                .then_some(*shard),
            Self::Part { shard, .. } => Some(*shard),
        }
    }

    /// The products and warehouses the operation names, which the owner must know.
    pub(super) fn named(&self) -> (Vec<i64>, Vec<i64>) {
        match self {
            Self::Reserve { request, .. }
            | Self::DryRun { request }
            | Self::Part {
                step: Step::Reserve(request) | Step::DryRun(request),
                ..
            } => request.named(),
            Self::Settle {
                lines: Some(lines), ..
            }
            | Self::Part {
                step: Step::Settle {
                    lines: Some(lines), ..
                },
                ..
            } => named_lines(lines),
            Self::Availability { product, .. } | Self::Retire { product } => {
                (vec![*product], Vec::new())
            }
            Self::Return {
                product, warehouse, ..
            } => (vec![*product], vec![*warehouse]),
            Self::Order(step) => (step.named(), Vec::new()),
            Self::Cart(step) => (step.named(), Vec::new()),
            Self::Reshape { items, .. } => (items.iter().map(|(p, _)| *p).collect(), Vec::new()),
            Self::Change { change, .. } => (vec![change.product], vec![change.warehouse]),
            Self::Changes { changes } => (
                changes.iter().map(|c| c.product).collect(),
                changes.iter().map(|c| c.warehouse).collect(),
            ),
            Self::Transfer { moved, .. } => (vec![moved.product], vec![moved.from, moved.to]),
            _ => (Vec::new(), Vec::new()),
        }
    }
}
