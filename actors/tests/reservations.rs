//! Reservations: all or nothing, allocation, the state machine, expiry, transfers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use stockline_actors::journal::MovementKind;
use stockline_actors::{
    Core, CoreConfig, CoreError, EmptyStore, LineKey, LineSeed, MemoryJournal, Record, Reservation,
    ReservationId, ReservationStatus, ReservedItem, TransferRequest,
};

fn held(r: &Reservation) -> Vec<(i64, i64, u64)> {
    r.items
        .iter()
        .map(|i| (i.warehouse_id, i.product_id, i.quantity))
        .collect()
}

#[tokio::test]
async fn a_multi_item_reservation_holds_every_line() {
    let (core, _) = core().await;
    warehouse(&core, 1, 100).await;
    stock(&core, 1, 7, 5).await;
    stock(&core, 1, 8, 5).await;
    let (r, lsn) = core
        .reservations()
        .reserve(request(vec![item(7, 2), item(8, 3), item(7, 1)]))
        .await
        .unwrap();
    assert_eq!(r.status, ReservationStatus::Pending);
    assert_eq!(
        held(&r),
        vec![(1, 7, 3), (1, 8, 3)],
        "items of one line are merged"
    );
    assert!(lsn > 0);
    assert_eq!(levels(&core, 1, 7).await, (5, 3));
    assert_eq!(levels(&core, 1, 8).await, (5, 3));
}

#[tokio::test]
async fn a_refused_item_releases_the_items_already_held() {
    let (core, journal) = core().await;
    warehouse(&core, 1, 100).await;
    stock(&core, 1, 7, 5).await;
    stock(&core, 1, 8, 1).await;
    let error = core
        .reservations()
        .reserve(request(vec![item(7, 2), item(8, 3)]))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        CoreError::InsufficientStock {
            product_id: 8,
            requested: 3,
            available: 1
        }
    );
    assert_eq!(
        levels(&core, 1, 7).await,
        (5, 0),
        "the hold on 7 was rolled back"
    );
    let kinds: Vec<_> = journal
        .movements(LineKey::new(1, 7))
        .iter()
        .map(|m| m.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            MovementKind::Adjust,
            MovementKind::Reserve,
            MovementKind::Release
        ]
    );
    assert!(core.reservations().pending().is_empty());
}

#[tokio::test]
async fn allocation_goes_by_priority_then_most_available_and_splits() {
    let (core, _) = core().await;
    warehouse(&core, 1, 10).await;
    warehouse(&core, 2, 20).await;
    warehouse(&core, 3, 10).await;
    stock(&core, 1, 7, 5).await;
    stock(&core, 2, 7, 100).await;
    stock(&core, 3, 7, 8).await;
    let r = reserve(&core, vec![item(7, 20)]).await;
    assert_eq!(held(&r), vec![(1, 7, 5), (2, 7, 7), (3, 7, 8)]);
    let r = reserve(&core, vec![item(7, 3)]).await;
    assert_eq!(
        held(&r),
        vec![(2, 7, 3)],
        "priority 10 warehouses are empty now"
    );
}

#[tokio::test]
async fn inactive_warehouses_count_for_nothing_in_allocation() {
    let (core, _) = core().await;
    warehouse(&core, 1, 10).await;
    warehouse(&core, 2, 20).await;
    stock(&core, 1, 7, 50).await;
    stock(&core, 2, 7, 4).await;
    core.set_warehouse_active(1, false).await.unwrap();
    let error = core
        .reservations()
        .reserve(request(vec![item(7, 5)]))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        CoreError::InsufficientStock {
            product_id: 7,
            requested: 5,
            available: 4
        }
    );
    let error = core
        .reservations()
        .reserve(request(vec![pinned(1, 7, 1)]))
        .await
        .unwrap_err();
    assert_eq!(error, CoreError::WarehouseInactive { warehouse_id: 1 });
    let r = reserve(&core, vec![item(7, 4)]).await;
    assert_eq!(held(&r), vec![(2, 7, 4)]);
}

