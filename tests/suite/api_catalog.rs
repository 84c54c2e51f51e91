//! Products and warehouses over HTTP, and the edge's general error handling.

use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::*;

#[tokio::test]
async fn products_are_created_found_searched_patched_and_deleted() {
    let app = TestApp::spawn().await;
    let (status, created) = app
        .post(
            "/products",
            &app.admin,
            json!({ "sku": "TEA-1", "name": "Green tea", "description": "loose", "price_cents": 450, "low_stock_threshold": 5 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_i64().unwrap();
    app.product("COF-1", 900).await;
    let (_, customer) = app.customer("hal@example.com").await;

    let (status, found) = app.get(&format!("/products/{id}"), &customer).await;
    assert_eq!(
        (status, found["sku"].as_str()),
        (StatusCode::OK, Some("TEA-1"))
    );
    let (_, search) = app.get("/products?q=tea", &customer).await;
    assert_eq!(search["total"], 1);
    assert_eq!(search["items"][0]["id"], id);
    let (_, page) = app.get("/products?limit=1&offset=1", &customer).await;
    assert_eq!(
        (
            page["total"].as_i64(),
            page["items"].as_array().unwrap().len()
        ),
        (Some(2), 1)
    );

    let (status, patched) = app
        .send(
            Method::PATCH,
            &format!("/products/{id}"),
            Some(&app.admin),
            Some(json!({ "price_cents": 500 })),
        )
        .await;
    assert_eq!(
        (
            status,
            patched["price_cents"].as_i64(),
            patched["name"].as_str()
        ),
        (StatusCode::OK, Some(500), Some("Green tea"))
    );

    let (status, _) = app
        .send(
            Method::DELETE,
            &format!("/products/{id}"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get(&format!("/products/{id}"), &customer).await;
    assert_eq!(
        error_code(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    // Its sku is free again.
    app.product("TEA-1", 450).await;
    app.cleanup().await;
}

#[tokio::test]
async fn product_writes_refuse_bad_values_duplicates_and_customers() {
    let app = TestApp::spawn().await;
    app.product("DUP", 100).await;
    let (_, customer) = app.customer("ivy@example.com").await;
    let cases = [
        (
            json!({ "sku": "DUP", "name": "x", "price_cents": 1 }),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            json!({ "sku": "N1", "name": "x", "price_cents": -1 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "sku": "N2", "name": "x", "price_cents": 1.5 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "sku": "", "name": "x", "price_cents": 1 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "sku": "N3", "name": "x" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "sku": "N4", "name": "x", "price_cents": "1" }),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = app.post("/products", &app.admin, body.clone()).await;
        assert_eq!(error_code(got, &answer, status), code, "{body}");
    }
    let (status, body) = app
        .post(
            "/products",
            &customer,
            json!({ "sku": "C", "name": "x", "price_cents": 1 }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::FORBIDDEN),
        "forbidden"
    );
    for path in ["/products/424242", "/products/not-a-number"] {
        let (status, body) = app.get(path, &customer).await;
        assert_eq!(
            error_code(status, &body, StatusCode::NOT_FOUND),
            "not_found",
            "{path}"
        );
    }
    let (status, body) = app.get("/products?limit=501", &customer).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    let (status, body) = app.get("/products?limit=many", &customer).await;
    assert_eq!(
        error_code(status, &body, StatusCode::BAD_REQUEST),
        "invalid_query"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_product_with_stock_cannot_be_deleted() {
    let app = TestApp::spawn().await;
    let product = app.product("P", 100).await;
    let warehouse = app.warehouse("W", 100).await;
    app.stock(warehouse, product, 3).await;
    let (status, body) = app
        .send(
            Method::DELETE,
            &format!("/products/{product}"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(error_code(status, &body, StatusCode::CONFLICT), "conflict");
    app.stock(warehouse, product, -3).await;
    let (status, _) = app
        .send(
            Method::DELETE,
            &format!("/products/{product}"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.cleanup().await;
}

#[tokio::test]
async fn warehouses_have_codes_priorities_and_a_status() {
    let app = TestApp::spawn().await;
    let (status, created) = app
        .post(
            "/warehouses",
            &app.admin,
            json!({ "code": "BER", "name": "Berlin", "location": "DE" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        (created["status"].as_str(), created["priority"].as_i64()),
        (Some("active"), Some(100))
    );
    let id = created["id"].as_i64().unwrap();
    // A location is bounded like every other text field, also in a PATCH.
    let long = "x".repeat(501);
    let (status, body) = app
        .post(
            "/warehouses",
            &app.admin,
            json!({ "code": "LONG", "name": "Long", "location": long }),
        )
        .await;
    error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"]["field"], "location");
    let (status, body) = app
        .patch(
            &format!("/warehouses/{id}"),
            &app.admin,
            json!({ "location": long }),
        )
        .await;
    error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = app
        .post(
            "/warehouses",
            &app.admin,
            json!({ "code": "BER", "name": "again" }),
        )
        .await;
    assert_eq!(error_code(status, &body, StatusCode::CONFLICT), "conflict");

    let (status, patched) = app
        .send(
            Method::PATCH,
            &format!("/warehouses/{id}"),
            Some(&app.admin),
            Some(json!({ "priority": 5 })),
        )
        .await;
    assert_eq!(
        (status, patched["priority"].as_i64()),
        (StatusCode::OK, Some(5))
    );
    let (status, body) = app
        .put(
            &format!("/warehouses/{id}/status"),
            &app.admin,
            json!({ "status": "inactive" }),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("inactive"))
    );
    let (status, body) = app
        .put(
            &format!("/warehouses/{id}/status"),
            &app.admin,
            json!({ "status": "closed" }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    let (status, body) = app
        .put(
            "/warehouses/9999/status",
            &app.admin,
            json!({ "status": "active" }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );

    let (_, list) = app.get("/warehouses", &app.admin).await;
    assert_eq!(list["total"], 1);
    let (status, one) = app.get(&format!("/warehouses/{id}"), &app.admin).await;
    assert_eq!(
        (status, one["status"].as_str()),
        (StatusCode::OK, Some("inactive"))
    );
    app.cleanup().await;
}

#[tokio::test]
async fn malformed_oversized_and_misrouted_requests_get_the_error_body() {
    let app = TestApp::spawn().await;
    let url = format!("{}/api/v1/products", app.base);
    let raw = |body: String, content_type: &'static str| {
        app.client
            .post(&url)
            .bearer_auth(&app.admin)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let response = raw("{not json".into(), "application/json").await.unwrap();
    let status = response.status();
    assert_eq!(
        error_code(
            status,
            &response.json().await.unwrap(),
            StatusCode::BAD_REQUEST
        ),
        "invalid_json"
    );
    let response = raw(
        r#"{"sku":"A","name":"B","price_cents":1}"#.into(),
        "text/plain",
    )
    .await
    .unwrap();
    let status = response.status();
    assert_eq!(
        error_code(
            status,
            &response.json().await.unwrap(),
            StatusCode::BAD_REQUEST
        ),
        "invalid_json"
    );
    let huge = format!(
        r#"{{"sku":"A","name":"{}","price_cents":1}}"#,
        "x".repeat(1_100_000)
    );
    let response = raw(huge, "application/json").await.unwrap();
    let status = response.status();
    assert_eq!(
        error_code(
            status,
            &response.json().await.unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE
        ),
        "payload_too_large"
    );
    let (status, body) = app.get("/no/such/path", &app.admin).await;
    assert_eq!(
        error_code(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    app.cleanup().await;
}
