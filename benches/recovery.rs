//! Start-up and memory with a big stored catalog, through the real binary.
//!
//! Seeds `--lines` stock lines with SQL (products x `--warehouses`) into a fresh database,
//! starts `stockline serve` on it, and reports:
//! - time from spawn to listening (recovery done) and RSS then;
//! - first touches of `--touch-percent` of the products (each reads all its lines through
//!   `GET /products/{id}/availability`) from `--clients` concurrent clients: latency of
//!   those cold reads, then of the same reads again warm, and RSS after;
//! - RSS once the touched lines have gone idle and left memory (`--idle-ms`).
//!
//! Run: `cargo bench --bench recovery -- --lines 1000000`.

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Stock lines to store.
    #[arg(long, default_value_t = 100_000)]
    lines: i64,
    #[arg(long, default_value_t = 2)]
    warehouses: i64,
    /// Share of the products to touch, in percent.
    #[arg(long, default_value_t = 10)]
    touch_percent: i64,
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How long a line stays in memory with no work (longer than the touching takes, so
    /// the warm pass finds the lines still in memory).
    #[arg(long, default_value_t = 20_000)]
    idle_ms: u64,
    /// Before the `/metrics` scrapes, give every touched line an actor (one receipt of a
    /// unit each, in bulk adjustments of 1,000).
    #[arg(long)]
    activate: bool,
    #[arg(long, hide = true)]
    bench: bool,
}

/// A fresh database with `args.lines` stock lines; answers its name and the time taken.
async fn seed(args: &Args) -> (String, Duration) {
    let (name, pool) = testkit::fresh_pool().await;
    let started = Instant::now();
    let products = args.lines / args.warehouses;
    sqlx::query(
        "INSERT INTO warehouses (id, code, name) SELECT g, 'W' || g, 'W' FROM generate_series(1, $1) g",
    )
    .bind(args.warehouses)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO products (id, sku, name, price_cents) SELECT g, 'S' || g, 'P', 100 FROM generate_series(1, $1) g")
        .bind(products)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO stock_lines (warehouse_id, product_id, on_hand, reserved, version, updated_at)
         SELECT w, p, 100, 0, 1, now() FROM generate_series(1, $1) w, generate_series(1, $2) p",
    )
    .bind(args.warehouses)
    .bind(products)
    .execute(&pool)
    .await
    .unwrap();
    // Sequences follow the explicit ids, as after a real import.
    for table in ["warehouses", "products"] {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("VACUUM ANALYZE stock_lines")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    (name, started.elapsed())
}

