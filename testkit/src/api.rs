//! The typed client: requests that answer the API's own types (the server's structs,
//! decoded), or the contract's error, so that a test reads `line.available`, not
//! `body["available"]`, and a field renamed on the server breaks the build of the tests
//! that read it.

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

pub use stockline::carts::CartStatus;
pub use stockline::events::webhooks::Delivery;
pub use stockline::http::{
    Actor, Actors, ClusterMode, ClusterView, DeadLetter, List, LowStock, Member, Movement,
    Persistence, Product, ShardMap, Shop, Warehouse, Webhook,
};
pub use stockline::inventory::carts::{Cart, CartItem};
pub use stockline::inventory::lines::{StockLine, Transfer};
pub use stockline::inventory::reservations::{Item, ReservationBody as Reservation};
pub use stockline::inventory::stock::{Availability, WarehouseStock};
pub use stockline::orders::{Order, OrderItem, OrderStatus};

use crate::TestApp;

/// An answer the API refused: its status and the contract's error body.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub details: Value,
}

impl Refusal {
    /// Asserts the status; answers the code.
    pub fn code_at(&self, status: StatusCode) -> &str {
        assert_eq!(self.status, status, "{self:?}");
        &self.code
    }
}

/// What a typed request answers.
pub type Answer<T> = Result<T, Refusal>;

/// What a test expects of an answer it means to be refused.
pub trait Refused {
    /// The refusal, asserted to have `status`; panics if the request was served.
    fn refused(self, status: StatusCode) -> Refusal;
}

impl<T: std::fmt::Debug> Refused for Answer<T> {
    fn refused(self, status: StatusCode) -> Refusal {
        match self {
            Ok(served) => panic!("expected {status}, was served: {served:?}"),
            Err(refusal) => {
                assert_eq!(refusal.status, status, "{refusal:?}");
                refusal
            }
        }
    }
}

/// What `path` answered: a 2xx body decoded as `T`, anything else as the contract's error
/// body. A 2xx other than `served` (201 where the contract says 200, say) panics, as does
/// a body that is neither: the contract is broken.
pub fn answer_of<T: DeserializeOwned>(
    path: &str,
    status: StatusCode,
    body: Value,
    served: StatusCode,
) -> Answer<T> {
    if status.is_success() {
        assert_eq!(
            status, served,
            "{path} was served with another status: {body}"
        );
        return Ok(serde_json::from_value(body.clone()).unwrap_or_else(|e| {
            panic!("{path} answered {status} with a body not of its type ({e}): {body}")
        }));
    }
    let error = &body["error"];
    match (error["code"].as_str(), error["message"].as_str()) {
        (Some(code), Some(message)) if error["details"].is_object() => Err(Refusal {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
            details: error["details"].clone(),
        }),
        _ => panic!("{path} answered {status} without the contract's error body: {body}"),
    }
}

