//! The fence in the write-behind flusher (cluster mode), against the real PostgreSQL: a
//! node's batch that changes a shard another node has taken over is refused whole. Its
//! requests hear that the change did not happen, nothing of it is stored, the node gives
//! up every shard it touched, and the flusher goes on with the batches after.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use stockline::cluster::shard_of;
use stockline_actors::{Journal, LineKey, NotDurable, Record};
use testkit::*;

fn receipt(product: i64, quantity: i64) -> Record {
    movement(LineKey::new(1, product), quantity)
}

async fn movements(pool: &PgPool) -> Vec<(i64, i64)> {
    sqlx::query_as("SELECT product_id, quantity FROM movements ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_batch_touching_a_shard_taken_over_is_refused_whole_and_the_flusher_goes_on() {
    let database = fresh_database();
    let url = database_url(&database);
    let pool = stockline::store::connect_and_migrate(&url).await.unwrap();
    let a = cluster::leases(&pool, "a", Duration::from_secs(30));
    cluster::round(&a).await;
    let (buffer, flusher) = cluster::journal(&pool, &url, "a", &a).await;
    assert_eq!(buffer.head(), 1 << 48, "the first node numbers from 2^48");
    let watch = buffer.durable();
    // Two products in different shards.
    let (kept, taken) = (1, (2..).find(|p| shard_of(*p) != shard_of(1)).unwrap());

    let lsn = buffer.append(vec![receipt(kept, 10), receipt(taken, 20)]);
    assert_eq!(watch.wait_for(lsn).await, Ok(()));
    assert_eq!(movements(&pool).await, [(kept, 10), (taken, 20)]);

    // Another node takes one shard over (as after this node was paused past its lease).
    sqlx::query("UPDATE shard_leases SET owner = 'b', epoch = epoch + 1 WHERE shard = $1")
        .bind(shard_of(taken) as i16)
        .execute(&pool)
        .await
        .unwrap();
    let refused = buffer.append(vec![receipt(kept, 11), receipt(taken, 21)]);
    assert_eq!(watch.wait_for(refused).await, Err(NotDurable::Refused));
    assert_eq!(
        watch.wait_for(refused - 1).await,
        Err(NotDurable::Refused),
        "the whole batch is refused, the shard still held included"
    );
    assert_eq!(movements(&pool).await, [(kept, 10), (taken, 20)]);
    assert_eq!(
        flusher
            .stats
            .refused_batches
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Both shards are given up: neither is served, and the one still held is released so
    // that it is claimed again and loaded afresh.
    assert_eq!(a.serving(shard_of(taken)), None);
    assert_eq!(a.serving(shard_of(kept)), None);
    let kept_owner: Option<String> =
        sqlx::query_scalar("SELECT owner FROM shard_leases WHERE shard = $1")
            .bind(shard_of(kept) as i16)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kept_owner, None);
    let round = cluster::round(&a).await;
    assert!(round.lost.contains(&shard_of(taken)) && round.lost.contains(&shard_of(kept)));
    assert!(
        round.claimed.contains(&(shard_of(kept), 2)),
        "{:?}",
        round.claimed
    );
    assert!(!round.claimed.iter().any(|(s, _)| *s == shard_of(taken)));

    // The flusher goes on: the next batch (the shard claimed again) is written.
    let after = buffer.append(vec![receipt(kept, 12)]);
    assert_eq!(watch.wait_for(after).await, Ok(()));
    assert_eq!(
        movements(&pool).await,
        [(kept, 10), (taken, 20), (kept, 12)]
    );
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT key, value FROM settings WHERE key LIKE 'journal_lsn%'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored, [("journal_lsn.1".to_owned(), after.to_string())]);
    assert!(flusher.finish().await);
    drop_database(&database).await;
}

