//! What operators watch: actors, persistence, low stock, metrics.

use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::api::{Actors, ClusterMode, List, LowStock, Product};
use testkit::*;

#[tokio::test]
async fn operators_see_the_busiest_actors_first() {
    let app = TestApp::spawn().await;
    let (product, warehouse) = app.stocked_product(10).await;
    let other = app.product("Q", 10).await;
    app.stock(warehouse, other, 1).await;
    for _ in 0..3 {
        app.reservation_of(product, 1).await.unwrap();
    }
    let actors = async |query: &str| {
        let path = format!("/admin/actors?{query}");
        app.call::<Actors>(Method::GET, &path, &app.admin, None)
            .await
            .unwrap()
    };
    let page = actors("sort=messages_handled&limit=1").await;
    assert_eq!(page.total, 2);
    let busiest = &page.items[0];
    assert_eq!((busiest.product_id, busiest.messages_handled), (product, 4));
    assert_eq!((busiest.reserved, busiest.mailbox_len), (3, 0));
    assert!(busiest.last_message_at.is_some() && busiest.active);
    assert_eq!(actors("sort=messages_per_second").await.items.len(), 2);
    let past_the_end = actors("offset=9223372036854775807").await;
    assert_eq!((past_the_end.items.len(), past_the_end.total), (0, 2));
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
    let persistence = app.persistence().await;
    assert_eq!(persistence.durability, stockline::config::Durability::Sync);
    assert_eq!(
        (persistence.pending_records, persistence.flush_lag_ms),
        (0, 0),
        "{persistence:?}"
    );
    assert!(persistence.batches_flushed >= 1, "{persistence:?}");
    assert_eq!(persistence.flush_failures, 0);
    assert!(persistence.last_flush_at.is_some(), "{persistence:?}");
    app.cleanup().await;
}

#[tokio::test]
async fn low_stock_lists_the_active_lines_of_products_under_their_threshold() {
    let app = TestApp::spawn().await;
    let product = async |sku: &str| {
        let body = json!({ "sku": sku, "name": sku, "price_cents": 1, "low_stock_threshold": 5 });
        let made: Product = app.create("/products", &app.admin, body).await.unwrap();
        assert_eq!(made.low_stock_threshold, 5);
        made.id
    };
    let (low, fine) = (product("LOW").await, product("OK").await);
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
    let alerts: List<LowStock> = app
        .call(Method::GET, "/alerts/low-stock", &app.admin, None)
        .await
        .unwrap();
    assert_eq!(
        alerts.total, 1,
        "only the active line of the low product: {alerts:?}"
    );
    let line = &alerts.items[0];
    assert_eq!((line.product_id, line.warehouse_id), (low, a));
    assert_eq!((line.available, line.product_available), (3, 3));
    app.cleanup().await;
}

