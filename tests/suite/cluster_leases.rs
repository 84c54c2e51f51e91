//! Shard leases against the real PostgreSQL: claims, sharing out, hand-off, takeover of an
//! owner that stopped renewing, and the epoch fence a flush transaction checks.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::PgPool;
use stockline::cluster::{Fenced, Leases, SHARDS, Shard};
use testkit::cluster;

async fn database() -> (PgPool, String) {
    let name = testkit::fresh_database();
    let pool = stockline::store::connect_and_migrate(&testkit::database_url(&name))
        .await
        .expect("database");
    (pool, name)
}

async fn owners(pool: &PgPool) -> Vec<(i16, Option<String>, i64)> {
    sqlx::query_as("SELECT shard, owner, epoch FROM shard_leases ORDER BY shard")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Runs `fence` for `shards` in a transaction of its own, rolled back.
async fn fence(pool: &PgPool, leases: &Leases, shards: &[Shard]) -> Result<(), Fenced> {
    let mut tx = pool.begin().await.unwrap();
    let answer = leases.fence(&mut tx, shards).await.unwrap();
    tx.rollback().await.unwrap();
    answer
}

#[tokio::test]
async fn a_lone_node_claims_every_shard_and_renews_them_under_the_same_epoch() {
    let (pool, name) = database().await;
    let a = cluster::leases(&pool, "a", Duration::from_secs(10));
    let first = a.round().await.unwrap();
    assert_eq!(first.nodes, ["a"]);
    assert_eq!(first.claimed.len(), usize::from(SHARDS));
    assert!(first.claimed.iter().all(|(_, epoch)| *epoch == 1));
    assert_eq!(
        a.serving(17),
        None,
        "claimed but not served before its state is restored"
    );
    a.start_serving(&[17]);
    assert_eq!(a.serving(17), Some(1));
    assert_eq!(a.served(), [(17, 1)]);

    let second = cluster::round(&a).await;
    assert!(second.claimed.is_empty() && second.lost.is_empty() && second.handing_off.is_empty());
    assert!(
        owners(&pool)
            .await
            .iter()
            .all(|(_, owner, epoch)| owner.as_deref() == Some("a") && *epoch == 1)
    );
    assert_eq!(fence(&pool, &a, &[0, 17, 1023]).await, Ok(()));
    testkit::drop_database(&name).await;
}

#[tokio::test]
async fn a_node_silent_for_an_hour_is_forgotten_and_one_silent_for_minutes_is_kept() {
    let (pool, name) = database().await;
    sqlx::query(
        "INSERT INTO cluster_nodes (node_id, http_addr, heartbeat_at) VALUES
             ('gone', '10.0.0.1:8080', now() - interval '61 minutes'),
             ('down', '10.0.0.2:8080', now() - interval '5 minutes')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let a = cluster::leases(&pool, "a", Duration::from_secs(10));
    let round = a.round().await.unwrap();
    assert_eq!(round.nodes, ["a"], "neither silent node counts as live");
    let known: Vec<String> =
        sqlx::query_scalar("SELECT node_id FROM cluster_nodes ORDER BY node_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(known, ["a", "down"]);
    testkit::drop_database(&name).await;
}

/// Found by the cluster bench: a renewal and a flush's fence locking the same lease rows in
/// different orders deadlocked, and PostgreSQL broke it only after `deadlock_timeout`: a
/// second (or two) with every write of the node stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fences_and_renewals_racing_never_deadlock() {
    let (pool, name) = database().await;
    let a = cluster::leases(&pool, "a", Duration::from_secs(10));
    a.round().await.unwrap();
    a.start_serving(&(0..SHARDS).collect::<Vec<_>>());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renewing = {
        let (a, stop) = (a.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                a.round().await.expect("a round never deadlocks");
                rounds += 1;
            }
            rounds
        })
    };
    let mut fencing = Vec::new();
    for task in 0..6u16 {
        let (pool, a) = (pool.clone(), a.clone());
        fencing.push(tokio::spawn(async move {
            for round in 0..40u16 {
                // A batch names a few shards, in an order of its own (here descending, while
                // a renewal of every shard goes through the table in its stored order).
                let first = (task * 40 + round) % 100;
                let shards: Vec<Shard> = [900, 600, 300, 0].iter().map(|s| s + first).collect();
                let mut tx = pool.begin().await.unwrap();
                let fenced = a
                    .fence(&mut tx, &shards)
                    .await
                    .expect("a fence never deadlocks");
                assert_eq!(fenced, Ok(()));
                tokio::time::sleep(Duration::from_millis(3)).await;
                tx.commit().await.unwrap();
            }
        }));
    }
    for task in fencing {
        task.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(renewing.await.unwrap() > 0);
    testkit::drop_database(&name).await;
}

#[tokio::test]
async fn a_joining_node_gets_its_share_by_hand_off_and_no_shard_has_two_owners() {
    let (pool, name) = database().await;
    let a = cluster::leases(&pool, "a", Duration::from_secs(10));
    let b = cluster::leases(&pool, "b", Duration::from_secs(10));
    cluster::round(&a).await;
    // b is live now, but a's leases are not expired: b takes nothing by force.
    let joined = cluster::round(&b).await;
    assert_eq!(joined.nodes, ["a", "b"]);
    assert!(joined.claimed.is_empty());

    let handing = cluster::round(&a).await;
    let moving: HashSet<Shard> = handing.handing_off.iter().copied().collect();
    assert!(
        (350..=670).contains(&moving.len()),
        "{} moving",
        moving.len()
    );
    // Handed off means no longer served here, though the lease is still a's until released.
    assert!(moving.iter().all(|s| a.serving(*s).is_none()));
    let some = *moving.iter().next().unwrap();
    assert_eq!(cluster::round(&b).await.claimed, []);
    a.release(&handing.handing_off).await.unwrap();

    let taken = cluster::round(&b).await;
    let taken_shards: HashSet<Shard> = taken.claimed.iter().map(|(s, _)| *s).collect();
    assert_eq!(taken_shards, moving);
    assert!(taken.claimed.iter().all(|(_, epoch)| *epoch == 2));
    assert_eq!(b.serving(some), Some(2));

    let on_a: HashSet<Shard> = a.served().into_iter().map(|(s, _)| s).collect();
    let on_b: HashSet<Shard> = b.served().into_iter().map(|(s, _)| s).collect();
    assert!(on_a.is_disjoint(&on_b));
    assert_eq!(on_a.len() + on_b.len(), usize::from(SHARDS));
    for (shard, owner, _) in owners(&pool).await {
        let expected = if on_b.contains(&(shard as Shard)) {
            "b"
        } else {
            "a"
        };
        assert_eq!(owner.as_deref(), Some(expected), "shard {shard}");
    }
    // Stable: another round on each moves nothing.
    for leases in [&a, &b] {
        let round = cluster::round(leases).await;
        assert!(round.claimed.is_empty() && round.handing_off.is_empty() && round.lost.is_empty());
    }
    testkit::drop_database(&name).await;
}

#[tokio::test]
async fn an_owner_that_stops_renewing_stops_serving_is_taken_over_and_is_fenced() {
    let (pool, name) = database().await;
    let lease = Duration::from_millis(1_500);
    let a = cluster::leases(&pool, "a", lease);
    let b = cluster::leases(&pool, "b", lease);
    cluster::round(&a).await;
    assert_eq!(a.serving(5), Some(1));

    // a is paused: no round. Its own deadline passes before the database's expiry.
    tokio::time::sleep(lease - a.settings().margin() + Duration::from_millis(50)).await;
    assert_eq!(a.serving(5), None, "still serving past its deadline");
    assert!(a.served().is_empty());
    tokio::time::sleep(a.settings().margin() + Duration::from_millis(100)).await;

    let takeover = cluster::round(&b).await;
    assert_eq!(takeover.nodes, ["b"], "a's heartbeat is stale");
    assert_eq!(takeover.claimed.len(), usize::from(SHARDS));
    assert!(takeover.claimed.iter().all(|(_, epoch)| *epoch == 2));

    // a wakes up: whatever it was about to write is refused.
    assert_eq!(
        fence(&pool, &a, &[5, 6]).await,
        Err(Fenced { shards: vec![5, 6] })
    );
    assert_eq!(fence(&pool, &b, &[5, 6]).await, Ok(()));
    let woke = cluster::round(&a).await;
    // Every shard reported lost once, 5 and 6 (found by the fence) included.
    assert_eq!(woke.lost.len(), usize::from(SHARDS));
    assert!(
        woke.claimed.is_empty(),
        "b's leases are live: a takes nothing back"
    );
    assert!(a.served().is_empty());
    assert!(
        owners(&pool)
            .await
            .iter()
            .all(|(_, owner, epoch)| owner.as_deref() == Some("b") && *epoch == 2)
    );
    testkit::drop_database(&name).await;
}

#[tokio::test]
async fn a_takeover_waits_for_the_old_owners_fenced_transaction_and_then_fences_it() {
    let (pool, name) = database().await;
    sqlx::query("CREATE TABLE written (shard INT, epoch BIGINT)")
        .execute(&pool)
        .await
        .unwrap();
    let lease = Duration::from_millis(1_000);
    let a = cluster::leases(&pool, "a", lease);
    let b = cluster::leases(&pool, "b", lease);
    cluster::round(&a).await;

    // a's flush transaction has passed the fence and is still open when its lease expires.
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(a.fence(&mut tx, &[5]).await.unwrap(), Ok(()));
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let takeover = tokio::spawn(async move { (cluster::round(&b).await, b) });
    // The claim waits on the lease row a's transaction holds FOR SHARE.
    loop {
        let waiting = cluster::waiting_on_locks(&pool).await;
        if waiting > 0 {
            break;
        }
        assert!(
            !takeover.is_finished(),
            "the takeover did not wait for the fence"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("INSERT INTO written VALUES (5, 1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let (round, b) = takeover.await.unwrap();
    assert!(round.claimed.contains(&(5, 2)));
    assert_eq!(b.serving(5), Some(2));
    // Every later transaction of a's is refused.
    assert_eq!(
        fence(&pool, &a, &[5]).await,
        Err(Fenced { shards: vec![5] })
    );
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM written")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(written, 1);
    testkit::drop_database(&name).await;
}

#[tokio::test]
async fn a_node_that_leaves_gives_its_shards_up_at_once_and_a_restart_fences_its_old_self() {
    let (pool, name) = database().await;
    let lease = Duration::from_secs(30);
    let a = cluster::leases(&pool, "a", lease);
    let b = cluster::leases(&pool, "b", lease);
    cluster::round(&a).await;
    cluster::round(&b).await;
    let handing = cluster::round(&a).await;
    a.release(&handing.handing_off).await.unwrap();
    cluster::round(&b).await;
    assert!(!b.served().is_empty());

    // b stops cleanly: a need not wait 30 s for b's leases to expire.
    b.leave().await.unwrap();
    assert!(b.served().is_empty());
    let after = cluster::round(&a).await;
    assert_eq!(after.nodes, ["a"]);
    assert_eq!(a.served().len(), usize::from(SHARDS));

    // a is restarted (kill -9, then the same node id): the new process claims its own
    // unexpired leases at once, under new epochs, and the old process is fenced.
    let restarted = cluster::leases(&pool, "a", lease);
    let claimed = cluster::round(&restarted).await.claimed;
    assert_eq!(claimed.len(), usize::from(SHARDS));
    let shard = claimed[0].0;
    assert_eq!(
        fence(&pool, &a, &[shard]).await,
        Err(Fenced {
            shards: vec![shard]
        })
    );
    assert_eq!(fence(&pool, &restarted, &[shard]).await, Ok(()));
    testkit::drop_database(&name).await;
}

/// A node's side of the leases, as the run loop tells it.
#[derive(Default)]
struct Recorded {
    answering: std::sync::Mutex<std::collections::BTreeSet<Shard>>,
    handed_off: std::sync::atomic::AtomicUsize,
    /// Its messaging is down: it cannot serve.
    cut_off: std::sync::atomic::AtomicBool,
}

impl stockline::cluster::Membership for Recorded {
    fn claimed(
        &self,
        shards: Vec<(Shard, stockline::cluster::Epoch)>,
    ) -> futures_util::future::BoxFuture<'_, ()> {
        let mut answering = self.answering.lock().unwrap();
        answering.extend(shards.into_iter().map(|(s, _)| s));
        Box::pin(async {})
    }

    fn lost(&self, shards: Vec<Shard>) -> futures_util::future::BoxFuture<'_, ()> {
        let mut answering = self.answering.lock().unwrap();
        for shard in shards {
            answering.remove(&shard);
        }
        Box::pin(async {})
    }

    fn can_serve(&self) -> bool {
        !self.cut_off.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn hand_off(&self, shards: Vec<Shard>) -> futures_util::future::BoxFuture<'_, ()> {
        self.handed_off
            .fetch_add(shards.len(), std::sync::atomic::Ordering::SeqCst);
        self.lost(shards)
    }
}

struct Running {
    leases: std::sync::Arc<Leases>,
    node: std::sync::Arc<Recorded>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn run(pool: &PgPool, id: &str, lease: Duration) -> Running {
    let leases = cluster::leases(pool, id, lease);
    let recorded = std::sync::Arc::new(Recorded::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let (l, r, s) = (leases.clone(), recorded.clone(), stop.clone());
    let task = tokio::spawn(async move { l.run(&*r, s).await });
    Running {
        leases,
        node: recorded,
        stop,
        task,
    }
}

/// Waits (at most `within`) until `check` holds; answers how long it took.
async fn until(within: Duration, check: impl Fn() -> bool) -> Duration {
    let started = std::time::Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Both nodes answer some shards, and between them all of them.
fn shared_out(a: &Running, b: &Running) -> bool {
    let (on_a, on_b) = (answering(a), answering(b));
    !on_a.is_empty() && !on_b.is_empty() && on_a.len() + on_b.len() == usize::from(SHARDS)
}

fn answering(running: &Running) -> HashSet<Shard> {
    running
        .node
        .answering
        .lock()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

#[tokio::test]
async fn running_nodes_share_out_a_killed_nodes_shards_move_within_two_leases_and_a_leaving_one_hands_off()
 {
    let (pool, name) = database().await;
    let lease = Duration::from_secs(2);
    let a = run(&pool, "a", lease);
    let b = run(&pool, "b", lease);
    until(Duration::from_secs(15), || shared_out(&a, &b)).await;
    assert!(answering(&a).is_disjoint(&answering(&b)));
    assert_eq!(
        answering(&a),
        a.leases.served().into_iter().map(|(s, _)| s).collect()
    );

    // kill -9 of a: its loop ends without leaving; b has all within two leases.
    a.task.abort();
    let moved = until(2 * lease, || answering(&b).len() == usize::from(SHARDS)).await;
    eprintln!("failover after the owner died: {moved:?} (lease {lease:?})");
    // The dead node's own view stopped serving before the takeover was possible.
    assert!(a.leases.served().is_empty());

    // c joins, then b leaves cleanly: c need not wait for b's leases to expire.
    let c = run(&pool, "c", lease);
    until(Duration::from_secs(15), || !answering(&c).is_empty()).await;
    assert!(b.node.handed_off.load(std::sync::atomic::Ordering::SeqCst) > 0);
    b.stop.cancel();
    b.task.await.unwrap();
    assert!(b.leases.served().is_empty());
    let taken = until(lease, || answering(&c).len() == usize::from(SHARDS)).await;
    eprintln!("hand-over after a clean leave: {taken:?}");
    c.stop.cancel();
    c.task.await.unwrap();
    let owned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM shard_leases WHERE owner IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(owned, 0, "a node that left keeps no lease");
    testkit::drop_database(&name).await;
}

#[tokio::test]
async fn nodes_starting_at_once_get_distinct_ordinals_that_they_keep() {
    let (pool, name) = database().await;
    let ids: Vec<String> = (0..20).map(|n| format!("node-{n}")).collect();
    let assigned = futures_util::future::join_all(
        ids.iter()
            .map(|id| stockline::cluster::ordinal::assign(&pool, id)),
    )
    .await;
    let mut ordinals: Vec<u16> = assigned.into_iter().map(Result::unwrap).collect();
    let again = stockline::cluster::ordinal::assign(&pool, "node-3")
        .await
        .unwrap();
    assert_eq!(
        again, ordinals[3],
        "a node keeps its ordinal across restarts"
    );
    ordinals.sort_unstable();
    assert_eq!(ordinals, (1..=20).collect::<Vec<u16>>());
    testkit::drop_database(&name).await;
}

/// One node loses its database: it stops serving within its lease, the other takes its
/// shards within two leases, and once the database is back it gets its share again.
#[tokio::test]
async fn a_node_cut_off_from_postgresql_stops_serving_and_its_shards_move_and_come_back() {
    let (pool, name) = database().await;
    let cut_off = testkit::proxy::Proxy::start("127.0.0.1:5432").await;
    let proxied: PgPool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect(&format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            cut_off.port
        ))
        .await
        .unwrap();
    let lease = Duration::from_secs(2);
    let a = run(&proxied, "a", lease);
    let b = run(&pool, "b", lease);
    let split = || shared_out(&a, &b);
    until(Duration::from_secs(15), split).await;

    cut_off.cut();
    // Never two nodes serving one shard, at any moment of the move.
    let no_overlap = || {
        let on_a: HashSet<Shard> = a.leases.served().into_iter().map(|(s, _)| s).collect();
        let on_b: HashSet<Shard> = b.leases.served().into_iter().map(|(s, _)| s).collect();
        assert!(on_a.is_disjoint(&on_b), "a shard served by both nodes");
    };
    let stopped = until(lease + lease / 2, || {
        no_overlap();
        a.leases.served().is_empty()
    })
    .await;
    let moved = until(2 * lease, || {
        no_overlap();
        answering(&b).len() == usize::from(SHARDS)
    })
    .await;
    eprintln!("database cut: a stopped serving after {stopped:?}, b had all after {moved:?}");

    cut_off.restore();
    until(Duration::from_secs(20), || {
        !a.leases.served().is_empty()
            && answering(&a) == a.leases.served().into_iter().map(|(s, _)| s).collect()
    })
    .await;
    until(Duration::from_secs(20), split).await;
    assert!(answering(&a).is_disjoint(&answering(&b)));
    for running in [a, b] {
        running.stop.cancel();
        running.task.await.unwrap();
    }
    testkit::drop_database(&name).await;
}

/// A node that cannot serve (its NATS connection is down) renews nothing, so its shards
/// move to a node that can; once it can again, it gets its share back.
#[tokio::test]
async fn a_node_that_cannot_serve_lets_its_shards_go_and_takes_its_share_back_later() {
    let (pool, name) = database().await;
    let lease = Duration::from_secs(2);
    let a = run(&pool, "a", lease);
    let b = run(&pool, "b", lease);
    let split = || shared_out(&a, &b);
    until(Duration::from_secs(15), split).await;
    a.node
        .cut_off
        .store(true, std::sync::atomic::Ordering::SeqCst);
    until(2 * lease, || answering(&b).len() == usize::from(SHARDS)).await;
    assert!(a.leases.served().is_empty());
    a.node
        .cut_off
        .store(false, std::sync::atomic::Ordering::SeqCst);
    until(Duration::from_secs(20), || {
        split() && a.leases.served().len() == answering(&a).len()
    })
    .await;
    for running in [a, b] {
        running.stop.cancel();
        running.task.await.unwrap();
    }
    testkit::drop_database(&name).await;
}
