//! Cluster mode's parts, measured on this machine (PostgreSQL and NATS at their usual
//! loopback ports, everything sharing the 2 cores):
//!
//! - **a routed hop**: a typed operation of the shard protocol (an adjustment's size) sent
//!   over NATS request/reply to the shard's owner and answered (a stock line's size),
//!   against the same service called in-process with the same encoding; one at a time
//!   (latency) and 64 in flight (throughput); each by the shard's subject (an owner that
//!   does not name itself) and in batches to the owner's node (one that does);
//! - **the fence**: a flush transaction that first checks its shards' epochs (`FOR SHARE`)
//!   against the same transaction without the check;
//! - **a lease round** holding all 1024 shards (heartbeat, renewal, share-out).
//!
//! Run: `cargo bench --bench cluster` (`-- --requests 20000`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use stockline::cluster::routing::{RouteSettings, Routes, protocol};
use stockline::cluster::{LeaseSettings, Leases};

#[derive(Parser)]
struct Args {
    /// Requests per measurement of the routed hop.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Transactions per measurement of the fence.
    #[arg(long, default_value_t = 2_000)]
    transactions: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

const NATS: &str = "127.0.0.1:4222";

/// An adjustment as it travels: warehouse, product, delta, reason.
type Adjust = (i64, i64, i64, String);
/// A stock line as it comes back: on hand, reserved, safety, available, version, and the
/// answer's JSON as the owner sends it.
type Line = (u64, u64, u64, u64, u64, Vec<u8>);

/// Serves adjustments by answering a line, with no core behind it: what is measured is
/// the hop. `named`: it says how long it serves the shard, so asking nodes batch to it.
struct Owner {
    named: bool,
}

impl protocol::Operations for Owner {
    fn serve(&self, _: u16, payload: bytes::Bytes) -> protocol::Served {
        Box::pin(async move {
            let (warehouse, product, delta, _) = match protocol::decode::<Adjust>(&payload) {
                Ok(adjust) => adjust,
                Err(refusal) => return Some(refusal),
            };
            let body = format!(
                r#"{{"warehouse_id":{warehouse},"product_id":{product},"on_hand":{delta},"reserved":0,"safety_stock":0,"available":{delta},"version":3,"updated_at":"2026-12-06T12:00:00Z"}}"#
            );
            let line: Line = (delta as u64, 0, 0, delta as u64, 3, body.into_bytes());
            Some(protocol::answer(&line))
        })
    }

    fn serving_for(&self, _: u16) -> Option<Duration> {
        self.named.then_some(Duration::from_secs(3600))
    }
}

fn operation() -> Vec<u8> {
    protocol::encode(&(1i64, 42i64, 5i64, "receipt".to_owned()))
}

fn read(reply: &[u8]) {
    let line: Line = protocol::read_answer(reply).expect("an answer");
    assert_eq!(line.0, 5);
}

fn report(name: &str, histogram: &Histogram<u64>, elapsed: Duration, count: usize) {
    println!(
        "{name:<36} {:>9.0} req/s  p50 {:>6} us  p99 {:>6} us",
        count as f64 / elapsed.as_secs_f64(),
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
    );
}

async fn sequential<F, Fut>(count: usize, call: F) -> (Histogram<u64>, Duration)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let started = Instant::now();
    for _ in 0..count {
        let one = Instant::now();
        call().await;
        histogram.record(one.elapsed().as_micros() as u64).unwrap();
    }
    (histogram, started.elapsed())
}

