//! A node's side of its leases with the real PostgreSQL and NATS: claiming a shard
//! restores its pending reservations and answers its subject; losing or handing it off
//! stops answering and forgets what the node held of it.

use std::sync::Arc;
use std::time::Duration;

use stockline::cluster::routing::{RouteSettings, Routes, protocol};
use stockline::cluster::{Membership, shard_of};
use stockline::node::ClusterNode;
use stockline_actors::{Core, CoreConfig, Journal, LineKey, ReservationId};
use testkit::*;

const NATS: &str = "127.0.0.1:4222";

/// A node ordinal no other routes of this test binary have.
fn next_node() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

async fn routes(cluster: &str) -> Routes {
    Routes::new(
        async_nats::connect(NATS)
            .await
            .expect("NATS runs at 127.0.0.1:4222"),
        RouteSettings {
            cluster: cluster.into(),
            node: next_node(),
            retry_for: Duration::from_millis(200),
            answer_within: Duration::from_secs(5),
        },
    )
}

/// Answers every operation with its node's name.
struct Named(&'static str);

impl protocol::Operations for Named {
    fn serve(&self, _: u16, _: bytes::Bytes) -> protocol::Served {
        let name = self.0;
        Box::pin(async move { Some(protocol::answer(&name.to_owned())) })
    }

    // Never named as an owner to ask straight: every request goes by its shard's subject.
    fn serving_for(&self, _: u16) -> Option<Duration> {
        None
    }
}

/// Who answers shard `shard`'s subject, if anyone does.
async fn ask(asker: &Routes, shard: u16) -> Option<String> {
    let reply = asker.ask(shard, protocol::encode(&())).await.ok()?;
    protocol::read_answer(&reply).ok()
}

#[tokio::test]
async fn claiming_restores_and_answers_losing_and_handing_off_forget() {
    // The store: one pending reservation of 3 of 10 units.
    let mut app = TestApp::spawn().await;
    let (product, warehouse) = app.stocked_product(10).await;
    let (status, held) = app.reserve(product, 3).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{held}");
    let id = ReservationId(held["id"].as_str().unwrap().parse().unwrap());
    app.stop().await;
    let url = database_url(&app.database);
    let pool = stockline::store::connect_and_migrate(&url).await.unwrap();

    let leases = cluster::leases(&pool, "a", Duration::from_secs(30));
    let (buffer, flusher) = cluster::journal(&pool, &url, "a", &leases).await;
    let core = Arc::new(
        Core::start(
            CoreConfig::default(),
            buffer.clone() as Arc<dyn Journal>,
            Arc::new(stockline::store::recovery::PgStore::new(pool.clone())),
        )
        .await
        .unwrap(),
    );
    let name = format!("test{}", uuid::Uuid::now_v7().simple());
    let answering = Arc::new(routes(&name).await);
    answering.operate_with(Arc::new(Named("a")));
    let asker = routes(&name).await;
    let node = ClusterNode {
        core: core.clone(),
        routes: answering.clone(),
        db: pool.clone(),
        buffer: buffer.clone(),
        orders: Arc::new(stockline::orders::Orders::new(buffer.clone())),
        carts: Arc::new(stockline::carts::Carts::new(buffer.clone())),
    };
    let shard = shard_of(product);
    let key = LineKey::new(warehouse, product);

    let round = leases.round().await.unwrap();
    let epoch = round.claimed.iter().find(|(s, _)| *s == shard).unwrap().1;
    node.claimed(vec![(shard, epoch)]).await;
    assert_eq!(answering.answering(), [shard]);
    assert_eq!(ask(&asker, shard).await.as_deref(), Some("a"));
    assert!(
        core.reservations().get(id).is_some(),
        "the pending reservation is restored"
    );
    let line = core
        .registry()
        .resident(key)
        .expect("its line, with the hold");
    assert_eq!(line.snapshot().await.unwrap().reserved, 3);

    // Taken over: no longer answered, nothing of it kept.
    node.lost(vec![shard]).await;
    assert!(answering.answering().is_empty());
    assert_eq!(ask(&asker, shard).await, None);
    assert!(core.reservations().get(id).is_none());
    assert!(core.registry().resident(key).is_none());

    // Claimed again, then handed off after a change made while it was served: the change
    // is durable before the shard is forgotten.
    node.claimed(vec![(shard, epoch)]).await;
    assert!(core.reservations().get(id).is_some());
    let (released, lsn) = core.reservations().release(id).await.unwrap();
    assert_eq!(
        released.status,
        stockline_actors::ReservationStatus::Released
    );
    node.hand_off(vec![shard]).await;
    assert!(
        buffer.watch().current() >= lsn,
        "handed off before its changes were durable"
    );
    assert!(answering.answering().is_empty());
    assert!(core.registry().resident(key).is_none());
    let status: String = sqlx::query_scalar("SELECT status FROM reservations WHERE id = $1")
        .bind(id.0)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "released");
    assert!(flusher.finish().await);
    drop_database(&app.database).await;
}