/// The real binary over `name`, its log on this bench's stderr; answers it and its URL.
fn start(name: &str, idle_ms: u64) -> (Child, String) {
    let idle_ms = idle_ms.to_string();
    let mut env = testkit::ADMIN_ENV.to_vec();
    env.push(("STOCKLINE_LINE_IDLE_MS", idle_ms.as_str()));
    testkit::start_binary_logging(name, &env, Stdio::inherit())
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

async fn metric(client: &reqwest::Client, url: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// Reads the availability of `products` from `clients` concurrent clients; answers the
/// latency histogram (microseconds).
async fn touch(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    products: Arc<Vec<i64>>,
    clients: usize,
) -> Histogram<u64> {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, api, token) = (client.clone(), api.to_owned(), token.to_owned());
            let (next, products) = (next.clone(), products.clone());
            tokio::spawn(async move {
                let mut latencies = Histogram::<u64>::new(3).unwrap();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(product) = products.get(i) else {
                        break;
                    };
                    let started = Instant::now();
                    let response = client
                        .get(format!("{api}/products/{product}/availability"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    let body: Value = response.json().await.unwrap();
                    assert_eq!(
                        body["on_hand"],
                        100 * body["warehouses"].as_array().unwrap().len()
                    );
                    latencies
                        .record(started.elapsed().as_micros() as u64)
                        .unwrap();
                }
                latencies
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3).unwrap();
    for task in tasks {
        all.add(task.await.unwrap()).unwrap();
    }
    all
}

/// One receipt of a unit on every line of `products`: each line gets an actor.
async fn activate(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    products: &[i64],
    warehouses: i64,
) {
    let items: Vec<Value> = products
        .iter()
        .flat_map(|&product| {
            (1..=warehouses).map(move |warehouse| {
                json!({ "warehouse_id": warehouse, "product_id": product, "delta": 1, "reason": "receipt" })
            })
        })
        .collect();
    for chunk in items.chunks(1000) {
        let response = client
            .post(format!("{api}/stock/adjustments/bulk"))
            .bearer_auth(token)
            .json(&chunk)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// `GET /metrics` `times` times, one after another: (median, slowest, bytes).
async fn scrapes(client: &reqwest::Client, url: &str, times: usize) -> (Duration, Duration, usize) {
    timed(client, &format!("{url}/metrics"), "", times).await
}

/// `GET url` `times` times, one after another: (median, slowest, bytes of the last).
async fn timed(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    times: usize,
) -> (Duration, Duration, usize) {
    let mut took = Vec::with_capacity(times);
    let mut bytes = 0;
    for _ in 0..times {
        let started = Instant::now();
        let response = client.get(url).bearer_auth(token).send().await.unwrap();
        assert!(response.status().is_success(), "{url}");
        bytes = response.text().await.unwrap().len();
        took.push(started.elapsed());
    }
    took.sort();
    (took[times / 2], took[times - 1], bytes)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (name, seeded) = seed(&args).await;
    println!(
        "recovery: {} lines ({} products x {} warehouses), seeded in {:.1} s",
        args.lines,
        args.lines / args.warehouses,
        args.warehouses,
        seeded.as_secs_f64()
    );

    let spawned = Instant::now();
    let (mut child, url) = start(&name, args.idle_ms);
    let ready = spawned.elapsed();
    let pid = child.id();
    println!(
        "  ready (listening) after {:.2} s, RSS {:.0} MiB",
        ready.as_secs_f64(),
        rss_mib(pid)
    );

    let client = reqwest::Client::new();
    let api = format!("{url}/api/v1");
    let token = testkit::TestApp::attach(&url, &name).await.admin;
    let products = args.lines / args.warehouses;
    let step = (100 / args.touch_percent.clamp(1, 100)).max(1);
    let touched: Arc<Vec<i64>> = Arc::new((1..=products).step_by(step as usize).collect());

    let before = scrapes(&client, &url, 20).await;
    let started = Instant::now();
    let cold = touch(&client, &api, &token, touched.clone(), args.clients).await;
    let cold_secs = started.elapsed().as_secs_f64();
    let warm = touch(&client, &api, &token, touched.clone(), args.clients).await;
    let in_memory = metric(&client, &url, "stockline_lines").await;
    println!(
        "  touched {} products ({} lines) from {} clients in {:.1} s: {in_memory} lines in memory, RSS {:.0} MiB",
        touched.len(),
        touched.len() as i64 * args.warehouses,
        args.clients,
        cold_secs,
        rss_mib(pid)
    );
    println!(
        "  availability, first touch (cold): p50 {:.2} ms, p99 {:.2} ms; again (warm): p50 {:.2} ms, p99 {:.2} ms",
        ms(&cold, 0.5),
        ms(&cold, 0.99),
        ms(&warm, 0.5),
        ms(&warm, 0.99)
    );
    if args.activate {
        activate(&client, &api, &token, &touched, args.warehouses).await;
    }
    let after = scrapes(&client, &url, 20).await;
    // What the console's hot-lines page asks once a second.
    let hot = timed(
        &client,
        &format!("{api}/admin/actors?sort=messages_per_second&limit=25"),
        &token,
        20,
    )
    .await;
    println!(
        "  GET /admin/actors?sort=messages_per_second&limit=25 (20 times) with {in_memory} lines in memory: median {:.2} ms, slowest {:.2} ms",
        hot.0.as_secs_f64() * 1e3,
        hot.1.as_secs_f64() * 1e3,
    );
    println!(
        "  GET /metrics (20 scrapes): {in_memory} lines in memory ({} with an actor): median {:.2} ms, slowest {:.2} ms, {} bytes; \
         before touching: median {:.2} ms, {} bytes",
        metric(&client, &url, "stockline_lines_active").await,
        after.0.as_secs_f64() * 1e3,
        after.1.as_secs_f64() * 1e3,
        after.2,
        before.0.as_secs_f64() * 1e3,
        before.2,
    );
    println!(
        "  first touch adds {:.2} ms at p50, {:.2} ms at p99; {} load queries for {} lines",
        ms(&cold, 0.5) - ms(&warm, 0.5),
        ms(&cold, 0.99) - ms(&warm, 0.99),
        metric(&client, &url, "stockline_line_load_queries_total").await,
        metric(&client, &url, "stockline_line_loads_total").await,
    );

    let idle_started = Instant::now();
    while metric(&client, &url, "stockline_lines").await > 0.0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // A line leaves within the idle time plus one sweep (half the idle time) after it.
        let limit = Duration::from_millis(args.idle_ms * 2) + Duration::from_secs(60);
        assert!(idle_started.elapsed() < limit, "lines never left");
    }
    println!(
        "  idle: every line left memory after {:.1} s, RSS {:.0} MiB",
        idle_started.elapsed().as_secs_f64(),
        rss_mib(pid)
    );

    // Listings over every line, all of them out of memory now.
    for path in [
        format!("/warehouses/1/stock?limit=50&offset={}", products / 2),
        "/alerts/low-stock".to_owned(),
        "/admin/actors?limit=10".to_owned(),
    ] {
        let started = Instant::now();
        let response = client
            .get(format!("{api}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let _: Value = response.json().await.unwrap();
        println!(
            "  GET {path}: {:.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
    }

    let _ = child.kill();
    let _ = child.wait();
    testkit::drop_database(&name).await;
}
