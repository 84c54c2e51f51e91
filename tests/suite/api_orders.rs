//! Orders over HTTP: the life cycle, each refusal, customer isolation, expiry.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::*;

async fn order(app: &TestApp, token: &str, product: i64, quantity: i64) -> (StatusCode, Value) {
    app.post("/orders", token, json!({ "items": [{ "product_id": product, "quantity": quantity }], "shipping_address": { "city": "Lyon" } }))
        .await
}

#[tokio::test]
async fn an_order_is_placed_paid_shipped_and_delivered() {
    let app = TestApp::spawn().await;
    let product = app.product("P", 1_250).await;
    let warehouse = app.warehouse("W", 1).await;
    app.stock(warehouse, product, 10).await;
    let (user, customer) = app.customer("ola@example.com").await;

    let (status, placed) = order(&app, &customer, product, 3).await;
    assert_eq!(status, StatusCode::CREATED, "{placed}");
    assert_eq!(
        (placed["status"].as_str(), placed["total_cents"].as_i64()),
        (Some("pending_payment"), Some(3_750))
    );
    assert_eq!(placed["user_id"], user);
    assert_eq!(
        placed["items"][0],
        json!({ "product_id": product, "quantity": 3, "unit_price_cents": 1_250, "warehouse_id": warehouse })
    );
    assert_eq!(app.availability(product).await.reserved, 3);
    let id = placed["id"].as_str().unwrap();

    let (status, body) = app
        .post(
            &format!("/orders/{id}/pay"),
            &customer,
            json!({ "method": "card", "amount_cents": 3_000 }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    let (status, paid) = app
        .post(
            &format!("/orders/{id}/pay"),
            &customer,
            json!({ "method": "card", "amount_cents": 3_750 }),
        )
        .await;
    assert_eq!(
        (status, paid["status"].as_str()),
        (StatusCode::OK, Some("paid")),
        "{paid}"
    );
    let stock = app.availability(product).await;
    assert_eq!((stock.on_hand, stock.reserved), (7, 0));
    let (status, body) = app
        .post(
            &format!("/orders/{id}/pay"),
            &customer,
            json!({ "method": "card", "amount_cents": 3_750 }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "order_not_pending"
    );

    let status_path = format!("/api/v1/orders/{id}/status");
    let step = |status: &str| {
        app.send(
            reqwest::Method::PATCH,
            &status_path,
            Some(&app.admin),
            Some(json!({ "status": status, "tracking_number": "TRK-1" })),
        )
    };
    let (status, body) = step("delivered").await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "conflict",
        "paid cannot jump to delivered"
    );
    let (status, body) = app
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/orders/{id}/status"),
            Some(&customer),
            Some(json!({ "status": "shipped" })),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::FORBIDDEN),
        "forbidden"
    );
    let (status, shipped) = step("shipped").await;
    assert_eq!(
        (status, shipped["tracking_number"].as_str()),
        (StatusCode::OK, Some("TRK-1"))
    );
    let (status, delivered) = step("delivered").await;
    assert_eq!(
        (status, delivered["status"].as_str()),
        (StatusCode::OK, Some("delivered"))
    );
    let (status, body) = app
        .post(&format!("/orders/{id}/cancel"), &app.admin, json!({}))
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "order_not_pending"
    );

    let (_, mine) = app.get("/orders?status=delivered", &customer).await;
    assert_eq!(mine["total"], 1);
    let payments: i64 = {
        use sqlx::Connection;
        let mut db = sqlx::PgConnection::connect(&database_url(&app.database))
            .await
            .unwrap();
        sqlx::query_scalar(
            "SELECT count(*) FROM payments WHERE amount_cents = 3750 AND method = 'card'",
        )
        .fetch_one(&mut db)
        .await
        .unwrap()
    };
    assert_eq!(payments, 1, "one payment recorded");
    app.cleanup().await;
}

#[tokio::test]
async fn cancelling_releases_an_unpaid_order_and_returns_a_paid_one() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(10).await;
    let (_, customer) = app.customer("pia@example.com").await;
    let (_, unpaid) = order(&app, &customer, product, 4).await;
    let (status, cancelled) = app
        .post(
            &format!("/orders/{}/cancel", unpaid["id"].as_str().unwrap()),
            &customer,
            json!({}),
        )
        .await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    assert_eq!(app.availability(product).await.available, 10);

    let (_, paid) = order(&app, &customer, product, 2).await;
    let id = paid["id"].as_str().unwrap();
    app.post(
        &format!("/orders/{id}/pay"),
        &customer,
        json!({ "method": "card", "amount_cents": 200 }),
    )
    .await;
    assert_eq!(app.availability(product).await.on_hand, 8);
    let (status, body) = app
        .post(&format!("/orders/{id}/cancel"), &customer, json!({}))
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::FORBIDDEN),
        "forbidden",
        "only an operator cancels a paid order"
    );
    let (status, body) = app
        .post(&format!("/orders/{id}/cancel"), &app.admin, json!({}))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    assert_eq!(
        app.availability(product).await.on_hand,
        10,
        "the stock came back"
    );
    let (_, returns) = app
        .get(
            &format!("/stock/movements?product_id={product}&kind=adjust"),
            &app.admin,
        )
        .await;
    assert_eq!(returns["items"][0]["reference"], "return");
    app.cleanup().await;
}

