//! Bad input across the whole API, as a table: malformed JSON, wrong types, negative, zero
//! and enormous quantities, unknown ids, bad UUIDs, missing, bad and foreign tokens. Each
//! gets the contract's status and error body.

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::*;

/// Who sends the request.
#[derive(Clone, Copy, Debug)]
enum Who {
    Nobody,
    Garbage,
    Customer,
    OtherCustomer,
    Admin,
}

/// A body: JSON, or raw text sent as JSON.
enum Body {
    None,
    Json(Value),
    Raw(&'static str),
}

struct Case {
    method: &'static str,
    path: String,
    who: Who,
    body: Body,
    status: StatusCode,
    code: &'static str,
}

fn case(
    method: &'static str,
    path: impl Into<String>,
    who: Who,
    body: Body,
    status: StatusCode,
    code: &'static str,
) -> Case {
    Case {
        method,
        path: path.into(),
        who,
        body,
        status,
        code,
    }
}

#[tokio::test]
async fn every_endpoint_answers_bad_input_with_the_contract() {
    use Body::{Json, None as Empty, Raw};
    use Who::*;
    let app = TestApp::spawn().await;
    let (product, warehouse) = app.stocked_product(10).await;
    let (_, customer) = app.customer("yan@example.com").await;
    let (_, other) = app.customer("zoe@example.com").await;
    let (_, order) = app
        .post(
            "/orders",
            &customer,
            json!({ "items": [{ "product_id": product, "quantity": 1 }] }),
        )
        .await;
    let order = order["id"].as_str().unwrap().to_owned();
    let unknown_uuid = "0195f2a0-0000-7000-8000-000000000000";
    let item =
        |quantity: Value| json!({ "items": [{ "product_id": product, "quantity": quantity }] });
    let transfer = |quantity: Value| json!({ "from_warehouse_id": warehouse, "to_warehouse_id": warehouse + 1000, "product_id": product, "quantity": quantity });
    let adjust = |delta: Value| json!({ "warehouse_id": warehouse, "product_id": product, "delta": delta, "reason": "receipt" });
    let (bad, malformed, types, invalid, missing, forbidden, unknown, unauthorized) = (
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "invalid_json",
        StatusCode::UNPROCESSABLE_ENTITY,
        StatusCode::NOT_FOUND,
        StatusCode::FORBIDDEN,
        "not_found",
        StatusCode::UNAUTHORIZED,
    );
    let mut cases = vec![
        // Malformed JSON and wrong types.
        case(
            "POST",
            "/auth/register",
            Nobody,
            Raw("{\"email\":"),
            bad,
            malformed,
        ),
        case(
            "POST",
            "/auth/login",
            Nobody,
            Raw("not json"),
            bad,
            malformed,
        ),
        case(
            "POST",
            "/auth/login",
            Nobody,
            Json(json!({ "login": 1, "password": [] })),
            bad,
            types,
        ),
        case("POST", "/products", Admin, Raw("{"), bad, malformed),
        case(
            "POST",
            "/products",
            Admin,
            Json(json!({ "sku": "X", "name": "X", "price_cents": "ten" })),
            bad,
            types,
        ),
        case(
            "PATCH",
            format!("/products/{product}"),
            Admin,
            Json(json!({ "name": 5 })),
            bad,
            types,
        ),
        case(
            "POST",
            "/warehouses",
            Admin,
            Json(json!({ "code": ["W"], "name": "X" })),
            bad,
            types,
        ),
        case(
            "PUT",
            format!("/warehouses/{warehouse}/status"),
            Admin,
            Json(json!({ "status": true })),
            bad,
            types,
        ),
        case(
            "POST",
            "/stock/adjustments",
            Admin,
            Raw("[1,"),
            bad,
            malformed,
        ),
        case(
            "POST",
            "/stock/adjustments/bulk",
            Admin,
            Json(json!({ "not": "a list" })),
            bad,
            types,
        ),
        case(
            "PUT",
            "/stock/levels",
            Admin,
            Json(json!({ "warehouse_id": "w", "product_id": product, "on_hand": 1 })),
            bad,
            types,
        ),
        case(
            "POST",
            "/reservations",
            Admin,
            Json(json!({ "items": { "product_id": product } })),
            bad,
            types,
        ),
        case(
            "POST",
            "/orders",
            Customer,
            Raw("{\"items\": [}"),
            bad,
            malformed,
        ),
        case(
            "POST",
            format!("/orders/{order}/pay"),
            Customer,
            Json(json!({ "method": "card", "amount_cents": "100" })),
            bad,
            types,
        ),
        case(
            "PATCH",
            format!("/orders/{order}/status"),
            Admin,
            Json(json!({ "status": 3 })),
            bad,
            types,
        ),
        case("POST", "/transfers", Admin, Raw("{}}"), bad, malformed),
        case(
            "PUT",
            "/users/1/role",
            Admin,
            Json(json!({ "role": null })),
            bad,
            types,
        ),
        case(
            "GET",
            "/stock/movements?limit=ten",
            Admin,
            Empty,
            bad,
            "invalid_query",
        ),
        // Negative, zero and enormous quantities.
        case(
            "POST",
            "/reservations",
            Admin,
            Json(item(json!(-1))),
            invalid,
            "validation_failed",
        ),
        case(
            "POST",
            "/reservations",
            Admin,
            Json(item(json!(0))),
            invalid,
            "validation_failed",
        ),
        case(
            "POST",
            "/reservations",
            Admin,
            Json(item(json!(1_000_000_001u64))),
            invalid,
            "validation_failed",
        ),
        case(
            "POST",
            "/reservations",
            Admin,
            Json(item(json!(1e300))),
            invalid,
            "validation_failed",
        ),
        case(
            "POST",
            "/orders",
            Customer,
            Json(item(json!(-5))),
            invalid,
            "validation_failed",
        ),
        case(
            "POST",
            "/orders",
            Customer,
            Json(item(json!(0))),
            invalid,
            "validation_failed",
        ),
        case(
            "POST",
            "/orders",
            Customer,
            Json(item(json!(u64::MAX))),
            invalid,
            "validation_failed",
        ),
        case(
            "POST",
            "/transfers",
            Admin,
            Json(transfer(json!(0))),
            invalid,
            "validation_failed",
        ),
        case(
            "POST",
            "/transfers",
            Admin,
            Json(transfer(json!(-3))),
            invalid,
            "validation_failed",
        ),
        case(
            "POST",
            "/transfers",
            Admin,
            Json(transfer(json!(9e15))),
            invalid,
            "validation_failed",
        ),
        case(
            "POST",
            "/stock/adjustments",
            Admin,
            Json(adjust(json!(0))),
            invalid,
            "validation_failed",
        ),
        case(
            "POST",
            "/stock/adjustments",
            Admin,
            Json(adjust(json!(-2_000_000_000i64))),
            invalid,
            "validation_failed",
        ),
        case(
            "PUT",
            "/stock/levels",
            Admin,
            Json(json!({ "warehouse_id": warehouse, "product_id": product, "on_hand": -1 })),
            invalid,
            "validation_failed",
        ),
        case(
            "POST",
            "/products",
            Admin,
            Json(json!({ "sku": "N", "name": "N", "price_cents": -100 })),
            invalid,
            "validation_failed",
        ),
        case(
            "POST",
            format!("/orders/{order}/pay"),
            Customer,
            Json(json!({ "method": "card", "amount_cents": -1 })),
            invalid,
            "validation_failed",
        ),
        // Unknown ids and bad UUIDs.
        case("GET", "/products/987654", Admin, Empty, missing, unknown),
        case("GET", "/products/abc", Admin, Empty, missing, unknown),
        case("GET", "/warehouses/987654", Admin, Empty, missing, unknown),
        case(
            "GET",
            "/products/987654/availability",
            Admin,
            Empty,
            missing,
            unknown,
        ),
        case(
            "PUT",
            "/users/987654/role",
            Admin,
            Json(json!({ "role": "operator" })),
            missing,
            unknown,
        ),
        case(
            "POST",
            "/stock/adjustments",
            Admin,
            Json(
                json!({ "warehouse_id": 987654, "product_id": product, "delta": 1, "reason": "receipt" }),
            ),
            missing,
            unknown,
        ),
        case(
            "POST",
            "/reservations",
            Admin,
            Json(json!({ "items": [{ "product_id": 987654, "quantity": 1 }] })),
            missing,
            unknown,
        ),
        case(
            "POST",
            "/transfers",
            Admin,
            Json(transfer(json!(1))),
            missing,
            unknown,
        ),
        case(
            "GET",
            format!("/reservations/{unknown_uuid}"),
            Admin,
            Empty,
            missing,
            unknown,
        ),
        case(
            "GET",
            "/reservations/not-a-uuid",
            Admin,
            Empty,
            missing,
            unknown,
        ),
        case(
            "POST",
            "/reservations/1234/commit",
            Admin,
            Empty,
            missing,
            unknown,
        ),
        case(
            "GET",
            format!("/orders/{unknown_uuid}"),
            Customer,
            Empty,
            missing,
            unknown,
        ),
        case("GET", "/orders/zzz", Customer, Empty, missing, unknown),
        case(
            "POST",
            "/orders/zzz/pay",
            Customer,
            Json(json!({ "method": "card", "amount_cents": 1 })),
            missing,
            unknown,
        ),
        // Missing, garbage and foreign tokens; roles.
        case(
            "GET",
            format!("/orders/{order}"),
            OtherCustomer,
            Empty,
            missing,
            unknown,
        ),
        case(
            "POST",
            format!("/orders/{order}/cancel"),
            OtherCustomer,
            Empty,
            missing,
            unknown,
        ),
        case(
            "POST",
            "/products",
            Customer,
            Json(json!({ "sku": "C", "name": "C", "price_cents": 1 })),
            forbidden,
            "forbidden",
        ),
        case(
            "POST",
            "/stock/adjustments",
            Customer,
            Json(adjust(json!(1))),
            forbidden,
            "forbidden",
        ),
        case(
            "POST",
            "/reservations",
            Customer,
            Json(item(json!(1))),
            forbidden,
            "forbidden",
        ),
        case(
            "POST",
            "/transfers",
            Customer,
            Json(transfer(json!(1))),
            forbidden,
            "forbidden",
        ),
        case(
            "GET",
            "/stock/movements",
            Customer,
            Empty,
            forbidden,
            "forbidden",
        ),
        case(
            "PUT",
            "/users/1/role",
            Customer,
            Json(json!({ "role": "admin" })),
            forbidden,
            "forbidden",
        ),
    ];
    let protected = [
        ("GET", "/auth/me".to_owned()),
        ("POST", "/auth/logout".to_owned()),
        ("POST", "/auth/totp/setup".to_owned()),
        ("GET", "/products".to_owned()),
        ("GET", "/warehouses".to_owned()),
        ("POST", "/products".to_owned()),
        ("POST", "/stock/adjustments".to_owned()),
        ("PUT", "/stock/levels".to_owned()),
        ("POST", "/reservations".to_owned()),
        ("POST", "/orders".to_owned()),
        ("GET", "/orders".to_owned()),
        ("GET", format!("/orders/{order}")),
        ("POST", "/transfers".to_owned()),
        ("GET", "/transfers".to_owned()),
    ];
    for (method, path) in protected {
        cases.push(case(
            method,
            path.clone(),
            Nobody,
            Json(json!({})),
            unauthorized,
            "unauthorized",
        ));
        cases.push(case(
            method,
            path,
            Garbage,
            Json(json!({})),
            unauthorized,
            "unauthorized",
        ));
    }

    for case in &cases {
        let url = format!("{}/api/v1{}", app.base, case.path);
        let mut request = app.client.request(case.method.parse().unwrap(), &url);
        request = match case.who {
            Nobody => request,
            Garbage => request.bearer_auth("eyJhbGciOiJIUzI1NiJ9.e30.forged"),
            Customer => request.bearer_auth(&customer),
            OtherCustomer => request.bearer_auth(&other),
            Admin => request.bearer_auth(&app.admin),
        };
        request = match &case.body {
            Body::None => request,
            Body::Json(value) => request.json(value),
            Body::Raw(text) => request
                .header("content-type", "application/json")
                .body(*text),
        };
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let label = format!("{} {} as {:?}", case.method, case.path, case.who);
        assert_eq!(status, case.status, "{label}: {body}");
        assert_eq!(body["error"]["code"], case.code, "{label}: {body}");
        assert!(
            body["error"]["message"].is_string() && body["error"]["details"].is_object(),
            "{label}: {body}"
        );
    }
    // Nothing above moved any stock.
    let stock = app.availability(product).await;
    assert_eq!((stock.on_hand, stock.reserved), (10, 1));
    app.cleanup().await;
}
