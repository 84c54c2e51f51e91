//! Orders in cluster mode: placed, paid, shipped, cancelled and expired through any node,
//! their items in shards of different nodes, and an order whose owner is killed with
//! kill -9 between place and pay paid through another node, nothing sold twice and
//! nothing held for ever.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{LEASE, ONE_AT_A_TIME, SETTLE_WITHIN, a_product_per_node, pool};
use testkit::TestApp;
use testkit::api::{Answer, List, Order, OrderStatus, Refused, answer_of};
use testkit::cluster::Nodes;

/// Units each product starts with.
const UNITS: i64 = 10_000;

/// Another product of node `owner`, in a shard other than `product`'s, stocked in
/// `warehouse`.
async fn another_of(nodes: &Nodes, owner: usize, product: i64, warehouse: i64) -> i64 {
    for i in 0.. {
        let other = nodes.app(0).product(&format!("also-{i}"), 100).await;
        if nodes.owner_of(other, 0).await == owner
            && stockline::cluster::shard_of(other) != stockline::cluster::shard_of(product)
        {
            nodes.app(0).stock(warehouse, other, UNITS).await;
            return other;
        }
    }
    unreachable!()
}

fn order_of(items: &[(i64, u64)]) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(product, quantity)| json!({ "product_id": product, "quantity": quantity }))
        .collect();
    json!({ "items": items, "shipping_address": { "city": "Oslo" } })
}

async fn place(app: &TestApp, token: &str, items: &[(i64, u64)]) -> Order {
    let order = app.place_order(token, order_of(items)).await.unwrap();
    assert_eq!(order.status, OrderStatus::PendingPayment, "{order:?}");
    order
}

/// The orders `token` may see, through `app`.
async fn orders_of(app: &TestApp, token: &str) -> List<Order> {
    app.call(Method::GET, "/orders", token, None).await.unwrap()
}

/// Pays order `id` through `app` with `amount_cents`, no key.
async fn pay(app: &TestApp, token: &str, id: Uuid, amount_cents: i64) -> Answer<Order> {
    let body = json!({ "method": "card", "amount_cents": amount_cents });
    app.order_step(token, id, "pay", body).await
}

/// (on hand, reserved) of `product` as node `node` answers its availability.
pub(super) async fn levels(nodes: &Nodes, node: usize, product: i64) -> (i64, i64) {
    let availability = nodes.app(node).availability(product).await;
    (availability.on_hand as i64, availability.reserved as i64)
}

