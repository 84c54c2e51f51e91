//! Virtual lines: loaded from the store on first touch (in batches, once per line), out of
//! memory when idle, never loaded stale.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use stockline_actors::{CoreConfig, Limits, LineKey, LineOp, LineSeed, ReservationStatus};

fn seed(on_hand: u64, version: u64) -> LineSeed {
    LineSeed {
        safety_stock: 0,
        on_hand,
        reserved: 0,
        version,
        updated_at: None,
        holds: Vec::new(),
    }
}

/// Lines passivate and may leave memory after `idle` (sweeps every `idle / 2`, >= 10 ms).
fn idle_after(idle: Duration) -> CoreConfig {
    CoreConfig {
        limits: Limits {
            passivate_after: Some(idle),
            ..Limits::default()
        },
        ..CoreConfig::default()
    }
}

/// No sweeps at all: the test evicts by hand, when it wants to.
fn never_idle() -> CoreConfig {
    CoreConfig {
        limits: Limits {
            passivate_after: None,
            ..Limits::default()
        },
        ..CoreConfig::default()
    }
}

#[tokio::test]
async fn a_cold_line_comes_up_with_exactly_its_stored_state_and_nothing_is_loaded_before() {
    let key = LineKey::new(1, 7);
    let store = Arc::new(MapStore::with([(key, seed(12, 5))]));
    let (core, _) = stored_core(never_idle(), store.clone()).await;
    warehouse(&core, 1, 100).await;
    assert_eq!(store.keys_loaded(), 0);
    assert!(core.registry().resident(key).is_none());

    let line = core.registry().line(key).await.unwrap();
    let now = line.snapshot().await.unwrap();
    assert_eq!((now.on_hand, now.reserved, now.version), (12, 0, 5));
    assert!(!line.is_active(), "loaded for a read: no actor yet");
    let applied = core.adjust(key, 3, "receipt".into(), None).await.unwrap();
    assert_eq!(
        (applied.snapshot.on_hand, applied.snapshot.version),
        (15, 6)
    );
    assert_eq!(store.keys_loaded(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_touches_of_one_cold_line_load_it_once() {
    let key = LineKey::new(1, 7);
    let store = Arc::new(MapStore {
        delay: Duration::from_millis(20),
        ..MapStore::with([(key, seed(100, 1))])
    });
    let (core, _) = stored_core(never_idle(), store.clone()).await;
    warehouse(&core, 1, 100).await;
    let core = Arc::new(core);
    let touches: Vec<_> = (0..64)
        .map(|_| {
            let core = core.clone();
            tokio::spawn(async move { core.adjust(key, 1, "receipt".into(), None).await })
        })
        .collect();
    for touch in touches {
        touch.await.unwrap().unwrap();
    }
    assert_eq!(store.keys_loaded(), 1, "one load for 64 first touches");
    assert_eq!(levels(&core, 1, 7).await, (164, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_touches_of_many_cold_lines_go_out_in_few_queries() {
    let store = Arc::new(MapStore {
        delay: Duration::from_millis(5),
        ..MapStore::with((0..1_000).map(|p| (LineKey::new(1, p), seed(10, 1))))
    });
    let (core, _) = stored_core(never_idle(), store.clone()).await;
    warehouse(&core, 1, 100).await;
    let core = Arc::new(core);
    let touches: Vec<_> = (0..1_000)
        .map(|p| {
            let core = core.clone();
            tokio::spawn(async move { core.registry().line(LineKey::new(1, p)).await })
        })
        .collect();
    for touch in touches {
        assert_eq!(touch.await.unwrap().unwrap().peek().on_hand, 10);
    }
    let queries = store.queries.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(store.keys_loaded(), 1_000);
    assert!(
        queries <= 50,
        "1,000 concurrent first touches took {queries} queries"
    );
}

#[tokio::test]
async fn a_line_passivated_while_its_flush_is_held_back_is_never_loaded_stale() {
    let key = LineKey::new(1, 7);
    let store = Arc::new(MapStore::with([(key, seed(10, 1))]));
    let (core, journal) = stored_core(idle_after(Duration::from_millis(20)), store.clone()).await;
    warehouse(&core, 1, 100).await;
    core.adjust(key, 5, "receipt".into(), None).await.unwrap();

    // The write-behind stalls: the newest state (20) is only in the journal's backlog.
    journal.hold();
    core.adjust(key, 5, "receipt".into(), None).await.unwrap();
    let line = core.registry().resident(key).unwrap();
    eventually(2_000, || async { line.stats().passivations > 0 }).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(core.registry().evict_idle(Duration::ZERO), 0);
    assert!(
        core.registry().resident(key).is_some(),
        "a line whose newest state is not durable stays in memory"
    );
    assert_eq!(
        store.lines.lock().unwrap()[&key].on_hand,
        15,
        "the store is behind"
    );
    let read = core.registry().line(key).await.unwrap();
    assert_eq!(read.snapshot().await.unwrap().on_hand, 20);
    assert_eq!(store.keys_loaded(), 1, "never loaded again while behind");

    // Once the flush lands, the line may leave, and comes back with the newest state.
    journal.release();
    eventually(2_000, || async { core.registry().resident(key).is_none() }).await;
    let back = core.registry().line(key).await.unwrap();
    assert_eq!(back.snapshot().await.unwrap().on_hand, 20);
    assert_eq!(store.keys_loaded(), 2);
}

#[tokio::test]
async fn a_line_with_pending_holds_stays_in_memory_until_they_settle() {
    let key = LineKey::new(1, 7);
    let store = Arc::new(MapStore::with([(key, seed(10, 1))]));
    let (core, _) = stored_core(idle_after(Duration::from_millis(20)), store.clone()).await;
    warehouse(&core, 1, 100).await;
    let r = reserve(&core, vec![pinned(1, 7, 4)]).await;
    let line = core.registry().resident(key).unwrap();
    eventually(2_000, || async { line.stats().passivations > 0 }).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(core.registry().resident(key).is_some(), "it holds 4");
    core.reservations().commit(r.id).await.unwrap();
    eventually(2_000, || async { core.registry().resident(key).is_none() }).await;
    let back = core.registry().line(key).await.unwrap().peek();
    assert_eq!((back.on_hand, back.reserved), (6, 0));
    assert_eq!(
        core.reservations().get(r.id).unwrap().status,
        ReservationStatus::Committed
    );
}

#[tokio::test]
async fn a_handle_kept_across_an_eviction_reaches_the_line_loaded_again() {
    let key = LineKey::new(1, 7);
    let store = Arc::new(MapStore::with([(key, seed(10, 1))]));
    let (core, _) = stored_core(never_idle(), store.clone()).await;
    warehouse(&core, 1, 100).await;
    let kept = core.registry().line(key).await.unwrap();
    assert_eq!(core.registry().evict_idle(Duration::ZERO), 1);
    let applied = kept
        .call(LineOp::Adjust {
            note: None,
            delta: 1,
            reason: "receipt".into(),
        })
        .await
        .unwrap();
    assert_eq!(applied.snapshot.on_hand, 11);
    let now = core.registry().resident(key).unwrap();
    assert_eq!(now.peek().on_hand, 11, "applied to the one line in memory");
    assert_eq!(
        kept.peek().on_hand,
        10,
        "the retired copy never changes again"
    );
    assert_eq!(store.keys_loaded(), 2);
}

#[tokio::test]
async fn allocation_finds_cold_lines_of_a_product_in_every_warehouse() {
    let store = Arc::new(MapStore::with([
        (LineKey::new(1, 7), seed(3, 1)),
        (LineKey::new(2, 7), seed(5, 1)),
        (LineKey::new(2, 8), seed(9, 1)),
    ]));
    let (core, _) = stored_core(never_idle(), store.clone()).await;
    warehouse(&core, 1, 100).await;
    warehouse(&core, 2, 100).await;
    let r = reserve(&core, vec![item(7, 7)]).await;
    let mut held: Vec<_> = r
        .items
        .iter()
        .map(|i| (i.warehouse_id, i.quantity))
        .collect();
    held.sort();
    assert_eq!(
        held,
        vec![(1, 2), (2, 5)],
        "most available first, then the rest"
    );
    assert!(
        core.registry().resident(LineKey::new(2, 8)).is_none(),
        "another product's line was not loaded"
    );
    // A line that appears later (a first receipt) joins its product.
    warehouse(&core, 3, 1).await;
    stock(&core, 3, 7, 4).await;
    let lines = core.registry().lines_of_product(7).await.unwrap();
    let warehouses: Vec<_> = lines.iter().map(|l| l.key().warehouse_id).collect();
    assert_eq!(warehouses, vec![1, 2, 3]);
}
