//! Lines on demand, through the real server: start-up restores only the lines that hold
//! stock, every other line comes up on first touch with exactly its stored state, idle
//! lines leave memory, and a line whose newest state is not yet in the database is never
//! read from it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use testkit::proxy::Proxy;
use testkit::*;

/// A gauge or counter of `GET /metrics` (which reads no database).
async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app.metrics().await;
    text.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// `(on_hand, reserved)` of a product in its one warehouse, from availability.
async fn levels(app: &TestApp, product: i64) -> (i64, i64) {
    let body = app.availability(product).await;
    (body.on_hand as i64, body.reserved as i64)
}

async fn reserve_pinned(app: &TestApp, warehouse: i64, product: i64, ttl: u64) -> String {
    let (status, body) = app
        .post(
            "/reservations",
            &app.admin,
            json!({ "items": [{ "product_id": product, "warehouse_id": warehouse, "quantity": 2 }],
                    "ttl_seconds": ttl }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// `on_hand` of a product's line as the database has it.
async fn stored(db: &mut sqlx::PgConnection, product: i64) -> i64 {
    sqlx::query_scalar("SELECT on_hand FROM stock_lines WHERE product_id = $1")
        .bind(product)
        .fetch_one(db)
        .await
        .unwrap()
}

async fn actors(app: &TestApp) -> Value {
    let (status, body) = app.get("/admin/actors?limit=500", &app.admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn after_a_restart_only_lines_holding_stock_are_in_memory_and_the_rest_come_back_on_touch() {
    let app = TestApp::spawn().await;
    let warehouse = app.warehouse("W", 1).await;
    let mut products = Vec::new();
    for sku in ["A", "B", "C", "D"] {
        let product = app.product(sku, 100).await;
        app.stock(warehouse, product, 10).await;
        products.push(product);
    }
    let (a, b, c, d) = (products[0], products[1], products[2], products[3]);
    // 500 more lines stored with SQL, as an import would: never touched by this server.
    let mut db = sqlx::PgConnection::connect(&database_url(&app.database))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO products (sku, name, price_cents) SELECT 'bulk-' || g, 'Bulk', 1 FROM generate_series(1, 500) g;",
    )
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO stock_lines (warehouse_id, product_id, on_hand, reserved, version, updated_at)
         SELECT $1, id, 7, 0, 3, now() FROM products WHERE sku LIKE 'bulk-%'",
    )
    .bind(warehouse)
    .execute(&mut db)
    .await
    .unwrap();
    let bulk: i64 = sqlx::query_scalar("SELECT min(id) FROM products WHERE sku LIKE 'bulk-%'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let to_commit = reserve_pinned(&app, warehouse, a, 900).await;
    let to_release = reserve_pinned(&app, warehouse, b, 900).await;
    let to_expire = reserve_pinned(&app, warehouse, c, 3).await;

    let app = app.restart().await;
    let listed = actors(&app).await;
    let mut in_memory: Vec<i64> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["product_id"].as_i64().unwrap())
        .collect();
    in_memory.sort();
    assert_eq!(
        in_memory,
        vec![a, b, c],
        "only the lines with holds: {listed}"
    );
    assert_eq!(listed["lines_stored"], 504);

    // Cold lines come up with exactly their stored state.
    assert_eq!(levels(&app, d).await, (10, 0));
    let cold = app.availability(bulk).await;
    assert_eq!(cold.warehouses[0].on_hand, 7);
    let (status, page) = app
        .get(
            &format!("/warehouses/{warehouse}/stock?limit=3&offset=2"),
            &app.admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 504, "every line, not only those in memory");
    assert_eq!(page["items"][0]["product_id"], c);
    assert_eq!(page["items"][0]["reserved"], 2, "read from memory");
    assert_eq!(page["items"][2]["product_id"], bulk);

    // The holds made before the restart settle correctly.
    assert_eq!(levels(&app, a).await, (10, 2));
    let (status, body) = app
        .post(
            &format!("/reservations/{to_commit}/commit"),
            &app.admin,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(levels(&app, a).await, (8, 0));
    let (status, body) = app
        .post(
            &format!("/reservations/{to_release}/release"),
            &app.admin,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(levels(&app, b).await, (10, 0));
    let mut expired = false;
    for _ in 0..100 {
        let (_, r) = app
            .get(&format!("/reservations/{to_expire}"), &app.admin)
            .await;
        if r["status"] == "expired" {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(expired, "the reservation expired after the restart");
    assert_eq!(levels(&app, c).await, (10, 0));
    drop(db);
    app.cleanup().await;
}

#[tokio::test]
async fn a_line_idle_while_its_flush_is_held_back_is_read_from_memory_never_stale() {
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let base = format!("postgres://postgres@127.0.0.1:{}", proxy.port);
    let app = TestApp::spawn_with(&[
        "--durability",
        "async",
        "--line-idle-ms",
        "300",
        "--database-base",
        &base,
    ])
    .await;
    let (product, warehouse) = app.stocked_product(10).await;
    assert_eq!(levels(&app, product).await, (10, 0));
    let mut db = sqlx::PgConnection::connect(&database_url(&app.database))
        .await
        .unwrap();
    // Once written and idle, the line leaves memory.
    for _ in 0..200 {
        if metric(&app, "stockline_lines").await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&app, "stockline_lines").await, 0.0);

    // In memory again (a cold line cannot load while the database is cut off).
    assert_eq!(levels(&app, product).await, (10, 0));
    proxy.cut();
    app.stock(warehouse, product, 5).await;
    // Idle for several times the idle time: the actor goes, the line must stay.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(metric(&app, "stockline_lines_active").await, 0.0);
    assert_eq!(metric(&app, "stockline_lines").await, 1.0);
    assert_eq!(stored(&mut db, product).await, 10, "the database is behind");
    assert_eq!(levels(&app, product).await, (15, 0));

    proxy.restore();
    for _ in 0..200 {
        if stored(&mut db, product).await == 15 && metric(&app, "stockline_lines").await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored(&mut db, product).await, 15);
    assert_eq!(
        metric(&app, "stockline_lines").await,
        0.0,
        "left once written"
    );
    let loads = metric(&app, "stockline_line_loads_total").await;
    assert_eq!(levels(&app, product).await, (15, 0));
    assert_eq!(
        metric(&app, "stockline_line_loads_total").await,
        loads + 1.0
    );
    drop(db);
    app.cleanup().await;
}
