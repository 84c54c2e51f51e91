//! Reservations over HTTP: create, read, commit, release, expiry, and the race.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::api::{Product, Refused, Reservation};
use testkit::*;

#[tokio::test]
async fn a_reservation_is_split_across_warehouses_then_committed() {
    let app = TestApp::spawn().await;
    let product = app.product("P", 100).await;
    let (near, far) = (
        app.warehouse("NEAR", 1).await,
        app.warehouse("FAR", 2).await,
    );
    app.stock(near, product, 3).await;
    app.stock(far, product, 10).await;
    let reservation = app
        .create_reservation(&app.admin, json!({ "items": [{ "product_id": product, "quantity": 5 }], "reference": "cart-7", "ttl_seconds": 60 }))
        .await
        .unwrap();
    assert_eq!(reservation.status, "pending");
    assert_eq!(reservation.reference.as_deref(), Some("cart-7"));
    let split: Vec<_> = reservation
        .items
        .iter()
        .map(|i| (i.warehouse_id, i.quantity))
        .collect();
    assert_eq!(split, vec![(near, 3), (far, 2)]);
    let id = reservation.id;
    assert_eq!(app.reservation(id).await.unwrap().id, id);

    assert_eq!(app.commit(id).await.unwrap().status, "committed");
    let body = app.availability(product).await;
    assert_eq!((body.on_hand, body.reserved), (8, 0));
    for step in ["commit", "release"] {
        let (status, body) = app
            .post(&format!("/reservations/{id}/{step}"), &app.admin, json!({}))
            .await;
        assert_eq!(
            error_code(status, &body, StatusCode::CONFLICT),
            "reservation_not_pending"
        );
        assert_eq!(body["error"]["details"]["status"], "committed");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn a_release_returns_the_stock() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(4).await;
    let reservation = app.reservation_of(product, 4).await.unwrap();
    assert_eq!(
        app.release(reservation.id).await.unwrap().status,
        "released"
    );
    assert_eq!(app.availability(product).await.available, 4);
    app.cleanup().await;
}

#[tokio::test]
async fn refusals_say_what_is_missing_and_move_nothing() {
    let app = TestApp::spawn().await;
    let (p1, p2) = (app.product("P1", 100).await, app.product("P2", 100).await);
    let warehouse = app.warehouse("W", 1).await;
    app.stock(warehouse, p1, 5).await;
    app.stock(warehouse, p2, 1).await;
    let (status, body) = app
        .post("/reservations", &app.admin, json!({ "items": [{ "product_id": p1, "quantity": 2 }, { "product_id": p2, "quantity": 3 }] }))
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "insufficient_stock"
    );
    assert_eq!(
        body["error"]["details"],
        json!({ "product_id": p2, "requested": 3, "available": 1 })
    );
    assert_eq!(app.availability(p1).await.reserved, 0, "all or nothing");

    let bad = [
        (
            json!({ "items": [] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "items": [{ "product_id": p1, "quantity": 0 }] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "items": [{ "product_id": p1, "quantity": -2 }] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "items": [{ "product_id": p1, "quantity": 1e12 }] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "items": [{ "product_id": p1, "quantity": 1 }], "ttl_seconds": 604801 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "items": [{ "product_id": 777, "quantity": 1 }] }),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({ "items": [{ "product_id": p1, "quantity": 1, "warehouse_id": 888 }] }),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({ "items": "all" }),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
    ];
    for (body, status, code) in bad {
        let (got, answer) = app.post("/reservations", &app.admin, body.clone()).await;
        assert_eq!(error_code(got, &answer, status), code, "{body}");
    }
    app.put(
        &format!("/warehouses/{warehouse}/status"),
        &app.admin,
        json!({ "status": "inactive" }),
    )
    .await;
    let (status, body) = app
        .post(
            "/reservations",
            &app.admin,
            json!({ "items": [{ "product_id": p1, "quantity": 1, "warehouse_id": warehouse }] }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "warehouse_inactive"
    );
    for path in [
        "/reservations/0195f2a0-0000-7000-8000-000000000000",
        "/reservations/not-a-uuid",
    ] {
        let (status, body) = app.get(path, &app.admin).await;
        assert_eq!(
            error_code(status, &body, StatusCode::NOT_FOUND),
            "not_found",
            "{path}"
        );
    }
    let (_, customer) = app.customer("lu@example.com").await;
    let (status, body) = app
        .post(
            "/reservations",
            &customer,
            json!({ "items": [{ "product_id": p1, "quantity": 1 }] }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::FORBIDDEN),
        "forbidden"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_pending_reservation_expires_and_its_stock_returns() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(2).await;
    let body = json!({ "items": [{ "product_id": product, "quantity": 2 }], "ttl_seconds": 1 });
    let id = app.create_reservation(&app.admin, body).await.unwrap().id;
    let mut status = String::new();
    for _ in 0..100 {
        status = app.reservation(id).await.unwrap().status.into_owned();
        if status == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "expired");
    assert_eq!(app.availability(product).await.available, 2);
    let refusal = app.commit(id).await.refused(StatusCode::CONFLICT);
    assert_eq!(refusal.code, "reservation_not_pending");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_concurrent_reservations_against_fifty_units_give_exactly_fifty() {
    let app = Arc::new(TestApp::spawn().await);
    let (product, warehouse) = (app.product("HOT", 100).await, app.warehouse("W", 1).await);
    app.stock(warehouse, product, 50).await;
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.reserve(product, 1).await.0 })
        })
        .collect();
    let (mut created, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((created, refused), (50, 250));
    let body = app.availability(product).await;
    assert_eq!((body.on_hand, body.reserved), (50, 50));
    let reserves = app
        .movements(&format!("product_id={product}&kind=reserve"))
        .await;
    assert_eq!(
        reserves.total, 50,
        "in sync mode every answered reservation is in the ledger"
    );
    Arc::into_inner(app).unwrap().cleanup().await;
}

#[tokio::test]
async fn a_pending_reservation_is_extended_and_keeps_its_new_expiry_across_a_restart() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(5).await;
    let reservation = app
        .create_reservation(
            &app.admin,
            json!({ "items": [{ "product_id": product, "quantity": 2 }], "ttl_seconds": 2 }),
        )
        .await
        .unwrap();
    let id = reservation.id;
    let extended = app.extend(id, 3600).await.unwrap();
    assert!(extended.expires_at - reservation.expires_at > chrono::TimeDelta::minutes(59));

    let app = app.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = app.reservation(id).await.unwrap();
    assert_eq!(
        after.status, "pending",
        "the first deadline passed: {after:?}"
    );
    assert_eq!(after.expires_at, extended.expires_at);
    assert_eq!(app.availability(product).await.available, 3);

    for ttl in [0, 7 * 24 * 3600 + 1] {
        let refusal = app.extend(id, ttl).await.unwrap_err();
        assert_eq!(
            refusal.code_at(StatusCode::UNPROCESSABLE_ENTITY),
            "validation_failed"
        );
    }
    app.post(&format!("/reservations/{id}/commit"), &app.admin, json!({}))
        .await;
    let (status, body) = app
        .patch(
            &format!("/reservations/{id}"),
            &app.admin,
            json!({ "ttl_seconds": 60 }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "reservation_not_pending"
    );
    let unknown = uuid::Uuid::now_v7();
    let (status, body) = app
        .patch(
            &format!("/reservations/{unknown}"),
            &app.admin,
            json!({ "ttl_seconds": 60 }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_dry_run_answers_the_allocation_or_the_refusal_and_holds_nothing() {
    let app = TestApp::spawn().await;
    let product = app.product("P", 100).await;
    let (a, b) = (app.warehouse("A", 1).await, app.warehouse("B", 2).await);
    app.stock(a, product, 3).await;
    app.stock(b, product, 5).await;
    let before = app.movements("").await;
    let (status, body) = app
        .post(
            "/reservations?dry_run=true",
            &app.admin,
            json!({ "items": [{ "product_id": product, "quantity": 6 }], "reference": "cart 9" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "dry_run");
    assert_eq!(body["reference"], "cart 9");
    assert_eq!(
        body["items"],
        json!([
            { "product_id": product, "warehouse_id": a, "quantity": 3 },
            { "product_id": product, "warehouse_id": b, "quantity": 3 },
        ]),
        "by priority, split like a real reservation"
    );
    // Pinned and free items of one product count once against each line.
    let body = json!({ "items": [{ "product_id": product, "quantity": 4, "warehouse_id": b },
                                 { "product_id": product, "quantity": 5 }] });
    let refusal = app
        .call::<Value>(
            Method::POST,
            "/reservations?dry_run=true",
            &app.admin,
            Some(body),
        )
        .await
        .refused(StatusCode::CONFLICT);
    assert_eq!(refusal.code, "insufficient_stock");
    assert_eq!(refusal.details["available"], 4);
    let availability = app.availability(product).await;
    assert_eq!(availability.reserved, 0, "nothing held");
    let after = app.movements("").await;
    assert_eq!(after.total, before.total, "nothing journaled");
    // The real request gets what the dry run said.
    let real = app.reservation_of(product, 6).await.unwrap();
    let split: Vec<_> = real
        .items
        .iter()
        .map(|i| (i.warehouse_id, i.quantity))
        .collect();
    assert_eq!(split, vec![(a, 3), (b, 3)]);
    let (status, body) = app
        .post(
            "/reservations?dry_run=maybe",
            &app.admin,
            json!({ "items": [{ "product_id": product, "quantity": 1 }] }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_partly_committed_reservation_keeps_holding_the_rest_across_a_restart() {
    let app = TestApp::spawn().await;
    let (product, warehouse) = app.stocked_product(10).await;
    let id = app.reservation_of(product, 6).await.unwrap().id;
    let part = |q: i64| json!({ "items": [{ "product_id": product, "warehouse_id": warehouse, "quantity": q }] });
    let (status, body) = app
        .post(&format!("/reservations/{id}/commit"), &app.admin, part(2))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "pending");
    assert_eq!(
        (
            body["items"][0]["committed"].as_u64(),
            body["items"][0]["released"].as_u64()
        ),
        (Some(2), None),
        "0 is left out"
    );
    app.settle(id, "release", Some(part(1))).await.unwrap();
    let refusal = app
        .settle(id, "commit", Some(part(4)))
        .await
        .refused(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refusal.code, "validation_failed", "3 are held");

    let app = app.restart().await;
    let availability = app.availability(product).await;
    assert_eq!(
        (availability.on_hand, availability.reserved),
        (8, 3),
        "{availability:?}"
    );
    let read = app.reservation(id).await.unwrap();
    assert_eq!((read.items[0].committed, read.items[0].released), (2, 1));
    // No body (or an empty one) settles everything left, as before v1.1.
    let (status, body) = app
        .send(
            reqwest::Method::POST,
            &format!("/reservations/{id}/commit"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done: Reservation = serde_json::from_value(body).unwrap();
    assert_eq!(done.status, "committed");
    assert_eq!((done.items[0].committed, done.items[0].released), (5, 1));
    let availability = app.availability(product).await;
    assert_eq!(
        (availability.on_hand, availability.reserved),
        (5, 0),
        "10 received, 5 committed"
    );
    let (status, body) = app
        .post(
            &format!("/reservations/{id}/commit"),
            &app.admin,
            json!({ "items": [] }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_product_with_a_backorder_limit_is_reserved_beyond_stock_and_filled_by_receipts() {
    let app = TestApp::spawn().await;
    let body =
        json!({ "sku": "PRE", "name": "Pre-order", "price_cents": 100, "backorder_limit": 3 });
    let product: Product = app.create("/products", &app.admin, body).await.unwrap();
    assert_eq!(product.backorder_limit, 3);
    let product = product.id;
    let warehouse = app.warehouse("W", 1).await;
    app.stock(warehouse, product, 2).await;
    let reserve = |q: i64| json!({ "items": [{ "product_id": product, "quantity": q }] });
    let (status, dry) = app
        .post("/reservations?dry_run=true", &app.admin, reserve(5))
        .await;
    assert_eq!(
        (status, dry["items"][0]["quantity"].as_u64()),
        (StatusCode::OK, Some(5))
    );
    let first = app.reservation_of(product, 4).await.unwrap();
    assert_eq!(
        (first.items[0].quantity, first.items[0].backordered),
        (4, 2)
    );
    let refusal = app
        .reservation_of(product, 2)
        .await
        .refused(StatusCode::CONFLICT);
    assert_eq!(
        refusal.code, "insufficient_stock",
        "1 unit of the limit is left"
    );
    assert_eq!(refusal.details["available"], 1);
    let second = app.reservation_of(product, 1).await.unwrap();
    assert_eq!(second.items[0].backordered, 1);
    let line = &app.lines_of(warehouse).await.items[0];
    assert_eq!(
        (line.on_hand, line.reserved, line.backordered),
        (2, 5, 3),
        "reserved <= on_hand + backordered"
    );
    let refusal = app.commit(first.id).await.refused(StatusCode::CONFLICT);
    assert_eq!(refusal.code, "backordered");
    // A receipt of 2 fills the older reservation first.
    app.stock(warehouse, product, 2).await;
    let first_now = app.reservation(first.id).await.unwrap();
    let second_now = app.reservation(second.id).await.unwrap();
    assert_eq!(
        (
            first_now.items[0].backordered,
            second_now.items[0].backordered
        ),
        (0, 1)
    );
    let app = app.restart().await;
    let done = app.commit(first.id).await.unwrap();
    assert_eq!(done.status, "committed");
    let availability = app.availability(product).await;
    assert_eq!(
        (availability.on_hand, availability.reserved),
        (0, 1),
        "4 received, 4 committed; 1 still backordered"
    );
    // An order of a backordered product shows it, and cannot be paid (its stock leave)
    // before it is received.
    let (_, customer) = app.customer("pre@example.com").await;
    let (status, order) = app
        .post(
            "/orders",
            &customer,
            json!({ "items": [{ "product_id": product, "quantity": 2 }] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["items"][0]["backordered"], 2);
    let (status, body) = app
        .post(
            &format!("/orders/{}/pay", order["id"].as_str().unwrap()),
            &customer,
            json!({ "method": "card", "amount_cents": 200 }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "backordered"
    );
    app.stock(warehouse, product, 3).await;
    let (_, now) = app
        .get(
            &format!("/orders/{}", order["id"].as_str().unwrap()),
            &customer,
        )
        .await;
    assert!(now["items"][0]["backordered"].is_null(), "{now}");
    app.cleanup().await;
}

/// Past the in-memory budget of settled reservations, the oldest are answered from the
/// store exactly as they were from memory: a read shows them settled, a late commit or
/// release is 409 `reservation_not_pending`.
#[tokio::test]
async fn settled_reservations_past_the_memory_budget_answer_from_the_store() {
    let app = TestApp::spawn_with(&["--settled-in-memory", "5"]).await;
    let (product, _) = app.stocked_product(100).await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        let id = app.reservation_of(product, 1).await.unwrap().id;
        app.release(id).await.unwrap();
        ids.push(id);
    }
    for id in [ids[0], ids[29]] {
        assert_eq!(app.reservation(id).await.unwrap().status, "released");
        let refusal = app.commit(id).await.refused(StatusCode::CONFLICT);
        assert_eq!(refusal.code, "reservation_not_pending", "{id}");
    }
    assert_eq!(app.availability(product).await.reserved, 0);
    app.cleanup().await;
}
