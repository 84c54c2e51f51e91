//! Carts over HTTP: the life cycle, held carts racing for the last units, checkout racing a
//! direct order, and a hold that runs out while the server is down.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::api::{Answer, Cart, CartStatus, List, Order, OrderStatus, Refused};
use testkit::carts::{cart, carts_of, checkout, items_of, remove_item, set_item};
use testkit::*;
use uuid::Uuid;

#[tokio::test]
async fn a_cart_is_filled_priced_when_filled_checked_out_and_then_closed() {
    let app = TestApp::spawn().await;
    let (p1, warehouse) = app.stocked_product(10).await;
    let p2 = app.product("Q", 250).await;
    app.stock(warehouse, p2, 1).await;
    let (_, jo) = app.customer("jo@example.com").await;
    let (_, al) = app.customer("al@example.com").await;
    let id = cart(&app, &jo, json!({})).await;

    set_item(&app, &jo, id, p1, 3).await.unwrap();
    set_item(&app, &jo, id, p2, 1).await.unwrap();
    // The price is the one when the item was put in; a later change does not reach it.
    app.send(
        reqwest::Method::PATCH,
        &format!("/products/{p1}"),
        Some(&app.admin),
        Some(json!({ "price_cents": 999 })),
    )
    .await;
    let filled = set_item(&app, &jo, id, p1, 4).await.unwrap();
    assert_eq!(items_of(&filled), vec![(p1, 4), (p2, 1)]);
    assert_eq!(filled.items[0].unit_price_cents, 100);
    assert_eq!(filled.total_cents, 4 * 100 + 250);
    assert_eq!(filled.items[0].available, 10, "not held: nothing reserved");
    assert!(!filled.hold);

    // Another customer sees nothing of it.
    app.cart_of(&al, id).await.refused(StatusCode::NOT_FOUND);
    let theirs = set_item(&app, &al, id, p1, 1).await;
    theirs.refused(StatusCode::NOT_FOUND);
    assert_eq!(carts_of(&app, &al, "").await.total, 0);

    let fewer = remove_item(&app, &jo, id, p2).await.unwrap();
    assert_eq!(items_of(&fewer), vec![(p1, 4)]);
    let unknown = set_item(&app, &jo, id, 987_654, 1).await;
    unknown.refused(StatusCode::NOT_FOUND);
    let negative = set_item(&app, &jo, id, p1, -1).await;
    assert_eq!(
        negative.refused(StatusCode::UNPROCESSABLE_ENTITY).code,
        "validation_failed"
    );

    let address = json!({ "shipping_address": { "city": "Oslo" } });
    let order = checkout(&app, &jo, id, address).await.unwrap();
    assert_eq!(order.status, OrderStatus::PendingPayment);
    assert_eq!(order.total_cents, 400, "the cart's price, not today's");
    assert_eq!(app.availability(p1).await.reserved, 4);
    let closed = app.cart_of(&jo, id).await.unwrap();
    assert_eq!(
        (closed.status, closed.order_id),
        (CartStatus::CheckedOut, Some(order.id))
    );
    let refusal = set_item(&app, &jo, id, p1, 1)
        .await
        .refused(StatusCode::CONFLICT);
    assert_eq!(refusal.code, "conflict");
    checkout(&app, &jo, id, json!({}))
        .await
        .refused(StatusCode::CONFLICT);
    let pay = json!({ "method": "card", "amount_cents": 400 });
    let paid = app.order_step(&jo, order.id, "pay", pay).await.unwrap();
    assert_eq!(paid.status, OrderStatus::Paid);

    // An empty cart cannot be checked out; a refused checkout leaves the cart as it was.
    let empty = cart(&app, &jo, json!({})).await;
    let refused = checkout(&app, &jo, empty, json!({})).await;
    refused.refused(StatusCode::UNPROCESSABLE_ENTITY);
    set_item(&app, &jo, empty, p1, 7).await.unwrap();
    let refused = checkout(&app, &jo, empty, json!({})).await;
    assert_eq!(
        refused.refused(StatusCode::CONFLICT).code,
        "insufficient_stock",
        "6 left"
    );
    let kept = app.cart_of(&jo, empty).await.unwrap();
    assert_eq!(
        (kept.status, items_of(&kept)),
        (CartStatus::Open, vec![(p1, 7)])
    );
    let (status, _) = app.delete(&format!("/carts/{empty}"), &jo).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.get(&format!("/carts/{empty}"), &jo).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.cleanup().await;
}

