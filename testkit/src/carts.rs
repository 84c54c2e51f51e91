//! Requests the cart tests make, one process or a cluster alike.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::TestApp;
use crate::api::{Answer, Cart, List, Order};

/// A new cart of `body` (`{shop_id?, hold?}`) through `app`: its id.
pub async fn cart(app: &TestApp, token: &str, body: Value) -> Uuid {
    let made: Cart = app
        .create("/carts", token, body)
        .await
        .unwrap_or_else(|refusal| panic!("a new cart was refused: {refusal:?}"));
    made.id
}

/// Sets `product` in `cart` to `quantity` units (0 removes it): the cart as it is now.
pub async fn set_item(
    app: &TestApp,
    token: &str,
    cart: Uuid,
    product: i64,
    quantity: i64,
) -> Answer<Cart> {
    let path = format!("/carts/{cart}/items/{product}");
    let body = json!({ "quantity": quantity });
    app.call(Method::PUT, &path, token, Some(body)).await
}

/// Takes `product` out of `cart`: the cart as it is now.
pub async fn remove_item(app: &TestApp, token: &str, cart: Uuid, product: i64) -> Answer<Cart> {
    let path = format!("/carts/{cart}/items/{product}");
    app.call(Method::DELETE, &path, token, None).await
}

/// `POST /carts/{id}/checkout` with `body` (the order's address and contact).
pub async fn checkout(app: &TestApp, token: &str, cart: Uuid, body: Value) -> Answer<Order> {
    app.create(&format!("/carts/{cart}/checkout"), token, body)
        .await
}

/// `GET /carts?{query}`: the caller's own carts (an admin's too).
pub async fn carts_of(app: &TestApp, token: &str, query: &str) -> List<Cart> {
    let path = format!("/carts?{query}");
    app.call(Method::GET, &path, token, None)
        .await
        .unwrap_or_else(|refusal| panic!("{path}: {refusal:?}"))
}

/// A cart's items as (product, quantity), in the cart's order.
pub fn items_of(cart: &Cart) -> Vec<(i64, u64)> {
    cart.items
        .iter()
        .map(|i| (i.product_id, i.quantity))
        .collect()
}
