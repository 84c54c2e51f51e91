//! The state of one stock line and the rules every operation obeys, as plain data and
//! functions. The [`StockLine`](crate::stock_line::StockLine) actor serializes calls to
//! [`LineState::apply`]; keeping the rules here lets tests and the property model drive
//! them without an actor.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::error::{CoreError, Result};
use crate::journal::{LineRecord, MovementKind, MovementRecord, Note, Reference};
use crate::types::{LineKey, MAX_ON_HAND, MAX_QUANTITY, Quantity, ReservationId, TransferId};

/// An operation on one line. Each is all-or-nothing: refused, it changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineOp {
    /// Hold `qty` for a reservation (adds to an existing hold of the same id).
    Reserve { id: ReservationId, qty: Quantity },
    /// Hold `qty` even beyond what is available (a backorder), as long as the units held
    /// beyond it stay within `room` (what the product's backorder limit leaves this line).
    Backorder {
        id: ReservationId,
        qty: Quantity,
        room: u64,
    },
    /// Drop a hold: the stock is available again.
    Release { id: ReservationId },
    /// A hold's stock leaves: `on_hand -= q`, `reserved -= q`.
    Commit { id: ReservationId },
    /// Part of a hold leaves (`commit`) or goes back (`release`); the rest stays held.
    SettlePart {
        id: ReservationId,
        qty: Quantity,
        commit: bool,
    },
    /// Like release, recorded as an expiry.
    Expire { id: ReservationId },
    /// Change `on_hand` by `delta` (`receipt`, `damage`, ... in `reason`).
    Adjust {
        delta: i64,
        reason: String,
        note: Option<Arc<Note>>,
    },
    /// Stock sold earlier comes back (a paid order cancelled). Settles accepted work, so
    /// unlike `Adjust` it is never refused for load; journaled as an `adjust` movement
    /// with reason `return`.
    Return { qty: Quantity },
    /// Set `on_hand` (a count); with `expected_version`, only if the line is at it.
    SetLevel {
        on_hand: u64,
        expected_version: Option<u64>,
        reason: String,
        note: Option<Arc<Note>>,
    },
    /// Send available stock to another line.
    TransferOut {
        id: TransferId,
        qty: Quantity,
        note: Option<Arc<Note>>,
    },
    /// Receive stock from another line. `compensating` puts back a transfer-out whose
    /// receiving side refused, so it is taken even by an inactive line.
    TransferIn {
        id: TransferId,
        qty: Quantity,
        compensating: bool,
        note: Option<Arc<Note>>,
    },
    /// Set the units kept on hand that are never reserved or sent away.
    SetSafety { safety_stock: u64 },
    /// Follow the warehouse's status. Not a stock change: no version, no record.
    SetActive(bool),
}

impl LineOp {
    /// Whether this op starts new work (refused under backpressure) rather than settling
    /// work already accepted (always taken, so nothing is stranded half-done).
    pub fn is_new_work(&self) -> bool {
        matches!(
            self,
            Self::Reserve { .. }
                | Self::Backorder { .. }
                | Self::Adjust { .. }
                | Self::SetLevel { .. }
                | Self::TransferOut { .. }
                | Self::SetSafety { .. }
        )
    }
}

/// One line's state. Who changes it: only its actor (or a test driving `apply`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineState {
    pub key: LineKey,
    /// Units physically in the warehouse.
    pub on_hand: u64,
    /// Units held by pending reservations; always the sum of `holds`. Above `on_hand`
    /// only by backorders (`reserved <= on_hand + backordered`).
    pub reserved: u64,
    /// Units that stay on hand but are never reserved (nor sent away): `available` leaves
    /// them out.
    pub safety_stock: u64,
    /// Bumped by every accepted stock change; the store keeps only the highest.
    pub version: u64,
    /// The warehouse's status as this line last heard it.
    pub active: bool,
    /// Quantity held per pending reservation.
    pub holds: HashMap<ReservationId, u64>,
    pub updated_at: DateTime<Utc>,
}

/// A consistent read of a line, as the edge shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineSnapshot {
    pub key: LineKey,
    pub on_hand: u64,
    pub reserved: u64,
    pub safety_stock: u64,
    pub version: u64,
    pub active: bool,
    pub updated_at: DateTime<Utc>,
}

impl LineSnapshot {
    pub fn available(&self) -> u64 {
        available(self.on_hand, self.reserved, self.safety_stock)
    }

