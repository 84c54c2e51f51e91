//! The load harness: stockline (in `sync` and `async` durability) against the row-lock
//! baseline and against Redis (with `appendfsync always` and without persistence), on
//! the same machine, in the same run, over HTTP with many concurrent clients. Run:
//! `cargo bench --bench load` (or `-- --duration 10` for a short run; `-- --clients 1000`
//! for flash-sale concurrency).
//!
//! Scenarios: `hot` (every reservation on one product), `zipf` (skewed over 10,000
//! products), `mixed` (reserve, commit, release, availability reads, transfers). Each
//! design gets fresh state, seeded alike (stockline recovers its seed at start, as after a
//! restart). Per design it measures the closed loop (each client's next step when the last
//! is answered: the peak) and, unless `--slo-trials 0`, the SLO throughput: the highest
//! open-loop arrival rate at which p99 stays under `--slo-ms` (found by bisection, one
//! short trial per step). After each design the books are checked where it keeps them:
//! nothing oversold, every line's `reserved` equal to its pending reservations, and for
//! stockline the movement ledger summing to `on_hand`. It ends with a table and, per
//! scenario, the lines scripts read: `ratio <scenario> actor/row-lock: <x>`,
//! `ratio <scenario> actor/redis-aof: <x>` (stockline `sync` against each) and
//! `ratio <scenario> sync/async: <x>`.

mod baseline;
mod cpu;
mod redis;
mod rowlock;
mod workload;

/// The allocator the `stockline` binary uses, so the in-process server runs as it would.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use clap::{Parser, ValueEnum};
use sqlx::PgPool;
use workload::{Load, Outcome, Scenario, Target};

#[derive(Parser, Debug)]
#[command(about = "stockline load harness")]
struct Args {
    /// Seconds each scenario runs per design (closed loop).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Concurrent clients (connections) per design; the open loop's bound too.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Scenarios to run.
    #[arg(long, value_delimiter = ',', default_value = "hot,zipf,mixed")]
    scenarios: Vec<Scenario>,
    /// Designs to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "actor-sync,actor-async,row-lock,redis-aof,redis-none"
    )]
    designs: Vec<Design>,
    /// The latency objective of the SLO throughput: p99 under this many milliseconds.
    #[arg(long, default_value_t = 50)]
    slo_ms: u64,
    /// Open-loop trials per design in the search for the SLO throughput (0: skip it).
    #[arg(long, default_value_t = 6)]
    slo_trials: u32,
    /// PostgreSQL server for the fresh databases.
    #[arg(
        long,
        env = "LOAD_DATABASE_BASE",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    database_base: String,
    /// Drive a stockline already running at this base URL (`http://host:port`) instead of
    /// starting one; it must hold the seed (see `--print-seed`). Skips the baseline and books.
    /// Several, comma-separated (the nodes of a cluster), are sent requests in turn.
    #[arg(long)]
    url: Option<String>,
    /// Bearer token for `--url`.
    #[arg(long)]
    token: Option<String>,
    /// With several `--url`s: send each request to the node that owns its shard, as the
    /// cluster map (`GET /cluster/shards`) says, instead of to the nodes in turn.
    #[arg(long)]
    owner_routed: bool,
    /// Create a fresh database holding the seed (migrated, two warehouses, `PRODUCTS`
    /// stocked products), print its URL and exit: start `stockline serve` on it to drive it
    /// with `--url`, e.g. to measure the server's and the clients' processes apart.
    #[arg(long)]
    print_seed: bool,
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
    /// Instead of the designs side by side: stockline with the pipelined flusher (two
    /// batches in flight) against one batch at a time, alternating as `--metrics-ab` does.
    #[arg(long)]
    pipeline_ab: bool,
    /// Rounds of `--metrics-ab`, `--events-ab` and `--pipeline-ab`.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// With `--metrics-ab`, `--events-ab` or `--pipeline-ab`: offer this many requests per
    /// second (open loop) instead of the closed loop, and compare the p99 and the CPU per
    /// request at that rate.
    #[arg(long)]
    rate: Option<f64>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What serves the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Design {
    /// stockline, `sync` durability.
    ActorSync,
    /// stockline, `async` durability.
    ActorAsync,
    /// A transaction per request locking the stock row in PostgreSQL.
    RowLock,
    /// Lua scripts in Redis with `appendfsync always`.
    RedisAof,
    /// Lua scripts in Redis without persistence.
    RedisNone,
}

