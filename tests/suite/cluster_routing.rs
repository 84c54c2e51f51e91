//! Requests between nodes over the real NATS (127.0.0.1:4222), typed operations of the
//! shard protocol: they reach the shard's owner and its answer comes back; no owner gives
//! up after brief retries; an owner arriving during the retries is found; stopping waits
//! for the requests taken; two clusters on one NATS never see each other; an operation
//! of another version is refused, naming the version the owner speaks. Once an owner is
//! known, operations for it travel together, at most so many in flight; one whose shard
//! moved, or whose owner is gone, finds the new owner, served once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use stockline::cluster::routing::{RouteSettings, Routes, Unreached, protocol};
use tokio::sync::Notify;

const NATS: &str = "127.0.0.1:4222";

/// A node ordinal no other routes of this test binary have.
fn next_node() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

async fn routes(cluster: &str, retry_for: Duration) -> Routes {
    routes_as(cluster, next_node(), retry_for, Duration::from_secs(5)).await
}

/// Routes of node `node` (an ordinal), waiting `answer_within` for an answer.
async fn routes_as(
    cluster: &str,
    node: u16,
    retry_for: Duration,
    answer_within: Duration,
) -> Routes {
    let client = async_nats::connect(NATS)
        .await
        .expect("NATS runs at 127.0.0.1:4222");
    Routes::new(
        client,
        RouteSettings {
            cluster: cluster.into(),
            node,
            retry_for,
            answer_within,
        },
    )
}

fn cluster() -> String {
    format!("test{}", uuid::Uuid::now_v7().simple())
}

/// The number that makes [`Node`] slow: it says it started, takes 400 ms, then counts.
const SLOW: u64 = 1_000;

/// From this number on, [`Node`] takes 20 ms to answer.
const BUSY: u64 = 10_000;

