//! What the clients do, how it is measured, and how the books are checked afterwards.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use hdrhistogram::Histogram;
use rand::RngExt;
use serde_json::{Value, json};
use sqlx::PgPool;

use stockline_actors::{Home, ReservationId};

use crate::{PRODUCTS, STOCK};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Every reservation on one product.
    Hot,
    /// Reservations skewed (Zipf, s = 1.1) over 10,000 products.
    Zipf,
    /// Reserve, commit, release, availability reads and transfers.
    Mixed,
    /// Reservations of two products (uniform over 10,000), then release; in none of them
    /// are the two in different shards (cluster mode's reservations across shards).
    Basket0,
    /// The same, 10% of them across shards.
    Basket10,
    /// The same, 50% of them across shards.
    Basket50,
    /// Item changes of held carts: each sets one of 50 products in one of 20 carts to 0
    /// to 3 units, the cart's reservation following (a flash sale's carts). stockline only.
    Cart,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Hot => "hot",
            Self::Zipf => "zipf",
            Self::Mixed => "mixed",
            Self::Basket0 => "basket-0%x",
            Self::Basket10 => "basket-10%x",
            Self::Basket50 => "basket-50%x",
            Self::Cart => "cart",
        }
    }

    /// Whether only stockline runs it: the baselines hold one product per request and
    /// have no carts.
    pub fn stockline_only(self) -> bool {
        self.across_shards().is_some() || self == Self::Cart
    }

    /// Percent of reservations whose two products are in different shards (basket
    /// scenarios); `None` for the others.
    pub fn across_shards(self) -> Option<u32> {
        match self {
            Self::Basket0 => Some(0),
            Self::Basket10 => Some(10),
            Self::Basket50 => Some(50),
            _ => None,
        }
    }

    /// Requests in one client step (`hot` and `zipf` reserve, then release).
    pub fn requests_per_step(self) -> f64 {
        match self {
            Self::Hot | Self::Zipf | Self::Basket0 | Self::Basket10 | Self::Basket50 => 2.0,
            Self::Mixed | Self::Cart => 1.0,
        }
    }
}

/// Where requests go: one server, or the nodes of a cluster, either taken in turn (as a
/// load balancer that knows nothing of shards would) or, owner-routed, each request sent
/// to the node that owns its shard (as a shard-aware client or proxy would, from the
/// cluster map, `GET /cluster/shards`).
#[derive(Clone)]
pub struct Target {
    bases: Arc<[String]>,
    turn: Arc<std::sync::atomic::AtomicUsize>,
    /// Owner-routed: for each shard, the index in `bases` of its owner when the map was
    /// read (a request that finds the map stale is forwarded by the node it reached).
    owners: Option<Arc<[usize]>>,
    token: String,
    client: reqwest::Client,
}

/// What a request is about, for owner routing.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    /// Nothing a shard owns (or several): any node.
    Any,
    /// A product's stock: its shard's owner.
    Product(i64),
    /// A reservation: the owner of the shard its id names (a reservation across shards
    /// names none: any node).
    Reservation(&'a str),
}

impl Target {
    pub fn new(base: String, token: String) -> Self {
        Self::spread(vec![base], token)
    }

    pub fn spread(bases: Vec<String>, token: String) -> Self {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Self {
            bases: bases.into(),
            turn: Default::default(),
            owners: None,
            token,
            client,
        }
    }

