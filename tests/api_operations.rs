//! What operators watch: actors, persistence, low stock, metrics.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn operators_see_the_busiest_actors_first() {
    let app = TestApp::spawn().await;
    let (product, warehouse) = app.stocked_product(10).await;
    let other = app.product("Q", 10).await;
    app.stock(warehouse, other, 1).await;
    for _ in 0..3 {
        app.reserve(product, 1).await;
    }
    let (status, body) = app
        .get("/admin/actors?sort=messages_handled&limit=1", &app.admin)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 2);
    let busiest = &body["items"][0];
    assert_eq!(
        (
            busiest["product_id"].as_i64(),
            busiest["messages_handled"].as_u64()
        ),
        (Some(product), Some(4))
    );
    assert_eq!(
        (
            busiest["reserved"].as_u64(),
            busiest["mailbox_len"].as_u64()
        ),
        (Some(3), Some(0))
    );
    assert!(busiest["last_message_at"].is_string() && busiest["active"] == true);
    let (status, body) = app.get("/admin/actors?sort=size", &app.admin).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    let (_, customer) = app.customer("op@example.com").await;
    for path in ["/admin/actors", "/admin/persistence", "/alerts/low-stock"] {
        let (status, body) = app.get(path, &customer).await;
        assert_eq!(
            error_code(status, &body, StatusCode::FORBIDDEN),
            "forbidden",
            "{path}"
        );
    }
    app.cleanup().await;
}

#[tokio::test]
async fn persistence_shows_the_flusher_at_work() {
    let app = TestApp::spawn().await;
    app.stocked_product(10).await;
    let (status, body) = app.get("/admin/persistence", &app.admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["durability"], "sync");
    assert_eq!(
        (
            body["pending_records"].as_u64(),
            body["flush_lag_ms"].as_i64()
        ),
        (Some(0), Some(0))
    );
    assert!(body["batches_flushed"].as_u64().unwrap() >= 1);
    assert_eq!(body["flush_failures"], 0);
    assert!(body["last_flush_at"].is_string());
    app.cleanup().await;
}

#[tokio::test]
async fn low_stock_lists_the_active_lines_of_products_under_their_threshold() {
    let app = TestApp::spawn().await;
    let (status, low) = app
        .post(
            "/products",
            &app.admin,
            json!({ "sku": "LOW", "name": "Low", "price_cents": 1, "low_stock_threshold": 5 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let low = low["id"].as_i64().unwrap();
    let (_, fine) = app
        .post(
            "/products",
            &app.admin,
            json!({ "sku": "OK", "name": "Fine", "price_cents": 1, "low_stock_threshold": 5 }),
        )
        .await;
    let fine = fine["id"].as_i64().unwrap();
    let (a, b) = (app.warehouse("A", 1).await, app.warehouse("B", 2).await);
    app.stock(a, low, 3).await;
    app.stock(b, low, 40).await;
    app.stock(a, fine, 9).await;
    app.put(
        &format!("/warehouses/{b}/status"),
        &app.admin,
        json!({ "status": "inactive" }),
    )
    .await;
    let (status, body) = app.get("/alerts/low-stock", &app.admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["total"], 1,
        "only the active line of the low product: {body}"
    );
    let line = &body["items"][0];
    assert_eq!(
        (line["product_id"].as_i64(), line["warehouse_id"].as_i64()),
        (Some(low), Some(a))
    );
    assert_eq!(
        (
            line["available"].as_u64(),
            line["product_available"].as_u64()
        ),
        (Some(3), Some(3))
    );
    app.cleanup().await;
}

#[tokio::test]
async fn metrics_are_served_in_the_prometheus_text_format() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(10).await;
    app.reserve(product, 2).await;
    let response = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for expected in [
        "stockline_lines 1",
        "stockline_reservations_pending 1",
        "stockline_store_healthy 1",
        "stockline_flush_batches_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(expected)),
            "{expected} missing from:\n{text}"
        );
    }
    app.cleanup().await;
}

#[tokio::test]
async fn metrics_count_requests_exactly_by_route_template_and_every_series_has_help() {
    let app = TestApp::spawn().await;
    let product = app.product("P", 100).await;
    for _ in 0..7 {
        let (status, _) = app.get(&format!("/products/{product}"), &app.admin).await;
        assert_eq!(status, StatusCode::OK);
    }
    for _ in 0..3 {
        let (status, _) = app.get("/products/987654", &app.admin).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _) = app.get("/no/such/path", &app.admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Reservations by outcome: two created (one committed, one released), one refused.
    let warehouse = app.warehouse("W", 1).await;
    app.stock(warehouse, product, 3).await;
    let (_, first) = app.reserve(product, 2).await;
    let (_, second) = app.reserve(product, 1).await;
    let (status, _) = app.reserve(product, 1).await;
    assert_eq!(status, StatusCode::CONFLICT);
    for (reservation, step) in [(&first, "commit"), (&second, "release")] {
        let id = reservation["id"].as_str().unwrap();
        let (status, _) = app
            .post(
                &format!("/reservations/{id}/{step}"),
                &app.admin,
                serde_json::json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let text = app.metrics().await;
    let value = |series: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    let route = r#"route="/api/v1/products/{id}""#;
    assert_eq!(
        value(&format!(
            r#"stockline_http_requests_total{{method="GET",{route},status="200"}}"#
        )),
        Some(7.0),
        "{text}"
    );
    assert_eq!(
        value(&format!(
            r#"stockline_http_requests_total{{method="GET",{route},status="404"}}"#
        )),
        Some(3.0)
    );
    assert_eq!(
        value(&format!(
            r#"stockline_http_request_duration_seconds_count{{method="GET",{route}}}"#
        )),
        Some(10.0)
    );
    assert_eq!(
        value(r#"stockline_http_requests_total{method="GET",route="unmatched",status="404"}"#),
        Some(1.0),
        "paths no route matches share one label value"
    );
    for (outcome, count) in [
        ("created", 2.0),
        ("refused", 1.0),
        ("committed", 1.0),
        ("released", 1.0),
        ("expired", 0.0),
    ] {
        assert_eq!(
            value(&format!(
                r#"stockline_reservations_total{{outcome="{outcome}"}}"#
            )),
            Some(count),
            "{outcome}"
        );
    }
    assert!(
        value("stockline_durable_wait_seconds_count").is_some_and(|n| n >= 5.0),
        "sync answers waited"
    );
    assert!(value("stockline_flush_duration_seconds_count").is_some_and(|n| n >= 1.0));
    assert!(
        text.contains("process_cpu_seconds_total"),
        "process metrics"
    );
    // Prometheus conventions: a HELP for every series, counters end in _total.
    let names: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
        })
        .collect();
    for name in &names {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
        if text.contains(&format!("# TYPE {name} counter")) {
            assert!(name.ends_with("_total"), "counter {name}");
        }
    }
    assert!(names.len() >= 15, "{names:?}");
    app.cleanup().await;
}
