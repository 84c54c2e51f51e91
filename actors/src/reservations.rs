//! Multi-line reservations: all-or-nothing reserve, then exactly one of commit, release
//! or expire.
//!
//! The state machine is `pending -> committed | released | expired`. A transition first
//! claims the reservation (so a racing commit and release cannot both proceed), then
//! settles each line, then journals the new status. If a line cannot be reached mid-way,
//! the lines already settled are remembered and the reservation stays pending, so a retry
//! (or the expiry timer) finishes the rest and nothing is settled twice.
//!
//! While pending, a reservation can also change without ending: it can be extended
//! (`extend`, `hand_over` to a new reference), settled in parts (`settle_part`: items then
//! count `committed` and `released`), or reshaped to hold exactly other quantities
//! (`reshape`, what a held cart does). These claim it the same way, so they never race a
//! transition. A commit is refused before any line is touched if a line has not yet
//! received what it holds (a backorder): only what is on hand can leave.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tokio::time::Instant;

use crate::allocation::{Allocator, Holds};
use crate::error::{CoreError, Result};
use crate::expiry::{Due, ExpiryHandle};
use crate::journal::{Journal, Lsn, Record, ReservationRecord};
use crate::line_state::LineOp;
use crate::registry::Registry;
use crate::settled::SettledTail;
use crate::types::{LineKey, ProductId, Quantity, ReservationId, ShopId};

pub use crate::types::{ItemRequest, ReservationStatus, ReservedItem};
use crate::warehouses::Warehouses;

/// A request to reserve.
#[derive(Clone, Debug)]
pub struct ReservationRequest {
    pub items: Vec<ItemRequest>,
    pub ttl: Duration,
    pub reference: Option<String>,
    /// Allocate only from this shop's warehouses (pinned items included).
    pub shop_id: Option<ShopId>,
    /// Per product, how many units may be held beyond what is available, over all its
    /// warehouses (backorders, filled by the next receipts); absent: none.
    pub backorder_limits: BTreeMap<ProductId, u64>,
}