#[tokio::test]
async fn a_pinned_item_takes_only_its_warehouse() {
    let (core, _) = core().await;
    warehouse(&core, 1, 10).await;
    warehouse(&core, 2, 20).await;
    stock(&core, 1, 7, 50).await;
    stock(&core, 2, 7, 4).await;
    let error = core
        .reservations()
        .reserve(request(vec![pinned(2, 7, 5)]))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        CoreError::InsufficientStock {
            product_id: 7,
            requested: 5,
            available: 4
        }
    );
    let r = reserve(&core, vec![pinned(2, 7, 4)]).await;
    assert_eq!(held(&r), vec![(2, 7, 4)]);
    let error = core
        .reservations()
        .reserve(request(vec![pinned(9, 7, 1)]))
        .await
        .unwrap_err();
    assert_eq!(error, CoreError::UnknownWarehouse { warehouse_id: 9 });
}

#[tokio::test]
async fn commit_takes_stock_and_every_later_step_is_refused() {
    let (core, journal) = stocked(5).await;
    let r = reserve(&core, vec![item(7, 2)]).await;
    let (committed, _) = core.reservations().commit(r.id).await.unwrap();
    assert_eq!(committed.status, ReservationStatus::Committed);
    assert_eq!(levels(&core, 1, 7).await, (3, 0));
    for step in [
        core.reservations().commit(r.id).await,
        core.reservations().release(r.id).await,
    ] {
        assert_eq!(
            step.unwrap_err(),
            CoreError::ReservationNotPending {
                status: ReservationStatus::Committed
            }
        );
    }
    assert_eq!(
        levels(&core, 1, 7).await,
        (3, 0),
        "refused steps moved nothing"
    );
    let statuses: Vec<_> = journal
        .records()
        .into_iter()
        .filter_map(|(_, r)| match r {
            Record::Reservation(r) => Some(r.status),
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        vec![ReservationStatus::Pending, ReservationStatus::Committed]
    );
}

#[tokio::test]
async fn release_returns_stock_and_cannot_be_followed_by_commit() {
    let (core, _) = stocked(5).await;
    let r = reserve(&core, vec![item(7, 2)]).await;
    let (released, _) = core.reservations().release(r.id).await.unwrap();
    assert_eq!(released.status, ReservationStatus::Released);
    assert_eq!(levels(&core, 1, 7).await, (5, 0));
    assert_eq!(
        core.reservations().commit(r.id).await.unwrap_err(),
        CoreError::ReservationNotPending {
            status: ReservationStatus::Released
        }
    );
    assert_eq!(
        core.reservations()
            .commit(ReservationId::new())
            .await
            .unwrap_err(),
        CoreError::ReservationNotFound
    );
}

#[tokio::test]
async fn a_reservation_needs_an_item() {
    let (core, _) = core().await;
    let error = core
        .reservations()
        .reserve(request(vec![]))
        .await
        .unwrap_err();
    assert!(matches!(error, CoreError::InvalidQuantity(_)));
}

#[tokio::test(start_paused = true)]
async fn a_pending_reservation_expires_at_its_ttl_and_its_stock_returns() {
    let (core, journal) = stocked(5).await;
    let mut req = request(vec![item(7, 4)]);
    req.ttl = Duration::from_secs(60);
    let (r, _) = core.reservations().reserve(req).await.unwrap();
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(
        core.reservations().get(r.id).unwrap().status,
        ReservationStatus::Pending
    );
    assert_eq!(levels(&core, 1, 7).await, (5, 4));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reservations = core.reservations().clone();
    eventually(100, || {
        let r = reservations.get(r.id);
        async move { r.unwrap().status == ReservationStatus::Expired }
    })
    .await;
    assert_eq!(levels(&core, 1, 7).await, (5, 0));
    let last = journal.movements(LineKey::new(1, 7)).pop().unwrap();
    assert_eq!((last.kind, last.quantity), (MovementKind::Expire, 4));
    assert_eq!(
        core.reservations().commit(r.id).await.unwrap_err(),
        CoreError::ReservationNotPending {
            status: ReservationStatus::Expired
        }
    );
}

#[tokio::test(start_paused = true)]
async fn an_extended_reservation_outlives_its_first_deadline_then_expires_at_the_new_one() {
    let (core, journal) = stocked(5).await;
    let mut req = request(vec![item(7, 4)]);
    req.ttl = Duration::from_secs(60);
    let (r, _) = core.reservations().reserve(req).await.unwrap();
    tokio::time::sleep(Duration::from_secs(50)).await;
    let (extended, lsn) = core
        .reservations()
        .extend(r.id, Duration::from_secs(60))
        .unwrap();
    // The wall clock does not move with paused time: the new expiry is 60 s from the call.
    assert!(extended.expires_at >= r.expires_at);
    assert!(lsn > 0);
    assert!(
        journal.records().iter().any(|(_, record)| matches!(
            record,
            Record::Reservation(stored) if stored.id == r.id && stored.expires_at == extended.expires_at
        )),
        "the new expiry is journaled, so a restart keeps it"
    );
    // Past the first deadline: still held.
    tokio::time::sleep(Duration::from_secs(20)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        core.reservations().get(r.id).unwrap().status,
        ReservationStatus::Pending
    );
    assert_eq!(levels(&core, 1, 7).await, (5, 4));
    // Past the new one: expired, the stock back, and no extension revives it.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let reservations = core.reservations().clone();
    eventually(100, || {
        let r = reservations.get(r.id);
        async move { r.unwrap().status == ReservationStatus::Expired }
    })
    .await;
    assert_eq!(levels(&core, 1, 7).await, (5, 0));
    assert_eq!(
        core.reservations()
            .extend(r.id, Duration::from_secs(60))
            .unwrap_err(),
        CoreError::ReservationNotPending {
            status: ReservationStatus::Expired
        }
    );
    assert_eq!(
        core.reservations()
            .extend(ReservationId::new(), Duration::from_secs(60))
            .unwrap_err(),
        CoreError::ReservationNotFound
    );
}

#[tokio::test(start_paused = true)]
async fn settled_reservations_are_forgotten_after_the_retention() {
    let (core, _) = stocked(5).await;
    let r = reserve(&core, vec![item(7, 1)]).await;
    core.reservations().commit(r.id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(599)).await;
    assert!(core.reservations().get(r.id).is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reservations = core.reservations().clone();
    eventually(100, || {
        let gone = reservations.get(r.id).is_none();
        async move { gone }
    })
    .await;
}

/// Settled reservations are kept by a memory budget, not only by time: at 7,500 settled a
/// second, ten minutes of them were over a gigabyte. Past the budget the oldest leave (the
/// store answers for them), the newest stay readable, and pending ones are never touched.
#[tokio::test]
async fn settled_reservations_past_the_budget_leave_memory_oldest_first() {
    let config = CoreConfig {
        settled_budget: 10,
        ..CoreConfig::default()
    };
    let (core, _) = core_with(config, Arc::new(EmptyStore)).await;
    warehouse(&core, 1, 100).await;
    stock(&core, 1, 7, 1_000).await;
    let held = reserve(&core, vec![item(7, 1)]).await;
    let mut settled = Vec::new();
    for _ in 0..100 {
        let r = reserve(&core, vec![item(7, 1)]).await;
        core.reservations().release(r.id).await.unwrap();
        settled.push(r.id);
    }
    assert_eq!(core.reservations().settled_in_memory(), 10);
    assert!(
        settled[..90]
            .iter()
            .all(|id| core.reservations().get(*id).is_none())
    );
    assert!(
        settled[90..]
            .iter()
            .all(|id| core.reservations().get(*id).is_some())
    );
    assert_eq!(core.reservations().pending_count(), 1);
    assert!(core.reservations().get(held.id).is_some(), "pending stays");
}

/// A core over [`StoreWithHold`], with the line loaded and the reservation restored as
/// recovery would, expiring `expires_in` from now (negative: already past).
async fn restored(expires_in: chrono::TimeDelta) -> (Core, Arc<MemoryJournal>, ReservationId) {
    let id = ReservationId::new();
    let (core, journal) = core_with(CoreConfig::default(), Arc::new(EmptyStore)).await;
    warehouse(&core, 1, 100).await;
    // The stored line (w1/p7: 5 on hand) with its 2-unit hold, as recovery restores it.
    let seed = LineSeed {
        safety_stock: 0,
        on_hand: 5,
        reserved: 2,
        version: 3,
        updated_at: None,
        holds: vec![(id, 2)],
    };
    core.registry().restore(LineKey::new(1, 7), seed).unwrap();
    let created = chrono::Utc::now() - chrono::TimeDelta::minutes(20);
    core.reservations().restore(Reservation {
        id,
        status: ReservationStatus::Pending,
        items: vec![ReservedItem {
            committed: 0,
            released: 0,
            product_id: 7,
            warehouse_id: 1,
            quantity: 2,
        }],
        reference: Some("order-1".into()),
        expires_at: chrono::Utc::now() + expires_in,
        created_at: created,
        updated_at: created,
    });
    (core, journal, id)
}

#[tokio::test]
async fn a_restored_reservation_past_its_expiry_is_expired_at_start() {
    let (core, journal, id) = restored(chrono::TimeDelta::minutes(-5)).await;
    let reservations = core.reservations().clone();
    eventually(1_000, || {
        let r = reservations.get(id);
        async move { r.is_some_and(|r| r.status == ReservationStatus::Expired) }
    })
    .await;
    assert_eq!(levels(&core, 1, 7).await, (5, 0));
    let expired_record = journal.records().into_iter().any(|(_, r)| {
        matches!(r, Record::Reservation(r) if r.id == id && r.status == ReservationStatus::Expired)
    });
    assert!(expired_record, "the expiry at start is journaled");
}

#[tokio::test]
async fn a_restored_reservation_still_in_time_can_be_committed() {
    let (core, _, id) = restored(chrono::TimeDelta::minutes(5)).await;
    core.reservations().commit(id).await.unwrap();
    assert_eq!(levels(&core, 1, 7).await, (3, 0));
}

#[tokio::test]
async fn a_transfer_moves_available_stock_and_conserves_the_total() {
    let (core, journal) = core().await;
    warehouse(&core, 1, 100).await;
    warehouse(&core, 2, 100).await;
    stock(&core, 1, 7, 10).await;
    core.reservations()
        .reserve(request(vec![pinned(1, 7, 6)]))
        .await
        .unwrap();
    let transfer = |qty_n| TransferRequest {
        note: None,
        from_warehouse_id: 1,
        to_warehouse_id: 2,
        product_id: 7,
        quantity: qty(qty_n),
    };
    let (record, _) = core.transfer(transfer(4)).await.unwrap();
    assert_eq!(record.quantity, 4);
    assert_eq!(levels(&core, 1, 7).await, (6, 6));
    assert_eq!(levels(&core, 2, 7).await, (4, 0));
    let error = core.transfer(transfer(1)).await.unwrap_err();
    assert!(
        matches!(error, CoreError::InsufficientStock { .. }),
        "reserved stock does not move"
    );
    assert!(
        journal
            .records()
            .iter()
            .any(|(_, r)| matches!(r, Record::Transfer(_)))
    );
}

#[tokio::test]
async fn a_transfer_is_refused_for_inactive_or_identical_warehouses() {
    let (core, _) = core().await;
    warehouse(&core, 1, 100).await;
    warehouse(&core, 2, 100).await;
    stock(&core, 1, 7, 10).await;
    let request = |from, to| TransferRequest {
        note: None,
        from_warehouse_id: from,
        to_warehouse_id: to,
        product_id: 7,
        quantity: qty(1),
    };
    assert_eq!(
        core.transfer(request(1, 1)).await.unwrap_err(),
        CoreError::SameWarehouse
    );
    core.set_warehouse_active(2, false).await.unwrap();
    assert_eq!(
        core.transfer(request(1, 2)).await.unwrap_err(),
        CoreError::WarehouseInactive { warehouse_id: 2 }
    );
    assert_eq!(
        core.transfer(request(2, 1)).await.unwrap_err(),
        CoreError::WarehouseInactive { warehouse_id: 2 }
    );
    assert_eq!(levels(&core, 1, 7).await, (10, 0));
}

#[test]
fn reserved_items_name_their_line() {
    let item = ReservedItem {
        committed: 0,
        released: 0,
        product_id: 7,
        warehouse_id: 2,
        quantity: 1,
    };
    assert_eq!(item.key(), LineKey::new(2, 7));
}

#[tokio::test]
async fn a_transfer_whose_destination_refuses_puts_the_stock_back() {
    let (core, journal) = core().await;
    warehouse(&core, 1, 100).await;
    warehouse(&core, 2, 100).await;
    stock(&core, 1, 7, 10).await;
    stock(&core, 2, 7, 1).await;
    // The destination line went inactive after the up-front check would have passed: the
    // directory still says active, the line itself refuses.
    let destination = core.registry().resident(LineKey::new(2, 7)).unwrap();
    destination
        .settle(stockline_actors::LineOp::SetActive(false))
        .await
        .unwrap();
    let error = core
        .transfer(TransferRequest {
            note: None,
            from_warehouse_id: 1,
            to_warehouse_id: 2,
            product_id: 7,
            quantity: qty(4),
        })
        .await
        .unwrap_err();
    assert_eq!(error, CoreError::WarehouseInactive { warehouse_id: 2 });
    assert_eq!(
        levels(&core, 1, 7).await,
        (10, 0),
        "the stock taken out was put back"
    );
    assert_eq!(levels(&core, 2, 7).await, (1, 0));
    let kinds: Vec<_> = journal
        .movements(LineKey::new(1, 7))
        .iter()
        .map(|m| m.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            MovementKind::Adjust,
            MovementKind::TransferOut,
            MovementKind::TransferIn
        ]
    );
    assert!(
        !journal
            .records()
            .iter()
            .any(|(_, r)| matches!(r, Record::Transfer(_))),
        "no transfer was recorded"
    );
}

/// Polls `work` once and drops it, as axum drops a handler whose client hung up.
async fn abandon<F: std::future::Future>(work: F) {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        let _ = work.as_mut().poll(cx);
        std::task::Poll::Ready(())
    })
    .await
}

