//! `/openapi.json`: OpenAPI 3.1, covering every route the server serves.

use reqwest::{Method, StatusCode};
use serde_json::Value;
use testkit::*;

/// Every endpoint of API.md that this server implements.
const CONTRACT: &[(&str, &str)] = &[
    ("post", "/api/v1/auth/register"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/auth/me"),
    ("post", "/api/v1/auth/totp/setup"),
    ("post", "/api/v1/auth/totp/verify"),
    ("put", "/api/v1/users/{id}/role"),
    ("post", "/api/v1/products"),
    ("get", "/api/v1/products"),
    ("get", "/api/v1/products/{id}"),
    ("patch", "/api/v1/products/{id}"),
    ("delete", "/api/v1/products/{id}"),
    ("post", "/api/v1/warehouses"),
    ("get", "/api/v1/warehouses"),
    ("get", "/api/v1/warehouses/{id}"),
    ("patch", "/api/v1/warehouses/{id}"),
    ("put", "/api/v1/warehouses/{id}/status"),
    ("get", "/api/v1/products/{id}/availability"),
    ("get", "/api/v1/warehouses/{id}/stock"),
    ("post", "/api/v1/stock/adjustments"),
    ("put", "/api/v1/stock/levels"),
    ("post", "/api/v1/stock/adjustments/bulk"),
    ("get", "/api/v1/stock/movements"),
    ("post", "/api/v1/reservations"),
    ("get", "/api/v1/reservations/{id}"),
    ("post", "/api/v1/reservations/{id}/commit"),
    ("post", "/api/v1/reservations/{id}/release"),
    ("post", "/api/v1/orders"),
    ("get", "/api/v1/orders"),
    ("get", "/api/v1/orders/{id}"),
    ("post", "/api/v1/orders/{id}/pay"),
    ("post", "/api/v1/orders/{id}/cancel"),
    ("patch", "/api/v1/orders/{id}/status"),
    ("post", "/api/v1/transfers"),
    ("get", "/api/v1/transfers"),
    ("get", "/api/v1/admin/actors"),
    ("get", "/api/v1/admin/persistence"),
    ("get", "/api/v1/alerts/low-stock"),
    ("get", "/metrics"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
];

async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_covers_the_contract() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    for (method, path) in CONTRACT {
        let operation = &doc["paths"][*path][*method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        assert!(
            operation["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty()),
            "{method} {path} has no responses"
        );
    }
    app.cleanup().await;
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            operations += 1;
            let uuid_path = path.contains("/orders/") || path.contains("/reservations/");
            let id = if uuid_path {
                "0195f2a0-0000-7000-8000-000000000000"
            } else {
                "1"
            };
            let concrete = path.replace("{id}", id);
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, body) = app
                .send(method.clone(), &concrete, Some(&app.admin), None)
                .await;
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            let unrouted =
                status == StatusCode::NOT_FOUND && body["error"]["message"] == "path not found";
            assert!(
                !unrouted,
                "{method} {path} ({concrete}) is documented but not served: {status} {body}"
            );
        }
    }
    assert!(
        operations >= CONTRACT.len(),
        "{operations} operations documented"
    );
    // And the fallback really says so for a path that is not served.
    let (status, body) = app.get("/api/v1/nothing-here", &app.admin).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("path not found"))
    );
    app.cleanup().await;
}

#[tokio::test]
async fn every_request_body_has_a_schema_of_its_own_so_generated_clients_send_the_right_one() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let body_schema = |method: &str, path: &str| {
        doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no body schema"))
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned()
    };
    let bodies = [
        ("post", "/api/v1/products", "CreateProduct"),
        ("patch", "/api/v1/products/{id}", "UpdateProduct"),
        ("post", "/api/v1/warehouses", "CreateWarehouse"),
        ("patch", "/api/v1/warehouses/{id}", "UpdateWarehouse"),
        ("post", "/api/v1/reservations", "CreateReservation"),
        ("post", "/api/v1/orders", "CreateOrder"),
        ("post", "/api/v1/transfers", "CreateTransfer"),
    ];
    for (method, path, schema) in bodies {
        assert_eq!(body_schema(method, path), schema, "{method} {path}");
    }
    // The order's schema really is the order's: it has items and a shipping address.
    let order = &doc["components"]["schemas"]["CreateOrder"]["properties"];
    assert!(
        order["shipping_address"].is_object() && order["items"].is_object(),
        "{order}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn the_answers_the_edge_gives_around_handlers_are_documented_and_have_the_error_body() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let responses = |method: &str, path: &str| doc["paths"][path][method]["responses"].clone();
    for status in ["400", "413", "422", "431", "503"] {
        assert!(
            responses("post", "/api/v1/orders")[status].is_object(),
            "orders {status}"
        );
    }
    for status in ["400", "422", "431"] {
        assert!(
            responses("get", "/api/v1/products")[status].is_object(),
            "products {status}"
        );
    }
    assert!(responses("post", "/api/v1/auth/login")["422"].is_object());
    // 431 is answered with the contract's body.
    let mut request = app.client.get(format!("{}/healthz", app.base));
    for i in 0..120 {
        request = request.header(format!("x-filler-{i}"), "x");
    }
    let response = request.send().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "headers_too_large");
    // A query of the wrong type is invalid_query, not invalid_json.
    let (status, body) = app.get("/api/v1/products?limit=many", &app.admin).await;
    assert_eq!(
        error_code(status, &body, StatusCode::BAD_REQUEST),
        "invalid_query"
    );
    app.cleanup().await;
}
