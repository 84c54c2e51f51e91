//! What survives: a clean restart, a SIGKILL in `sync` mode, a database outage, and time
//! passing while the server is down.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use testkit::proxy::Proxy;
use testkit::*;

/// Everything a client can read about the stock of `products` and some reservations.
async fn observe(app: &TestApp, products: &[i64], reservations: &[String]) -> Value {
    let mut seen = Vec::new();
    for product in products {
        seen.push(serde_json::to_value(app.availability(*product).await).unwrap());
    }
    for id in reservations {
        seen.push(app.get(&format!("/reservations/{id}"), &app.admin).await.1);
    }
    seen.push(app.get("/stock/movements?limit=500", &app.admin).await.1);
    seen.push(app.get("/warehouses", &app.admin).await.1);
    Value::Array(seen)
}

/// Two products over two warehouses (one inactive), with pending, committed and released
/// reservations; answers (products, reservation ids).
async fn busy_shop(app: &TestApp) -> (Vec<i64>, Vec<String>) {
    let products = vec![app.product("A", 100).await, app.product("B", 250).await];
    let (w1, w2) = (app.warehouse("W1", 1).await, app.warehouse("W2", 2).await);
    for product in &products {
        app.stock(w1, *product, 20).await;
        app.stock(w2, *product, 5).await;
    }
    let mut ids = Vec::new();
    for (i, quantity) in [3, 20, 1, 4].into_iter().enumerate() {
        let (status, r) = app.reserve(products[i % 2], quantity).await;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        ids.push(r["id"].as_str().unwrap().to_owned());
    }
    app.post(
        &format!("/reservations/{}/commit", ids[0]),
        &app.admin,
        json!({}),
    )
    .await;
    app.post(
        &format!("/reservations/{}/release", ids[1]),
        &app.admin,
        json!({}),
    )
    .await;
    app.put(
        &format!("/warehouses/{w2}/status"),
        &app.admin,
        json!({ "status": "inactive" }),
    )
    .await;
    (products, ids)
}

