//! Orders over HTTP: the life cycle, each refusal, customer isolation, expiry.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::api::{Answer, List, Movement, Order, OrderStatus, Refused};
use testkit::*;

/// An order of `quantity` units of `product` as `token`, shipped to Lyon.
async fn order(app: &TestApp, token: &str, product: i64, quantity: i64) -> Answer<Order> {
    app.place_order(token, json!({ "items": [{ "product_id": product, "quantity": quantity }], "shipping_address": { "city": "Lyon" } }))
        .await
}

/// `POST /orders/{id}/pay` of `amount_cents` by card.
async fn pay(app: &TestApp, token: &str, id: uuid::Uuid, amount_cents: i64) -> Answer<Order> {
    let body = json!({ "method": "card", "amount_cents": amount_cents });
    app.order_step(token, id, "pay", body).await
}

/// `POST /orders/{id}/cancel`.
async fn cancel(app: &TestApp, token: &str, id: uuid::Uuid) -> Answer<Order> {
    app.order_step(token, id, "cancel", json!({})).await
}

/// How many orders `token` sees at `query`.
async fn listed(app: &TestApp, token: &str, query: &str) -> i64 {
    let path = format!("/orders{query}");
    let page: List<Order> = app.call(Method::GET, &path, token, None).await.unwrap();
    page.total
}

#[tokio::test]
async fn an_order_is_placed_paid_shipped_and_delivered() {
    let app = TestApp::spawn().await;
    let product = app.product("P", 1_250).await;
    let warehouse = app.warehouse("W", 1).await;
    app.stock(warehouse, product, 10).await;
    let (user, customer) = app.customer("ola@example.com").await;

    let placed = order(&app, &customer, product, 3).await.unwrap();
    assert_eq!(
        (placed.status, placed.total_cents, placed.user_id),
        (OrderStatus::PendingPayment, 3_750, user)
    );
    let item = &placed.items[0];
    assert_eq!(
        (
            item.product_id,
            item.quantity,
            item.unit_price_cents,
            item.warehouse_id
        ),
        (product, 3, 1_250, warehouse)
    );
    assert_eq!(app.availability(product).await.reserved, 3);
    let id = placed.id;

    let refusal = pay(&app, &customer, id, 3_000)
        .await
        .refused(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refusal.code, "validation_failed");
    let paid = pay(&app, &customer, id, 3_750).await.unwrap();
    assert_eq!(paid.status, OrderStatus::Paid);
    let stock = app.availability(product).await;
    assert_eq!((stock.on_hand, stock.reserved), (7, 0));
    let refusal = pay(&app, &customer, id, 3_750)
        .await
        .refused(StatusCode::CONFLICT);
    assert_eq!(refusal.code, "order_not_pending");

    let status_path = format!("/api/v1/orders/{id}/status");
    let step = |status: &str| {
        let body = json!({ "status": status, "tracking_number": "TRK-1" });
        app.call::<Order>(Method::PATCH, &status_path, &app.admin, Some(body))
    };
    let refusal = step("delivered").await.refused(StatusCode::CONFLICT);
    assert_eq!(refusal.code, "conflict", "paid cannot jump to delivered");
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
    let shipped = step("shipped").await.unwrap();
    assert_eq!(shipped.tracking_number.as_deref(), Some("TRK-1"));
    let delivered = step("delivered").await.unwrap();
    assert_eq!(delivered.status, OrderStatus::Delivered);
    let refusal = cancel(&app, &app.admin, id)
        .await
        .refused(StatusCode::CONFLICT);
    assert_eq!(refusal.code, "order_not_pending");

    assert_eq!(listed(&app, &customer, "?status=delivered").await, 1);
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
    let unpaid = order(&app, &customer, product, 4).await.unwrap();
    let cancelled = cancel(&app, &customer, unpaid.id).await.unwrap();
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(app.availability(product).await.available, 10);

    let id = order(&app, &customer, product, 2).await.unwrap().id;
    pay(&app, &customer, id, 200).await.unwrap();
    assert_eq!(app.availability(product).await.on_hand, 8);
    let refusal = cancel(&app, &customer, id)
        .await
        .refused(StatusCode::FORBIDDEN);
    assert_eq!(
        refusal.code, "forbidden",
        "only an operator cancels a paid order"
    );
    let cancelled = cancel(&app, &app.admin, id).await.unwrap();
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(
        app.availability(product).await.on_hand,
        10,
        "the stock came back"
    );
    let returns: List<Movement> = app
        .movements(&format!("product_id={product}&kind=adjust"))
        .await;
    assert_eq!(returns.items[0].reference, "return");
    app.cleanup().await;
}

#[tokio::test]
async fn customers_see_and_act_on_their_own_orders_only() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(10).await;
    let (_, ann) = app.customer("ann@example.com").await;
    let (_, bob) = app.customer("bob@example.com").await;
    let id = order(&app, &ann, product, 1).await.unwrap().id;
    order(&app, &bob, product, 1).await.unwrap();
    for refused in [
        app.order_of(&bob, id).await,
        pay(&app, &bob, id, 100).await,
        cancel(&app, &bob, id).await,
    ] {
        assert_eq!(refused.refused(StatusCode::NOT_FOUND).code, "not_found");
    }
    assert_eq!(listed(&app, &bob, "").await, 1);
    assert_eq!(listed(&app, &app.admin, "").await, 2);
    assert_eq!(app.order_of(&app.admin, id).await.unwrap().id, id);
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
    let id = order(&app, &customer, product, 5).await.unwrap().id;
    let mut status = OrderStatus::PendingPayment;
    for _ in 0..100 {
        status = app.order_of(&customer, id).await.unwrap().status;
        if status == OrderStatus::Expired {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, OrderStatus::Expired);
    assert_eq!(app.availability(product).await.available, 5);
    let refusal = pay(&app, &customer, id, 500)
        .await
        .refused(StatusCode::CONFLICT);
    assert_eq!(refusal.code, "order_not_pending");
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
    let paid = order(&app, &customer, product, 2).await.unwrap();
    let cancelled = order(&app, &customer, product, 3).await.unwrap();
    for (placed, step) in [(&paid, "commit"), (&cancelled, "release")] {
        app.settle(placed.reservation_id, step, Some(json!({})))
            .await
            .unwrap();
    }
    let done = pay(&app, &customer, paid.id, 1_000).await.unwrap();
    assert_eq!(done.status, OrderStatus::Paid);
    let done = cancel(&app, &customer, cancelled.id).await.unwrap();
    assert_eq!(done.status, OrderStatus::Cancelled);
    let availability = app.availability(product).await;
    assert_eq!(
        (&availability.on_hand, &availability.reserved),
        (&8, &0),
        "the paid order's two units left once; the cancelled order's three are free"
    );
    let path = format!("/orders/{}/payments", paid.id);
    let payments: List<serde_json::Value> =
        app.call(Method::GET, &path, &customer, None).await.unwrap();
    assert_eq!(payments.total, 1);
    app.cleanup().await;
}
