//! A batch's records to events: a pure function of the records and of what the store held
//! before the batch ([`Before`]), so the same batch gives the same events every time.
//!
//! - Every line record is one `stock.changed` (the movement appended with it says its
//!   `cause`), so a line's events carry every version, in order, with no gap. A record
//!   the store already holds (its version is not above the stored one: a batch written
//!   again after a commit whose answer was lost) gives nothing.
//! - Thresholds are crossings of a product's available total over its active
//!   warehouses, followed record by record through the batch: `stock.low` when it falls
//!   under the product's `low_stock_threshold`, `stock.out` when it reaches 0,
//!   `stock.back_in` when it leaves 0. Each is judged twice: over every warehouse (seen by
//!   operators) and over the changed line's shop's warehouses (seen by that shop's
//!   members, `data.shop_id` set), so a marketplace shop hears of its own stock running out.
//! - A reservation's record gives `reservation.created` when it created it and
//!   `reservation.<status>` when it ended; an order's record, `order.created` or
//!   `order.<status>` (an order is journaled only when made and at each step).
//! - A transfer's record gives `transfer.completed`.
//!
//! Warehouse status changes are not line changes: a warehouse switched off does not, by
//! itself, fire threshold events; the next change of the product's lines judges anew.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use serde_json::{Value, json};
use stockline_actors::journal::{LineRecord, MovementRecord, ReservationRecord, TransferRecord};
use stockline_actors::{LineKey, Lsn, ProductId, Record, ReservationStatus, WarehouseId};

use super::records::{OrderRecord, StoreRecord};
use crate::events::{Event, EventType};

/// How many event ids one record has room for (`lsn * SLOTS + n`).
pub const SLOTS: i64 = 8;

/// A line as the store holds it before the batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredLine {
    pub on_hand: u64,
    pub reserved: u64,
    pub safety_stock: u64,
    pub version: u64,
}

impl StoredLine {
    /// What the line can still promise (never under 0: backorders hold beyond on hand).
    fn available(&self) -> u64 {
        self.on_hand
            .saturating_sub(self.reserved.saturating_add(self.safety_stock))
    }
}

/// A warehouse, as far as events care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub active: bool,
    pub shop_id: Option<i64>,
}

/// What the store held before the batch, for the products and warehouses it touches.
#[derive(Debug, Default)]
pub struct Before {
    /// Per product touched by a line record: its `low_stock_threshold`.
    pub thresholds: HashMap<ProductId, u64>,
    /// Every stored line of those products.
    pub lines: HashMap<LineKey, StoredLine>,
    /// Every warehouse the batch names.
    pub places: HashMap<WarehouseId, Place>,
}

impl Before {
    fn shop_of(&self, warehouse_id: WarehouseId) -> Option<i64> {
        self.places.get(&warehouse_id).and_then(|p| p.shop_id)
    }

    fn shops_of(&self, warehouses: impl IntoIterator<Item = WarehouseId>) -> Vec<i64> {
        let shops: BTreeSet<i64> = warehouses
            .into_iter()
            .filter_map(|w| self.shop_of(w))
            .collect();
        shops.into_iter().collect()
    }
}

/// The products whose line records the batch holds, and every warehouse it names: what
/// [`Before`] must be read for.
pub fn touched(records: &[(Lsn, StoreRecord)]) -> (Vec<ProductId>, Vec<WarehouseId>) {
    let mut products = BTreeSet::new();
    let mut warehouses = BTreeSet::new();
    for (_, record) in records {
        match record {
            StoreRecord::Core(Record::Line(line)) => {
                products.insert(line.key.product_id);
                warehouses.insert(line.key.warehouse_id);
            }
            StoreRecord::Core(Record::Reservation(r)) => {
                warehouses.extend(r.items.iter().map(|i| i.warehouse_id))
            }
            StoreRecord::Core(Record::Transfer(t)) => {
                warehouses.extend([t.from_warehouse_id, t.to_warehouse_id])
            }
            StoreRecord::Order(o) => warehouses.extend(o.items.iter().map(|i| i.warehouse_id)),
            _ => {}
        }
    }
    (
        products.into_iter().collect(),
        warehouses.into_iter().collect(),
    )
}

