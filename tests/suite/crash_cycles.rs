//! kill -9 under load, five times over: concurrent clients receive stock, reserve and
//! commit against the real binary in `sync` mode; it is killed mid-stream; after each
//! restart every acknowledged change is there (an idempotent repeat answers the very same
//! answer and moves nothing), and the books agree: each line's `on_hand` is its receipts
//! minus its commits in the ledger, and `reserved` is the sum of its pending holds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;
use testkit::*;

const CYCLES: usize = 5;
const CLIENTS: usize = 8;
const LOAD: Duration = Duration::from_millis(800);

/// What the server acknowledged.
#[derive(Default)]
struct Acknowledged {
    /// (idempotency key, request body, answer body) of each receipt.
    receipts: Vec<(String, Value, Value)>,
    /// Reservations created, and those committed.
    reserved: Vec<String>,
    committed: Vec<String>,
}

async fn post(
    client: &Client,
    url: String,
    token: &str,
    key: Option<&str>,
    body: &Value,
) -> Option<(StatusCode, Value)> {
    let mut request = client.post(url).bearer_auth(token).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.ok()?;
    let status = response.status();
    let body = response.json().await.ok()?;
    Some((status, body))
}

/// One client's loop until `stop`: a receipt, then a reservation, committed every other time.
async fn client_loop(
    base: String,
    token: String,
    lines: Vec<(i64, i64)>,
    cycle: usize,
    n: usize,
    acks: Arc<Mutex<Acknowledged>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let client = Client::new();
    let mut i = 0usize;
    while !stop.is_cancelled() {
        i += 1;
        let (warehouse, product) = lines[i % lines.len()];
        let key = format!("c{cycle}-n{n}-i{i}");
        let receipt = json!({ "warehouse_id": warehouse, "product_id": product, "delta": 1, "reason": "receipt" });
        let Some((status, answer)) = post(
            &client,
            format!("{base}/api/v1/stock/adjustments"),
            &token,
            Some(&key),
            &receipt,
        )
        .await
        else {
            return;
        };
        if status == StatusCode::OK {
            acks.lock()
                .unwrap()
                .receipts
                .push((key.clone(), receipt, answer));
        }
        let hold = json!({ "items": [{ "product_id": product, "quantity": 1, "warehouse_id": warehouse }] });
        let Some((status, r)) = post(
            &client,
            format!("{base}/api/v1/reservations"),
            &token,
            Some(&format!("{key}-r")),
            &hold,
        )
        .await
        else {
            return;
        };
        if status != StatusCode::CREATED {
            continue;
        }
        let id = r["id"].as_str().unwrap().to_owned();
        acks.lock().unwrap().reserved.push(id.clone());
        if i.is_multiple_of(2) {
            let Some((status, _)) = post(
                &client,
                format!("{base}/api/v1/reservations/{id}/commit"),
                &token,
                None,
                &json!({}),
            )
            .await
            else {
                return;
            };
            if status == StatusCode::OK {
                acks.lock().unwrap().committed.push(id);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_kill_9_cycles_under_concurrent_load_lose_no_acknowledged_change() {
    let database = fresh_database();
    let (mut child, app) = start_binary_app(&database).await;
    let warehouses = [app.warehouse("W1", 1).await, app.warehouse("W2", 2).await];
    let products = [app.product("A", 100).await, app.product("B", 100).await];
    let lines: Vec<(i64, i64)> = warehouses
        .iter()
        .flat_map(|w| products.iter().map(move |p| (*w, *p)))
        .collect();
    let acks = Arc::new(Mutex::new(Acknowledged::default()));
    let mut base = app.base.clone();
    for cycle in 0..CYCLES {
        let token = TestApp::attach(&base, &database).await.admin;
        let stop = tokio_util::sync::CancellationToken::new();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|n| {
                tokio::spawn(client_loop(
                    base.clone(),
                    token.clone(),
                    lines.clone(),
                    cycle,
                    n,
                    acks.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(LOAD).await;
        // Killed mid-stream: requests are in flight on every client.
        child.kill().unwrap();
        child.wait().unwrap();
        stop.cancel();
        for client in clients {
            client.await.unwrap();
        }
        let (next, next_url) = start_binary(&database, &ADMIN_ENV);
        (child, base) = (next, next_url);
        let app = TestApp::attach(&base, &database).await;
        verify(&app, &acks, &lines).await;
    }
    let acked = acks.lock().unwrap().receipts.len();
    {
        let acks = acks.lock().unwrap();
        eprintln!(
            "{CYCLES} kill -9 cycles: {} receipts, {} reservations, {} commits acknowledged and verified",
            acks.receipts.len(),
            acks.reserved.len(),
            acks.committed.len()
        );
    }
    assert!(
        acked >= CYCLES * 10,
        "the load was real: {acked} receipts acknowledged"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    drop_database(&database).await;
}

async fn verify(app: &TestApp, acks: &Mutex<Acknowledged>, lines: &[(i64, i64)]) {
    let (receipts, reserved, committed) = {
        let acks = acks.lock().unwrap();
        (
            acks.receipts.clone(),
            acks.reserved.clone(),
            acks.committed.clone(),
        )
    };
    // Every acknowledged receipt is there: its repeat answers the same, and moves nothing.
    for (key, body, answer) in &receipts {
        let (status, replay) = post(
            &app.client,
            format!("{}/api/v1/stock/adjustments", app.base),
            &app.admin,
            Some(key),
            body,
        )
        .await
        .expect("the server answers");
        assert_eq!(
            (status, &replay),
            (StatusCode::OK, answer),
            "receipt {key} after restart"
        );
    }
    for id in &reserved {
        let (status, r) = app.get(&format!("/reservations/{id}"), &app.admin).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "acknowledged reservation {id} is there: {r}"
        );
    }
    for id in &committed {
        let (_, r) = app.get(&format!("/reservations/{id}"), &app.admin).await;
        assert_eq!(r["status"], "committed", "acknowledged commit of {id}");
    }
    // The books, from the ledger PostgreSQL holds, against what the server serves.
    let mut db = sqlx::PgConnection::connect(&database_url(&app.database))
        .await
        .unwrap();
    for (warehouse, product) in lines {
        let (receipts, commits): (i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(quantity) FILTER (WHERE kind = 'adjust'), 0)::bigint,
                    coalesce(sum(quantity) FILTER (WHERE kind = 'commit'), 0)::bigint
             FROM movements WHERE warehouse_id = $1 AND product_id = $2",
        )
        .bind(warehouse)
        .bind(product)
        .fetch_one(&mut db)
        .await
        .unwrap();
        let held: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(i.quantity), 0)::bigint FROM reservation_items i
             JOIN reservations r ON r.id = i.reservation_id
             WHERE r.status = 'pending' AND i.warehouse_id = $1 AND i.product_id = $2",
        )
        .bind(warehouse)
        .bind(product)
        .fetch_one(&mut db)
        .await
        .unwrap();
        let availability = app.availability(*product).await;
        let (on_hand, reserved) = availability
            .warehouses
            .iter()
            .find(|w| w.warehouse_id == *warehouse)
            .map_or((0, 0), |w| (w.on_hand, w.reserved));
        assert_eq!(
            on_hand as i64,
            receipts - commits.abs(),
            "on_hand of {warehouse}/{product}"
        );
        assert_eq!(reserved as i64, held, "reserved of {warehouse}/{product}");
    }
    db.close().await.unwrap();
}
