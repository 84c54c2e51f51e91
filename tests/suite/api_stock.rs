//! Stock over HTTP: availability, adjustments, counts, bulk, movements, warehouse lines.

use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::api::Availability;
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
    let (status, body) = app
        .get(&format!("/products/{product}/availability"), &customer)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            body["on_hand"].as_u64(),
            body["reserved"].as_u64(),
            body["available"].as_u64()
        ),
        (Some(14), Some(3), Some(11))
    );
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
    let adjust = |delta: serde_json::Value, reason: &str| {
        app.post(
            "/stock/adjustments",
            &app.admin,
            json!({ "warehouse_id": warehouse, "product_id": product, "delta": delta, "reason": reason }),
        )
    };
    let (status, body) = adjust(json!(-5), "damage").await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "insufficient_stock"
    );
    assert_eq!(body["error"]["details"]["available"], 4);
    let (status, body) = adjust(json!(-4), "damage").await;
    assert_eq!(
        (status, body["on_hand"].as_u64()),
        (StatusCode::OK, Some(6))
    );
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
    let level = |on_hand: i64, expected: Option<i64>| {
        app.put(
            "/stock/levels",
            &app.admin,
            json!({ "warehouse_id": warehouse, "product_id": product, "on_hand": on_hand, "expected_version": expected }),
        )
    };
    let (status, body) = level(7, Some(0)).await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "version_mismatch"
    );
    assert_eq!(body["error"]["details"]["current_version"], 1);
    let (status, body) = level(7, Some(1)).await;
    assert_eq!(
        (status, body["on_hand"].as_u64(), body["version"].as_u64()),
        (StatusCode::OK, Some(7), Some(2))
    );
    app.reservation_of(product, 5).await.unwrap();
    let (status, body) = level(4, None).await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "insufficient_stock"
    );
    let (status, body) = level(-1, None).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn of_fifty_concurrent_counts_at_one_version_exactly_one_lands() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    let (product, warehouse) = app.stocked_product(10).await;
    let counts: Vec<_> = (0..50)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                app.put(
                    "/stock/levels",
                    &app.admin,
                    json!({ "warehouse_id": warehouse, "product_id": product, "on_hand": 100 + i, "expected_version": 1 }),
                )
                .await
            })
        })
        .collect();
    let mut landed = Vec::new();
    for count in counts {
        let (status, body) = count.await.unwrap();
        match status {
            StatusCode::OK => landed.push(body["on_hand"].as_i64().unwrap()),
            _ => {
                assert_eq!(
                    error_code(status, &body, StatusCode::CONFLICT),
                    "version_mismatch"
                );
                assert_eq!(body["error"]["details"]["current_version"], 2);
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
    let (status, body) = app
        .get(&format!("/stock/movements?product_id={p1}"), &app.admin)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let kinds: Vec<_> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["reserve", "adjust"]);
    assert_eq!(body["items"][0]["reference"], reservation.id.to_string());
    assert_eq!(
        (
            body["items"][0]["on_hand_after"].as_u64(),
            body["items"][0]["reserved_after"].as_u64()
        ),
        (Some(5), Some(2))
    );
    let (_, adjusts) = app.get("/stock/movements?kind=adjust", &app.admin).await;
    assert_eq!(adjusts["total"], 2);
    let (status, body) = app.get("/stock/movements?kind=teleport", &app.admin).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    let (_, lines) = app
        .get(&format!("/warehouses/{warehouse}/stock"), &app.admin)
        .await;
    assert_eq!(lines["total"], 2);
    assert_eq!(
        (
            lines["items"][0]["product_id"].as_i64(),
            lines["items"][0]["reserved"].as_u64()
        ),
        (Some(p1), Some(2))
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

    let (_, body) = app
        .get(
            &format!("/stock/movements?product_id={product}"),
            &app.admin,
        )
        .await;
    let seen: Vec<_> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["kind"].as_str().unwrap().to_owned(),
                m["reason"].as_str().map(str::to_owned),
                m["actor_user_id"].as_i64(),
                m["reference"].as_str().unwrap().to_owned(),
            )
        })
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
    let (status, line) = app
        .put(
            "/stock/safety",
            &app.admin,
            json!({ "warehouse_id": warehouse, "product_id": product, "safety_stock": 4 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{line}");
    assert_eq!(
        (line["safety_stock"].as_u64(), line["available"].as_u64()),
        (Some(4), Some(6))
    );
    let availability = app.availability(product).await;
    assert_eq!((availability.on_hand, availability.available), (10, 6));
    let (status, body) = app.reserve(product, 7).await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "insufficient_stock"
    );
    assert_eq!(body["error"]["details"]["available"], 6);
    let (status, _) = app.reserve(product, 6).await;
    assert_eq!(status, StatusCode::CREATED);
    // Damage may eat into the safety stock (it is physical), never into what is reserved.
    let damage = |delta: i64| json!({ "warehouse_id": warehouse, "product_id": product, "delta": delta, "reason": "damage" });
    let (status, line) = app.post("/stock/adjustments", &app.admin, damage(-3)).await;
    assert_eq!(status, StatusCode::OK, "{line}");
    assert_eq!(
        (
            line["on_hand"].as_u64(),
            line["reserved"].as_u64(),
            line["available"].as_u64()
        ),
        (Some(7), Some(6), Some(0))
    );
    let (status, body) = app.post("/stock/adjustments", &app.admin, damage(-2)).await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "insufficient_stock"
    );
    let (_, movements) = app
        .get(
            &format!("/stock/movements?kind=safety&product_id={product}"),
            &app.admin,
        )
        .await;
    assert_eq!(movements["total"], 1);
    assert_eq!(movements["items"][0]["quantity"], 4);
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
    let (_, lines) = app
        .get(&format!("/warehouses/{warehouse}/stock"), &app.admin)
        .await;
    assert_eq!(lines["items"][0]["safety_stock"], 4, "{lines}");
    assert_eq!(lines["items"][0]["available"], 0);
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