/// The events of `records` (in Lsn order), given what the store held before them.
pub fn derive(records: &[(Lsn, StoreRecord)], before: &Before) -> Vec<Event> {
    let mut lines = before.lines.clone();
    let mut events = Vec::new();
    for (index, (lsn, record)) in records.iter().enumerate() {
        let first_id = *lsn as i64 * SLOTS;
        match record {
            StoreRecord::Core(Record::Line(line)) => {
                let stored = lines.get(&line.key).copied().unwrap_or_default();
                if line.version <= stored.version {
                    continue;
                }
                let cause = match records.get(index + 1) {
                    Some((_, StoreRecord::Core(Record::Movement(m)))) if m.key == line.key => {
                        Some(m)
                    }
                    _ => None,
                };
                let scopes = scopes(before, line.key.warehouse_id);
                let totals_before: Vec<u64> = scopes
                    .iter()
                    .map(|s| total(&lines, before, line.key.product_id, *s))
                    .collect();
                let now = StoredLine {
                    on_hand: line.on_hand,
                    reserved: line.reserved,
                    safety_stock: line.safety_stock,
                    version: line.version,
                };
                lines.insert(line.key, now);
                events.push(stock_changed(first_id, line, &now, cause, before));
                let threshold = before
                    .thresholds
                    .get(&line.key.product_id)
                    .copied()
                    .unwrap_or(0);
                let mut next_id = first_id + 1;
                for (scope, was) in scopes.iter().zip(totals_before) {
                    let is = total(&lines, before, line.key.product_id, *scope);
                    for kind in crossings(was, is, threshold) {
                        events.push(Event {
                            id: next_id,
                            kind,
                            at: line.updated_at,
                            data: json!({
                                "product_id": line.key.product_id,
                                "shop_id": scope,
                                "available": is,
                                "threshold": threshold,
                            })
                            .to_string(),
                            shop_ids: scope.iter().copied().collect(),
                            ordering_key: format!("product:{}", line.key.product_id),
                        });
                        next_id += 1;
                    }
                }
            }
            StoreRecord::Core(Record::Reservation(r)) => {
                if let Some(event) = reservation(first_id, r, before) {
                    events.push(event);
                }
            }
            StoreRecord::Core(Record::Transfer(t)) => events.push(transfer(first_id, t, before)),
            StoreRecord::Order(order) => events.push(self::order(first_id, order, before)),
            _ => {}
        }
    }
    events
}

/// The scopes a line's product total is judged over: every warehouse (`None`), and the
/// line's shop's, if it has one.
fn scopes(before: &Before, warehouse_id: WarehouseId) -> Vec<Option<i64>> {
    match before.shop_of(warehouse_id) {
        Some(shop) => vec![None, Some(shop)],
        None => vec![None],
    }
}

/// A product's available total over the active warehouses of `scope`.
fn total(
    lines: &HashMap<LineKey, StoredLine>,
    before: &Before,
    product_id: ProductId,
    scope: Option<i64>,
) -> u64 {
    lines
        .iter()
        .filter(|(key, _)| key.product_id == product_id)
        .filter(|(key, _)| {
            before
                .places
                .get(&key.warehouse_id)
                .is_some_and(|place| place.active && (scope.is_none() || place.shop_id == scope))
        })
        .map(|(_, line)| line.available())
        .sum()
}

/// The thresholds crossed going from `was` to `is`, in the order they were crossed.
fn crossings(was: u64, is: u64, threshold: u64) -> Vec<EventType> {
    let mut crossed = Vec::new();
    if is < was {
        if was >= threshold && is < threshold {
            crossed.push(EventType::StockLow);
        }
        if is == 0 {
            crossed.push(EventType::StockOut);
        }
    } else if was == 0 && is > 0 {
        crossed.push(EventType::StockBackIn);
    }
    crossed
}

/// `stock.changed`'s data, serialized straight from the records (it is the hot one).
#[derive(Serialize)]
struct LineChanged<'a> {
    warehouse_id: i64,
    product_id: i64,
    version: u64,
    on_hand: u64,
    reserved: u64,
    available: u64,
    safety_stock: u64,
    cause: &'static str,
    quantity: i64,
    reference: Option<String>,
    shop_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_reference: Option<&'a str>,
}

fn stock_changed(
    id: i64,
    line: &LineRecord,
    now: &StoredLine,
    cause: Option<&MovementRecord>,
    before: &Before,
) -> Event {
    let shop = before.shop_of(line.key.warehouse_id);
    let data = LineChanged {
        warehouse_id: line.key.warehouse_id,
        product_id: line.key.product_id,
        version: line.version,
        on_hand: line.on_hand,
        reserved: line.reserved,
        available: now.available(),
        safety_stock: line.safety_stock,
        cause: cause.map(|m| m.kind.as_str()).unwrap_or("repair"),
        quantity: cause.map(|m| m.quantity).unwrap_or(0),
        reference: cause.map(|m| m.reference.to_string()),
        shop_id: shop,
        client_reference: cause
            .and_then(|m| m.note.as_ref())
            .and_then(|n| n.reference.as_deref()),
    };
    Event {
        id,
        kind: EventType::StockChanged,
        at: line.updated_at,
        data: text(&data),
        shop_ids: shop.into_iter().collect(),
        ordering_key: format!("line:{}:{}", line.key.warehouse_id, line.key.product_id),
    }
}