    /// Requests to the nodes at `bases`, each to its shard's owner as the cluster map
    /// says. Panics if the map names an owner that is not among `bases`.
    pub async fn owner_routed(bases: Vec<String>, token: String) -> Self {
        let mut target = Self::spread(bases, token);
        let (status, map) = target
            .get("/cluster/shards", Via::Any)
            .await
            .expect("the cluster map");
        assert_eq!(status, 200, "the cluster map: {map}");
        let owners: Vec<usize> = map["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .map(|shard| {
                let address = shard["address"].as_str().unwrap_or_default();
                target
                    .bases
                    .iter()
                    .position(|base| base.contains(&format!("//{address}/")))
                    .unwrap_or_else(|| panic!("shard {shard} is owned outside {:?}", target.bases))
            })
            .collect();
        assert_eq!(
            owners.len(),
            usize::from(stockline::cluster::SHARDS),
            "{map}"
        );
        target.owners = Some(owners.into());
        target
    }

    /// The base URL for a request about `via`: its owner's when owner-routed, else the
    /// next in turn.
    fn base(&self, via: Via) -> &str {
        let shard = match via {
            Via::Any => None,
            Via::Product(product) => Some(stockline::cluster::shard_of(product)),
            Via::Reservation(id) => match id.parse().map(|id| ReservationId(id).home()) {
                Ok(Some(Home::One(shard))) => Some(shard),
                _ => None,
            },
        };
        if let (Some(owners), Some(shard)) = (&self.owners, shard) {
            return &self.bases[owners[usize::from(shard)]];
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        &self.bases[turn % self.bases.len()]
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), ()> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|_| ())?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    async fn post(
        &self,
        path: &str,
        body: Option<Value>,
        via: Via<'_>,
    ) -> Result<(u16, Value), ()> {
        let mut request = self.client.post(format!("{}{path}", self.base(via)));
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    async fn put(&self, path: &str, body: Value, via: Via<'_>) -> Result<(u16, Value), ()> {
        let url = format!("{}{path}", self.base(via));
        self.send(self.client.put(url).json(&body)).await
    }

    async fn get(&self, path: &str, via: Via<'_>) -> Result<(u16, Value), ()> {
        self.send(self.client.get(format!("{}{path}", self.base(via))))
            .await
    }
}

/// The flags of a stockline under load, on a database of `base` (the kit adds the rest):
/// no practical sign-in limit for the harness; `switches` turns per-request metrics,
/// events and the flush pipeline on or off.
pub fn flags<'a>(
    base: &'a str,
    durability: &'static str,
    switches: super::Switches,
) -> Vec<&'a str> {
    let on = |on: bool| if on { "true" } else { "false" };
    vec![
        "--database-base",
        base,
        "--durability",
        durability,
        "--auth-rate-per-minute",
        "1000000",
        "--metrics",
        on(switches.metrics),
        "--events",
        on(switches.events),
        "--flush-pipeline",
        on(switches.pipeline),
    ]
}

/// The name of the clients' threads (see [`clients_runtime`]).
pub const CLIENT_THREADS: &str = "load-client";

/// The runtime the clients run on: two workers of their own, apart from the runtime of the
/// server under test (stockline, or a baseline's handlers), as if they were another
/// process on the same two cores. With both on one runtime, 1,000 clients and 1,000 server
/// connections were scheduled in the same queues, and the process's CPU per request rose
/// by a third from 64 to 1,000 clients where, measured apart (`apart.sh`), the server's
/// rose by a tenth.
fn clients_runtime() -> &'static tokio::runtime::Runtime {
    static CLIENTS: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(CLIENT_THREADS)
            .enable_all()
            .build()
            .expect("the clients' runtime")
    });
    &CLIENTS
}