impl Design {
    /// The table's design and durability columns.
    fn columns(self) -> (&'static str, &'static str) {
        match self {
            Self::ActorSync => ("actor", "sync"),
            Self::ActorAsync => ("actor", "async"),
            Self::RowLock => ("row-lock", "sync"),
            Self::RedisAof => ("redis", "aof-always"),
            Self::RedisNone => ("redis", "none"),
        }
    }
}

/// Products seeded; every scenario picks among them.
pub const PRODUCTS: i64 = 10_000;
/// On hand per line: enough that no run can drain one.
pub const STOCK: i64 = 1_000_000_000;

/// One design's figures for a scenario.
struct Row {
    scenario: Scenario,
    design: &'static str,
    durability: &'static str,
    outcome: Outcome,
    /// The SLO throughput (requests a second answered) and the trial that reached it.
    slo: Option<(f64, Outcome)>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    // Clients and server share this process: two sockets per connection.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if (limit as usize) < args.clients * 2 + 256 => eprintln!(
            "warning: the open-file limit is {limit}; {} clients need about {}",
            args.clients,
            args.clients * 2 + 256
        ),
        Ok(_) => {}
        Err(error) => eprintln!("warning: could not raise the open-file limit: {error}"),
    }
    let duration = Duration::from_secs(args.duration);
    if args.print_seed {
        let (name, pool) = testkit::fresh_pool_on(&args.database_base).await;
        seed_stockline(&pool).await;
        println!("{}/{name}", args.database_base);
        return;
    }
    if let Some(url) = &args.url {
        let token = args.token.clone().unwrap_or_default();
        for scenario in &args.scenarios {
            let bases = url.split(',').map(|u| format!("{u}/api/v1")).collect();
            let target = if args.owner_routed {
                Target::owner_routed(bases, token.clone()).await
            } else {
                Target::spread(bases, token.clone())
            };
            if args.warm {
                workload::warm(&target, args.clients).await;
            }
            let outcome = workload::run(
                *scenario,
                &target,
                args.clients,
                duration,
                Load::Closed,
                "remote",
            )
            .await;
            let routing = if args.owner_routed { "owner" } else { "remote" };
            print_table(&[(*scenario, "actor", routing, outcome)]);
        }
        return;
    }
    if args.metrics_ab {
        return ab(&args, duration, Switch::Metrics).await;
    }
    if args.events_ab {
        return ab(&args, duration, Switch::Events).await;
    }
    if args.pipeline_ab {
        return ab(&args, duration, Switch::Pipeline).await;
    }
    let mut rows: Vec<Row> = Vec::new();
    for scenario in &args.scenarios {
        for design in &args.designs {
            let baseline = !matches!(design, Design::ActorSync | Design::ActorAsync);
            if scenario.stockline_only() && baseline {
                continue;
            }
            rows.push(measure(&args, *scenario, *design, duration).await);
        }
    }
    // p99 at half the SLO throughput, in `sync`: what users see on a busy day that is
    // not the peak.
    let half = rows
        .iter()
        .find(|r| r.scenario == Scenario::Hot && (r.design, r.durability) == ("actor", "sync"))
        .and_then(|r| r.slo.as_ref())
        .map(|(rate, _)| rate / 2.0);
    let mut extra = Vec::new();
    if let Some(rate) = half.filter(|r| *r > 0.0) {
        let load = Load::Open {
            steps_per_second: rate / Scenario::Hot.requests_per_step(),
        };
        let mut stand = stand_up(&args, Design::ActorSync, Switches::ON).await;
        let outcome = workload::run(
            Scenario::Hot,
            &stand.target,
            args.clients,
            duration / 2,
            load,
            "hot actor @50% SLO",
        )
        .await;
        stand.books = tear_down(stand.teardown).await;
        extra.push((Scenario::Hot, "actor @50%slo", "sync", outcome));
    }
    let mut table: Vec<_> = rows
        .iter()
        .map(|r| (r.scenario, r.design, r.durability, r.outcome.clone()))
        .collect();
    table.extend(extra.iter().cloned());
    print_table(&table);
    if rows.iter().any(|r| r.slo.is_some()) {
        print_slo_table(&rows, args.slo_ms);
    }
    for scenario in &args.scenarios {
        let rate = |design: &str, durability: &str| {
            rows.iter()
                .find(|r| {
                    r.scenario == *scenario && r.design == design && r.durability == durability
                })
                .map(|r| r.outcome.requests_per_second())
        };
        let sync = rate("actor", "sync");
        for (name, other) in [
            ("actor/row-lock", rate("row-lock", "sync")),
            ("actor/redis-aof", rate("redis", "aof-always")),
            ("sync/async", rate("actor", "async")),
        ] {
            if let (Some(sync), Some(other)) = (sync, other) {
                println!(
                    "ratio {} {name}: {:.2}",
                    scenario.name(),
                    sync / other.max(1e-9)
                );
            }
        }
        if let (Some(actor), Some(redis)) = (rate("actor", "async"), rate("redis", "none")) {
            println!(
                "ratio {} async/redis-none: {:.2}",
                scenario.name(),
                actor / redis.max(1e-9)
            );
        }
    }
    let wrong: Vec<_> = rows
        .iter()
        .filter(|r| !r.outcome.books.is_empty())
        .collect();
    for row in &wrong {
        println!(
            "BOOKS WRONG {} {} {}: {}",
            row.scenario.name(),
            row.design,
            row.durability,
            row.outcome.books.join("; ")
        );
    }
    if !wrong.is_empty() {
        std::process::exit(1);
    }
}

