//! Events out, measured: how fast events go through the outbox, out to a webhook receiver
//! on loopback and to NATS (the machine's server at 127.0.0.1:4222), and an SSE fan-out
//! to many connected clients. Everything runs on the same machine: the clients, the
//! server, PostgreSQL and NATS.
//!
//! One server (`--durability async`, so the bulk requests that make the events do not
//! wait on each flush) with a webhook to an in-process receiver and `--nats-url`; `--events
//! N` line changes made with bulk adjustments (1,000 a request, 4 requests at a time).
//! Then, on a second server, `--streams` SSE clients connect and `--fanout-events` changes
//! are made: every client must receive every event.
//!
//! Run: `cargo bench --bench events` (`-- --events 50000 --streams 1000`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Line changes (each one `stock.changed`) for the outbox, webhook and NATS figures.
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    /// SSE clients for the fan-out.
    #[arg(long, default_value_t = 1_000)]
    streams: usize,
    /// Line changes made while the SSE clients listen.
    #[arg(long, default_value_t = 2_000)]
    fanout_events: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

/// A server of the kit, and its API's base URL and admin token for the raw clients here.
struct Server {
    base: String,
    token: String,
    app: testkit::TestApp,
}

async fn start(extra: &[&str]) -> Server {
    let mut flags = vec![
        "--durability",
        "async",
        "--max-event-streams",
        "100000",
        // The receiver is in this process, on the loopback.
        "--webhook-allow-private",
        "true",
    ];
    flags.extend_from_slice(extra);
    let app = testkit::TestApp::spawn_bench(&flags).await;
    app.product("E", 1).await;
    app.warehouse("E", 0).await;
    Server {
        base: app.url(""),
        token: app.admin.clone(),
        app,
    }
}

impl Server {
    async fn finish(self) {
        self.app.cleanup().await;
    }

    /// Makes `n` line changes with bulk adjustments, 4 requests in flight.
    async fn changes(&self, n: usize) {
        let client = reqwest::Client::new();
        let item = json!({ "warehouse_id": 1, "product_id": 1, "delta": 1, "reason": "receipt" });
        let mut left = n;
        let mut requests = Vec::new();
        while left > 0 {
            let size = left.min(1000);
            left -= size;
            let body = Value::Array(vec![item.clone(); size]);
            let (client, url, token) = (
                client.clone(),
                format!("{}/stock/adjustments/bulk", self.base),
                self.token.clone(),
            );
            requests.push(async move {
                let answer = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert!(answer.status().is_success());
            });
        }
        futures_util::stream::iter(requests)
            .buffer_unordered(4)
            .collect::<Vec<()>>()
            .await;
    }

    /// How many events the outbox holds.
    async fn outbox(&self) -> i64 {
        let client = reqwest::Client::new();
        let answer: Value = client
            .get(format!("{}/events?limit=1", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["total"].as_i64().unwrap()
    }
}

/// Waits until `count` reaches `n`; answers when it did.
async fn reached(count: &AtomicU64, n: u64, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while count.load(Ordering::Acquire) < n {
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Some(Instant::now())
}

fn rate(n: usize, from: Instant, to: Option<Instant>) -> String {
    match to {
        Some(to) => format!(
            "{:>9.0} events/s ({:.2} s)",
            n as f64 / (to - from).as_secs_f64(),
            (to - from).as_secs_f64()
        ),
        None => "did not finish in time".into(),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();

    // The outbox, a webhook and NATS.
    let webhook_count = Arc::new(AtomicU64::new(0));
    let receiver = {
        let count = webhook_count.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| {
                let count = count.clone();
                async move {
                    if body.contains("\"stock.changed\"") {
                        count.fetch_add(1, Ordering::AcqRel);
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    };
    let nats = async_nats::connect("127.0.0.1:4222")
        .await
        .expect("NATS at 127.0.0.1:4222");
    let mut subscriber = nats
        .subscribe("stockline.events.stock.changed")
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let nats_count = Arc::new(AtomicU64::new(0));
    {
        let count = nats_count.clone();
        tokio::spawn(async move {
            while subscriber.next().await.is_some() {
                count.fetch_add(1, Ordering::AcqRel);
            }
        });
    }
    let server = start(&["--nats-url", "nats://127.0.0.1:4222"]).await;
    let client = reqwest::Client::new();
    let hook: Value = client
        .post(format!("{}/webhooks", server.base))
        .bearer_auth(&server.token)
        .json(&json!({ "url": receiver, "types": ["stock.changed"], "secret": "bench-secret-0123456789" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(hook["id"].is_string(), "{hook}");
    let n = args.events;
    let started = Instant::now();
    server.changes(n).await;
    let made = Instant::now();
    let written = {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let total = server.outbox().await;
            if total as usize > n || Instant::now() > deadline {
                break (total as usize > n).then(Instant::now);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let nats_done = reached(&nats_count, n as u64, Duration::from_secs(300)).await;
    let hook_done = reached(&webhook_count, n as u64, Duration::from_secs(600)).await;
    println!(
        "{n} line changes made in {:.2} s (bulk, async durability)",
        (made - started).as_secs_f64()
    );
    println!(
        "outbox (changes made and events written) {}",
        rate(n, started, written)
    );
    println!(
        "to NATS (from the first change)         {}",
        rate(n, started, nats_done)
    );
    println!(
        "to a webhook (from the first change)    {}",
        rate(n, started, hook_done)
    );
    server.finish().await;

    // The SSE fan-out.
    let server = start(&[]).await;
    let k = args.fanout_events as u64;
    let counts: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.streams).map(|_| AtomicU64::new(0)).collect());
    let connected = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for i in 0..args.streams {
        let (client, url, token) = (
            client.clone(),
            format!("{}/events/stream?types=stock.changed", server.base),
            server.token.clone(),
        );
        let (counts, connected) = (counts.clone(), connected.clone());
        tokio::spawn(async move {
            let response = client.get(url).bearer_auth(token).send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            connected.fetch_add(1, Ordering::AcqRel);
            let mut body = response.bytes_stream();
            let mut tail = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                tail.push_str(&String::from_utf8_lossy(&chunk));
                let mut seen = 0;
                while let Some(end) = tail.find("\n\n") {
                    if tail[..end].contains("event: stock.changed") {
                        seen += 1;
                    }
                    tail.drain(..end + 2);
                }
                if counts[i].fetch_add(seen, Ordering::AcqRel) + seen >= k {
                    return;
                }
            }
        });
    }
    reached(&connected, args.streams as u64, Duration::from_secs(120))
        .await
        .expect("every stream connected");
    let started = Instant::now();
    server.changes(k as usize).await;
    let mut done = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if counts.iter().all(|c| c.load(Ordering::Acquire) >= k) {
            done = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivered: u64 = counts
        .iter()
        .map(|c| c.load(Ordering::Acquire).min(k))
        .sum();
    match done {
        Some(done) => {
            let secs = (done - started).as_secs_f64();
            println!(
                "SSE fan-out: {} clients x {k} events = {delivered} deliveries in {secs:.2} s: {:.0} deliveries/s",
                args.streams,
                delivered as f64 / secs
            );
        }
        None => println!(
            "SSE fan-out: {} clients x {k} events: only {delivered} deliveries in time (cut off or too slow)",
            args.streams
        ),
    }
    server.finish().await;
}
