//! Which node of a cluster numbers the events (`sequence`), delivers webhooks and publishes
//! them to NATS: the one holding
//! a PostgreSQL advisory lock on a connection of its own. Both readers keep their positions
//! in the database, so whoever leads next goes on from where the last one was (at least
//! once, as after a restart). A leader that dies, or loses its connection, loses the lock
//! with it, and another node takes it within [`LOOK_EVERY`]; a leader paused for more than
//! five seconds loses its session, so a zombie holds nobody up for long.
//!
//! A single process leads always and needs none of this.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::hub::EventHub;
use super::nats;
use super::webhooks::Webhooks;
use crate::background::Background;

/// The session lock the leader holds.
const LEADING: i64 = 0x5354_4b4c_4c45_4144;
/// How often a node asks for the lock, and the leader checks it still holds it and reads
/// the subscriptions again.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Who leads, and what the leader runs.
pub struct Lead {
    pub db: PgPool,
    pub hub: Arc<EventHub>,
    pub webhooks: Arc<Webhooks>,
    /// `STOCKLINE_NATS_URL` (with events on), and the count of events published.
    pub nats: Option<(String, Arc<AtomicU64>)>,
}

impl Lead {
    /// Competes for the lead until the server stops; leads while it holds the lock. What
    /// it starts while leading ends before it does.
    pub fn spawn(self, background: &Background) {
        let stop = background.stopping();
        background.spawn(async move {
            loop {
                if let Some(held) = self.take().await {
                    self.lead(held, &stop).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(LOOK_EVERY) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
    }

    /// The lock, on a connection of its own, if no other node holds it.
    async fn take(&self) -> Option<PgConnection> {
        let mut connection = match self.db.acquire().await {
            Ok(connection) => connection.detach(),
            Err(error) => {
                tracing::warn!(%error, "asking for the events lead failed");
                return None;
            }
        };
        let taken: Result<bool, _> = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADING)
            .fetch_one(&mut connection)
            .await;
        match taken {
            Ok(true) => {
                // A leader paused past this (a zombie) loses its session, and the lock with
                // it, so another node delivers; it pings far more often while it runs.
                let limited = sqlx::query("SET idle_session_timeout = '5s'")
                    .execute(&mut connection)
                    .await;
                if let Err(error) = limited {
                    tracing::warn!(%error, "limiting the events lead's idle time failed");
                    return None;
                }
                Some(connection)
            }
            Ok(false) => None,
            Err(error) => {
                tracing::warn!(%error, "asking for the events lead failed");
                None
            }
        }
    }

    /// Delivers webhooks and publishes to NATS while `held` lives, until `stop`.
    async fn lead(&self, mut held: PgConnection, stop: &CancellationToken) {
        tracing::info!("this node numbers events, delivers webhooks and publishes events now");
        let leading = stop.child_token();
        if let Err(error) = self.webhooks.lead(leading.clone()).await {
            tracing::warn!(%error, "reading the webhooks failed; read again shortly");
        }
        let sequencer = super::sequence::sequencer(self.db.clone(), &self.hub, leading.clone());
        let publisher = self.nats.as_ref().map(|(url, published)| {
            tokio::spawn(nats::publish_until(
                self.db.clone(),
                url.clone(),
                self.hub.clone(),
                published.clone(),
                leading.clone(),
            ))
        });
        loop {
            tokio::select! {
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = stop.cancelled() => break,
            }
            if let Err(error) = held.ping().await {
                tracing::warn!(%error, "the events lead's connection failed; another node may lead now");
                break;
            }
            if let Err(error) = self.webhooks.sync().await {
                tracing::warn!(%error, "reading the webhooks failed");
            }
        }
        self.webhooks.follow();
        leading.cancel();
        for task in publisher.into_iter().chain(sequencer) {
            let _ = task.await;
        }
        // Closing the connection lets the lock go at once.
        let _ = held.close().await;
    }
}
