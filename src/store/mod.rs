//! PostgreSQL: connecting (the database is created if missing), migrations, the
//! write-behind flusher, and recovery of the core's state at start.

mod derive;
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

/// A statement of the store's being bound, as the write path and the outbox build them.
type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// The advisory lock that says who uses a database: a single-process server holds it
/// alone, the nodes of a cluster share it. Two single-process servers, or one and a
/// cluster, on one database would each believe its memory is the stock and sell it twice.
const IN_USE: i64 = 0x7374_6f63_6b6c_696e;

/// How long a server waits for the lock at start: a predecessor that just stopped or was
/// killed lets it go as soon as PostgreSQL sees its connection close.
const IN_USE_WAIT: Duration = Duration::from_secs(3);

/// Takes the database for this server ([`IN_USE`]) on a connection of its own, held until
/// the server stops; refused, with what to do, if another server uses it the other way.
/// Creates the database first if it does not exist.
pub async fn hold_database(url: &str, cluster: bool) -> Result<sqlx::PgConnection, String> {
    let options = PgConnectOptions::from_str(url).map_err(|e| e.to_string())?;
    create_database_if_missing(&options)
        .await
        .map_err(|e| e.to_string())?;
    let mut connection = options.connect().await.map_err(|e| e.to_string())?;
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

/// The advisory lock every connection that writes for a server holds, shared, while it is
/// open; its second key is the server's journal numbering (0 for a single process, a
/// cluster node's ordinal). PostgreSQL finishes a statement whose client has died, and
/// commits it if it can: a killed server's last batch could land after its successor has
/// read the store, and the two would then disagree on the stock. So a successor ends
/// those connections and waits until they are gone ([`end_predecessor_writes`]) before it
/// reads.
const WRITES: i32 = 0x736c_7772;

/// How often a successor says it is still waiting for a predecessor's connections to end.
const WRITES_WARN_EVERY: Duration = Duration::from_secs(5);

/// Connects to `url`, creating its database first if it does not exist, and migrates it.
#[tracing::instrument(skip_all)]
pub async fn connect_and_migrate(url: &str) -> Result<PgPool, sqlx::Error> {
    create_database_if_missing(&PgConnectOptions::from_str(url)?).await?;
    migrated_pool(url, PgPoolOptions::new()).await
}

/// The pool of a server's requests ([`hold_database`] has created the database). A
/// single process's connections write for it ([`WRITES`], numbering 0). A cluster node's
/// do not take the lock (only its flusher's do, by ordinal): a catalog write a killed node
/// left running is not waited for.
#[tracing::instrument(skip_all)]
pub async fn server_pool(url: &str, cluster: bool) -> Result<PgPool, sqlx::Error> {
    let options = match cluster {
        false => writing_for(PgPoolOptions::new(), 0),
        true => PgPoolOptions::new(),
    };
    migrated_pool(url, options).await
}

async fn migrated_pool(url: &str, options: PgPoolOptions) -> Result<PgPool, sqlx::Error> {
    let pool = options
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(PgConnectOptions::from_str(url)?)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// Each connection of the pool takes [`WRITES`] shared for `numbering` as it opens.
fn writing_for(options: PgPoolOptions, numbering: u16) -> PgPoolOptions {
    options.after_connect(move |connection, _| {
        Box::pin(async move {
            sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
                .bind(WRITES)
                .bind(i32::from(numbering))
                .execute(connection)
                .await
                .map(drop)
        })
    })
}

/// Ends the connections a predecessor with the same journal `numbering` wrote through,
/// then waits until PostgreSQL has let them go. (A single process holds the database
/// alone, so its predecessor is gone; a node started under a node id takes that id's
/// ordinal, and is the successor of whatever ran under it.) A statement they were running
/// either committed before, or is rolled back as a crash's last batch is; none can land
/// after this returns. Where PostgreSQL does not let this role end them, it waits for them
/// to end on their own, saying so.
pub async fn end_predecessor_writes(
    held: &mut sqlx::PgConnection,
    numbering: u16,
) -> Result<(), sqlx::Error> {
    let numbering = i32::from(numbering);
    let ended: Result<i64, _> = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_locks
         WHERE locktype = 'advisory' AND classid = $1::int4::oid AND objid = $2::int4::oid
           AND objsubid = 2 AND granted AND pid <> pg_backend_pid()
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(WRITES)
    .bind(numbering)
    .fetch_one(&mut *held)
    .await;
    match ended {
        Ok(0) => {}
        Ok(ended) => tracing::warn!(
            ended,
            "ended the connections a stopped server was still writing through (a batch \
             they were writing is rolled back, as a crash's last batch is)"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "could not end the connections a stopped server was still writing through: \
             waiting for them to end"
        ),
    }
    let mut said = std::time::Instant::now();
    loop {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(WRITES)
            .bind(numbering)
            .fetch_one(&mut *held)
            .await?;
        if taken {
            sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(WRITES)
                .bind(numbering)
                .execute(&mut *held)
                .await?;
            return Ok(());
        }
        if said.elapsed() >= WRITES_WARN_EVERY {
            tracing::warn!("waiting for a stopped server's last writes to end");
            said = std::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The flusher's own connections to `url` (it never waits behind requests' queries for
/// one): two, as it has at most two batches in flight. Its statements are the same few
/// every time, so they are planned once per connection (generic plans), not per batch.
///
/// They write for the journal `numbering` ([`WRITES`]).
///
/// `idle_in_transaction` (cluster mode) bounds how long a flush transaction may sit open
/// while its node says nothing: a node paused mid-transaction (a zombie) would otherwise
/// hold its shards' lease rows `FOR SHARE` and stall their takeover for as long as it is
/// paused. PostgreSQL ends such a session; the node's batch fails and is fenced later.
pub async fn flusher_pool(
    url: &str,
    idle_in_transaction: Option<Duration>,
    numbering: u16,
) -> Result<PgPool, sqlx::Error> {
    let mut settings = vec![("plan_cache_mode", "force_generic_plan".to_owned())];
    if let Some(limit) = idle_in_transaction {
        settings.push((
            "idle_in_transaction_session_timeout",
            limit.as_millis().max(1).to_string(),
        ));
    }
    let options = PgConnectOptions::from_str(url)?.options(settings);
    writing_for(PgPoolOptions::new(), numbering)
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
