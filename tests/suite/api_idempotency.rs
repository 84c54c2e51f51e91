//! `Idempotency-Key` over HTTP, and transfers.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::*;

/// POSTs with an Idempotency-Key; answers (status, body).
async fn post_keyed(
    app: &TestApp,
    path: &str,
    token: &str,
    key: &str,
    body: Value,
) -> (StatusCode, Value) {
    let response = app
        .client
        .post(format!("{}/api/v1{path}", app.base))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_repeated_key_answers_the_first_answer_and_moves_nothing_twice() {
    let app = TestApp::spawn().await;
    let (product, warehouse) = app.stocked_product(10).await;
    let (_, customer) = app.customer("sam@example.com").await;
    let basket = json!({ "items": [{ "product_id": product, "quantity": 2 }] });
    let first = post_keyed(&app, "/orders", &customer, "order-1", basket.clone()).await;
    assert_eq!(first.0, StatusCode::CREATED);
    let again = post_keyed(&app, "/orders", &customer, "order-1", basket.clone()).await;
    assert_eq!(again, first, "the same status and body");
    assert_eq!(app.availability(product).await.reserved, 2, "reserved once");

    let id = first.1["id"].as_str().unwrap().to_owned();
    let payment = json!({ "method": "card", "amount_cents": 200 });
    let paid = post_keyed(
        &app,
        &format!("/orders/{id}/pay"),
        &customer,
        "pay-1",
        payment.clone(),
    )
    .await;
    assert_eq!(paid.0, StatusCode::OK);
    assert_eq!(
        post_keyed(
            &app,
            &format!("/orders/{id}/pay"),
            &customer,
            "pay-1",
            payment
        )
        .await,
        paid
    );

    let adjustment = json!({ "warehouse_id": warehouse, "product_id": product, "delta": 5, "reason": "receipt" });
    let a = post_keyed(
        &app,
        "/stock/adjustments",
        &app.admin,
        "adj-1",
        adjustment.clone(),
    )
    .await;
    let b = post_keyed(&app, "/stock/adjustments", &app.admin, "adj-1", adjustment).await;
    assert_eq!((a.0, &a), (StatusCode::OK, &b));
    assert_eq!(
        app.availability(product).await.on_hand,
        13,
        "10 - 2 committed + 5 once"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_key_reused_with_another_body_is_refused() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(10).await;
    let (_, customer) = app.customer("tia@example.com").await;
    let one = json!({ "items": [{ "product_id": product, "quantity": 1 }] });
    let two = json!({ "items": [{ "product_id": product, "quantity": 2 }] });
    assert_eq!(
        post_keyed(&app, "/orders", &customer, "k", one).await.0,
        StatusCode::CREATED
    );
    let (status, body) = post_keyed(&app, "/orders", &customer, "k", two).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "idempotency_key_reused"
    );
    // Keys belong to their user: another customer may use the same one.
    let (_, other) = app.customer("uma@example.com").await;
    let three = json!({ "items": [{ "product_id": product, "quantity": 3 }] });
    assert_eq!(
        post_keyed(&app, "/orders", &other, "k", three).await.0,
        StatusCode::CREATED
    );
    let (status, body) = post_keyed(
        &app,
        "/orders",
        &customer,
        &"x".repeat(256),
        json!({ "items": [] }),
    )
    .await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    assert_eq!(app.availability(product).await.reserved, 4);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_move_stock_once() {
    let app = Arc::new(TestApp::spawn().await);
    let (product, _) = app.stocked_product(100).await;
    let (_, customer) = app.customer("vic@example.com").await;
    let basket = json!({ "items": [{ "product_id": product, "quantity": 3 }] });
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (app, customer, basket) = (app.clone(), customer.clone(), basket.clone());
            tokio::spawn(
                async move { post_keyed(&app, "/orders", &customer, "same-key", basket).await },
            )
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "every duplicate got the first answer"
    );
    assert_eq!(answers[0].0, StatusCode::CREATED);
    assert_eq!(app.availability(product).await.reserved, 3);
    let (_, orders) = app.get("/orders", &customer).await;
    assert_eq!(orders["total"], 1);
    Arc::into_inner(app).unwrap().cleanup().await;
}

#[tokio::test]
async fn a_key_is_replayed_after_a_sigkill_and_restart() {
    let database = fresh_database();
    let (mut child, app) = start_binary_app(&database).await;
    let (product, _) = app.stocked_product(10).await;
    let (_, customer) = app.customer("wes@example.com").await;
    let basket = json!({ "items": [{ "product_id": product, "quantity": 4 }] });
    let first = post_keyed(&app, "/orders", &customer, "before-crash", basket.clone()).await;
    assert_eq!(first.0, StatusCode::CREATED);
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, url) = start_binary(&database, &ADMIN_ENV);
    let app = TestApp::attach(&url, &database).await;
    let replayed = post_keyed(&app, "/orders", &customer, "before-crash", basket).await;
    assert_eq!(replayed, first);
    assert_eq!(
        app.availability(product).await.reserved,
        4,
        "still reserved once"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    drop_database(&database).await;
}

#[tokio::test]
async fn a_transfer_moves_available_stock_and_is_listed() {
    let app = TestApp::spawn().await;
    let (product, from) = app.stocked_product(10).await;
    let to = app.warehouse("TO", 2).await;
    let request = |quantity: i64| json!({ "from_warehouse_id": from, "to_warehouse_id": to, "product_id": product, "quantity": quantity });
    let (status, transfer) = app.post("/transfers", &app.admin, request(4)).await;
    assert_eq!(
        (status, transfer["status"].as_str()),
        (StatusCode::CREATED, Some("completed")),
        "{transfer}"
    );
    let stock = app.availability(product).await;
    assert_eq!(
        (stock.warehouses[0].on_hand, stock.warehouses[1].on_hand),
        (6, 4)
    );
    let (status, body) = app.post("/transfers", &app.admin, request(7)).await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "insufficient_stock"
    );
    let (status, body) = app
        .post("/transfers", &app.admin, json!({ "from_warehouse_id": from, "to_warehouse_id": from, "product_id": product, "quantity": 1 }))
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    app.put(
        &format!("/warehouses/{to}/status"),
        &app.admin,
        json!({ "status": "inactive" }),
    )
    .await;
    let (status, body) = app.post("/transfers", &app.admin, request(1)).await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "warehouse_inactive"
    );
    let (_, customer) = app.customer("xia@example.com").await;
    let (status, body) = app.post("/transfers", &customer, request(1)).await;
    assert_eq!(
        error_code(status, &body, StatusCode::FORBIDDEN),
        "forbidden"
    );
    let (_, list) = app.get("/transfers", &app.admin).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["id"], transfer["id"]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_hangs_up_and_retries_gets_one_effect_and_no_hang() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(1_000).await;
    let (_, customer) = app.customer("hang@example.com").await;
    for attempt in 0..60u64 {
        // Hangs up somewhere between 50 µs and 3 ms in: before, during or after the work.
        let patience = std::time::Duration::from_micros(50 + attempt * 50);
        let impatient = reqwest::Client::builder()
            .timeout(patience)
            .build()
            .unwrap();
        let key = format!("hang-up-{attempt}");
        let basket = json!({ "items": [{ "product_id": product, "quantity": 2 }] });
        // Gives up almost at once: the server may or may not have started on it.
        let _ = impatient
            .post(format!("{}/api/v1/orders", app.base))
            .bearer_auth(&customer)
            .header("Idempotency-Key", &key)
            .json(&basket)
            .send()
            .await;
        let retried = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            post_keyed(&app, "/orders", &customer, &key, basket),
        )
        .await
        .expect("a retry never hangs");
        assert_eq!(retried.0, StatusCode::CREATED, "{}", retried.1);
    }
    assert_eq!(
        app.availability(product).await.reserved,
        120,
        "each key reserved exactly once"
    );
    let (_, orders) = app.get("/orders", &customer).await;
    assert_eq!(orders["total"], 60);
    app.cleanup().await;
}
