//! Races with real tasks on a multi-threaded runtime: no oversell, no drift, no lost stock.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use stockline_actors::{Core, CoreError, LineKey, ReservationStatus, TransferRequest};

fn spawn_all<T, F>(
    n: usize,
    core: &Arc<Core>,
    f: impl Fn(Arc<Core>, usize) -> F,
) -> Vec<tokio::task::JoinHandle<T>>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    (0..n).map(|i| tokio::spawn(f(core.clone(), i))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_single_unit_reservations_against_a_hundred_units_give_exactly_a_hundred() {
    let (core, _) = stocked(100).await;
    let core = Arc::new(core);
    let tasks = spawn_all(1_000, &core, |core, _| async move {
        core.reservations().reserve(request(vec![item(7, 1)])).await
    });
    let (mut won, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(CoreError::InsufficientStock { .. }) => refused += 1,
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert_eq!((won, refused), (100, 900));
    assert_eq!(levels(&core, 1, 7).await, (100, 100));
    assert_eq!(core.reservations().pending().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_multi_item_reservations_never_oversell_and_reserved_matches_pending() {
    let (core, _) = core().await;
    for w in 1..=3 {
        warehouse(&core, w, w as i32 * 10).await;
        for p in 1..=4 {
            stock(&core, w, p, 7).await;
        }
    }
    let core = Arc::new(core);
    // 400 baskets over 4 products (overlapping), some pinned, some settled at once.
    let tasks = spawn_all(400, &core, |core, i| async move {
        let a = (i % 4) as i64 + 1;
        let b = ((i / 4) % 4) as i64 + 1;
        let mut items = vec![item(a, 1 + (i % 3) as u64), item(b, 1)];
        if i % 5 == 0 {
            items.push(pinned((i % 3) as i64 + 1, a, 1));
        }
        let result = core.reservations().reserve(request(items)).await;
        if let Ok((r, _)) = &result {
            match i % 4 {
                0 => drop(core.reservations().commit(r.id).await.unwrap()),
                1 => drop(core.reservations().release(r.id).await.unwrap()),
                _ => {}
            }
        }
        result.map(|_| ())
    });
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => won += 1,
            Err(CoreError::InsufficientStock { .. }) => {}
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert!(won > 10, "some baskets must have been served, got {won}");

    let mut pending_per_line: HashMap<LineKey, u64> = HashMap::new();
    for r in core.reservations().pending() {
        for item in r.items {
            *pending_per_line.entry(item.key()).or_default() += item.quantity;
        }
    }
    for line in core.registry().resident_lines() {
        let s = line.snapshot().await.unwrap();
        assert!(
            s.reserved <= s.on_hand,
            "{}: reserved {} > on_hand {}",
            s.key,
            s.reserved,
            s.on_hand
        );
        assert_eq!(
            s.reserved,
            pending_per_line.get(&s.key).copied().unwrap_or(0),
            "{}",
            s.key
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_back_and_forth_conserve_stock() {
    let (core, journal) = core().await;
    // Deep enough that no interleaving can drain a warehouse: every refusal would then be
    // a bug, not bad luck.
    for w in 1..=3 {
        warehouse(&core, w, 100).await;
        stock(&core, w, 7, 2_000).await;
    }
    let core = Arc::new(core);
    let tasks = spawn_all(600, &core, |core, i| async move {
        let from = (i % 3) as i64 + 1;
        let to = ((i + 1 + i / 3) % 3) as i64 + 1;
        let request = TransferRequest {
            note: None,
            from_warehouse_id: from,
            to_warehouse_id: if to == from { from % 3 + 1 } else { to },
            product_id: 7,
            quantity: qty(1 + (i % 7) as u64),
        };
        core.transfer(request).await
    });
    for task in tasks {
        task.await.unwrap().expect("every transfer goes through");
    }
    let mut total = 0;
    for w in 1..=3 {
        let (on_hand, reserved) = levels(&core, w, 7).await;
        assert_eq!(reserved, 0);
        total += on_hand;
        let ledger: i64 = journal
            .movements(LineKey::new(w, 7))
            .iter()
            .map(|m| match m.kind.as_str() {
                "transfer_out" => -m.quantity,
                _ => m.quantity,
            })
            .sum();
        assert_eq!(
            ledger, on_hand as i64,
            "the ledger of w{w} sums to its on_hand"
        );
    }
    assert_eq!(total, 6_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_racing_commit_and_release_of_one_reservation_settle_it_once() {
    let (core, _) = core().await;
    warehouse(&core, 1, 100).await;
    warehouse(&core, 2, 100).await;
    stock(&core, 1, 7, 200).await;
    stock(&core, 2, 8, 200).await;
    let core = Arc::new(core);
    for _ in 0..50 {
        let r = reserve(&core, vec![item(7, 2), item(8, 2)]).await;
        let commit = tokio::spawn({
            let core = core.clone();
            async move { core.reservations().commit(r.id).await }
        });
        let release = tokio::spawn({
            let core = core.clone();
            async move { core.reservations().release(r.id).await }
        });
        let outcomes = [commit.await.unwrap(), release.await.unwrap()];
        let winners = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(
            winners, 1,
            "exactly one of commit and release wins: {outcomes:?}"
        );
        let status = core.reservations().get(r.id).unwrap().status;
        assert_ne!(status, ReservationStatus::Pending);
    }
    let (on_hand_7, reserved_7) = levels(&core, 1, 7).await;
    let (on_hand_8, reserved_8) = levels(&core, 2, 8).await;
    assert_eq!((reserved_7, reserved_8), (0, 0));
    assert_eq!(
        on_hand_7, on_hand_8,
        "both lines of each basket settled the same way"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_backorder_limit_exactly_stock_plus_limit_reservations_succeed_and_receipts_fill_the_oldest()
 {
    let (core, _) = core().await;
    warehouse(&core, 1, 1).await;
    warehouse(&core, 2, 2).await;
    stock(&core, 1, 7, 6).await;
    stock(&core, 2, 7, 4).await;
    let core = Arc::new(core);
    let tasks = spawn_all(300, &core, |core, _| async move {
        let mut request = request(vec![item(7, 1)]);
        request.backorder_limits = [(7, 5)].into();
        core.reservations().reserve(request).await
    });
    let mut won = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok((r, _)) => won.push(r),
            Err(CoreError::InsufficientStock { .. }) => {}
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert_eq!(won.len(), 15, "10 in stock and 5 backordered");
    let (w1, w2) = (levels(&core, 1, 7).await, levels(&core, 2, 7).await);
    assert_eq!((w1.0 + w2.0, w1.1 + w2.1), (10, 15));
    assert_eq!(
        w1,
        (6, 11),
        "backorders go to the first warehouse by priority"
    );

    // Receipts fill the oldest backorders first; nothing not on hand is ever committed.
    won.sort_by_key(|r| r.id);
    let line = core.registry().resident(LineKey::new(1, 7)).unwrap();
    let short: Vec<_> = won
        .iter()
        .filter(|r| r.items[0].warehouse_id == 1 && line.filled(r.id) == 0)
        .map(|r| r.id)
        .collect();
    assert_eq!(short.len(), 5);
    assert!(matches!(
        core.reservations().commit(short[0]).await,
        Err(CoreError::Backordered { backordered: 1, .. })
    ));
    stock(&core, 1, 7, 2).await;
    let filled: Vec<_> = short.iter().map(|id| line.filled(*id)).collect();
    assert_eq!(filled, vec![1, 1, 0, 0, 0], "the two oldest first");
    // Everything committed as stock arrives leaves the books exact.
    stock(&core, 1, 7, 3).await;
    let commits = spawn_all(won.len(), &core, {
        let ids: Vec<_> = won.iter().map(|r| r.id).collect();
        move |core, i| {
            let id = ids[i];
            async move { core.reservations().commit(id).await }
        }
    });
    for task in commits {
        task.await.unwrap().unwrap();
    }
    assert_eq!(levels(&core, 1, 7).await, (0, 0));
    assert_eq!(levels(&core, 2, 7).await, (0, 0));
}

#[tokio::test]
async fn a_commit_with_one_backordered_line_touches_no_line() {
    let (core, _) = core().await;
    warehouse(&core, 1, 1).await;
    stock(&core, 1, 7, 5).await;
    let mut request = request(vec![item(7, 2), item(8, 1)]);
    request.backorder_limits = [(8, 1)].into();
    let (r, _) = core.reservations().reserve(request).await.unwrap();
    assert!(matches!(
        core.reservations().commit(r.id).await,
        Err(CoreError::Backordered {
            product_id: 8,
            backordered: 1
        })
    ));
    assert_eq!(levels(&core, 1, 7).await, (5, 2), "product 7 did not leave");
    assert_eq!(
        core.reservations().get(r.id).unwrap().status,
        ReservationStatus::Pending
    );
    stock(&core, 1, 8, 1).await;
    core.reservations().commit(r.id).await.unwrap();
    assert_eq!(levels(&core, 1, 7).await, (3, 0));
    assert_eq!(levels(&core, 1, 8).await, (0, 0));
}