/// Sends `path` and `body` through each node in turn while the answer is 503 (a shard
/// moving), up to `SETTLE_WITHIN`: the first other answer (served with `served`).
pub(super) async fn until_served<T: DeserializeOwned>(
    nodes: &Nodes,
    through: &[usize],
    path: &str,
    token: &str,
    key: &str,
    body: Value,
    served: StatusCode,
) -> Answer<T> {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let client = reqwest::Client::new();
    for attempt in 0.. {
        let base = &nodes.bases()[through[attempt % through.len()]];
        let sent = client
            .post(format!("{base}/api/v1{path}"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Ok(answer) = sent
            && answer.status() != StatusCode::SERVICE_UNAVAILABLE
        {
            let status = answer.status();
            let body = answer.json().await.unwrap_or(Value::Null);
            return answer_of(path, status, body, served);
        }
        assert!(Instant::now() < deadline, "{path} was not served in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

/// Polls order `id` through `node` until its status is `status`, up to `within`.
async fn until_status(app: &TestApp, token: &str, id: Uuid, status: OrderStatus, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let order = app.order_of(token, id).await;
        if order.as_ref().is_ok_and(|o| o.status == status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} never became {status:?}: {order:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An order's whole life through nodes that do not own it: its items are in shards of
/// two other nodes, it is placed through the third, read, paid (its key honoured through
/// another node), shipped and delivered through the others; a single-shard order is
/// cancelled, a paid one returned by an operator, and an unpaid one expires with its
/// stock freed.
#[tokio::test]
async fn an_order_is_placed_paid_shipped_cancelled_and_expired_through_any_node() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nodes, p, warehouse) =
        a_product_per_node(&[("STOCKLINE_PAYMENT_TIMEOUT_SECS", "3")], UNITS).await;
    let (customer_id, customer) = nodes.app(0).customer("buyer@stockline.test").await;
    let (_, stranger) = nodes.app(1).customer("stranger@stockline.test").await;
    let operator = nodes.app(2).operator("orders-op@stockline.test").await;

    // Two units of node 0's product and one of node 1's, through node 2.
    let order = place(nodes.app(2), &customer, &[(p[0], 2), (p[1], 1)]).await;
    let id = order.id;
    assert_eq!(
        (order.user_id, order.total_cents, order.items.len()),
        (customer_id, 300, 2),
        "{order:?}"
    );
    assert!(
        order
            .items
            .iter()
            .all(|item| item.warehouse_id == warehouse),
        "{order:?}"
    );
    assert_eq!(levels(&nodes, 1, p[0]).await, (UNITS, 2));
    assert_eq!(levels(&nodes, 0, p[1]).await, (UNITS, 1));
    let read = nodes.app(1).order_of(&customer, id).await.unwrap();
    assert_eq!(read.id, id);
    assert_eq!(
        read.shipping_address,
        Some(json!({ "city": "Oslo" })),
        "{read:?}"
    );
    // Read through the owners of its lines, nothing of it waits for receipts.
    // Read as the wire has it: `backordered` is left out, not sent as 0.
    for node in [0, 1] {
        let (status, read) = nodes
            .app(node)
            .get(&format!("/orders/{id}"), &customer)
            .await;
        assert_eq!(status, StatusCode::OK, "{read}");
        let items = read["items"].as_array().unwrap();
        assert!(
            items.iter().all(|i| i.get("backordered").is_none()),
            "{read}"
        );
    }
    let unseen = nodes.app(1).order_of(&stranger, id).await;
    assert_eq!(
        unseen.refused(StatusCode::NOT_FOUND).code,
        "not_found",
        "another customer's order is not seen"
    );

    // Paid through node 1, the wrong amount refused first; the same key through node 2
    // answers the same payment, taken once.
    let refused = pay(nodes.app(1), &customer, id, 299).await;
    assert_eq!(
        refused.refused(StatusCode::UNPROCESSABLE_ENTITY).code,
        "validation_failed"
    );
    let full = json!({ "method": "card", "amount_cents": 300 });
    let key = uuid::Uuid::now_v7().to_string();
    let mut paid = Vec::new();
    for node in [1, 2] {
        let answer: Order = until_served(
            &nodes,
            &[node],
            &format!("/orders/{id}/pay"),
            &customer,
            &key,
            full.clone(),
            StatusCode::OK,
        )
        .await
        .unwrap();
        assert_eq!(answer.status, OrderStatus::Paid, "{answer:?}");
        paid.push(answer.updated_at);
    }
    assert_eq!(paid[0], paid[1], "the retry answers the first payment");
    assert_eq!(levels(&nodes, 2, p[0]).await, (UNITS - 2, 0));
    assert_eq!(levels(&nodes, 2, p[1]).await, (UNITS - 1, 0));
    let payments: List<Value> = nodes
        .app(0)
        .call(
            Method::GET,
            &format!("/orders/{id}/payments"),
            &customer,
            None,
        )
        .await
        .unwrap();
    assert_eq!(payments.total, 1, "{payments:?}");

    // Shipped through node 2, delivered through node 1; a customer may not ship.
    let (status, _) = nodes
        .app(0)
        .patch(
            &format!("/orders/{id}/status"),
            &customer,
            json!({ "status": "shipped" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for (node, step) in [(2, OrderStatus::Shipped), (1, OrderStatus::Delivered)] {
        let answer: Order = nodes
            .app(node)
            .call(
                Method::PATCH,
                &format!("/orders/{id}/status"),
                &operator,
                Some(json!({ "status": step, "tracking_number": "TRACK-1" })),
            )
            .await
            .unwrap();
        assert_eq!(
            (answer.status, answer.tracking_number.as_deref()),
            (step, Some("TRACK-1")),
            "{answer:?}"
        );
    }
    let refused = nodes
        .app(0)
        .order_step(&customer, id, "cancel", json!({}))
        .await;
    assert_eq!(
        refused.refused(StatusCode::CONFLICT).code,
        "order_not_pending"
    );

    // An unpaid order in node 1's shard, cancelled by its customer through node 2.
    let single = place(nodes.app(0), &customer, &[(p[1], 4)]).await;
    assert_eq!(levels(&nodes, 0, p[1]).await, (UNITS - 1, 4));
    let cancelled = nodes
        .app(2)
        .order_step(&customer, single.id, "cancel", json!({}))
        .await
        .unwrap();
    assert_eq!(cancelled.status, OrderStatus::Cancelled, "{cancelled:?}");
    assert_eq!(levels(&nodes, 0, p[1]).await, (UNITS - 1, 0));

    // A paid order over nodes 2 and 0: its customer may not return it, an operator
    // does, and the units go back on hand where they left.
    let returned = place(nodes.app(0), &customer, &[(p[2], 1), (p[0], 1)]).await;
    pay(nodes.app(1), &customer, returned.id, 200)
        .await
        .unwrap();
    assert_eq!(levels(&nodes, 0, p[2]).await, (UNITS - 1, 0));
    let cancel = async |token: &str| {
        let app = nodes.app(1);
        app.order_step(token, returned.id, "cancel", json!({}))
            .await
    };
    cancel(&customer).await.refused(StatusCode::FORBIDDEN);
    let answer = cancel(&operator).await.unwrap();
    assert_eq!(answer.status, OrderStatus::Cancelled, "{answer:?}");
    assert_eq!(levels(&nodes, 1, p[2]).await, (UNITS, 0));
    assert_eq!(levels(&nodes, 1, p[0]).await, (UNITS - 2, 0));

    // An order over nodes 1 and 2 left unpaid expires after the 3 s timeout, whoever
    // holds its stock, and the stock is free again.
    let unpaid = place(nodes.app(2), &customer, &[(p[1], 3), (p[2], 1)]).await;
    assert_eq!(levels(&nodes, 0, p[1]).await, (UNITS - 1, 3));
    until_status(
        nodes.app(0),
        &customer,
        unpaid.id,
        OrderStatus::Expired,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(levels(&nodes, 0, p[1]).await, (UNITS - 1, 0));
    assert_eq!(levels(&nodes, 0, p[2]).await, (UNITS, 0));
    let refused = pay(nodes.app(1), &customer, unpaid.id, 400).await;
    assert_eq!(
        refused.refused(StatusCode::CONFLICT).code,
        "order_not_pending"
    );

    // Every node lists the same orders; the store has each in its last status.
    for node in 0..3 {
        let list = orders_of(nodes.app(node), &customer).await;
        assert_eq!(list.total, 4, "{list:?}");
    }
    let db = pool(&nodes.database).await;
    let mut stored: Vec<String> = sqlx::query_scalar("SELECT status FROM orders ORDER BY status")
        .fetch_all(&db)
        .await
        .unwrap();
    stored.sort();
    assert_eq!(stored, ["cancelled", "cancelled", "delivered", "expired"]);
    db.close().await;
    nodes.stop().await;
}

/// The owner of an order's shard is killed with kill -9 after the order was placed and
/// before it was paid: the node that takes the shard over has the order, its payment
/// through another node takes the stock once, and an unpaid order of the same owner
/// still expires with its stock freed.
#[tokio::test]
async fn an_order_whose_owner_is_killed_between_place_and_pay_is_paid_once_elsewhere() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut nodes, p, warehouse) =
        a_product_per_node(&[("STOCKLINE_PAYMENT_TIMEOUT_SECS", "15")], UNITS).await;
    let q0 = another_of(&nodes, 0, p[0], warehouse).await;
    let (_, customer) = nodes.app(1).customer("kill@stockline.test").await;
    // Owned by node 0 (its first item is node 0's), placed through node 1.
    let order = place(nodes.app(1), &customer, &[(p[0], 1), (p[1], 1)]).await;
    let id = order.id;
    // Over two shards of node 0, placed through node 0 itself: the two may move to two
    // different nodes.
    let local = place(nodes.app(0), &customer, &[(q0, 1), (p[0], 1)]).await;
    let unpaid = place(nodes.app(2), &customer, &[(p[0], 2)]).await;
    assert_eq!(levels(&nodes, 1, p[0]).await, (UNITS, 4));

    nodes.kill(0);
    let key = uuid::Uuid::now_v7().to_string();
    let paid: Order = until_served(
        &nodes,
        &[1, 2],
        &format!("/orders/{id}/pay"),
        &customer,
        &key,
        json!({ "method": "card", "amount_cents": 200 }),
        StatusCode::OK,
    )
    .await
    .unwrap();
    assert_eq!(paid.status, OrderStatus::Paid, "{paid:?}");
    nodes.wait_shared(&[1, 2], SETTLE_WITHIN).await;
    // Paid again with the same key through the other survivor: the same answer.
    let again: Order = until_served(
        &nodes,
        &[2],
        &format!("/orders/{id}/pay"),
        &customer,
        &key,
        json!({ "method": "card", "amount_cents": 200 }),
        StatusCode::OK,
    )
    .await
    .unwrap();
    assert_eq!(again.updated_at, paid.updated_at, "the same answer");
    let answer: Order = until_served(
        &nodes,
        &[2, 1],
        &format!("/orders/{}/pay", local.id),
        &customer,
        &Uuid::now_v7().to_string(),
        json!({ "method": "card", "amount_cents": 200 }),
        StatusCode::OK,
    )
    .await
    .unwrap();
    assert_eq!(answer.status, OrderStatus::Paid, "{answer:?}");
    assert_eq!(levels(&nodes, 2, q0).await, (UNITS - 1, 0));

    until_status(
        nodes.app(2),
        &customer,
        unpaid.id,
        OrderStatus::Expired,
        Duration::from_secs(40),
    )
    .await;
    assert_eq!(
        levels(&nodes, 1, p[0]).await,
        (UNITS - 2, 0),
        "sold once, nothing held"
    );
    assert_eq!(levels(&nodes, 2, p[1]).await, (UNITS - 1, 0));
    let db = pool(&nodes.database).await;
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE order_id = $1")
        .bind(id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(payments, 1, "paid once");
    let stored: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored, "paid");
    db.close().await;
    nodes.stop().await;
}

/// The owner of two unpaid orders is killed with kill -9 and their payment timeout runs
/// out before their shard is taken over: the new owner expires both, the one whose stock
/// it holds and the one whose stock is held over two shards, and frees their stock.
#[tokio::test]
async fn unpaid_orders_of_a_killed_owner_expire_on_the_node_that_takes_them_over() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut nodes, p, _) =
        a_product_per_node(&[("STOCKLINE_PAYMENT_TIMEOUT_SECS", "1")], UNITS).await;
    let (_, customer) = nodes.app(1).customer("expiry@stockline.test").await;
    let single = place(nodes.app(1), &customer, &[(p[0], 1)]).await;
    let spanning = place(nodes.app(2), &customer, &[(p[0], 2), (p[1], 1)]).await;
    nodes.kill(0);
    nodes.wait_shared(&[1, 2], SETTLE_WITHIN).await;
    for order in [&single, &spanning] {
        until_status(
            nodes.app(2),
            &customer,
            order.id,
            OrderStatus::Expired,
            Duration::from_secs(20),
        )
        .await;
    }
    assert_eq!(levels(&nodes, 1, p[0]).await, (UNITS, 0), "nothing held");
    assert_eq!(levels(&nodes, 2, p[1]).await, (UNITS, 0));
    nodes.stop().await;
}

/// What an owner answers over the shard protocol (its fields in order).
#[derive(serde::Deserialize)]
struct Answered {
    status: u16,
    body: Vec<u8>,
    #[allow(dead_code)]
    retry_after: Option<String>,
}

/// A paid order's units sent back to a line are returned once per order and line, however
/// often the return is asked (a cancel retried after its node died half-way, or whose
/// answer was lost): returns never make stock out of nothing.
#[tokio::test]
async fn a_return_of_a_cancelled_order_s_line_is_made_once_however_often_it_is_asked() {
    use stockline::cluster::routing::protocol;
    use stockline::inventory::Operation;
    let _one = ONE_AT_A_TIME.lock().await;
    let nodes = Nodes::start(1, LEASE).await;
    nodes.wait_shared(&[0], SETTLE_WITHIN).await;
    let (warehouse, product) = {
        let app = nodes.app(0);
        let product = app.product("returned", 100).await;
        let warehouse = app.warehouse("W", 1).await;
        app.stock(warehouse, product, 5).await;
        (warehouse, product)
    };
    let client = async_nats::connect("127.0.0.1:4222").await.unwrap();
    let subject = format!(
        "stockline.{}.shard.{}",
        nodes.cluster,
        stockline::cluster::shard_of(product)
    );
    let (first, second) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for order in [first, first, first, second] {
        let operation = Operation::Return {
            order,
            warehouse,
            product,
            quantity: 2,
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(protocol::OPERATION, protocol::VERSION.to_string().as_str());
        let reply = client
            .request_with_headers(
                subject.clone(),
                headers,
                protocol::encode(&operation).into(),
            )
            .await
            .unwrap();
        let answered: Answered = protocol::read_answer(&reply.payload).unwrap();
        let body: Value = serde_json::from_slice(&answered.body).unwrap();
        assert_eq!(answered.status, 200, "{body}");
        assert_eq!(body["returned"], 2);
    }
    let availability = nodes.app(0).availability(product).await;
    assert_eq!(
        availability.on_hand, 9,
        "two orders' returns, each once: {availability:?}"
    );
    nodes.stop().await;
}

/// An order placed under a key, its stock on two other nodes, whose kept answer is lost
/// (as when its owner dies between writing the order and writing the answer; the test
/// deletes the answer and kills the owner): the retry through another node finds the
/// same order, and its stock is held once.
#[tokio::test]
async fn an_order_retried_after_its_answer_was_lost_is_the_same_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut nodes, p, _) = a_product_per_node(&[], UNITS).await;
    let (_, customer) = nodes.app(0).customer("retry@stockline.test").await;
    let key = uuid::Uuid::now_v7().to_string();
    let body = order_of(&[(p[1], 1), (p[2], 1)]);
    let first: Order = until_served(
        &nodes,
        &[0],
        "/orders",
        &customer,
        &key,
        body.clone(),
        StatusCode::CREATED,
    )
    .await
    .unwrap();
    nodes.kill(1);
    let db = pool(&nodes.database).await;
    sqlx::query("DELETE FROM idempotency_keys WHERE key = $1")
        .bind(&key)
        .execute(&db)
        .await
        .unwrap();
    let again: Order = until_served(
        &nodes,
        &[0, 2],
        "/orders",
        &customer,
        &key,
        body,
        StatusCode::CREATED,
    )
    .await
    .unwrap();
    assert_eq!(again.id, first.id, "the same order");
    nodes.wait_shared(&[0, 2], SETTLE_WITHIN).await;
    assert_eq!(levels(&nodes, 0, p[1]).await, (UNITS, 1), "held once");
    assert_eq!(levels(&nodes, 0, p[2]).await, (UNITS, 1));
    let list = orders_of(nodes.app(2), &customer).await;
    assert_eq!(list.total, 1, "{list:?}");
    db.close().await;
    nodes.stop().await;
}
