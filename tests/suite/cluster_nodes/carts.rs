//! Carts in cluster mode: a customer's carts are served by the owner of the customer's
//! shard, whichever node a request reaches; a held cart's items, in shards of different
//! nodes, are held there and handed to the order at checkout; and a cart whose owner is
//! killed with kill -9 in the middle of its checkout becomes one order, its stock held
//! once.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use super::orders::{levels, until_served};
use super::{ONE_AT_A_TIME, SETTLE_WITHIN, a_product_per_node, pool};
use testkit::TestApp;
use testkit::api::{Answer, CartStatus, Order, OrderStatus, Refused, Reservation};
use testkit::carts::{cart, carts_of, items_of, remove_item, set_item};
use testkit::cluster::Nodes;

/// Units each product starts with.
const UNITS: i64 = 1_000;

/// A customer whose carts node `owner` serves: (id, token).
async fn customer_of(nodes: &Nodes, owner: usize, name: &str) -> (i64, String) {
    for i in 0.. {
        let (id, token) = nodes
            .app(0)
            .customer(&format!("{name}-{i}@stockline.test"))
            .await;
        // A customer's carts live in the shard its id hashes to, as a product's would.
        if nodes.owner_of(id, 0).await == owner {
            return (id, token);
        }
    }
    unreachable!()
}

async fn new_cart(app: &TestApp, token: &str, hold: bool) -> Uuid {
    cart(app, token, json!({ "hold": hold })).await
}