#[tokio::test]
async fn customers_see_and_act_on_their_own_orders_only() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(10).await;
    let (_, ann) = app.customer("ann@example.com").await;
    let (_, bob) = app.customer("bob@example.com").await;
    let (_, placed) = order(&app, &ann, product, 1).await;
    order(&app, &bob, product, 1).await;
    let id = placed["id"].as_str().unwrap();
    let (status, body) = app.get(&format!("/orders/{id}"), &bob).await;
    assert_eq!(
        error_code(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    let (status, body) = app
        .post(
            &format!("/orders/{id}/pay"),
            &bob,
            json!({ "method": "card", "amount_cents": 100 }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    let (status, body) = app
        .post(&format!("/orders/{id}/cancel"), &bob, json!({}))
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    let (_, bobs) = app.get("/orders", &bob).await;
    assert_eq!(bobs["total"], 1);
    let (_, all) = app.get("/orders", &app.admin).await;
    assert_eq!(all["total"], 2);
    assert_eq!(
        app.get(&format!("/orders/{id}"), &app.admin).await.0,
        StatusCode::OK
    );
    app.cleanup().await;
}

#[tokio::test]
async fn an_order_that_cannot_be_filled_is_refused_whole() {
    let app = TestApp::spawn().await;
    let (p1, w) = app.stocked_product(10).await;
    let p2 = app.product("Q", 50).await;
    app.stock(w, p2, 1).await;
    let (_, customer) = app.customer("quin@example.com").await;
    let (status, body) = app
        .post("/orders", &customer, json!({ "items": [{ "product_id": p1, "quantity": 2 }, { "product_id": p2, "quantity": 2 }] }))
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "insufficient_stock"
    );
    assert_eq!(app.availability(p1).await.reserved, 0);
    for (body, status) in [
        (json!({ "items": [] }), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({ "items": [{ "product_id": p1, "quantity": 0 }] }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "items": [{ "product_id": 4242, "quantity": 1 }] }),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({ "items": [{ "product_id": "p1", "quantity": 1 }] }),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (got, answer) = app.post("/orders", &customer, body.clone()).await;
        error_code(got, &answer, status);
    }
    let (status, body) = app.get("/orders?status=lost", &customer).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn an_unpaid_order_expires_with_its_reservation() {
    let app = TestApp::spawn_with(&["--payment-timeout-secs", "1"]).await;
    let (product, _) = app.stocked_product(5).await;
    let (_, customer) = app.customer("rex@example.com").await;
    let (_, placed) = order(&app, &customer, product, 5).await;
    let id = placed["id"].as_str().unwrap();
    let mut status = Value::Null;
    for _ in 0..100 {
        status = app.get(&format!("/orders/{id}"), &customer).await.1["status"].clone();
        if status == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "expired");
    assert_eq!(app.availability(product).await.available, 5);
    let (code, body) = app
        .post(
            &format!("/orders/{id}/pay"),
            &customer,
            json!({ "method": "card", "amount_cents": 500 }),
        )
        .await;
    assert_eq!(
        error_code(code, &body, StatusCode::CONFLICT),
        "order_not_pending"
    );
    app.cleanup().await;
}

/// A payment that finds the order's reservation committed already (by an earlier try
/// whose answer was lost, or by an operator through `/reservations`) completes the order:
/// the stock left once, and the payment is recorded; a cancel that finds it released is
/// a cancellation. Neither expires the order.
#[tokio::test]
async fn a_step_that_finds_its_reservation_settled_that_way_goes_on() {
    let app = TestApp::spawn().await;
    let product = app.product("P", 500).await;
    let warehouse = app.warehouse("W", 1).await;
    app.stock(warehouse, product, 10).await;
    let (_, customer) = app.customer("settled@example.com").await;
    let (_, paid) = order(&app, &customer, product, 2).await;
    let (_, cancelled) = order(&app, &customer, product, 3).await;
    for (placed, step) in [(&paid, "commit"), (&cancelled, "release")] {
        let reservation = placed["reservation_id"].as_str().unwrap();
        let (status, body) = app
            .post(
                &format!("/reservations/{reservation}/{step}"),
                &app.admin,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = app
        .post(
            &format!("/orders/{}/pay", paid["id"].as_str().unwrap()),
            &customer,
            json!({ "method": "card", "amount_cents": 1_000 }),
        )
        .await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("paid")),
        "{body}"
    );
    let (status, body) = app
        .post(
            &format!("/orders/{}/cancel", cancelled["id"].as_str().unwrap()),
            &customer,
            json!({}),
        )
        .await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("cancelled")),
        "{body}"
    );
    let availability = app.availability(product).await;
    assert_eq!(
        (&availability.on_hand, &availability.reserved),
        (&8, &0),
        "the paid order's two units left once; the cancelled order's three are free"
    );
    let (_, payments) = app
        .get(
            &format!("/orders/{}/payments", paid["id"].as_str().unwrap()),
            &customer,
        )
        .await;
    assert_eq!(payments["total"], 1);
    app.cleanup().await;
}
