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

use crate::error::{CoreError, Result};
use crate::expiry::{Due, ExpiryHandle};
use crate::journal::{Journal, Lsn, Record, ReservationRecord};
use crate::registry::Registry;
use crate::settled::SettledTail;
use crate::types::{ProductId, ReservationId, ShopId};

mod create;
mod parts;
mod reshape;
mod settle;

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
    /// Runs `change` in a task of the core's own and awaits its answer. Every change that
    /// asks lines more than once runs so: a caller that goes away (an HTTP client hanging
    /// up) drops only the wait, so no reservation is left with holds taken and not rolled
    /// back, or half-settled.
    async fn to_end<T, F>(&self, change: impl FnOnce(Self) -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        crate::to_the_end(change(self.clone())).await
    }

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
}