    /// Units held beyond what is on hand: backorders waiting for receipts.
    pub fn backordered(&self) -> u64 {
        self.reserved.saturating_sub(self.on_hand)
    }

    /// Units held beyond what may be reserved (the safety stock counts as not there): what
    /// the line uses of its product's backorder limit.
    pub fn beyond_available(&self) -> u64 {
        (self.reserved + self.safety_stock).saturating_sub(self.on_hand)
    }
}

/// `on_hand - reserved - safety_stock`, never under 0.
pub fn available(on_hand: u64, reserved: u64, safety_stock: u64) -> u64 {
    on_hand
        .saturating_sub(reserved)
        .saturating_sub(safety_stock)
}

/// What an accepted stock change did: the movement to journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: MovementKind,
    pub quantity: i64,
    pub reference: Reference,
    pub note: Option<Arc<Note>>,
}

impl LineState {
    /// A new, empty line.
    pub fn empty(key: LineKey, active: bool) -> Self {
        Self {
            key,
            on_hand: 0,
            reserved: 0,
            safety_stock: 0,
            version: 0,
            active,
            holds: HashMap::new(),
            updated_at: crate::types::now(),
        }
    }

    pub fn available(&self) -> u64 {
        available(self.on_hand, self.reserved, self.safety_stock)
    }

    pub fn snapshot(&self) -> LineSnapshot {
        LineSnapshot {
            key: self.key,
            on_hand: self.on_hand,
            reserved: self.reserved,
            safety_stock: self.safety_stock,
            version: self.version,
            active: self.active,
            updated_at: self.updated_at,
        }
    }

    /// Repairs a state whose counters drifted from its holds (loaded from a store that
    /// disagrees with itself, or left by a failed actor): `reserved` is set to the sum of
    /// the holds (what is held beyond `on_hand` is backordered). Returns whether anything
    /// changed.
    pub fn repair(&mut self) -> bool {
        let held: u64 = self.holds.values().sum();
        let before = self.reserved;
        self.reserved = held;
        self.assert_invariants();
        before != self.reserved
    }

    /// What is believed of every line after every message, asserted in debug builds and
    /// tests: `reserved` is the sum of the holds (so `reserved <= on_hand + backordered`,
    /// `on_hand` being unsigned never goes under 0).
    pub fn assert_invariants(&self) {
        debug_assert_eq!(
            self.reserved,
            self.holds.values().sum::<u64>(),
            "line {}: reserved is not the sum of its holds",
            self.key
        );
    }

    /// How much of hold `id` the stock on hand covers: holds are filled oldest first
    /// (reservation ids sort by creation), so receipts fill the oldest backorders first.
    pub fn filled(&self, id: ReservationId) -> u64 {
        let held = self.holds.get(&id).copied().unwrap_or(0);
        if self.reserved <= self.on_hand {
            return held;
        }
        let mut older: Vec<_> = self.holds.iter().filter(|(h, _)| **h < id).collect();
        older.sort_unstable();
        let before: u64 = older.iter().map(|(_, q)| **q).sum();
        held.min(self.on_hand.saturating_sub(before))
    }

    /// Applies `op`. Accepted: the state changed, `version` went up by one (for stock
    /// changes) and the movement is returned. Refused: nothing changed.
    pub fn apply(&mut self, op: LineOp, now: DateTime<Utc>) -> Result<Option<Change>> {
        let change = match op {
            LineOp::SetActive(active) => {
                self.active = active;
                return Ok(None);
            }
            LineOp::Reserve { id, qty } => self.reserve(id, qty)?,
            LineOp::Backorder { id, qty, room } => self.backorder(id, qty, room)?,
            LineOp::Release { id } => self.unhold(id, MovementKind::Release)?,
            LineOp::Expire { id } => self.unhold(id, MovementKind::Expire)?,
            LineOp::Commit { id } => self.commit(id)?,
            LineOp::SettlePart { id, qty, commit } => self.settle_part(id, qty, commit)?,
            LineOp::Adjust {
                delta,
                reason,
                note,
            } => self.adjust(delta, reason)?.noted(note),
            LineOp::Return { qty } => {
                self.on_hand = self.checked_receive(qty.get())?;
                change(
                    MovementKind::Adjust,
                    qty.get() as i64,
                    Reference::Reason("return".into()),
                )
            }
            LineOp::SetLevel {
                on_hand,
                expected_version,
                reason,
                note,
            } => self
                .set_level(on_hand, expected_version, reason)?
                .noted(note),
            LineOp::TransferOut { id, qty, note } => self.transfer_out(id, qty)?.noted(note),
            LineOp::TransferIn {
                id,
                qty,
                compensating,
                note,
            } => self.transfer_in(id, qty, compensating)?.noted(note),
            LineOp::SetSafety { safety_stock } => self.set_safety(safety_stock)?,
        };
        self.version += 1;
        self.updated_at = now;
        self.assert_invariants();
        Ok(Some(change))
    }

