//! What every request handler can reach: [`AppState`], built once at start-up and passed
//! to the router with `Router::with_state`.

pub mod answers;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use stockline_actors::{Core, DurableWatch, Lsn, NotDurable};

use crate::auth::Auth;
use crate::auth::Identity;
use crate::catalog::Catalog;
use crate::config::{Config, Durability};
use crate::error::{AppError, Result};
use crate::orders::Orders;
use crate::shops::{Access, Shops};
use crate::store::flusher::FlushStats;
use crate::store::records::Buffer;

/// How long a count of every stored line is reused.
const STORED_COUNT_FOR: Duration = Duration::from_secs(5);

/// The write-behind side, as handlers and operators see it: the journal, the flusher's
/// figures, the durable watermark and how long a request waits on it, and the cached count
/// of stored lines.
pub struct StoreState {
    pub buffer: Arc<Buffer>,
    pub flush: Arc<FlushStats>,
    pub durable: DurableWatch,
    /// `sync`: a change is answered once durable; `async`: at once.
    pub durability: Durability,
    /// How long a sync-mode request waits to be durable before it answers 503.
    pub durable_timeout: Duration,
    /// How long sync-mode requests waited to be durable (a histogram of the metrics).
    pub durable_waits: metrics::Histogram,
    /// The count of every stored line, and when it was taken (a count over a million rows
    /// is not made for each poll of the console).
    pub stored_count: tokio::sync::Mutex<Option<(std::time::Instant, i64)>>,
}

impl StoreState {
    /// In `sync` mode, waits until the records up to `lsn` are committed; in `async` mode,
    /// returns at once. A change still not durable after a while answers 503: it may yet
    /// land, which is why clients retry with the same `Idempotency-Key`.
    pub async fn durable(&self, lsn: Lsn) -> Result<()> {
        if self.durability == Durability::Async || lsn == 0 {
            return Ok(());
        }
        let watch = &self.durable;
        let timeout = self.durable_timeout;
        let started = std::time::Instant::now();
        match tokio::time::timeout(timeout, watch.wait_for(lsn)).await {
            Ok(Ok(())) => {
                self.durable_waits.record(started.elapsed().as_secs_f64());
                Ok(())
            }
            Ok(Err(NotDurable::Refused)) => Err(AppError::Unavailable(
                "the change did not happen: another node took over this stock; retry".into(),
            )),
            _ => Err(AppError::Unavailable(
                "the change was accepted but the store has not confirmed it yet; retry with the same Idempotency-Key".into(),
            )),
        }
    }

    /// Whether the change journaled at `lsn` will never be durable: its batch was refused
    /// for good (cluster mode: another node took its stock over), so it did not happen.
    pub fn refused(&self, lsn: Lsn) -> bool {
        use futures_util::FutureExt;
        matches!(
            self.durable.wait_for(lsn).now_or_never(),
            Some(Err(NotDurable::Refused))
        )
    }

    /// Waits, in either durability mode, until everything appended so far is written: a
    /// read of the store (the ledger) then sees every change made before it.
    pub async fn written(&self) -> Result<()> {
        let head = self.buffer.head();
        let watch = &self.durable;
        let timeout = self.durable_timeout;
        match tokio::time::timeout(timeout, watch.wait_for(head)).await {
            // Refused records are settled too: nothing of them will ever be written.
            Ok(Ok(()) | Err(NotDurable::Refused)) => Ok(()),
            _ => Err(AppError::Unavailable(
                "the store is behind; retry shortly".into(),
            )),
        }
    }
}

/// What every request handler can reach: one `Arc` around [`AppParts`], so the clone axum
/// makes for each layer and extractor of every request is one atomic increment, not one
/// per part (it was 3% of the CPU on the hot path).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppParts {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub core: Arc<Core>,
    pub auth: Arc<Auth>,
    pub catalog: Arc<Catalog>,
    pub store: Arc<StoreState>,
    /// Answers to idempotent requests, by user and key.
    pub answers: Arc<answers::Answers>,
    pub orders: Arc<Orders>,
    /// Shops and their members, for the access policy.
    pub shops: Arc<Shops>,
    /// Open carts (and closed ones until durable), each behind its lock.
    pub carts: Arc<crate::carts::Carts>,
    /// This server's metrics, rendered at `GET /metrics`.
    pub metrics: Arc<metrics_exporter_prometheus::PrometheusRecorder>,
    /// Requests counted and timed (for `/metrics` and the console's last minute).
    pub requests: Arc<crate::telemetry::requests::RequestMetrics>,
    /// The outbox's live side, webhooks and streams.
    pub events: Arc<crate::events::Events>,
    /// This node's part in its cluster; `None` for a single-process server.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl AppParts {
    /// How many lines the database holds within `warehouses` (all: `None`, then counted at
    /// most every 5 s).
    pub async fn stored_lines(&self, warehouses: Option<Vec<i64>>) -> Result<i64> {
        if warehouses.is_some() {
            return Ok(crate::store::lines::stored_count(&self.db, warehouses).await?);
        }
        let mut cached = self.store.stored_count.lock().await;
        match *cached {
            Some((at, count)) if at.elapsed() < STORED_COUNT_FOR => Ok(count),
            _ => {
                let count = crate::store::lines::stored_count(&self.db, None).await?;
                *cached = Some((std::time::Instant::now(), count));
                Ok(count)
            }
        }
    }

    /// What `identity` may touch (the shop policy).
    pub fn access(&self, identity: &Identity) -> Access<'_> {
        Access::new(*identity, &self.shops, self.core.warehouses())
    }

    /// Forgets what no longer matters from the maps clients make grow: old idempotent
    /// answers, closed orders, rate-limit entries back at full allowance, revocations of
    /// tokens that expired anyway, quiet lockout entries, cached roles.
    pub fn sweep(&self) {
        self.answers.sweep();
        self.orders.sweep();
        self.auth.sweep();
    }
}
