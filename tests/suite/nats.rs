//! Events to NATS (the machine's server at 127.0.0.1:4222), and a NATS outage, made by a
//! TCP proxy between the server and NATS that the test cuts.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::TestApp;
use testkit::proxy::Proxy;

const NATS: &str = "127.0.0.1:4222";

/// Every event id in the outbox.
async fn outbox(app: &TestApp) -> BTreeSet<i64> {
    let (status, body) = app.get("/events?limit=500", &app.admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

/// Collects event ids from `subscriber` until it has every one of `wanted`.
async fn receive_all(
    subscriber: &mut async_nats::Subscriber,
    wanted: &BTreeSet<i64>,
    got: &mut BTreeSet<i64>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !wanted.is_subset(got) {
        let message = tokio::time::timeout_at(deadline, subscriber.next())
            .await
            .unwrap_or_else(|_| panic!("missing {:?}", wanted.difference(got).collect::<Vec<_>>()))
            .unwrap();
        let event: Value = serde_json::from_slice(&message.payload).unwrap();
        let id = event["id"].as_i64().unwrap();
        assert_eq!(
            message.subject.as_str(),
            format!("stockline.events.{}", event["type"].as_str().unwrap())
        );
        assert_eq!(
            message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned()),
            Some(id.to_string())
        );
        got.insert(id);
    }
}

/// A subscriber of its own on every event subject, unique to this test's run.
async fn subscriber() -> (async_nats::Client, async_nats::Subscriber) {
    let client = async_nats::connect(NATS)
        .await
        .expect("NATS runs at 127.0.0.1:4222");
    let subscriber = client.subscribe("stockline.events.>").await.unwrap();
    client.flush().await.unwrap();
    (client, subscriber)
}

async fn some_changes(app: &TestApp, product: i64, warehouse: i64) {
    for _ in 0..5 {
        let (status, r) = app.reserve(product, 1).await;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        let (status, _) = app
            .post(
                &format!("/reservations/{}/commit", r["id"].as_str().unwrap()),
                &app.admin,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    app.stock(warehouse, product, 3).await;
}

#[tokio::test]
async fn every_event_is_published_to_its_subject_once_written() {
    let _turn = testkit::EVENTS_ON_NATS.lock().await;
    let (_client, mut subscriber) = subscriber().await;
    let url = format!("nats://{NATS}");
    let app = TestApp::spawn_with(&["--nats-url", &url]).await;
    let (product, warehouse) = app.stocked_product(10).await;
    some_changes(&app, product, warehouse).await;
    let wanted = outbox(&app).await;
    assert!(wanted.len() >= 17);
    let mut got = BTreeSet::new();
    receive_all(&mut subscriber, &wanted, &mut got).await;
    let published = |scrape: &str| {
        scrape
            .lines()
            .find_map(|l| l.strip_prefix("stockline_nats_events_published_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while published(&app.metrics().await) < wanted.len() as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the counter counts them"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.cleanup().await;
}

#[tokio::test]
async fn a_nats_outage_never_blocks_stock_changes_and_the_events_go_out_once_it_is_back() {
    let _turn = testkit::EVENTS_ON_NATS.lock().await;
    let (_client, mut subscriber) = subscriber().await;
    let proxy = Proxy::start(NATS).await;
    let url = format!("nats://127.0.0.1:{}", proxy.port);
    let app = TestApp::spawn_with(&["--nats-url", &url]).await;
    let (product, warehouse) = app.stocked_product(10).await;
    let mut got = BTreeSet::new();
    receive_all(&mut subscriber, &outbox(&app).await, &mut got).await;

    proxy.cut();
    let started = std::time::Instant::now();
    some_changes(&app, product, warehouse).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stock changes went on while NATS was away"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wanted = outbox(&app).await;
    proxy.restore();
    receive_all(&mut subscriber, &wanted, &mut got).await;
    app.cleanup().await;
}
