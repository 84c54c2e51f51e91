//! Start-up as a library: [`Application::build`] connects, recovers and binds; then
//! [`Application::run_until_stopped`] serves until a shutdown future resolves. Tests start
//! the real server on port 0 with [`launch`], which does both; `main` is left with parsing
//! the CLI and waiting for a signal.
//!
//! Order at start: take the database (alone, or shared with the cluster's other nodes:
//! never both); connect and migrate; (in cluster mode) join: take this node's journal
//! numbers and connect to NATS; end a killed predecessor's connections with the same
//! journal numbers and wait until they are gone (a statement it left running could
//! otherwise commit after the next step); read what the store holds; start the core over a
//! write-behind buffer that continues the stored journal numbering; start the flusher;
//! restore the lines that hold stock for someone and the pending reservations (expiring
//! those that ran out while down; every other line loads on first use), or in cluster mode
//! only the warehouses, each shard's live state coming with its claim; load auth and the
//! catalog; start the lease loop; then serve. At shutdown: stop accepting and finish
//! requests in flight, (in cluster mode) hand every shard over and leave, drain every
//! line's mailbox, then stop every background task ([`Background`]: the sweepers, the
//! order-expiry watchers, the saga recovery, the cluster's listener, the events' tasks)
//! and wait until each has ended, and only then tell the flusher to write everything
//! left and wait for it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use stockline_actors::{Core, CoreConfig, Journal};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, Role, password};
use crate::background::Background;
use crate::catalog::Catalog;
use crate::cluster::{Cluster, shard_of};
use crate::config::{Config, Durability};
use crate::error::{AppError, Result};
use crate::http::serve::Limits;
use crate::http::{self, AppParts, AppState, StoreState};
use crate::node::ClusterNode;
use crate::orders::Orders;
use crate::shops::Shops;
use crate::state::answers::Answers;
use crate::store::flusher::{Flusher, Pacing};
use crate::store::records::Buffer;
use crate::store::{self, recovery};

/// How often the maps clients make grow are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const CARTS_SWEEP_EVERY: Duration = Duration::from_secs(2);
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// How long shutdown waits for the background tasks to end before it flushes anyway.
const BACKGROUND_GRACE: Duration = Duration::from_secs(10);

/// A server that has recovered and is bound, ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    flusher: Flusher,
    /// Stopped once HTTP has stopped and the lines are drained, and waited for before the
    /// flusher's last batch.
    background: Background,
    /// This server's claim on the database (`store::hold_database`), let go at the end.
    held: sqlx::PgConnection,
}

impl Application {
    /// Connects and migrates, recovers the core from the store, and starts the background
    /// tasks; serves nothing yet.
    pub async fn build(listener: TcpListener, config: Config) -> io::Result<Self> {
        let (held, db, cluster) = open_store(&config, listener.local_addr()?).await?;
        let (journal_lsn, stored) = read_position(&db, cluster.as_deref()).await?;
        let buffer = Arc::new(Buffer::new(journal_lsn, config.max_backlog as usize));
        let core = start_core(&config, &db, cluster.as_deref(), &buffer).await?;
        let hub = crate::events::Events::hub(&db, &config)
            .await
            .map_err(io::Error::other)?;
        let flusher = start_flusher(&config, &buffer, &hub, cluster.as_deref()).await?;
        // Before restoring, so that reservations expired while down reach their orders too.
        let (expired_tx, expired) = tokio::sync::mpsc::unbounded_channel();
        core.reservations().on_expired(expired_tx);
        restore(&db, &core, stored).await?;
        let background = Background::new();
        let parts = Started {
            config,
            db,
            core: Arc::new(core),
            buffer,
            flusher: &flusher,
            hub,
            cluster,
        };
        let state = load_state(parts, expired, &background).await?;
        start_cluster(&state, &background);
        start_upkeep(&state, &background);
        Ok(Self {
            listener,
            state,
            flusher,
            background,
            held,
        })
    }