/// Two nodes write to one database at once: each numbers from its own ordinal, so the
/// ledger's keys never collide, and each keeps its own stored position.
#[tokio::test]
async fn two_nodes_write_side_by_side_with_journal_numbers_of_their_own() {
    let database = fresh_database();
    let url = database_url(&database);
    let pool = stockline::store::connect_and_migrate(&url).await.unwrap();
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let leases = cluster::leases(&pool, name, Duration::from_secs(30));
        nodes.push((name, leases));
    }
    // a claims everything, b joins, a hands half over, b claims it.
    cluster::round(&nodes[0].1).await;
    cluster::round(&nodes[1].1).await;
    let handing = cluster::round(&nodes[0].1).await.handing_off;
    nodes[0].1.release(&handing).await.unwrap();
    cluster::round(&nodes[1].1).await;

    let mut running = Vec::new();
    for (name, leases) in &nodes {
        let (buffer, flusher) = cluster::journal(&pool, &url, name, leases).await;
        // Products of the shards this node serves.
        let mine: Vec<i64> = (1..)
            .filter(|p| leases.serving(shard_of(*p)).is_some())
            .take(50)
            .collect();
        running.push((buffer, flusher, mine));
    }
    let writers = running.iter().map(|(buffer, _, mine)| {
        let (buffer, mine) = (buffer.clone(), mine.clone());
        async move {
            let watch = buffer.durable();
            for (n, product) in mine.into_iter().enumerate() {
                let lsn = buffer.append(vec![receipt(product, n as i64 + 1)]);
                assert_eq!(watch.wait_for(lsn).await, Ok(()));
            }
        }
    });
    futures_util::future::join_all(writers).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM movements")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 100, "no movement lost to a key another node used");
    let positions: Vec<(String, String)> = sqlx::query_as(
        "SELECT key, value FROM settings WHERE key LIKE 'journal_lsn%' ORDER BY key",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        positions,
        [
            ("journal_lsn.1".to_owned(), ((1u64 << 48) + 50).to_string()),
            ("journal_lsn.2".to_owned(), ((2u64 << 48) + 50).to_string()),
        ]
    );
    for (_, flusher, _) in running {
        assert!(flusher.finish().await);
    }
    drop_database(&database).await;
}

/// A node that claims shards restores their live state from the store: the pending
/// reservations holding stock of their products, and those lines with their holds; and
/// nothing of the shards it did not claim.
#[tokio::test]
async fn a_claimed_shard_gets_back_its_pending_reservations_and_the_lines_they_hold() {
    let mut app = TestApp::spawn().await;
    let warehouse = app.warehouse("W", 1).await;
    let claimed = app.product("CLAIMED", 100).await;
    let mut others = Vec::new();
    // A product of another shard.
    let elsewhere = loop {
        let product = app.product(&format!("O{}", others.len()), 100).await;
        others.push(product);
        if shard_of(product) != shard_of(claimed) {
            break product;
        }
    };
    for product in [claimed, elsewhere] {
        app.stock(warehouse, product, 10).await;
    }
    let (status, held) = app.reserve(claimed, 3).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{held}");
    let (status, held_elsewhere) = app.reserve(elsewhere, 4).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{held_elsewhere}");
    app.stop().await;

    let pool = stockline::store::connect_and_migrate(&database_url(&app.database))
        .await
        .unwrap();
    let core = stockline_actors::Core::start(
        stockline_actors::CoreConfig::default(),
        Arc::new(stockline_actors::MemoryJournal::new()),
        Arc::new(stockline::store::recovery::PgStore::new(pool.clone())),
    )
    .await
    .unwrap();
    stockline::store::recovery::read_shards(&pool, &[shard_of(claimed)])
        .await
        .unwrap()
        .restore_into(&core)
        .await
        .unwrap();
    let id = |body: &serde_json::Value| {
        stockline_actors::ReservationId(body["id"].as_str().unwrap().parse().unwrap())
    };
    let restored = core.reservations().get(id(&held)).expect("restored");
    assert_eq!(restored.items[0].quantity, 3);
    assert!(core.reservations().get(id(&held_elsewhere)).is_none());
    let line = core
        .registry()
        .resident(LineKey::new(warehouse, claimed))
        .expect("the line with holds is in memory");
    let now = line.snapshot().await.unwrap();
    assert_eq!((now.on_hand, now.reserved), (10, 3));
    assert!(
        core.registry()
            .resident(LineKey::new(warehouse, elsewhere))
            .is_none()
    );
    // The hold is live: releasing it gives the stock back.
    let (released, _) = core.reservations().release(id(&held)).await.unwrap();
    assert_eq!(
        released.status,
        stockline_actors::ReservationStatus::Released
    );
    let after = line.snapshot().await.unwrap();
    assert_eq!(after.reserved, 0);
    drop_database(&app.database).await;
}
