//! What the two baselines (row locks, Redis) share: the request bodies they read, the
//! answers they give in stockline's shapes, and how they are served.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
pub struct Reserve {
    pub items: Vec<Item>,
}

#[derive(Deserialize)]
pub struct Item {
    pub product_id: i64,
    pub quantity: i64,
}

#[derive(Deserialize)]
pub struct Transfer {
    pub from_warehouse_id: i64,
    pub to_warehouse_id: i64,
    pub product_id: i64,
    pub quantity: i64,
}

/// A 409 with stockline's error shape.
pub fn conflict(code: &str) -> Response {
    (
        StatusCode::CONFLICT,
        axum::Json(json!({ "error": { "code": code } })),
    )
        .into_response()
}

/// A product's availability, as stockline answers it (the totals).
pub fn availability(product_id: i64, on_hand: i64, reserved: i64) -> Response {
    axum::Json(json!({
        "product_id": product_id,
        "on_hand": on_hand,
        "reserved": reserved,
        "available": on_hand - reserved,
    }))
    .into_response()
}

/// Serves a baseline's handlers on a random loopback port; answers their base URL.
pub async fn serve(router: axum::Router, name: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, router)
            .await
            .unwrap_or_else(|e| panic!("the {name} baseline stopped serving: {e}"))
    });
    format!("http://{addr}/api/v1")
}
