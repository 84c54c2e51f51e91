//! The load harness: stockline (in `sync` and `async` durability) against the row-lock
//! baseline, on the same PostgreSQL, in the same run, over HTTP with many concurrent
//! clients. Run: `cargo bench --bench load` (or `-- --duration 10` for a short run).
//!
//! Scenarios: `hot` (every reservation on one product), `zipf` (skewed over 10,000
//! products), `mixed` (reserve, commit, release, availability reads, transfers). Each run
//! gets fresh databases, seeded with SQL (stockline recovers the seed at start, as after a
//! restart). After each run the books are checked in PostgreSQL: nothing oversold, every
//! line's `reserved` equal to its pending reservations, the movement ledger summing to
//! `on_hand`. It ends with a table and one line per scenario:
//! `ratio <scenario> actor/row-lock: <x>` (stockline in `sync` mode against the baseline).

mod rowlock;
mod workload;

/// The allocator the `stockline` binary uses, so the in-process server runs as it would.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use clap::Parser;
use sqlx::{Connection, PgPool};
use workload::{Outcome, Scenario, Target};

#[derive(Parser, Debug)]
#[command(about = "stockline load harness")]
struct Args {
    /// Seconds each scenario runs per design.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Scenarios to run.
    #[arg(long, value_delimiter = ',', default_value = "hot,zipf,mixed")]
    scenarios: Vec<Scenario>,
    /// PostgreSQL server for the fresh databases.
    #[arg(
        long,
        env = "LOAD_DATABASE_BASE",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    database_base: String,
    /// Drive a stockline already running at this base URL (`http://host:port`) instead of
    /// starting one; it must hold the seed (see `--print-seed`). Skips the baseline and books.
    #[arg(long)]
    url: Option<String>,
    /// Bearer token for `--url`.
    #[arg(long)]
    token: Option<String>,
    /// Passed by `cargo bench`; ignored.
    /// Read every product's availability once before measuring, so that the run sees the
    /// lines in memory (without it, the run includes the first touch of each line after
    /// start, one query per product).
    #[arg(long)]
    warm: bool,
    /// Instead of the designs side by side: stockline with per-request metrics on and off,
    /// alternating for `--rounds` rounds per scenario and durability, and their ratio.
    #[arg(long)]
    metrics_ab: bool,
    /// Instead of the designs side by side: stockline with events (the outbox) on and
    /// off, alternating as `--metrics-ab` does.
    #[arg(long)]
    events_ab: bool,
    /// Rounds of `--metrics-ab` and `--events-ab`.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

/// Products seeded; every scenario picks among them.
pub const PRODUCTS: i64 = 10_000;
/// On hand per line: enough that no run can drain one.
pub const STOCK: i64 = 1_000_000_000;
const ADMIN: (&str, &str) = ("load@stockline.test", "load-password");

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    let duration = Duration::from_secs(args.duration);
    if let Some(url) = &args.url {
        let token = args.token.clone().unwrap_or_default();
        for scenario in &args.scenarios {
            let target = Target::new(format!("{url}/api/v1"), token.clone());
            let outcome =
                workload::run(*scenario, &target, args.clients, duration, None, "remote").await;
            print_table(&[(*scenario, "actor", "remote", outcome)]);
        }
        return;
    }
    if args.metrics_ab {
        return ab(&args, duration, Switch::Metrics).await;
    }
    if args.events_ab {
        return ab(&args, duration, Switch::Events).await;
    }
    let mut rows = Vec::new();
    for scenario in &args.scenarios {
        for durability in ["sync", "async"] {
            let outcome = run_stockline(&args, *scenario, durability, duration).await;
            rows.push((*scenario, "actor", durability, outcome));
        }
        let outcome = run_baseline(&args, *scenario, duration).await;
        rows.push((*scenario, "row-lock", "-", outcome));
    }
    if args.scenarios.contains(&Scenario::Hot) {
        let peak = rows
            .iter()
            .find(|(s, d, m, _)| *s == Scenario::Hot && *d == "actor" && *m == "sync")
            .map(|r| r.3.requests_per_second())
            .unwrap_or(0.0);
        // Half the peak request rate; a hot step is two requests (reserve, release).
        let rate = (peak / 2.0 / 2.0).max(1.0);
        let outcome = run_stockline_at(
            &args,
            Scenario::Hot,
            "sync",
            duration / 2,
            Some(rate),
            Switches::ON,
        )
        .await;
        rows.push((Scenario::Hot, "actor @50%", "sync", outcome));
    }
    print_table(&rows);
    for scenario in &args.scenarios {
        let rate = |design: &str, mode: &str| {
            rows.iter()
                .find(|(s, d, m, _)| s == scenario && *d == design && *m == mode)
                .map(|r| r.3.requests_per_second())
                .unwrap_or(0.0)
        };
        let (actor, baseline) = (rate("actor", "sync"), rate("row-lock", "-"));
        println!(
            "ratio {} actor/row-lock: {:.1}",
            scenario.name(),
            actor / baseline.max(1e-9)
        );
    }
    let failed: Vec<_> = rows.iter().filter(|r| !r.3.books.is_empty()).collect();
    for (scenario, design, mode, outcome) in &failed {
        println!(
            "BOOKS WRONG {} {design} {mode}: {}",
            scenario.name(),
            outcome.books.join("; ")
        );
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

/// What `--metrics-ab` and `--events-ab` switch.
#[derive(Clone, Copy)]
enum Switch {
    Metrics,
    Events,
}

impl Switch {
    fn name(self) -> &'static str {
        match self {
            Self::Metrics => "metrics",
            Self::Events => "events",
        }
    }

    /// Everything on but this, set to `on`.
    fn with(self, on: bool) -> Switches {
        match self {
            Self::Metrics => Switches {
                metrics: on,
                ..Switches::ON
            },
            Self::Events => Switches {
                events: on,
                ..Switches::ON
            },
        }
    }
}

/// The server's switches for a run.
#[derive(Clone, Copy)]
pub struct Switches {
    pub metrics: bool,
    pub events: bool,
}

impl Switches {
    pub const ON: Self = Self {
        metrics: true,
        events: true,
    };
}

/// One switch on against off, in the same run: on and off alternate, and which goes first
/// alternates by round (on, off, off, on, ...), so that the machine's drift and any
/// advantage of running second fall on both alike.
async fn ab(args: &Args, duration: Duration, switch: Switch) {
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    let labels = match switch {
        Switch::Metrics => ["metrics on", "metrics off"],
        Switch::Events => ["events on", "events off"],
    };
    for scenario in &args.scenarios {
        for durability in ["sync", "async"] {
            let (mut on, mut off) = (0.0, 0.0);
            for round in 0..args.rounds {
                let order = if round % 2 == 0 {
                    [true, false]
                } else {
                    [false, true]
                };
                for enabled in order {
                    let switches = switch.with(enabled);
                    let outcome =
                        run_stockline_at(args, *scenario, durability, duration, None, switches)
                            .await;
                    *(if enabled { &mut on } else { &mut off }) += outcome.requests_per_second();
                    let design = if enabled { labels[0] } else { labels[1] };
                    rows.push((*scenario, design, durability, outcome));
                }
            }
            ratios.push((scenario.name(), durability, on / off.max(1e-9)));
        }
    }
    print_table(&rows);
    for (scenario, durability, ratio) in ratios {
        println!(
            "ratio {scenario} {durability} {} on/off: {ratio:.3}",
            switch.name()
        );
    }
}

fn print_table(rows: &[(Scenario, &str, &str, Outcome)]) {
    println!();
    println!(
        "{:<8} {:<11} {:<10} {:>10} {:>8} {:>8} {:>9} {:>7}  statuses",
        "scenario", "design", "durability", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    );
    for (scenario, design, mode, o) in rows {
        println!(
            "{:<8} {:<11} {:<10} {:>10.0} {:>8.2} {:>8.2} {:>9.2} {:>7}  {}",
            scenario.name(),
            design,
            mode,
            o.requests_per_second(),
            o.percentile_ms(50.0),
            o.percentile_ms(99.0),
            o.percentile_ms(99.9),
            o.errors,
            o.statuses()
        );
    }
    println!();
}

async fn fresh_database(base: &str) -> (String, String) {
    let name = format!("slload_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("postgres");
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .expect("create");
    (name.clone(), format!("{base}/{name}"))
}

async fn drop_database(base: &str, name: &str) {
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("postgres");
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .ok();
}

/// The seed of a stockline database: two warehouses, `PRODUCTS` products, a line of
/// `STOCK` in each, and the receipts that put it there, in the ledger.
async fn seed_stockline(pool: &PgPool) {
    for statement in [
        "INSERT INTO warehouses (id, code, name, priority) VALUES (1, 'W1', 'W1', 1), (2, 'W2', 'W2', 2)",
        "INSERT INTO products (id, sku, name, price_cents) SELECT g, 'SKU' || g, 'Product ' || g, 100 FROM generate_series(1, 10000) g",
        "SELECT setval('products_id_seq', 10000)",
        "SELECT setval('warehouses_id_seq', 2)",
        "INSERT INTO stock_lines SELECT w, g, 1000000000, 0, 1, now() FROM generate_series(1, 10000) g, (VALUES (1), (2)) AS t(w)",
        "INSERT INTO movements (id, warehouse_id, product_id, kind, quantity, on_hand_after, reserved_after, reference, at)
         SELECT row_number() OVER (), w, g, 'adjust', 1000000000, 1000000000, 0, 'receipt', now()
         FROM generate_series(1, 10000) g, (VALUES (1), (2)) AS t(w)",
        "INSERT INTO settings (key, value) VALUES ('journal_lsn', '20000')",
    ] {
        sqlx::query(statement).execute(pool).await.expect("seed");
    }
}

async fn run_stockline(
    args: &Args,
    scenario: Scenario,
    durability: &str,
    duration: Duration,
) -> Outcome {
    run_stockline_at(args, scenario, durability, duration, None, Switches::ON).await
}

async fn run_stockline_at(
    args: &Args,
    scenario: Scenario,
    durability: &str,
    duration: Duration,
    rate: Option<f64>,
    switches: Switches,
) -> Outcome {
    let (name, url) = fresh_database(&args.database_base).await;
    let pool = stockline::store::connect_and_migrate(&url)
        .await
        .expect("migrate");
    seed_stockline(&pool).await;
    let config = workload::config(&url, durability, ADMIN, switches);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = stockline::startup::launch(listener, config, async {
        let _ = stopped.await;
    })
    .await
    .expect("stockline starts");
    let base = format!("http://{addr}/api/v1");
    let token = workload::login(&base, ADMIN).await;
    if args.warm {
        warm(&base, &token, args.clients).await;
    }
    let label = format!("{} actor {durability}", scenario.name());
    // The WAL PostgreSQL writes per request (the whole server's, so other databases'
    // writes count too; on a quiet machine that is this run's).
    let wal = || async {
        sqlx::query_scalar::<_, i64>("SELECT (pg_current_wal_lsn() - '0/0')::bigint")
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
    };
    let wal_before = wal().await;
    let mut outcome = workload::run(
        scenario,
        &Target::new(base, token),
        args.clients,
        duration,
        rate,
        &label,
    )
    .await;
    let requests = outcome.requests_per_second() * duration.as_secs_f64();
    eprintln!(
        "{label} (metrics {}, events {}): {:.0} WAL bytes per request",
        switches.metrics,
        switches.events,
        (wal().await - wal_before) as f64 / requests.max(1.0)
    );
    let _ = stop.send(());
    server.await.expect("server task").expect("stops cleanly");
    outcome.books = workload::check_stockline_books(&pool).await;
    pool.close().await;
    drop_database(&args.database_base, &name).await;
    outcome
}

/// Reads the availability of every product once, from `clients` tasks.
async fn warm(base: &str, token: &str, clients: usize) {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(1));
    let client = reqwest::Client::new();
    let readers: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            let (base, token) = (base.to_owned(), token.to_owned());
            tokio::spawn(async move {
                loop {
                    let product = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if product > PRODUCTS {
                        return;
                    }
                    let read = client
                        .get(format!("{base}/products/{product}/availability"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .expect("availability");
                    assert!(read.status().is_success(), "warming product {product}");
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.expect("warming");
    }
}

async fn run_baseline(args: &Args, scenario: Scenario, duration: Duration) -> Outcome {
    let (name, url) = fresh_database(&args.database_base).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(32)
        .connect(&url)
        .await
        .expect("connect");
    sqlx::raw_sql(rowlock::SCHEMA)
        .execute(&pool)
        .await
        .expect("schema");
    sqlx::query("INSERT INTO rl_stock SELECT w, g, 1000000000, 0 FROM generate_series(1, 10000) g, (VALUES (1), (2)) AS t(w)")
        .execute(&pool)
        .await
        .expect("seed");
    let base = rowlock::start(pool.clone()).await;
    let label = format!("{} row-lock", scenario.name());
    let mut outcome = workload::run(
        scenario,
        &Target::new(base, String::new()),
        args.clients,
        duration,
        None,
        &label,
    )
    .await;
    outcome.books = workload::check_rowlock_books(&pool).await;
    pool.close().await;
    drop_database(&args.database_base, &name).await;
    outcome
}