/// Reads the availability of every product once, from `clients` tasks.
pub async fn warm(target: &Target, clients: usize) {
    let next = Arc::new(std::sync::atomic::AtomicI64::new(1));
    let readers: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (target, next) = (target.clone(), next.clone());
            clients_runtime().spawn(async move {
                loop {
                    let product = next.fetch_add(1, Ordering::Relaxed);
                    if product > PRODUCTS {
                        return;
                    }
                    let read = target
                        .get(
                            &format!("/products/{product}/availability"),
                            Via::Product(product),
                        )
                        .await;
                    assert!(matches!(read, Ok((200, _))), "warming product {product}");
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.expect("warming");
    }
}

/// What one run measured.
#[derive(Clone)]
pub struct Outcome {
    pub elapsed: Duration,
    pub histogram: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: u64,
    /// Open loop: steps that found every connection busy and never started.
    pub dropped: u64,
    /// CPU time the run used, per part.
    pub cpu: crate::cpu::Sample,
    /// Book checks that failed (empty: the books are right).
    pub books: Vec<String>,
}

impl Outcome {
    /// Nothing measured (a search that found no rate within the SLO).
    pub fn empty() -> Self {
        Self {
            elapsed: Duration::from_secs(1),
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
            statuses: BTreeMap::new(),
            errors: 0,
            dropped: 0,
            cpu: crate::cpu::Sample::default(),
            books: Vec::new(),
        }
    }

    pub fn requests_per_second(&self) -> f64 {
        self.histogram.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        self.histogram.value_at_percentile(p) as f64 / 1000.0
    }

    /// Whether the run kept p99 under `slo`: at most 1% of the requests answered slower,
    /// failed or dropped (a dropped step counts as one request).
    pub fn meets(&self, slo: Duration) -> bool {
        let slo_us = slo.as_micros() as u64;
        let slow = self
            .histogram
            .count_between(slo_us + 1, self.histogram.max().max(slo_us + 1));
        let total = self.histogram.len() + self.dropped;
        total > 0 && (slow + self.errors + self.dropped) * 100 <= total
    }

    /// CPU microseconds per answered request: the machine's, this process's (clients and
    /// in-process server), the clients', PostgreSQL's, Redis's, the `stockline` nodes'
    /// and NATS's.
    pub fn cpu_per_request(&self) -> [f64; 7] {
        let requests = self.histogram.len().max(1) as f64;
        let per = |d: Duration| d.as_secs_f64() * 1e6 / requests;
        [
            per(self.cpu.machine),
            per(self.cpu.harness),
            per(self.cpu.clients),
            per(self.cpu.postgres),
            per(self.cpu.redis),
            per(self.cpu.nodes),
            per(self.cpu.nats),
        ]
    }

    pub fn statuses(&self) -> String {
        let parts: Vec<_> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}:{n}"))
            .collect();
        parts.join(" ")
    }
}

/// Shared by the clients of one run.
struct Recorder {
    histogram: Mutex<Histogram<u64>>,
    statuses: Mutex<BTreeMap<u16, u64>>,
    errors: AtomicU64,
    done: AtomicU64,
}

impl Recorder {
    fn record(&self, started: Instant, result: &Result<(u16, Value), ()>) {
        let micros = started.elapsed().as_micros() as u64;
        let _ = self
            .histogram
            .lock()
            .expect("histogram")
            .record(micros.max(1));
        self.done.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok((status, _)) => {
                *self
                    .statuses
                    .lock()
                    .expect("statuses")
                    .entry(*status)
                    .or_default() += 1;
                if !(200..300).contains(status) {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(()) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Zipf(s) over 1..=n by inverse CDF on precomputed weights.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: i64, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|k| {
                total += 1.0 / (k as f64).powf(s);
                total
            })
            .collect::<Vec<_>>();
        Self(cumulative.into_iter().map(|c| c / total).collect())
    }

    fn sample(&self, u: f64) -> i64 {
        self.0.partition_point(|c| *c < u) as i64 + 1
    }
}

/// The seed's products by shard (each shard holds about ten of the 10,000).
fn products_by_shard() -> &'static BTreeMap<u16, Vec<i64>> {
    static BY_SHARD: std::sync::OnceLock<BTreeMap<u16, Vec<i64>>> = std::sync::OnceLock::new();
    BY_SHARD.get_or_init(|| {
        let mut by_shard: BTreeMap<u16, Vec<i64>> = BTreeMap::new();
        for product in 1..=PRODUCTS {
            by_shard
                .entry(stockline::cluster::shard_of(product))
                .or_default()
                .push(product);
        }
        by_shard
    })
}

/// A second product for a basket with `product`: in another shard if `across`, else
/// another product of the same shard (itself if it is alone there). `u` picks which.
fn partner(product: i64, across: bool, u: f64) -> i64 {
    let shard = stockline::cluster::shard_of(product);
    let by_shard = products_by_shard();
    let pick = |products: &[i64]| products[(u * 7919.0) as usize % products.len()];
    if across {
        let others: Vec<u16> = by_shard.keys().copied().filter(|s| *s != shard).collect();
        let other = others[(u * 104_729.0) as usize % others.len()];
        return pick(&by_shard[&other]);
    }
    let same: Vec<i64> = by_shard[&shard]
        .iter()
        .copied()
        .filter(|p| *p != product)
        .collect();
    if same.is_empty() {
        product
    } else {
        pick(&same)
    }
}

/// Products the `cart` scenario puts in carts (a cart holds at most 100).
const CART_PRODUCTS: i64 = 50;
/// Held carts the `cart` scenario changes (a customer may have at most 20 open).
const CARTS: usize = 20;

/// The harness user's open held carts, made up to [`CARTS`] (an earlier round's are
/// reused).
async fn held_carts(target: &Target) -> Vec<String> {
    let ids = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["status"] == "open" && c["hold"] == true)
            .filter_map(|c| c["id"].as_str().map(str::to_owned))
            .collect()
    };
    let mut carts = match target.get("/carts?limit=500", Via::Any).await {
        Ok((200, list)) => ids(&list),
        _ => Vec::new(),
    };
    while carts.len() < CARTS {
        match target
            .post("/carts", Some(json!({ "hold": true })), Via::Any)
            .await
        {
            Ok((201, cart)) => carts.push(cart["id"].as_str().unwrap_or_default().to_owned()),
            other => panic!("the cart scenario could not make a cart: {other:?}"),
        }
    }
    carts.truncate(CARTS);
    carts
}