#[tokio::test]
async fn a_held_cart_holds_every_change_all_or_nothing_and_checks_out_what_it_held() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(5).await;
    let (_, jo) = app.customer("jo@example.com").await;
    let id = cart(&app, &jo, json!({ "hold": true })).await;
    let held = set_item(&app, &jo, id, product, 3).await.unwrap();
    assert!(held.hold && held.hold_expires_at.is_some(), "{held:?}");
    assert_eq!(held.items[0].available, 2, "3 of 5 held");
    let refusal = set_item(&app, &jo, id, product, 6)
        .await
        .refused(StatusCode::CONFLICT);
    assert_eq!(refusal.code, "insufficient_stock");
    let kept = app.cart_of(&jo, id).await.unwrap();
    assert_eq!(items_of(&kept), vec![(product, 3)], "as it was");
    assert_eq!(app.availability(product).await.reserved, 3);
    set_item(&app, &jo, id, product, 1).await.unwrap();
    assert_eq!(app.availability(product).await.reserved, 1);
    set_item(&app, &jo, id, product, 5).await.unwrap();
    assert_eq!(app.availability(product).await.reserved, 5);

    let order = checkout(&app, &jo, id, json!({})).await.unwrap();
    assert_eq!(order.items[0].quantity, 5);
    assert_eq!(
        app.availability(product).await.reserved,
        5,
        "the cart's hold became the order's: still 5, not 10"
    );
    let reservation = app.reservation(order.reservation_id).await.unwrap();
    assert_eq!(reservation.reference, Some(format!("order:{}", order.id)));
    app.order_step(&jo, order.id, "cancel", json!({}))
        .await
        .unwrap();
    assert_eq!(app.availability(product).await.reserved, 0);

    // Emptying a held cart ends its hold.
    let emptied = cart(&app, &jo, json!({ "hold": true })).await;
    set_item(&app, &jo, emptied, product, 2).await.unwrap();
    let ended = set_item(&app, &jo, emptied, product, 0).await.unwrap();
    assert!(ended.hold_expires_at.is_none(), "{ended:?}");
    assert_eq!(app.availability(product).await.reserved, 0);
    // Deleting a held cart lets its stock go.
    let other = cart(&app, &jo, json!({ "hold": true })).await;
    set_item(&app, &jo, other, product, 2).await.unwrap();
    assert_eq!(app.availability(product).await.reserved, 2);
    app.delete(&format!("/carts/{other}"), &jo).await;
    assert_eq!(app.availability(product).await.reserved, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_carts_racing_for_the_last_units_hold_exactly_the_stock_and_the_loser_keeps_its_cart()
{
    let app = Arc::new(TestApp::spawn().await);
    let (product, _) = app.stocked_product(9).await;
    let mut buyers = Vec::new();
    for n in 0..4 {
        let (_, token) = app.customer(&format!("buyer{n}@example.com")).await;
        let id = cart(&app, &token, json!({ "hold": true })).await;
        set_item(&app, &token, id, product, 1).await.unwrap();
        buyers.push((token, id));
    }
    // 4 held, 5 free; each tries to grow to 4 (needs 3 more): exactly one can.
    let tasks: Vec<_> = buyers
        .iter()
        .cloned()
        .map(|(token, id)| {
            let app = app.clone();
            tokio::spawn(async move { set_item(&app, &token, id, product, 4).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let winners = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(winners, 1, "{outcomes:?}");
    for refusal in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert_eq!(refusal.code_at(StatusCode::CONFLICT), "insufficient_stock");
    }
    let mut held = 0;
    for (token, id) in &buyers {
        held += app.cart_of(token, *id).await.unwrap().items[0].quantity;
    }
    assert_eq!(held, 4 + 3, "the losers keep their 1");
    let availability = app.availability(product).await;
    assert_eq!(availability.reserved, 7);
    // And the free 2 go to whoever asks; then a held cart's stock is safe from a direct order.
    let (token, id) = &buyers[outcomes.iter().position(|o| o.is_err()).unwrap()];
    set_item(&app, token, *id, product, 3).await.unwrap();
    assert_eq!(app.availability(product).await.available, 0);
    Arc::try_unwrap(app).ok().unwrap().cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkout_of_a_held_cart_racing_direct_orders_never_loses_its_stock() {
    let app = Arc::new(TestApp::spawn().await);
    let (product, _) = app.stocked_product(3).await;
    let (_, jo) = app.customer("jo@example.com").await;
    let (_, al) = app.customer("al@example.com").await;
    for round in 0..5 {
        let id = cart(&app, &jo, json!({ "hold": true })).await;
        set_item(&app, &jo, id, product, 3).await.unwrap();
        let direct: Vec<_> = (0..6)
            .map(|_| {
                let (app, al) = (app.clone(), al.clone());
                tokio::spawn(async move {
                    let one = json!({ "items": [{ "product_id": product, "quantity": 1 }] });
                    app.place_order(&al, one).await
                })
            })
            .collect();
        let order = checkout(&app, &jo, id, json!({})).await.unwrap();
        for task in direct {
            let refused = task.await.unwrap();
            assert_eq!(
                refused.refused(StatusCode::CONFLICT).code,
                "insufficient_stock",
                "round {round}: the cart held all 3"
            );
        }
        app.order_step(&jo, order.id, "cancel", json!({}))
            .await
            .unwrap();
    }
    Arc::try_unwrap(app).ok().unwrap().cleanup().await;
}

#[tokio::test]
async fn a_hold_that_runs_out_while_the_server_is_down_releases_its_stock_once() {
    let app = TestApp::spawn_with(&["--cart-hold-secs", "2"]).await;
    let (product, warehouse) = app.stocked_product(5).await;
    let (_, jo) = app.customer("jo@example.com").await;
    let id = cart(&app, &jo, json!({ "hold": true })).await;
    set_item(&app, &jo, id, product, 4).await.unwrap();
    assert_eq!(app.availability(product).await.reserved, 4);
    let mut app = app;
    app.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let app = TestApp::start_on(&app.database).await;
    let availability = app.availability(product).await;
    assert_eq!((availability.reserved, availability.available), (0, 5));
    let unheld = app.cart_of(&jo, id).await.unwrap();
    assert_eq!(
        (unheld.status, items_of(&unheld)),
        (CartStatus::Open, vec![(product, 4)]),
        "the cart stays, unheld"
    );
    assert!(unheld.hold_expires_at.unwrap() < chrono::Utc::now());
    // Exactly one expiry on the line, whatever restarts happened.
    let app = app.restart().await;
    let expired = app
        .movements(&format!("kind=expire&warehouse_id={warehouse}"))
        .await;
    assert_eq!(expired.total, 1, "{expired:?}");
    // A change holds again, with a new reservation.
    set_item(&app, &jo, id, product, 2).await.unwrap();
    assert_eq!(app.availability(product).await.reserved, 2);
    app.cleanup().await;
}

#[tokio::test]
async fn a_customer_has_at_most_twenty_open_carts() {
    let app = TestApp::spawn().await;
    let (_, jo) = app.customer("jo@example.com").await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(cart(&app, &jo, json!({})).await);
    }
    let refused: Answer<Cart> = app.create("/carts", &jo, json!({})).await;
    let refusal = refused.refused(StatusCode::CONFLICT);
    assert_eq!(
        (refusal.code.as_str(), &refusal.details["open_carts"]),
        ("conflict", &json!(20))
    );
    app.delete(&format!("/carts/{}", ids[0]), &jo).await;
    cart(&app, &jo, json!({})).await; // one was deleted
    let page = carts_of(&app, &jo, "limit=5").await;
    assert_eq!((page.total, page.items.len()), (20, 5));
    app.cleanup().await;
}

/// The reproduction, as the real binary: 36 held carts, 16 checkouts at a time,
/// writes to `carts` held on a lock (as a slow statement would be), kill -9 after 150 ms,
/// a restart, and every cart checked out again. Before carts were journaled, the order was
/// stored without its cart's mark, and the second checkout made a second order (51 orders
/// for 36 carts, each extra one holding stock of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_concurrent_checkouts_never_makes_a_second_order_for_a_cart() {
    let database = fresh_database();
    let (mut child, app) = start_binary_app(&database).await;
    let (product, _) = app.stocked_product(1_000).await;
    let mut carts = Vec::new();
    for customer in ["ka@example.com", "kb@example.com"] {
        let (_, token) = app.customer(customer).await;
        for _ in 0..18 {
            let id = cart(&app, &token, json!({ "hold": true })).await;
            set_item(&app, &token, id, product, 2).await.unwrap();
            carts.push((token.clone(), id));
        }
    }
    assert_eq!(app.availability(product).await.reserved, 72);

    let db = sqlx::PgPool::connect(&database_url(&database))
        .await
        .unwrap();
    let mut blocker = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE carts IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let app = Arc::new(app);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(16));
    let mut checkouts = tokio::task::JoinSet::new();
    for (token, id) in carts.clone() {
        let (app, semaphore) = (app.clone(), semaphore.clone());
        checkouts.spawn(async move {
            let _slot = semaphore.acquire().await.unwrap();
            // The server dies under it: a refused or cut connection is no answer.
            let url = format!("{}/api/v1/carts/{id}/checkout", app.base);
            let sent = app
                .client
                .post(url)
                .bearer_auth(&token)
                .json(&json!({}))
                .send();
            let response = tokio::time::timeout(Duration::from_secs(5), sent)
                .await
                .ok()?
                .ok()?;
            if response.status() != StatusCode::CREATED {
                return None;
            }
            let order: Order = response.json().await.ok()?;
            Some((id, order.id))
        });
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let mut acknowledged = Vec::new();
    while let Some(outcome) = checkouts.join_next().await {
        acknowledged.extend(outcome.unwrap());
    }
    blocker.rollback().await.unwrap();

    let (mut child, url) = start_binary(&database, &ADMIN_ENV);
    let app = TestApp::attach(&url, &database).await;
    for (token, id) in &carts {
        if let Err(refusal) = checkout(&app, token, *id, json!({})).await {
            assert_eq!(
                (
                    refusal.code_at(StatusCode::CONFLICT),
                    &refusal.details["status"]
                ),
                ("conflict", &json!("checked_out")),
                "{refusal:?}"
            );
        }
    }
    let orders: List<Order> = app
        .call(Method::GET, "/orders?limit=500", &app.admin, None)
        .await
        .unwrap();
    assert_eq!(orders.total, 36, "one order per cart");
    let units: u64 = orders
        .items
        .iter()
        .flat_map(|o| &o.items)
        .map(|i| i.quantity)
        .sum();
    assert_eq!(units, 72);
    assert_eq!(
        app.availability(product).await.reserved,
        72,
        "reserved is the orders' units, nothing held twice"
    );
    for (token, id) in &carts {
        let cart = app.cart_of(token, *id).await.unwrap();
        assert_eq!(cart.status, CartStatus::CheckedOut, "{cart:?}");
        if let Some((_, order)) = acknowledged.iter().find(|(cart_id, _)| cart_id == id) {
            assert_eq!(
                cart.order_id,
                Some(*order),
                "an acknowledged checkout stays"
            );
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    db.close().await;
    drop_database(&database).await;
}

/// Carts live in memory and reach the store behind: in `async` mode a list right after
/// the changes shows them as they are (nothing read back stale from the store), and a
/// restart finds the same carts, a deleted one gone.
#[tokio::test]
async fn carts_read_as_changed_in_async_mode_and_after_a_restart() {
    let app = TestApp::spawn_with(&["--durability", "async"]).await;
    let (product, _) = app.stocked_product(10).await;
    let (_, token) = app.customer("as@example.com").await;
    let kept = cart(&app, &token, json!({ "hold": true })).await;
    let gone = cart(&app, &token, json!({})).await;
    set_item(&app, &token, kept, product, 3).await.unwrap();
    let (status, _) = app.delete(&format!("/carts/{gone}"), &token).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let shown = |list: &List<Cart>| -> Vec<(Uuid, Vec<(i64, u64)>)> {
        list.items.iter().map(|c| (c.id, items_of(c))).collect()
    };
    let list = carts_of(&app, &token, "").await;
    assert_eq!(shown(&list), vec![(kept, vec![(product, 3)])]);
    assert_eq!(list.total, 1);
    app.cart_of(&token, gone)
        .await
        .refused(StatusCode::NOT_FOUND);
    let app = app.restart().await;
    let list = carts_of(&app, &token, "").await;
    assert_eq!(shown(&list), vec![(kept, vec![(product, 3)])]);
    assert_eq!(app.availability(product).await.reserved, 3);
    app.cart_of(&token, gone)
        .await
        .refused(StatusCode::NOT_FOUND);
    app.cleanup().await;
}
