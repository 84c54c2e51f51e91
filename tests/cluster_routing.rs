//! Requests between nodes over the real NATS (127.0.0.1:4222): forwarded to the shard's
//! owner and answered as it answered; no owner gives 503 after brief retries; an owner
//! arriving during the retries is found; stopping waits for the requests taken; two
//! clusters on one NATS never see each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};
use stockline::cluster::routing::{self, RouteSettings, Routes, protocol};
use tokio::sync::Notify;

const NATS: &str = "127.0.0.1:4222";

async fn routes(cluster: &str, retry_for: Duration) -> Routes {
    let client = async_nats::connect(NATS)
        .await
        .expect("NATS runs at 127.0.0.1:4222");
    Routes::new(
        client,
        RouteSettings {
            cluster: cluster.into(),
            retry_for,
            answer_within: Duration::from_secs(5),
        },
    )
}

fn cluster() -> String {
    format!("test{}", uuid::Uuid::now_v7().simple())
}

/// A node's router: echoes what it got, with the node's name.
fn app(node: &'static str, slow: Arc<Notify>, counted: Arc<AtomicUsize>) -> Router {
    let refused = counted.clone();
    Router::new()
        .route(
            "/p/{product}",
            post(
                move |Path(product): Path<i64>,
                      headers: HeaderMap,
                      extensions: axum::http::Extensions,
                      body: String| async move {
                    let key = headers
                        .get("idempotency-key")
                        .map(|v| v.to_str().unwrap().to_owned());
                    (
                        StatusCode::CREATED,
                        [("x-node", node)],
                        axum::Json(json!({
                            "node": node, "product": product, "body": body, "key": key,
                            "forwarded": routing::is_forwarded(&extensions),
                        })),
                    )
                },
            ),
        )
        .route(
            "/slow",
            post(move || async move {
                slow.notify_one();
                tokio::time::sleep(Duration::from_millis(400)).await;
                counted.fetch_add(1, Ordering::SeqCst);
                (StatusCode::OK, "done")
            }),
        )
        .route(
            "/refuse",
            post(move || async move {
                refused.fetch_add(1, Ordering::SeqCst);
                routing::not_owner(9).into_response()
            }),
        )
}

fn request(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header("content-type", "text/plain")
        .header("idempotency-key", "order-77")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

async fn read(response: axum::response::Response) -> (StatusCode, HeaderMap, Value) {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (parts.status, parts.headers, value)
}

#[tokio::test]
async fn a_request_reaches_the_owner_and_its_answer_comes_back_whole() {
    let name = cluster();
    let a = routes(&name, Duration::from_millis(500)).await;
    let b = routes(&name, Duration::from_millis(500)).await;
    a.answer_with(app("a", Arc::default(), Arc::default()));
    a.serve(3).await.unwrap();
    assert_eq!(a.answering(), [3]);

    let (status, headers, body) = read(b.forward(3, request("/p/42?x=1", "hello")).await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["x-node"], "a");
    assert_eq!(
        body,
        json!({"node": "a", "product": 42, "body": "hello", "key": "order-77", "forwarded": true})
    );
    a.stop_all().await;
}

#[tokio::test]
async fn a_call_for_a_shard_this_node_answers_stays_here_and_any_other_goes_to_its_owner() {
    let name = cluster();
    let a = routes(&name, Duration::from_millis(500)).await;
    let b = routes(&name, Duration::from_millis(500)).await;
    a.answer_with(app("a", Arc::default(), Arc::default()));
    b.answer_with(app("b", Arc::default(), Arc::default()));
    a.serve(3).await.unwrap();
    b.serve(4).await.unwrap();
    // Shard 3 is a's own: its router answers, marked as a node's request.
    let (status, headers, body) = read(a.call(3, request("/p/42", "mine")).await).await;
    assert_eq!(
        (status, &headers["x-node"]),
        (StatusCode::CREATED, &"a".parse().unwrap())
    );
    assert_eq!(body["forwarded"], json!(true), "marked as a node's request");
    let (_, headers, body) = read(a.call(4, request("/p/43", "theirs")).await).await;
    assert_eq!(headers["x-node"], "b");
    assert_eq!(body["body"], json!("theirs"));
    a.stop_all().await;
    b.stop_all().await;
}

#[tokio::test]
async fn a_shard_without_owner_answers_503_with_retry_after_once_the_retries_run_out() {
    let name = cluster();
    let b = routes(&name, Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let (status, headers, body) = read(b.forward(4, request("/p/1", "x")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shard 4")
    );
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "it did not retry"
    );
}

#[tokio::test]
async fn an_owner_that_subscribes_during_the_retries_gets_the_request() {
    let name = cluster();
    let a = Arc::new(routes(&name, Duration::from_secs(3)).await);
    let b = routes(&name, Duration::from_secs(3)).await;
    a.answer_with(app("a", Arc::default(), Arc::default()));
    let late = a.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        late.serve(5).await.unwrap();
    });
    let (status, _, body) = read(b.forward(5, request("/p/5", "late")).await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["node"], "a");
    a.stop_all().await;
}

