//! Cluster parts for tests: a node's leases, and a node's journal and fenced flusher over
//! a shared database.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use stockline::cluster::{LeaseSettings, Leases, Member};
use stockline::store::flusher::{Flusher, Pacing};
use stockline::store::records::Buffer;

/// The leases of node `id`.
pub fn leases(pool: &PgPool, id: &str, lease: Duration) -> Arc<Leases> {
    Arc::new(Leases::new(
        pool.clone(),
        LeaseSettings {
            node: id.into(),
            http_addr: format!("127.0.0.1:0/{id}"),
            lease,
        },
    ))
}

/// One lease round, and the shards it claimed served at once (as the run loop does once
/// their state is restored).
pub async fn round(leases: &Leases) -> stockline::cluster::Round {
    let round = leases.round().await.unwrap();
    let claimed: Vec<_> = round.claimed.iter().map(|(s, _)| *s).collect();
    leases.start_serving(&claimed);
    round
}

/// Node `id`'s journal, numbered from its own ordinal, and its fenced flusher writing to
/// `url` (`sync` pacing).
pub async fn journal(
    pool: &PgPool,
    url: &str,
    id: &str,
    leases: &Arc<Leases>,
) -> (Arc<Buffer>, Flusher) {
    let member = Member {
        leases: leases.clone(),
        ordinal: stockline::cluster::ordinal::assign(pool, id).await.unwrap(),
    };
    let start = stockline::store::recovery::node_position(pool, &member)
        .await
        .unwrap();
    let buffer = Arc::new(Buffer::new(start, 10_000));
    let flusher = Flusher::spawn(
        stockline::store::flusher_pool(url).await.unwrap(),
        buffer.clone(),
        Pacing {
            gather: Duration::ZERO,
            pipelined: true,
        },
        None,
        Some(member),
        tokio_util::sync::CancellationToken::new(),
    );
    (buffer, flusher)
}