/// One client's step; answers the requests it made (each timed and recorded).
/// What every client of a run shares: the scenario, where requests go, the carts of the
/// `cart` scenario, the Zipf sampler and the recorder.
struct Clients {
    scenario: Scenario,
    target: Target,
    carts: Vec<String>,
    zipf: Zipf,
    recorder: Arc<Recorder>,
}

async fn step(clients: &Clients, pending: &mut Vec<String>, due: Instant) {
    let Clients {
        scenario,
        target,
        carts,
        zipf,
        recorder,
    } = clients;
    let scenario = *scenario;
    let (choice, u, product_pick) = {
        let mut rng = rand::rng();
        (
            rng.random_range(0..100u32),
            rng.random::<f64>(),
            rng.random_range(1..=100i64),
        )
    };
    let product = match scenario {
        Scenario::Hot => 1,
        Scenario::Zipf => zipf.sample(u),
        Scenario::Mixed => product_pick,
        Scenario::Cart => 1 + product_pick % CART_PRODUCTS,
        Scenario::Basket0 | Scenario::Basket10 | Scenario::Basket50 => {
            1 + (u * PRODUCTS as f64) as i64 % PRODUCTS
        }
    };
    let reserve = match scenario.across_shards() {
        None => json!({ "items": [{ "product_id": product, "quantity": 1 }] }),
        Some(percent) => {
            let other = partner(product, choice < percent, u);
            json!({ "items": [{ "product_id": product, "quantity": 1 }, { "product_id": other, "quantity": 1 }] })
        }
    };
    match (scenario, choice) {
        (
            Scenario::Hot
            | Scenario::Zipf
            | Scenario::Basket0
            | Scenario::Basket10
            | Scenario::Basket50,
            _,
        ) => {
            let started = due;
            let result = target
                .post("/reservations", Some(reserve), Via::Product(product))
                .await;
            recorder.record(started, &result);
            if let Ok((201, body)) = result {
                let id = body["id"].as_str().unwrap_or_default().to_owned();
                let started = Instant::now();
                let result = target
                    .post(
                        &format!("/reservations/{id}/release"),
                        None,
                        Via::Reservation(&id),
                    )
                    .await;
                recorder.record(started, &result);
            }
        }
        (Scenario::Mixed, 0..35) => {
            let started = due;
            let result = target
                .post("/reservations", Some(reserve), Via::Product(product))
                .await;
            recorder.record(started, &result);
            if let Ok((201, body)) = result {
                pending.push(body["id"].as_str().unwrap_or_default().to_owned());
            }
        }
        (Scenario::Mixed, 35..75) if !pending.is_empty() => {
            let id = pending.swap_remove(0);
            let verb = if choice < 60 { "commit" } else { "release" };
            let started = due;
            let result = target
                .post(
                    &format!("/reservations/{id}/{verb}"),
                    None,
                    Via::Reservation(&id),
                )
                .await;
            recorder.record(started, &result);
        }
        (Scenario::Mixed, 75..95) | (Scenario::Mixed, 35..75) => {
            let started = due;
            let result = target
                .get(
                    &format!("/products/{product}/availability"),
                    Via::Product(product),
                )
                .await;
            recorder.record(started, &result);
        }
        (Scenario::Cart, _) => {
            let cart = &carts[(u * carts.len() as f64) as usize % carts.len()];
            let started = due;
            let body = json!({ "quantity": choice % 4 });
            let path = format!("/carts/{cart}/items/{product}");
            let result = target.put(&path, body, Via::Any).await;
            recorder.record(started, &result);
        }
        (Scenario::Mixed, _) => {
            let (from, to) = if choice % 2 == 0 { (1, 2) } else { (2, 1) };
            let body = json!({ "from_warehouse_id": from, "to_warehouse_id": to, "product_id": product, "quantity": 1 });
            let started = due;
            let result = target
                .post("/transfers", Some(body), Via::Product(product))
                .await;
            recorder.record(started, &result);
        }
    }
}