#[tokio::test]
async fn a_caller_that_goes_away_mid_commit_or_release_never_leaves_a_reservation_half_settled() {
    let (core, _) = core().await;
    warehouse(&core, 1, 100).await;
    warehouse(&core, 2, 200).await;
    for product in 1..=4 {
        stock(&core, 1, product, 10).await;
        stock(&core, 2, product, 10).await;
    }
    let items = || {
        (1..=4)
            .flat_map(|p| [pinned(1, p, 1), pinned(2, p, 1)])
            .collect()
    };
    let committed = reserve(&core, items()).await;
    let released = reserve(&core, items()).await;
    // Each settles eight lines; the callers give up after the first poll.
    abandon(core.reservations().commit(committed.id)).await;
    abandon(core.reservations().release(released.id)).await;
    eventually(200, || async {
        let statuses =
            [committed.id, released.id].map(|id| core.reservations().get(id).unwrap().status);
        statuses == [ReservationStatus::Committed, ReservationStatus::Released]
    })
    .await;
    for warehouse_id in 1..=2 {
        for product in 1..=4 {
            assert_eq!(levels(&core, warehouse_id, product).await, (9, 0));
        }
    }
}

#[tokio::test]
async fn a_caller_that_goes_away_mid_reserve_never_leaves_holds_of_a_refused_reservation() {
    let (core, _) = core().await;
    warehouse(&core, 1, 100).await;
    for product in 1..=6 {
        stock(&core, 1, product, 5).await;
    }
    // The last item cannot be held, so the first five are rolled back after the caller left.
    let mut items: Vec<_> = (1..=5).map(|p| pinned(1, p, 5)).collect();
    items.push(pinned(1, 6, 6));
    abandon(core.reservations().reserve(request(items))).await;
    eventually(200, || async {
        let mut all_free = true;
        for product in 1..=6 {
            all_free &= levels(&core, 1, product).await == (5, 0);
        }
        all_free
    })
    .await;
}

