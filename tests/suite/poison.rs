//! Text PostgreSQL cannot store never stops saving: the edge refuses a NUL in any stored
//! text field with 422, and a record that reaches the journal anyway is set aside in
//! `dead_letters` while the rest of its batch is written. A batch written again after it
//! committed (its answer lost) neither fails nor writes anything twice.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stockline::store::flusher::Flusher;
use stockline_actors::journal::ReservationRecord;
use stockline_actors::{Journal, JournalBuffer, LineKey, Record, ReservationId, ReservationStatus};
use testkit::*;

const NUL: &str = "a\u{0}b";

#[tokio::test]
async fn a_nul_in_any_stored_text_field_is_refused_with_422_and_saving_goes_on() {
    let app = TestApp::spawn().await;
    let (product, warehouse) = app.stocked_product(50).await;
    let (_, customer) = app.customer("buyer@example.com").await;
    let (status, order) = app
        .post(
            "/orders",
            &customer,
            json!({ "items": [{ "product_id": product, "quantity": 1 }] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let order_id = order["id"].as_str().unwrap().to_owned();
    let admin = app.admin.clone();
    let item = json!([{ "product_id": product, "quantity": 1 }]);
    // (method, path, token, body, field the 422 names)
    let cases: Vec<(Method, String, Option<&str>, Value, &str)> = vec![
        (
            Method::POST,
            "/products".into(),
            Some(&admin),
            json!({ "sku": NUL, "name": "n", "price_cents": 1 }),
            "sku",
        ),
        (
            Method::POST,
            "/products".into(),
            Some(&admin),
            json!({ "sku": "s", "name": NUL, "price_cents": 1 }),
            "name",
        ),
        (
            Method::POST,
            "/products".into(),
            Some(&admin),
            json!({ "sku": "s", "name": "n", "description": NUL, "price_cents": 1 }),
            "description",
        ),
        (
            Method::PATCH,
            format!("/products/{product}"),
            Some(&admin),
            json!({ "name": NUL }),
            "name",
        ),
        (
            Method::POST,
            "/warehouses".into(),
            Some(&admin),
            json!({ "code": "c", "name": "n", "location": NUL }),
            "location",
        ),
        (
            Method::PATCH,
            format!("/warehouses/{warehouse}"),
            Some(&admin),
            json!({ "name": NUL }),
            "name",
        ),
        (
            Method::POST,
            "/auth/register".into(),
            None,
            json!({ "email": "x@example.com", "password": "password-1", "name": NUL }),
            "name",
        ),
        (
            Method::POST,
            "/auth/login".into(),
            None,
            json!({ "login": NUL, "password": "password-1" }),
            "login",
        ),
        (
            Method::POST,
            "/reservations".into(),
            Some(&admin),
            json!({ "items": item, "reference": NUL }),
            "reference",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(&customer),
            json!({ "items": item, "shipping_address": { "street": NUL } }),
            "shipping_address.street",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(&customer),
            json!({ "items": item, "contact": { NUL: "x" } }),
            "contact.ab",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(&customer),
            json!({ "items": item, "contact": [1, NUL] }),
            "contact[1]",
        ),
        (
            Method::POST,
            format!("/orders/{order_id}/pay"),
            Some(&customer),
            json!({ "method": NUL, "amount_cents": 100 }),
            "method",
        ),
        (
            Method::PATCH,
            format!("/orders/{order_id}/status"),
            Some(&admin),
            json!({ "status": "shipped", "tracking_number": NUL }),
            "tracking_number",
        ),
        (
            Method::POST,
            "/stock/adjustments".into(),
            Some(&admin),
            json!({ "warehouse_id": warehouse, "product_id": product, "delta": 1, "reason": NUL }),
            "reason",
        ),
        (
            Method::GET,
            "/products?q=a%00b".into(),
            Some(&admin),
            Value::Null,
            "q",
        ),
    ];
    for (method, path, token, body, field) in cases {
        let body = (!body.is_null()).then_some(body);
        let (status, answer) = app.send(method.clone(), &path, token, body).await;
        let code = error_code(status, &answer, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(code, "validation_failed", "{method} {path}");
        assert_eq!(
            answer["error"]["details"]["field"], field,
            "{method} {path}: {answer}"
        );
    }
    // Saving goes on: a change after all that is durable, and the store is healthy.
    let line = app.stock(warehouse, product, 5).await;
    assert_eq!(line.on_hand, 55);
    let persistence = app.persistence().await;
    assert_eq!(
        (persistence.pending_records, persistence.dead_letters),
        (0, 0),
        "{persistence:?}"
    );
    let (status, _) = app.send(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    app.cleanup().await;
}

fn reservation(reference: &str) -> Record {
    let now = chrono::Utc::now();
    Record::Reservation(ReservationRecord {
        id: ReservationId::new(),
        created: false,
        status: ReservationStatus::Released,
        items: Vec::new(),
        reference: Some(reference.into()),
        expires_at: now,
        created_at: now,
        updated_at: now,
    })
}

#[tokio::test]
async fn a_record_postgresql_refuses_goes_to_dead_letters_and_the_rest_of_its_batch_is_written() {
    let database = fresh_database();
    let pool = stockline::store::connect_and_migrate(&database_url(&database))
        .await
        .unwrap();
    let buffer = Arc::new(JournalBuffer::new(0, 10_000));
    // The test-only hook: records appended straight into the journal, as if a bug had let
    // a NUL past the edge. 40 good records around one poisoned one, in one batch.
    let mut records: Vec<Record> = (1..=20).map(|q| movement(LineKey::new(1, 1), q)).collect();
    records.push(reservation(NUL));
    records.extend((21..=40).map(|q| movement(LineKey::new(2, 1), q)));
    let poisoned_lsn = 21;
    buffer.append(records);
    let flusher = sync_flusher(&pool, &buffer, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while buffer.backlog() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flusher is stuck"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Saving goes on: a later batch is written too.
    buffer.append(vec![movement(LineKey::new(3, 1), 41)]);
    assert!(
        flusher.finish().await,
        "everything was written or set aside"
    );

    let movements: i64 = sqlx::query_scalar("SELECT count(*) FROM movements")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(movements, 41, "every good record was written");
    let dead: Vec<(i64, String, String, String)> =
        sqlx::query_as("SELECT lsn, kind, record, error FROM dead_letters")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (lsn, kind, record, error) = &dead[0];
    assert_eq!((*lsn, kind.as_str()), (poisoned_lsn, "reservation"));
    assert!(
        record.contains(r"a\0b"),
        "the record is kept readable: {record}"
    );
    assert!(!error.is_empty());
    assert_eq!(
        buffer.durable().current(),
        42,
        "the watermark passed the dead letter"
    );
    pool.close().await;
    drop_database(&database).await;
}

/// A flusher of `buffer` as `sync` mode runs it (no gathering, pipelined), writing events
/// if asked.
fn sync_flusher(
    pool: &sqlx::PgPool,
    buffer: &Arc<stockline::store::records::Buffer>,
    events: bool,
) -> Flusher {
    Flusher::spawn(
        pool.clone(),
        buffer.clone(),
        stockline::store::flusher::Pacing {
            gather: Duration::ZERO,
            pipelined: true,
        },
        events.then(|| Arc::new(stockline::events::hub::EventHub::new(0, 1024))),
        None,
        tokio_util::sync::CancellationToken::new(),
    )
}

/// A line's version as the core journals it, with its movement.
fn change(key: LineKey, version: u64) -> [Record; 2] {
    let line = Record::Line(stockline_actors::journal::LineRecord {
        key,
        on_hand: version * 10,
        reserved: 0,
        safety_stock: 0,
        version,
        updated_at: chrono::Utc::now(),
    });
    [line, movement(key, 10)]
}

/// Flushes `records` from a journal numbered from 0, as a restarted flusher that never
/// heard whether its last batch committed would write them again; the dead letters after.
async fn flush_from_zero(pool: &sqlx::PgPool, records: Vec<Record>) -> i64 {
    let buffer = Arc::new(JournalBuffer::new(0, 10_000));
    buffer.append(records);
    let flusher = sync_flusher(pool, &buffer, true);
    assert!(flusher.finish().await, "everything was written");
    sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The hot path's one statement inserts the ledger and the events with no conflict clause,
/// only past the stored journal number. A batch written again after it committed (its
/// answer lost) must then write nothing twice and fail nothing, and a batch that reaches
/// past the stored number must write exactly what lies past it.
#[tokio::test]
async fn a_batch_written_again_after_it_committed_writes_nothing_twice() {
    let database = fresh_database();
    let pool = stockline::store::connect_and_migrate(&database_url(&database))
        .await
        .unwrap();
    sqlx::query("INSERT INTO warehouses (id, code, name) VALUES (1, 'w1', 'W1')")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO products (id, sku, name, price_cents) VALUES (1, 'p1', 'P1', 100)")
        .execute(&pool)
        .await
        .unwrap();
    let key = LineKey::new(1, 1);
    // Each version's change, and after the tenth a reservation's end (events of their own).
    let ended = reservation("r1");
    let versions = |range: std::ops::RangeInclusive<u64>| -> Vec<Record> {
        let mut records: Vec<Record> = range.clone().flat_map(|v| change(key, v)).collect();
        if *range.end() >= 10 {
            records.insert(20, ended.clone());
        }
        records
    };
    let stored = |pool: sqlx::PgPool| async move {
        let counts: (i64, i64, i64, String) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM movements), (SELECT count(*) FROM events),
                    (SELECT version FROM stock_lines WHERE warehouse_id = 1 AND product_id = 1),
                    (SELECT value FROM settings WHERE key = 'journal_lsn')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        counts
    };

    assert_eq!(flush_from_zero(&pool, versions(1..=10)).await, 0);
    let first = stored(pool.clone()).await;
    assert_eq!(
        (first.0, first.2, first.3.as_str()),
        (10, 10, "21"),
        "ten versions, each with its movement, and the reservation: journal numbers 1 to 21"
    );
    assert!(first.1 >= 10, "a stock.changed event per version at least");

    // The same batch again: nothing is written twice and nothing is refused.
    assert_eq!(flush_from_zero(&pool, versions(1..=10)).await, 0);
    assert_eq!(
        stored(pool.clone()).await,
        first,
        "written again, nothing changed"
    );

    // Reaching past the stored number: only the versions past it are written.
    assert_eq!(flush_from_zero(&pool, versions(1..=15)).await, 0);
    let after = stored(pool.clone()).await;
    assert_eq!((after.0, after.2, after.3.as_str()), (15, 15, "31"));
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM movements ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let past: Vec<i64> = (11..=15).map(|v| v * 2 + 1).collect();
    assert_eq!(ids, (1..=10).map(|v| v * 2).chain(past).collect::<Vec<_>>());
    let (events, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT data) FROM events WHERE type = 'stock.changed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (events, distinct),
        (15, 15),
        "one stock.changed per version"
    );
    pool.close().await;
    drop_database(&database).await;
}
