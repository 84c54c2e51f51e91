//! Every operation of a line, accepted and refused, on the plain state.

use super::*;

fn line(on_hand: u64) -> LineState {
    let mut state = LineState::empty(LineKey::new(1, 7), true);
    state.on_hand = on_hand;
    state
}

fn qty(n: u64) -> Quantity {
    Quantity::try_from(n).unwrap()
}

fn apply(state: &mut LineState, op: LineOp) -> Result<Option<Change>> {
    state.apply(op, Utc::now())
}

/// Applies an op that must be refused and checks that nothing changed.
fn refused(state: &mut LineState, op: LineOp) -> CoreError {
    let before = state.clone();
    let error = apply(state, op).unwrap_err();
    assert_eq!(*state, before, "a refused op changed the line");
    error
}

#[test]
fn reserve_holds_stock_and_bumps_version() {
    let mut s = line(10);
    let id = ReservationId::new();
    let change = apply(&mut s, LineOp::Reserve { id, qty: qty(4) })
        .unwrap()
        .unwrap();
    assert_eq!(
        (s.on_hand, s.reserved, s.available(), s.version),
        (10, 4, 6, 1)
    );
    assert_eq!(change.kind, MovementKind::Reserve);
    assert_eq!(change.reference, Reference::Reservation(id));
    assert_eq!(s.holds[&id], 4);
}

#[test]
fn reserve_more_than_available_is_refused_with_what_is_available() {
    let mut s = line(10);
    apply(
        &mut s,
        LineOp::Reserve {
            id: ReservationId::new(),
            qty: qty(8),
        },
    )
    .unwrap();
    let error = refused(
        &mut s,
        LineOp::Reserve {
            id: ReservationId::new(),
            qty: qty(3),
        },
    );
    assert_eq!(
        error,
        CoreError::InsufficientStock {
            product_id: 7,
            requested: 3,
            available: 2
        }
    );
}

#[test]
fn reserve_on_an_inactive_line_is_refused() {
    let mut s = line(10);
    apply(&mut s, LineOp::SetActive(false)).unwrap();
    let error = refused(
        &mut s,
        LineOp::Reserve {
            id: ReservationId::new(),
            qty: qty(1),
        },
    );
    assert_eq!(error, CoreError::WarehouseInactive { warehouse_id: 1 });
}

#[test]
fn reserving_twice_under_one_id_adds_to_the_hold() {
    let mut s = line(10);
    let id = ReservationId::new();
    apply(&mut s, LineOp::Reserve { id, qty: qty(2) }).unwrap();
    apply(&mut s, LineOp::Reserve { id, qty: qty(3) }).unwrap();
    assert_eq!((s.reserved, s.holds[&id]), (5, 5));
}

#[test]
fn release_and_expire_return_the_held_stock() {
    for (expire, kind) in [(false, MovementKind::Release), (true, MovementKind::Expire)] {
        let mut s = line(10);
        let id = ReservationId::new();
        apply(&mut s, LineOp::Reserve { id, qty: qty(6) }).unwrap();
        let op = if expire {
            LineOp::Expire { id }
        } else {
            LineOp::Release { id }
        };
        let change = apply(&mut s, op).unwrap().unwrap();
        assert_eq!((s.on_hand, s.reserved, s.version), (10, 0, 2));
        assert_eq!((change.kind, change.quantity), (kind, 6));
        assert!(s.holds.is_empty());
    }
}

#[test]
fn commit_takes_the_held_stock_off_the_shelf() {
    let mut s = line(10);
    let id = ReservationId::new();
    apply(&mut s, LineOp::Reserve { id, qty: qty(6) }).unwrap();
    let change = apply(&mut s, LineOp::Commit { id }).unwrap().unwrap();
    assert_eq!((s.on_hand, s.reserved), (4, 0));
    assert_eq!((change.kind, change.quantity), (MovementKind::Commit, 6));
}

