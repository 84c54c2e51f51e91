//! The pipelined flusher under kill -9: with two batches in flight (one committing, the
//! next prepared behind it), nothing acknowledged is lost and nothing is applied out of
//! order. The test holds the stored journal number's row lock, so the first batch's
//! closing statement waits on it while the second is prepared; PostgreSQL shows both.
//! Both are transfers (transaction batches): a one-statement batch takes its row locks as
//! it commits, so a transaction batch is never prepared behind one (they would wait on
//! each other), and a one-statement batch prepared behind another holds nothing in
//! PostgreSQL to see.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use testkit::api::Availability;
use testkit::*;

/// Backends of `database` in the given state: (waiting on a lock, idle in a transaction).
async fn flusher_backends(admin: &mut PgConnection, database: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'),
                count(*) FILTER (WHERE state = 'idle in transaction')
         FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_one(admin)
    .await
    .unwrap()
}

/// Backends of `database` still open, other than the test's own.
async fn flusher_backends_alive(admin: &mut PgConnection, database: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    .bind(database)
    .fetch_one(admin)
    .await
    .unwrap()
}

/// Holds the stored journal number's row in a transaction open on the connection it
/// answers: the next batch's closing statement waits on it until [`let_go`].
async fn hold_journal_row(database: &str) -> PgConnection {
    let mut holder = PgConnection::connect(&database_url(database))
        .await
        .unwrap();
    for statement in [
        "BEGIN",
        "SELECT value FROM settings WHERE key = 'journal_lsn' FOR UPDATE",
    ] {
        sqlx::query(statement).execute(&mut holder).await.unwrap();
    }
    holder
}

/// Rolls the holding transaction back and closes its connection.
async fn let_go(mut holder: PgConnection) {
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
}

