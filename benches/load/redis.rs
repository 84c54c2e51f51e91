//! The second baseline: reservations in Redis, as seed-style services keep them. A Lua
//! script checks a line's available stock and takes from it, and stores the reservation
//! with a time to live; release and commit are scripts likewise. The same paths and bodies
//! as stockline, behind minimal handlers, so one client drives all designs.
//!
//! The harness starts its own `redis-server` on a free port, in one of two modes:
//! `appendonly yes` with `appendfsync always` (every write on disk before the answer, to
//! set against stockline's `sync`) or without any persistence (against `async`).
//!
//! Keys: `s:<warehouse>:<product>` is a line (a hash of `on_hand` and `reserved`),
//! `r:<id>` a reservation (`line`, `quantity`, `status`). The settle script reads the line
//! from the reservation, a key it is not passed: fine on one server, not in a cluster.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::baseline::{Reserve, Transfer, availability as availability_of, conflict};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use uuid::Uuid;

use crate::{PRODUCTS, STOCK};

/// How long a reservation lives in Redis (stockline's default reservation TTL).
const RESERVATION_TTL_SECS: u64 = 900;

/// Takes `quantity` from the first line with enough available; answers the warehouse
/// (1 or 2) or 0 when neither has enough.
const RESERVE: &str = r"
local quantity = tonumber(ARGV[1])
for i = 1, 2 do
  local line = redis.call('HMGET', KEYS[i], 'on_hand', 'reserved')
  local on_hand, reserved = tonumber(line[1]), tonumber(line[2])
  if on_hand and on_hand - reserved >= quantity then
    redis.call('HINCRBY', KEYS[i], 'reserved', quantity)
    redis.call('HSET', KEYS[3], 'line', KEYS[i], 'quantity', quantity, 'status', 'pending')
    redis.call('EXPIRE', KEYS[3], ARGV[2])
    return i
  end
end
return 0
";

/// Ends a pending reservation: `ARGV[1]` is `committed` (the stock leaves) or `released`.
const SETTLE: &str = r"
local r = redis.call('HMGET', KEYS[1], 'line', 'quantity', 'status')
if not r[1] or r[3] ~= 'pending' then return 0 end
local quantity = tonumber(r[2])
redis.call('HINCRBY', r[1], 'reserved', -quantity)
if ARGV[1] == 'committed' then redis.call('HINCRBY', r[1], 'on_hand', -quantity) end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
return 1
";

/// Moves `ARGV[1]` on hand from `KEYS[1]` to `KEYS[2]` if that much is available.
const TRANSFER: &str = r"
local quantity = tonumber(ARGV[1])
local from = redis.call('HMGET', KEYS[1], 'on_hand', 'reserved')
if not from[1] or tonumber(from[1]) - tonumber(from[2]) < quantity then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'on_hand', -quantity)
redis.call('HINCRBY', KEYS[2], 'on_hand', quantity)
return 1
";

/// How the server keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// `appendonly yes`, `appendfsync always`.
    AofAlways,
    /// No AOF, no snapshots.
    None,
}

