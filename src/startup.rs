//! Start-up as a library function: tests start the real server on port 0 with it, and
//! `main` is left with parsing the CLI and waiting for a signal.
//!
//! Order at start: connect and migrate; read what the store holds; start the core over a
//! write-behind buffer that continues the stored journal numbering; start the flusher;
//! restore lines and pending reservations (expiring those that ran out while down); load
//! auth and the catalog; then serve. At shutdown: stop accepting and finish requests in
//! flight, drain every line's mailbox, then flush everything left.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use stockline_actors::{Core, CoreConfig, DurableWatch, Journal, JournalBuffer, Lsn};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::{Auth, Role, password};
use crate::catalog::Catalog;
use crate::config::{Config, Durability};
use crate::http;
use crate::http::error::{AppError, Result};
use crate::http::idempotency::Answers;
use crate::orders::Orders;
use crate::store::flusher::{FlushStats, Flusher};
use crate::store::{self, recovery};

/// The write-behind side, as handlers and operators see it.
pub struct StoreState {
    pub buffer: Arc<JournalBuffer>,
    pub flush: Arc<FlushStats>,
    durable: DurableWatch,
}

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub core: Arc<Core>,
    pub auth: Arc<Auth>,
    pub catalog: Arc<Catalog>,
    pub store: Arc<StoreState>,
    /// Answers to idempotent requests, by user and key.
    pub answers: Arc<Answers>,
    pub orders: Arc<Orders>,
    pub auth_limiter: crate::http::rate_limit::Shared,
    /// This server's metrics, rendered at `GET /metrics`.
    pub metrics: Arc<metrics_exporter_prometheus::PrometheusRecorder>,
}

impl AppState {
    /// In `sync` mode, waits until the records up to `lsn` are committed; in `async` mode,
    /// returns at once. A change still not durable after a while answers 503: it may yet
    /// land, which is why clients retry with the same `Idempotency-Key`.
    pub async fn durable(&self, lsn: Lsn) -> Result<()> {
        if self.config.durability == Durability::Async || lsn == 0 {
            return Ok(());
        }
        let mut watch = self.store.durable.clone();
        let timeout = Duration::from_millis(self.config.durable_timeout_ms);
        match tokio::time::timeout(timeout, watch.wait_for(lsn)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(AppError::Unavailable(
                "the change was accepted but the store has not confirmed it yet; retry with the same Idempotency-Key".into(),
            )),
        }
    }
}

/// Connects, recovers, and serves on `listener` until `shutdown` resolves.
///
/// Returns the bound address (for port 0) and the task to await for the end; the task
/// fails if what was left could not be flushed.
pub async fn launch(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<(SocketAddr, JoinHandle<io::Result<()>>)> {
    let addr = listener.local_addr()?;
    let db = store::connect_and_migrate(&config.database_url)
        .await
        .map_err(io::Error::other)?;
    let (stored, loader) = recovery::read(&db).await.map_err(io::Error::other)?;
    let buffer = Arc::new(JournalBuffer::new(
        stored.journal_lsn,
        config.max_backlog as usize,
    ));
    let core = Core::start(
        CoreConfig::default(),
        buffer.clone() as Arc<dyn Journal>,
        Arc::new(loader),
    )
    .await
    .map_err(io::Error::other)?;
    let gather = match config.durability {
        Durability::Sync => Duration::ZERO,
        Durability::Async => config.flush_interval(),
    };
    let flusher = Flusher::spawn(db.clone(), buffer.clone(), gather);
    // Before restoring, so that reservations expired while down reach their orders too.
    let (expired_tx, expired) = tokio::sync::mpsc::unbounded_channel();
    core.reservations().on_expired(expired_tx);
    stored.restore_into(&core).await.map_err(io::Error::other)?;
    let auth = Auth::load(
        &db,
        config.jwt_secret.as_deref(),
        Duration::from_secs(config.token_ttl_secs),
        config.bcrypt_cost,
    )
    .await
    .map_err(|e| io::Error::other(e.to_string()))?;
    bootstrap_admin(&db, &config, &auth)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    let catalog = Catalog::load(&db).await.map_err(io::Error::other)?;
    let orders = Orders::load(&db).await.map_err(io::Error::other)?;
    let auth_rate = config.auth_rate_per_minute;
    let state = AppState {
        config: Arc::new(config),
        db,
        core: Arc::new(core),
        auth: Arc::new(auth),
        catalog: Arc::new(catalog),
        store: Arc::new(StoreState {
            durable: buffer.durable(),
            buffer,
            flush: flusher.stats.clone(),
        }),
        answers: Arc::new(Answers::default()),
        orders: Arc::new(orders),
        auth_limiter: Arc::new(crate::http::rate_limit::AuthLimiter::new(auth_rate)),
        metrics: Arc::new(crate::http::metrics_recorder()),
    };
    state.orders.reconcile(&state).await;
    Orders::watch_expiry(state.clone(), expired);
    let (answers, orders) = (
        Arc::downgrade(&state.answers),
        Arc::downgrade(&state.orders),
    );
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            let (Some(answers), Some(orders)) = (answers.upgrade(), orders.upgrade()) else {
                break;
            };
            answers.sweep();
            orders.sweep();
        }
    });
    let router = http::router(state.clone());
    let limits = state.config.connection_limits();
    let task = tokio::spawn(async move {
        http::serve::serve(listener, router, limits, shutdown).await?;
        state.core.shutdown().await;
        if !flusher.finish().await {
            return Err(io::Error::other(
                "some changes could not be written to the database",
            ));
        }
        tracing::info!("stopped");
        Ok(())
    });
    Ok((addr, task))
}

/// Creates the admin of `STOCKLINE_ADMIN_EMAIL`/`_PASSWORD` if no user has that email.
async fn bootstrap_admin(db: &PgPool, config: &Config, auth: &Auth) -> Result<()> {
    let (Some(email), Some(secret)) = (&config.admin_email, &config.admin_password) else {
        return Ok(());
    };
    let email = http::auth_email(email)?;
    http::auth_password_ok(secret)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = $1)")
            .bind(&email)
            .fetch_one(db)
            .await?;
    if !exists {
        let hash = password::hash(secret.clone(), auth.bcrypt_cost).await?;
        match http::users::insert(db, &email, None, "Administrator", Role::Admin, &hash).await {
            Ok(user) => tracing::info!(user = user.id, "created the admin from the environment"),
            // Created by another instance in the meantime.
            Err(AppError::Conflict { .. }) => {}
            Err(other) => return Err(other),
        }
    }
    Ok(())
}
