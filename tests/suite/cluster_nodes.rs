//! Cluster mode end to end: three (or four) real `stockline` processes over one
//! PostgreSQL database and the NATS server on loopback, each taking any request.
//!
//! What a shop would notice: every node sells from the same stock and never more than
//! there is; a node killed under load costs its shards' clients a few seconds of 503s,
//! never an acknowledged change, and a retry with the same `Idempotency-Key` lands once; a
//! node paused past its lease (a zombie) writes nothing after another took over.

use testkit::browser;
mod carts;
mod events;
mod orders;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::api::{Answer, ClusterMode, List, Refused, Reservation, StockLine, answer_of};
use testkit::cluster::Nodes;
use tokio::sync::Mutex;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(2);

/// One cluster at a time: three nodes hold up to 54 of the database's 100 connections.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Waits at most this long for the shards to be shared out after nodes start or go.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

async fn pool(database: &str) -> PgPool {
    PgPool::connect(&testkit::database_url(database))
        .await
        .unwrap()
}

/// (on_hand, reserved) of a line, as stored.
async fn stored_line(db: &PgPool, warehouse: i64, product: i64) -> (i64, i64) {
    sqlx::query_as(
        "SELECT on_hand, reserved FROM stock_lines WHERE warehouse_id = $1 AND product_id = $2",
    )
    .bind(warehouse)
    .bind(product)
    .fetch_one(db)
    .await
    .unwrap()
}

/// A product in another shard than `product` (created through `node`).
async fn product_in_another_shard(nodes: &Nodes, node: usize, product: i64) -> i64 {
    let app = nodes.app(node);
    for i in 0.. {
        let other = app.product(&format!("other-{i}"), 100).await;
        if stockline::cluster::shard_of(other) != stockline::cluster::shard_of(product) {
            return other;
        }
    }
    unreachable!()
}

/// Three nodes with extra `settings` on each, the shards shared out, and one product
/// (price 100) owned by each node, stocked with `units` in one warehouse: (nodes,
/// products by owner, warehouse).
async fn a_product_per_node(settings: &[(&str, &str)], units: i64) -> (Nodes, Vec<i64>, i64) {
    let mut nodes = Nodes::start(0, LEASE).await;
    for _ in 0..3 {
        nodes.add_with(settings).await;
    }
    nodes.wait_shared(&[0, 1, 2], SETTLE_WITHIN).await;
    let warehouse = nodes.app(0).warehouse("W", 1).await;
    let mut products: Vec<Option<i64>> = vec![None; 3];
    for i in 0.. {
        let product = nodes.app(0).product(&format!("per-node-{i}"), 100).await;
        let owner = nodes.owner_of(product, 0).await;
        if products[owner].is_none() {
            nodes.app(0).stock(warehouse, product, units).await;
            products[owner] = Some(product);
        }
        if products.iter().all(Option::is_some) {
            break;
        }
    }
    (nodes, products.into_iter().flatten().collect(), warehouse)
}