/// A `redis-server` of the harness's own; stopped and its files removed when dropped.
pub struct Server {
    child: Child,
    dir: PathBuf,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `redis-server` on a free loopback port and waits until it answers.
pub async fn start_server(persistence: Persistence) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = std::env::temp_dir().join(format!("stockline-load-redis-{port}"));
    std::fs::create_dir_all(&dir).expect("redis directory");
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--protected-mode", "no", "--daemonize", "no"])
        .args(["--maxclients", "10000"])
        .arg("--dir")
        .arg(&dir);
    match persistence {
        Persistence::AofAlways => command.args(["--appendonly", "yes", "--appendfsync", "always"]),
        Persistence::None => command.args(["--appendonly", "no"]),
    };
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("redis-server starts (is it installed?)");
    let server = Server {
        child,
        dir,
        url: format!("redis://127.0.0.1:{port}/"),
    };
    let client = redis::Client::open(server.url.as_str()).expect("redis url");
    for _ in 0..100 {
        if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
            let pong: Result<String, _> = redis::cmd("PING").query_async(&mut connection).await;
            if pong.is_ok() {
                return server;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server did not answer on port {port}");
}

/// Puts the same stock as stockline's seed into the server.
pub async fn seed(connection: &mut MultiplexedConnection) {
    for chunk in (1..=PRODUCTS).collect::<Vec<_>>().chunks(1_000) {
        let mut pipe = redis::pipe();
        for product in chunk {
            for warehouse in [1, 2] {
                pipe.hset_multiple(
                    line_key(warehouse, *product),
                    &[("on_hand", STOCK), ("reserved", 0)],
                )
                .ignore();
            }
        }
        let () = pipe.query_async(connection).await.expect("seed redis");
    }
}

fn line_key(warehouse: i64, product: i64) -> String {
    format!("s:{warehouse}:{product}")
}

#[derive(Clone)]
struct Scripts {
    connection: MultiplexedConnection,
    reserve: redis::Script,
    settle: redis::Script,
    transfer: redis::Script,
}

/// Starts the handlers on a random port; answers their base URL.
pub async fn start(connection: MultiplexedConnection) -> String {
    let scripts = Scripts {
        connection,
        reserve: redis::Script::new(RESERVE),
        settle: redis::Script::new(SETTLE),
        transfer: redis::Script::new(TRANSFER),
    };
    let router = Router::new()
        .route("/api/v1/reservations", post(reserve))
        .route("/api/v1/reservations/{id}/commit", post(commit))
        .route("/api/v1/reservations/{id}/release", post(release))
        .route("/api/v1/products/{id}/availability", get(availability))
        .route("/api/v1/transfers", post(transfer))
        .with_state(scripts);
    crate::baseline::serve(router, "Redis").await
}

fn fail(error: redis::RedisError) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
}

async fn reserve(
    State(scripts): State<Scripts>,
    axum::Json(body): axum::Json<Reserve>,
) -> Response {
    let Some(item) = body.items.first() else {
        return (StatusCode::UNPROCESSABLE_ENTITY, "no items").into_response();
    };
    let id = Uuid::now_v7();
    let taken: Result<i64, _> = scripts
        .reserve
        .key(line_key(1, item.product_id))
        .key(line_key(2, item.product_id))
        .key(format!("r:{id}"))
        .arg(item.quantity)
        .arg(RESERVATION_TTL_SECS)
        .invoke_async(&mut scripts.connection.clone())
        .await;
    match taken {
        Ok(0) => conflict("insufficient_stock"),
        Ok(_) => (
            StatusCode::CREATED,
            axum::Json(json!({ "id": id, "status": "pending" })),
        )
            .into_response(),
        Err(error) => fail(error),
    }
}

async fn settle(scripts: Scripts, id: Uuid, status: &str) -> Response {
    let settled: Result<i64, _> = scripts
        .settle
        .key(format!("r:{id}"))
        .arg(status)
        .invoke_async(&mut scripts.connection.clone())
        .await;
    match settled {
        Ok(0) => conflict("reservation_not_pending"),
        Ok(_) => axum::Json(json!({ "id": id, "status": status })).into_response(),
        Err(error) => fail(error),
    }
}

async fn commit(State(scripts): State<Scripts>, Path(id): Path<Uuid>) -> Response {
    settle(scripts, id, "committed").await
}

async fn release(State(scripts): State<Scripts>, Path(id): Path<Uuid>) -> Response {
    settle(scripts, id, "released").await
}

async fn availability(State(scripts): State<Scripts>, Path(id): Path<i64>) -> Response {
    let mut pipe = redis::pipe();
    for warehouse in [1, 2] {
        pipe.cmd("HMGET")
            .arg(line_key(warehouse, id))
            .arg("on_hand")
            .arg("reserved");
    }
    let lines: Result<Vec<(Option<i64>, Option<i64>)>, _> =
        pipe.query_async(&mut scripts.connection.clone()).await;
    match lines {
        Ok(lines) => {
            let on_hand: i64 = lines.iter().filter_map(|l| l.0).sum();
            let reserved: i64 = lines.iter().filter_map(|l| l.1).sum();
            availability_of(id, on_hand, reserved)
        }
        Err(error) => fail(error),
    }
}

async fn transfer(
    State(scripts): State<Scripts>,
    axum::Json(body): axum::Json<Transfer>,
) -> Response {
    let moved: Result<i64, _> = scripts
        .transfer
        .key(line_key(body.from_warehouse_id, body.product_id))
        .key(line_key(body.to_warehouse_id, body.product_id))
        .arg(body.quantity)
        .invoke_async(&mut scripts.connection.clone())
        .await;
    match moved {
        Ok(0) => conflict("insufficient_stock"),
        Ok(_) => (
            StatusCode::CREATED,
            axum::Json(json!({ "status": "completed" })),
        )
            .into_response(),
        Err(error) => fail(error),
    }
}

/// The books in Redis: no line reserved below zero or beyond its stock, every line's
/// `reserved` equal to what its pending reservations hold. Each failed check, in words.
pub async fn check_books(connection: &mut MultiplexedConnection) -> Vec<String> {
    use std::collections::HashMap;
    let mut failed = Vec::new();
    let mut held: HashMap<String, i64> = HashMap::new();
    for key in scan(connection, "r:*").await {
        let (line, quantity, status): (Option<String>, Option<i64>, Option<String>) =
            redis::cmd("HMGET")
                .arg(&key)
                .arg(&["line", "quantity", "status"])
                .query_async(connection)
                .await
                .expect("reservation");
        if let (Some(line), Some(quantity), Some("pending")) = (line, quantity, status.as_deref()) {
            *held.entry(line).or_default() += quantity;
        }
    }
    let (mut oversold, mut drifted) = (0, 0);
    for key in scan(connection, "s:*").await {
        let (on_hand, reserved): (i64, i64) = redis::cmd("HMGET")
            .arg(&key)
            .arg(&["on_hand", "reserved"])
            .query_async(connection)
            .await
            .expect("line");
        if reserved < 0 || reserved > on_hand {
            oversold += 1;
        }
        if held.get(&key).copied().unwrap_or(0) != reserved {
            drifted += 1;
        }
    }
    if oversold > 0 {
        failed.push(format!("oversold: {oversold} lines"));
    }
    if drifted > 0 {
        failed.push(format!(
            "reserved differs from pending reservations: {drifted} lines"
        ));
    }
    failed
}

async fn scan(connection: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(connection)
            .await
            .expect("scan");
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}
