//! Events and webhooks in cluster mode: every node's changes read through any node in one
//! order that never skips, live on a stream of another node, and delivered to a webhook
//! made through yet another, also after the node that delivers is killed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{ONE_AT_A_TIME, SETTLE_WITHIN, a_product_per_node, reserve_through};
use testkit::cluster::Nodes;

/// Reservations each of the three writers makes (one node each).
const PER_WRITER: usize = 40;

/// Three nodes with the shards shared out, extra settings on each, and one product owned
/// by each node, stocked in one warehouse: (nodes, products, an operator's token).
async fn cluster_with_a_product_per_node(settings: &[(&str, &str)]) -> (Nodes, Vec<i64>, String) {
    let (nodes, products, _) = a_product_per_node(settings, 10_000).await;
    let operator = nodes.app(0).operator("events@stockline.test").await;
    (nodes, products, operator)
}

/// `reservation.created` events after `after` through `node`: (event id, reservation id).
async fn created_after(nodes: &Nodes, node: usize, after: i64) -> Vec<(i64, String)> {
    let app = nodes.app(node);
    let (status, body) = app
        .get(
            &format!("/events?after={after}&types=reservation.created&limit=50"),
            &app.admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let id = e["id"].as_i64().unwrap();
            (id, e["data"]["id"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// The `reservation.created` events of a stream, until `count` came or it was quiet for
/// 20 s: (event id, reservation id).
async fn streamed(response: reqwest::Response, count: usize) -> Vec<(i64, String)> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while events.len() < count {
        let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(20), body.next()).await
        else {
            break;
        };
        buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let data: String = block
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if let Ok(event) = serde_json::from_str::<Value>(&data)
                && event["type"] == "reservation.created"
            {
                let id = event["id"].as_i64().unwrap();
                events.push((id, event["data"]["id"].as_str().unwrap().to_owned()));
            }
        }
    }
    events
}

/// Three writers, one through each node, reserve products owned by every node, so that
/// each node's flusher writes events at once; meanwhile a reader pages `GET /events` with
/// `after` through a node, as an integrator does, and a stream is open on a third. The
/// reader and the stream each get every acknowledged reservation's `reservation.created`
/// exactly once, ids only rising, in the same order. (With ids made of each node's journal
/// numbers, a reader past one node's newest skips another node's later commits.)
#[tokio::test]
async fn every_node_s_events_are_read_through_any_node_in_one_order_that_skips_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nodes, products, operator) = cluster_with_a_product_per_node(&[]).await;
    let nodes = Arc::new(nodes);
    let stream = nodes
        .app(2)
        .client
        .get(format!(
            "{}/api/v1/events/stream?types=reservation.created",
            nodes.app(2).base
        ))
        .bearer_auth(&nodes.app(2).admin)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let streamed = tokio::spawn(streamed(stream, 3 * PER_WRITER));
    let writers: Vec<_> = (0..3)
        .map(|node| {
            let (nodes, products, operator) = (nodes.clone(), products.clone(), operator.clone());
            tokio::spawn(async move {
                let mut made = Vec::new();
                for i in 0..PER_WRITER {
                    let product = products[(node + i) % products.len()];
                    made.push(
                        reserve_through(&nodes, node, &operator, product)
                            .await
                            .to_string(),
                    );
                }
                made
            })
        })
        .collect();
    // The reader pages while the writers write.
    let mut read: Vec<(i64, String)> = Vec::new();
    let mut after = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let acknowledged: HashSet<String> = loop {
        let page = created_after(&nodes, 1, after).await;
        if let Some(last) = page.last() {
            after = last.0;
        }
        read.extend(page);
        if writers.iter().all(|w| w.is_finished()) {
            let mut all = HashSet::new();
            for writer in writers {
                all.extend(writer.await.unwrap());
            }
            break all;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(acknowledged.len(), 3 * PER_WRITER);
    while read.len() < acknowledged.len() && Instant::now() < deadline {
        let page = created_after(&nodes, 1, after).await;
        if let Some(last) = page.last() {
            after = last.0;
        }
        read.extend(page);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<i64> = read.iter().map(|(id, _)| *id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids only rise: {ids:?}"
    );
    let reservations: HashSet<String> = read.iter().map(|(_, r)| r.clone()).collect();
    assert_eq!(read.len(), reservations.len(), "none read twice");
    assert_eq!(
        reservations, acknowledged,
        "every acknowledged one read once, none skipped"
    );
    // What a reader who starts now from 0 gets is what the reader got as they were made.
    let mut again = Vec::new();
    let mut from = 0;
    loop {
        let page = created_after(&nodes, 0, from).await;
        let Some(last) = page.last() else { break };
        from = last.0;
        again.extend(page);
    }
    assert_eq!(
        again, read,
        "the same order read later through another node"
    );
    let live = streamed.await.unwrap();
    assert_eq!(
        live, read,
        "the stream of a third node tells the same, in the same order"
    );
    Arc::into_inner(nodes).unwrap().stop().await;
}

/// A webhook receiver on loopback: the reservation ids of the `reservation.created`
/// events it was sent.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let kept = kept.clone();
            async move {
                let event: Value = serde_json::from_str(&body).unwrap();
                if event["type"] == "reservation.created" {
                    let id = event["data"]["id"].as_str().unwrap().to_owned();
                    kept.lock().unwrap().push(id);
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

/// Waits at most `within` until `got` holds every one of `ids`.
async fn delivered(got: &Mutex<Vec<String>>, ids: &[String], within: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        let seen: HashSet<String> = got.lock().unwrap().iter().cloned().collect();
        if ids.iter().all(|id| seen.contains(id)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// One reservation of each of `products` through each of `through`: their ids.
async fn reserve_each(
    nodes: &Nodes,
    through: &[usize],
    operator: &str,
    products: &[i64],
) -> Vec<String> {
    let mut made = Vec::new();
    for &node in through {
        for &product in products {
            made.push(
                reserve_through(nodes, node, operator, product)
                    .await
                    .to_string(),
            );
        }
    }
    made
}

/// A webhook for `reservation.created` to `url`, made through `node`.
async fn subscribe(nodes: &Nodes, node: usize, url: &str) {
    let app = nodes.app(node);
    let (status, body) = app
        .post(
            "/webhooks",
            &app.admin,
            json!({ "url": url, "types": ["reservation.created"], "secret": "a-secret-of-some-length" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// The node whose log says it delivers webhooks now (the last to say so).
fn leader(nodes: &Nodes) -> usize {
    let said = |node: usize| {
        let log = std::env::temp_dir().join(format!(
            "{}-{}-{node}.log",
            nodes.cluster, nodes.nodes[node].id
        ));
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("this node numbers events, delivers webhooks")
    };
    let leading: Vec<usize> = (0..nodes.nodes.len())
        .filter(|&n| !nodes.nodes[n].killed && said(n))
        .collect();
    assert_eq!(leading.len(), 1, "one node leads: {leading:?}");
    leading[0]
}

/// The reservation ids of the `reservation.created` events published to NATS, as they come.
async fn nats_receiver() -> Arc<Mutex<Vec<String>>> {
    let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
    let mut subscriber = client
        .subscribe("stockline.events.reservation.created")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = got.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Some(message) = subscriber.next().await {
            let event: Value = serde_json::from_slice(&message.payload).unwrap();
            if let Some(id) = event["data"]["id"].as_str() {
                kept.lock().unwrap().push(id.to_owned());
            }
        }
    });
    got
}

/// A webhook made through one node gets the events of reservations made through every
/// node, delivered by whichever node leads, and NATS gets them too; once that node is
/// killed -9 another takes the lead and the events made after arrive at both.
#[tokio::test]
async fn a_webhook_made_through_one_node_gets_every_node_s_events_and_outlives_its_deliverer() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _nats = testkit::EVENTS_ON_NATS.lock().await;
    let published = nats_receiver().await;
    let (mut nodes, products, operator) = cluster_with_a_product_per_node(&[
        ("STOCKLINE_WEBHOOK_ALLOW_PRIVATE", "true"),
        ("STOCKLINE_NATS_URL", "nats://127.0.0.1:4222"),
    ])
    .await;
    let (url, got) = receiver().await;
    subscribe(&nodes, 1, &url).await;
    let made = reserve_each(&nodes, &[0, 1, 2], &operator, &products).await;
    assert!(
        delivered(&got, &made, Duration::from_secs(30)).await,
        "every node's events delivered: {made:?}, got {:?}",
        got.lock().unwrap()
    );
    assert!(
        delivered(&published, &made, Duration::from_secs(30)).await,
        "every node's events published to NATS"
    );
    let killed = leader(&nodes);
    nodes.kill(killed);
    let live: Vec<usize> = (0..3).filter(|&n| n != killed).collect();
    nodes.wait_shared(&live, SETTLE_WITHIN).await;
    let after = reserve_each(&nodes, &live, &operator, &products).await;
    assert!(
        delivered(&got, &after, Duration::from_secs(30)).await,
        "delivered after the deliverer died: {after:?}, got {:?}",
        got.lock().unwrap()
    );
    assert!(
        delivered(&published, &after, Duration::from_secs(30)).await,
        "published to NATS after the publisher died"
    );
    assert_ne!(leader(&nodes), killed);
    nodes.stop().await;
}

/// A node paused while it delivers (SIGSTOP, a zombie) holds webhooks up for seconds, not
/// for as long as it stays paused: its session ends after five idle seconds, another node
/// takes the lead, and what is made meanwhile arrives.
#[tokio::test]
async fn a_paused_deliverer_loses_the_lead_and_what_is_made_meanwhile_arrives() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nodes, products, operator) =
        cluster_with_a_product_per_node(&[("STOCKLINE_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    let (url, got) = receiver().await;
    subscribe(&nodes, 0, &url).await;
    let made = reserve_each(&nodes, &[0, 1, 2], &operator, &products[..1]).await;
    assert!(delivered(&got, &made, Duration::from_secs(30)).await);
    let paused = leader(&nodes);
    nodes.signal(paused, libc::SIGSTOP);
    let live: Vec<usize> = (0..3).filter(|&n| n != paused).collect();
    nodes.wait_shared(&live, SETTLE_WITHIN).await;
    let meanwhile = reserve_each(&nodes, &live, &operator, &products).await;
    let arrived = delivered(&got, &meanwhile, Duration::from_secs(30)).await;
    nodes.signal(paused, libc::SIGCONT);
    assert!(
        arrived,
        "delivered while the deliverer was paused: {meanwhile:?}, got {:?}",
        got.lock().unwrap()
    );
    nodes.stop().await;
}