#[tokio::test]
async fn partial_commit_then_release_leaves_the_books_exact() {
    let (core, journal) = core().await;
    warehouse(&core, 1, 100).await;
    stock(&core, 1, 7, 10).await;
    stock(&core, 1, 8, 10).await;
    let r = reserve(&core, vec![item(7, 5), item(8, 3)]).await;
    let (line7, line8) = (LineKey::new(1, 7), LineKey::new(1, 8));
    let reservations = core.reservations();

    let (after, _) = reservations
        .settle_part(r.id, vec![(line7, qty(2))], true)
        .await
        .unwrap();
    assert_eq!(after.status, ReservationStatus::Pending);
    assert_eq!((after.items[0].committed, after.items[0].held()), (2, 3));
    assert_eq!(levels(&core, 1, 7).await, (8, 3));
    let (after, _) = reservations
        .settle_part(r.id, vec![(line8, qty(1))], false)
        .await
        .unwrap();
    assert_eq!((after.items[1].released, after.items[1].held()), (1, 2));
    assert_eq!(levels(&core, 1, 8).await, (10, 2));

    // Asking more than a line holds, or a line it does not hold, changes nothing.
    for parts in [
        vec![(line7, qty(1)), (line7, qty(3))],
        vec![(LineKey::new(1, 9), qty(1))],
    ] {
        let error = reservations
            .settle_part(r.id, parts, true)
            .await
            .unwrap_err();
        assert!(matches!(error, CoreError::PartNotHeld { .. }), "{error:?}");
    }
    assert_eq!(levels(&core, 1, 7).await, (8, 3));

    // Releasing everything left ends it committed: something was committed.
    let (done, _) = reservations.release(r.id).await.unwrap();
    assert_eq!(done.status, ReservationStatus::Committed);
    let counts: Vec<_> = done
        .items
        .iter()
        .map(|i| (i.quantity, i.committed, i.released))
        .collect();
    assert_eq!(counts, vec![(5, 2, 3), (3, 0, 3)]);
    assert_eq!(levels(&core, 1, 7).await, (8, 0));
    assert_eq!(levels(&core, 1, 8).await, (10, 0));
    let moved: Vec<_> = journal
        .movements(line7)
        .iter()
        .map(|m| (m.kind, m.quantity))
        .collect();
    assert_eq!(
        moved,
        vec![
            (MovementKind::Adjust, 10),
            (MovementKind::Reserve, 5),
            (MovementKind::Commit, 2),
            (MovementKind::Release, 3),
        ]
    );
    assert!(matches!(
        reservations
            .settle_part(r.id, vec![(line7, qty(1))], true)
            .await,
        Err(CoreError::ReservationNotPending { .. })
    ));

    // Settled wholly in parts, only releases: it ends released.
    let r = reserve(&core, vec![item(7, 2)]).await;
    let (done, _) = reservations
        .settle_part(r.id, vec![(line7, qty(1)), (line7, qty(1))], false)
        .await
        .unwrap();
    assert_eq!(done.status, ReservationStatus::Released);
    assert_eq!(levels(&core, 1, 7).await, (8, 0));
}

