//! Making reservations: all or nothing, under a fresh id or one the caller chose (a
//! shard's part of a reservation across shards), a dry run, and burying an id so that a
//! late reserve of it is refused.

use std::time::Duration;

use tokio::time::Instant;

use std::sync::atomic::Ordering;

use super::{Entry, Reservation, ReservationRequest, Reservations, busy};
use crate::allocation::{Allocator, Holds};
use crate::error::{CoreError, Result};
use crate::journal::Lsn;
use crate::types::{ReservationId, ReservationStatus, ReservedItem};

/// A reservation holds something: refused before anything is asked of a line.
fn has_items(request: &ReservationRequest) -> Result<()> {
    match request.items.is_empty() {
        true => Err(CoreError::InvalidQuantity(
            "a reservation needs at least one item".into(),
        )),
        false => Ok(()),
    }
}

impl Reservations {
    /// Reserves every item or none. Answers the reservation and the Lsn to await.
    ///
    /// Runs in a task of the core's own (as commit and release do), so that a caller that
    /// goes away cannot leave holds taken and not rolled back.
    pub async fn reserve(&self, request: ReservationRequest) -> Result<(Reservation, Lsn)> {
        self.to_end(|this| this.hold(request)).await
    }

    async fn hold(self, request: ReservationRequest) -> Result<(Reservation, Lsn)> {
        has_items(&request)?;
        let home = (self.0.home_of)(request.items[0].product_id);
        let id = ReservationId::homed(crate::Home::One(home));
        let holds = match self.allocate(id, &request).await {
            Ok(holds) => holds,
            Err((refusal, stranded)) => {
                if !stranded.is_empty() {
                    // Pending with no time left: the expiry timer releases them once it can.
                    self.insert(id, stranded, request.reference, Duration::ZERO);
                }
                return Err(refusal);
            }
        };
        Ok(self.created(id, holds, request))
    }

    /// Holds every item of `request` under `id`, or none: refused, what was taken is given
    /// back, and what could not be given back (stranded) is answered with the refusal.
    async fn allocate(
        &self,
        id: ReservationId,
        request: &ReservationRequest,
    ) -> std::result::Result<Holds, (CoreError, Vec<ReservedItem>)> {
        let allocator = Allocator {
            registry: &self.0.registry,
            warehouses: &self.0.warehouses,
            id,
            shop_id: request.shop_id,
            backorder_limits: &request.backorder_limits,
        };
        let mut holds = Holds::default();
        match allocator.reserve_all(&request.items, &mut holds).await {
            Ok(()) => Ok(holds),
            Err(refusal) => {
                self.0.outcomes.refused.fetch_add(1, Ordering::Relaxed);
                Err((refusal, holds.release_all(id).await))
            }
        }
    }

    /// Records the reservation `holds` make under `id`, pending for the request's ttl.
    fn created(
        &self,
        id: ReservationId,
        holds: Holds,
        request: ReservationRequest,
    ) -> (Reservation, Lsn) {
        let lines_lsn = holds.lsn;
        let (reservation, lsn) = self.insert(id, holds.items(), request.reference, request.ttl);
        self.0.outcomes.created.fetch_add(1, Ordering::Relaxed);
        (reservation, lsn.max(lines_lsn))
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
        self.to_end(move |this| this.hold_as(id, request)).await
    }

    async fn hold_as(
        self,
        id: ReservationId,
        request: ReservationRequest,
    ) -> Result<(Reservation, Lsn)> {
        has_items(&request)?;
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
        match self.allocate(id, &request).await {
            Ok(holds) => Ok(self.created(id, holds, request)),
            Err((refusal, stranded)) => {
                self.0.table.remove(&id);
                if stranded.is_empty() {
                    self.bury(id, request.reference);
                } else {
                    self.insert(id, stranded, request.reference, Duration::ZERO);
                }
                Err(refusal)
            }
        }
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
        has_items(request)?;
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
}