/// One design on one scenario: the closed loop, then the search for the SLO throughput on
/// the same server, then its books.
async fn measure(args: &Args, scenario: Scenario, design: Design, duration: Duration) -> Row {
    let (name, durability) = design.columns();
    let label = format!("{} {name} {durability}", scenario.name());
    let mut stand = stand_up(args, design, Switches::ON).await;
    if args.warm {
        workload::warm(&stand.target, args.clients).await;
    }
    let wal_before = stand.wal().await;
    let mut outcome = closed_loop(args, scenario, &stand, duration, &label).await;
    if let Some(after) = stand.wal().await {
        let requests = outcome.histogram.len().max(1) as f64;
        eprintln!(
            "{label}: {:.0} WAL bytes per request",
            (after - wal_before.unwrap_or(after)) as f64 / requests
        );
    }
    let slo = if args.slo_trials > 0 {
        Some(
            slo_search(
                args,
                scenario,
                &stand.target,
                outcome.requests_per_second(),
                &label,
            )
            .await,
        )
    } else {
        None
    };
    stand.books = tear_down(stand.teardown).await;
    outcome.books = stand.books;
    Row {
        scenario,
        design: name,
        durability,
        outcome,
        slo,
    }
}

/// The highest open-loop request rate at which p99 stays under the SLO: bisection between
/// nothing and a little over the closed-loop `peak`, one trial per step. Answers the
/// requests answered per second in the best passing trial, and that trial.
async fn slo_search(
    args: &Args,
    scenario: Scenario,
    target: &Target,
    peak: f64,
    label: &str,
) -> (f64, Outcome) {
    let slo = Duration::from_millis(args.slo_ms);
    let trial = Duration::from_secs_f64((args.duration as f64 / 4.0).clamp(1.0, 5.0));
    let (mut low, mut high) = (0.0, peak * 1.25);
    let mut best: Option<(f64, Outcome)> = None;
    let mut rate = peak * 0.6;
    for _ in 0..args.slo_trials {
        let load = Load::Open {
            steps_per_second: rate / scenario.requests_per_step(),
        };
        let outcome = workload::run(
            scenario,
            target,
            args.clients,
            trial,
            load,
            &format!("{label} open {rate:.0}/s"),
        )
        .await;
        let met = outcome.meets(slo);
        eprintln!(
            "[{label}] open loop at {rate:.0} req/s: p99 {:.1} ms, {} dropped, {}",
            outcome.percentile_ms(99.0),
            outcome.dropped,
            if met {
                "within the SLO"
            } else {
                "misses the SLO"
            }
        );
        if met {
            low = rate;
            if best
                .as_ref()
                .is_none_or(|(r, _)| outcome.requests_per_second() > *r)
            {
                best = Some((outcome.requests_per_second(), outcome));
            }
        } else {
            high = rate;
        }
        rate = (low + high) / 2.0;
    }
    best.unwrap_or_else(|| (0.0, Outcome::empty()))
}

