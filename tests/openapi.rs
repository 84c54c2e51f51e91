//! `/openapi.json`: OpenAPI 3.1, covering every route the server serves.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

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