#[tokio::test]
async fn a_reshaped_reservation_grows_all_or_nothing_and_shrinks_from_its_last_lines() {
    let (core, _) = core().await;
    warehouse(&core, 1, 1).await;
    warehouse(&core, 2, 2).await;
    stock(&core, 1, 7, 3).await;
    stock(&core, 2, 7, 3).await;
    stock(&core, 1, 8, 2).await;
    let reservations = core.reservations();
    let ttl = Duration::from_secs(60);
    let (r, _) = reservations
        .reserve(request(vec![item(7, 2)]))
        .await
        .unwrap();

    let (grown, _) = reservations
        .reshape(r.id, vec![(7, 5), (8, 1)], ttl, None, Default::default())
        .await
        .unwrap();
    assert_eq!(grown.status, ReservationStatus::Pending);
    assert_eq!(
        held(&grown),
        vec![(1, 7, 3), (1, 8, 1), (2, 7, 2)],
        "growth allocated like a new reservation, under the same id"
    );
    // More than there is of product 8: nothing changes, product 7's growth is given back.
    let error = reservations
        .reshape(r.id, vec![(7, 6), (8, 3)], ttl, None, Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, CoreError::InsufficientStock { product_id: 8, .. }),
        "{error:?}"
    );
    assert_eq!(held(&reservations.get(r.id).unwrap()), held(&grown));
    assert_eq!(levels(&core, 1, 7).await, (3, 3));
    assert_eq!(levels(&core, 2, 7).await, (3, 2));
    assert_eq!(levels(&core, 1, 8).await, (2, 1));

    // Shrinking gives back from the last lines first; a product left out is let go.
    let (shrunk, _) = reservations
        .reshape(r.id, vec![(7, 3)], ttl, None, Default::default())
        .await
        .unwrap();
    let now: Vec<_> = shrunk
        .items
        .iter()
        .map(|i| (i.warehouse_id, i.product_id, i.held()))
        .collect();
    assert_eq!(now, vec![(1, 7, 3), (1, 8, 0), (2, 7, 0)]);
    assert_eq!(levels(&core, 2, 7).await, (3, 0));
    assert_eq!(levels(&core, 1, 8).await, (2, 0));

    // Emptied, it ends released; the stock is all back.
    let (empty, _) = reservations
        .reshape(r.id, vec![], ttl, None, Default::default())
        .await
        .unwrap();
    assert_eq!(empty.status, ReservationStatus::Released);
    assert_eq!(levels(&core, 1, 7).await, (3, 0));
    assert!(matches!(
        reservations
            .reshape(r.id, vec![(7, 1)], ttl, None, Default::default())
            .await,
        Err(CoreError::ReservationNotPending { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reshapes_racing_for_the_last_units_hold_exactly_the_stock() {
    let (core, _) = stocked(10).await;
    let core = Arc::new(core);
    let mut holders = Vec::new();
    for _ in 0..8 {
        let (r, _) = core
            .reservations()
            .reserve(request(vec![item(7, 1)]))
            .await
            .unwrap();
        holders.push(r.id);
    }
    // Eight holds of 1 each (8 of 10); each now tries to grow to 3 at once.
    let tasks: Vec<_> = holders
        .iter()
        .map(|id| {
            let (core, id) = (core.clone(), *id);
            tokio::spawn(async move {
                core.reservations()
                    .reshape(
                        id,
                        vec![(7, 3)],
                        Duration::from_secs(60),
                        None,
                        Default::default(),
                    )
                    .await
            })
        })
        .collect();
    let mut grown = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => grown += 1,
            Err(CoreError::InsufficientStock { .. }) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(grown, 1, "2 units were free: exactly one grows by 2");
    let held: u64 = holders
        .iter()
        .map(|id| core.reservations().get(*id).unwrap().items[0].held())
        .sum();
    assert_eq!(held, 10);
    assert_eq!(levels(&core, 1, 7).await, (10, 10));
}

#[tokio::test(start_paused = true)]
async fn a_reshape_extends_the_hold_and_its_expiry_releases_the_stock_once() {
    let (core, journal) = stocked(5).await;
    let reservations = core.reservations().clone();
    let ttl = Duration::from_secs(60);
    let mut req = request(vec![item(7, 2)]);
    req.ttl = ttl;
    let (r, _) = reservations.reserve(req).await.unwrap();
    tokio::time::sleep(Duration::from_secs(50)).await;
    reservations
        .reshape(r.id, vec![(7, 3)], ttl, None, Default::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        reservations.get(r.id).unwrap().status,
        ReservationStatus::Pending,
        "each change extends the hold"
    );
    assert_eq!(levels(&core, 1, 7).await, (5, 3));
    tokio::time::sleep(Duration::from_secs(31)).await;
    eventually(100, || {
        let r = reservations.get(r.id);
        async move { r.unwrap().status == ReservationStatus::Expired }
    })
    .await;
    assert_eq!(levels(&core, 1, 7).await, (5, 0));
    tokio::time::sleep(Duration::from_secs(120)).await;
    let expiries: Vec<_> = journal
        .movements(LineKey::new(1, 7))
        .into_iter()
        .filter(|m| m.kind == MovementKind::Expire)
        .map(|m| m.quantity)
        .collect();
    assert_eq!(expiries, vec![3], "released once, all of it");
}

#[tokio::test]
async fn a_reservation_under_a_given_id_is_made_once_however_often_it_is_asked() {
    let (core, _) = core().await;
    warehouse(&core, 1, 100).await;
    stock(&core, 1, 7, 5).await;
    let id = ReservationId::new();
    let reservations = core.reservations();
    let (first, _) = reservations
        .reserve_as(id, request(vec![item(7, 2)]))
        .await
        .unwrap();
    let (again, lsn) = reservations
        .reserve_as(id, request(vec![item(7, 2)]))
        .await
        .unwrap();
    assert_eq!((first.id, again.id), (id, id));
    assert_eq!(held(&again), vec![(1, 7, 2)]);
    assert!(lsn > 0, "the repeat waits for the record to be durable");
    assert_eq!(levels(&core, 1, 7).await, (5, 2), "held once");
}

#[tokio::test]
async fn an_id_released_before_it_was_reserved_is_buried_and_a_late_reserve_is_refused() {
    let (core, _) = core().await;
    warehouse(&core, 1, 100).await;
    stock(&core, 1, 7, 5).await;
    let id = ReservationId::new();
    let reservations = core.reservations();
    let (buried, lsn) = reservations.release_or_bury(id).await.unwrap();
    assert_eq!(buried.status, ReservationStatus::Released);
    assert!(buried.items.is_empty() && lsn > 0);
    let late = reservations
        .reserve_as(id, request(vec![item(7, 2)]))
        .await
        .unwrap_err();
    assert_eq!(
        late,
        CoreError::ReservationNotPending {
            status: ReservationStatus::Released
        }
    );
    assert_eq!(
        levels(&core, 1, 7).await,
        (5, 0),
        "the late reserve held nothing"
    );
    // A refused reserve buries its id too: asked again once stock came, it stays refused.
    let short = ReservationId::new();
    let refusal = reservations
        .reserve_as(short, request(vec![item(7, 9)]))
        .await
        .unwrap_err();
    assert!(matches!(refusal, CoreError::InsufficientStock { .. }));
    stock(&core, 1, 7, 20).await;
    let again = reservations
        .reserve_as(short, request(vec![item(7, 9)]))
        .await
        .unwrap_err();
    assert!(matches!(again, CoreError::ReservationNotPending { .. }));
    // A known pending one is simply released.
    let (held_one, _) = reservations
        .reserve_as(ReservationId::new(), request(vec![item(7, 3)]))
        .await
        .unwrap();
    let (released, _) = reservations.release_or_bury(held_one.id).await.unwrap();
    assert_eq!(held(&released), vec![(1, 7, 3)]);
    assert_eq!(levels(&core, 1, 7).await.1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reserve_and_a_release_of_one_id_racing_never_leave_a_hold_behind() {
    let (core, _) = core().await;
    warehouse(&core, 1, 100).await;
    stock(&core, 1, 7, 1_000).await;
    let core = Arc::new(core);
    for _ in 0..200 {
        let id = ReservationId::new();
        let reserve = tokio::spawn({
            let core = core.clone();
            async move {
                core.reservations()
                    .reserve_as(id, request(vec![item(7, 1)]))
                    .await
            }
        });
        let release = tokio::spawn({
            let core = core.clone();
            async move {
                // Retried while the reserve holds the id, as the coordinator does.
                loop {
                    match core.reservations().release_or_bury(id).await {
                        Err(CoreError::Unavailable(_)) => tokio::task::yield_now().await,
                        other => break other,
                    }
                }
            }
        });
        let (reserved, released) = (reserve.await.unwrap(), release.await.unwrap());
        assert!(released.is_ok(), "{released:?}");
        if let Ok((r, _)) = &reserved {
            assert_eq!(r.id, id);
        }
        let status = core.reservations().get(id).unwrap().status;
        assert_eq!(status, ReservationStatus::Released, "{reserved:?}");
    }
    assert_eq!(
        levels(&core, 1, 7).await,
        (1_000, 0),
        "nothing is held at the end"
    );
}
