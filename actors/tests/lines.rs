//! Line actors through the registry: spawning, loading, journaling, bounds, counters.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use stockline_actors::journal::{MovementKind, Reference};
use stockline_actors::{
    Core, CoreConfig, CoreError, Journal, JournalBuffer, Limits, LineKey, LineOp, LineSeed, Record,
    ReservationId,
};

#[tokio::test]
async fn adjust_spawns_the_line_and_journals_state_and_movement() {
    let (core, journal) = core().await;
    warehouse(&core, 1, 100).await;
    let applied = core
        .adjust(LineKey::new(1, 7), 12, "receipt".into(), None)
        .await
        .unwrap();
    assert_eq!(
        (applied.snapshot.on_hand, applied.snapshot.version),
        (12, 1)
    );
    let records = journal.records();
    assert_eq!(records.len(), 2);
    assert_eq!(
        applied.lsn, 2,
        "the change answers the Lsn of its last record"
    );
    match (&records[0].1, &records[1].1) {
        (Record::Line(line), Record::Movement(movement)) => {
            assert_eq!((line.on_hand, line.reserved, line.version), (12, 0, 1));
            assert_eq!(movement.kind, MovementKind::Adjust);
            assert_eq!((movement.quantity, movement.on_hand_after), (12, 12));
            assert_eq!(movement.reference, Reference::Reason("receipt".into()));
        }
        other => panic!("unexpected records {other:?}"),
    }
}

#[tokio::test]
async fn a_line_of_an_unknown_warehouse_is_not_spawned() {
    let (core, _) = core().await;
    let error = core
        .adjust(LineKey::new(9, 7), 1, "receipt".into(), None)
        .await
        .unwrap_err();
    assert_eq!(error, CoreError::UnknownWarehouse { warehouse_id: 9 });
    assert!(core.registry().is_empty());
}

#[tokio::test]
async fn set_level_compare_and_swap_goes_through_the_actor() {
    let (core, _) = core().await;
    warehouse(&core, 1, 100).await;
    let key = LineKey::new(1, 7);
    stock(&core, 1, 7, 10).await;
    let stale = core
        .set_level(key, 3, Some(0), "count".into(), None)
        .await
        .unwrap_err();
    assert_eq!(
        stale,
        CoreError::VersionMismatch {
            expected: 0,
            actual: 1
        }
    );
    let ok = core
        .set_level(key, 3, Some(1), "count".into(), None)
        .await
        .unwrap();
    assert_eq!((ok.snapshot.on_hand, ok.snapshot.version), (3, 2));
}

#[tokio::test]
async fn a_refused_message_journals_nothing() {
    let (core, journal) = stocked(2).await;
    let before = journal.records().len();
    let error = core
        .adjust(LineKey::new(1, 7), -3, "damage".into(), None)
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        CoreError::InsufficientStock {
            requested: 3,
            available: 2,
            ..
        }
    ));
    assert_eq!(journal.records().len(), before);
    assert_eq!(levels(&core, 1, 7).await, (2, 0));
}

#[tokio::test]
async fn deactivating_a_warehouse_reaches_its_running_lines() {
    let (core, _) = stocked(5).await;
    core.set_warehouse_active(1, false).await.unwrap();
    let line = core.registry().resident(LineKey::new(1, 7)).unwrap();
    let refused = line
        .call(LineOp::TransferOut {
            note: None,
            id: Default::default(),
            qty: qty(1),
        })
        .await
        .unwrap_err();
    assert_eq!(refused, CoreError::WarehouseInactive { warehouse_id: 1 });
    assert!(!line.snapshot().await.unwrap().active);
    assert_eq!(
        core.set_warehouse_active(42, false).await.unwrap_err(),
        CoreError::UnknownWarehouse { warehouse_id: 42 }
    );
}