async fn routed_hop(args: &Args) {
    let count = args.requests;
    let local: Arc<dyn protocol::Operations> = Arc::new(Owner { named: false });
    let (histogram, elapsed) = sequential(count, || {
        let local = local.clone();
        async move {
            let reply = local.serve(7, operation().into()).await.unwrap();
            read(&reply);
        }
    })
    .await;
    let direct = elapsed.as_secs_f64() / count as f64;
    report(
        "in-process service, 1 at a time",
        &histogram,
        elapsed,
        count,
    );
    for (named, way) in [(false, "by shard subject"), (true, "batched per node")] {
        let cluster = format!("bench{}", uuid::Uuid::now_v7().simple());
        let settings = RouteSettings {
            cluster,
            node: 1,
            retry_for: Duration::from_secs(2),
            answer_within: Duration::from_secs(5),
        };
        let owner = Routes::new(async_nats::connect(NATS).await.unwrap(), settings.clone());
        owner.operate_with(Arc::new(Owner { named }));
        owner.serve(7).await.unwrap();
        let edge = Arc::new(Routes::new(
            async_nats::connect(NATS).await.unwrap(),
            RouteSettings {
                node: 2,
                ..settings
            },
        ));
        // The first answer names the owner (when it does).
        read(&edge.ask(7, operation()).await.unwrap());
        let (histogram, elapsed) = sequential(count, || {
            let edge = edge.clone();
            async move {
                read(&edge.ask(7, operation()).await.unwrap());
            }
        })
        .await;
        let routed = elapsed.as_secs_f64() / count as f64;
        report(&format!("{way}, 1 at a time"), &histogram, elapsed, count);

        // 64 in flight.
        let before = edge.hop_counts();
        let started = Instant::now();
        let per_task = count / 64;
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let edge = edge.clone();
                tokio::spawn(async move {
                    let mut histogram = Histogram::<u64>::new(3).unwrap();
                    for _ in 0..per_task {
                        let one = Instant::now();
                        read(&edge.ask(7, operation()).await.unwrap());
                        histogram.record(one.elapsed().as_micros() as u64).unwrap();
                    }
                    histogram
                })
            })
            .collect();
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        for task in tasks {
            histogram.add(task.await.unwrap()).unwrap();
        }
        let elapsed = started.elapsed();
        let after = edge.hop_counts();
        report(
            &format!("{way}, 64 in flight"),
            &histogram,
            elapsed,
            per_task * 64,
        );
        println!(
            "{way}: {:.1} operations a NATS message at 64 in flight; one at a time the hop adds \
             {:.0} us a request (routed/in-process: {:.1})",
            (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64,
            (routed - direct) * 1e6,
            routed / direct
        );
        owner.stop_all().await;
        edge.stop_all().await;
    }
}

async fn fence_and_round(args: &Args) {
    let (name, pool) = testkit::fresh_pool().await;
    let leases = Leases::new(
        pool.clone(),
        LeaseSettings {
            node: "bench".into(),
            http_addr: "127.0.0.1:0".into(),
            lease: Duration::from_secs(30),
        },
    );
    leases.round().await.unwrap();
    let shards: Vec<u16> = (0..16).collect();

    // A transaction that writes one row (so its commit waits for the WAL flush, as a
    // flush's does), with and without the fence first.
    let write = "INSERT INTO settings (key, value) VALUES ('bench', '1')
                 ON CONFLICT (key) DO UPDATE SET value = (settings.value::bigint + 1)::text";
    let mut plain = Histogram::<u64>::new(3).unwrap();
    let mut fenced = Histogram::<u64>::new(3).unwrap();
    // Interleaved, so both see the same machine.
    for _ in 0..args.transactions {
        let one = Instant::now();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(write).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        plain.record(one.elapsed().as_micros() as u64).unwrap();
        let one = Instant::now();
        let mut tx = pool.begin().await.unwrap();
        leases.fence(&mut tx, &shards).await.unwrap().unwrap();
        sqlx::query(write).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        fenced.record(one.elapsed().as_micros() as u64).unwrap();
    }
    println!(
        "one-row write transaction: p50 {} us; with the fence over 16 shards: p50 {} us (+{} us)",
        plain.value_at_quantile(0.5),
        fenced.value_at_quantile(0.5),
        fenced
            .value_at_quantile(0.5)
            .saturating_sub(plain.value_at_quantile(0.5)),
    );

    let mut rounds = Histogram::<u64>::new(3).unwrap();
    for _ in 0..50 {
        let one = Instant::now();
        leases.round().await.unwrap();
        rounds.record(one.elapsed().as_micros() as u64).unwrap();
    }
    println!(
        "lease round holding 1024 shards: p50 {} us, p99 {} us (3 per lease)",
        rounds.value_at_quantile(0.5),
        rounds.value_at_quantile(0.99),
    );
    pool.close().await;
    testkit::drop_database(&name).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    routed_hop(&args).await;
    fence_and_round(&args).await;
}
