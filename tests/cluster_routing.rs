//! Requests between nodes over the real NATS (127.0.0.1:4222), typed operations of the
//! shard protocol: they reach the shard's owner and its answer comes back; no owner gives
//! up after brief retries; an owner arriving during the retries is found; stopping waits
//! for the requests taken; two clusters on one NATS never see each other; an operation
//! of another version is refused, naming the version the owner speaks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stockline::cluster::routing::{RouteSettings, Routes, Unreached, protocol};
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

/// The number that makes [`Node`] slow: it says it started, takes 400 ms, then counts.
const SLOW: u64 = 1_000;

/// What a node serves typed operations with, in these tests: answers its name and twice
/// the number it was sent, for the shards in `mine`; counts what it was asked.
struct Node {
    name: &'static str,
    mine: Vec<u16>,
    asked: Arc<AtomicUsize>,
    slow: Arc<Notify>,
    finished: Arc<AtomicUsize>,
}

impl protocol::Operations for Node {
    fn serve(&self, shard: u16, payload: bytes::Bytes) -> protocol::Served {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let mine = self.mine.contains(&shard);
        let (name, slow, finished) = (self.name, self.slow.clone(), self.finished.clone());
        Box::pin(async move {
            if !mine {
                return None;
            }
            let n = match protocol::decode::<u64>(&payload) {
                Ok(n) => n,
                Err(refusal) => return Some(refusal),
            };
            if n == SLOW {
                slow.notify_one();
                tokio::time::sleep(Duration::from_millis(400)).await;
                finished.fetch_add(1, Ordering::SeqCst);
            }
            Some(protocol::answer(&(name.to_owned(), n * 2)))
        })
    }
}

fn node(name: &'static str, mine: &[u16]) -> Arc<Node> {
    Arc::new(Node {
        name,
        mine: mine.to_vec(),
        asked: Arc::default(),
        slow: Arc::default(),
        finished: Arc::default(),
    })
}

/// Asks `n` of shard `shard`'s owner through `routes`: who answered, and what.
async fn ask(routes: &Routes, shard: u16, n: u64) -> Result<(String, u64), Unreached> {
    let reply = routes.ask(shard, protocol::encode(&n)).await?;
    Ok(protocol::read_answer(&reply).expect("an answer of this version"))
}

#[tokio::test]
async fn a_typed_operation_reaches_the_owner_and_its_typed_answer_comes_back() {
    let name = cluster();
    let a = routes(&name, Duration::from_millis(500)).await;
    let b = routes(&name, Duration::from_millis(500)).await;
    let owner = node("a", &[5]);
    a.operate_with(owner.clone());
    a.serve(5).await.unwrap();
    assert_eq!(ask(&b, 5, 21).await.unwrap(), ("a".to_owned(), 42));
    assert_eq!(
        ask(&a, 5, 4).await.unwrap(),
        ("a".to_owned(), 8),
        "from itself too"
    );
    assert_eq!(owner.asked.load(Ordering::SeqCst), 2);
    a.stop_all().await;
}

#[tokio::test]
async fn an_owner_that_gave_the_shard_up_is_asked_again_then_no_owner() {
    let name = cluster();
    let a = routes(&name, Duration::from_millis(400)).await;
    let b = routes(&name, Duration::from_millis(400)).await;
    // Subscribed to 6, but its service no longer serves it.
    let gone = node("a", &[]);
    a.operate_with(gone.clone());
    a.serve(6).await.unwrap();
    let unreached = ask(&b, 6, 1).await.unwrap_err();
    assert!(matches!(unreached, Unreached::NoOwner(6)), "{unreached:?}");
    assert!(gone.asked.load(Ordering::SeqCst) >= 2, "not retried");
    // Nobody on 8 at all: no responders, the same answer, once the retries ran out.
    let started = Instant::now();
    let unreached = ask(&b, 8, 1).await.unwrap_err();
    assert!(matches!(unreached, Unreached::NoOwner(8)));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    a.stop_all().await;
}