/// One closed-loop run of `scenario` against a design standing up.
async fn closed_loop(
    args: &Args,
    scenario: Scenario,
    stand: &Stand,
    duration: Duration,
    label: &str,
) -> Outcome {
    workload::run(
        scenario,
        &stand.target,
        args.clients,
        duration,
        Load::Closed,
        label,
    )
    .await
}

/// A design running with fresh, seeded state, and how to take it down.
struct Stand {
    target: Target,
    teardown: Teardown,
    books: Vec<String>,
}

enum Teardown {
    Actor {
        pool: PgPool,
        base: String,
        app: testkit::TestApp,
    },
    RowLock {
        pool: PgPool,
        base: String,
        database: String,
    },
    Redis {
        server: redis::Server,
        connection: ::redis::aio::MultiplexedConnection,
    },
}

impl Stand {
    /// PostgreSQL's WAL position (the whole server's, so other databases' writes count
    /// too; on a quiet machine that is this run's), for stockline only.
    async fn wal(&self) -> Option<i64> {
        let Teardown::Actor { pool, .. } = &self.teardown else {
            return None;
        };
        sqlx::query_scalar::<_, i64>("SELECT (pg_current_wal_lsn() - '0/0')::bigint")
            .fetch_one(pool)
            .await
            .ok()
    }
}

async fn stand_up(args: &Args, design: Design, switches: Switches) -> Stand {
    let (target, teardown) = match design {
        Design::ActorSync | Design::ActorAsync => {
            let durability = design.columns().1;
            let (database, pool) = testkit::fresh_pool_on(&args.database_base).await;
            seed_stockline(&pool).await;
            let flags = workload::flags(&args.database_base, durability, switches);
            let app =
                testkit::TestApp::start_tuned_on(&database, &flags, testkit::Tuning::Bench).await;
            let (base, token) = (app.url(""), app.admin.clone());
            let teardown = Teardown::Actor {
                pool,
                base: args.database_base.clone(),
                app,
            };
            (Target::new(base, token), teardown)
        }
        Design::RowLock => {
            let (database, url) = testkit::empty_database_on(&args.database_base).await;
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
            (
                Target::new(base, String::new()),
                Teardown::RowLock {
                    pool,
                    base: args.database_base.clone(),
                    database,
                },
            )
        }
        Design::RedisAof | Design::RedisNone => {
            let persistence = if design == Design::RedisAof {
                redis::Persistence::AofAlways
            } else {
                redis::Persistence::None
            };
            let server = redis::start_server(persistence).await;
            let client = ::redis::Client::open(server.url.as_str()).expect("redis url");
            let mut connection = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis connection");
            redis::seed(&mut connection).await;
            let base = redis::start(connection.clone()).await;
            (
                Target::new(base, String::new()),
                Teardown::Redis { server, connection },
            )
        }
    };
    Stand {
        target,
        teardown,
        books: Vec::new(),
    }
}

/// Stops the design and checks its books; answers the checks that failed.
async fn tear_down(teardown: Teardown) -> Vec<String> {
    match teardown {
        Teardown::Actor {
            pool,
            base,
            mut app,
        } => {
            app.stop().await;
            let books = workload::check_stockline_books(&pool).await;
            pool.close().await;
            testkit::drop_database_on(&base, &app.database).await;
            books
        }
        Teardown::RowLock {
            pool,
            base,
            database,
        } => {
            let books = workload::check_rowlock_books(&pool).await;
            pool.close().await;
            testkit::drop_database_on(&base, &database).await;
            books
        }
        Teardown::Redis {
            server,
            mut connection,
        } => {
            let books = redis::check_books(&mut connection).await;
            drop(server);
            books
        }
    }
}