#[tokio::test]
async fn stopping_answers_what_was_taken_first_and_then_the_shard_has_no_responder() {
    let name = cluster();
    let slow = Arc::new(Notify::new());
    let finished = Arc::new(AtomicUsize::new(0));
    let a = Arc::new(routes(&name, Duration::from_millis(200)).await);
    let b = Arc::new(routes(&name, Duration::from_millis(200)).await);
    a.answer_with(app("a", slow.clone(), finished.clone()));
    a.serve(6).await.unwrap();
    let asking = b.clone();
    let taken =
        tokio::spawn(async move { read(asking.forward(6, request("/slow", "")).await).await });
    slow.notified().await;
    // The owner hands the shard off while the request is being answered.
    a.stop(6).await;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "stop returned before the request it took was answered"
    );
    let (status, _, body) = taken.await.unwrap();
    assert_eq!((status, body), (StatusCode::OK, json!("done")));
    assert!(a.answering().is_empty());
    let (status, _, _) = read(b.forward(6, request("/p/6", "")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_node_that_no_longer_serves_the_shard_is_retried_not_relayed() {
    let name = cluster();
    let refused = Arc::new(AtomicUsize::new(0));
    let a = routes(&name, Duration::from_millis(400)).await;
    let b = routes(&name, Duration::from_millis(400)).await;
    a.answer_with(app("a", Arc::default(), refused.clone()));
    a.serve(9).await.unwrap();
    let (status, _, body) = read(b.forward(9, request("/refuse", "")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no owner right now")
    );
    assert!(refused.load(Ordering::SeqCst) >= 2, "not retried");
    a.stop_all().await;
}

#[tokio::test]
async fn two_clusters_on_one_nats_never_see_each_other() {
    let (one, two) = (cluster(), cluster());
    let a = routes(&one, Duration::from_millis(200)).await;
    let other = routes(&two, Duration::from_millis(200)).await;
    a.answer_with(app("a", Arc::default(), Arc::default()));
    a.serve(7).await.unwrap();
    let (status, _, _) = read(other.forward(7, request("/p/7", "")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    a.stop_all().await;
}

#[path = "common/proxy.rs"]
mod proxy;

/// The owner's connection to NATS is cut: requests for its shard answer 503 at once (no
/// responders), not after a hang; the owner knows it is cut off (so it renews no lease);
/// once the connection is back, it answers again by itself.
#[tokio::test]
async fn an_owner_cut_off_from_nats_gives_503_and_answers_again_once_back() {
    let name = cluster();
    let nats = proxy::Proxy::start(NATS).await;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(format!("nats://127.0.0.1:{}", nats.port))
        .await
        .unwrap();
    let owner = Routes::new(
        client,
        RouteSettings {
            cluster: name.clone(),
            retry_for: Duration::from_millis(300),
            answer_within: Duration::from_secs(5),
        },
    );
    owner.answer_with(app("a", Arc::default(), Arc::default()));
    owner.serve(11).await.unwrap();
    let edge = routes(&name, Duration::from_millis(300)).await;
    assert_eq!(
        read(edge.forward(11, request("/p/11", "")).await).await.0,
        StatusCode::CREATED
    );
    assert!(owner.connected());

    nats.cut();
    // A request racing the cut may still be routed to the dying subscription: it waits
    // for the answer timeout, then 503, never longer.
    let (status, headers, _) = read(edge.forward(11, request("/p/11", "")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    let mut waited = Duration::ZERO;
    while owner.connected() {
        assert!(
            waited < Duration::from_secs(10),
            "the owner never noticed the cut"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    // Once the server has dropped the owner, there is no responder: 503 after the brief
    // retries.
    let started = std::time::Instant::now();
    let (status, _, _) = read(edge.forward(11, request("/p/11", "")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    nats.restore();
    let mut waited = Duration::ZERO;
    loop {
        let (status, _, body) = read(edge.forward(11, request("/p/11", "")).await).await;
        if status == StatusCode::CREATED {
            assert_eq!(body["node"], "a");
            break;
        }
        assert!(waited < Duration::from_secs(20), "never answered again");
        tokio::time::sleep(Duration::from_millis(200)).await;
        waited += Duration::from_millis(500);
    }
    assert!(owner.connected());
    owner.stop_all().await;
}

/// What a node serves typed operations with, in these tests: doubles a number, for the
/// shards in `mine`; counts what it was asked.
struct Doubler {
    mine: Vec<u16>,
    asked: Arc<AtomicUsize>,
}

impl protocol::Operations for Doubler {
    fn serve(&self, shard: u16, payload: bytes::Bytes) -> protocol::Served {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let mine = self.mine.contains(&shard);
        Box::pin(async move {
            if !mine {
                return None;
            }
            Some(match protocol::decode::<u64>(&payload) {
                Ok(n) => protocol::answer(&(n * 2)),
                Err(refusal) => refusal,
            })
        })
    }
}

fn doubler(mine: &[u16], asked: &Arc<AtomicUsize>) -> Arc<dyn protocol::Operations> {
    Arc::new(Doubler {
        mine: mine.to_vec(),
        asked: asked.clone(),
    })
}

#[tokio::test]
async fn a_typed_operation_reaches_the_owner_and_its_typed_answer_comes_back() {
    let name = cluster();
    let asked = Arc::new(AtomicUsize::new(0));
    let a = routes(&name, Duration::from_millis(500)).await;
    let b = routes(&name, Duration::from_millis(500)).await;
    a.operate_with(doubler(&[5], &asked));
    // Typed operations and forwarded HTTP requests share the shard's subject.
    a.answer_with(app("a", Arc::default(), Arc::default()));
    a.serve(5).await.unwrap();

    let reply = b.ask(5, protocol::encode(&21u64)).await.unwrap();
    assert_eq!(protocol::read_answer::<u64>(&reply).unwrap(), 42);
    let (status, headers, _) = read(b.forward(5, request("/p/7", "http")).await).await;
    assert_eq!(
        (status, &headers["x-node"]),
        (StatusCode::CREATED, &"a".parse().unwrap())
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "the HTTP request went to the router"
    );
    a.stop_all().await;
}

#[tokio::test]
async fn an_owner_that_gave_the_shard_up_is_asked_again_then_no_owner() {
    let name = cluster();
    let asked = Arc::new(AtomicUsize::new(0));
    let a = routes(&name, Duration::from_millis(400)).await;
    let b = routes(&name, Duration::from_millis(400)).await;
    // Subscribed to 6, but its service no longer serves it.
    a.operate_with(doubler(&[], &asked));
    a.serve(6).await.unwrap();
    let unreached = b.ask(6, protocol::encode(&1u64)).await.unwrap_err();
    assert!(
        matches!(unreached, routing::Unreached::NoOwner(6)),
        "{unreached:?}"
    );
    assert!(asked.load(Ordering::SeqCst) >= 2, "not retried");
    // Nobody on 8 at all: no responders, the same answer.
    let unreached = b.ask(8, protocol::encode(&1u64)).await.unwrap_err();
    assert!(matches!(unreached, routing::Unreached::NoOwner(8)));
    a.stop_all().await;
}

#[tokio::test]
async fn an_operation_of_another_version_is_refused_naming_the_version_the_owner_speaks() {
    let name = cluster();
    let a = routes(&name, Duration::from_millis(400)).await;
    a.operate_with(doubler(&[2], &Arc::default()));
    a.serve(2).await.unwrap();
    // What a node of the next version would send.
    let client = async_nats::connect(NATS).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(protocol::OPERATION, "2");
    let mut payload = postcard_varint(protocol::VERSION + 1);
    payload.push(21);
    let reply = client
        .request_with_headers(a.subject(2), headers, payload.into())
        .await
        .unwrap();
    assert_eq!(
        protocol::read_answer::<u64>(&reply.payload).unwrap_err(),
        protocol::Refused::Version {
            asked: protocol::VERSION + 1,
            speaks: protocol::VERSION
        }
    );
    a.stop_all().await;
}

/// A small number as postcard writes it (one byte below 128).
fn postcard_varint(n: u16) -> Vec<u8> {
    assert!(n < 128);
    vec![n as u8]
}