/// A held cart's whole life through nodes that do not serve it: filled with products of
/// all three nodes, each change held where the stock is, a change that cannot be held
/// refused with the cart as it was, read and listed alike through every node, checked out
/// under a key (the retry through another node answers the same order, nothing held
/// twice) and paid; a cart without a hold checks out by holding afresh; a deleted held
/// cart lets its stock go.
#[tokio::test]
async fn a_held_cart_is_filled_changed_and_checked_out_through_any_node() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nodes, p, warehouse) = a_product_per_node(&[], UNITS).await;
    let (customer_id, customer) = customer_of(&nodes, 0, "cart").await;
    let (_, stranger) = nodes.app(1).customer("cart-stranger@stockline.test").await;

    // Created through node 1; served by node 0.
    let id = new_cart(nodes.app(1), &customer, true).await;
    for (node, product, units) in [(1, p[0], 2), (2, p[1], 1), (0, p[2], 3)] {
        set_item(nodes.app(node), &customer, id, product, units)
            .await
            .unwrap();
    }
    assert_eq!(levels(&nodes, 2, p[0]).await, (UNITS, 2));
    assert_eq!(levels(&nodes, 0, p[1]).await, (UNITS, 1));
    assert_eq!(levels(&nodes, 1, p[2]).await, (UNITS, 3));
    // Grown in one shard, emptied in another: only that shard's hold moves.
    set_item(nodes.app(2), &customer, id, p[0], 5)
        .await
        .unwrap();
    remove_item(nodes.app(1), &customer, id, p[2])
        .await
        .unwrap();
    assert_eq!(levels(&nodes, 1, p[0]).await, (UNITS, 5));
    assert_eq!(levels(&nodes, 1, p[2]).await, (UNITS, 0));
    // More than there is: refused, nothing changed.
    let refused = set_item(nodes.app(1), &customer, id, p[1], UNITS + 1).await;
    assert_eq!(
        refused.refused(StatusCode::CONFLICT).code,
        "insufficient_stock"
    );
    assert_eq!(levels(&nodes, 2, p[1]).await, (UNITS, 1));
    let mut expected = vec![(p[0], 5), (p[1], 1)];
    expected.sort();
    for node in 0..3 {
        let cart = nodes.app(node).cart_of(&customer, id).await.unwrap();
        assert_eq!(items_of(&cart), expected, "{cart:?}");
        assert_eq!(cart.total_cents, 600, "{cart:?}");
        assert!(cart.hold_expires_at.is_some(), "{cart:?}");
        let list = carts_of(nodes.app(node), &customer, "").await;
        assert_eq!(list.total, 1, "{list:?}");
    }
    let unseen = nodes.app(2).cart_of(&stranger, id).await;
    assert_eq!(
        unseen.refused(StatusCode::NOT_FOUND).code,
        "not_found",
        "another customer's cart is not seen"
    );

    // Part of p[0]'s hold released behind the cart's back (by an operator): the checkout
    // hands over what the cart says, not what the part was left with.
    let operator = nodes.app(0).operator("cart-op@stockline.test").await;
    let db = pool(&nodes.database).await;
    let part: uuid::Uuid = sqlx::query_scalar(
        "SELECT r.id FROM reservations r JOIN reservation_items i ON i.reservation_id = r.id
         WHERE r.reference = $1 AND r.status = 'pending' AND i.product_id = $2",
    )
    .bind(format!("cart:{id}"))
    .bind(p[0])
    .fetch_one(&db)
    .await
    .unwrap();
    let partly: Reservation = nodes
        .app(1)
        .call(
            Method::POST,
            &format!("/reservations/{part}/release"),
            &operator,
            Some(json!({ "items": [{ "product_id": p[0], "warehouse_id": warehouse, "quantity": 2 }] })),
        )
        .await
        .unwrap();
    assert_eq!(partly.status, "pending", "{partly:?}");
    assert_eq!(levels(&nodes, 1, p[0]).await, (UNITS, 3));

    // Checked out through node 2 under a key, retried through node 1: one order, its
    // stock the cart's hold (held once).
    let key = uuid::Uuid::now_v7().to_string();
    let checkout = format!("/carts/{id}/checkout");
    let body = json!({ "shipping_address": { "city": "Bergen" } });
    let mut orders = Vec::new();
    for node in [2, 1] {
        let order: Order = until_served(
            &nodes,
            &[node],
            &checkout,
            &customer,
            &key,
            body.clone(),
            StatusCode::CREATED,
        )
        .await
        .unwrap();
        orders.push(order);
    }
    let order = &orders[0];
    assert_eq!(orders[1].id, order.id, "the retry answers the same order");
    assert_eq!(
        (order.status, order.total_cents, order.user_id),
        (OrderStatus::PendingPayment, 600, customer_id),
        "{order:?}"
    );
    assert_eq!(order.shipping_address, Some(json!({ "city": "Bergen" })));
    let units: u64 = order.items.iter().map(|i| i.quantity).sum();
    assert_eq!(units, 6, "{order:?}");
    assert_eq!(levels(&nodes, 0, p[0]).await, (UNITS, 5));
    assert_eq!(levels(&nodes, 0, p[1]).await, (UNITS, 1));
    let cart = nodes.app(0).cart_of(&customer, id).await.unwrap();
    assert_eq!(
        (cart.status, cart.order_id),
        (CartStatus::CheckedOut, Some(order.id)),
        "{cart:?}"
    );
    let refused = set_item(nodes.app(1), &customer, id, p[0], 1).await;
    assert_eq!(refused.refused(StatusCode::CONFLICT).code, "conflict");
    let pay = json!({ "method": "card", "amount_cents": 600 });
    let paid = nodes
        .app(1)
        .order_step(&customer, order.id, "pay", pay)
        .await
        .unwrap();
    assert_eq!(paid.status, OrderStatus::Paid, "{paid:?}");
    assert_eq!(levels(&nodes, 2, p[0]).await, (UNITS - 5, 0));
    assert_eq!(levels(&nodes, 2, p[1]).await, (UNITS - 1, 0));

    // Without a hold: nothing is held until checkout, which holds afresh.
    let plain = new_cart(nodes.app(2), &customer, false).await;
    set_item(nodes.app(0), &customer, plain, p[2], 2)
        .await
        .unwrap();
    assert_eq!(levels(&nodes, 0, p[2]).await, (UNITS, 0));
    testkit::carts::checkout(nodes.app(1), &customer, plain, json!({}))
        .await
        .unwrap();
    assert_eq!(levels(&nodes, 0, p[2]).await, (UNITS, 2));

    // A deleted held cart lets its stock go.
    let gone = new_cart(nodes.app(0), &customer, true).await;
    set_item(nodes.app(1), &customer, gone, p[1], 4)
        .await
        .unwrap();
    assert_eq!(levels(&nodes, 0, p[1]).await, (UNITS - 1, 4));
    let (status, _) = nodes
        .app(2)
        .delete(&format!("/carts/{gone}"), &customer)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(levels(&nodes, 0, p[1]).await, (UNITS - 1, 0));
    let gone = nodes.app(1).cart_of(&customer, gone).await;
    gone.refused(StatusCode::NOT_FOUND);

    let stored: Vec<String> =
        sqlx::query_scalar("SELECT status FROM carts WHERE user_id = $1 ORDER BY created_at")
            .bind(customer_id)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(stored, ["checked_out", "checked_out", "deleted"]);
    db.close().await;
    nodes.stop().await;
}