    /// The address it listens on (the real port when bound to port 0).
    pub fn addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains and flushes. Fails if what was left
    /// could not be written to the database.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Self {
            listener,
            state,
            flusher,
            background,
            held,
        } = self;
        let limits = connection_limits(&state.config);
        let closing = state.events.closing.clone();
        let shutdown = async move {
            shutdown.await;
            closing.cancel();
        };
        http::serve::serve(listener, http::router(state.clone()), limits, shutdown).await?;
        if let Some(cluster) = &state.cluster {
            // Before the lines stop: handing shards over waits until their changes are
            // durable, and answers the requests other nodes forwarded meanwhile.
            cluster.leave().await;
        }
        state.core.shutdown().await;
        // What a background task still writes (an order it expires) is in the last batch.
        let running = background.stop(BACKGROUND_GRACE).await;
        match running {
            0 => tracing::info!("every background task ended"),
            running => tracing::warn!(
                running,
                "background tasks still running after the grace; flushing without them"
            ),
        }
        let finished = flusher.finish().await;
        let _ = sqlx::Connection::close(held).await;
        if !finished {
            return Err(io::Error::other(
                "some changes could not be written to the database",
            ));
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Takes the database for this server (alone, or shared with the cluster's other nodes),
/// connects and migrates, and in cluster mode joins: this node's journal numbers, NATS,
/// and the end of a killed predecessor's writes under the same numbers.
async fn open_store(
    config: &Config,
    addr: SocketAddr,
) -> io::Result<(sqlx::PgConnection, PgPool, Option<Arc<Cluster>>)> {
    let in_cluster = config.cluster_nats_url.is_some();
    let mut held = store::hold_database(&config.database_url, in_cluster)
        .await
        .map_err(io::Error::other)?;
    if !in_cluster {
        store::end_predecessor_writes(&mut held, 0)
            .await
            .map_err(io::Error::other)?;
    }
    let db = store::server_pool(&config.database_url, in_cluster)
        .await
        .map_err(io::Error::other)?;
    let cluster = match config.cluster_nats_url {
        Some(_) => Some(Arc::new(
            Cluster::join(&db, config, addr)
                .await
                .map_err(io::Error::other)?,
        )),
        None => None,
    };
    let numbering = cluster.as_ref().map_or(0, |cluster| cluster.member.ordinal);
    if let Some(cluster) = &cluster {
        // Before anything of a predecessor's is ended: a live node under this id is
        // no predecessor, and this one refuses to start beside it.
        crate::cluster::ordinal::hold_node_id(
            &mut held,
            &cluster.node,
            numbering,
            config.shard_lease(),
        )
        .await
        .map_err(io::Error::other)?;
        store::end_predecessor_writes(&mut held, numbering)
            .await
            .map_err(io::Error::other)?;
    }
    Ok((held, db, cluster))
}

/// Where the journal numbering continues, and (a single process) everything live the
/// store holds. A single process restores everything live now; a cluster node only the
/// warehouses, and each shard's live state when it claims the shard.
async fn read_position(
    db: &PgPool,
    cluster: Option<&Cluster>,
) -> io::Result<(stockline_actors::Lsn, Option<recovery::Stored>)> {
    Ok(match cluster {
        None => {
            let stored = recovery::read(db).await.map_err(io::Error::other)?;
            (stored.journal_lsn, Some(stored))
        }
        Some(cluster) => (
            recovery::node_position(db, &cluster.member)
                .await
                .map_err(io::Error::other)?,
            None,
        ),
    })
}

/// The core over the write-behind buffer; in cluster mode it loads only lines of the
/// shards this node serves.
async fn start_core(
    config: &Config,
    db: &PgPool,
    cluster: Option<&Cluster>,
    buffer: &Arc<Buffer>,
) -> io::Result<Core> {
    let lines = match cluster {
        None => recovery::PgStore::new(db.clone()),
        Some(cluster) => {
            let leases = cluster.leases().clone();
            recovery::PgStore::serving_only(
                db.clone(),
                Arc::new(move |product| leases.may_load(shard_of(product))),
            )
        }
    };
    Core::start(
        core_config(config),
        buffer.clone() as Arc<dyn Journal>,
        Arc::new(lines),
    )
    .await
    .map_err(io::Error::other)
}

/// The flusher, on a pool of its own, paced by the durability setting.
async fn start_flusher(
    config: &Config,
    buffer: &Arc<Buffer>,
    hub: &Arc<crate::events::hub::EventHub>,
    cluster: Option<&Cluster>,
) -> io::Result<Flusher> {
    let numbering = cluster.map_or(0, |cluster| cluster.member.ordinal);
    let pacing = Pacing {
        gather: match config.durability {
            Durability::Sync => Duration::ZERO,
            Durability::Async => config.flush_interval(),
        },
        pipelined: config.flush_pipeline,
    };
    let idle_in_transaction =
        cluster.map(|_| (config.shard_lease() / 4).max(Duration::from_secs(1)));
    let flusher_db = store::flusher_pool(&config.database_url, idle_in_transaction, numbering)
        .await
        .map_err(io::Error::other)?;
    Ok(Flusher::spawn(
        flusher_db,
        buffer.clone(),
        pacing,
        config.events.then(|| hub.clone()),
        cluster.map(|cluster| cluster.member.clone()),
        CancellationToken::new(),
    ))
}

/// A single process takes back what the store holds live; a cluster node the warehouses.
async fn restore(db: &PgPool, core: &Core, stored: Option<recovery::Stored>) -> io::Result<()> {
    match stored {
        Some(stored) => stored.restore_into(core).await.map_err(io::Error::other)?,
        None => {
            let warehouses = recovery::read_warehouses(db)
                .await
                .map_err(io::Error::other)?;
            for (id, info) in warehouses {
                core.upsert_warehouse(id, info)
                    .await
                    .map_err(io::Error::other)?;
            }
        }
    }
    Ok(())
}

/// What start-up has made by the time the services load.
struct Started<'a> {
    config: Config,
    db: PgPool,
    core: Arc<Core>,
    buffer: Arc<Buffer>,
    flusher: &'a Flusher,
    hub: Arc<crate::events::hub::EventHub>,
    cluster: Option<Arc<Cluster>>,
}

/// Loads the services (auth, the catalog, orders, carts, shops, events) and puts the
/// state together; orders expire with their reservations from now on.
async fn load_state(
    started: Started<'_>,
    expired: tokio::sync::mpsc::UnboundedReceiver<stockline_actors::Reservation>,
    background: &Background,
) -> io::Result<AppState> {
    let Started {
        config,
        db,
        core,
        buffer,
        flusher,
        hub,
        cluster,
    } = started;
    let auth = Auth::load(
        &db,
        config.jwt_secret.as_deref(),
        Duration::from_secs(config.token_ttl_secs),
        config.bcrypt_cost,
        config.auth_rate_per_minute,
    )
    .await
    .map_err(|e| io::Error::other(e.to_string()))?;
    bootstrap_admin(&db, &config, &auth)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    let catalog = Catalog::load(&db).await.map_err(io::Error::other)?;
    // In cluster mode each node holds the orders of the shards it claims.
    let orders = Arc::new(match cluster {
        None => Orders::load(&db, buffer.clone())
            .await
            .map_err(io::Error::other)?,
        Some(_) => Orders::new(buffer.clone()),
    });
    // And the open carts of the customers of the shards it claims.
    let carts = Arc::new(match cluster {
        None => crate::carts::Carts::load(&db, buffer.clone())
            .await
            .map_err(io::Error::other)?,
        Some(_) => crate::carts::Carts::new(buffer.clone()),
    });
    if cluster.is_none() {
        orders.reconcile(&core).await;
    }
    orders.clone().watch_expiry(expired, background);
    let metrics = Arc::new(http::metrics_recorder());
    let (flush_durations, durable_waits) = metrics::with_local_recorder(&*metrics, || {
        (
            metrics::histogram!("stockline_flush_duration_seconds"),
            match config.metrics {
                true => metrics::histogram!("stockline_durable_wait_seconds"),
                false => metrics::Histogram::noop(),
            },
        )
    });
    let _ = flusher.stats.durations.set(flush_durations);
    let shops = Arc::new(Shops::load(&db).await.map_err(io::Error::other)?);
    let events = crate::events::Events::start(&db, &config, hub, background)
        .await
        .map_err(io::Error::other)?;
    let store = Arc::new(StoreState {
        durable: buffer.watch(),
        buffer,
        flush: flusher.stats.clone(),
        durability: config.durability,
        durable_timeout: Duration::from_millis(config.durable_timeout_ms),
        durable_waits,
        stored_count: Default::default(),
    });
    Ok(AppState::new(AppParts {
        config: Arc::new(config),
        db,
        core,
        auth: Arc::new(auth),
        catalog: Arc::new(catalog),
        store,
        answers: Arc::new(Answers::default()),
        orders,
        shops,
        carts: carts.clone(),
        requests: Arc::new(http::RequestMetrics::new(metrics.clone())),
        metrics,
        events: Arc::new(events),
        cluster,
    }))
}

/// In cluster mode: answers operations for the shards this node owns, hears the other
/// nodes' changes, finishes decided reservations across shards and expires overdue
/// orders, and starts the lease loop.
fn start_cluster(state: &AppState, background: &Background) {
    if let Some(cluster) = &state.cluster {
        cluster.routes.operate_with(crate::inventory::owner(state));
        http::listen_to_cluster(state.clone(), background);
        crate::inventory::saga::finish_decided(state.clone(), background);
        crate::inventory::orders::expire_overdue(state.clone(), background);
        cluster.start(ClusterNode {
            core: state.core.clone(),
            routes: cluster.routes.clone(),
            db: state.db.clone(),
            buffer: state.store.buffer.clone(),
            orders: state.orders.clone(),
            carts: state.carts.clone(),
        });
    }
}

/// The sweeps of the maps clients make grow, and the metrics' upkeep.
fn start_upkeep(state: &AppState, background: &Background) {
    let swept = state.clone();
    background.every(SWEEP_EVERY, move || swept.sweep());
    // Closed carts leave memory once durable: swept often, they stay few however fast
    // carts are checked out or deleted.
    let carts = state.carts.clone();
    background.every(CARTS_SWEEP_EVERY, move || carts.sweep());
    // Histogram samples wait in a buffer until folded into their buckets: folded every
    // few seconds, whether anyone scrapes or not, they take bounded memory.
    let metrics = state.metrics.handle();
    background.every(UPKEEP_EVERY, move || metrics.run_upkeep());
}

/// Builds and runs in a task: answers the bound address (for port 0) and the task to
/// await for the end.
pub async fn launch(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<(SocketAddr, JoinHandle<io::Result<()>>)> {
    let application = Application::build(listener, config).await?;
    let addr = application.addr()?;
    Ok((addr, tokio::spawn(application.run_until_stopped(shutdown))))
}

/// How the core runs, from the configuration.
fn core_config(config: &Config) -> CoreConfig {
    let defaults = CoreConfig::default();
    CoreConfig {
        limits: stockline_actors::Limits {
            passivate_after: Some(Duration::from_millis(config.line_idle_ms)),
            ..defaults.limits
        },
        settled_budget: config.settled_in_memory as usize,
        home_of: crate::cluster::shard_of,
        ..defaults
    }
}

/// The limits of the connection layer, from the configuration.
fn connection_limits(config: &Config) -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        max_connections: config
            .max_connections
            .map(|n| n as usize)
            .unwrap_or_else(http::serve::default_max_connections),
    }
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