/// Waits until a backend of `database` waits on a lock (a batch reached the held row);
/// panics after 10 s, saying `what` never got there.
async fn until_one_waits(watcher: &mut PgConnection, database: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while flusher_backends(watcher, database).await.0 < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never reached the held row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the server with SIGKILL, checks that the stored books agree (no movement past
/// the stored journal number; `reserved` and `on_hand` what the pending reservations and
/// the ledger say), and starts the next server over the same database.
async fn kill_check_and_restart(
    mut child: std::process::Child,
    database: &str,
) -> (std::process::Child, TestApp) {
    child.kill().unwrap();
    child.wait().unwrap();
    let (journal, newest_movement, reserved_drift, ledger_drift) = stored_books(database).await;
    assert!(newest_movement <= journal);
    assert_eq!((reserved_drift, ledger_drift), (0, 0), "the books agree");
    start_binary_app(database).await
}

/// The ledger's (kind, quantity) pairs.
async fn stored_kinds(database: &str) -> Vec<(String, i64)> {
    let mut db = PgConnection::connect(&database_url(database))
        .await
        .unwrap();
    sqlx::query_as("SELECT kind, quantity FROM movements ORDER BY id")
        .fetch_all(&mut db)
        .await
        .unwrap()
}

/// What PostgreSQL holds, checked as an operator would: the stored journal number, the
/// highest journal number of any stored movement, and the lines whose `reserved` is not
/// what their pending reservations hold or whose ledger does not sum to `on_hand`.
async fn stored_books(database: &str) -> (i64, i64, i64, i64) {
    let mut db = PgConnection::connect(&database_url(database))
        .await
        .unwrap();
    let journal: String =
        sqlx::query_scalar("SELECT value FROM settings WHERE key = 'journal_lsn'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    let newest_movement: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM movements")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let reserved_drift: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stock_lines s LEFT JOIN (
           SELECT i.warehouse_id, i.product_id, sum(i.quantity - i.committed - i.released) AS q
           FROM reservation_items i JOIN reservations r ON r.id = i.reservation_id
           WHERE r.status = 'pending' GROUP BY 1, 2) p
         USING (warehouse_id, product_id) WHERE s.reserved <> coalesce(p.q, 0)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    let ledger_drift: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stock_lines s LEFT JOIN (
           SELECT warehouse_id, product_id, sum(CASE kind WHEN 'adjust' THEN quantity
             WHEN 'transfer_in' THEN quantity WHEN 'commit' THEN -quantity
             WHEN 'transfer_out' THEN -quantity ELSE 0 END) AS v
           FROM movements GROUP BY 1, 2) m
         USING (warehouse_id, product_id) WHERE s.on_hand <> coalesce(m.v, 0)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    (
        journal.parse().unwrap(),
        newest_movement,
        reserved_drift,
        ledger_drift,
    )
}

fn line(availability: &Availability, warehouse: i64) -> (i64, i64) {
    let line = availability
        .warehouses
        .iter()
        .find(|l| l.warehouse_id == warehouse)
        .unwrap_or_else(|| panic!("no line in {warehouse}: {availability:?}"));
    (line.on_hand as i64, line.reserved as i64)
}

#[tokio::test]
async fn kill_9_with_two_batches_in_flight_loses_nothing_acknowledged_and_applies_nothing_out_of_order()
 {
    let database = fresh_database();
    let (mut child, app) = start_binary_app(&database).await;
    let (hot, w1) = app.stocked_product(100).await;
    let cold = app.product("COLD", 100).await;
    let w2 = app.warehouse("W2", 2).await;
    app.stock(w1, cold, 50).await;
    app.stock(w2, cold, 50).await;
    let other = app.product("OTHER", 100).await;
    app.stock(w1, other, 50).await;
    app.stock(w2, other, 50).await;
    let (status, acknowledged) = app.reserve(hot, 3).await;
    assert_eq!(status, StatusCode::CREATED, "{acknowledged}");
    let hot_before = app.availability(hot).await;
    let cold_before = app.availability(cold).await;
    let other_before = app.availability(other).await;
    let books_before = stored_books(&database).await;
    assert_eq!((books_before.2, books_before.3), (0, 0));

    let holder = hold_journal_row(&database).await;
    let client = reqwest::Client::new();
    let send = |path: &'static str, body: Value| {
        let request = client
            .post(format!("{}/api/v1{path}", app.base))
            .bearer_auth(&app.admin)
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send();
        tokio::spawn(async move { request.await.map(|r| r.status()) })
    };
    // First batch: a transfer (a transaction of several statements), held at its close.
    let first = send(
        "/transfers",
        json!({ "from_warehouse_id": w1, "to_warehouse_id": w2, "product_id": cold, "quantity": 7 }),
    );
    let mut watcher = PgConnection::connect(&database_url("postgres"))
        .await
        .unwrap();
    until_one_waits(&mut watcher, &database, "the first batch").await;
    assert!(!first.is_finished(), "answered before durable");
    // Second batch: another transfer, on other lines, prepared behind it.
    let second = send(
        "/transfers",
        json!({ "from_warehouse_id": w1, "to_warehouse_id": w2, "product_id": other, "quantity": 9 }),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while flusher_backends(&mut watcher, &database).await != (1, 2) {
        // (1, 2): the first batch waiting, the second idle in its open transaction, and
        // the test's own lock holder.
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second batch was never prepared: {:?}",
            flusher_backends(&mut watcher, &database).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !first.is_finished() && !second.is_finished(),
        "neither is acknowledged before it is durable"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    let_go(holder).await;
    for request in [first, second] {
        let answer = request.await.unwrap();
        assert!(
            answer.is_err(),
            "a request in a batch that never committed was answered: {answer:?}"
        );
    }
    // The killed server's backends end and roll back: the first never got to send its
    // COMMIT, the second was idle in its transaction.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while flusher_backends_alive(&mut watcher, &database).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the killed server's backends linger"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (journal, newest_movement, reserved_drift, ledger_drift) = stored_books(&database).await;
    assert!(
        newest_movement <= journal,
        "a movement past the stored journal number: {newest_movement} > {journal}"
    );
    assert_eq!((reserved_drift, ledger_drift), (0, 0), "the books agree");
    assert_eq!(
        (journal, newest_movement),
        (books_before.0, books_before.1),
        "neither batch is stored"
    );
    let kinds = stored_kinds(&database).await;
    assert!(
        !kinds.iter().any(|(kind, _)| kind == "transfer_out"),
        "a transfer never acknowledged was stored: {kinds:?}"
    );

    let (child, url) = start_binary(&database, &ADMIN_ENV);
    let app = TestApp::attach(&url, &database).await;
    assert_eq!(app.availability(hot).await, hot_before);
    assert_eq!(app.availability(cold).await, cold_before);
    assert_eq!(app.availability(other).await, other_before);
    let id = acknowledged["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/reservations/{id}"), &app.admin).await.1["status"],
        "pending",
        "the reservation acknowledged before the kill is there"
    );

    // The same two batches without the held row commit in order; kill -9 right after
    // both are acknowledged keeps both.
    let (status, body) = app.reserve(hot, 5).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post(
            "/transfers",
            &app.admin,
            json!({ "from_warehouse_id": w1, "to_warehouse_id": w2, "product_id": cold, "quantity": 7 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (mut child, app) = kill_check_and_restart(child, &database).await;
    let hot_line = line(&app.availability(hot).await, w1);
    assert_eq!(
        hot_line,
        (100, 3 + 5),
        "both acknowledged reservations hold stock"
    );
    let cold_now = app.availability(cold).await;
    assert_eq!(
        (line(&cold_now, w1).0, line(&cold_now, w2).0),
        (43, 57),
        "the acknowledged transfer moved stock"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    drop_database(&database).await;
}

/// The line's (on_hand, reserved) as stored.
async fn stored_line(database: &str, warehouse: i64, product: i64) -> (i64, i64) {
    let mut db = PgConnection::connect(&database_url(database))
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT on_hand::int8, reserved::int8 FROM stock_lines
         WHERE warehouse_id = $1 AND product_id = $2",
    )
    .bind(warehouse)
    .bind(product)
    .fetch_one(&mut db)
    .await
    .unwrap()
}

/// PostgreSQL finishes a statement whose client died, and commits it if it can. A killed
/// server's last batch, still waiting on a row lock, must not commit after its successor
/// has read the store: the two would disagree on the stock from then on, and the
/// successor's journal numbers would collide with the late batch's.
#[tokio::test]
async fn a_killed_servers_last_batch_cannot_land_after_the_next_server_read_the_store() {
    let database = fresh_database();
    let (mut child, app) = start_binary_app(&database).await;
    let (hot, w1) = app.stocked_product(100).await;
    let (status, body) = app.reserve(hot, 3).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let books_before = stored_books(&database).await;

    let holder = hold_journal_row(&database).await;
    // A reservation whose batch (one statement) waits on the held row.
    let request = reqwest::Client::new()
        .post(format!("{}/api/v1/reservations", app.base))
        .bearer_auth(&app.admin)
        .json(&json!({ "items": [{ "product_id": hot, "quantity": 2 }] }))
        .timeout(Duration::from_secs(30))
        .send();
    let unanswered = tokio::spawn(async move { request.await.map(|r| r.status()) });
    let mut watcher = PgConnection::connect(&database_url("postgres"))
        .await
        .unwrap();
    until_one_waits(&mut watcher, &database, "the reservation's batch").await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        unanswered.await.unwrap().is_err(),
        "answered before durable"
    );

    // The next server starts while the killed one's statement still waits on the row.
    let starting = database.clone();
    let (child, url) = tokio::task::spawn_blocking(move || start_binary(&starting, &ADMIN_ENV))
        .await
        .unwrap();
    let_go(holder).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while flusher_backends(&mut watcher, &database).await.0 > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a statement still waits on a lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let app = TestApp::attach(&url, &database).await;
    let served = line(&app.availability(hot).await, w1);
    assert_eq!(
        served,
        stored_line(&database, w1, hot).await,
        "the server and the store agree on the line"
    );
    assert_eq!(served, (100, 3), "the batch never acknowledged is not kept");
    assert_eq!(stored_books(&database).await, books_before);

    // The next server numbers its journal on from the store: what it acknowledges is kept
    // through another kill -9, and the books agree.
    let (status, body) = app.reserve(hot, 4).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (mut child, app) = kill_check_and_restart(child, &database).await;
    assert_eq!(line(&app.availability(hot).await, w1), (100, 3 + 4));
    child.kill().unwrap();
    child.wait().unwrap();
    drop_database(&database).await;
}

/// The backends connected to `database`, other than the asking one.
async fn backends_of(watcher: &mut PgConnection, database: &str) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()
         ORDER BY pid",
    )
    .bind(database)
    .fetch_all(watcher)
    .await
    .unwrap()
}

/// Ending a predecessor's connections touches only its own database: a server starting on
/// another database of the same PostgreSQL leaves a running server's connections alone.
#[tokio::test]
async fn a_server_starting_on_another_database_ends_none_of_this_ones_connections() {
    let (first, second) = (fresh_database(), fresh_database());
    let (mut child, app) = start_binary_app(&first).await;
    let (hot, _) = app.stocked_product(100).await;
    let mut watcher = PgConnection::connect(&database_url("postgres"))
        .await
        .unwrap();
    let before = backends_of(&mut watcher, &first).await;
    assert!(before.len() >= 3, "the server's connections: {before:?}");
    let (mut other, _) = start_binary(&second, &ADMIN_ENV);
    let after = backends_of(&mut watcher, &first).await;
    assert!(
        before.iter().all(|pid| after.contains(pid)),
        "a connection of the running server was ended: {before:?} -> {after:?}"
    );
    let (status, body) = app.reserve(hot, 1).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for child in [&mut child, &mut other] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    drop_database(&first).await;
    drop_database(&second).await;
}
