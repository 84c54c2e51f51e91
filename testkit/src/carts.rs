//! Requests the cart tests make, one process or a cluster alike.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::TestApp;

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
