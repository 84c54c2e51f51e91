//! Stock over HTTP: availability, adjustments, counts, bulk, movements, warehouse lines.

use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::api::{Availability, Refused, StockLine};
use testkit::*;

#[tokio::test]
async fn availability_counts_active_warehouses_only() {
    let app = TestApp::spawn().await;
    let product = app.product("P", 100).await;
    let (a, b) = (app.warehouse("A", 1).await, app.warehouse("B", 2).await);
    app.stock(a, product, 10).await;
    app.stock(b, product, 4).await;
    app.reservation_of(product, 3).await.unwrap();
    let (_, customer) = app.customer("jo@example.com").await;
    let path = format!("/products/{product}/availability");
    let seen: Availability = app.call(Method::GET, &path, &customer, None).await.unwrap();
    assert_eq!((seen.on_hand, seen.reserved, seen.available), (14, 3, 11));
    app.put(
        &format!("/warehouses/{a}/status"),
        &app.admin,
        json!({ "status": "inactive" }),
    )
    .await;
    let body = app.availability(product).await;
    assert_eq!((body.on_hand, body.available), (4, 4));
    let lines = &body.warehouses;
    assert_eq!(lines.len(), 2, "inactive lines are still listed");
    assert_eq!(
        (lines[0].status.as_str(), lines[0].reserved),
        ("inactive", 3)
    );
    let (status, body) = app.get("/products/9999/availability", &customer).await;
    assert_eq!(
        error_code(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn adjustments_move_on_hand_with_a_reason_and_never_below_reserved() {
    let app = TestApp::spawn().await;
    let (product, warehouse) = (app.product("P", 100).await, app.warehouse("W", 1).await);
    let line = app.stock(warehouse, product, 10).await;
    assert_eq!((line.on_hand, line.available, line.version), (10, 10, 1));
    app.reservation_of(product, 6).await.unwrap();
    let refusal = app
        .adjust(warehouse, product, -5, "damage")
        .await
        .refused(StatusCode::CONFLICT);
    assert_eq!(refusal.code, "insufficient_stock");
    assert_eq!(refusal.details["available"], 4);
    let line = app.adjust(warehouse, product, -4, "damage").await.unwrap();
    assert_eq!(line.on_hand, 6);
    let adjust = |delta: serde_json::Value, reason: &str| {
        app.post(
            "/stock/adjustments",
            &app.admin,
            json!({ "warehouse_id": warehouse, "product_id": product, "delta": delta, "reason": reason }),
        )
    };
    for (delta, reason) in [
        (json!(0), "count"),
        (json!(3), "gift"),
        (json!(1_000_000_001), "receipt"),
        (json!(2.5), "receipt"),
    ] {
        let (status, body) = adjust(delta.clone(), reason).await;
        assert_eq!(
            error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
            "validation_failed",
            "{delta} {reason}"
        );
    }
    let (status, body) = app
        .post(
            "/stock/adjustments",
            &app.admin,
            json!({ "warehouse_id": 999, "product_id": product, "delta": 1, "reason": "receipt" }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    let (_, customer) = app.customer("kim@example.com").await;
    let (status, body) = app
        .post("/stock/adjustments", &customer, json!({ "warehouse_id": warehouse, "product_id": product, "delta": 1, "reason": "receipt" }))
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::FORBIDDEN),
        "forbidden"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_count_sets_the_level_with_an_optional_version_check() {
    let app = TestApp::spawn().await;
    let (product, warehouse) = app.stocked_product(10).await;
    let level =
        |on_hand: i64, expected: Option<i64>| app.count(warehouse, product, on_hand, expected);
    let refusal = level(7, Some(0)).await.refused(StatusCode::CONFLICT);
    assert_eq!(refusal.code, "version_mismatch");
    assert_eq!(refusal.details["current_version"], 1);
    let line = level(7, Some(1)).await.unwrap();
    assert_eq!((line.on_hand, line.version), (7, 2));
    app.reservation_of(product, 5).await.unwrap();
    let refusal = level(4, None).await.refused(StatusCode::CONFLICT);
    assert_eq!(refusal.code, "insufficient_stock");
    let refusal = level(-1, None)
        .await
        .refused(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refusal.code, "validation_failed");
    app.cleanup().await;
}

#[tokio::test]
async fn of_fifty_concurrent_counts_at_one_version_exactly_one_lands() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    let (product, warehouse) = app.stocked_product(10).await;
    let counts: Vec<_> = (0..50)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { app.count(warehouse, product, 100 + i, Some(1)).await })
        })
        .collect();
    let mut landed = Vec::new();
    for count in counts {
        match count.await.unwrap() {
            Ok(line) => landed.push(line.on_hand as i64),
            refused => {
                let refusal = refused.refused(StatusCode::CONFLICT);
                assert_eq!(refusal.code, "version_mismatch");
                assert_eq!(refusal.details["current_version"], 2);
            }
        }
    }
    assert_eq!(landed.len(), 1, "exactly one count lands");
    let now = app.availability(product).await;
    assert_eq!(
        now.on_hand as i64, landed[0],
        "and it is what the line holds"
    );
    std::sync::Arc::into_inner(app).unwrap().cleanup().await;
}

#[tokio::test]
async fn bulk_adjustments_answer_each_item_on_its_own() {
    let app = TestApp::spawn().await;
    let (product, warehouse) = (app.product("P", 100).await, app.warehouse("W", 1).await);
    let item = |delta: i64, reason: &str| json!({ "warehouse_id": warehouse, "product_id": product, "delta": delta, "reason": reason });
    let (status, body) = app
        .post(
            "/stock/adjustments/bulk",
            &app.admin,
            json!([
                item(5, "receipt"),
                item(-9, "damage"),
                item(2, "bogus"),
                item(1, "return")
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    let oks: Vec<_> = results.iter().map(|r| r["ok"].as_bool().unwrap()).collect();
    assert_eq!(oks, vec![true, false, false, true]);
    assert_eq!(results[1]["error"]["code"], "insufficient_stock");
    assert_eq!(results[2]["error"]["code"], "validation_failed");
    assert_eq!(results[3]["line"]["on_hand"], 6);
    let too_many: Vec<_> = (0..1001).map(|_| item(1, "receipt")).collect();
    let (status, body) = app
        .post("/stock/adjustments/bulk", &app.admin, json!(too_many))
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn movements_are_listed_newest_first_and_filtered() {
    let app = TestApp::spawn().await;
    let (p1, p2) = (app.product("P1", 100).await, app.product("P2", 100).await);
    let warehouse = app.warehouse("W", 1).await;
    app.stock(warehouse, p1, 5).await;
    app.stock(warehouse, p2, 7).await;
    let reservation = app.reservation_of(p1, 2).await.unwrap();
    let movements = app.movements(&format!("product_id={p1}")).await;
    let kinds: Vec<_> = movements.items.iter().map(|m| m.kind.as_str()).collect();
    assert_eq!(kinds, vec!["reserve", "adjust"]);
    let newest = &movements.items[0];
    assert_eq!(newest.reference, reservation.id.to_string());
    assert_eq!((newest.on_hand_after, newest.reserved_after), (5, 2));
    assert_eq!(app.movements("kind=adjust").await.total, 2);
    let (status, body) = app.get("/stock/movements?kind=teleport", &app.admin).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    let lines = app.lines_of(warehouse).await;
    assert_eq!(lines.total, 2);
    assert_eq!(
        (lines.items[0].product_id, lines.items[0].reserved),
        (p1, 2)
    );
    app.cleanup().await;
}

#[tokio::test]
async fn movements_say_who_changed_stock_by_hand_why_and_under_which_reference() {
    let app = TestApp::spawn().await;
    let product = app.product("P", 100).await;
    let (a, b) = (app.warehouse("A", 1).await, app.warehouse("B", 2).await);
    let operator = app.operator("op@example.com").await;
    let (_, me) = app.get("/auth/me", &operator).await;
    let operator_id = me["id"].as_i64().unwrap();
    let (status, body) = app
        .post(
            "/stock/adjustments",
            &operator,
            json!({ "warehouse_id": a, "product_id": product, "delta": 10, "reason": "receipt",
                    "reference": "delivery note 77" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .put(
            "/stock/levels",
            &app.admin,
            json!({ "warehouse_id": a, "product_id": product, "on_hand": 8, "reference": "count sheet 3" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, transfer) = app
        .post(
            "/transfers",
            &operator,
            json!({ "from_warehouse_id": a, "to_warehouse_id": b, "product_id": product,
                    "quantity": 3, "reference": "move 5" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{transfer}");
    assert_eq!(
        (
            transfer["actor_user_id"].as_i64(),
            transfer["reference"].as_str()
        ),
        (Some(operator_id), Some("move 5"))
    );
    app.reservation_of(product, 1).await.unwrap();

    let movements = app.movements(&format!("product_id={product}")).await;
    let seen: Vec<_> = movements
        .items
        .into_iter()
        .map(|m| (m.kind, m.reason, m.actor_user_id, m.reference))
        .collect();
    let admin_id = app.get("/auth/me", &app.admin).await.1["id"].as_i64();
    let reserve_reference = seen[0].3.clone();
    assert_eq!(
        seen,
        vec![
            ("reserve".into(), None, None, reserve_reference),
            (
                "transfer_in".into(),
                None,
                Some(operator_id),
                "move 5".into()
            ),
            (
                "transfer_out".into(),
                None,
                Some(operator_id),
                "move 5".into()
            ),
            (
                "adjust".into(),
                Some("count".into()),
                admin_id,
                "count sheet 3".into()
            ),
            (
                "adjust".into(),
                Some("receipt".into()),
                Some(operator_id),
                "delivery note 77".into()
            ),
        ]
    );

    let long = "x".repeat(256);
    let (status, body) = app
        .post(
            "/stock/adjustments",
            &operator,
            json!({ "warehouse_id": a, "product_id": product, "delta": 1, "reason": "receipt", "reference": long }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    assert_eq!(body["error"]["details"]["field"], "reference");
    app.cleanup().await;
}

#[tokio::test]
async fn safety_stock_stays_on_hand_unreserved_and_survives_a_restart() {
    let app = TestApp::spawn().await;
    let (product, warehouse) = app.stocked_product(10).await;
    let body = json!({ "warehouse_id": warehouse, "product_id": product, "safety_stock": 4 });
    let line: StockLine = app
        .call(Method::PUT, "/stock/safety", &app.admin, Some(body))
        .await
        .unwrap();
    assert_eq!((line.safety_stock, line.available), (4, 6));
    let availability = app.availability(product).await;
    assert_eq!((availability.on_hand, availability.available), (10, 6));
    let refusal = app
        .reservation_of(product, 7)
        .await
        .refused(StatusCode::CONFLICT);
    assert_eq!(refusal.code, "insufficient_stock");
    assert_eq!(refusal.details["available"], 6);
    app.reservation_of(product, 6).await.unwrap();
    // Damage may eat into the safety stock (it is physical), never into what is reserved.
    let line = app.adjust(warehouse, product, -3, "damage").await.unwrap();
    assert_eq!((line.on_hand, line.reserved, line.available), (7, 6, 0));
    let refusal = app
        .adjust(warehouse, product, -2, "damage")
        .await
        .refused(StatusCode::CONFLICT);
    assert_eq!(refusal.code, "insufficient_stock");
    let movements = app
        .movements(&format!("kind=safety&product_id={product}"))
        .await;
    assert_eq!(movements.total, 1);
    assert_eq!(movements.items[0].quantity, 4);
    for bad in [json!(-1), json!(1_000_000_001), json!("4")] {
        let (status, _) = app
            .put(
                "/stock/safety",
                &app.admin,
                json!({ "warehouse_id": warehouse, "product_id": product, "safety_stock": bad }),
            )
            .await;
        assert!(status.is_client_error(), "{bad}: {status}");
    }

    let app = app.restart().await;
    let lines = app.lines_of(warehouse).await;
    assert_eq!(
        (lines.items[0].safety_stock, lines.items[0].available),
        (4, 0)
    );
    app.cleanup().await;
}

#[tokio::test]
async fn availability_as_of_a_past_moment_equals_what_was_read_at_that_moment() {
    let app = TestApp::spawn_with(&["--durability", "async"]).await;
    let product = app.product("P", 100).await;
    let (a, b) = (app.warehouse("A", 1).await, app.warehouse("B", 2).await);
    let mut recorded = Vec::new();
    let mut record = async |app: &TestApp| {
        let now = app.availability(product).await;
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        let moment = chrono::Utc::now();
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        recorded.push((moment, now));
    };
    record(&app).await;
    app.stock(a, product, 10).await;
    record(&app).await;
    app.stock(b, product, 4).await;
    let first = app.reservation_of(product, 12).await.unwrap();
    record(&app).await;
    app.put(
        "/stock/safety",
        &app.admin,
        json!({ "warehouse_id": b, "product_id": product, "safety_stock": 1 }),
    )
    .await;
    app.post(
        &format!("/reservations/{}/commit", first.id),
        &app.admin,
        json!({}),
    )
    .await;
    record(&app).await;
    app.post(
        "/transfers",
        &app.admin,
        json!({ "from_warehouse_id": b, "to_warehouse_id": a, "product_id": product, "quantity": 1 }),
    )
    .await;
    let second = app.reservation_of(product, 1).await.unwrap();
    record(&app).await;
    app.post(
        &format!("/reservations/{}/release", second.id),
        &app.admin,
        json!({}),
    )
    .await;
    record(&app).await;

    // The replay knows no versions: what it must agree on is the units.
    let totals = |v: &Availability| {
        let mut lines: Vec<_> = v
            .warehouses
            .iter()
            .map(|w| (w.warehouse_id, w.on_hand, w.reserved, w.available))
            .collect();
        lines.sort();
        (v.on_hand, v.reserved, v.available, lines)
    };
    for (moment, then) in &recorded {
        let as_of = moment.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let path = format!(
            "/products/{product}/availability?as_of={}",
            as_of.replace('+', "%2B")
        );
        let replayed: Availability = app
            .call(Method::GET, &path, &app.admin, None)
            .await
            .unwrap();
        assert_eq!(totals(&replayed), totals(then), "as of {as_of}");
    }
    assert_eq!(recorded.len(), 6);
    for bad in ["yesterday", "2999-01-01T00:00:00Z"] {
        let (status, body) = app
            .get(
                &format!("/products/{product}/availability?as_of={bad}"),
                &app.admin,
            )
            .await;
        assert_eq!(
            error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
            "validation_failed"
        );
    }
    app.cleanup().await;
}