    fn reserve(&mut self, id: ReservationId, qty: Quantity) -> Result<Change> {
        self.require_active()?;
        self.require_available(qty.get())?;
        self.reserved += qty.get();
        *self.holds.entry(id).or_insert(0) += qty.get();
        Ok(change(
            MovementKind::Reserve,
            qty.get() as i64,
            Reference::Reservation(id),
        ))
    }

    fn backorder(&mut self, id: ReservationId, qty: Quantity, room: u64) -> Result<Change> {
        self.require_active()?;
        let mut after = self.snapshot();
        after.reserved += qty.get();
        if after.beyond_available() > room {
            return Err(CoreError::InsufficientStock {
                product_id: self.key.product_id,
                requested: qty.get(),
                available: self.available()
                    + room.saturating_sub(self.snapshot().beyond_available()),
            });
        }
        self.reserved += qty.get();
        *self.holds.entry(id).or_insert(0) += qty.get();
        Ok(change(
            MovementKind::Reserve,
            qty.get() as i64,
            Reference::Reservation(id),
        ))
    }

    fn unhold(&mut self, id: ReservationId, kind: MovementKind) -> Result<Change> {
        let held = self.holds.remove(&id).ok_or(CoreError::NotHeld)?;
        self.reserved -= held;
        Ok(change(kind, held as i64, Reference::Reservation(id)))
    }

    fn commit(&mut self, id: ReservationId) -> Result<Change> {
        let held = *self.holds.get(&id).ok_or(CoreError::NotHeld)?;
        self.require_filled(id, held)?;
        self.holds.remove(&id);
        self.reserved -= held;
        self.on_hand -= held;
        Ok(change(
            MovementKind::Commit,
            held as i64,
            Reference::Reservation(id),
        ))
    }

    fn settle_part(&mut self, id: ReservationId, qty: Quantity, commit: bool) -> Result<Change> {
        let held = self.holds.get_mut(&id).ok_or(CoreError::NotHeld)?;
        if qty.get() > *held {
            return Err(CoreError::InvalidQuantity(format!(
                "{} asked, {} held",
                qty.get(),
                *held
            )));
        }
        if commit {
            self.require_filled(id, qty.get())?;
        }
        let held = self.holds.get_mut(&id).ok_or(CoreError::NotHeld)?;
        *held -= qty.get();
        if *held == 0 {
            self.holds.remove(&id);
        }
        self.reserved -= qty.get();
        let kind = if commit {
            self.on_hand -= qty.get();
            MovementKind::Commit
        } else {
            MovementKind::Release
        };
        Ok(change(kind, qty.get() as i64, Reference::Reservation(id)))
    }

    /// Only what is on hand can leave: `qty` of hold `id` must be filled.
    fn require_filled(&self, id: ReservationId, qty: u64) -> Result<()> {
        let filled = self.filled(id);
        if qty <= filled {
            Ok(())
        } else {
            Err(CoreError::Backordered {
                product_id: self.key.product_id,
                backordered: qty - filled,
            })
        }
    }

    fn adjust(&mut self, delta: i64, reason: String) -> Result<Change> {
        if delta == 0 || delta.unsigned_abs() > MAX_QUANTITY {
            return Err(CoreError::InvalidQuantity(format!(
                "delta must be non-zero and at most {MAX_QUANTITY} in size, got {delta}"
            )));
        }
        let on_hand = if delta > 0 {
            self.checked_receive(delta as u64)?
        } else {
            // Stock lost or corrected away may eat into the safety stock (it is physical),
            // never into what is reserved.
            let free = self.on_hand.saturating_sub(self.reserved);
            if delta.unsigned_abs() > free {
                return Err(CoreError::InsufficientStock {
                    product_id: self.key.product_id,
                    requested: delta.unsigned_abs(),
                    available: free,
                });
            }
            self.on_hand - delta.unsigned_abs()
        };
        self.on_hand = on_hand;
        Ok(change(
            MovementKind::Adjust,
            delta,
            Reference::Reason(reason),
        ))
    }

