//! Events out: the outbox as `GET /events` and the SSE stream sees it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{TestApp, error_code};

/// Every event after `after` of the given types, paging through `GET /events`.
async fn all_events(app: &TestApp, token: &str, types: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let (status, body) = app
            .get(
                &format!("/events?after={after}&types={types}&limit=500"),
                token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page = body["items"].as_array().unwrap().clone();
        let Some(last) = page.last() else { break };
        after = last["id"].as_i64().unwrap();
        events.extend(page);
    }
    events
}

/// Replays a line's `stock.changed` events from nothing: each must follow from the one
/// before by its cause and quantity, versions must count up by one, and the last must be
/// the line as it is.
fn replay(events: &[&Value]) -> (i64, i64, i64) {
    let (mut on_hand, mut reserved, mut version) = (0i64, 0i64, 0i64);
    for event in events {
        let data = &event["data"];
        let q = data["quantity"].as_i64().unwrap();
        match data["cause"].as_str().unwrap() {
            "adjust" | "transfer_in" => on_hand += q,
            "transfer_out" => on_hand -= q,
            "reserve" => reserved += q,
            "release" | "expire" => reserved -= q,
            "commit" => {
                on_hand -= q;
                reserved -= q;
            }
            other => panic!("unexpected cause {other}"),
        }
        version += 1;
        assert_eq!(data["version"].as_i64().unwrap(), version, "no gap: {data}");
        assert_eq!(
            (
                data["on_hand"].as_i64().unwrap(),
                data["reserved"].as_i64().unwrap()
            ),
            (on_hand, reserved),
            "the event follows from the one before: {data}"
        );
    }
    (on_hand, reserved, version)
}

#[tokio::test]
async fn replaying_a_lines_events_after_a_concurrent_run_gives_its_final_state() {
    let app = TestApp::spawn().await;
    let product = app.product("P", 100).await;
    let (w1, w2) = (app.warehouse("A", 1).await, app.warehouse("B", 2).await);
    app.stock(w1, product, 30).await;
    app.stock(w2, product, 30).await;
    // 40 clients reserve 2 each, half commit, half release; a transfer runs alongside.
    let transfer = json!({ "from_warehouse_id": w2, "to_warehouse_id": w1, "product_id": product, "quantity": 3 });
    let (made, (status, body)) = tokio::join!(
        app.reserve_and_settle_concurrently(product, 40, 2),
        app.post("/transfers", &app.admin, transfer),
    );
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(made >= 28, "most of the 40 got their units: {made}");
    let events = all_events(&app, &app.admin, "").await;
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase");
    for warehouse in [w1, w2] {
        let line: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "stock.changed" && e["data"]["warehouse_id"] == warehouse)
            .collect();
        let (on_hand, reserved, version) = replay(&line);
        let (status, stock) = app
            .get(&format!("/warehouses/{warehouse}/stock"), &app.admin)
            .await;
        assert_eq!(status, StatusCode::OK);
        let now = &stock["items"][0];
        assert_eq!(
            (
                now["on_hand"].as_i64().unwrap(),
                now["reserved"].as_i64().unwrap(),
                now["version"].as_i64().unwrap()
            ),
            (on_hand, reserved, version),
            "the replay of warehouse {warehouse}'s line is the line"
        );
    }
    let count = |kind: &str| events.iter().filter(|e| e["type"] == kind).count();
    assert_eq!(count("reservation.created"), 30, "60 units, 2 each");
    assert_eq!(
        count("reservation.committed") + count("reservation.released"),
        30
    );
    assert_eq!(count("transfer.completed"), 1);
    app.cleanup().await;
}