#[tokio::test]
async fn metrics_are_served_in_the_prometheus_text_format() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(10).await;
    app.reservation_of(product, 2).await.unwrap();
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
    let first = app.reservation_of(product, 2).await.unwrap();
    let second = app.reservation_of(product, 1).await.unwrap();
    let (status, _) = app.reserve(product, 1).await;
    assert_eq!(status, StatusCode::CONFLICT);
    for (reservation, step) in [(&first, "commit"), (&second, "release")] {
        let id = reservation.id;
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

/// The first whole second after now: what the overview's traffic covers from then on.
async fn next_whole_second() {
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
}

#[tokio::test]
async fn the_overview_shows_traffic_outcomes_and_the_store_to_operators() {
    let app = TestApp::spawn().await;
    let (product, warehouse) = app.stocked_product(3).await;
    for _ in 0..40 {
        let (status, _) = app.get(&format!("/products/{product}"), &app.admin).await;
        assert_eq!(status, StatusCode::OK);
    }
    let held = app.reservation_of(product, 2).await.unwrap();
    let (status, _) = app.reserve(product, 2).await;
    assert_eq!(status, StatusCode::CONFLICT);
    next_whole_second().await;
    let (status, body) = app.get("/admin/overview", &app.admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["role"].as_str(), body["shops"].is_null()),
        (Some("admin"), true)
    );
    assert_eq!(
        (body["ready"].as_bool(), body["store_healthy"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(body["durability"], "sync");
    let traffic = &body["traffic"];
    let series: Vec<u64> = serde_json::from_value(traffic["series"].clone()).unwrap();
    assert_eq!(series.len(), 60);
    assert!(series.iter().sum::<u64>() >= 42, "{traffic}");
    assert!(traffic["requests_per_second"].as_f64().unwrap() >= 4.2);
    let (p50, p99) = (
        traffic["p50_ms"].as_f64().unwrap(),
        traffic["p99_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99, "{traffic}");
    assert_eq!(
        body["reservations"],
        json!({ "created": 1, "refused": 1, "committed": 0, "released": 0, "expired": 0, "pending": 1 })
    );
    assert!(body["backlog"]["pending_records"].is_u64());
    assert!(body["flushes"]["batches"].as_u64().unwrap() >= 1);
    assert_eq!(
        (
            body["lines_in_memory"].as_u64(),
            body["lines_active"].as_u64()
        ),
        (Some(1), Some(1))
    );
    // The refusal for stock counts on the line that could not serve it.
    let (_, actors) = app.get("/admin/actors", &app.admin).await;
    assert_eq!(actors["items"][0]["refusals"], 1, "{actors}");
    assert_eq!(actors["items"][0]["warehouse_id"], warehouse);
    assert!(actors["items"][0]["passivations"].is_u64());
    let id = held.id;
    app.post(
        &format!("/reservations/{id}/release"),
        &app.admin,
        json!({}),
    )
    .await;

    let (_, customer) = app.customer("c@example.com").await;
    let (status, body) = app.get("/admin/overview", &customer).await;
    assert_eq!(
        error_code(status, &body, StatusCode::FORBIDDEN),
        "forbidden"
    );
    app.cleanup().await;
}

/// A shop with `staff` as a member and one warehouse of its own; answers (shop, warehouse).
async fn shop_with_member(app: &TestApp, staff: i64) -> (i64, i64) {
    let (status, shop) = app
        .post(
            "/shops",
            &app.admin,
            json!({ "code": "s1", "name": "Shop one" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{shop}");
    let shop = shop["id"].as_i64().unwrap();
    let (status, body) = app
        .put(
            &format!("/shops/{shop}/members/{staff}"),
            &app.admin,
            json!({ "role": "shop_staff" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, own) = app
        .post(
            "/warehouses",
            &app.admin,
            json!({ "code": "own", "name": "Own", "shop_id": shop }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{own}");
    (shop, own["id"].as_i64().unwrap())
}

#[tokio::test]
async fn a_shop_member_overview_has_its_own_lines_and_no_server_wide_figures() {
    let app = TestApp::spawn().await;
    let (staff_id, staff) = app.customer("staff@example.com").await;
    let (shop, own) = shop_with_member(&app, staff_id).await;
    let other = app.warehouse("other", 1).await;
    let product = app.product("P", 100).await;
    app.stock(own, product, 1).await;
    app.stock(other, product, 1).await;
    let (status, body) = app.get("/admin/overview", &staff).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["shops"], json!([shop]));
    assert_eq!(body["lines_in_memory"], 1);
    for hidden in ["traffic", "reservations", "backlog", "flushes"] {
        assert!(body[hidden].is_null(), "{hidden}: {body}");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn pending_reservations_are_listed_soonest_expiry_first() {
    let app = TestApp::spawn().await;
    let (staff_id, staff) = app.customer("staff@example.com").await;
    let (_, own) = shop_with_member(&app, staff_id).await;
    let (product, warehouse) = app.stocked_product(100).await;
    app.stock(own, product, 100).await;
    let mut ids = Vec::new();
    for (ttl, at) in [
        (300, warehouse),
        (60, warehouse),
        (600, own),
        (120, warehouse),
    ] {
        let (status, body) = app
            .post(
                "/reservations",
                &app.admin,
                json!({ "items": [{ "product_id": product, "quantity": 1, "warehouse_id": at }], "ttl_seconds": ttl }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (status, _) = app
        .post(
            &format!("/reservations/{}/commit", ids[3]),
            &app.admin,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.get("/reservations", &app.admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [&ids[1], &ids[0], &ids[2]]);
    assert_eq!(body["total"], 3);
    let (_, page) = app.get("/reservations?limit=1&offset=1", &app.admin).await;
    assert_eq!(
        (page["items"][0]["id"].as_str(), page["total"].as_i64()),
        (Some(ids[0].as_str()), Some(3))
    );
    // A shop member: the reservation holding its warehouse's stock only.
    let (_, mine) = app.get("/reservations", &staff).await;
    assert_eq!(
        (mine["items"][0]["id"].as_str(), mine["total"].as_i64()),
        (Some(ids[2].as_str()), Some(1))
    );
    let (status, body) = app.get("/reservations?limit=0", &app.admin).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    let (_, customer) = app.customer("c@example.com").await;
    let (status, body) = app.get("/reservations", &customer).await;
    assert_eq!(
        error_code(status, &body, StatusCode::FORBIDDEN),
        "forbidden"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn an_orders_payments_are_listed_for_it_and_its_customer_only() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(5).await;
    let (_, buyer) = app.customer("buyer@example.com").await;
    let (_, order) = app
        .post(
            "/orders",
            &buyer,
            json!({ "items": [{ "product_id": product, "quantity": 2 }] }),
        )
        .await;
    let id = order["id"].as_str().unwrap();
    let (_, none) = app.get(&format!("/orders/{id}/payments"), &buyer).await;
    assert_eq!(none, json!({ "items": [], "total": 0 }));
    let (status, _) = app
        .post(
            &format!("/orders/{id}/pay"),
            &buyer,
            json!({ "method": "card", "amount_cents": 200 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for token in [&buyer, &app.admin] {
        let (status, body) = app.get(&format!("/orders/{id}/payments"), token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["total"], 1);
        assert_eq!(
            (
                body["items"][0]["method"].as_str(),
                body["items"][0]["amount_cents"].as_i64()
            ),
            (Some("card"), Some(200))
        );
    }
    let (_, stranger) = app.customer("other@example.com").await;
    let (status, body) = app.get(&format!("/orders/{id}/payments"), &stranger).await;
    assert_eq!(
        error_code(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn with_request_metrics_off_nothing_is_counted_per_request() {
    let app = TestApp::spawn_with(&["--metrics", "false"]).await;
    let product = app.product("P", 100).await;
    let (status, _) = app.get(&format!("/products/{product}"), &app.admin).await;
    assert_eq!(status, StatusCode::OK);
    let text = app.metrics().await;
    assert!(!text.contains("stockline_http_requests_total{"), "{text}");
    assert!(
        !text.contains("stockline_durable_wait_seconds_count"),
        "{text}"
    );
    assert!(text.contains("stockline_lines "), "scrape-time gauges stay");
    let (_, body) = app.get("/admin/overview", &app.admin).await;
    assert!(
        body["traffic"].is_null() && body["reservations"].is_object(),
        "{body}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn the_console_is_served_from_the_binary_with_a_strict_policy() {
    let app = TestApp::spawn().await;
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let answer = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        let headers = answer.headers();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .starts_with("default-src 'self'")
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        // The SVG namespace is a name, not a fetch.
        let body = answer
            .text()
            .await
            .unwrap()
            .replace("http://www.w3.org/2000/svg", "");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} fetches from elsewhere"
        );
    }
    app.cleanup().await;
}

#[tokio::test]
async fn methods_outside_the_standard_ones_share_one_label() {
    let app = TestApp::spawn().await;
    for method in ["FROB", "FRIB", "X-ANYTHING"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, _) = app.send(method, "/products", None, None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }
    let text = app.metrics().await;
    assert!(
        text.contains(r#"stockline_http_requests_total{method="OTHER",route="/api/v1/products",status="405"} 3"#),
        "{text}"
    );
    assert!(!text.contains("FROB"));
    app.cleanup().await;
}

#[tokio::test]
async fn a_single_server_s_cluster_map_says_it_serves_every_shard_itself() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .send(reqwest::Method::GET, "/cluster/shards", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let map = app.shard_map(&app.admin).await.unwrap();
    assert_eq!(
        (map.mode, map.shard_count, map.shards.len()),
        (ClusterMode::Single, 1024, 0)
    );
    assert_eq!(
        map.function,
        "xxh3_64(product_id as 8 little-endian bytes) % shard_count"
    );
    // Ids name their shard here too, so a database that later serves a cluster routes
    // them with no lookup.
    let (product, _) = app.stocked_product(2).await;
    let reservation = app.reservation_of(product, 1).await.unwrap();
    let id = reservation.id;
    assert_eq!(
        stockline_actors::ReservationId(id).home(),
        Some(stockline_actors::Home::One(stockline::cluster::shard_of(
            product
        )))
    );
}