/// What `--metrics-ab` and `--events-ab` switch.
#[derive(Clone, Copy)]
enum Switch {
    Metrics,
    Events,
    Pipeline,
}

impl Switch {
    fn name(self) -> &'static str {
        match self {
            Self::Metrics => "metrics",
            Self::Events => "events",
            Self::Pipeline => "pipeline",
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
            Self::Pipeline => Switches {
                pipeline: on,
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
    pub pipeline: bool,
}

impl Switches {
    pub const ON: Self = Self {
        metrics: true,
        events: true,
        pipeline: true,
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
        Switch::Pipeline => ["pipelined", "one batch"],
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
                    let design = if durability == "sync" {
                        Design::ActorSync
                    } else {
                        Design::ActorAsync
                    };
                    let mut stand = stand_up(args, design, switches).await;
                    let label = format!("{} {durability} {}", scenario.name(), switch.name());
                    let mut outcome = match args.rate {
                        None => closed_loop(args, *scenario, &stand, duration, &label).await,
                        Some(rate) => {
                            let load = Load::Open {
                                steps_per_second: rate / scenario.requests_per_step(),
                            };
                            let label = format!("{label} at {rate:.0}/s");
                            workload::run(
                                *scenario,
                                &stand.target,
                                args.clients,
                                duration,
                                load,
                                &label,
                            )
                            .await
                        }
                    };
                    stand.books = tear_down(stand.teardown).await;
                    outcome.books = stand.books;
                    let compared = match args.rate {
                        None => outcome.requests_per_second(),
                        Some(_) => outcome.percentile_ms(99.0),
                    };
                    *(if enabled { &mut on } else { &mut off }) += compared;
                    let design = if enabled { labels[0] } else { labels[1] };
                    rows.push((*scenario, design, durability, outcome));
                }
            }
            ratios.push((scenario.name(), durability, on / off.max(1e-9)));
        }
    }
    print_table(&rows);
    let compared = match args.rate {
        None => String::new(),
        Some(rate) => format!(" (p99 at {rate:.0} req/s)"),
    };
    for (scenario, durability, ratio) in ratios {
        println!(
            "ratio {scenario} {durability} {} on/off{compared}: {ratio:.3}",
            switch.name()
        );
    }
}

/// The SLO throughput per design, beside its closed-loop peak.
fn print_slo_table(rows: &[Row], slo_ms: u64) {
    println!("SLO throughput: the highest open-loop rate with p99 under {slo_ms} ms");
    println!(
        "{:<8} {:<11} {:<10} {:>10} {:>10} {:>8} {:>8}",
        "scenario", "design", "durability", "peak req/s", "SLO req/s", "p50 ms", "p99 ms"
    );
    for row in rows {
        let Some((rate, trial)) = &row.slo else {
            continue;
        };
        println!(
            "{:<8} {:<11} {:<10} {:>10.0} {:>10.0} {:>8.2} {:>8.2}",
            row.scenario.name(),
            row.design,
            row.durability,
            row.outcome.requests_per_second(),
            rate,
            trial.percentile_ms(50.0),
            trial.percentile_ms(99.0),
        );
    }
    println!();
}

fn print_table(rows: &[(Scenario, &str, &str, Outcome)]) {
    println!();
    println!(
        "{:<8} {:<11} {:<10} {:>10} {:>8} {:>8} {:>9} {:>7}  {:>39}  statuses",
        "scenario",
        "design",
        "durability",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "CPU us/req: all proc  cli   pg redis node nats"
    );
    for (scenario, design, mode, o) in rows {
        let [machine, harness, clients, postgres, redis, nodes, nats] = o.cpu_per_request();
        println!(
            "{:<8} {:<11} {:<10} {:>10.0} {:>8.2} {:>8.2} {:>9.2} {:>7}  {:>15.0} {:>4.0} {:>4.0} {:>4.0} {:>5.0} {:>4.0} {:>4.0}  {}",
            scenario.name(),
            design,
            mode,
            o.requests_per_second(),
            o.percentile_ms(50.0),
            o.percentile_ms(99.0),
            o.percentile_ms(99.9),
            o.errors,
            machine,
            harness,
            clients,
            postgres,
            redis,
            nodes,
            nats,
            o.statuses()
        );
    }
    println!();
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
