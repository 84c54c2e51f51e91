//! PostgreSQL: connecting (the database is created if missing), migrations, the
//! write-behind flusher, and recovery of the core's state at start.

pub mod flusher;
pub mod lines;
mod outbox;
pub mod records;
pub mod recovery;
mod write;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

/// The advisory lock that says who uses a database: a single-process server holds it
/// alone, the nodes of a cluster share it. Two single-process servers, or one and a
/// cluster, on one database would each believe its memory is the stock and sell it twice.
const IN_USE: i64 = 0x7374_6f63_6b6c_696e;

/// How long a server waits for the lock at start: a predecessor that just stopped or was
/// killed lets it go as soon as PostgreSQL sees its connection close.
const IN_USE_WAIT: Duration = Duration::from_secs(3);

/// Takes the database for this server ([`IN_USE`]) on a connection of its own, held until
/// the server stops; refused, with what to do, if another server uses it the other way.
pub async fn hold_database(url: &str, cluster: bool) -> Result<sqlx::PgConnection, String> {
    let mut connection = PgConnectOptions::from_str(url)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let take = match cluster {
        false => "SELECT pg_try_advisory_lock($1)",
        true => "SELECT pg_try_advisory_lock_shared($1)",
    };
    let until = std::time::Instant::now() + IN_USE_WAIT;
    loop {
        let taken: bool = sqlx::query_scalar(take)
            .bind(IN_USE)
            .fetch_one(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        if taken {
            return Ok(connection);
        }
        if std::time::Instant::now() > until {
            return Err(match cluster {
                false => "another stockline server, or a cluster's node, is using this \
                          database: two would sell the same stock twice (stop it, or start \
                          this one as a node of that cluster)"
                    .into(),
                true => "a single-process stockline server is using this database: stop it \
                         before starting cluster nodes on it"
                    .into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects to `url`, creating its database first if it does not exist, and migrates it.
#[tracing::instrument(skip_all)]
pub async fn connect_and_migrate(url: &str) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    create_database_if_missing(&options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// The flusher's own connections to `url` (it never waits behind requests' queries for
/// one): two, as it has at most two batches in flight. Its statements are the same few
/// every time, so they are planned once per connection (generic plans), not per batch.
///
/// `idle_in_transaction` (cluster mode) bounds how long a flush transaction may sit open
/// while its node says nothing: a node paused mid-transaction (a zombie) would otherwise
/// hold its shards' lease rows `FOR SHARE` and stall their takeover for as long as it is
/// paused. PostgreSQL ends such a session; the node's batch fails and is fenced later.
pub async fn flusher_pool(
    url: &str,
    idle_in_transaction: Option<Duration>,
) -> Result<PgPool, sqlx::Error> {
    let mut settings = vec![("plan_cache_mode", "force_generic_plan".to_owned())];
    if let Some(limit) = idle_in_transaction {
        settings.push((
            "idle_in_transaction_session_timeout",
            limit.as_millis().max(1).to_string(),
        ));
    }
    let options = PgConnectOptions::from_str(url)?.options(settings);
    PgPoolOptions::new()
        .max_connections(2)
        .min_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), sqlx::Error> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = name.replace('"', "\"\"");
        match sqlx::query(&format!("CREATE DATABASE \"{quoted}\""))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created the database"),
            // Another process created it between the check and now.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e),
        }
    }
    admin.close().await
}

/// Reads a setting.
pub async fn setting(pool: &PgPool, key: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// Stores `value` under `key` unless a value is there already; answers the stored value.
pub async fn setting_or_insert(
    pool: &PgPool,
    key: &str,
    value: &str,
) -> Result<String, sqlx::Error> {
    sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
        .bind(key)
        .bind(value)
        .execute(pool)
        .await?;
    Ok(setting(pool, key)
        .await?
        .unwrap_or_else(|| value.to_owned()))
}
