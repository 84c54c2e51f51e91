//! The write-behind store, measured against the local PostgreSQL (127.0.0.1:5432, or
//! `TEST_DATABASE_BASE`), on fresh databases that are dropped afterwards.
//!
//! 1. Flush throughput: records/s from the journal buffer into PostgreSQL, with line states
//!    coalesced, for a burst of reserve-like changes over 1,000 lines.
//! 2. `sync` vs `async`: latency of one `POST /reservations` (plus its release) from a
//!    single client against the real server, both modes in the same run, interleaved.
//!
//! Run: `cargo bench --bench store`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stockline::store::flusher::Flusher;
use stockline_actors::journal::{LineRecord, MovementKind, MovementRecord, Reference};
use stockline_actors::{Journal, JournalBuffer, LineKey, Record, ReservationId};

/// Appends `changes` reserve-like changes (a line state and a movement each) over 1,000
/// lines, and times how long until all of it is durable.
async fn flush_throughput(changes: usize) -> (f64, u64) {
    let (name, pool) = testkit::fresh_pool().await;
    sqlx::query("INSERT INTO warehouses (id, code, name) VALUES (1, 'W', 'W')")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO products (id, sku, name, price_cents) SELECT g, 'S' || g, 'P', 1 FROM generate_series(0, 999) g")
        .execute(&pool)
        .await
        .unwrap();
    let buffer = Arc::new(JournalBuffer::new(0, usize::MAX));
    let flusher = Flusher::spawn(
        pool.clone(),
        buffer.clone(),
        stockline::store::flusher::Pacing {
            gather: Duration::from_millis(5),
            pipelined: true,
        },
        None,
        None,
        tokio_util::sync::CancellationToken::new(),
    );
    let now = stockline_actors::types::now();
    let start = Instant::now();
    let mut last = 0;
    for i in 0..changes {
        let key = LineKey::new(1, (i % 1000) as i64);
        let version = (i / 1000 + 1) as u64;
        last = buffer.append(vec![
            Record::Line(LineRecord {
                safety_stock: 0,
                key,
                on_hand: 1_000_000,
                reserved: version,
                version,
                updated_at: now,
            }),
            Record::Movement(MovementRecord {
                safety_stock_after: 0,
                key,
                kind: MovementKind::Reserve,
                quantity: 1,
                on_hand_after: 1_000_000,
                reserved_after: version,
                reference: Reference::Reservation(ReservationId::new()),
                note: None,
                at: now,
            }),
        ]);
    }
    buffer.durable().wait_for(last).await.unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let batches = flusher
        .stats
        .batches_flushed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(flusher.finish().await);
    pool.close().await;
    testkit::drop_database(&name).await;
    (2.0 * changes as f64 / elapsed, batches)
}

/// A server of the kit with one product stocked, and its API's base URL and admin token
/// for the raw client here.
struct Server {
    base: String,
    token: String,
    product: i64,
    app: testkit::TestApp,
}

async fn server(durability: &str) -> Server {
    let app = testkit::TestApp::spawn_bench(&["--durability", durability]).await;
    let (product, warehouse) = (app.product("B", 1).await, app.warehouse("W", 0).await);
    app.stock(warehouse, product, 1_000_000).await;
    Server {
        base: app.url(""),
        token: app.admin.clone(),
        product,
        app,
    }
}

/// Times `rounds` reserve (+ release, untimed) round trips; answers the reservation latencies.
async fn reservations(
    server: &Server,
    client: &reqwest::Client,
    rounds: usize,
    out: &mut Vec<Duration>,
) {
    for _ in 0..rounds {
        let start = Instant::now();
        let created: Value = client
            .post(format!("{}/reservations", server.base))
            .bearer_auth(&server.token)
            .json(&json!({ "items": [{ "product_id": server.product, "quantity": 1 }] }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.push(start.elapsed());
        let id = created["id"].as_str().unwrap();
        client
            .post(format!("{}/reservations/{id}/release", server.base))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for changes in [10_000, 100_000] {
        let (rate, batches) = flush_throughput(changes).await;
        println!(
            "flush: {:>7} records in {batches:>4} batches: {rate:>10.0} records/s",
            2 * changes
        );
    }

    let (sync, asynchronous) = (server("sync").await, server("async").await);
    let client = reqwest::Client::new();
    let (mut sync_times, mut async_times) = (Vec::new(), Vec::new());
    // Interleaved, so both modes see the same machine noise.
    for _ in 0..10 {
        reservations(&sync, &client, 100, &mut sync_times).await;
        reservations(&asynchronous, &client, 100, &mut async_times).await;
    }
    for (name, times) in [("sync", &mut sync_times), ("async", &mut async_times)] {
        times.sort();
        println!(
            "POST /reservations {name:>5}: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  ({} requests)",
            percentile(times, 0.5),
            percentile(times, 0.9),
            percentile(times, 0.99),
            times.len()
        );
    }
    println!(
        "sync adds {:.2} ms at p50 (ratio {:.1}x)",
        percentile(&sync_times, 0.5) - percentile(&async_times, 0.5),
        percentile(&sync_times, 0.5) / percentile(&async_times, 0.5)
    );
    for server in [sync, asynchronous] {
        server.app.cleanup().await;
    }
}
