//! Carts, as journaled state: every open cart is in memory behind its own lock, and each
//! change (an item set or removed, the hold reshaped, the checkout, the deletion) is
//! journaled as the cart's new state in the same flush group as the stock it moved and,
//! for a checkout, the order it placed. After any crash either all of a change is stored
//! or none of it: a checked-out cart always knows its order, and an order is never placed
//! twice for one cart. A change costs what a reservation change costs: no query and no
//! transaction of its own.
//!
//! A held cart (`hold: true`) keeps its items reserved through one pending reservation
//! (reference `cart:<id>`) that every change reshapes to exactly the cart's items, all or
//! nothing. A hold that runs out is an expired reservation: the core lets its stock go and
//! the cart stays open. Checkout hands the reservation over to the order.
//!
//! Checked-out and deleted carts leave memory once their last change is durable (the store
//! answers for them from then on); a deleted cart stays in the store as a hidden row.
//!
//! Lock order: a cart's lock, then the journal's flush group (never the other way), so a
//! request holding a group never waits on a cart.

mod changes;
pub mod queries;

pub use changes::{CartError, ItemChange};
pub(crate) use changes::{must_be_open, quantity, with_change};

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::Serialize;
use stockline_actors::{Core, DurableWatch, Lsn, ProductId, Reservation, ReservationId};
use stockline_actors::{ReservationStatus, types::ShopId};
use tokio::sync::{Mutex, OwnedMutexGuard};
use uuid::Uuid;

use crate::cluster::{Shard, cart_shard};
use crate::store::records::{Buffer, CartRecord, StoreRecord};

/// The most open carts one customer may have, and products one cart may hold.
pub const MAX_OPEN_CARTS: usize = 20;
pub const MAX_ITEMS: usize = 100;

/// Where a cart is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CartStatus {
    Open,
    /// Became an order (`order_id`).
    CheckedOut,
    /// Deleted by its customer: answered as unknown.
    Deleted,
}

impl CartStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::CheckedOut => "checked_out",
            Self::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Open, Self::CheckedOut, Self::Deleted]
            .into_iter()
            .find(|status| status.as_str() == s)
    }
}

/// One product in a cart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CartLine {
    pub quantity: u64,
    /// The price when the product was put in the cart.
    pub unit_price_cents: i64,
}

