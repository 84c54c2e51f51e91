use chrono::Utc;
use stockline_actors::journal::{
    LineRecord, MovementKind, MovementRecord, Reference, ReservationRecord,
};
use stockline_actors::{LineKey, Record, ReservationId, ReservationStatus, ReservedItem};

use super::*;

const W: i64 = 1;
const P: i64 = 10;

/// A line change as the core journals it: the line's state, then its movement.
fn change(
    key: LineKey,
    version: u64,
    on_hand: u64,
    reserved: u64,
    kind: MovementKind,
    quantity: i64,
) -> [StoreRecord; 2] {
    let at = Utc::now();
    [
        StoreRecord::Core(Record::Line(LineRecord {
            key,
            on_hand,
            reserved,
            safety_stock: 0,
            version,
            updated_at: at,
        })),
        StoreRecord::Core(Record::Movement(MovementRecord {
            key,
            kind,
            quantity,
            on_hand_after: on_hand,
            reserved_after: reserved,
            safety_stock_after: 0,
            reference: Reference::Reason("receipt".into()),
            note: None,
            at,
        })),
    ]
}

fn numbered(records: Vec<StoreRecord>, first: Lsn) -> Vec<(Lsn, StoreRecord)> {
    (first..).zip(records).collect()
}

/// Product P with `threshold`, stored on line (W, P) at `on_hand` (version 1), W active
/// and owned by `shop`.
fn before(threshold: u64, on_hand: u64, shop: Option<i64>) -> Before {
    let mut before = Before::default();
    before.thresholds.insert(P, threshold);
    before.lines.insert(
        LineKey::new(W, P),
        StoredLine {
            on_hand,
            version: 1,
            ..StoredLine::default()
        },
    );
    before.places.insert(
        W,
        Place {
            active: true,
            shop_id: shop,
        },
    );
    before
}

fn data(event: &Event) -> serde_json::Value {
    serde_json::from_str(&event.data).unwrap()
}

/// Adds the platform's warehouse 2 (active or not) with `on_hand` of product P.
fn add_platform_line(before: &mut Before, on_hand: u64, active: bool) {
    before.lines.insert(
        LineKey::new(2, P),
        StoredLine {
            on_hand,
            version: 1,
            ..StoredLine::default()
        },
    );
    before.places.insert(
        2,
        Place {
            active,
            shop_id: None,
        },
    );
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

#[test]
fn every_line_change_is_one_stock_changed_with_its_cause_and_version() {
    let key = LineKey::new(W, P);
    let records = numbered(
        [
            change(key, 2, 10, 3, MovementKind::Reserve, 3),
            change(key, 3, 10, 0, MovementKind::Release, 3),
        ]
        .concat(),
        5,
    );
    let events = derive(&records, &before(0, 10, None));
    assert_eq!(kinds(&events), ["stock.changed", "stock.changed"]);
    assert_eq!(
        events[0].id,
        5 * SLOTS,
        "ids are made of the line record's Lsn"
    );
    assert_eq!(events[1].id, 7 * SLOTS);
    assert_eq!(data(&events[0])["cause"], "reserve");
    assert_eq!(data(&events[0])["version"], 2);
    assert_eq!(data(&events[0])["available"], 7);
    assert_eq!(data(&events[1])["cause"], "release");
    assert_eq!(data(&events[1])["version"], 3);
    assert_eq!(events[0].ordering_key, events[1].ordering_key);
}

#[test]
fn a_change_the_store_already_holds_gives_no_event_again() {
    let key = LineKey::new(W, P);
    let records = numbered(change(key, 1, 10, 0, MovementKind::Adjust, 10).to_vec(), 1);
    assert!(derive(&records, &before(0, 10, None)).is_empty());
}

#[test]
fn thresholds_fire_once_per_crossing_in_the_order_crossed() {
    let key = LineKey::new(W, P);
    let records = numbered(
        [
            // 10 available, threshold 5: down to 4 (low), 3 (still low: nothing),
            change(key, 2, 10, 6, MovementKind::Reserve, 6),
            change(key, 3, 10, 7, MovementKind::Reserve, 1),
            // 0 (out), back to 2 (back in), to 8 (nothing), then straight to 0 (low, out).
            change(key, 4, 10, 10, MovementKind::Reserve, 3),
            change(key, 5, 10, 8, MovementKind::Release, 2),
            change(key, 6, 10, 2, MovementKind::Release, 6),
            change(key, 7, 10, 10, MovementKind::Reserve, 8),
        ]
        .concat(),
        1,
    );
    let events = derive(&records, &before(5, 10, None));
    let thresholds: Vec<_> = events
        .iter()
        .filter(|e| e.kind != EventType::StockChanged)
        .map(|e| (e.kind.as_str(), data(e)["available"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        thresholds,
        [
            ("stock.low", 4),
            ("stock.out", 0),
            ("stock.back_in", 2),
            ("stock.low", 0),
            ("stock.out", 0),
        ]
    );
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
}

#[test]
fn a_shops_line_is_judged_over_every_warehouse_and_over_its_shops_own() {
    // The platform's warehouse 2 has 10 more of the product: the product as a whole is
    // not out when the shop's line is.
    let mut before = before(0, 4, Some(7));
    add_platform_line(&mut before, 10, true);
    let records = numbered(
        change(LineKey::new(W, P), 2, 4, 4, MovementKind::Reserve, 4).to_vec(),
        1,
    );
    let events = derive(&records, &before);
    assert_eq!(kinds(&events), ["stock.changed", "stock.out"]);
    assert_eq!(data(&events[1])["shop_id"], 7);
    assert_eq!(events[1].shop_ids, [7]);
    assert_eq!(
        events[0].shop_ids,
        [7],
        "the line's own events are its shop's"
    );
}

#[test]
fn lines_of_inactive_warehouses_count_for_nothing() {
    let mut before = before(0, 5, None);
    add_platform_line(&mut before, 10, false);
    let records = numbered(
        change(LineKey::new(W, P), 2, 5, 5, MovementKind::Reserve, 5).to_vec(),
        1,
    );
    assert_eq!(
        kinds(&derive(&records, &before)),
        ["stock.changed", "stock.out"]
    );
}

#[test]
fn a_reservation_is_told_when_created_and_when_it_ends_not_when_it_changes() {
    let record = |created, status| {
        StoreRecord::Core(Record::Reservation(ReservationRecord {
            id: ReservationId::new(),
            created,
            status,
            items: vec![ReservedItem {
                product_id: P,
                warehouse_id: W,
                quantity: 2,
                committed: 0,
                released: 0,
            }],
            reference: None,
            expires_at: Utc::now(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }))
    };
    let records = numbered(
        vec![
            record(true, ReservationStatus::Pending),
            record(false, ReservationStatus::Pending),
            record(false, ReservationStatus::Expired),
        ],
        1,
    );
    let events = derive(&records, &before(0, 10, Some(3)));
    assert_eq!(
        kinds(&events),
        ["reservation.created", "reservation.expired"]
    );
    assert_eq!(events[0].shop_ids, [3]);
    assert_eq!(data(&events[1])["status"], "expired");
}
