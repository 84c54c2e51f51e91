//! Requests the cart tests make, one process or a cluster alike.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::TestApp;
use crate::api::{Answer, Cart, Order};

/// A new cart of `body` (`{shop_id?, hold?}`) through `app`: its id.
pub async fn cart(app: &TestApp, token: &str, body: Value) -> String {
    let (status, cart) = app.post("/carts", token, body).await;
    assert_eq!(status, StatusCode::CREATED, "{cart}");
    cart["id"].as_str().unwrap().to_owned()
}

/// Sets `product` in `cart` to `quantity` units (0 removes it).
pub async fn put_item(
    app: &TestApp,
    token: &str,
    cart: &str,
    product: i64,
    quantity: i64,
) -> (StatusCode, Value) {
    app.put(
        &format!("/carts/{cart}/items/{product}"),
        token,
        json!({ "quantity": quantity }),
    )
    .await
}

/// A cart's items as (product, quantity), by product.
pub fn quantities(cart: &Value) -> Vec<(i64, i64)> {
    cart["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["product_id"].as_i64().unwrap(),
                i["quantity"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Sets `product` in `cart` to `quantity` units (0 removes it): the cart, typed.
pub async fn set_item(
    app: &TestApp,
    token: &str,
    cart: &str,
    product: i64,
    quantity: i64,
) -> Answer<Cart> {
    let path = format!("/carts/{cart}/items/{product}");
    let body = json!({ "quantity": quantity });
    app.call(reqwest::Method::PUT, &path, token, Some(body))
        .await
}

/// `POST /carts/{id}/checkout` with `body` (the order's address and contact).
pub async fn checkout(app: &TestApp, token: &str, cart: &str, body: Value) -> Answer<Order> {
    let path = format!("/carts/{cart}/checkout");
    app.call(reqwest::Method::POST, &path, token, Some(body))
        .await
}

/// A typed cart's items as (product, quantity), in the cart's order.
pub fn items_of(cart: &Cart) -> Vec<(i64, u64)> {
    cart.items
        .iter()
        .map(|i| (i.product_id, i.quantity))
        .collect()
}
