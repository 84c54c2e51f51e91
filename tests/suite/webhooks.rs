//! Webhooks against a receiver inside the test (loopback only): signatures, order per
//! line, retries, failure and manual retry, a dead endpoint beside a live one, kill -9.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use testkit::api::{Delivery, List, Refused, Webhook, answer_of};
use testkit::{TestApp, error_code};
use uuid::Uuid;

const SECRET: &str = "a-webhook-secret-of-some-length";
/// The types the ordering tests subscribe to.
const STOCK_AND_RESERVATIONS: [&str; 4] = [
    "stock.changed",
    "reservation.created",
    "reservation.committed",
    "reservation.released",
];

#[derive(Clone, Debug)]
struct Received {
    id: i64,
    kind: String,
    body: Value,
}

/// A webhook endpoint on loopback that checks every signature and can be told to fail.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    failing: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start() -> Self {
        let receiver = Self {
            url: String::new(),
            got: Arc::default(),
            failing: Arc::default(),
            refused: Arc::default(),
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let state = state.clone();
                async move { state.take(&headers, &body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, ..receiver }
    }

    fn take(&self, headers: &HeaderMap, body: &str) -> AxumStatus {
        if self.failing.load(Ordering::Acquire) {
            self.refused.fetch_add(1, Ordering::AcqRel);
            return AxumStatus::INTERNAL_SERVER_ERROR;
        }
        let header = |name: &str| headers[name].to_str().unwrap().to_owned();
        let signature = header("stockline-signature");
        let (t, v1) = signature
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(",v1="))
            .expect("t=<unix>,v1=<hex>");
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        mac.verify_slice(&hex::decode(v1).unwrap())
            .expect("the signature verifies");
        let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
        assert!((0..60).contains(&age), "signed just now");
        let body: Value = serde_json::from_str(body).unwrap();
        let id: i64 = header("stockline-event-id").parse().unwrap();
        assert_eq!(body["id"], id);
        assert_eq!(
            body["type"].as_str().unwrap(),
            header("stockline-event-type")
        );
        self.got.lock().unwrap().push(Received {
            id,
            kind: body["type"].as_str().unwrap().to_owned(),
            body,
        });
        AxumStatus::OK
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// Subscribes `url` to `types` as the admin; answers the webhook's id.
async fn subscribe(app: &TestApp, url: &str, types: &[&str]) -> Uuid {
    let (status, body) = app
        .post(
            "/webhooks",
            &app.admin,
            json!({ "url": url, "types": types, "secret": SECRET }),
        )
        .await;
    assert!(body.get("secret").is_none(), "the secret is never shown");
    let made: Webhook = answer_of("/webhooks", status, body, StatusCode::CREATED).unwrap();
    made.id
}

/// The deliveries of webhook `id` (`query`: status, limit), as the admin.
async fn deliveries(app: &TestApp, id: Uuid, query: &str) -> List<Delivery> {
    app.deliveries(&app.admin, id, query).await.unwrap()
}

/// Every event id of these types in the outbox.
async fn outbox(app: &TestApp, types: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    loop {
        let after = ids.last().copied().unwrap_or(0);
        let (status, body) = app
            .get(
                &format!("/events?after={after}&types={types}&limit=500"),
                &app.admin,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page: Vec<i64> = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect();
        if page.is_empty() {
            return ids;
        }
        ids.extend(page);
    }
}

/// Waits until the receiver has every one of `ids` (at least once).
async fn wait_for_all(receiver: &Receiver, ids: &[i64]) {
    let wanted: HashSet<i64> = ids.iter().copied().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got: HashSet<i64> = receiver.received().iter().map(|r| r.id).collect();
        if wanted.is_subset(&got) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing {:?}",
            wanted.difference(&got).take(10).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each line's `stock.changed` events arrived with their versions increasing (the first
/// arrival of each; a repeat carries the same id).
fn assert_in_order_per_line(received: &[Received]) {
    let mut last: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    let mut seen = HashSet::new();
    for r in received.iter().filter(|r| r.kind == "stock.changed") {
        if !seen.insert(r.id) {
            continue;
        }
        let data = &r.body["data"];
        let line = (
            data["warehouse_id"].as_i64().unwrap(),
            data["product_id"].as_i64().unwrap(),
        );
        let version = data["version"].as_i64().unwrap();
        let before = last.insert(line, version).unwrap_or(0);
        assert_eq!(
            version,
            before + 1,
            "line {line:?}: version {version} after {before}"
        );
    }
}

/// Reservations on three lines from 12 clients, half committed, half released.
async fn scripted_run(app: &TestApp) {
    let product = app.product("P", 100).await;
    for (code, priority) in [("A", 1), ("B", 2), ("C", 3)] {
        let warehouse = app.warehouse(code, priority).await;
        app.stock(warehouse, product, 12).await;
    }
    assert_eq!(
        app.reserve_and_settle_concurrently(product, 12, 3).await,
        12
    );
}

#[tokio::test]
async fn every_event_arrives_signed_and_in_order_per_line_and_a_dead_endpoint_holds_up_nobody() {
    let app = TestApp::spawn_with(&["--webhook-retry-base-ms", "20"]).await;
    let receiver = Receiver::start().await;
    // Nothing listens on this port: every attempt there fails.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", listener.local_addr().unwrap())
    };
    let dead_id = subscribe(&app, &dead, &["stock.changed"]).await;
    subscribe(&app, &receiver.url, &STOCK_AND_RESERVATIONS).await;
    scripted_run(&app).await;
    let wanted = outbox(
        &app,
        "stock.changed,reservation.created,reservation.committed,reservation.released",
    )
    .await;
    assert!(wanted.len() > 40);
    wait_for_all(&receiver, &wanted).await;
    let received = receiver.received();
    assert_in_order_per_line(&received);
    let kinds: HashSet<&str> = received.iter().map(|r| r.kind.as_str()).collect();
    assert!(
        !kinds.contains("stock.low") && !kinds.contains("transfer.completed"),
        "only the types asked for"
    );

    let pending = deliveries(&app, dead_id, "status=pending").await;
    let first = pending.items.last().unwrap();
    assert!(
        first.attempts >= 1,
        "the dead endpoint is being retried: {first:?}"
    );
    // The attempt log is the database's JSON, read as such.
    assert_eq!(first.attempt_log[0]["error"], "could not connect");
    app.cleanup().await;
}

#[tokio::test]
async fn a_receiver_that_fails_for_a_while_gets_everything_once_it_recovers() {
    let app = TestApp::spawn_with(&["--webhook-retry-base-ms", "50"]).await;
    let receiver = Receiver::start().await;
    receiver.failing.store(true, Ordering::Release);
    let id = subscribe(&app, &receiver.url, &["stock.changed"]).await;
    scripted_run(&app).await;
    let wanted = outbox(&app, "stock.changed").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.refused.load(Ordering::Acquire) < 10 {
        assert!(tokio::time::Instant::now() < deadline, "attempts were made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver.failing.store(false, Ordering::Release);
    wait_for_all(&receiver, &wanted).await;
    assert_in_order_per_line(&receiver.received());
    // Outcomes are written within moments of the delivery.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let delivered = loop {
        let delivered = deliveries(&app, id, "status=delivered&limit=500").await;
        if delivered.total == wanted.len() as i64 {
            break delivered;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "recorded: {}",
            delivered.total
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let retried = delivered
        .items
        .iter()
        .find(|d| d.attempts > 1)
        .expect("some deliveries needed retries");
    let log = retried.attempt_log.as_array().unwrap();
    assert_eq!(log[0]["status_code"], 500);
    assert_eq!(log.last().unwrap()["status_code"], 200);
    app.cleanup().await;
}

#[tokio::test]
async fn a_delivery_failing_past_its_retry_period_is_failed_and_can_be_retried_by_hand() {
    let app = TestApp::spawn_with(&[
        "--webhook-retry-base-ms",
        "50",
        "--webhook-retry-for-secs",
        "1",
    ])
    .await;
    let receiver = Receiver::start().await;
    receiver.failing.store(true, Ordering::Release);
    let id = subscribe(&app, &receiver.url, &["stock.changed"]).await;
    app.stocked_product(3).await;
    let event = *outbox(&app, "stock.changed").await.last().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let mut failed = deliveries(&app, id, "status=failed").await;
        if failed.total == 1 {
            break failed.items.remove(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delivery was given up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failed.event_id, event);
    assert!(failed.attempts >= 2, "{failed:?}");
    assert!(receiver.received().is_empty());

    let retry = format!("/webhooks/{id}/deliveries/{event}/retry");
    receiver.failing.store(false, Ordering::Release);
    let (status, body) = app.post(&retry, &app.admin, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let pending: Delivery = answer_of(&retry, status, body, StatusCode::ACCEPTED).unwrap();
    assert_eq!(pending.status, "pending");
    wait_for_all(&receiver, &[event]).await;
    let (status, body) = app.post(&retry, &app.admin, json!({})).await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "conflict",
        "only a failed one"
    );
    let (status, _) = app
        .post(
            &format!("/webhooks/{id}/deliveries/1/retry"),
            &app.admin,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.cleanup().await;
}

#[tokio::test]
async fn subscriptions_are_checked_scoped_to_their_shop_and_bounded() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    for (body, field) in [
        (
            json!({ "url": "ftp://example.com/x", "types": ["stock.changed"], "secret": SECRET }),
            "url",
        ),
        (
            json!({ "url": "not a url", "types": ["stock.changed"], "secret": SECRET }),
            "url",
        ),
        (
            json!({ "url": receiver.url, "types": ["stock.nope"], "secret": SECRET }),
            "types",
        ),
        (
            json!({ "url": receiver.url, "types": [], "secret": SECRET }),
            "types",
        ),
        (
            json!({ "url": receiver.url, "types": ["stock.changed"], "secret": "short" }),
            "secret",
        ),
    ] {
        let refusal = app
            .subscribe(&app.admin, body)
            .await
            .refused(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(refusal.details["field"], field, "{refusal:?}");
    }
    // A shop owner subscribes to its own shop only; a customer not at all.
    let (shop, other) = (app.shop("S").await, app.shop("O").await);
    let owner = app
        .member(&app.admin, shop, "owner@example.com", "shop_owner")
        .await;
    let body = |shop_id: Option<i64>| json!({ "url": receiver.url, "types": ["stock.changed"], "secret": SECRET, "shop_id": shop_id });
    let created = app.subscribe(&owner, body(Some(shop))).await.unwrap();
    assert_eq!(created.shop_id, Some(shop));
    for forbidden in [None, Some(other)] {
        let answer = app.subscribe(&owner, body(forbidden)).await;
        answer.refused(StatusCode::FORBIDDEN);
    }
    let (_, customer) = app.customer("c@example.com").await;
    let answer = app.subscribe(&customer, body(None)).await;
    answer.refused(StatusCode::FORBIDDEN);
    for token in [&owner, &app.admin] {
        let listed: List<Webhook> = app
            .call(Method::GET, "/webhooks", token, None)
            .await
            .unwrap();
        assert_eq!(listed.total, 1, "{listed:?}");
    }
    // At most 100 per shop: the 101st is refused, a deletion makes room.
    for _ in 1..100 {
        app.subscribe(&owner, body(Some(shop))).await.unwrap();
    }
    let answer = app.subscribe(&owner, body(Some(shop))).await;
    answer.refused(StatusCode::CONFLICT);
    let path = format!("/webhooks/{}", created.id);
    let (status, _) = app.delete(&path, &owner).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.get(&path, &owner).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.subscribe(&owner, body(Some(shop))).await.unwrap();
    app.cleanup().await;
}

/// Server-side request forgery: a shop owner may not point a webhook at the server's own
/// network, in any spelling; a subscription that does (stored while the rule was lifted)
/// is never called; and another shop's deliveries are neither read nor retried. Before
/// the rule every spelling here was 201 and delivered.
#[tokio::test]
async fn webhooks_never_reach_inside_and_stay_within_their_shop() {
    let open = [
        "--webhook-allow-private",
        "true",
        "--webhook-retry-base-ms",
        "20",
    ];
    let mut app = TestApp::spawn_with(&open).await;
    let receiver = Receiver::start().await;
    let id = subscribe(&app, &receiver.url, &["stock.changed"]).await;
    app.stop().await;
    let closed = [
        "--webhook-allow-private",
        "false",
        "--webhook-retry-base-ms",
        "20",
    ];
    let app = TestApp::start_on_with(&app.database.clone(), &closed).await;

    let shop = app.shop("S").await;
    let owner = app
        .member(&app.admin, shop, "owner@example.com", "shop_owner")
        .await;
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        "http://localhost:5432/".into(),
        "http://[::1]:6379/".into(),
        "http://0.0.0.0:4222/".into(),
        "http://127.1:8080/admin".into(),
        "http://2130706433/".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://[::ffff:127.0.0.1]/".into(),
        "https://10.0.0.1/".into(),
    ] {
        let body =
            json!({ "url": url, "types": ["stock.changed"], "secret": SECRET, "shop_id": shop });
        let refusal = app
            .subscribe(&owner, body)
            .await
            .refused(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            (refusal.code.as_str(), &refusal.details["field"]),
            ("validation_failed", &json!("url")),
            "{url}"
        );
    }

    // The platform's subscription to the loopback receiver is attempted and refused.
    app.stocked_product(3).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let delivery = loop {
        let mut listed = deliveries(&app, id, "").await;
        if listed.items.first().is_some_and(|d| d.attempts >= 2) {
            break listed.items.remove(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = delivery.last_error.as_deref().unwrap_or_default();
    assert!(error.starts_with("refused"), "{delivery:?}");
    assert!(
        receiver.received().is_empty(),
        "nothing reached the loopback"
    );

    // The shop owner cannot read or retry the platform's (or another shop's) deliveries.
    let event = delivery.event_id;
    let answer = app.deliveries(&owner, id, "").await;
    answer.refused(StatusCode::FORBIDDEN);
    let retry = format!("/webhooks/{id}/deliveries/{event}/retry");
    let (status, body) = app.post(&retry, &owner, json!({})).await;
    error_code(status, &body, StatusCode::FORBIDDEN);
    app.cleanup().await;
}

/// The server's process, killed (SIGKILL) when dropped: also when an assertion fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_kill_9_between_commit_and_delivery_loses_no_event() {
    let database = testkit::fresh_database();
    let receiver = Receiver::start().await;
    receiver.failing.store(true, Ordering::Release);
    let env = [
        testkit::ADMIN_ENV[0],
        testkit::ADMIN_ENV[1],
        ("STOCKLINE_WEBHOOK_RETRY_BASE_MS", "50"),
        ("STOCKLINE_WEBHOOK_ALLOW_PRIVATE", "true"),
    ];
    let (child, url) = testkit::start_binary(&database, &env);
    let child = Killed(child);
    let app = TestApp::attach(&url, &database).await;
    subscribe(&app, &receiver.url, &STOCK_AND_RESERVATIONS).await;
    scripted_run(&app).await; // sync: every change is committed when answered
    let wanted = outbox(
        &app,
        "stock.changed,reservation.created,reservation.committed,reservation.released",
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.refused.load(Ordering::Acquire) < 5 {
        assert!(tokio::time::Instant::now() < deadline, "attempts were made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(child); // SIGKILL
    assert!(
        receiver.received().is_empty(),
        "nothing was delivered before the kill"
    );

    receiver.failing.store(false, Ordering::Release);
    let (child, url) = testkit::start_binary(&database, &env);
    let child = Killed(child);
    let app = TestApp::attach(&url, &database).await;
    assert_eq!(
        outbox(
            &app,
            "stock.changed,reservation.created,reservation.committed,reservation.released"
        )
        .await,
        wanted
    );
    wait_for_all(&receiver, &wanted).await;
    assert_in_order_per_line(&receiver.received());
    drop(child);
    testkit::drop_database(&database).await;
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_a_slow_receiver_times_out() {
    let app = TestApp::spawn_with(&[
        "--webhook-timeout-ms",
        "300",
        "--webhook-retry-base-ms",
        "60000",
    ])
    .await;
    let receiver = Receiver::start().await;
    let target = receiver.url.clone();
    let odd = axum::Router::new()
        .route(
            "/moved",
            axum::routing::post(move || {
                let target = target.clone();
                async move { axum::response::Redirect::temporary(&target) }
            }),
        )
        .route(
            "/slow",
            axum::routing::post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                AxumStatus::OK
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, odd).await.unwrap() });
    let moved = subscribe(&app, &format!("{base}/moved"), &["stock.changed"]).await;
    let slow = subscribe(&app, &format!("{base}/slow"), &["stock.changed"]).await;
    app.stocked_product(1).await;
    for (id, expected) in [
        (
            moved,
            json!({ "status_code": 307, "error": "answered 307 Temporary Redirect" }),
        ),
        (slow, json!({ "status_code": null, "error": "timed out" })),
    ] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let attempt = loop {
            let listed = deliveries(&app, id, "").await;
            if let Some(first) = listed.items.first().and_then(|d| d.attempt_log.get(0)) {
                break first.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "an attempt was made"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(attempt["status_code"], expected["status_code"], "{attempt}");
        assert_eq!(attempt["error"], expected["error"], "{attempt}");
    }
    let slow_attempt_ms = deliveries(&app, slow, "").await.items[0].attempt_log[0]["duration_ms"]
        .as_i64()
        .unwrap();
    assert!(
        slow_attempt_ms < 5_000,
        "cut at the timeout: {slow_attempt_ms} ms"
    );
    assert!(
        receiver.received().is_empty(),
        "the redirect's target got nothing"
    );
    app.cleanup().await;
}