#[tokio::test]
async fn state_after_a_clean_restart_equals_state_before() {
    let app = TestApp::spawn().await;
    let (products, ids) = busy_shop(&app).await;
    let before = observe(&app, &products, &ids).await;
    let app = app.restart().await;
    let after = observe(&app, &products, &ids).await;
    assert_eq!(before, after);
    // And the restored reservations still work.
    let (status, _) = app
        .post(
            &format!("/reservations/{}/commit", ids[2]),
            &app.admin,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    app.cleanup().await;
}

#[tokio::test]
async fn after_a_sigkill_every_acknowledged_change_is_there() {
    let database = fresh_database();
    let (mut child, app) = start_binary_app(&database).await;
    let (products, ids) = busy_shop(&app).await;
    let (_, doomed) = app.customer("kill@example.com").await;
    assert_eq!(
        app.send(reqwest::Method::POST, "/auth/logout", Some(&doomed), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let before = observe(&app, &products, &ids).await;
    let on_hand_before = app.availability(products[1]).await.on_hand;
    // One more change, and the process dies the moment it is acknowledged.
    let w1 = app.get("/warehouses", &app.admin).await.1["items"][0]["id"]
        .as_i64()
        .unwrap();
    app.stock(w1, products[1], 7).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, url) = start_binary(&database, &ADMIN_ENV);
    let app = TestApp::attach(&url, &database).await;
    let on_hand_after = app.availability(products[1]).await.on_hand;
    assert_eq!(
        on_hand_after,
        on_hand_before + 7,
        "the change acknowledged just before the kill is there"
    );
    app.stock(w1, products[1], -7).await;
    let mut after = observe(&app, &products, &ids).await;
    let ledger = after
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .rev()
        .nth(1)
        .unwrap();
    let movements = ledger["items"].as_array_mut().unwrap();
    assert_eq!(
        (
            movements[0]["quantity"].as_i64(),
            movements[1]["quantity"].as_i64()
        ),
        (Some(-7), Some(7))
    );
    movements.drain(..2);
    ledger["total"] = json!(ledger["total"].as_i64().unwrap() - 2);
    // The +7 and -7 are two more versions of that line.
    let line = &mut after[1]["warehouses"][0];
    assert_eq!(
        line["version"],
        before[1]["warehouses"][0]["version"].as_u64().unwrap() + 2
    );
    line["version"] = before[1]["warehouses"][0]["version"].clone();
    assert_eq!(after, before);
    for id in &ids[2..] {
        assert_eq!(
            app.get(&format!("/reservations/{id}"), &app.admin).await.1["status"],
            "pending"
        );
    }
    assert_eq!(
        app.get("/auth/me", &doomed).await.0,
        StatusCode::UNAUTHORIZED,
        "a revoked token stays revoked"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    drop_database(&database).await;
}

#[tokio::test]
async fn a_reservation_that_expires_while_the_server_is_down_is_expired_at_the_next_start() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(5).await;
    let (_, r) = app
        .post(
            "/reservations",
            &app.admin,
            json!({ "items": [{ "product_id": product, "quantity": 5 }], "ttl_seconds": 2 }),
        )
        .await;
    let id = r["id"].as_str().unwrap().to_owned();
    let mut app = app;
    app.stop().await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let app = TestApp::start_on(&app.database).await;
    let mut status = Value::Null;
    for _ in 0..100 {
        status = app.get(&format!("/reservations/{id}"), &app.admin).await.1["status"].clone();
        if status == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "expired");
    assert_eq!(app.availability(product).await.available, 5);
    let (_, expires) = app
        .get(
            &format!("/stock/movements?product_id={product}&kind=expire"),
            &app.admin,
        )
        .await;
    assert_eq!(expires["total"], 1, "the expiry at start is in the ledger");
    app.cleanup().await;
}

async fn ready(app: &TestApp) -> StatusCode {
    app.send(reqwest::Method::GET, "/readyz", None, None)
        .await
        .0
}

async fn wait_ready(app: &TestApp, want: StatusCode) {
    for _ in 0..300 {
        if ready(app).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz never answered {want}");
}

#[tokio::test]
async fn through_a_database_outage_nothing_acknowledged_is_lost() {
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let base = format!("postgres://postgres@127.0.0.1:{}", proxy.port);
    let app = TestApp::spawn_with(&[
        "--durability",
        "async",
        "--max-backlog",
        "60",
        "--database-base",
        &base,
    ])
    .await;
    let (product, warehouse) = app.stocked_product(1000).await;
    assert_eq!(ready(&app).await, StatusCode::OK);

    proxy.cut();
    let (mut acknowledged, mut overloaded) = (0, 0);
    for _ in 0..60 {
        let (status, body) = app
            .post("/stock/adjustments", &app.admin, json!({ "warehouse_id": warehouse, "product_id": product, "delta": 1, "reason": "receipt" }))
            .await;
        match status {
            StatusCode::OK => acknowledged += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error"]["code"], "overloaded");
                overloaded += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        acknowledged > 0 && overloaded > 0,
        "{acknowledged} acknowledged, {overloaded} refused"
    );
    wait_ready(&app, StatusCode::SERVICE_UNAVAILABLE).await;

    proxy.restore();
    wait_ready(&app, StatusCode::OK).await;
    let mut direct = sqlx::PgConnection::connect(&database_url(&app.database))
        .await
        .unwrap();
    let mut stored = 0;
    for _ in 0..100 {
        stored =
            sqlx::query_scalar::<_, i64>("SELECT on_hand FROM stock_lines WHERE product_id = $1")
                .bind(product)
                .fetch_one(&mut direct)
                .await
                .unwrap();
        if stored == 1000 + acknowledged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stored,
        1000 + acknowledged,
        "every acknowledged adjustment reached the database"
    );
    let movements: i64 = sqlx::query_scalar("SELECT count(*) FROM movements WHERE product_id = $1")
        .bind(product)
        .fetch_one(&mut direct)
        .await
        .unwrap();
    assert_eq!(movements, 1 + acknowledged);
    drop(direct);
    app.cleanup().await;
}