/// A cart.
#[derive(Clone, Debug)]
pub struct Cart {
    pub id: Uuid,
    pub user_id: i64,
    pub shop_id: Option<ShopId>,
    pub status: CartStatus,
    pub hold: bool,
    /// The reservation holding a held cart's items (it may have run out since).
    pub reservation_id: Option<ReservationId>,
    /// Cluster mode: the reservations holding a held cart's items instead, one per shard
    /// they are in (each on its shard's owner; they may have run out since).
    pub parts: Vec<ReservationId>,
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// The order a checked-out cart became.
    pub order_id: Option<Uuid>,
    pub items: BTreeMap<ProductId, CartLine>,
    /// Counts the cart's changes (the store keeps the highest).
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Cart {
    /// The reference its hold's reservation carries.
    pub fn reference(&self) -> String {
        format!("cart:{}", self.id)
    }

    /// Its reservation, if that still holds stock as the cart's.
    pub fn held(&self, core: &Core) -> Option<Reservation> {
        let reference = self.reference();
        core.reservations().get(self.reservation_id?).filter(|r| {
            r.status == ReservationStatus::Pending && r.reference.as_deref() == Some(&reference)
        })
    }

    fn record(&self) -> StoreRecord {
        let items: Vec<serde_json::Value> = self
            .items
            .iter()
            .map(|(product_id, line)| {
                serde_json::json!({
                    "product_id": product_id,
                    "quantity": line.quantity,
                    "unit_price_cents": line.unit_price_cents,
                })
            })
            .collect();
        StoreRecord::Cart(CartRecord {
            id: self.id,
            user_id: self.user_id,
            shop_id: self.shop_id,
            status: self.status.as_str(),
            hold: self.hold,
            reservation_id: self.reservation_id.map(|r| r.0),
            hold_parts: self.parts.iter().map(|r| r.0).collect(),
            hold_expires_at: self.hold_expires_at,
            order_id: self.order_id,
            items: serde_json::Value::Array(items).to_string(),
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// One cart in memory, behind its lock.
pub struct CartEntry {
    cart: Arc<Mutex<Cart>>,
    user_id: i64,
    /// Open (counts towards [`MAX_OPEN_CARTS`]); kept apart from the lock for counting.
    open: AtomicBool,
    /// The Lsn of its newest record: it may leave memory once this is durable.
    last_lsn: AtomicU64,
}

impl CartEntry {
    pub async fn lock(&self) -> OwnedMutexGuard<Cart> {
        self.cart.clone().lock_owned().await
    }
}

/// The carts in memory: every open one, and closed ones until their last change is
/// durable.
pub struct Carts {
    slots: DashMap<Uuid, Arc<CartEntry>>,
    /// Cart ids in memory per customer (for counting and listing).
    by_user: DashMap<i64, HashSet<Uuid>>,
    journal: Arc<Buffer>,
    durable: DurableWatch,
}

impl Carts {
    pub fn new(journal: Arc<Buffer>) -> Self {
        Self {
            slots: DashMap::new(),
            by_user: DashMap::new(),
            durable: journal.watch(),
            journal,
        }
    }

    /// Loads every open cart from the store.
    pub async fn load(pool: &sqlx::PgPool, journal: Arc<Buffer>) -> Result<Self, sqlx::Error> {
        let carts = Self::new(journal);
        for cart in queries::open(pool).await? {
            carts.insert(cart, 0);
        }
        Ok(carts)
    }

    /// Cluster mode: loads the open carts of the customers whose shard is in `shards`
    /// (claimed by this node); answers how many.
    pub async fn load_of(
        &self,
        pool: &sqlx::PgPool,
        shards: &HashSet<Shard>,
    ) -> Result<usize, sqlx::Error> {
        let mut loaded = 0;
        for cart in queries::open(pool).await? {
            if shards.contains(&cart_shard(cart.user_id)) && !self.slots.contains_key(&cart.id) {
                self.insert(cart, 0);
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    /// Drops from memory the carts of the customers whose shard is in `shards` (no longer
    /// this node's), writing nothing.
    pub fn forget(&self, shards: &HashSet<Shard>) {
        self.slots
            .retain(|_, slot| !shards.contains(&cart_shard(slot.user_id)));
        self.by_user
            .retain(|user, _| !shards.contains(&cart_shard(*user)));
    }

    fn slot(&self, cart: Cart, lsn: Lsn) -> Arc<CartEntry> {
        Arc::new(CartEntry {
            user_id: cart.user_id,
            open: AtomicBool::new(cart.status == CartStatus::Open),
            last_lsn: AtomicU64::new(lsn),
            cart: Arc::new(Mutex::new(cart)),
        })
    }

    fn insert(&self, cart: Cart, lsn: Lsn) {
        self.by_user
            .entry(cart.user_id)
            .or_default()
            .insert(cart.id);
        self.slots.insert(cart.id, self.slot(cart, lsn));
    }

    /// Journals `cart`'s new state (its version counted up); answers the Lsn.
    pub(crate) fn save(&self, slot: &CartEntry, cart: &mut Cart) -> Lsn {
        cart.version += 1;
        cart.updated_at = stockline_actors::types::now();
        let lsn = self.journal.push([cart.record()]);
        slot.open
            .store(cart.status == CartStatus::Open, Ordering::Release);
        slot.last_lsn.store(lsn, Ordering::Release);
        lsn
    }

    /// A new open cart for `user_id`, journaled; refused past [`MAX_OPEN_CARTS`].
    pub fn create(
        &self,
        user_id: i64,
        shop_id: Option<ShopId>,
        hold: bool,
    ) -> Result<(Cart, Lsn), CartError> {
        // The customer's entry stays locked while counting and inserting: two creates at
        // once cannot both take the last place.
        let mut mine = self.by_user.entry(user_id).or_default();
        let open = mine
            .iter()
            .filter(|id| {
                self.slots
                    .get(*id)
                    .is_some_and(|s| s.open.load(Ordering::Acquire))
            })
            .count();
        if open >= MAX_OPEN_CARTS {
            return Err(CartError::TooManyOpen(open));
        }
        let now = stockline_actors::types::now();
        let cart = Cart {
            id: Uuid::now_v7(),
            user_id,
            shop_id,
            status: CartStatus::Open,
            hold,
            reservation_id: None,
            parts: Vec::new(),
            hold_expires_at: None,
            order_id: None,
            items: BTreeMap::new(),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        mine.insert(cart.id);
        let lsn = self.journal.push([cart.record()]);
        self.slots.insert(cart.id, self.slot(cart.clone(), lsn));
        Ok((cart, lsn))
    }

    /// `user_id`'s cart `id`, from memory or the store; unknown (also another customer's,
    /// or a deleted one) is `NotFound`.
    pub async fn find(
        &self,
        pool: &sqlx::PgPool,
        user_id: i64,
        id: Uuid,
    ) -> Result<Arc<CartEntry>, CartError> {
        if let Some(slot) = self.slots.get(&id).map(|s| s.clone()) {
            return match slot.user_id == user_id {
                true => Ok(slot),
                false => Err(CartError::NotFound),
            };
        }
        match queries::one(pool, id).await? {
            Some(cart) if cart.user_id == user_id && cart.status != CartStatus::Deleted => {
                // Stored, so durable: it may leave memory again at the next sweep. (The
                // two maps are never locked one inside the other.)
                let slot = self
                    .slots
                    .entry(id)
                    .or_insert_with(|| self.slot(cart, 0))
                    .clone();
                self.by_user.entry(user_id).or_default().insert(id);
                Ok(slot)
            }
            _ => Err(CartError::NotFound),
        }
    }

    /// `user_id`'s carts, newest first, `limit` from `offset`, and how many there are:
    /// those in memory as they are now, the rest from the store.
    pub async fn list(
        &self,
        pool: &sqlx::PgPool,
        user_id: i64,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Cart>, i64), sqlx::Error> {
        let ids: Vec<Uuid> = self
            .by_user
            .get(&user_id)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        let mut carts = Vec::with_capacity(ids.len());
        for id in &ids {
            let Some(slot) = self.slots.get(id).map(|s| s.clone()) else {
                continue;
            };
            let cart = slot.cart.lock().await.clone();
            if cart.status != CartStatus::Deleted {
                carts.push(cart);
            }
        }
        let (stored, stored_total) =
            queries::of_user_except(pool, user_id, &ids, limit.saturating_add(offset)).await?;
        let total = stored_total + carts.len() as i64;
        carts.extend(stored);
        carts.sort_unstable_by_key(|c| std::cmp::Reverse((c.created_at, c.id)));
        let page = carts
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(0))
            .collect();
        Ok((page, total))
    }

    /// Lets closed carts whose last change is durable leave memory (the store has them).
    pub fn sweep(&self) {
        let durable = self.durable.current();
        let gone: Vec<(Uuid, i64)> = self
            .slots
            .iter()
            .filter(|s| {
                !s.open.load(Ordering::Acquire) && s.last_lsn.load(Ordering::Acquire) <= durable
            })
            .map(|s| (*s.key(), s.user_id))
            .collect();
        for (id, user_id) in gone {
            // Only if nothing changed it since (a change holds the slot's lock).
            let removed = self.slots.remove_if(&id, |_, slot| {
                slot.cart.try_lock().is_ok()
                    && !slot.open.load(Ordering::Acquire)
                    && slot.last_lsn.load(Ordering::Acquire) <= durable
            });
            if removed.is_some() {
                self.by_user.remove_if_mut(&user_id, |_, ids| {
                    ids.remove(&id);
                    ids.is_empty()
                });
            }
        }
    }

    /// Carts in memory now.
    pub fn resident(&self) -> usize {
        self.slots.len()
    }
}