/// A reservation as the edge shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub id: ReservationId,
    pub status: ReservationStatus,
    pub items: Vec<ReservedItem>,
    pub reference: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Reservation {
    fn record(&self) -> Record {
        self.record_of(false)
    }

    fn record_of(&self, created: bool) -> Record {
        Record::Reservation(ReservationRecord {
            id: self.id,
            created,
            status: self.status,
            items: self.items.clone(),
            reference: self.reference.clone(),
            expires_at: self.expires_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// A claimed transition; if it is dropped before it finishes, the claim is given back.
struct Claimed<'a> {
    reservations: &'a Reservations,
    id: ReservationId,
    held: bool,
}

impl Claimed<'_> {
    /// Gives the claim back without a transition: the reservation is as it was, and
    /// claimable again at once.
    fn abandon(mut self) {
        self.held = false;
        self.reservations.set_settling(self.id, false);
    }

    /// The transition has booked its outcome (its finish step clears the claim).
    fn finished(mut self) {
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

struct Entry {
    reservation: Reservation,
    /// `expires_at` on the tokio clock (which tests can pause).
    deadline: Instant,
    /// A transition has claimed this reservation and is settling its lines.
    settling: bool,
    /// Per item: already settled on its line by an earlier, interrupted transition.
    settled: Vec<bool>,
}

impl Entry {
    /// An id being reserved right now: claimed, holding nothing yet.
    fn placeholder(id: ReservationId) -> Self {
        let now = crate::types::now();
        Self {
            reservation: Reservation {
                id,
                status: ReservationStatus::Pending,
                items: Vec::new(),
                reference: None,
                expires_at: now,
                created_at: now,
                updated_at: now,
            },
            deadline: Instant::now(),
            settling: true,
            settled: Vec::new(),
        }
    }

    /// Whether this is [`Entry::placeholder`]: nothing to show yet.
    fn is_placeholder(&self) -> bool {
        self.settling && self.reservation.items.is_empty()
    }
}

/// The answer while another change to the same reservation is under way.
fn busy() -> CoreError {
    CoreError::Unavailable("the reservation is being settled right now; retry shortly".into())
}

/// Reservations and their timers. Cheap to clone.
#[derive(Clone)]
pub struct Reservations(Arc<ReservationsInner>);

pub(crate) struct ReservationsInner {
    registry: Arc<Registry>,
    warehouses: Arc<Warehouses>,
    journal: Arc<dyn Journal>,
    table: DashMap<ReservationId, Entry>,
    expiry: ExpiryHandle,
    /// Which settled reservations stay readable in memory (by count and by time).
    settled: SettledTail,
    /// Told of every reservation that expires (the edge expires orders with it).
    on_expired: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Reservation>>,
    outcomes: Outcomes,
    /// The home a new reservation's id names, from its first product.
    home_of: fn(crate::ProductId) -> u16,
}

/// How reservations ended up, counted since start (for operators' metrics).
#[derive(Default)]
struct Outcomes {
    created: AtomicU64,
    refused: AtomicU64,
    committed: AtomicU64,
    released: AtomicU64,
    expired: AtomicU64,
}

/// A copy of [`Outcomes`]: reservations created and refused, and settled each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    pub created: u64,
    pub refused: u64,
    pub committed: u64,
    pub released: u64,
    pub expired: u64,
}

/// How the settled tail is bounded (see `settled.rs`).
#[derive(Clone, Copy, Debug)]
pub struct SettledLimits {
    /// At most this many settled reservations in memory.
    pub budget: usize,
    /// None kept longer than this.
    pub retention: Duration,
}

/// How often the settled tail lets go of those whose time is up.
const SETTLED_TRIM_EVERY: Duration = Duration::from_secs(1);

/// How long an interrupted transition waits before the expiry timer retries it.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Reservations {
    pub(crate) fn new(
        registry: Arc<Registry>,
        warehouses: Arc<Warehouses>,
        journal: Arc<dyn Journal>,
        settled: SettledLimits,
        home_of: fn(crate::ProductId) -> u16,
    ) -> Self {
        let this = Self(Arc::new_cyclic(|weak| ReservationsInner {
            registry,
            warehouses,
            settled: SettledTail::new(settled.budget, settled.retention, journal.durable()),
            journal,
            table: DashMap::new(),
            expiry: ExpiryHandle::start(Self::on_due(weak.clone())),
            on_expired: std::sync::OnceLock::new(),
            outcomes: Outcomes::default(),
            home_of,
        }));
        this.trim_settled_now_and_then();
        this
    }

    /// Lets the settled tail's oldest go once their time is up, also while nothing new
    /// settles; the task ends with the reservations.
    fn trim_settled_now_and_then(&self) {
        let owner = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SETTLED_TRIM_EVERY);
            loop {
                tick.tick().await;
                let Some(inner) = owner.upgrade() else {
                    return;
                };
                let reservations = Self(inner);
                for id in reservations.0.settled.expired() {
                    reservations.forget(id);
                }
            }
        });
    }

    /// `id` settled by the record at `lsn`: its timer goes, and it joins the settled tail
    /// (which may let older ones go).
    fn settled(&self, id: ReservationId, lsn: Lsn) {
        self.0.expiry.cancel(id);
        for gone in self.0.settled.push(id, lsn) {
            self.forget(gone);
        }
    }

    /// Settled reservations in memory now.
    pub fn settled_in_memory(&self) -> usize {
        self.0.settled.len()
    }

    /// What the expiry task does when a reservation's time comes; false once the
    /// reservations are gone.
    fn on_due(owner: std::sync::Weak<ReservationsInner>) -> impl Fn(ReservationId, Due) -> bool {
        move |id, due| {
            let Some(inner) = owner.upgrade() else {
                return false;
            };
            let reservations = Self(inner);
            match due {
                // Settling awaits the lines; do it beside the timer loop, not in it.
                Due::Expire => {
                    tokio::spawn(async move { reservations.expire(id).await });
                }
            }
            true
        }
    }

    /// Reserves every item or none. Answers the reservation and the Lsn to await.
    ///
    /// Runs in a task of the core's own (as commit and release do), so that a caller that
    /// goes away cannot leave holds taken and not rolled back.
    pub async fn reserve(&self, request: ReservationRequest) -> Result<(Reservation, Lsn)> {
        let this = self.clone();
        crate::to_the_end(async move { this.reserve_to_end(request).await }).await
    }

    async fn reserve_to_end(&self, request: ReservationRequest) -> Result<(Reservation, Lsn)> {
        if request.items.is_empty() {
            return Err(CoreError::InvalidQuantity(
                "a reservation needs at least one item".into(),
            ));
        }
        let home = (self.0.home_of)(request.items[0].product_id);
        let id = ReservationId::homed(crate::Home::One(home));
        let allocator = Allocator {
            registry: &self.0.registry,
            warehouses: &self.0.warehouses,
            id,
            shop_id: request.shop_id,
            backorder_limits: &request.backorder_limits,
        };
        let mut holds = Holds::default();
        if let Err(refusal) = allocator.reserve_all(&request.items, &mut holds).await {
            self.0.outcomes.refused.fetch_add(1, Ordering::Relaxed);
            let stranded = holds.release_all(id).await;
            if !stranded.is_empty() {
                // Pending with no time left: the expiry timer releases them once it can.
                self.insert(id, stranded, request.reference, Duration::ZERO);
            }
            return Err(refusal);
        }
        let lines_lsn = holds.lsn;
        let (reservation, lsn) = self.insert(id, holds.items(), request.reference, request.ttl);
        self.0.outcomes.created.fetch_add(1, Ordering::Relaxed);
        Ok((reservation, lsn.max(lines_lsn)))
    }

    /// Reserves every item or none under `id`, chosen by the caller: in cluster mode, one
    /// shard's part of a reservation whose products are in several shards. Asked again
    /// for the same id, it answers the reservation it made and holds nothing more (the
    /// record is journaled again, so the answer waits for it to be durable). An id that
    /// was refused, released or expired (a tombstone, see [`Self::release_or_bury`]) is
    /// refused: a request that arrives late never holds stock no one will release.
    pub async fn reserve_as(
        &self,
        id: ReservationId,
        request: ReservationRequest,
    ) -> Result<(Reservation, Lsn)> {
        let this = self.clone();
        crate::to_the_end(async move { this.reserve_as_to_end(id, request).await }).await
    }

    async fn reserve_as_to_end(
        &self,
        id: ReservationId,
        request: ReservationRequest,
    ) -> Result<(Reservation, Lsn)> {
        if request.items.is_empty() {
            return Err(CoreError::InvalidQuantity(
                "a reservation needs at least one item".into(),
            ));
        }
        match self.0.table.entry(id) {
            dashmap::Entry::Occupied(known) => {
                let entry = known.get();
                if entry.settling {
                    return Err(busy());
                }
                return match entry.reservation.status {
                    ReservationStatus::Pending => {
                        let reservation = entry.reservation.clone();
                        drop(known);
                        let lsn = self.0.journal.append(vec![reservation.record()]);
                        Ok((reservation, lsn))
                    }
                    status => Err(CoreError::ReservationNotPending { status }),
                };
            }
            // Claimed while its lines are asked: a release of the same id meanwhile
            // waits (it is told to retry) instead of burying it under a live hold.
            dashmap::Entry::Vacant(vacant) => {
                vacant.insert(Entry::placeholder(id));
            }
        }
        let allocator = Allocator {
            registry: &self.0.registry,
            warehouses: &self.0.warehouses,
            id,
            shop_id: request.shop_id,
            backorder_limits: &request.backorder_limits,
        };
        let mut holds = Holds::default();
        if let Err(refusal) = allocator.reserve_all(&request.items, &mut holds).await {
            self.0.outcomes.refused.fetch_add(1, Ordering::Relaxed);
            let stranded = holds.release_all(id).await;
            self.0.table.remove(&id);
            if stranded.is_empty() {
                self.bury(id, request.reference);
            } else {
                self.insert(id, stranded, request.reference, Duration::ZERO);
            }
            return Err(refusal);
        }
        let lines_lsn = holds.lsn;
        let (reservation, lsn) = self.insert(id, holds.items(), request.reference, request.ttl);
        self.0.outcomes.created.fetch_add(1, Ordering::Relaxed);
        Ok((reservation, lsn.max(lines_lsn)))
    }

    /// Releases a reservation; one never seen here is buried instead: recorded as
    /// released with nothing held, so a reserve of the same id that arrives later is
    /// refused ([`Self::reserve_as`]). The caller knows the id was not settled before
    /// (the store has no record of it).
    pub async fn release_or_bury(&self, id: ReservationId) -> Result<(Reservation, Lsn)> {
        if !self.0.table.contains_key(&id)
            && let Some(buried) = self.bury(id, None)
        {
            return Ok(buried);
        }
        self.release(id).await
    }

    /// Records `id` as released, holding nothing, unless it is known here. Kept in memory
    /// as long as settled reservations are, and in the store for good.
    fn bury(&self, id: ReservationId, reference: Option<String>) -> Option<(Reservation, Lsn)> {
        let now = crate::types::now();
        let reservation = Reservation {
            id,
            status: ReservationStatus::Released,
            items: Vec::new(),
            reference,
            expires_at: now,
            created_at: now,
            updated_at: now,
        };
        match self.0.table.entry(id) {
            dashmap::Entry::Occupied(_) => return None,
            dashmap::Entry::Vacant(vacant) => {
                vacant.insert(Entry {
                    reservation: reservation.clone(),
                    deadline: Instant::now(),
                    settling: false,
                    settled: Vec::new(),
                });
            }
        }
        let lsn = self.0.journal.append(vec![reservation.record_of(true)]);
        self.settled(id, lsn);
        Some((reservation, lsn))
    }

    /// The items a reservation of `request` would hold now, or its refusal, holding
    /// nothing and journaling nothing (`dry_run`).
    pub async fn dry_run(&self, request: &ReservationRequest) -> Result<Vec<ReservedItem>> {
        if request.items.is_empty() {
            return Err(CoreError::InvalidQuantity(
                "a reservation needs at least one item".into(),
            ));
        }
        let allocator = Allocator {
            registry: &self.0.registry,
            warehouses: &self.0.warehouses,
            id: ReservationId::new(),
            shop_id: request.shop_id,
            backorder_limits: &request.backorder_limits,
        };
        allocator.preview(&request.items).await
    }

    fn insert(
        &self,
        id: ReservationId,
        items: Vec<ReservedItem>,
        reference: Option<String>,
        ttl: Duration,
    ) -> (Reservation, Lsn) {
        let now = crate::types::now();
        let reservation = Reservation {
            id,
            status: ReservationStatus::Pending,
            items,
            reference,
            expires_at: now + ttl,
            created_at: now,
            updated_at: now,
        };
        let lsn = self.0.journal.append(vec![reservation.record_of(true)]);
        self.track(reservation.clone(), Instant::now() + ttl);
        (reservation, lsn)
    }

    fn track(&self, reservation: Reservation, deadline: Instant) {
        let id = reservation.id;
        let settled = reservation.items.iter().map(|i| i.held() == 0).collect();
        self.0.table.insert(
            id,
            Entry {
                reservation,
                deadline,
                settling: false,
                settled,
            },
        );
        self.0.expiry.schedule(id, deadline, Due::Expire);
    }

    /// How many reservations were created and refused, and settled each way, since start.
    pub fn outcomes(&self) -> OutcomeCounts {
        let o = &self.0.outcomes;
        OutcomeCounts {
            created: o.created.load(Ordering::Relaxed),
            refused: o.refused.load(Ordering::Relaxed),
            committed: o.committed.load(Ordering::Relaxed),
            released: o.released.load(Ordering::Relaxed),
            expired: o.expired.load(Ordering::Relaxed),
        }
    }

    /// Sends every reservation that expires from now on to `listener` (set once).
    pub fn on_expired(&self, listener: tokio::sync::mpsc::UnboundedSender<Reservation>) {
        let _ = self.0.on_expired.set(listener);
    }

    /// Takes back a pending reservation from the store at start. Its holds must already be
    /// in the lines' seeds. One already past `expires_at` is expired at once (journaled).
    pub fn restore(&self, reservation: Reservation) {
        let left = (reservation.expires_at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        self.track(reservation, Instant::now() + left);
    }

    /// The reservation, while it is pending or recently settled.
    pub fn get(&self, id: ReservationId) -> Option<Reservation> {
        self.0
            .table
            .get(&id)
            .filter(|e| !e.is_placeholder())
            .map(|e| e.reservation.clone())
    }

    /// How many reservations are pending.
    pub fn pending_count(&self) -> usize {
        self.0
            .table
            .iter()
            .filter(|e| e.reservation.status == ReservationStatus::Pending && !e.is_placeholder())
            .count()
    }

    /// Every pending reservation.
    pub fn pending(&self) -> Vec<Reservation> {
        self.0
            .table
            .iter()
            .filter(|e| e.reservation.status == ReservationStatus::Pending && !e.is_placeholder())
            .map(|e| e.reservation.clone())
            .collect()
    }

    /// Stock leaves: each line's `on_hand` and `reserved` drop by the held quantity.
    pub async fn commit(&self, id: ReservationId) -> Result<(Reservation, Lsn)> {
        self.transition(id, ReservationStatus::Committed).await
    }

    /// The held stock is available again.
    pub async fn release(&self, id: ReservationId) -> Result<(Reservation, Lsn)> {
        self.transition(id, ReservationStatus::Released).await
    }

    /// Moves a pending reservation's `expires_at` to `ttl` from now, and its timer with it.
    /// One whose time has already come is not revived: it answers not pending (expired).
    pub fn extend(&self, id: ReservationId, ttl: Duration) -> Result<(Reservation, Lsn)> {
        self.renew(id, ttl, None)
    }

    /// Extends a pending reservation and gives it a new `reference`: the way a cart's hold
    /// becomes an order's, with no moment in which its stock is free.
    pub fn hand_over(
        &self,
        id: ReservationId,
        ttl: Duration,
        reference: String,
    ) -> Result<(Reservation, Lsn)> {
        self.renew(id, ttl, Some(reference))
    }

    fn renew(
        &self,
        id: ReservationId,
        ttl: Duration,
        reference: Option<String>,
    ) -> Result<(Reservation, Lsn)> {
        let mut entry = self
            .0
            .table
            .get_mut(&id)
            .ok_or(CoreError::ReservationNotFound)?;
        let now = Instant::now();
        if entry.reservation.status != ReservationStatus::Pending || now >= entry.deadline {
            let status = match entry.reservation.status {
                ReservationStatus::Pending => ReservationStatus::Expired,
                settled => settled,
            };
            return Err(CoreError::ReservationNotPending { status });
        }
        if entry.settling {
            return Err(busy());
        }
        entry.deadline = now + ttl;
        let updated_at = crate::types::now();
        entry.reservation.expires_at = updated_at + ttl;
        entry.reservation.updated_at = updated_at;
        if let Some(reference) = reference {
            entry.reservation.reference = Some(reference);
        }
        let reservation = entry.reservation.clone();
        drop(entry);
        let lsn = self.0.journal.append(vec![reservation.record()]);
        self.0.expiry.schedule(id, now + ttl, Due::Expire);
        Ok((reservation, lsn))
    }

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
        let this = self.clone();
        crate::to_the_end(async move {
            this.reshape_to_end(id, wanted, ttl, shop_id, &backorder_limits)
                .await
        })
        .await
    }

    async fn reshape_to_end(
        &self,
        id: ReservationId,
        wanted: Vec<(ProductId, u64)>,
        ttl: Duration,
        shop_id: Option<ShopId>,
        backorder_limits: &BTreeMap<ProductId, u64>,
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
            backorder_limits,
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
        let this = self.clone();
        crate::to_the_end(async move { this.settle_part_to_end(id, parts, commit).await }).await
    }

    async fn settle_part_to_end(
        &self,
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

    /// Refuses, before any line is touched, a commit of units not yet on hand: a commit
    /// is all or nothing, and a line's filled part only grows while its hold stays.
    fn backordered(&self, id: ReservationId, wanted: &[(LineKey, u64)]) -> Option<CoreError> {
        wanted.iter().find_map(|&(key, qty)| {
            let filled = self.0.registry.resident(key)?.filled(id);
            (filled < qty).then(|| CoreError::Backordered {
                product_id: key.product_id,
                backordered: qty - filled,
            })
        })
    }

    fn count_end(&self, status: ReservationStatus) {
        let o = &self.0.outcomes;
        let counter = match status {
            ReservationStatus::Committed => &o.committed,
            ReservationStatus::Released => &o.released,
            ReservationStatus::Expired => &o.expired,
            ReservationStatus::Pending => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn set_settling(&self, id: ReservationId, settling: bool) {
        if let Some(mut entry) = self.0.table.get_mut(&id) {
            entry.settling = settling;
        }
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

    /// Forgets, without settling or journaling anything, the reservations not being
    /// settled now that hold stock of a product `gone` names (cluster mode: its shard is
    /// another node's now, which restores them from the store). Answers how many.
    pub fn forget_where(&self, gone: impl Fn(ProductId) -> bool) -> usize {
        let before = self.0.table.len();
        self.0.table.retain(|_, entry| {
            entry.settling || !entry.reservation.items.iter().any(|i| gone(i.product_id))
        });
        before.saturating_sub(self.0.table.len())
    }

    pub(crate) fn forget(&self, id: ReservationId) {
        self.0.table.remove_if(&id, |_, e| {
            e.reservation.status != ReservationStatus::Pending
        });
    }

    /// Settles a pending reservation on every line, in a task of the core's own: the
    /// caller (an HTTP request whose client may hang up) only awaits the answer, so a
    /// reservation is never left half-settled by a caller going away.
    async fn transition(
        &self,
        id: ReservationId,
        target: ReservationStatus,
    ) -> Result<(Reservation, Lsn)> {
        let this = self.clone();
        crate::to_the_end(async move { this.transition_to_end(id, target).await }).await
    }

    async fn transition_to_end(
        &self,
        id: ReservationId,
        target: ReservationStatus,
    ) -> Result<(Reservation, Lsn)> {
        let (effective, items, mut settled) = self.claim(id, target)?;
        let claimed = Claimed {
            reservations: self,
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
    async fn claim_pending(&self, id: ReservationId) -> Result<(Vec<ReservedItem>, Claimed<'_>)> {
        let (effective, items, _) = self.claim(id, ReservationStatus::Pending)?;
        let claimed = Claimed {
            reservations: self,
            id,
            held: true,
        };
        if effective == ReservationStatus::Expired {
            claimed.abandon();
            self.transition_to_end(id, ReservationStatus::Expired)
                .await?;
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