/// How clients offer load.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// `clients` clients, each starting its next step when the last one is answered.
    Closed,
    /// Steps start at this many a second whatever the answers (open loop), on at most
    /// `clients` connections at once; a step that finds them all busy is dropped and counts
    /// against the SLO. Latency runs from when a step was due, not from when it could
    /// start, so a stalled server is not flattered (coordinated omission).
    Open { steps_per_second: f64 },
}

/// Runs `scenario` against `target` for `duration`.
pub async fn run(
    scenario: Scenario,
    target: &Target,
    clients: usize,
    duration: Duration,
    load: Load,
    label: &str,
) -> Outcome {
    let recorder = Arc::new(Recorder {
        histogram: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")),
        statuses: Mutex::new(BTreeMap::new()),
        errors: AtomicU64::new(0),
        done: AtomicU64::new(0),
    });
    let clients_of = Arc::new(Clients {
        scenario,
        target: target.clone(),
        carts: match scenario {
            Scenario::Cart => held_carts(target).await,
            _ => Vec::new(),
        },
        zipf: Zipf::new(PRODUCTS, 1.1),
        recorder: recorder.clone(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicU64::new(0));
    let cpu_before = crate::cpu::Sample::now();
    let started = Instant::now();
    let progress = tokio::spawn({
        let (recorder, stop, label) = (recorder.clone(), stop.clone(), label.to_owned());
        async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let done = recorder.done.load(Ordering::Relaxed);
                eprintln!(
                    "[{label}] {:>3}s {:>8} req/s",
                    started.elapsed().as_secs(),
                    done - last
                );
                last = done;
            }
        }
    });
    let workers: Vec<_> = match load {
        Load::Closed => (0..clients)
            .map(|_| {
                let (shared, stop) = (clients_of.clone(), stop.clone());
                clients_runtime().spawn(async move {
                    let mut pending = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        step(&shared, &mut pending, Instant::now()).await;
                    }
                })
            })
            .collect(),
        Load::Open { steps_per_second } => {
            let permits = Arc::new(tokio::sync::Semaphore::new(clients));
            let (shared, stop, dropped) = (clients_of.clone(), stop.clone(), dropped.clone());
            vec![clients_runtime().spawn(async move {
                let interval = Duration::from_secs_f64(1.0 / steps_per_second.max(0.1));
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut in_flight = tokio::task::JoinSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let due = tick.tick().await.into_std();
                    while in_flight.try_join_next().is_some() {}
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let shared = shared.clone();
                    in_flight.spawn(async move {
                        step(&shared, &mut Vec::new(), due).await;
                        drop(permit);
                    });
                }
                while in_flight.join_next().await.is_some() {}
            })]
        }
    };
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for worker in workers {
        let _ = worker.await;
    }
    let cpu = cpu_before.until(&crate::cpu::Sample::now());
    let _ = progress.await;
    let histogram = recorder.histogram.lock().expect("histogram").clone();
    let statuses = recorder.statuses.lock().expect("statuses").clone();
    Outcome {
        elapsed,
        histogram,
        statuses,
        errors: recorder.errors.load(Ordering::Relaxed),
        dropped: dropped.load(Ordering::Relaxed),
        cpu,
        books: Vec::new(),
    }
}