    fn set_level(&mut self, on_hand: u64, expected: Option<u64>, reason: String) -> Result<Change> {
        if let Some(expected) = expected.filter(|v| *v != self.version) {
            return Err(CoreError::VersionMismatch {
                expected,
                actual: self.version,
            });
        }
        if on_hand > MAX_QUANTITY {
            return Err(CoreError::InvalidQuantity(format!(
                "on_hand must be at most {MAX_QUANTITY}, got {on_hand}"
            )));
        }
        // A count may not leave less on hand than is held (unless there was already less:
        // backorders), never fewer than before in that case.
        if on_hand < self.reserved && on_hand < self.on_hand {
            return Err(self.insufficient(self.on_hand - on_hand));
        }
        let delta = on_hand as i64 - self.on_hand as i64;
        self.on_hand = on_hand;
        Ok(change(
            MovementKind::Adjust,
            delta,
            Reference::Reason(reason),
        ))
    }

    fn set_safety(&mut self, safety_stock: u64) -> Result<Change> {
        if safety_stock > MAX_QUANTITY {
            return Err(CoreError::InvalidQuantity(format!(
                "safety_stock must be at most {MAX_QUANTITY}, got {safety_stock}"
            )));
        }
        let delta = safety_stock as i64 - self.safety_stock as i64;
        self.safety_stock = safety_stock;
        Ok(change(
            MovementKind::Safety,
            delta,
            Reference::Reason("safety_stock".into()),
        ))
    }

    fn transfer_out(&mut self, id: TransferId, qty: Quantity) -> Result<Change> {
        self.require_active()?;
        self.require_available(qty.get())?;
        self.on_hand -= qty.get();
        Ok(change(
            MovementKind::TransferOut,
            qty.get() as i64,
            Reference::Transfer(id),
        ))
    }

    fn transfer_in(&mut self, id: TransferId, qty: Quantity, compensating: bool) -> Result<Change> {
        if !compensating {
            self.require_active()?;
        }
        self.on_hand = self.checked_receive(qty.get())?;
        Ok(change(
            MovementKind::TransferIn,
            qty.get() as i64,
            Reference::Transfer(id),
        ))
    }

    fn checked_receive(&self, qty: u64) -> Result<u64> {
        self.on_hand
            .checked_add(qty)
            .filter(|v| *v <= MAX_ON_HAND)
            .ok_or(CoreError::LevelOverflow)
    }

    fn require_active(&self) -> Result<()> {
        if self.active {
            Ok(())
        } else {
            Err(CoreError::WarehouseInactive {
                warehouse_id: self.key.warehouse_id,
            })
        }
    }

    fn require_available(&self, requested: u64) -> Result<()> {
        if requested <= self.available() {
            Ok(())
        } else {
            Err(self.insufficient(requested))
        }
    }

    fn insufficient(&self, requested: u64) -> CoreError {
        CoreError::InsufficientStock {
            product_id: self.key.product_id,
            requested,
            available: self.available(),
        }
    }

    /// The line-state record of the current state.
    pub fn record(&self) -> LineRecord {
        LineRecord {
            key: self.key,
            on_hand: self.on_hand,
            reserved: self.reserved,
            safety_stock: self.safety_stock,
            version: self.version,
            updated_at: self.updated_at,
        }
    }

    /// The movement record of a change just applied.
    pub fn movement(&self, change: Change) -> MovementRecord {
        MovementRecord {
            key: self.key,
            kind: change.kind,
            quantity: change.quantity,
            on_hand_after: self.on_hand,
            reserved_after: self.reserved,
            safety_stock_after: self.safety_stock,
            reference: change.reference,
            note: change.note,
            at: self.updated_at,
        }
    }
}

fn change(kind: MovementKind, quantity: i64, reference: Reference) -> Change {
    Change {
        kind,
        quantity,
        reference,
        note: None,
    }
}

impl Change {
    fn noted(self, note: Option<Arc<Note>>) -> Self {
        Self { note, ..self }
    }
}

#[cfg(test)]
#[path = "line_state_tests.rs"]
mod tests;
