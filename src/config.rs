//! One `Config` for `stockline serve`, from flags or the environment (API.md "Running it").
//!
//! Every setting is a flag whose environment variable has the name API.md gives it; a flag
//! wins over the variable, and a `.env` file in the working directory is read first.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// When a request that changed stock is answered (DESIGN.md "Durability modes"); the
/// operators' views show it as `sync` or `async`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the batch holding the change has committed: nothing acknowledged is lost.
    Sync,
    /// At once; a crash loses at most the last flush interval.
    Async,
}

/// How the server runs.
#[derive(Args, Clone, Debug)]
pub struct Config {
    /// PostgreSQL connection URL; the database is created and migrated at start if missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/stockline"
    )]
    pub database_url: String,

    /// Address to listen on.
    #[arg(long, env = "STOCKLINE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// HS256 key for tokens, at least 32 bytes; generated and kept in the database on
    /// first start if unset. A shorter one (an empty `.env` line, say) is refused: anyone
    /// could guess it and sign admin tokens.
    #[arg(long, env = "STOCKLINE_JWT_SECRET", hide_env_values = true, value_parser = jwt_secret)]
    pub jwt_secret: Option<String>,

    /// Token lifetime in seconds.
    #[arg(long, env = "STOCKLINE_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub token_ttl_secs: u64,

    /// Create this admin at start if absent (with `--admin-password`).
    #[arg(long, env = "STOCKLINE_ADMIN_EMAIL", requires = "admin_password")]
    pub admin_email: Option<String>,

    #[arg(
        long,
        env = "STOCKLINE_ADMIN_PASSWORD",
        hide_env_values = true,
        requires = "admin_email"
    )]
    pub admin_password: Option<String>,

    /// `sync` answers after the change is durable; `async` answers at once.
    #[arg(long, env = "STOCKLINE_DURABILITY", value_enum, default_value = "sync")]
    pub durability: Durability,

    /// Longest wait, in milliseconds, before a batch of changes is flushed. In `sync` mode
    /// a batch is written as soon as the previous one is done (group commit, no wait).
    #[arg(long, env = "STOCKLINE_FLUSH_INTERVAL_MS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub flush_interval_ms: u64,

    /// Prepare the next write-behind batch while one commits (two transactions in flight,
    /// committed strictly in order); `false` writes one batch at a time.
    #[arg(long, env = "STOCKLINE_FLUSH_PIPELINE", default_value_t = true, action = clap::ArgAction::Set)]
    pub flush_pipeline: bool,

    /// Default reservation lifetime in seconds (at most 7 days).
    #[arg(long, env = "STOCKLINE_RESERVATION_TTL_SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub reservation_ttl_secs: u64,

    /// How long an order waits for payment, in seconds.
    #[arg(long, env = "STOCKLINE_PAYMENT_TIMEOUT_SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub payment_timeout_secs: u64,

    /// Per-request metrics: counts and durations by route on `/metrics` and the console's
    /// live traffic. Off (`false`) leaves only what is read at scrape time (for measuring
    /// what the counting costs).
    #[arg(long, env = "STOCKLINE_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics: bool,

    /// How long a held cart keeps its items reserved after its last change, in seconds.
    #[arg(long, env = "STOCKLINE_CART_HOLD_SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub cart_hold_secs: u64,

    /// Journal records that may wait to be written before new stock changes are refused
    /// with 503 `overloaded` (during a database outage, say).
    #[arg(long, env = "STOCKLINE_MAX_BACKLOG", default_value_t = 500_000,
          value_parser = clap::value_parser!(u64).range(10..=100_000_000))]
    pub max_backlog: u64,

    /// In `sync` mode, how long a request waits for its change to be durable before it
    /// answers 503 (the change may still land: retry with the same Idempotency-Key).
    #[arg(long, env = "STOCKLINE_DURABLE_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub durable_timeout_ms: u64,

    /// Login and register attempts allowed per client address per minute (then 429).
    #[arg(long, env = "STOCKLINE_AUTH_RATE_PER_MINUTE", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub auth_rate_per_minute: u32,

    /// A connection must deliver a whole request head within this many milliseconds of
    /// opening, or of starting a request, or it is closed (slow-header clients).
    #[arg(long, env = "STOCKLINE_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub header_read_timeout_ms: u64,

    /// A request's body must arrive within this many milliseconds of its head, or the
    /// request is answered 408 and its connection closed (slow-body clients).
    #[arg(long, env = "STOCKLINE_BODY_READ_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub body_read_timeout_ms: u64,

    /// A keep-alive connection with no request for this many milliseconds is closed.
    #[arg(long, env = "STOCKLINE_IDLE_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(10..=86_400_000))]
    pub idle_timeout_ms: u64,

    /// Open connections at most; at the bound the connection idle the longest is closed to
    /// make room (or, if all are busy, the new one gets 503). Default: the open-file limit
    /// less an eighth of it (at least 64) for the database and files.
    #[arg(long, env = "STOCKLINE_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections: Option<u64>,

    /// A stock line with no work for this many milliseconds gives up its actor, and leaves
    /// memory once it holds nothing and its newest state is in the database; its next use
    /// loads it again.
    #[arg(long, env = "STOCKLINE_LINE_IDLE_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub line_idle_ms: u64,

    /// Settled reservations kept in memory at most (about 350 bytes each), for late
    /// commits, releases and reads; older ones (and any after 10 minutes) are answered from
    /// the database.
    #[arg(long, env = "STOCKLINE_SETTLED_IN_MEMORY", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub settled_in_memory: u64,

    /// Events (the outbox, its stream, webhooks, NATS). Off (`false`) writes none (for
    /// measuring what they cost).
    #[arg(long, env = "STOCKLINE_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub events: bool,

    /// Events older than this many hours are pruned from the outbox.
    #[arg(long, env = "STOCKLINE_EVENT_RETENTION_HOURS", default_value_t = 168,
          value_parser = clap::value_parser!(u64).range(1..=87_600))]
    pub event_retention_hours: u64,

    /// How many events an open stream may fall behind the newest before it is cut off
    /// (it resumes with `Last-Event-ID`); the ring is shared by every stream.
    #[arg(long, env = "STOCKLINE_EVENT_STREAM_BUFFER", default_value_t = 16_384,
          value_parser = clap::value_parser!(u64).range(16..=1_048_576))]
    pub event_stream_buffer: u64,

    /// Event streams (`GET /events/stream`) open at once at most; past it, 503.
    #[arg(long, env = "STOCKLINE_MAX_EVENT_STREAMS", default_value_t = 4_096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_event_streams: u64,

    /// Publish every event to NATS at this URL too (`stockline.events.<type>`).
    #[arg(long, env = "STOCKLINE_NATS_URL")]
    pub nats_url: Option<String>,

    /// How long a webhook request may take, in milliseconds.
    #[arg(long, env = "STOCKLINE_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub webhook_timeout_ms: u64,

    /// The first retry of a failed webhook delivery waits about this long (milliseconds);
    /// each next one twice as long (with jitter), at most an hour.
    #[arg(long, env = "STOCKLINE_WEBHOOK_RETRY_BASE_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub webhook_retry_base_ms: u64,

    /// A webhook delivery still failing this many seconds after its first attempt is
    /// marked failed (it can be retried by hand).
    #[arg(long, env = "STOCKLINE_WEBHOOK_RETRY_FOR_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub webhook_retry_for_secs: u64,

    /// Let webhooks call loopback, private and link-local addresses (a private network,
    /// or tests with a receiver on this machine). Off: such URLs are refused when created
    /// and never connected to at delivery.
    #[arg(long, env = "STOCKLINE_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,

    /// Cluster mode: the NATS server nodes route requests through. Unset: one process,
    /// no NATS needed. Cluster mode is `sync` only.
    #[arg(long, env = "STOCKLINE_CLUSTER_NATS_URL")]
    pub cluster_nats_url: Option<String>,

    /// The cluster's name: nodes with another name, on the same NATS and database, never
    /// see this cluster's requests.
    #[arg(long, env = "STOCKLINE_CLUSTER_NAME", default_value = "stockline", value_parser = cluster_name)]
    pub cluster_name: String,

    /// This node's name in the cluster, kept across restarts (a restarted node takes its
    /// shards back and fences its earlier self). Default: the host name and the port.
    #[arg(long, env = "STOCKLINE_NODE_ID", value_parser = node_id)]
    pub node_id: Option<String>,

    /// How long a node's hold on a shard lasts unless renewed, in seconds: a node that
    /// dies loses its shards within two of these.
    #[arg(long, env = "STOCKLINE_SHARD_LEASE_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(2..=600))]
    pub shard_lease_secs: u64,

    /// bcrypt cost for password hashing (tests may lower it).
    #[arg(long, env = "STOCKLINE_BCRYPT_COST", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
}