/// A reservation's data, serialized straight from its record.
#[derive(Serialize)]
struct ReservationData<'a> {
    id: uuid::Uuid,
    status: &'static str,
    reference: Option<&'a str>,
    expires_at: chrono::DateTime<chrono::Utc>,
    items: Vec<ItemData>,
}

#[derive(Serialize)]
struct ItemData {
    product_id: i64,
    warehouse_id: i64,
    /// The warehouse's shop (null: the platform's): a shop's reader of an event that
    /// spans shops is shown its own items only ([`crate::events::read::Filter::shown`]).
    shop_id: Option<i64>,
    quantity: u64,
    committed: u64,
    released: u64,
}

/// JSON text of data made here (it cannot fail: no maps with non-string keys).
fn text(data: &impl Serialize) -> String {
    serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned())
}

fn reservation(id: i64, r: &ReservationRecord, before: &Before) -> Option<Event> {
    let kind = match (r.created, r.status) {
        (true, _) => EventType::ReservationCreated,
        (false, ReservationStatus::Pending) => return None,
        (false, ReservationStatus::Committed) => EventType::ReservationCommitted,
        (false, ReservationStatus::Released) => EventType::ReservationReleased,
        (false, ReservationStatus::Expired) => EventType::ReservationExpired,
    };
    let data = ReservationData {
        id: r.id.0,
        status: r.status.as_str(),
        reference: r.reference.as_deref(),
        expires_at: r.expires_at,
        items: r
            .items
            .iter()
            .map(|i| ItemData {
                product_id: i.product_id,
                warehouse_id: i.warehouse_id,
                shop_id: before.shop_of(i.warehouse_id),
                quantity: i.quantity,
                committed: i.committed,
                released: i.released,
            })
            .collect(),
    };
    Some(Event {
        id,
        kind,
        at: r.updated_at,
        data: text(&data),
        shop_ids: before.shops_of(r.items.iter().map(|i| i.warehouse_id)),
        ordering_key: format!("reservation:{}", r.id.0),
    })
}

fn order(id: i64, o: &OrderRecord, before: &Before) -> Event {
    let kind = match o.status {
        "pending_payment" => EventType::OrderCreated,
        "paid" => EventType::OrderPaid,
        "cancelled" => EventType::OrderCancelled,
        "shipped" => EventType::OrderShipped,
        "delivered" => EventType::OrderDelivered,
        _ => EventType::OrderExpired,
    };
    let items: Vec<Value> = o
        .items
        .iter()
        .map(|i| {
            json!({
                "product_id": i.product_id,
                "warehouse_id": i.warehouse_id,
                "shop_id": before.shop_of(i.warehouse_id),
                "quantity": i.quantity,
                "unit_price_cents": i.unit_price_cents,
            })
        })
        .collect();
    Event {
        id,
        kind,
        at: o.updated_at,
        data: json!({
            "id": o.id,
            "user_id": o.user_id,
            "status": o.status,
            "total_cents": o.total_cents,
            "reservation_id": o.reservation_id.0,
            "tracking_number": o.tracking_number,
            "items": items,
        })
        .to_string(),
        shop_ids: before.shops_of(o.items.iter().map(|i| i.warehouse_id)),
        ordering_key: format!("order:{}", o.id),
    }
}

fn transfer(id: i64, t: &TransferRecord, before: &Before) -> Event {
    Event {
        id,
        kind: EventType::TransferCompleted,
        at: t.created_at,
        data: json!({
            "id": t.id.0,
            "from_warehouse_id": t.from_warehouse_id,
            "to_warehouse_id": t.to_warehouse_id,
            "product_id": t.product_id,
            "quantity": t.quantity,
            "reference": t.note.as_ref().and_then(|n| n.reference.clone()),
        })
        .to_string(),
        shop_ids: before.shops_of([t.from_warehouse_id, t.to_warehouse_id]),
        ordering_key: format!("transfer:{}", t.id.0),
    }
}

#[cfg(test)]
#[path = "derive_tests.rs"]
mod tests;
