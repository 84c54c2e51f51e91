//! Every event to NATS (`STOCKLINE_NATS_URL`), on subject `stockline.events.<type>`, with
//! header `Nats-Msg-Id: <event id>` (a JetStream stream bound to the subjects drops the
//! duplicates a retry may send).
//!
//! The publisher reads the outbox from its own position (`settings.nats_cursor`), publishes
//! a page, waits for the server to have it (a flush), and only then moves the position.
//! NATS being away never touches stock changes: the events wait in the outbox, and the
//! publisher goes on from where it was once the client has reconnected. At least once.
//! On its first start the position is the newest event then: history is not replayed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::hub::EventHub;
use super::read::{self, Filter};

const PAGE: i64 = 1_000;
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes to `url` until `stop`.
pub async fn publish_until(
    db: PgPool,
    url: String,
    hub: Arc<EventHub>,
    published: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = run(db, url, hub, published) => {}
        _ = stop.cancelled() => {}
    }
}

async fn run(db: PgPool, url: String, hub: Arc<EventHub>, published: Arc<AtomicU64>) {
    let client = match async_nats::ConnectOptions::new()
        .name("stockline")
        .retry_on_initial_connect()
        .connect(url.as_str())
        .await
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "STOCKLINE_NATS_URL cannot be used; no events go to NATS");
            return;
        }
    };
    let mut newest = hub.newest();
    let mut cursor = loop {
        match position(&db).await {
            Ok(cursor) => break cursor,
            Err(error) => {
                tracing::warn!(%error, "reading the NATS position failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let page = match read::page(&db, cursor, &Filter::default(), PAGE).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(%error, "reading events for NATS failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let Some(last) = page.last().map(|e| e.id) else {
            if newest.changed().await.is_err() {
                return;
            }
            continue;
        };
        match publish(&client, &page).await {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                published.fetch_add(page.len() as u64, Ordering::Relaxed);
                cursor = last;
                if let Err(error) = save(&db, cursor).await {
                    // Kept in memory; a restart before the next save sends the page again.
                    tracing::warn!(%error, "saving the NATS position failed");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "publishing events to NATS failed; the page goes again once connected");
                wait_connected(&client).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn publish(client: &async_nats::Client, page: &[read::Stored]) -> Result<(), String> {
    if client.connection_state() != async_nats::connection::State::Connected {
        return Err("not connected".into());
    }
    for event in page {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.to_string().as_str());
        client
            .publish_with_headers(
                format!("stockline.events.{}", event.kind),
                headers,
                event.to_json().into(),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("the server did not confirm in time".into()),
    }
}

async fn wait_connected(client: &async_nats::Client) {
    while client.connection_state() != async_nats::connection::State::Connected {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where the publisher stands; the newest event at its first start.
async fn position(db: &PgPool) -> Result<i64, sqlx::Error> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT value FROM settings WHERE key = 'nats_cursor'")
            .fetch_optional(db)
            .await?;
    match stored.and_then(|v| v.parse().ok()) {
        Some(cursor) => Ok(cursor),
        None => {
            let newest = read::newest(db).await?;
            save(db, newest).await?;
            Ok(newest)
        }
    }
}

async fn save(db: &PgPool, cursor: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES ('nats_cursor', $1::text)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    )
    .bind(cursor)
    .execute(db)
    .await?;
    Ok(())
}