#[tokio::test]
async fn thresholds_fire_once_per_crossing_and_orders_tell_each_step() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post(
            "/products",
            &app.admin,
            json!({ "sku": "T", "name": "T", "price_cents": 100, "low_stock_threshold": 5 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let product = body["id"].as_i64().unwrap();
    let warehouse = app.warehouse("W", 1).await;
    app.stock(warehouse, product, 10).await; // back in (from nothing)
    let first = app.reservation_of(product, 6).await.unwrap(); // 4 left: low
    let second = app.reservation_of(product, 1).await.unwrap(); // 3: still low, nothing new
    let third = app.reservation_of(product, 3).await.unwrap(); // 0: out
    for r in [&third, &second] {
        let (status, _) = app
            .post(
                &format!("/reservations/{}/release", r.id),
                &app.admin,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    } // 4: back in
    let (status, _) = app
        .post(
            &format!("/reservations/{}/commit", first.id),
            &app.admin,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let crossings: Vec<(String, i64)> =
        all_events(&app, &app.admin, "stock.low,stock.out,stock.back_in")
            .await
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["data"]["available"].as_i64().unwrap(),
                )
            })
            .collect();
    let expected = [
        ("stock.back_in", 10),
        ("stock.low", 4),
        ("stock.out", 0),
        ("stock.back_in", 3),
    ];
    assert_eq!(
        crossings,
        expected.map(|(k, a)| (k.to_owned(), a)).to_vec(),
        "one event per crossing, in order"
    );

    // An order: created, paid, shipped, delivered.
    let (customer_id, customer) = app.customer("buyer@example.com").await;
    app.stock(warehouse, product, 10).await;
    let (status, order) = app
        .post(
            "/orders",
            &customer,
            json!({ "items": [{ "product_id": product, "quantity": 1 }] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let id = order["id"].as_str().unwrap();
    let (status, _) = app
        .post(
            &format!("/orders/{id}/pay"),
            &customer,
            json!({ "method": "card", "amount_cents": 100 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for step in ["shipped", "delivered"] {
        let (status, _) = app
            .patch(
                &format!("/orders/{id}/status"),
                &app.admin,
                json!({ "status": step }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let steps: Vec<Value> = all_events(
        &app,
        &app.admin,
        "order.created,order.paid,order.shipped,order.delivered",
    )
    .await;
    let kinds: Vec<&str> = steps.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "order.created",
            "order.paid",
            "order.shipped",
            "order.delivered"
        ]
    );
    assert_eq!(steps[0]["data"]["user_id"], customer_id);
    assert_eq!(steps[0]["data"]["total_cents"], 100);
    app.cleanup().await;
}

#[tokio::test]
async fn a_shop_member_sees_its_shops_events_only_and_a_customer_none() {
    let app = TestApp::spawn().await;
    let product = app.product("P", 100).await;
    let platform = app.warehouse("PLATFORM", 1).await;
    let (status, shop) = app
        .post("/shops", &app.admin, json!({ "code": "S", "name": "Shop" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{shop}");
    let shop_id = shop["id"].as_i64().unwrap();
    let (status, body) = app
        .post(
            "/warehouses",
            &app.admin,
            json!({ "code": "SHOP", "name": "Shop's", "shop_id": shop_id }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let shops_warehouse = body["id"].as_i64().unwrap();
    let (member_id, _) = app.customer("staff@example.com").await;
    let (status, _) = app
        .put(
            &format!("/shops/{shop_id}/members/{member_id}"),
            &app.admin,
            json!({ "role": "shop_staff" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let member = app.login("staff@example.com", "password-1").await;
    app.stock(platform, product, 5).await;
    app.stock(shops_warehouse, product, 7).await;

    let seen = all_events(&app, &member, "stock.changed").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["data"]["warehouse_id"], shops_warehouse);
    assert_eq!(seen[0]["data"]["shop_id"], shop_id);
    assert_eq!(all_events(&app, &app.admin, "stock.changed").await.len(), 2);

    let (_, customer) = app.customer("c@example.com").await;
    let (status, body) = app.get("/events", &customer).await;
    assert_eq!(
        error_code(status, &body, StatusCode::FORBIDDEN),
        "forbidden"
    );
    let (status, body) = app.get("/events?types=stock.nope", &app.admin).await;
    let code = error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        (code.as_str(), &body["error"]["details"]["field"]),
        ("validation_failed", &json!("types"))
    );
    app.cleanup().await;
}

/// Reads SSE events (`id`, `event`, `data`) from a response until `until` says stop or
/// the stream ends; answers them.
async fn read_sse(
    response: reqwest::Response,
    mut until: impl FnMut(&[(i64, String, Value)]) -> bool,
) -> Vec<(i64, String, Value)> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(20), body.next()).await {
        buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let Some(id) = id {
                events.push((id, kind, serde_json::from_str(&data).unwrap()));
                if until(&events) {
                    return events;
                }
            }
        }
    }
    events
}

async fn open_stream(app: &TestApp, last_event_id: Option<i64>, query: &str) -> reqwest::Response {
    let mut request = app
        .client
        .get(format!("{}/api/v1/events/stream{query}", app.base))
        .bearer_auth(&app.admin);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    response
}

#[tokio::test]
async fn a_stream_cut_in_a_burst_and_resumed_with_last_event_id_misses_nothing_and_repeats_nothing()
{
    let app = TestApp::spawn().await;
    let (product, warehouse) = app.stocked_product(1).await;
    let start = all_events(&app, &app.admin, "").await.last().unwrap()["id"]
        .as_i64()
        .unwrap();
    let stream = open_stream(&app, Some(start), "").await;
    // A burst of 200 changes from 4 clients while the stream is read, then dropped.
    let burst = {
        let (client, base, token) = (app.client.clone(), app.base.clone(), app.admin.clone());
        tokio::spawn(async move {
            let mut clients = Vec::new();
            for _ in 0..4 {
                let (client, base, token) = (client.clone(), base.clone(), token.clone());
                clients.push(tokio::spawn(async move {
                    for _ in 0..50 {
                        let body = json!({ "warehouse_id": warehouse, "product_id": product, "delta": 1, "reason": "receipt" });
                        let answer = client
                            .post(format!("{base}/api/v1/stock/adjustments"))
                            .bearer_auth(&token)
                            .json(&body)
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(answer.status(), StatusCode::OK);
                    }
                }));
            }
            for c in clients {
                c.await.unwrap();
            }
        })
    };
    let first = read_sse(stream, |events| events.len() >= 40).await;
    assert_eq!(first.len(), 40, "the stream delivered live events");
    let resume = first.last().unwrap().0;
    burst.await.unwrap();
    let expected: Vec<i64> = all_events(&app, &app.admin, "")
        .await
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .filter(|id| *id > start)
        .collect();
    assert_eq!(expected.len(), 200);
    let last = *expected.last().unwrap();
    let second = read_sse(open_stream(&app, Some(resume), "").await, |events| {
        events.last().is_some_and(|e| e.0 == last)
    })
    .await;
    let got: Vec<i64> = first.iter().chain(&second).map(|e| e.0).collect();
    assert_eq!(got, expected, "every event once, in order");
    let unique: HashSet<i64> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len());
    assert!(
        first
            .iter()
            .all(|(id, kind, body)| kind == "stock.changed" && body["id"] == *id)
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_stream_that_falls_a_ring_behind_is_cut_off_and_resumes_from_where_it_was() {
    let app = TestApp::spawn_with(&["--event-stream-buffer", "16", "--durability", "async"]).await;
    let (product, warehouse) = app.stocked_product(1).await;
    // Async durability: the first event is written a moment after its answer.
    let before = loop {
        if let Some(last) = all_events(&app, &app.admin, "").await.last() {
            break last["id"].as_i64().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stream = open_stream(&app, None, "?types=stock.changed").await;
    // The client reads nothing while 30,000 events are made: far more than the socket
    // buffers hold, so the server's side of the stream stops and falls behind the ring.
    let items: Vec<Value> = (0..1000)
        .map(|_| json!({ "warehouse_id": warehouse, "product_id": product, "delta": 1, "reason": "receipt" }))
        .collect();
    for _ in 0..30 {
        let (status, body) = app
            .post(
                "/stock/adjustments/bulk",
                &app.admin,
                Value::Array(items.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let all = loop {
        let all = all_events(&app, &app.admin, "stock.changed").await;
        if all.len() == 30_001 {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let final_id = all.last().unwrap()["id"].as_i64().unwrap();
    let read = read_sse(stream, |_| false).await;
    let (resume, kind, body) = read.last().unwrap().clone();
    assert_eq!(kind, "cutoff", "the stream ends with a clear last event");
    assert_eq!(body["resume_after"], resume);
    let delivered: Vec<i64> = read
        .iter()
        .filter(|e| e.1 == "stock.changed")
        .map(|e| e.0)
        .collect();
    assert!(
        delivered.last().is_none_or(|last| *last == resume),
        "it resumes after the last sent"
    );
    assert!(delivered.len() < 30_000, "it was cut off before the end");
    // Resuming from the cut-off gets the rest, exactly.
    let rest = read_sse(
        open_stream(&app, Some(resume), "?types=stock.changed").await,
        |events| events.last().is_some_and(|e| e.0 == final_id),
    )
    .await;
    let mut got = delivered;
    got.extend(rest.iter().map(|e| e.0));
    let expected: Vec<i64> = all
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .filter(|id| *id > before)
        .collect();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
    app.cleanup().await;
}

#[tokio::test]
async fn streams_are_bounded_and_events_can_be_switched_off() {
    let app = TestApp::spawn_with(&["--max-event-streams", "1", "--events", "false"]).await;
    let held = open_stream(&app, None, "").await;
    let (status, body) = app.get("/events/stream", &app.admin).await;
    assert_eq!(
        error_code(status, &body, StatusCode::SERVICE_UNAVAILABLE),
        "overloaded"
    );
    drop(held);
    app.stocked_product(5).await;
    let (status, body) = app.get("/events", &app.admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total"], 0, "events off writes none: {body}");
    app.cleanup().await;
}

#[tokio::test]
async fn an_open_stream_ends_when_the_server_shuts_down() {
    let mut app = TestApp::spawn().await;
    let stream = open_stream(&app, None, "").await;
    let reader = tokio::spawn(read_sse(stream, |_| false));
    // Shutdown waits for requests in flight (up to 30 s): an endless stream must end.
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("the server stopped with a stream open");
    let read = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the stream ended")
        .unwrap();
    assert!(read.is_empty());
    testkit::drop_database(&app.database).await;
}

#[tokio::test]
async fn events_older_than_the_retention_are_pruned() {
    let app = TestApp::spawn().await;
    app.stocked_product(5).await;
    app.reservation_of(1, 1).await.unwrap();
    let events = all_events(&app, &app.admin, "").await;
    assert!(events.len() >= 2);
    let pool = sqlx::PgPool::connect(&testkit::database_url(&app.database))
        .await
        .unwrap();
    let oldest = events[0]["id"].as_i64().unwrap();
    sqlx::query("UPDATE events SET at = now() - interval '200 hours' WHERE id = $1")
        .bind(oldest)
        .execute(&pool)
        .await
        .unwrap();
    let pruned = stockline::events::retention::prune(&pool, Duration::from_secs(168 * 3600))
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    let left: BTreeMap<i64, Value> = all_events(&app, &app.admin, "")
        .await
        .into_iter()
        .map(|e| (e["id"].as_i64().unwrap(), e))
        .collect();
    assert!(!left.contains_key(&oldest));
    assert_eq!(left.len(), events.len() - 1);
    pool.close().await;
    app.cleanup().await;
}

/// Opens a stream as `token` and answers a task that reads it until it ends (or 20 s),
/// with the events it got.
async fn follow(app: &TestApp, token: &str) -> tokio::task::JoinHandle<Vec<(i64, String, Value)>> {
    let response = app
        .client
        .get(format!(
            "{}/api/v1/events/stream?types=stock.changed",
            app.base
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    tokio::spawn(read_sse(response, |_| false))
}

/// What a stream got after its caller lost the right to it: the events before, then one
/// `revoked` with `reason`, and the end of the stream within 5 s of the loss.
async fn ends_revoked(
    reading: tokio::task::JoinHandle<Vec<(i64, String, Value)>>,
    lost_at: tokio::time::Instant,
    reason: &str,
) {
    let events = tokio::time::timeout(Duration::from_secs(6), reading)
        .await
        .unwrap_or_else(|_| panic!("the stream still runs 6 s after {reason}"))
        .unwrap();
    let ended = lost_at.elapsed();
    let (last, before) = events.split_last().expect("events");
    assert_eq!(last.1, "revoked", "{events:?}");
    assert_eq!(last.2["type"], "revoked");
    assert_eq!(last.2["reason"], reason);
    assert!(
        ended <= Duration::from_secs(5) + Duration::from_millis(500),
        "{ended:?}"
    );
    assert!(
        !before.is_empty() && before.iter().all(|e| e.1 == "stock.changed"),
        "it was live before: {events:?}"
    );
}

/// Before the check, a removed shop member's stream went on delivering that shop's
/// events (3 of 3 after removal); so did a logged-out, disabled or demoted operator's.
#[tokio::test]
async fn a_stream_ends_with_revoked_once_its_caller_loses_the_right_to_it() {
    let app = TestApp::spawn().await;
    let product = app.product("P", 100).await;
    let (_, shop) = app
        .post("/shops", &app.admin, json!({ "code": "S", "name": "Shop" }))
        .await;
    let shop = shop["id"].as_i64().unwrap();
    let (_, warehouse) = app
        .post(
            "/warehouses",
            &app.admin,
            json!({ "code": "SHOP", "name": "Shop's", "shop_id": shop }),
        )
        .await;
    let warehouse = warehouse["id"].as_i64().unwrap();
    let operator = |email: &'static str| {
        let app = &app;
        async move {
            let token = app.operator(email).await;
            let (_, me) = app.get("/auth/me", &token).await;
            (me["id"].as_i64().unwrap(), token)
        }
    };
    let (_, out) = operator("out@example.com").await;
    let (disabled_id, disabled) = operator("off@example.com").await;
    let (demoted_id, demoted) = operator("demoted@example.com").await;
    let (member_id, _) = app.customer("staff@example.com").await;
    app.put(
        &format!("/shops/{shop}/members/{member_id}"),
        &app.admin,
        json!({ "role": "shop_staff" }),
    )
    .await;
    let member = app.login("staff@example.com", "password-1").await;

    let streams = [
        follow(&app, &out).await,
        follow(&app, &disabled).await,
        follow(&app, &demoted).await,
        follow(&app, &member).await,
    ];
    app.stock(warehouse, product, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let [out_stream, disabled_stream, demoted_stream, member_stream] = streams;

    let lost_at = tokio::time::Instant::now();
    let (status, _) = app
        .send(reqwest::Method::POST, "/auth/logout", Some(&out), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .put(
            &format!("/users/{disabled_id}/status"),
            &app.admin,
            json!({ "status": "disabled" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .put(
            &format!("/users/{demoted_id}/role"),
            &app.admin,
            json!({ "role": "customer" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .delete(&format!("/shops/{shop}/members/{member_id}"), &app.admin)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Events keep coming after the loss.
    app.stock(warehouse, product, 1).await;

    ends_revoked(out_stream, lost_at, "logged_out").await;
    ends_revoked(disabled_stream, lost_at, "user_disabled").await;
    ends_revoked(demoted_stream, lost_at, "role_changed").await;
    ends_revoked(member_stream, lost_at, "removed_from_shop").await;
    app.cleanup().await;
}

/// A reservation or order allocated over two shops' warehouses concerns both shops, but
/// each may see only its own part: before, shop A's staff read shop B's warehouses,
/// quantities, prices and the order's total in `GET /events`, the stream and
/// `GET /reservations`.
#[tokio::test]
async fn a_shop_sees_only_its_own_part_of_what_spans_shops() {
    let app = TestApp::spawn().await;
    let product = app.product("P", 100).await;
    let mut shops = Vec::new();
    for code in ["A", "B"] {
        let (_, shop) = app
            .post("/shops", &app.admin, json!({ "code": code, "name": code }))
            .await;
        let shop = shop["id"].as_i64().unwrap();
        let (_, warehouse) = app
            .post(
                "/warehouses",
                &app.admin,
                json!({ "code": format!("W{code}"), "name": code, "shop_id": shop }),
            )
            .await;
        let warehouse = warehouse["id"].as_i64().unwrap();
        app.stock(warehouse, product, 3).await;
        shops.push((shop, warehouse));
    }
    let [(shop_a, warehouse_a), (_, warehouse_b)] = [shops[0], shops[1]];
    let (status, reservation) = app.reserve(product, 5).await;
    assert_eq!(status, StatusCode::CREATED, "{reservation}");
    assert_eq!(
        reservation["items"].as_array().unwrap().len(),
        2,
        "split over both shops"
    );
    let (_, customer) = app.customer("buyer@example.com").await;
    let (status, order) = app
        .post(
            "/orders",
            &customer,
            json!({ "items": [{ "product_id": product, "quantity": 1 }] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let (staff_id, _) = app.customer("a-staff@example.com").await;
    app.put(
        &format!("/shops/{shop_a}/members/{staff_id}"),
        &app.admin,
        json!({ "role": "shop_staff" }),
    )
    .await;
    let staff = app.login("a-staff@example.com", "password-1").await;

    let warehouses_of = |event: &Value| -> Vec<i64> {
        event["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["warehouse_id"].as_i64().unwrap())
            .collect()
    };
    let seen = all_events(&app, &staff, "reservation.created,order.created").await;
    let spanning = seen
        .iter()
        .find(|e| e["data"]["id"] == reservation["id"])
        .expect("shop A sees the reservation that holds its stock");
    assert_eq!(warehouses_of(spanning), vec![warehouse_a]);
    for event in seen.iter().filter(|e| e["type"] == "order.created") {
        assert!(event["data"].get("total_cents").is_none(), "{event}");
        assert!(!warehouses_of(event).contains(&warehouse_b), "{event}");
    }
    // The admin sees everything.
    let everything = all_events(&app, &app.admin, "reservation.created").await;
    let whole = everything
        .iter()
        .find(|e| e["data"]["id"] == reservation["id"])
        .unwrap();
    assert_eq!(warehouses_of(whole).len(), 2);

    // The stream, catching up from the start, shows the same part.
    let response = app
        .client
        .get(format!(
            "{}/api/v1/events/stream?after=0&types=reservation.created",
            app.base
        ))
        .bearer_auth(&staff)
        .send()
        .await
        .unwrap();
    let id = reservation["id"].clone();
    let streamed = read_sse(response, |events| {
        events.iter().any(|e| e.2["data"]["id"] == id)
    })
    .await;
    let event = &streamed.iter().find(|e| e.2["data"]["id"] == id).unwrap().2;
    assert_eq!(warehouses_of(event), vec![warehouse_a]);

    let (_, pending) = app.get("/reservations", &staff).await;
    let listed = pending["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == reservation["id"])
        .unwrap();
    let items = listed["items"].as_array().unwrap();
    assert!(
        items.iter().all(|i| i["warehouse_id"] == warehouse_a),
        "{listed}"
    );
    assert!(listed["reference"].is_null());
    app.cleanup().await;
}

/// One account cannot take every stream: past 32 of its own it is told to wait (429),
/// while another caller still gets one; a stream closed makes room again.
#[tokio::test]
async fn one_caller_cannot_take_every_stream() {
    let app = TestApp::spawn_with(&["--max-event-streams", "40"]).await;
    let operator = app.operator("streams@example.com").await;
    let open = |token: String| {
        let request = app
            .client
            .get(format!("{}/api/v1/events/stream", app.base))
            .bearer_auth(token);
        async move { request.send().await.unwrap() }
    };
    let mut held = Vec::new();
    for _ in 0..32 {
        let response = open(operator.clone()).await;
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response);
    }
    let refused = open(operator.clone()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        open(app.admin.clone()).await.status(),
        StatusCode::OK,
        "another caller"
    );
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let response = open(operator.clone()).await;
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no room after a stream closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    app.cleanup().await;
}

/// The cluster's event order (`events::sequence`), raced: writers commit events into the
/// intake from many transactions at once (as every node's flusher does), three sequencers
/// number them at once (as every node's does), and a reader pages `id > cursor` all along,
/// as an integrator does. The reader gets every event exactly once, in rising ids, and the
/// ids have no holes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raced_writers_and_sequencers_give_a_paging_reader_every_event_once() {
    use stockline::events::read::{Filter, page};
    use stockline::events::sequence::sequence;
    const WRITERS: i64 = 4;
    const EACH: i64 = 150;
    let base = std::env::var("TEST_DATABASE_BASE")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let url = format!("{base}/{}", testkit::fresh_database());
    let db = stockline::store::connect_and_migrate(&url).await.unwrap();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let db = db.clone();
            tokio::spawn(async move {
                for n in 0..EACH {
                    sqlx::query(
                        "INSERT INTO event_intake (key, type, at, data, ordering_key)
                         VALUES ($1, 'stock.changed', now(), $2, 'line')",
                    )
                    .bind((writer << 32) + n)
                    .bind(format!(r#"{{"writer":{writer},"n":{n}}}"#))
                    .execute(&db)
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sequencers: Vec<_> = (0..3)
        .map(|_| {
            let (db, done) = (db.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    sequence(&db).await.unwrap();
                }
            })
        })
        .collect();
    let mut seen: Vec<(i64, String)> = Vec::new();
    let mut cursor = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (seen.len() as i64) < WRITERS * EACH && std::time::Instant::now() < deadline {
        for event in page(&db, cursor, &Filter::default(), 37).await.unwrap() {
            cursor = event.id;
            seen.push((event.id, event.data));
        }
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    for task in writers.into_iter().chain(sequencers) {
        task.await.unwrap();
    }
    let ids: Vec<i64> = seen.iter().map(|(id, _)| *id).collect();
    let first = ids[0];
    assert_eq!(
        ids,
        (first..first + WRITERS * EACH).collect::<Vec<_>>(),
        "every id once, rising, no holes"
    );
    let unique: HashSet<&String> = seen.iter().map(|(_, data)| data).collect();
    assert_eq!(unique.len() as i64, WRITERS * EACH, "every event once");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM event_intake")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(left, 0);
    // Each writer's events keep the order they were committed in.
    for writer in 0..WRITERS {
        let ns: Vec<i64> = seen
            .iter()
            .map(|(_, data)| serde_json::from_str::<Value>(data).unwrap())
            .filter(|data| data["writer"] == writer)
            .map(|data| data["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, (0..EACH).collect::<Vec<_>>());
    }
    db.close().await;
}