/// The shortest JWT secret accepted, in bytes (HS256's key is as strong as its length).
pub const MIN_JWT_SECRET: usize = 32;

fn jwt_secret(value: &str) -> Result<String, String> {
    if value.len() < MIN_JWT_SECRET {
        return Err(format!(
            "STOCKLINE_JWT_SECRET has {} bytes; it needs at least {MIN_JWT_SECRET} \
             (or leave it unset to have one generated and kept in the database)",
            value.len()
        ));
    }
    Ok(value.to_owned())
}

/// A cluster name is one NATS subject token: letters, digits, `-` and `_`.
fn cluster_name(value: &str) -> Result<String, String> {
    let fine = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match fine {
        true => Ok(value.to_owned()),
        false => Err("1 to 64 letters, digits, '-' or '_'".into()),
    }
}

/// A node id is shown to operators and stored: 1 to 128 visible ASCII characters.
fn node_id(value: &str) -> Result<String, String> {
    let fine = (1..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic());
    match fine {
        true => Ok(value.to_owned()),
        false => Err("1 to 128 visible ASCII characters".into()),
    }
}

impl Config {
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    pub fn reservation_ttl(&self) -> Duration {
        Duration::from_secs(self.reservation_ttl_secs)
    }

    pub fn shard_lease(&self) -> Duration {
        Duration::from_secs(self.shard_lease_secs)
    }
}