/// What a node serves typed operations with, in these tests: answers its name and twice
/// the number it was sent, for the shards in `mine`; counts what it was asked.
struct Node {
    name: &'static str,
    mine: Vec<u16>,
    asked: Arc<AtomicUsize>,
    slow: Arc<Notify>,
    finished: Arc<AtomicUsize>,
    /// Operations being served now, and the most at once.
    serving: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    /// What it says of how long it serves its shards.
    owned_for: std::sync::Mutex<Duration>,
    /// Set, it answers nothing (as a paused process).
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl protocol::Operations for Node {
    fn serve(&self, shard: u16, payload: bytes::Bytes) -> protocol::Served {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let mine = self.mine.contains(&shard);
        let (name, slow, finished) = (self.name, self.slow.clone(), self.finished.clone());
        let (serving, most) = (self.serving.clone(), self.most.clone());
        let frozen = self.frozen.clone();
        Box::pin(async move {
            if !mine {
                return None;
            }
            while frozen.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let n = match protocol::decode::<u64>(&payload) {
                Ok(n) => n,
                Err(refusal) => return Some(refusal),
            };
            let now = serving.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            if n == SLOW {
                slow.notify_one();
                tokio::time::sleep(Duration::from_millis(400)).await;
                finished.fetch_add(1, Ordering::SeqCst);
            } else if n >= BUSY {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            serving.fetch_sub(1, Ordering::SeqCst);
            Some(protocol::answer(&(name.to_owned(), n * 2)))
        })
    }

    fn serving_for(&self, shard: u16) -> Option<Duration> {
        self.mine
            .contains(&shard)
            .then_some(*self.owned_for.lock().unwrap())
    }
}

fn node(name: &'static str, mine: &[u16]) -> Arc<Node> {
    Arc::new(Node {
        name,
        mine: mine.to_vec(),
        asked: Arc::default(),
        slow: Arc::default(),
        finished: Arc::default(),
        serving: Arc::default(),
        most: Arc::default(),
        owned_for: std::sync::Mutex::new(Duration::from_secs(60)),
        frozen: Arc::default(),
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

/// `serve` and `stop` return once the NATS server has the subscription made or ended: a
/// node that asks at once is answered on its first message, and after the owner stopped
/// whole, its batch subject has no responder at once (nothing sent there is dropped).
#[tokio::test]
async fn a_shard_served_or_left_is_so_for_every_node_the_moment_it_returns() {
    let name = cluster();
    let b = routes(&name, Duration::from_millis(100)).await;
    for round in 0..40u16 {
        let a = routes(&name, Duration::from_secs(2)).await;
        let shard = 100 + round;
        a.operate_with(node("a", &[shard]));
        a.serve(shard).await.unwrap();
        let (asked, messages) = b.hop_counts();
        assert_eq!(ask(&b, shard, 1).await.unwrap().0, "a");
        assert_eq!(
            b.hop_counts(),
            (asked + 1, messages + 1),
            "round {round}: the first ask found no responder and was sent again"
        );
        a.stop_all().await;
        // b still holds a's word: the batch finds no responder and the shard's subject
        // none either, at once rather than after a timeout.
        let refused = tokio::time::timeout(Duration::from_secs(2), ask(&b, shard, 2)).await;
        assert!(
            matches!(refused, Ok(Err(Unreached::NoOwner(s))) if s == shard),
            "round {round}: {refused:?}"
        );
    }
    b.stop_all().await;
}

/// Claiming or giving up many shards waits for the NATS server once, not once a shard,
/// and never long: beside a tool that subscribes to every subject and answers nothing
/// (no "no responders" then), and while cut off from NATS (nothing to wait for).
#[tokio::test]
async fn many_shards_are_served_and_stopped_at_once_beside_a_silent_listener_or_cut_off() {
    let name = cluster();
    let shards: Vec<u16> = (200..220).collect();
    let listener = async_nats::connect(NATS).await.unwrap();
    let mut everything = listener
        .subscribe(format!("stockline.{name}.>"))
        .await
        .unwrap();
    listener.flush().await.unwrap();
    let heard = tokio::spawn(async move { while everything.next().await.is_some() {} });

    let (nats, owner) = behind_a_proxy(&name).await;
    owner.operate_with(node("a", &shards));
    let served = tokio::time::timeout(Duration::from_secs(3), owner.serve_each(&shards)).await;
    assert!(
        matches!(&served, Ok(failed) if failed.is_empty()),
        "{served:?}"
    );
    assert_eq!(owner.answering(), shards);
    let stopped =
        tokio::time::timeout(Duration::from_secs(3), owner.stop_each(&shards[..10])).await;
    assert!(
        stopped.is_ok(),
        "stopping ten shards beside a silent listener hung"
    );

    nats.cut();
    let mut waited = Duration::ZERO;
    while owner.connected() {
        assert!(
            waited < Duration::from_secs(10),
            "the owner never noticed the cut"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    let stopped =
        tokio::time::timeout(Duration::from_secs(3), owner.stop_each(&shards[10..])).await;
    assert!(stopped.is_ok(), "stopping ten shards while cut off hung");
    assert!(owner.answering().is_empty());
    heard.abort();
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

use testkit::proxy;

/// Routes of a new node whose connection to NATS goes through a proxy the test can cut.
async fn behind_a_proxy(cluster: &str) -> (proxy::Proxy, Routes) {
    let nats = proxy::Proxy::start(NATS).await;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(format!("nats://127.0.0.1:{}", nats.port))
        .await
        .unwrap();
    let routes = Routes::new(
        client,
        RouteSettings {
            cluster: cluster.into(),
            node: next_node(),
            retry_for: Duration::from_millis(300),
            answer_within: Duration::from_secs(5),
        },
    );
    (nats, routes)
}

/// The owner's connection to NATS is cut: requests for its shard fail at once or after
/// the answer timeout (no responders), not after a hang; the owner knows it is cut off
/// (so it renews no lease); once the connection is back, it answers again by itself.
#[tokio::test]
async fn an_owner_cut_off_from_nats_is_unreached_and_answers_again_once_back() {
    let name = cluster();
    let (nats, owner) = behind_a_proxy(&name).await;
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

#[tokio::test]
async fn operations_for_a_known_owner_travel_together_each_answered_to_its_caller() {
    use stockline::cluster::routing::batch::{IN_FLIGHT, MAX_ITEMS};
    let name = cluster();
    let a = routes(&name, Duration::from_millis(500)).await;
    let b = Arc::new(routes(&name, Duration::from_millis(500)).await);
    let shards: Vec<u16> = (1..=8).collect();
    let owner = node("a", &shards);
    a.operate_with(owner.clone());
    for &shard in &shards {
        a.serve(shard).await.unwrap();
    }
    // Each shard's first answer names its owner.
    for &shard in &shards {
        assert_eq!(ask(&b, shard, 1).await.unwrap(), ("a".to_owned(), 2));
    }
    let (asked, messages) = b.hop_counts();
    assert_eq!(
        (asked, messages),
        (8, 8),
        "one message each, on the shards' subjects"
    );

    let count = 600u64;
    let asking: Vec<_> = (0..count)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { (i, ask(&b, (i % 8 + 1) as u16, BUSY + i).await) })
        })
        .collect();
    for task in asking {
        let (i, answer) = task.await.unwrap();
        assert_eq!(
            answer.unwrap(),
            ("a".to_owned(), 2 * (BUSY + i)),
            "answer {i}"
        );
    }
    let (asked, messages) = b.hop_counts();
    assert_eq!(asked, 8 + count);
    let batched = messages - 8;
    assert!(
        batched <= count / 4,
        "{count} operations took {batched} messages"
    );
    assert_eq!(
        owner.asked.load(Ordering::SeqCst) as u64,
        8 + count,
        "each served once"
    );
    let most = owner.most.load(Ordering::SeqCst);
    assert!(
        most <= IN_FLIGHT * MAX_ITEMS,
        "{most} operations in flight to one node at once, past {IN_FLIGHT} messages of {MAX_ITEMS}"
    );
    a.stop_all().await;
    b.stop_all().await;
}

#[tokio::test]
async fn a_shard_that_moved_is_found_on_its_subject_served_once_by_its_new_owner() {
    let name = cluster();
    let a = routes(&name, Duration::from_secs(2)).await;
    let b = routes(&name, Duration::from_secs(2)).await;
    let c = routes(&name, Duration::from_secs(2)).await;
    let (old, new) = (node("a", &[5]), node("c", &[5]));
    a.operate_with(old.clone());
    c.operate_with(new.clone());
    a.serve(5).await.unwrap();
    // a also answers another shard, so its batch subject stays.
    a.serve(6).await.unwrap();
    assert_eq!(ask(&b, 5, 1).await.unwrap().0, "a");
    a.stop(5).await;
    c.serve(5).await.unwrap();
    assert_eq!(ask(&b, 5, 2).await.unwrap(), ("c".to_owned(), 4));
    // The third goes in a batch to c: one message, nothing on the shard's subject.
    let (asked, messages) = b.hop_counts();
    assert_eq!(ask(&b, 5, 3).await.unwrap(), ("c".to_owned(), 6));
    assert_eq!(b.hop_counts(), (asked + 1, messages + 1));
    assert_eq!(
        old.asked.load(Ordering::SeqCst),
        1,
        "a served only the first"
    );
    assert_eq!(new.asked.load(Ordering::SeqCst), 2);

    // c goes away whole: no responder on its batch subject, and the shard found again.
    c.stop_all().await;
    a.serve(5).await.unwrap();
    assert_eq!(ask(&b, 5, 4).await.unwrap(), ("a".to_owned(), 8));
    assert_eq!(new.asked.load(Ordering::SeqCst), 2);
    a.stop_all().await;
}

#[tokio::test]
async fn stopping_waits_for_what_a_batch_brought_too() {
    let name = cluster();
    let a = Arc::new(routes(&name, Duration::from_millis(200)).await);
    let b = Arc::new(routes(&name, Duration::from_millis(200)).await);
    let owner = node("a", &[6]);
    a.operate_with(owner.clone());
    a.serve(6).await.unwrap();
    assert_eq!(ask(&b, 6, 1).await.unwrap().0, "a");
    let asking = b.clone();
    let taken = tokio::spawn(async move { ask(&asking, 6, SLOW).await });
    owner.slow.notified().await;
    a.stop(6).await;
    assert_eq!(
        owner.finished.load(Ordering::SeqCst),
        1,
        "stop returned before the batched request it took was answered"
    );
    assert_eq!(taken.await.unwrap().unwrap(), ("a".to_owned(), 2 * SLOW));
    assert_eq!(b.hop_counts(), (2, 2), "the second went in a batch");
    a.stop_all().await;
}

/// An owner that stops answering (a paused process: still subscribed, silent) is asked
/// straight only for as long as it said it serves the shard, or until one request to it
/// timed out; then the shard's subject finds whoever answers it now.
#[tokio::test]
async fn a_silent_owner_is_asked_straight_only_while_it_surely_serves_the_shard() {
    let name = cluster();
    let a = routes(&name, Duration::from_secs(2)).await;
    let c = routes(&name, Duration::from_secs(2)).await;
    let b = routes_as(
        &name,
        next_node(),
        Duration::from_secs(2),
        Duration::from_millis(800),
    )
    .await;
    let (old, new) = (node("a", &[5, 6]), node("c", &[5, 6]));
    *old.owned_for.lock().unwrap() = Duration::from_millis(300);
    a.operate_with(old.clone());
    c.operate_with(new.clone());
    a.serve(5).await.unwrap();
    a.serve(6).await.unwrap();
    assert_eq!(ask(&b, 5, 1).await.unwrap().0, "a");
    // a falls silent and c takes the shard; b's word from a runs out.
    old.frozen.store(true, Ordering::SeqCst);
    c.serve(5).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    assert_eq!(ask(&b, 5, 2).await.unwrap(), ("c".to_owned(), 4));
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "waited for the silent owner: {:?}",
        started.elapsed()
    );

    // Said to serve 6 for a minute, a is asked straight and times out once; the next
    // request finds c.
    *old.owned_for.lock().unwrap() = Duration::from_secs(60);
    old.frozen.store(false, Ordering::SeqCst);
    assert_eq!(ask(&b, 6, 1).await.unwrap().0, "a");
    old.frozen.store(true, Ordering::SeqCst);
    c.serve(6).await.unwrap();
    assert!(matches!(ask(&b, 6, 2).await, Err(Unreached::TimedOut)));
    assert_eq!(ask(&b, 6, 3).await.unwrap(), ("c".to_owned(), 6));
    old.frozen.store(false, Ordering::SeqCst);
    c.stop_all().await;
    a.stop_all().await;
}

/// Behind a silent owner, what was queued when its messages timed out is not sent to it
/// again and again: at most the messages in flight time out, and the rest find the new
/// owner on their shard's subject.
#[tokio::test]
async fn behind_a_silent_owner_only_what_was_in_flight_times_out() {
    use stockline::cluster::routing::batch::{IN_FLIGHT, MAX_ITEMS};
    let name = cluster();
    let a = routes(&name, Duration::from_secs(2)).await;
    let c = routes(&name, Duration::from_secs(2)).await;
    let b = Arc::new(
        routes_as(
            &name,
            next_node(),
            Duration::from_secs(2),
            Duration::from_millis(800),
        )
        .await,
    );
    let (old, new) = (node("a", &[5]), node("c", &[5]));
    a.operate_with(old.clone());
    c.operate_with(new.clone());
    a.serve(5).await.unwrap();
    assert_eq!(ask(&b, 5, 1).await.unwrap().0, "a");
    old.frozen.store(true, Ordering::SeqCst);
    c.serve(5).await.unwrap();
    let count = 2 * IN_FLIGHT * MAX_ITEMS;
    let started = Instant::now();
    let asking: Vec<_> = (0..count as u64)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { ask(&b, 5, 100 + i).await })
        })
        .collect();
    let (mut timed_out, mut by_c) = (0, 0);
    for task in asking {
        match task.await.unwrap() {
            Err(Unreached::TimedOut) => timed_out += 1,
            Ok((node, _)) if node == "c" => by_c += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        timed_out <= IN_FLIGHT * MAX_ITEMS,
        "{timed_out} of {count} timed out"
    );
    assert_eq!(timed_out + by_c, count);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}: sent to the silent owner again",
        started.elapsed()
    );
    old.frozen.store(false, Ordering::SeqCst);
    c.stop_all().await;
}

/// Two processes under one ordinal (a node id taken over while its old process still
/// has NATS): only one of them takes each batch, so an operation is never both served by
/// one and answered "not mine" by the other (and sent again).
#[tokio::test]
async fn two_processes_under_one_ordinal_never_both_take_a_batch() {
    let name = cluster();
    let ordinal = next_node();
    let live = routes_as(
        &name,
        ordinal,
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .await;
    let stale = routes_as(
        &name,
        ordinal,
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .await;
    let b = Arc::new(routes(&name, Duration::from_secs(2)).await);
    let owner = node("live", &[5]);
    live.operate_with(owner.clone());
    stale.operate_with(node("stale", &[9]));
    live.serve(5).await.unwrap();
    // The stale one answers the same batch subject, not shard 5.
    stale.serve(9).await.unwrap();
    // The first answer names the ordinal; the rest go in batches to it.
    assert_eq!(ask(&b, 5, 0).await.unwrap().0, "live");
    // The live one takes its time (20 ms), the stale one says "not mine" at once.
    let count = 200u64;
    let asking: Vec<_> = (0..count)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { ask(&b, 5, BUSY + i).await })
        })
        .collect();
    for task in asking {
        assert_eq!(task.await.unwrap().unwrap().0, "live");
    }
    assert_eq!(
        owner.asked.load(Ordering::SeqCst) as u64,
        count + 1,
        "an operation was served twice"
    );
    live.stop_all().await;
    stale.stop_all().await;
}

#[tokio::test]
async fn a_node_that_stopped_asks_by_the_shards_subjects() {
    let name = cluster();
    let a = routes(&name, Duration::from_secs(2)).await;
    let b = routes(&name, Duration::from_secs(2)).await;
    a.operate_with(node("a", &[5]));
    a.serve(5).await.unwrap();
    assert_eq!(ask(&b, 5, 1).await.unwrap().0, "a");
    b.stop_all().await;
    // Its senders are gone: still answered, on the shard's subject.
    let answered = tokio::time::timeout(Duration::from_secs(5), ask(&b, 5, 2)).await;
    assert_eq!(
        answered.expect("never answered").unwrap(),
        ("a".to_owned(), 4)
    );
    assert_eq!(b.hop_counts(), (2, 2));
    a.stop_all().await;
}