/// The node serving a held cart is killed with kill -9 in the middle of its checkout
/// (while the owner of one of the cart's products is paused, so the checkout waits on it):
/// the checkout retried with its key through the survivors makes exactly one order for
/// the cart, the cart is checked out with it, its stock is held once and then sold once,
/// and nothing stays held.
#[tokio::test]
async fn a_cart_whose_owner_is_killed_mid_checkout_becomes_one_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut nodes, p, _) = a_product_per_node(&[], UNITS).await;
    let (customer_id, customer) = customer_of(&nodes, 0, "kill-cart").await;
    let id = new_cart(nodes.app(1), &customer, true).await;
    for (product, units) in [(p[0], 2), (p[1], 1)] {
        set_item(nodes.app(2), &customer, id, product, units)
            .await
            .unwrap();
    }
    assert_eq!(levels(&nodes, 2, p[0]).await, (UNITS, 2));

    // Node 1 (p[1]'s owner) paused: node 0's checkout waits on it, and dies waiting.
    let key = uuid::Uuid::now_v7().to_string();
    let checkout = format!("/carts/{id}/checkout");
    nodes.signal(1, libc::SIGSTOP);
    let first = {
        let client = reqwest::Client::new();
        let url = format!("{}/api/v1{checkout}", nodes.bases()[2]);
        let (token, key) = (customer.clone(), key.clone());
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .header("Idempotency-Key", key)
                .json(&json!({}))
                .timeout(Duration::from_secs(20))
                .send()
                .await
                .map(|answer| answer.status())
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    nodes.kill(0);
    nodes.signal(1, libc::SIGCONT);
    let first = first.await.unwrap();
    assert!(
        !matches!(first, Ok(StatusCode::CREATED)),
        "the first try could not finish: it waited on the paused node when its node died"
    );
    let order: Answer<Order> = until_served(
        &nodes,
        &[1, 2],
        &checkout,
        &customer,
        &key,
        json!({}),
        StatusCode::CREATED,
    )
    .await;
    let order_id = order
        .unwrap_or_else(|refusal| panic!("{refusal:?} (first try: {first:?})"))
        .id;
    nodes.wait_shared(&[1, 2], SETTLE_WITHIN).await;
    let again: Order = until_served(
        &nodes,
        &[2, 1],
        &checkout,
        &customer,
        &key,
        json!({}),
        StatusCode::CREATED,
    )
    .await
    .unwrap();
    assert_eq!(again.id, order_id, "the same order");
    assert_eq!(levels(&nodes, 1, p[0]).await, (UNITS, 2), "held once");
    assert_eq!(levels(&nodes, 2, p[1]).await, (UNITS, 1), "held once");
    let cart = nodes.app(1).cart_of(&customer, id).await.unwrap();
    assert_eq!(
        (cart.status, cart.order_id),
        (CartStatus::CheckedOut, Some(order_id)),
        "{cart:?}"
    );
    let paid: Order = until_served(
        &nodes,
        &[2, 1],
        &format!("/orders/{order_id}/pay"),
        &customer,
        &Uuid::now_v7().to_string(),
        json!({ "method": "card", "amount_cents": 300 }),
        StatusCode::OK,
    )
    .await
    .unwrap();
    assert_eq!(paid.status, OrderStatus::Paid, "{paid:?}");
    assert_eq!(levels(&nodes, 1, p[0]).await, (UNITS - 2, 0), "sold once");
    assert_eq!(levels(&nodes, 2, p[1]).await, (UNITS - 1, 0), "sold once");
    let db = pool(&nodes.database).await;
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE user_id = $1")
        .bind(customer_id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(orders, 1, "one order for the cart");
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reservations r JOIN reservation_items i ON i.reservation_id = r.id
         WHERE r.status = 'pending' AND i.product_id = ANY($1)",
    )
    .bind([p[0], p[1]])
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(held, 0, "nothing left held");
    db.close().await;
    nodes.stop().await;
}

/// Polls until `product`'s reserved units, as node `node` answers, are `reserved`.
async fn until_reserved(nodes: &Nodes, node: usize, product: i64, reserved: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while levels(nodes, node, product).await.1 != reserved {
        assert!(
            std::time::Instant::now() < deadline,
            "product {product} never had {reserved} reserved"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A held cart left alone past its hold (2 s here): every node that held a part lets its
/// stock go, the cart keeps its items, and its next change holds them all again, once.
#[tokio::test]
async fn a_held_cart_whose_hold_ran_out_holds_everything_again_at_its_next_change() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nodes, p, _) = a_product_per_node(&[("STOCKLINE_CART_HOLD_SECS", "2")], UNITS).await;
    let (_, customer) = nodes.app(2).customer("lapse@stockline.test").await;
    let id = new_cart(nodes.app(1), &customer, true).await;
    for (product, units) in [(p[0], 2), (p[1], 1)] {
        set_item(nodes.app(0), &customer, id, product, units)
            .await
            .unwrap();
    }
    assert_eq!(levels(&nodes, 2, p[0]).await, (UNITS, 2));
    until_reserved(&nodes, 2, p[0], 0).await;
    until_reserved(&nodes, 2, p[1], 0).await;
    let cart = nodes.app(2).cart_of(&customer, id).await.unwrap();
    assert_eq!(cart.items.len(), 2, "{cart:?}");
    assert!(
        cart.hold_expires_at.unwrap() < chrono::Utc::now(),
        "{cart:?}"
    );

    set_item(nodes.app(1), &customer, id, p[2], 1)
        .await
        .unwrap();
    for (product, units) in [(p[0], 2), (p[1], 1), (p[2], 1)] {
        assert_eq!(levels(&nodes, 0, product).await, (UNITS, units));
    }
    nodes.stop().await;
}