impl TestApp {
    /// Sends a request as `token` that the contract serves with 200: its body decodes as
    /// `T`, a refusal as the contract's error body (see [`answer_of`]).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Answer<T> {
        self.call_served(method, path, token, body, StatusCode::OK)
            .await
    }

    /// `POST {path}` of `body` as `token`, a request that makes something: served with 201.
    pub async fn create<T: DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
        body: Value,
    ) -> Answer<T> {
        self.call_served(Method::POST, path, token, Some(body), StatusCode::CREATED)
            .await
    }

    /// Sends a request as `token` that the contract serves with `served`.
    pub async fn call_served<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        served: StatusCode,
    ) -> Answer<T> {
        let (status, body) = self.send(method, path, Some(token), body).await;
        answer_of(path, status, body, served)
    }

    /// `POST /reservations` of `quantity` of a product (any warehouse), as the admin.
    pub async fn reservation_of(&self, product_id: i64, quantity: i64) -> Answer<Reservation> {
        self.create_reservation(
            &self.admin,
            json!({ "items": [{ "product_id": product_id, "quantity": quantity }] }),
        )
        .await
    }

    /// `POST /reservations` with `body` as `token`.
    pub async fn create_reservation(&self, token: &str, body: Value) -> Answer<Reservation> {
        self.create("/reservations", token, body).await
    }

    /// `GET /reservations/{id}`, as the admin.
    pub async fn reservation(&self, id: Uuid) -> Answer<Reservation> {
        self.call(
            Method::GET,
            &format!("/reservations/{id}"),
            &self.admin,
            None,
        )
        .await
    }

    /// `PATCH /reservations/{id}`: expires `ttl_seconds` from now, as the admin.
    pub async fn extend(&self, id: Uuid, ttl_seconds: i64) -> Answer<Reservation> {
        let body = json!({ "ttl_seconds": ttl_seconds });
        let path = format!("/reservations/{id}");
        self.call(Method::PATCH, &path, &self.admin, Some(body))
            .await
    }

    /// `POST /reservations/{id}/commit` of all it holds, as the admin.
    pub async fn commit(&self, id: Uuid) -> Answer<Reservation> {
        self.settle(id, "commit", None).await
    }

    /// `POST /reservations/{id}/release` of all it holds, as the admin.
    pub async fn release(&self, id: Uuid) -> Answer<Reservation> {
        self.settle(id, "release", None).await
    }

    /// `POST /reservations/{id}/{step}` (`commit` or `release`) of `parts` (all: `None`),
    /// as the admin.
    pub async fn settle(&self, id: Uuid, step: &str, parts: Option<Value>) -> Answer<Reservation> {
        self.settle_as(&self.admin, id, step, parts).await
    }

    /// The same, as `token`.
    pub async fn settle_as(
        &self,
        token: &str,
        id: Uuid,
        step: &str,
        parts: Option<Value>,
    ) -> Answer<Reservation> {
        let path = format!("/reservations/{id}/{step}");
        self.call(Method::POST, &path, token, parts).await
    }

    /// `POST /stock/adjustments` of `delta` on a line with `reason`, as the admin.
    pub async fn adjust(
        &self,
        warehouse_id: i64,
        product_id: i64,
        delta: i64,
        reason: &str,
    ) -> Answer<StockLine> {
        let body = json!({ "warehouse_id": warehouse_id, "product_id": product_id, "delta": delta, "reason": reason });
        self.call(Method::POST, "/stock/adjustments", &self.admin, Some(body))
            .await
    }

    /// `GET /products/{id}/availability`, as the admin.
    pub async fn availability_of(&self, product_id: i64) -> Answer<Availability> {
        let path = format!("/products/{product_id}/availability");
        self.call(Method::GET, &path, &self.admin, None).await
    }

    /// A product's availability; panics if it is refused.
    pub async fn availability(&self, product_id: i64) -> Availability {
        self.availability_of(product_id)
            .await
            .unwrap_or_else(|refusal| panic!("availability of {product_id}: {refusal:?}"))
    }

    /// Receives `delta` units on a line; answers the line (panics if refused).
    pub async fn stock(&self, warehouse_id: i64, product_id: i64, delta: i64) -> StockLine {
        self.adjust(warehouse_id, product_id, delta, "receipt")
            .await
            .unwrap_or_else(|refusal| panic!("receipt on {warehouse_id}/{product_id}: {refusal:?}"))
    }

    /// `GET /products/{id}`, as the admin.
    pub async fn product_of(&self, id: i64) -> Answer<Product> {
        self.call(Method::GET, &format!("/products/{id}"), &self.admin, None)
            .await
    }

    /// `GET /warehouses/{id}`, as the admin.
    pub async fn warehouse_of(&self, id: i64) -> Answer<Warehouse> {
        self.call(Method::GET, &format!("/warehouses/{id}"), &self.admin, None)
            .await
    }

    /// `PUT /stock/levels`: a count setting on hand, checked against `expected_version`
    /// when one is given, as the admin.
    pub async fn count(
        &self,
        warehouse_id: i64,
        product_id: i64,
        on_hand: i64,
        expected_version: Option<i64>,
    ) -> Answer<StockLine> {
        let body = json!({ "warehouse_id": warehouse_id, "product_id": product_id, "on_hand": on_hand, "expected_version": expected_version });
        self.call(Method::PUT, "/stock/levels", &self.admin, Some(body))
            .await
    }

    /// `GET /stock/movements?{query}`, as the admin; panics if refused.
    pub async fn movements(&self, query: &str) -> List<Movement> {
        let path = format!("/stock/movements?{query}");
        self.call(Method::GET, &path, &self.admin, None)
            .await
            .unwrap_or_else(|refusal| panic!("{path}: {refusal:?}"))
    }

    /// `GET /warehouses/{id}/stock`, as the admin; panics if refused.
    pub async fn lines_of(&self, warehouse_id: i64) -> List<StockLine> {
        let path = format!("/warehouses/{warehouse_id}/stock");
        self.call(Method::GET, &path, &self.admin, None)
            .await
            .unwrap_or_else(|refusal| panic!("{path}: {refusal:?}"))
    }

    /// `GET /carts/{id}` as `token`.
    pub async fn cart_of(&self, token: &str, id: Uuid) -> Answer<Cart> {
        self.call(Method::GET, &format!("/carts/{id}"), token, None)
            .await
    }

    /// `POST /orders` of `body` as `token`.
    pub async fn place_order(&self, token: &str, body: Value) -> Answer<Order> {
        self.create("/orders", token, body).await
    }

    /// `GET /orders/{id}` as `token`.
    pub async fn order_of(&self, token: &str, id: Uuid) -> Answer<Order> {
        self.call(Method::GET, &format!("/orders/{id}"), token, None)
            .await
    }

    /// `POST /orders/{id}/{step}` (`pay` with `body`, `cancel`, `ship`, ...) as `token`.
    pub async fn order_step(
        &self,
        token: &str,
        id: Uuid,
        step: &str,
        body: Value,
    ) -> Answer<Order> {
        let path = format!("/orders/{id}/{step}");
        self.call(Method::POST, &path, token, Some(body)).await
    }

    /// `GET /cluster/shards` as `token`.
    pub async fn shard_map(&self, token: &str) -> Answer<ShardMap> {
        self.call(Method::GET, "/cluster/shards", token, None).await
    }

    /// `PUT /stock/safety`: keeps `safety_stock` units of a line back, as the admin.
    pub async fn safety(
        &self,
        warehouse_id: i64,
        product_id: i64,
        safety_stock: i64,
    ) -> Answer<StockLine> {
        let body = json!({ "warehouse_id": warehouse_id, "product_id": product_id, "safety_stock": safety_stock });
        self.call(Method::PUT, "/stock/safety", &self.admin, Some(body))
            .await
    }

    /// `POST /transfers` of `quantity` units of a product between warehouses, as the admin.
    pub async fn transfer(
        &self,
        from_warehouse_id: i64,
        to_warehouse_id: i64,
        product_id: i64,
        quantity: i64,
    ) -> Answer<Transfer> {
        let body = json!({ "from_warehouse_id": from_warehouse_id, "to_warehouse_id": to_warehouse_id, "product_id": product_id, "quantity": quantity });
        self.create("/transfers", &self.admin, body).await
    }

    /// `GET /admin/persistence`, as the admin; panics if refused.
    pub async fn persistence(&self) -> Persistence {
        self.call(Method::GET, "/admin/persistence", &self.admin, None)
            .await
            .unwrap_or_else(|refusal| panic!("/admin/persistence: {refusal:?}"))
    }

    /// Shop `code` (named after it), made by the admin; answers its id.
    pub async fn shop(&self, code: &str) -> i64 {
        let body = json!({ "code": code, "name": code });
        let made: Shop = self
            .create("/shops", &self.admin, body)
            .await
            .unwrap_or_else(|refusal| panic!("shop {code}: {refusal:?}"));
        made.id
    }

    /// A new customer `email` made a member of `shop` in `role` (`shop_owner`,
    /// `shop_staff`) by `by` (an admin, or the shop's owner): answers its token.
    pub async fn member(&self, by: &str, shop: i64, email: &str, role: &str) -> String {
        let (user, token) = self.customer(email).await;
        let path = format!("/shops/{shop}/members/{user}");
        let body = json!({ "role": role });
        let member: Value = self
            .call(Method::PUT, &path, by, Some(body))
            .await
            .unwrap_or_else(|refusal| panic!("{path}: {refusal:?}"));
        // The whole body, so that a field the contract does not name fails too.
        assert_eq!(
            member,
            json!({ "shop_id": shop, "user_id": user, "role": role })
        );
        token
    }

    /// `POST /webhooks` with `body` as `token`.
    pub async fn subscribe(&self, token: &str, body: Value) -> Answer<Webhook> {
        self.create("/webhooks", token, body).await
    }

    /// `GET /webhooks/{id}/deliveries?{query}` as `token`.
    pub async fn deliveries(&self, token: &str, id: Uuid, query: &str) -> Answer<List<Delivery>> {
        let path = format!("/webhooks/{id}/deliveries?{query}");
        self.call(Method::GET, &path, token, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_served_or_refused_in_the_contract_s_words() {
        let served: Answer<Value> = answer_of(
            "/x",
            StatusCode::CREATED,
            json!({"id": 1}),
            StatusCode::CREATED,
        );
        assert_eq!(served.unwrap()["id"], 1);
        let error = json!({"error": {"code": "conflict", "message": "no", "details": {"a": 1}}});
        let refused: Answer<Value> =
            answer_of("/x", StatusCode::CONFLICT, error, StatusCode::CREATED);
        let refusal = refused.refused(StatusCode::CONFLICT);
        assert_eq!(
            (refusal.code.as_str(), &refusal.details),
            ("conflict", &json!({"a": 1}))
        );
    }

    #[test]
    #[should_panic(expected = "was served with another status")]
    fn a_201_where_the_contract_says_200_fails() {
        let _: Answer<Value> = answer_of("/x", StatusCode::CREATED, json!({}), StatusCode::OK);
    }

    #[test]
    #[should_panic(expected = "without the contract's error body")]
    fn a_refusal_without_the_contract_s_body_fails() {
        let _: Answer<Value> = answer_of(
            "/x",
            StatusCode::CONFLICT,
            json!({"oops": 1}),
            StatusCode::OK,
        );
    }
}