#[tokio::test]
async fn concurrent_first_uses_spawn_one_actor() {
    let (core, _) = core().await;
    warehouse(&core, 1, 100).await;
    let core = Arc::new(core);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let core = core.clone();
            tokio::spawn(async move {
                core.adjust(LineKey::new(1, 7), 1, "receipt".into(), None)
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(core.registry().len(), 1);
    assert_eq!(levels(&core, 1, 7).await, (50, 0));
}

#[tokio::test]
async fn a_line_starts_from_its_loaded_state_with_reserved_repaired_from_its_holds() {
    // A stored line whose `reserved` drifted from its one pending hold of 4.
    let store = MapStore::with([(
        LineKey::new(1, 7),
        LineSeed {
            safety_stock: 0,
            on_hand: 10,
            reserved: 9,
            version: 41,
            updated_at: None,
            holds: vec![(ReservationId::new(), 4)],
        },
    )]);
    let (core, _) = core_with(CoreConfig::default(), Arc::new(store)).await;
    warehouse(&core, 1, 100).await;
    let applied = core
        .adjust(LineKey::new(1, 7), 1, "receipt".into(), None)
        .await
        .unwrap();
    assert_eq!(
        (
            applied.snapshot.on_hand,
            applied.snapshot.reserved,
            applied.snapshot.version
        ),
        (11, 4, 43),
        "the repair is a version of its own (42), journaled so the store agrees"
    );
    let fresh = core
        .adjust(LineKey::new(1, 8), 1, "receipt".into(), None)
        .await
        .unwrap();
    assert_eq!(fresh.snapshot.version, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn calls_past_the_per_line_bound_are_refused_at_once() {
    let limits = Limits {
        per_line: 10,
        ..Limits::default()
    };
    let (core, _) = core_with(with_limits(limits), Arc::new(stockline_actors::EmptyStore)).await;
    warehouse(&core, 1, 100).await;
    stock(&core, 1, 7, 1_000).await;
    let line = core.registry().resident(LineKey::new(1, 7)).unwrap();
    // On one thread every task sends before the actor runs, so 50 calls are in flight at once.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let line = line.clone();
            tokio::spawn(async move {
                line.call(LineOp::Reserve {
                    id: ReservationId::new(),
                    qty: qty(1),
                })
                .await
            })
        })
        .collect();
    assert_eq!(accepted_and_overloaded(tasks).await, (10, 40));
    assert_eq!(
        levels(&core, 1, 7).await,
        (1_000, 10),
        "refused calls moved nothing"
    );
    assert_eq!(
        line.stats().mailbox_len,
        0,
        "every in-flight count was returned"
    );
    assert_eq!(core.registry().in_flight(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn calls_past_the_total_bound_are_refused_across_lines() {
    let limits = Limits {
        per_line: 100,
        total: 6,
        ..Limits::default()
    };
    let (core, _) = core_with(with_limits(limits), Arc::new(stockline_actors::EmptyStore)).await;
    warehouse(&core, 1, 100).await;
    let lines: Vec<_> = {
        let mut lines = Vec::new();
        for product in 0..3 {
            stock(&core, 1, product, 100).await;
            lines.push(core.registry().resident(LineKey::new(1, product)).unwrap());
        }
        lines
    };
    // Ten calls on each of three lines, all in flight before any actor runs.
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let line = lines[i % 3].clone();
            tokio::spawn(async move {
                line.call(LineOp::Reserve {
                    id: ReservationId::new(),
                    qty: qty(1),
                })
                .await
            })
        })
        .collect();
    let (accepted, _) = accepted_and_overloaded(tasks).await;
    assert_eq!(accepted, 6, "no more than the total bound at once");
    assert_eq!(core.registry().in_flight(), 0);
}

#[tokio::test]
async fn a_full_journal_backlog_refuses_new_work_but_settles_held_work() {
    let buffer = Arc::new(JournalBuffer::<Record>::new(0, 4));
    let core = Core::start(
        CoreConfig::default(),
        buffer.clone() as Arc<dyn Journal>,
        Arc::new(stockline_actors::EmptyStore),
    )
    .await
    .unwrap();
    warehouse(&core, 1, 100).await;
    stock(&core, 1, 7, 10).await;
    let (reservation, _) = core
        .reservations()
        .reserve(request(vec![item(7, 3)]))
        .await
        .unwrap();
    assert!(
        buffer.is_backlogged(),
        "5 records wait against a bound of 4"
    );
    let refused = core
        .adjust(LineKey::new(1, 7), 1, "receipt".into(), None)
        .await
        .unwrap_err();
    assert_eq!(refused, CoreError::Overloaded);
    // Settling what is already held, or putting sold stock back, is never refused for load.
    core.reservations().release(reservation.id).await.unwrap();
    core.return_stock(LineKey::new(1, 7), qty(2)).await.unwrap();
    while let Some(batch) = buffer.take() {
        buffer.complete(&batch);
    }
    assert_eq!(buffer.backlog(), 0);
    core.adjust(LineKey::new(1, 7), 1, "receipt".into(), None)
        .await
        .unwrap();
    assert_eq!(levels(&core, 1, 7).await, (13, 0));
}

#[tokio::test]
async fn operator_counters_are_read_without_stopping_the_line() {
    let (core, _) = core().await;
    warehouse(&core, 1, 100).await;
    for _ in 0..5 {
        stock(&core, 1, 7, 1).await;
    }
    let line = core.registry().resident(LineKey::new(1, 7)).unwrap();
    let stats = line.stats();
    assert_eq!(stats.messages_handled, 5);
    assert_eq!(stats.mailbox_len, 0);
    let last = stats.last_message_at.expect("a message was handled");
    assert!(chrono::Utc::now() - last < chrono::TimeDelta::seconds(5));
    assert_eq!(line.peek().on_hand, 5);
}

#[tokio::test]
async fn shutdown_drains_queued_messages_first() {
    let (core, journal) = stocked(1).await;
    let line = core.registry().resident(LineKey::new(1, 7)).unwrap();
    let pending: Vec<_> = (0..100)
        .map(|_| {
            let line = line.clone();
            tokio::spawn(async move {
                line.call(LineOp::Adjust {
                    note: None,
                    delta: 1,
                    reason: "receipt".into(),
                })
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    core.shutdown().await;
    let accepted = futures_count(pending).await;
    assert_eq!(journal.movements(LineKey::new(1, 7)).len(), 1 + accepted);
    assert_eq!(line.peek().on_hand, 1 + accepted as u64);
}

async fn futures_count(
    tasks: Vec<tokio::task::JoinHandle<stockline_actors::Result<stockline_actors::Applied>>>,
) -> usize {
    let mut ok = 0;
    for task in tasks {
        if task.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    ok
}

fn passivating(after: Duration) -> CoreConfig {
    with_limits(Limits {
        passivate_after: Some(after),
        ..Limits::default()
    })
}

#[tokio::test]
async fn an_idle_line_gives_up_its_actor_and_comes_back_with_its_state_on_the_next_message() {
    let (core, _) = core_with(
        passivating(Duration::from_millis(30)),
        Arc::new(stockline_actors::EmptyStore),
    )
    .await;
    warehouse(&core, 1, 100).await;
    stock(&core, 1, 7, 10).await;
    let r = reserve(&core, vec![item(7, 4)]).await;
    let line = core.registry().resident(LineKey::new(1, 7)).unwrap();
    let passivated = line.clone();
    eventually(2_000, || {
        let idle = !passivated.is_active();
        async move { idle }
    })
    .await;
    assert_eq!(core.registry().active_lines(), 0);
    assert_eq!(line.stats().passivations, 1);
    let counts = core.registry().stats();
    assert_eq!((counts.activations, counts.passivations), (1, 1));
    assert_eq!(
        line.snapshot().await.unwrap().reserved,
        4,
        "a passivated line still reads"
    );
    // The hold outlived the actor: committing it activates the line again.
    core.reservations().commit(r.id).await.unwrap();
    assert_eq!(levels(&core, 1, 7).await, (6, 0));
    assert_eq!(line.stats().messages_handled, 4);
    assert_eq!(
        core.registry().stats().activations,
        2,
        "the registry counts every activation, for operators"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_racing_passivation_and_eviction_are_applied_exactly_once() {
    // Sweeps every 10 ms passivate any line idle for 1 ms and evict it from memory, so
    // callers that pause keep meeting actors being drained and lines being retired.
    let store = Arc::new(MapStore::default());
    let (core, journal) = stored_core(passivating(Duration::from_millis(1)), store).await;
    warehouse(&core, 1, 100).await;
    let core = Arc::new(core);
    let pause = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let core = core.clone();
            let pause = pause.clone();
            tokio::spawn(async move {
                for i in 0..150u64 {
                    let key = LineKey::new(1, (i % 3) as i64);
                    core.adjust(key, 1, "receipt".into(), None).await.unwrap();
                    if (i + t) % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    if i % 50 == 49 {
                        // All quiet for longer than a sweep period: the lines passivate,
                        // then every task rushes back at once.
                        pause.wait().await;
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut total = 0;
    let mut passivations = 0;
    for product in 0..3 {
        let line = core
            .registry()
            .line(LineKey::new(1, product))
            .await
            .unwrap();
        let on_hand = line.snapshot().await.unwrap().on_hand;
        assert_eq!(
            journal.movements(line.key()).len() as u64,
            on_hand,
            "one movement per unit"
        );
        total += on_hand;
        passivations += line.stats().passivations;
    }
    assert_eq!(total, 16 * 150);
    let evictions = core.registry().stats().evictions;
    assert!(
        passivations + evictions > 0,
        "the sweeps must actually have passivated or evicted lines"
    );
}

fn with_limits(limits: Limits) -> CoreConfig {
    CoreConfig {
        limits,
        ..CoreConfig::default()
    }
}

/// Awaits every call; counts those accepted and those refused as overloaded.
async fn accepted_and_overloaded(
    tasks: Vec<tokio::task::JoinHandle<stockline_actors::Result<stockline_actors::Applied>>>,
) -> (usize, usize) {
    let (mut accepted, mut overloaded) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(CoreError::Overloaded) => overloaded += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    (accepted, overloaded)
}