#[tokio::test]
async fn an_owner_that_subscribes_during_the_retries_gets_the_request() {
    let name = cluster();
    let a = Arc::new(routes(&name, Duration::from_secs(3)).await);
    let b = routes(&name, Duration::from_secs(3)).await;
    a.operate_with(node("a", &[5]));
    let late = a.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        late.serve(5).await.unwrap();
    });
    assert_eq!(ask(&b, 5, 1).await.unwrap(), ("a".to_owned(), 2));
    a.stop_all().await;
}

#[tokio::test]
async fn stopping_answers_what_was_taken_first_and_then_the_shard_has_no_responder() {
    let name = cluster();
    let a = Arc::new(routes(&name, Duration::from_millis(200)).await);
    let b = Arc::new(routes(&name, Duration::from_millis(200)).await);
    let owner = node("a", &[6]);
    a.operate_with(owner.clone());
    a.serve(6).await.unwrap();
    let asking = b.clone();
    let taken = tokio::spawn(async move { ask(&asking, 6, SLOW).await });
    owner.slow.notified().await;
    // The owner hands the shard off while the request is being answered.
    a.stop(6).await;
    assert_eq!(
        owner.finished.load(Ordering::SeqCst),
        1,
        "stop returned before the request it took was answered"
    );
    assert_eq!(taken.await.unwrap().unwrap(), ("a".to_owned(), 2 * SLOW));
    assert!(a.answering().is_empty());
    assert!(matches!(ask(&b, 6, 1).await, Err(Unreached::NoOwner(6))));
}

#[tokio::test]
async fn two_clusters_on_one_nats_never_see_each_other() {
    let (one, two) = (cluster(), cluster());
    let a = routes(&one, Duration::from_millis(200)).await;
    let other = routes(&two, Duration::from_millis(200)).await;
    let owner = node("a", &[7]);
    a.operate_with(owner.clone());
    a.serve(7).await.unwrap();
    assert!(matches!(
        ask(&other, 7, 1).await,
        Err(Unreached::NoOwner(7))
    ));
    assert_eq!(owner.asked.load(Ordering::SeqCst), 0);
    a.stop_all().await;
}

#[path = "common/proxy.rs"]
mod proxy;

/// The owner's connection to NATS is cut: requests for its shard fail at once or after
/// the answer timeout (no responders), not after a hang; the owner knows it is cut off
/// (so it renews no lease); once the connection is back, it answers again by itself.
#[tokio::test]
async fn an_owner_cut_off_from_nats_is_unreached_and_answers_again_once_back() {
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
    owner.operate_with(node("a", &[11]));
    owner.serve(11).await.unwrap();
    let edge = routes(&name, Duration::from_millis(300)).await;
    assert_eq!(ask(&edge, 11, 1).await.unwrap().0, "a");
    assert!(owner.connected());

    nats.cut();
    // A request racing the cut may still be routed to the dying subscription: it waits
    // for the answer timeout, then gives up, never longer.
    assert!(ask(&edge, 11, 1).await.is_err());
    let mut waited = Duration::ZERO;
    while owner.connected() {
        assert!(
            waited < Duration::from_secs(10),
            "the owner never noticed the cut"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    // The owner refuses to ask while cut off (nothing it sent could land later).
    assert!(matches!(ask(&owner, 11, 1).await, Err(Unreached::CutOff)));
    // Once the server has dropped the owner, there is no responder: given up after the
    // brief retries.
    let started = Instant::now();
    assert!(matches!(
        ask(&edge, 11, 1).await,
        Err(Unreached::NoOwner(11))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    nats.restore();
    let mut waited = Duration::ZERO;
    loop {
        if let Ok((node, _)) = ask(&edge, 11, 1).await {
            assert_eq!(node, "a");
            break;
        }
        assert!(waited < Duration::from_secs(20), "never answered again");
        tokio::time::sleep(Duration::from_millis(200)).await;
        waited += Duration::from_millis(500);
    }
    assert!(owner.connected());
    owner.stop_all().await;
}

#[tokio::test]
async fn an_operation_of_another_version_is_refused_naming_the_version_the_owner_speaks() {
    let name = cluster();
    let a = routes(&name, Duration::from_millis(400)).await;
    a.operate_with(node("a", &[2]));
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
        protocol::read_answer::<(String, u64)>(&reply.payload).unwrap_err(),
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