/// `count` reservations of `body` sent at once, spread over the nodes: their answers.
async fn reserve_at_once(
    nodes: &Nodes,
    token: &str,
    count: usize,
    body: Value,
) -> Vec<Answer<Reservation>> {
    let bases = nodes.bases();
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..count {
        let (client, token, body) = (client.clone(), token.to_owned(), body.clone());
        let url = format!("{}/api/v1/reservations", bases[i % bases.len()]);
        tasks.push(tokio::spawn(async move {
            let answer = client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = answer.status();
            let body = answer.json().await.unwrap();
            answer_of("/reservations", status, body, StatusCode::CREATED)
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// How many answers had each status, and the ids of the reservations made (each served
/// with 201: [`answer_of`] asserted it).
fn tally(answers: &[Answer<Reservation>]) -> (BTreeMap<u16, usize>, Vec<Uuid>) {
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut made = Vec::new();
    for answer in answers {
        let status = match answer {
            Ok(made_one) => {
                made.push(made_one.id);
                StatusCode::CREATED
            }
            Err(refusal) => refusal.status,
        };
        *by_status.entry(status.as_u16()).or_default() += 1;
    }
    (by_status, made)
}

#[tokio::test]
async fn three_nodes_sell_exactly_the_stock_there_is_whichever_node_is_asked() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nodes = Nodes::start(3, LEASE).await;
    nodes.wait_shared(&[0, 1, 2], SETTLE_WITHIN).await;
    // The catalog, the warehouse and the stock each through another node: whichever owns
    // the product's shard learns of the product and warehouse it was not told about.
    let product = nodes.app(0).product("P", 100).await;
    let warehouse = nodes.app(1).warehouse("W", 1).await;
    let line = nodes.app(2).stock(warehouse, product, 50).await;
    assert_eq!(line.on_hand, 50, "{line:?}");
    let service = nodes.app(0).operator("shop-service@stockline.test").await;

    // 300 customers at once, spread over the three nodes, one unit each.
    let one = json!({ "items": [{ "product_id": product, "quantity": 1 }] });
    let answers = reserve_at_once(&nodes, &service, 300, one).await;
    let (by_status, made) = tally(&answers);
    assert_eq!(
        by_status,
        BTreeMap::from([(201, 50), (409, 250)]),
        "exactly the 50 units there are were reserved"
    );
    for node in 0..3 {
        let availability = nodes.app(node).availability(product).await;
        assert_eq!(
            (&availability.reserved, &availability.available),
            (&50, &0),
            "node {node}: {availability:?}"
        );
    }
    let db = pool(&nodes.database).await;
    assert_eq!(stored_line(&db, warehouse, product).await, (50, 50));

    // A reservation is found and settled through any node, not only its owner.
    let id = made[0];
    let admin = nodes.app(1);
    let read = admin.reservation(id).await.unwrap();
    assert_eq!(read.status, "pending", "{read:?}");
    let committed = nodes.app(2).commit(id).await.unwrap();
    assert_eq!(committed.status, "committed", "{committed:?}");
    assert_eq!(stored_line(&db, warehouse, product).await, (49, 49));
    let pending: List<Reservation> = admin
        .call(Method::GET, "/reservations?limit=500", &admin.admin, None)
        .await
        .unwrap();
    assert_eq!(
        pending.total, 49,
        "every node lists every shard's pending reservations"
    );

    // A bulk adjustment over several shards is split by shard and put back in order.
    let other = product_in_another_shard(&nodes, 0, product).await;
    let receipt = |product: i64, delta: i64| json!({ "warehouse_id": warehouse, "product_id": product, "delta": delta, "reason": "receipt" });
    let bulk = nodes.app(2);
    let (status, answer) = bulk
        .post(
            "/stock/adjustments/bulk",
            &bulk.admin,
            json!([
                receipt(other, 5),
                receipt(product, 10),
                receipt(987_654_321, 1)
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let results = answer["results"].as_array().unwrap();
    let indexes: Vec<_> = results.iter().map(|r| r["index"].clone()).collect();
    assert_eq!(indexes, [json!(0), json!(1), json!(2)], "{answer}");
    assert_eq!(
        (
            &results[0]["line"]["on_hand"],
            &results[1]["line"]["on_hand"]
        ),
        (&json!(5), &json!(59)),
        "{answer}"
    );
    assert_eq!(
        (&results[2]["ok"], &results[2]["error"]["code"]),
        (&json!(false), &json!("not_found")),
        "{answer}"
    );
    assert_eq!(stored_line(&db, warehouse, product).await, (59, 49));
    db.close().await;
    nodes.stop().await;
}

/// Every change to stock lines made through nodes that do not own them: served by the
/// owner, typed, with the API's answers (an adjustment's key honoured across nodes, a
/// count's version checked, a transfer whole, a product with stock not deleted).
#[tokio::test]
async fn every_stock_change_is_made_by_its_owner_whichever_node_is_asked() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nodes = Nodes::start(3, LEASE).await;
    nodes.wait_shared(&[0, 1, 2], SETTLE_WITHIN).await;
    let product = product_owned_by(&nodes, 0).await;
    let (here, there) = (nodes.app(1), nodes.app(2));
    let (from, to) = (
        there.warehouse("W1", 1).await,
        there.warehouse("W2", 2).await,
    );
    let db = pool(&nodes.database).await;

    let receipt =
        json!({ "warehouse_id": from, "product_id": product, "delta": 20, "reason": "receipt" });
    let keyed = |app: &testkit::TestApp| {
        app.client
            .post(format!("{}/api/v1/stock/adjustments", app.base))
            .bearer_auth(&app.admin)
            .header("Idempotency-Key", "receipt-1")
            .json(&receipt)
            .send()
    };
    let first = keyed(here).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first: StockLine = first.json().await.unwrap();
    assert_eq!(first.on_hand, 20, "{first:?}");
    let again: StockLine = keyed(there).await.unwrap().json().await.unwrap();
    assert_eq!(again, first, "the first answer again, through another node");
    assert_eq!(
        stored_line(&db, from, product).await,
        (20, 0),
        "received once"
    );

    let stale = here
        .count(from, product, 30, Some(first.version as i64 + 7))
        .await;
    assert_eq!(stale.refused(StatusCode::CONFLICT).code, "version_mismatch");
    let counted = here
        .count(from, product, 30, Some(first.version as i64))
        .await
        .unwrap();
    assert_eq!(counted.on_hand, 30, "{counted:?}");
    let kept = there.safety(from, product, 5).await.unwrap();
    assert_eq!(kept.available, 25, "{kept:?}");

    let too_many = here.transfer(from, to, product, 26).await;
    assert_eq!(
        too_many.refused(StatusCode::CONFLICT).code,
        "insufficient_stock"
    );
    let moved = here.transfer(from, to, product, 10).await.unwrap();
    assert_eq!(moved.status, "completed", "{moved:?}");
    assert_eq!(stored_line(&db, from, product).await, (20, 0));
    assert_eq!(stored_line(&db, to, product).await, (10, 0));
    assert_eq!(there.availability(product).await.on_hand, 30);

    let path = format!("/products/{product}");
    let (status, busy) = there.delete(&path, &there.admin).await;
    assert_eq!(
        testkit::error_code(status, &busy, StatusCode::CONFLICT),
        "conflict"
    );
    for warehouse in [from, to] {
        let (status, body) = here
            .put(
                "/stock/levels",
                &here.admin,
                json!({ "warehouse_id": warehouse, "product_id": product, "on_hand": 0 }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, _) = there.delete(&path, &there.admin).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let deleted: bool =
        sqlx::query_scalar("SELECT deleted_at IS NOT NULL FROM products WHERE id = $1")
            .bind(product)
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(deleted, "the product is deleted in the store");
    let gone = here.transfer(from, to, product, 1).await;
    assert_eq!(
        gone.refused(StatusCode::NOT_FOUND).code,
        "not_found",
        "no stock moves for a deleted product"
    );
    db.close().await;
    nodes.stop().await;
}

/// Two products in different shards, each stocked in `warehouse` (through node 0).
async fn two_shards(nodes: &Nodes, a_units: i64, b_units: i64) -> (i64, i64, i64) {
    let app = nodes.app(0);
    let a = app.product("A", 100).await;
    let b = product_in_another_shard(nodes, 0, a).await;
    let warehouse = app.warehouse("W", 1).await;
    app.stock(warehouse, a, a_units).await;
    app.stock(warehouse, b, b_units).await;
    (a, b, warehouse)
}

fn basket(a: i64, b: i64) -> Value {
    json!({ "items": [{ "product_id": a, "quantity": 1 }, { "product_id": b, "quantity": 1 }] })
}

/// Commits and releases reservations through any node of `nodes`, as `token`.
struct Settling<'a> {
    nodes: &'a Nodes,
    token: &'a str,
}

impl Settling<'_> {
    /// `step` (`commit` or `release`) of reservation `id` through `node`, with `body`.
    async fn settle(&self, node: usize, id: Uuid, step: &str, body: Value) -> Answer<Reservation> {
        let app = self.nodes.app(node);
        app.settle_as(self.token, id, step, Some(body)).await
    }

    /// The same, served with the reservation now `status`.
    async fn settled(&self, node: usize, id: Uuid, step: &str, body: Value, status: &str) {
        let settled = self.settle(node, id, step, body).await.unwrap();
        assert_eq!(settled.status, status, "{settled:?}");
    }
}

#[tokio::test]
async fn a_reservation_across_shards_is_all_or_nothing_whichever_node_is_asked() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nodes = Nodes::start(3, LEASE).await;
    nodes.wait_shared(&[0, 1, 2], SETTLE_WITHIN).await;
    let (a, b, warehouse) = two_shards(&nodes, 100, 5).await;
    let service = nodes.app(0).operator("shop-service@stockline.test").await;

    // 40 baskets of one A and one B at once, over the three nodes: B runs out after 5
    // (A never does), and no refused basket keeps its A.
    let answers = reserve_at_once(&nodes, &service, 40, basket(a, b)).await;
    for answer in &answers {
        match answer {
            Ok(made) => assert_eq!(made.items.len(), 2, "{made:?}"),
            Err(refusal) => assert_eq!(refusal.code_at(StatusCode::CONFLICT), "insufficient_stock"),
        }
    }
    let (by_status, made) = tally(&answers);
    assert_eq!(by_status, BTreeMap::from([(201, 5), (409, 35)]));
    let db = pool(&nodes.database).await;
    assert_eq!(
        stored_line(&db, warehouse, a).await,
        (100, 5),
        "no refused basket kept its A"
    );
    assert_eq!(stored_line(&db, warehouse, b).await, (5, 5));

    let through = Settling {
        nodes: &nodes,
        token: &service,
    };
    // One reservation, read, listed and settled through any node.
    let read: Reservation = nodes
        .app(1)
        .call(
            Method::GET,
            &format!("/reservations/{}", made[0]),
            &service,
            None,
        )
        .await
        .unwrap();
    assert_eq!(read.status, "pending", "{read:?}");
    let mut products: Vec<i64> = read.items.iter().map(|i| i.product_id).collect();
    products.sort_unstable();
    let mut both = vec![a, b];
    both.sort_unstable();
    assert_eq!(products, both, "{read:?}");
    let listed: List<Reservation> = nodes
        .app(2)
        .call(Method::GET, "/reservations?limit=100", &service, None)
        .await
        .unwrap();
    assert_eq!(listed.total, 5, "each basket listed once: {listed:?}");
    through
        .settled(2, made[0], "commit", json!({}), "committed")
        .await;
    assert_eq!(stored_line(&db, warehouse, a).await, (99, 4));
    assert_eq!(stored_line(&db, warehouse, b).await, (4, 4));
    through
        .settled(0, made[1], "release", json!({}), "released")
        .await;
    assert_eq!(stored_line(&db, warehouse, b).await, (4, 3));
    let again = through
        .settle(1, made[1], "commit", json!({}))
        .await
        .refused(StatusCode::CONFLICT);
    assert_eq!(
        (again.code.as_str(), &again.details["status"]),
        ("reservation_not_pending", &json!("released"))
    );
    // The whole's last mark rides in its coordinator's next batch: stored as settled.
    for (id, status) in [(&made[0], "committed"), (&made[1], "released")] {
        saga_stored_as(&db, id, status).await;
    }

    // Partial fulfilment across shards: one line committed, then the rest released.
    let one = |product: i64| json!({ "items": [{ "product_id": product, "warehouse_id": warehouse, "quantity": 1 }] });
    through
        .settled(0, made[2], "commit", one(a), "pending")
        .await;
    let over = through.settle(1, made[2], "commit", one(a)).await;
    assert_eq!(
        over.refused(StatusCode::UNPROCESSABLE_ENTITY).code,
        "validation_failed"
    );
    through
        .settled(1, made[2], "release", json!({}), "committed")
        .await;
    assert_eq!(stored_line(&db, warehouse, a).await, (98, 2));
    assert_eq!(stored_line(&db, warehouse, b).await, (4, 2));
    // A part released whole by a partial release: a commit then commits the rest.
    through
        .settled(2, made[3], "release", one(b), "pending")
        .await;
    through
        .settled(0, made[3], "commit", json!({}), "committed")
        .await;
    assert_eq!(stored_line(&db, warehouse, a).await, (97, 1));
    assert_eq!(stored_line(&db, warehouse, b).await, (4, 1));

    // A dry run holds nothing; a retry under the same key holds once and answers the same.
    // A dry run's answer is no reservation (no id): read as the JSON it is.
    let dry: Value = nodes
        .app(2)
        .call(
            Method::POST,
            "/reservations?dry_run=true",
            &service,
            Some(basket(a, b)),
        )
        .await
        .unwrap();
    assert_eq!(dry["status"], "dry_run", "{dry}");
    assert_eq!(dry["items"].as_array().map(Vec::len), Some(2), "{dry}");
    let keyed = |node: usize| {
        let app = nodes.app(node);
        app.client
            .post(format!("{}/api/v1/reservations", app.base))
            .bearer_auth(&service)
            .header("Idempotency-Key", "basket-1")
            .json(&basket(a, b))
            .send()
    };
    let first: Reservation = keyed(0).await.unwrap().json().await.unwrap();
    let replay = keyed(1).await.unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(
        replay.json::<Reservation>().await.unwrap().id,
        first.id,
        "the first answer again"
    );
    assert_eq!(stored_line(&db, warehouse, b).await, (4, 2), "held once");

    // Extended, then left to expire: every part's stock comes back.
    let short = nodes
        .app(1)
        .create_reservation(&service, json!({ "items": [{ "product_id": a, "quantity": 2 }, { "product_id": b, "quantity": 1 }], "ttl_seconds": 600 }))
        .await
        .unwrap();
    let path = format!("/reservations/{}", short.id);
    let ttl = |node: usize, ttl_seconds: i64| {
        let body = json!({ "ttl_seconds": ttl_seconds });
        nodes
            .app(node)
            .call::<Reservation>(Method::PATCH, &path, &service, Some(body))
    };
    let extended = ttl(2, 2).await.unwrap();
    assert!(extended.expires_at < short.expires_at, "{extended:?}");
    assert_eq!(stored_line(&db, warehouse, b).await, (4, 3));
    // Checked whole by the coordinator before any part is asked, in the contract's words.
    let bad = ttl(0, 0).await.refused(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        (bad.code.as_str(), &bad.details["field"]),
        ("validation_failed", &json!("ttl_seconds"))
    );
    let zero = json!({ "items": [{ "product_id": a, "warehouse_id": warehouse, "quantity": 0 }] });
    let bad = through
        .settle(1, short.id, "commit", zero)
        .await
        .refused(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        (bad.code.as_str(), &bad.details["field"]),
        ("validation_failed", &json!("items[0].quantity"))
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let expired: Reservation = nodes
        .app(0)
        .call(Method::GET, &path, &service, None)
        .await
        .unwrap();
    assert_eq!(expired.status, "expired", "{expired:?}");
    let late = through.settle(0, short.id, "commit", json!({})).await;
    assert_eq!(
        late.refused(StatusCode::CONFLICT).code,
        "reservation_not_pending"
    );
    assert_eq!(
        stored_line(&db, warehouse, a).await,
        (97, 2),
        "its A came back"
    );
    assert_eq!(
        stored_line(&db, warehouse, b).await,
        (4, 2),
        "its B came back"
    );
    db.close().await;
    nodes.stop().await;
}

/// Waits (up to 10 s) until the store has reservation across shards `id` at `status`.
async fn saga_stored_as(db: &PgPool, id: &Uuid, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT status FROM reservation_sagas WHERE id = $1")
                .bind(id)
                .fetch_optional(db)
                .await
                .unwrap();
        if stored.as_deref() == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} is stored {stored:?}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A coordinator that died after deciding a commit: the parts' owners finish it.
#[tokio::test]
async fn a_commit_decided_before_its_coordinator_died_is_finished_by_the_owners() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nodes = Nodes::start(3, LEASE).await;
    nodes.wait_shared(&[0, 1, 2], SETTLE_WITHIN).await;
    let (a, b, warehouse) = two_shards(&nodes, 10, 10).await;
    let service = nodes.app(0).operator("shop-service@stockline.test").await;
    let id = nodes
        .app(0)
        .create_reservation(&service, basket(a, b))
        .await
        .unwrap()
        .id;
    // What a coordinator leaves when it dies right after writing its decision.
    let db = pool(&nodes.database).await;
    sqlx::query("UPDATE reservation_sagas SET status = 'committing', updated_at = now() - interval '1 minute' WHERE id = $1")
        .bind(id)
        .execute(&db)
        .await
        .unwrap();
    let within = Instant::now() + 6 * LEASE;
    loop {
        let status: String =
            sqlx::query_scalar("SELECT status FROM reservation_sagas WHERE id = $1")
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap();
        if status == "committed" {
            break;
        }
        assert!(Instant::now() < within, "still {status} after six leases");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stored_line(&db, warehouse, a).await, (9, 0));
    assert_eq!(stored_line(&db, warehouse, b).await, (9, 0));
    let through = Settling {
        nodes: &nodes,
        token: &service,
    };
    let read: Reservation = nodes
        .app(2)
        .call(Method::GET, &format!("/reservations/{id}"), &service, None)
        .await
        .unwrap();
    assert_eq!(read.status, "committed", "{read:?}");
    assert_eq!(nodes.view(1).await.reservations_unfinished, 0);
    let mut finished = 0.0;
    for node in 0..3 {
        let text = nodes.app(node).metrics().await;
        finished += text
            .lines()
            .find_map(|line| {
                let value = line.strip_prefix(
                    "stockline_cluster_reservations_total{outcome=\"finished_after_coordinator\"} ",
                )?;
                value.trim().parse::<f64>().ok()
            })
            .unwrap_or(0.0);
    }
    assert_eq!(finished, 1.0, "one node recorded it finished");

    // Parts that let their stock go before a commit (here released one by one, as a try
    // given up under a lost answer would): the commit is refused, never a 200 that moved
    // nothing.
    let id = nodes
        .app(1)
        .create_reservation(&service, basket(a, b))
        .await
        .unwrap()
        .id;
    for product in [a, b] {
        let part = stockline::cluster::saga::part_id(id, stockline::cluster::shard_of(product));
        through
            .settled(2, part, "release", json!({}), "released")
            .await;
    }
    let refused = through.settle(0, id, "commit", json!({})).await;
    assert_eq!(
        refused.refused(StatusCode::CONFLICT).code,
        "reservation_not_pending"
    );
    assert_eq!(stored_line(&db, warehouse, a).await, (9, 0), "nothing left");
    db.close().await;
    nodes.stop().await;
}

/// Baskets of one A and one B reserved and committed under load while the owner of B's
/// shard is killed: every basket takes both or neither, whatever node coordinated it.
#[tokio::test]
async fn baskets_across_shards_stay_whole_through_a_kill_9_of_an_owner() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut nodes = Nodes::start(3, LEASE).await;
    nodes.wait_shared(&[0, 1, 2], SETTLE_WITHIN).await;
    let (a, b, warehouse) = two_shards(&nodes, 10_000, 10_000).await;
    let service = nodes.app(0).operator("shop-service@stockline.test").await;
    let victim = nodes.owner_of(b, 0).await;
    let survivors: Vec<usize> = (0..3).filter(|n| *n != victim).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..6 {
        let (bases, token, stop) = (nodes.bases(), service.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = load_client();
            let mut node = i;
            let mut committed = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = uuid::Uuid::now_v7().to_string();
                let body = json!({ "items": [{ "product_id": a, "quantity": 1 }, { "product_id": b, "quantity": 1 }], "ttl_seconds": 5 });
                // Reserve, then commit, each sent again through the next node until it is
                // answered for sure.
                let id = loop {
                    let sent = client
                        .post(format!("{}/api/v1/reservations", bases[node % 3]))
                        .bearer_auth(&token)
                        .header("Idempotency-Key", &key)
                        .json(&body)
                        .send()
                        .await;
                    match sent {
                        Ok(answer) if answer.status() == StatusCode::CREATED => {
                            break answer.json::<Reservation>().await.unwrap().id;
                        }
                        Ok(answer) if answer.status() != StatusCode::SERVICE_UNAVAILABLE => {
                            panic!("reserve: {} {}", answer.status(), answer.text().await.unwrap());
                        }
                        _ => node += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                loop {
                    let sent = client
                        .post(format!("{}/api/v1/reservations/{id}/commit", bases[node % 3]))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    match sent {
                        Ok(answer) if answer.status() == StatusCode::OK => {
                            committed += 1;
                            break;
                        }
                        // Expired while its owner moved: nothing of it was committed.
                        Ok(answer) if answer.status() == StatusCode::CONFLICT => break,
                        Ok(answer) if answer.status() != StatusCode::SERVICE_UNAVAILABLE => {
                            panic!("commit: {} {}", answer.status(), answer.text().await.unwrap());
                        }
                        _ => node += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            committed
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes.kill(victim);
    nodes.wait_shared(&survivors, SETTLE_WITHIN).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    for client in clients {
        committed += client.await.unwrap();
    }
    assert!(committed > 0, "baskets were committed");
    // Holds left by requests cut short expire within their 5 s; decided commits finish.
    let db = pool(&nodes.database).await;
    let within = Instant::now() + Duration::from_secs(40);
    let (line_a, line_b) = loop {
        let lines = (
            stored_line(&db, warehouse, a).await,
            stored_line(&db, warehouse, b).await,
        );
        if (lines.0.1, lines.1.1) == (0, 0) || Instant::now() > within {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("{committed} baskets acknowledged committed; lines A {line_a:?}, B {line_b:?}");
    assert_eq!((line_a.1, line_b.1), (0, 0), "nothing stays held");
    assert_eq!(
        line_a.0, line_b.0,
        "every basket took both products or neither"
    );
    assert!(
        10_000 - line_a.0 >= i64::from(committed),
        "every acknowledged commit took its stock"
    );
    db.close().await;
    nodes.stop().await;
}

/// Reference data changed through one node reaches the others: a price change is seen
/// everywhere, a deactivated warehouse no longer counts anywhere, a logged-out token is
/// refused by every node.
#[tokio::test]
async fn changes_to_products_warehouses_and_tokens_reach_every_node() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nodes = Nodes::start(2, LEASE).await;
    nodes.wait_shared(&[0, 1], SETTLE_WITHIN).await;
    let (a, b) = (nodes.app(0), nodes.app(1));
    let product = a.product("P", 100).await;
    let warehouse = a.warehouse("W", 1).await;
    a.stock(warehouse, product, 10).await;
    // Seen by node 1 before the change, so it has its own copy to update.
    assert_eq!(b.availability(product).await.available, 10);
    let (status, _) = b.get(&format!("/products/{product}"), &b.admin).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = a
        .put(
            &format!("/warehouses/{warehouse}/status"),
            &a.admin,
            json!({ "status": "inactive" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = a
        .patch(
            &format!("/products/{product}"),
            &a.admin,
            json!({ "price_cents": 250 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, token) = a.customer("leaver@stockline.test").await;
    let (status, _) = b.get("/auth/me", &token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = a.post("/auth/logout", &token, json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Announced before the changes were answered; applied by the others within moments.
    let started = Instant::now();
    loop {
        let availability = b.availability(product).await;
        let (status, me) = b.get("/auth/me", &token).await;
        let read = b.product_of(product).await.unwrap();
        let seen = availability.available == 0
            && (status, &me["error"]["code"]) == (StatusCode::UNAUTHORIZED, &json!("unauthorized"))
            && read.price_cents == 250;
        if seen {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "node 1 still has the old copy: {availability:?} {me} {read:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes.stop().await;
}

/// A shard-aware client reads the cluster map from any node and sends each product's
/// requests to the owner it names; a reservation's id names its shard, so its commit or
/// release reaches the owner from any node with no lookup.
#[tokio::test]
async fn the_cluster_map_names_each_shard_s_owner_and_a_reservation_s_id_its_shard() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nodes, product, _, service) = stocked_cluster(10).await;
    let admin_view = nodes.view(0).await;
    let addresses: BTreeMap<String, String> = nodes
        .nodes
        .iter()
        .map(|n| {
            (
                n.id.clone(),
                n.app.base.trim_start_matches("http://").to_owned(),
            )
        })
        .collect();
    for node in 0..3 {
        // Any signed-in caller may read it: a shop's service is enough.
        let map = nodes.app(node).shard_map(&service).await.unwrap();
        assert_eq!(map.mode, ClusterMode::Cluster);
        assert_eq!(map.shard_count, 1024);
        assert_eq!(
            map.function,
            "xxh3_64(product_id as 8 little-endian bytes) % shard_count"
        );
        assert_eq!(map.shards.len(), 1024);
        for (i, shard) in map.shards.iter().enumerate() {
            let owner = shard.node_id.as_deref().unwrap();
            assert_eq!(shard.shard as usize, i);
            assert_eq!(
                shard.address.as_deref(),
                Some(addresses[owner].as_str()),
                "{shard:?}"
            );
            let held = &admin_view.shards[i];
            assert_eq!(
                (&shard.node_id, shard.epoch),
                (&held.owner, held.epoch),
                "shard {i}"
            );
        }
    }
    let owner = nodes.owner_of(product, 0).await;
    let others: Vec<usize> = (0..3).filter(|n| *n != owner).collect();
    // Reserved through one node that does not own the product, released through another.
    let id = reserve_through(&nodes, others[0], &service, product).await;
    let home = stockline_actors::ReservationId(id).home();
    assert_eq!(
        home,
        Some(stockline_actors::Home::One(stockline::cluster::shard_of(
            product
        )))
    );
    let through = Settling {
        nodes: &nodes,
        token: &service,
    };
    through
        .settled(others[1], id, "release", json!({}), "released")
        .await;
    let availability = nodes.app(owner).availability(product).await;
    assert_eq!(availability.available, 10, "{availability:?}");
    nodes.stop().await;
}

/// Three nodes with the shards shared out, product "P" with `units` in warehouse "W", and
/// a shop's service signed in as an operator: (nodes, product, warehouse, its token).
async fn stocked_cluster(units: i64) -> (Nodes, i64, i64, String) {
    let nodes = Nodes::start(3, LEASE).await;
    nodes.wait_shared(&[0, 1, 2], SETTLE_WITHIN).await;
    let product = nodes.app(0).product("P", 100).await;
    let warehouse = nodes.app(0).warehouse("W", 1).await;
    nodes.app(0).stock(warehouse, product, units).await;
    let service = nodes.app(0).operator("shop-service@stockline.test").await;
    (nodes, product, warehouse, service)
}

/// What a load client keeps: every reservation it was answered 201 for, by its key.
type Acknowledged = Arc<Mutex<Vec<(String, Uuid)>>>;

/// A client reserving one unit at a time through the nodes `bases` names, starting at
/// `first`, until `stop`; answers when each reservation was acknowledged.
async fn reserve_until(
    bases: Vec<String>,
    first: usize,
    token: String,
    product: i64,
    acknowledged: Acknowledged,
    stop: Arc<AtomicBool>,
) -> Vec<Instant> {
    let client = load_client();
    let mut node = first;
    let mut successes = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        successes
            .push(reserve_once(&client, &bases, &mut node, &token, product, &acknowledged).await);
    }
    successes
}

fn load_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Reserves one unit under a new `Idempotency-Key`: a request that fails or answers 503
/// is sent again with the same key through the next node, until it is answered 201.
async fn reserve_once(
    client: &reqwest::Client,
    bases: &[String],
    node: &mut usize,
    token: &str,
    product: i64,
    acknowledged: &Acknowledged,
) -> Instant {
    let key = uuid::Uuid::now_v7().to_string();
    let started = Instant::now();
    loop {
        // A key that answers 503 for good (its first try's batch was refused and the
        // answer kept) would loop here for ever: the test fails instead.
        assert!(
            started.elapsed() < SETTLE_WITHIN * 2,
            "key {key} answered nothing but 503 for {:?}",
            SETTLE_WITHIN * 2
        );
        let sent = client
            .post(format!(
                "{}/api/v1/reservations",
                bases[*node % bases.len()]
            ))
            .bearer_auth(token)
            .header("Idempotency-Key", &key)
            .json(&json!({ "items": [{ "product_id": product, "quantity": 1 }] }))
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status() == StatusCode::CREATED => {
                let made: Reservation = answer.json().await.unwrap();
                acknowledged.lock().await.push((key, made.id));
                return Instant::now();
            }
            Ok(answer) if answer.status() == StatusCode::SERVICE_UNAVAILABLE => {}
            Ok(answer) => {
                let status = answer.status();
                panic!("unexpected {status}: {}", answer.text().await.unwrap());
            }
            // The node is gone (killed) or paused past the client's patience.
            Err(_) => {}
        }
        *node += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After the load: the store holds exactly the acknowledged reservations (each one unit,
/// each once), and replaying every key changes nothing.
async fn check_acknowledged(
    nodes: &Nodes,
    through: usize,
    token: &str,
    product: i64,
    warehouse: i64,
    stocked: i64,
    acknowledged: &[(String, Uuid)],
) {
    let ids: HashSet<Uuid> = acknowledged.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), acknowledged.len(), "one reservation per key");
    let db = pool(&nodes.database).await;
    let stored: HashSet<Uuid> = sqlx::query_scalar(
        "SELECT r.id FROM reservations r JOIN reservation_items i ON i.reservation_id = r.id
         WHERE i.product_id = $1 AND r.status = 'pending'",
    )
    .bind(product)
    .fetch_all(&db)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(
        stored, ids,
        "the store holds exactly the acknowledged reservations"
    );
    let held = acknowledged.len() as i64;
    assert_eq!(
        stored_line(&db, warehouse, product).await,
        (stocked, held),
        "the line holds one unit per acknowledged reservation, none twice"
    );
    let app = nodes.app(through);
    for (key, id) in acknowledged.iter().take(50) {
        let answer = app
            .client
            .post(format!("{}/api/v1/reservations", app.base))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&json!({ "items": [{ "product_id": product, "quantity": 1 }] }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::CREATED);
        let replayed: Reservation = answer.json().await.unwrap();
        assert_eq!(&replayed.id, id, "a replay answers the first answer");
    }
    assert_eq!(stored_line(&db, warehouse, product).await, (stocked, held));
    assert_eq!(
        app.availability(product).await.reserved as i64,
        held,
        "the new owner's memory agrees with the store"
    );
    db.close().await;
}

#[tokio::test]
async fn a_killed_owner_s_shards_move_within_two_leases_and_nothing_acknowledged_is_lost() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut nodes, product, warehouse, service) = stocked_cluster(100_000).await;
    let owner = nodes.owner_of(product, 0).await;
    let survivors: Vec<usize> = (0..3).filter(|n| *n != owner).collect();

    // Six clients, two starting at each node (the owner's two move on when it dies).
    let acknowledged = Acknowledged::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(tokio::spawn(reserve_until(
            nodes.bases(),
            i % 3,
            service.clone(),
            product,
            acknowledged.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = acknowledged.lock().await.len();
    assert!(before > 0, "the load runs before the kill");
    nodes.kill(owner);
    let killed = Instant::now();

    // The killed node's shards all move to the survivors.
    nodes.wait_shared(&survivors, SETTLE_WITHIN).await;
    let moved = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut first_after = None::<Duration>;
    for client in clients {
        for success in client.await.unwrap() {
            if success > killed {
                let after = success - killed;
                first_after = Some(first_after.map_or(after, |f| f.min(after)));
            }
        }
    }
    let first_after = first_after.expect("reservations succeeded after the kill");
    println!(
        "kill -9 of the owner: its shards moved after {moved:?}; the first reservation of its \
         product succeeded {first_after:?} after the kill (lease {LEASE:?})"
    );
    assert!(
        moved <= 2 * LEASE + Duration::from_secs(1),
        "shards moved within two leases (and a second for a busy machine): {moved:?}"
    );
    let acknowledged = acknowledged.lock().await.clone();
    check_acknowledged(
        &nodes,
        survivors[0],
        &service,
        product,
        warehouse,
        100_000,
        &acknowledged,
    )
    .await;
    nodes.stop().await;
}

/// A node paused (SIGSTOP) past its lease while it had changes in flight: the others take
/// its shards over; once it runs again (SIGCONT) it serves nothing it lost, its late
/// flushes are refused by the fence, and the store shows every acknowledged reservation
/// once, no unit held twice.
#[tokio::test]
async fn a_paused_owner_past_its_lease_writes_nothing_after_the_takeover() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nodes, product, warehouse, service) = stocked_cluster(100_000).await;
    let zombie = nodes.owner_of(product, 0).await;
    let others: Vec<usize> = (0..3).filter(|n| *n != zombie).collect();
    let shard = stockline::cluster::shard_of(product) as usize;
    let epoch_before = nodes.view(others[0]).await.shards[shard].epoch;

    let acknowledged = Acknowledged::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..6 {
        // Three clients send to the zombie first: their requests wait in its sockets
        // while it is paused, and reach it again when it runs.
        let first = if i % 2 == 0 { zombie } else { others[i % 2] };
        clients.push(tokio::spawn(reserve_until(
            nodes.bases(),
            first,
            service.clone(),
            product,
            acknowledged.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The zombie is paused with changes it took but has not written: the test holds
    // writes to the lines back, sends a burst to the zombie, and pauses it once its flush
    // waits. Released, the flush's statement ends and its transaction sits open under a
    // paused node, until PostgreSQL ends it (the flusher's idle-in-transaction bound).
    let db = pool(&nodes.database).await;
    let mut hold = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE stock_lines IN EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let (bases, token, acknowledged) =
                (nodes.bases(), service.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let mut node = zombie;
                reserve_once(
                    &load_client(),
                    &bases,
                    &mut node,
                    &token,
                    product,
                    &acknowledged,
                )
                .await
            })
        })
        .collect();
    let waiting = Instant::now();
    loop {
        let waits = testkit::cluster::waiting_on_locks(&db).await;
        if waits > 0 {
            break;
        }
        assert!(waiting.elapsed() < SETTLE_WITHIN, "no flush waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes.signal(zombie, libc::SIGSTOP);
    hold.commit().await.unwrap();
    let paused = Instant::now();
    // Taken over: another node owns the shard under a new epoch.
    loop {
        let lease = &nodes.view(others[0]).await.shards[shard];
        if lease.owner.is_some()
            && lease.owner.as_ref() != Some(&nodes.nodes[zombie].id)
            && lease.epoch != epoch_before
        {
            break;
        }
        assert!(paused.elapsed() < SETTLE_WITHIN, "no takeover: {lease:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reservations go on through the new owner while the zombie sleeps.
    let during = acknowledged.lock().await.len();
    let taken_over = Instant::now();
    while acknowledged.lock().await.len() == during {
        assert!(
            taken_over.elapsed() < SETTLE_WITHIN,
            "no reservation succeeded through the new owner"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes.signal(zombie, libc::SIGCONT);
    // Awake, it serves none of what it held: its own clock ran on while it was paused.
    let seen = &nodes.view(zombie).await.shards[shard];
    let epoch_now = nodes.view(others[0]).await.shards[shard].epoch;
    assert!(
        seen.owner.as_ref() != Some(&nodes.nodes[zombie].id) || epoch_now != epoch_before,
        "the zombie does not own the shard under its old epoch: {seen:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let persistence = nodes.app(zombie).persistence().await;
    assert!(
        persistence.refused_batches > 0,
        "the zombie's late batch met the fence: {persistence:?}"
    );
    for one in burst {
        one.await.unwrap();
    }
    let acknowledged = acknowledged.lock().await.clone();
    db.close().await;
    check_acknowledged(
        &nodes,
        others[0],
        &service,
        product,
        warehouse,
        100_000,
        &acknowledged,
    )
    .await;
    nodes.stop().await;
}

/// A product whose shard node `node` owns now (created through node 0).
async fn product_owned_by(nodes: &Nodes, node: usize) -> i64 {
    for i in 0.. {
        let product = nodes.app(0).product(&format!("owned-{i}"), 100).await;
        if nodes.owner_of(product, 0).await == node {
            return product;
        }
    }
    unreachable!()
}

/// Reserves one unit of `product` through `node` (with retries on 503, as a client would,
/// for at most `within`); answers the reservation's id.
async fn reserve_through(nodes: &Nodes, node: usize, token: &str, product: i64) -> Uuid {
    let started = Instant::now();
    loop {
        let one = json!({ "items": [{ "product_id": product, "quantity": 1 }] });
        match nodes.app(node).create_reservation(token, one).await {
            Ok(made) => return made.id,
            Err(refusal)
                if refusal.status == StatusCode::SERVICE_UNAVAILABLE
                    && started.elapsed() < SETTLE_WITHIN =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(refusal) => panic!("node {node} refused: {refusal:?}"),
        }
    }
}

/// A node whose NATS connection is cut (a TCP proxy between them) cannot answer or
/// forward: it says it is not ready, stops renewing, and the others take its shards; once
/// the connection is back it takes its share again.
// The proxy runs on the test's runtime while starting a node blocks a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_gives_its_shards_up_and_takes_its_share_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = testkit::proxy::Proxy::start("127.0.0.1:4222").await;
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let mut nodes = Nodes::start(2, LEASE).await;
    let cut = nodes
        .add_with(&[("STOCKLINE_CLUSTER_NATS_URL", url.as_str())])
        .await;
    nodes.wait_shared(&[0, 1, cut], SETTLE_WITHIN).await;
    let product = product_owned_by(&nodes, cut).await;
    let warehouse = nodes.app(0).warehouse("W", 1).await;
    nodes.app(0).stock(warehouse, product, 100).await;
    let service = nodes.app(0).operator("shop-service@stockline.test").await;

    nats.cut();
    let started = Instant::now();
    loop {
        let (status, _) = nodes
            .app(cut)
            .send(reqwest::Method::GET, "/readyz", None, None)
            .await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            started.elapsed() < SETTLE_WITHIN,
            "a node without NATS says it is not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes.wait_shared(&[0, 1], SETTLE_WITHIN).await;
    reserve_through(&nodes, 0, &service, product).await;
    // The cut-off node cannot reach the new owner: it answers 503, it changes nothing.
    let (status, body) = nodes
        .app(cut)
        .post(
            "/reservations",
            &service,
            json!({ "items": [{ "product_id": product, "quantity": 1 }] }),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    nats.restore();
    nodes.wait_shared(&[0, 1, cut], SETTLE_WITHIN).await;
    reserve_through(&nodes, cut, &service, product).await;
    assert_eq!(nodes.app(1).availability(product).await.reserved, 2);
    nodes.stop().await;
}

/// A node cut off from PostgreSQL stops serving before its leases run out; the others
/// take its shards over and serve them from the store; once back, it rejoins.
// The proxy runs on the test's runtime while starting a node blocks a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_postgres_stops_serving_and_the_others_take_over() {
    let _one = ONE_AT_A_TIME.lock().await;
    let postgres = testkit::proxy::Proxy::start("127.0.0.1:5432").await;
    let mut nodes = Nodes::start(2, LEASE).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        postgres.port, nodes.database
    );
    let cut = nodes.add_with(&[("DATABASE_URL", url.as_str())]).await;
    nodes.wait_shared(&[0, 1, cut], SETTLE_WITHIN).await;
    let product = product_owned_by(&nodes, cut).await;
    let warehouse = nodes.app(0).warehouse("W", 1).await;
    nodes.app(0).stock(warehouse, product, 100).await;
    let service = nodes.app(0).operator("shop-service@stockline.test").await;
    let before = reserve_through(&nodes, 1, &service, product).await;

    postgres.cut();
    let cut_at = Instant::now();
    nodes.wait_shared(&[0, 1], SETTLE_WITHIN).await;
    println!(
        "PostgreSQL cut for one node: its shards served by the others after {:?}",
        cut_at.elapsed()
    );
    // The new owner restored the reservation made through the old one.
    let read = nodes.app(0).reservation(before).await.unwrap();
    assert_eq!(read.status, "pending", "{read:?}");
    reserve_through(&nodes, 0, &service, product).await;
    assert_eq!(nodes.app(1).availability(product).await.reserved, 2);

    postgres.restore();
    nodes.wait_shared(&[0, 1, cut], SETTLE_WITHIN).await;
    reserve_through(&nodes, cut, &service, product).await;
    assert_eq!(nodes.app(0).availability(product).await.reserved, 3);
    let db = pool(&nodes.database).await;
    assert_eq!(stored_line(&db, warehouse, product).await, (100, 3));
    db.close().await;
    nodes.stop().await;
}

/// A fourth node joins under load: shards are handed over (each once its changes are
/// durable), and every request is answered, none lost or applied twice.
#[tokio::test]
async fn a_fourth_node_joins_under_load_and_no_request_is_lost() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut nodes = Nodes::start(3, LEASE).await;
    nodes.wait_shared(&[0, 1, 2], SETTLE_WITHIN).await;
    let warehouse = nodes.app(0).warehouse("W", 1).await;
    let service = nodes.app(0).operator("shop-service@stockline.test").await;
    let mut products = Vec::new();
    for i in 0..4 {
        let product = nodes.app(0).product(&format!("P{i}"), 100).await;
        nodes.app(0).stock(warehouse, product, 100_000).await;
        products.push((product, Acknowledged::default()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for (i, (product, acknowledged)) in products.iter().enumerate() {
        for first in [i, i + 1] {
            clients.push(tokio::spawn(reserve_until(
                nodes.bases(),
                first % 3,
                service.clone(),
                *product,
                acknowledged.clone(),
                stop.clone(),
            )));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let joined = nodes.add().await;
    nodes.wait_shared(&[0, 1, 2, joined], SETTLE_WITHIN).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    for (product, acknowledged) in &products {
        let acknowledged = acknowledged.lock().await.clone();
        assert!(!acknowledged.is_empty());
        check_acknowledged(
            &nodes,
            joined,
            &service,
            *product,
            warehouse,
            100_000,
            &acknowledged,
        )
        .await;
    }
    nodes.stop().await;
}

/// The `stockline` binary on `database` with `env`, expected to refuse to start: answers
/// what it said.
fn refused_start(database: &str, env: &[(&str, &str)]) -> String {
    use std::io::Read;
    let mut child = std::process::Command::new(testkit::binary())
        .arg("serve")
        .env("STOCKLINE_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", testkit::database_url(database))
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A server that starts never exits by itself: past the wait it is taken as started.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("it started");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "it started");
    let mut said = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    said
}

/// A node killed while its batch still runs in PostgreSQL (here: waiting on a row lock the
/// test holds), then started again under its node id, ends that batch's connection before
/// it reads its position and claims its shards: nothing its predecessor left running can
/// commit behind its back.
#[tokio::test]
async fn a_node_started_again_ends_what_its_killed_predecessor_left_running() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut nodes = Nodes::start(1, LEASE).await;
    nodes.wait_shared(&[0], SETTLE_WITHIN).await;
    let app = nodes.app(0);
    let product = app.product("P", 100).await;
    let warehouse = app.warehouse("W", 1).await;
    app.stock(warehouse, product, 50).await;
    let db = pool(&nodes.database).await;
    let ordinal: i16 = sqlx::query_scalar("SELECT ordinal FROM node_ordinals WHERE node_id = $1")
        .bind(&nodes.nodes[0].id)
        .fetch_one(&db)
        .await
        .unwrap();
    let mut lock = db.begin().await.unwrap();
    sqlx::query("SELECT value FROM settings WHERE key = $1 FOR UPDATE")
        .bind(format!("journal_lsn.{ordinal}"))
        .execute(&mut *lock)
        .await
        .unwrap();
    let request = load_client()
        .post(format!("{}/api/v1/reservations", app.base))
        .bearer_auth(&app.admin)
        .json(&json!({ "items": [{ "product_id": product, "quantity": 2 }] }))
        .send();
    let unanswered = tokio::spawn(request);
    let deadline = Instant::now() + Duration::from_secs(10);
    let waiting: i32 = loop {
        let waiting: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_optional(&db)
        .await
        .unwrap();
        if let Some(pid) = waiting {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the batch never reached the held row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    nodes.kill(0);
    assert!(
        unanswered.await.unwrap().is_err(),
        "answered before durable"
    );

    let again = nodes.restart(0).await;
    // The test still holds the row: only the new node can have ended the statement.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(waiting)
                .fetch_one(&db)
                .await
                .unwrap();
        if !left {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed node's statement still runs after the node started again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lock.rollback().await.unwrap();
    nodes.wait_shared(&[again], SETTLE_WITHIN).await;
    let served = nodes.app(again).availability(product).await;
    assert_eq!(served.warehouses[0].reserved, 0, "{served:?}");
    assert_eq!(stored_line(&db, warehouse, product).await, (50, 0));
    let (status, body) = nodes.app(again).reserve(product, 4).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(stored_line(&db, warehouse, product).await, (50, 4));
    nodes.stop().await;
}

/// A reservation made on one node and committed on the node that took its shard over is
/// stored committed, whichever node numbers its journal higher: the node that takes over
/// here has the lower ordinal, so its journal numbers are below those of the reservation's
/// stored row.
#[tokio::test]
async fn a_reservation_settled_by_the_node_that_took_its_shard_over_is_stored_settled() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut nodes = Nodes::start(2, LEASE).await;
    nodes.wait_shared(&[0, 1], SETTLE_WITHIN).await;
    let product = product_owned_by(&nodes, 1).await;
    let warehouse = nodes.app(0).warehouse("W", 1).await;
    nodes.app(0).stock(warehouse, product, 10).await;
    let id = nodes.app(1).reservation_of(product, 3).await.unwrap().id;
    nodes.kill(1);
    nodes.wait_shared(&[0], SETTLE_WITHIN).await;
    let committed = nodes.app(0).commit(id).await.unwrap();
    assert_eq!(committed.status, "committed", "{committed:?}");
    let db = pool(&nodes.database).await;
    let stored: String = sqlx::query_scalar("SELECT status FROM reservations WHERE id = $1")
        .bind(id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        stored, "committed",
        "the store has the reservation as the node answered it"
    );
    assert_eq!(stored_line(&db, warehouse, product).await, (7, 0));
    db.close().await;
    nodes.stop().await;
}

/// One database is used by one single-process server, or by the nodes of one cluster,
/// never by two of those at once: each would take its memory for the stock.
#[tokio::test]
async fn a_database_is_served_by_one_server_or_one_cluster_never_both() {
    let _one = ONE_AT_A_TIME.lock().await;
    let single = testkit::TestApp::spawn().await;
    let said = refused_start(&single.database, &[]);
    assert!(said.contains("another stockline server"), "{said}");
    let cluster_node = [
        ("STOCKLINE_CLUSTER_NATS_URL", "nats://127.0.0.1:4222"),
        ("STOCKLINE_NODE_ID", "intruder"),
    ];
    let said = refused_start(&single.database, &cluster_node);
    assert!(said.contains("single-process stockline server"), "{said}");
    single.cleanup().await;

    let nodes = Nodes::start(2, LEASE).await;
    let said = refused_start(&nodes.database, &[]);
    assert!(said.contains("a cluster's node"), "{said}");
    nodes.stop().await;
}

/// Two live nodes under one node id would number the same journal, and the second would
/// end the first's writes. Before the check, the second started and served. Now it refuses
/// with a message naming the id, and the first goes on writing.
#[tokio::test]
async fn a_second_node_under_a_live_node_s_id_refuses_to_start() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut nodes = Nodes::start(1, LEASE).await;
    nodes.wait_shared(&[0], SETTLE_WITHIN).await;
    let id = nodes.nodes[0].id.clone();
    let lease = LEASE.as_secs().to_string();
    let twin = [
        ("STOCKLINE_CLUSTER_NATS_URL", "nats://127.0.0.1:4222"),
        ("STOCKLINE_CLUSTER_NAME", nodes.cluster.as_str()),
        ("STOCKLINE_NODE_ID", id.as_str()),
        ("STOCKLINE_SHARD_LEASE_SECS", lease.as_str()),
    ];
    let said = refused_start(&nodes.database, &twin);
    assert!(
        said.contains(&format!("node id {id} is in use by a live node")),
        "{said}"
    );
    // The first node's writes were left alone: it still makes changes durable.
    let app = nodes.app(0);
    let (product, _) = app.stocked_product(5).await;
    let (status, body) = app.reserve(product, 2).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Killed, its id is free at once for the node started again under it.
    nodes.kill(0);
    let again = nodes.restart(0).await;
    nodes.wait_shared(&[again], SETTLE_WITHIN).await;
    assert_eq!(nodes.app(again).availability(product).await.reserved, 2);
    nodes.stop().await;
}

/// An operator watches the cluster in the console: the nodes, their shards, and a node
/// that dies going silent while its shards move to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_nodes_and_a_dead_node_s_shards_moving() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut nodes = Nodes::start(2, LEASE).await;
    nodes.wait_shared(&[0, 1], SETTLE_WITHIN).await;
    let browser = browser::Browser::start(1280, 900).await;
    browser
        .goto(&format!("{}/console", nodes.app(0).base))
        .await;
    browser.fill("#signin", "login", testkit::ADMIN_EMAIL).await;
    browser
        .fill("#signin", "password", testkit::ADMIN_PASSWORD)
        .await;
    browser.submit("#signin").await;
    browser.find("nav a[data-page=overview]").await;
    browser
        .goto(&format!("{}/console#/cluster", nodes.app(0).base))
        .await;
    browser
        .wait_text("#cluster", |text| {
            text.contains("node0") && text.contains("node1") && text.contains("2 of 2")
        })
        .await;
    browser
        .wait_text("#cluster .card", |text| {
            text.contains("Shards without owner") && text.contains('0')
        })
        .await;
    let squares = browser
        .client
        .find_all(fantoccini::Locator::Css("#cluster .shard"))
        .await
        .unwrap();
    assert_eq!(
        squares.len(),
        usize::from(stockline::cluster::SHARDS),
        "a square per shard"
    );
    browser.screenshot("cluster-two-nodes").await;

    nodes.kill(1);
    browser
        .wait_text("#cluster", |text| {
            text.contains("silent") && text.contains("1 of 2")
        })
        .await;
    nodes.wait_shared(&[0], SETTLE_WITHIN).await;
    browser
        .wait_text("#cluster .card", |text| {
            text.contains("Served by this node") && text.contains("1,024")
        })
        .await;
    browser.screenshot("cluster-one-node-left").await;
    browser.close().await;
    nodes.stop().await;
}

#[tokio::test]
async fn a_node_asked_in_a_shard_protocol_version_it_does_not_speak_says_which_it_speaks() {
    use stockline::cluster::routing::protocol;
    let _one = ONE_AT_A_TIME.lock().await;
    let nodes = Nodes::start(1, Duration::from_secs(2)).await;
    // Every shard claimed and answered, so the raw requests below find their subject.
    nodes.wait_shared(&[0], SETTLE_WITHIN).await;
    let product = nodes.app(0).product("versioned", 5).await;
    let shard = stockline::cluster::shard_of(product);
    let client = async_nats::connect("127.0.0.1:4222").await.unwrap();
    let subject = format!("stockline.{}.shard.{shard}", nodes.cluster);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(protocol::OPERATION, "9");
    // Version 9, then bytes no version of ours would read.
    let reply = client
        .request_with_headers(
            subject.clone(),
            headers.clone(),
            vec![9u8, 0xff, 0xff].into(),
        )
        .await
        .unwrap();
    assert_eq!(
        protocol::read_answer::<()>(&reply.payload).unwrap_err(),
        protocol::Refused::Version {
            asked: 9,
            speaks: protocol::VERSION
        }
    );
    // Its own version, but not an operation: refused as unreadable, nothing done.
    headers.insert(protocol::OPERATION, protocol::VERSION.to_string().as_str());
    let mut garbage = vec![protocol::VERSION as u8];
    garbage.extend([0xee; 4]);
    let reply = client
        .request_with_headers(subject, headers, garbage.into())
        .await
        .unwrap();
    assert!(matches!(
        protocol::read_answer::<()>(&reply.payload),
        Err(protocol::Refused::Unreadable(_))
    ));
    // The node still serves.
    let availability = nodes.app(0).availability(product).await;
    assert_eq!(availability.product_id, product, "{availability:?}");
    nodes.stop().await;
}