#[test]
fn settling_a_reservation_the_line_does_not_hold_is_refused() {
    let mut s = line(10);
    let id = ReservationId::new();
    for op in [
        LineOp::Commit { id },
        LineOp::Release { id },
        LineOp::Expire { id },
    ] {
        assert_eq!(refused(&mut s, op), CoreError::NotHeld);
    }
    apply(&mut s, LineOp::Reserve { id, qty: qty(1) }).unwrap();
    apply(&mut s, LineOp::Commit { id }).unwrap();
    assert_eq!(refused(&mut s, LineOp::Release { id }), CoreError::NotHeld);
}

#[test]
fn commit_and_release_still_work_on_an_inactive_line() {
    let mut s = line(10);
    let (a, b) = (ReservationId::new(), ReservationId::new());
    apply(&mut s, LineOp::Reserve { id: a, qty: qty(2) }).unwrap();
    apply(&mut s, LineOp::Reserve { id: b, qty: qty(3) }).unwrap();
    apply(&mut s, LineOp::SetActive(false)).unwrap();
    apply(&mut s, LineOp::Commit { id: a }).unwrap();
    apply(&mut s, LineOp::Release { id: b }).unwrap();
    assert_eq!((s.on_hand, s.reserved), (8, 0));
}

#[test]
fn adjust_moves_on_hand_but_never_under_reserved() {
    let mut s = line(10);
    apply(
        &mut s,
        LineOp::Reserve {
            id: ReservationId::new(),
            qty: qty(7),
        },
    )
    .unwrap();
    let change = apply(
        &mut s,
        LineOp::Adjust {
            delta: 5,
            reason: "receipt".into(),
            note: None,
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!((s.on_hand, change.quantity), (15, 5));
    assert_eq!(change.reference, Reference::Reason("receipt".into()));
    apply(
        &mut s,
        LineOp::Adjust {
            delta: -8,
            reason: "damage".into(),
            note: None,
        },
    )
    .unwrap();
    assert_eq!(s.on_hand, 7);
    let error = refused(
        &mut s,
        LineOp::Adjust {
            delta: -1,
            reason: "damage".into(),
            note: None,
        },
    );
    assert_eq!(
        error,
        CoreError::InsufficientStock {
            product_id: 7,
            requested: 1,
            available: 0
        }
    );
}

#[test]
fn adjust_by_zero_or_past_the_limit_is_refused() {
    let mut s = line(10);
    for delta in [0, 1_000_000_001, -1_000_000_001, i64::MIN] {
        let error = refused(
            &mut s,
            LineOp::Adjust {
                delta,
                reason: "count".into(),
                note: None,
            },
        );
        assert!(
            matches!(error, CoreError::InvalidQuantity(_)),
            "{delta}: {error:?}"
        );
    }
}

#[test]
fn adjust_is_allowed_on_an_inactive_line() {
    let mut s = line(0);
    apply(&mut s, LineOp::SetActive(false)).unwrap();
    apply(
        &mut s,
        LineOp::Adjust {
            delta: 3,
            reason: "receipt".into(),
            note: None,
        },
    )
    .unwrap();
    assert_eq!(s.on_hand, 3);
}

#[test]
fn on_hand_cannot_overflow() {
    let mut s = line(MAX_ON_HAND - 1);
    let error = refused(
        &mut s,
        LineOp::Adjust {
            delta: 2,
            reason: "receipt".into(),
            note: None,
        },
    );
    assert_eq!(error, CoreError::LevelOverflow);
    let error = refused(
        &mut s,
        LineOp::TransferIn {
            id: TransferId::new(),
            qty: qty(2),
            compensating: false,
            note: None,
        },
    );
    assert_eq!(error, CoreError::LevelOverflow);
}

#[test]
fn set_level_is_a_count_that_respects_reserved() {
    let mut s = line(10);
    apply(
        &mut s,
        LineOp::Reserve {
            id: ReservationId::new(),
            qty: qty(4),
        },
    )
    .unwrap();
    let change = apply(
        &mut s,
        LineOp::SetLevel {
            on_hand: 6,
            expected_version: None,
            reason: "count".into(),
            note: None,
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (s.on_hand, change.quantity, change.kind),
        (6, -4, MovementKind::Adjust)
    );
    let error = refused(
        &mut s,
        LineOp::SetLevel {
            on_hand: 3,
            expected_version: None,
            reason: "count".into(),
            note: None,
        },
    );
    assert!(matches!(error, CoreError::InsufficientStock { .. }));
    let error = refused(
        &mut s,
        LineOp::SetLevel {
            on_hand: MAX_QUANTITY + 1,
            expected_version: None,
            reason: "count".into(),
            note: None,
        },
    );
    assert!(matches!(error, CoreError::InvalidQuantity(_)));
}

#[test]
fn set_level_with_a_stale_version_is_refused() {
    let mut s = line(10);
    apply(
        &mut s,
        LineOp::Adjust {
            delta: 1,
            reason: "receipt".into(),
            note: None,
        },
    )
    .unwrap();
    let error = refused(
        &mut s,
        LineOp::SetLevel {
            on_hand: 5,
            expected_version: Some(0),
            reason: "count".into(),
            note: None,
        },
    );
    assert_eq!(
        error,
        CoreError::VersionMismatch {
            expected: 0,
            actual: 1
        }
    );
    apply(
        &mut s,
        LineOp::SetLevel {
            on_hand: 5,
            expected_version: Some(1),
            reason: "count".into(),
            note: None,
        },
    )
    .unwrap();
    assert_eq!((s.on_hand, s.version), (5, 2));
}

#[test]
fn transfer_out_sends_only_available_stock_from_an_active_line() {
    let mut s = line(10);
    apply(
        &mut s,
        LineOp::Reserve {
            id: ReservationId::new(),
            qty: qty(6),
        },
    )
    .unwrap();
    let id = TransferId::new();
    let change = apply(
        &mut s,
        LineOp::TransferOut {
            id,
            qty: qty(4),
            note: None,
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!((s.on_hand, s.reserved), (6, 6));
    assert_eq!(
        (change.kind, change.reference),
        (MovementKind::TransferOut, Reference::Transfer(id))
    );
    let error = refused(
        &mut s,
        LineOp::TransferOut {
            id,
            qty: qty(1),
            note: None,
        },
    );
    assert!(matches!(error, CoreError::InsufficientStock { .. }));
    apply(&mut s, LineOp::SetActive(false)).unwrap();
    apply(
        &mut s,
        LineOp::Adjust {
            delta: 5,
            reason: "receipt".into(),
            note: None,
        },
    )
    .unwrap();
    let error = refused(
        &mut s,
        LineOp::TransferOut {
            id,
            qty: qty(1),
            note: None,
        },
    );
    assert_eq!(error, CoreError::WarehouseInactive { warehouse_id: 1 });
}

#[test]
fn transfer_in_is_refused_by_an_inactive_line_unless_compensating() {
    let mut s = line(0);
    apply(&mut s, LineOp::SetActive(false)).unwrap();
    let id = TransferId::new();
    let error = refused(
        &mut s,
        LineOp::TransferIn {
            id,
            qty: qty(3),
            compensating: false,
            note: None,
        },
    );
    assert_eq!(error, CoreError::WarehouseInactive { warehouse_id: 1 });
    let change = apply(
        &mut s,
        LineOp::TransferIn {
            id,
            qty: qty(3),
            compensating: true,
            note: None,
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!((s.on_hand, change.kind), (3, MovementKind::TransferIn));
}

#[test]
fn set_active_changes_no_stock_and_no_version() {
    let mut s = line(5);
    assert_eq!(apply(&mut s, LineOp::SetActive(false)).unwrap(), None);
    assert_eq!((s.version, s.active), (0, false));
}

#[test]
fn repair_sets_reserved_to_the_sum_of_holds() {
    let mut s = line(3);
    s.holds.insert(ReservationId::new(), 2);
    s.holds.insert(ReservationId::new(), 3);
    s.reserved = 9;
    assert!(s.repair());
    assert_eq!(
        (s.on_hand, s.reserved),
        (3, 5),
        "no stock is made up: what is held beyond on hand is backordered"
    );
    assert_eq!(s.snapshot().backordered(), 2);
    assert!(!s.repair());
}

#[test]
fn a_backorder_holds_beyond_what_is_available_within_its_room_and_receipts_fill_the_oldest_first() {
    let mut s = line(3);
    let (old, young) = (ReservationId::new(), ReservationId::new());
    let error = refused(
        &mut s,
        LineOp::Backorder {
            id: old,
            qty: qty(6),
            room: 2,
        },
    );
    assert!(
        matches!(error, CoreError::InsufficientStock { available: 5, .. }),
        "{error:?}"
    );
    apply(
        &mut s,
        LineOp::Backorder {
            id: old,
            qty: qty(4),
            room: 2,
        },
    )
    .unwrap();
    apply(
        &mut s,
        LineOp::Backorder {
            id: young,
            qty: qty(1),
            room: 2,
        },
    )
    .unwrap();
    assert_eq!(
        (s.on_hand, s.reserved, s.snapshot().backordered()),
        (3, 5, 2)
    );
    assert_eq!((s.filled(old), s.filled(young)), (3, 0));
    refused(
        &mut s,
        LineOp::Reserve {
            id: young,
            qty: qty(1),
        },
    );
    // Nothing not on hand leaves: the old hold is short of one, the young of all.
    let error = refused(&mut s, LineOp::Commit { id: old });
    assert_eq!(
        error,
        CoreError::Backordered {
            product_id: 7,
            backordered: 1
        }
    );
    // Damage or a count cannot take what backorders wait for.
    refused(
        &mut s,
        LineOp::Adjust {
            delta: -1,
            reason: "damage".into(),
            note: None,
        },
    );
    // A receipt of one fills the old hold first.
    apply(
        &mut s,
        LineOp::Adjust {
            delta: 1,
            reason: "receipt".into(),
            note: None,
        },
    )
    .unwrap();
    assert_eq!((s.filled(old), s.filled(young)), (4, 0));
    apply(&mut s, LineOp::Commit { id: old }).unwrap();
    assert_eq!((s.on_hand, s.reserved), (0, 1));
    assert_eq!(s.filled(young), 0);
    apply(
        &mut s,
        LineOp::Adjust {
            delta: 2,
            reason: "receipt".into(),
            note: None,
        },
    )
    .unwrap();
    assert_eq!((s.filled(young), s.available()), (1, 1));
    apply(&mut s, LineOp::Commit { id: young }).unwrap();
    assert_eq!((s.on_hand, s.reserved), (1, 0));
}

#[test]
fn records_carry_the_state_after_the_change() {
    let mut s = line(10);
    let change = apply(
        &mut s,
        LineOp::Reserve {
            id: ReservationId::new(),
            qty: qty(2),
        },
    )
    .unwrap()
    .unwrap();
    let movement = s.movement(change);
    assert_eq!((movement.on_hand_after, movement.reserved_after), (10, 2));
    assert_eq!(s.record().version, 1);
}

#[test]
fn a_return_puts_stock_back_even_on_an_inactive_line() {
    let mut s = line(2);
    apply(&mut s, LineOp::SetActive(false)).unwrap();
    let change = apply(&mut s, LineOp::Return { qty: qty(3) })
        .unwrap()
        .unwrap();
    assert_eq!(
        (s.on_hand, change.kind, change.quantity),
        (5, MovementKind::Adjust, 3)
    );
    assert_eq!(change.reference, Reference::Reason("return".into()));
    assert!(!LineOp::Return { qty: qty(1) }.is_new_work());
}