/// Every check that fails, in words.
async fn failures(pool: &PgPool, checks: &[(&str, &str)]) -> Vec<String> {
    let mut failed = Vec::new();
    for (what, query) in checks {
        let bad: i64 = sqlx::query_scalar(query)
            .fetch_one(pool)
            .await
            .unwrap_or(-1);
        if bad != 0 {
            failed.push(format!("{what}: {bad} lines"));
        }
    }
    failed
}

pub async fn check_stockline_books(pool: &PgPool) -> Vec<String> {
    failures(pool, &[
        ("negative stock", "SELECT count(*) FROM stock_lines WHERE reserved < 0 OR on_hand < 0"),
        // Held beyond what is on hand only as backorders, within the product's limit.
        ("oversold",
         "SELECT count(*) FROM (
            SELECT s.product_id, sum(GREATEST(s.reserved - s.on_hand, 0)) AS backordered
            FROM stock_lines s GROUP BY 1) b
          JOIN products p ON p.id = b.product_id WHERE b.backordered > p.backorder_limit"),
        // What a pending reservation still holds: reserved less what was settled in parts.
        ("reserved differs from pending reservations",
         "SELECT count(*) FROM stock_lines s LEFT JOIN (
            SELECT i.warehouse_id, i.product_id, sum(i.quantity - i.committed - i.released) AS q
            FROM reservation_items i
            JOIN reservations r ON r.id = i.reservation_id WHERE r.status = 'pending' GROUP BY 1, 2) p
          USING (warehouse_id, product_id) WHERE s.reserved <> coalesce(p.q, 0)"),
        ("ledger does not sum to on_hand",
         "SELECT count(*) FROM stock_lines s LEFT JOIN (
            SELECT warehouse_id, product_id, sum(CASE kind WHEN 'adjust' THEN quantity WHEN 'transfer_in' THEN quantity
              WHEN 'commit' THEN -quantity WHEN 'transfer_out' THEN -quantity ELSE 0 END) AS v
            FROM movements GROUP BY 1, 2) m
          USING (warehouse_id, product_id) WHERE s.on_hand <> coalesce(m.v, 0)"),
    ])
    .await
}

pub async fn check_rowlock_books(pool: &PgPool) -> Vec<String> {
    let _ = STOCK;
    failures(pool, &[
        ("oversold", "SELECT count(*) FROM rl_stock WHERE reserved < 0 OR reserved > on_hand"),
        ("reserved differs from pending reservations",
         "SELECT count(*) FROM rl_stock s LEFT JOIN (
            SELECT warehouse_id, product_id, sum(quantity) AS q FROM rl_reservations WHERE status = 'pending' GROUP BY 1, 2) p
          USING (warehouse_id, product_id) WHERE s.reserved <> coalesce(p.q, 0)"),
    ])
    .await
}
