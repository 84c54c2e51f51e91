//! Webhooks: every subscription has a dispatcher task of its own, so a dead endpoint holds
//! up only itself, and all of its state is in PostgreSQL, so it goes on after a restart.
//!
//! A dispatcher takes the events after its subscription's `cursor` into
//! `webhook_deliveries` (a bounded window of them at a time, cursor moved in the same
//! transaction), then POSTs them, several at once but never two with the same ordering
//! key (a line, a reservation, an order): an event waits until every earlier one of its
//! key is delivered or given up, so a receiver sees each line's changes in order. A
//! failure is retried with exponential backoff and jitter, for 24 hours by default, then
//! marked failed; a failed delivery can be retried by hand. Every attempt is recorded.
//! Delivery is at least once: an attempt whose success was not yet recorded when the
//! server died is made again after the restart, with the same event id.
//!
//! Requests carry `Stockline-Event-Id`, `Stockline-Event-Type` and `Stockline-Signature:
//! t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`, time out, and follow no redirect.

mod store;
pub mod target;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::EventType;
use super::hub::EventHub;
use crate::background::Background;
pub use store::{
    Delivery, Retried, Subscription, deliveries, get, insert, list, remove, retry_failed,
};
pub use target::Targets;

/// How deliveries are retried and timed out.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub timeout: Duration,
    /// The first retry waits about this long, each next one twice as long (at most an hour).
    pub retry_base: Duration,
    /// Given up this long after the first attempt.
    pub retry_for: Duration,
}

/// The PostgreSQL channel of webhook commands between nodes (the tail hears them).
pub const WEBHOOK_COMMANDS: &str = "stockline_webhooks";

/// What a dispatcher can be asked while it runs.
enum Command {
    /// A failed delivery was set pending again: take it back into the window.
    Retry(i64),
}

struct Running {
    stop: CancellationToken,
    commands: mpsc::Sender<Command>,
}

/// The dispatchers of every subscription.
///
/// A single process always delivers. In a cluster one node at a time does, the one that
/// leads (`events::lead`); the others tell it of new, deleted and retried subscriptions
/// over PostgreSQL (`NOTIFY` on [`WEBHOOK_COMMANDS`]), and it also reads every
/// subscription again while it leads, so none is missed if a notice is.
pub struct Webhooks {
    db: PgPool,
    hub: Arc<EventHub>,
    client: reqwest::Client,
    /// Where deliveries may go (public addresses only, unless allowed).
    targets: Targets,
    policy: Policy,
    running: Mutex<HashMap<Uuid, Running>>,
    /// While this node delivers: what its dispatchers stop on.
    leading: Mutex<Option<CancellationToken>>,
    /// Where the dispatchers run: the server waits for them at shutdown.
    background: Background,
    in_cluster: bool,
}

impl Webhooks {
    /// Ready to deliver; a single process starts a dispatcher for every stored
    /// subscription at once (all end when the server stops), a cluster node only once it
    /// leads.
    pub async fn start(
        db: PgPool,
        hub: Arc<EventHub>,
        policy: Policy,
        targets: Targets,
        background: Background,
        in_cluster: bool,
    ) -> Result<Arc<Self>, sqlx::Error> {
        let client = targets
            .client(policy.timeout)
            .map_err(|e| sqlx::Error::Configuration(e.into()))?;
        let webhooks = Arc::new(Self {
            db: db.clone(),
            hub,
            client,
            targets,
            policy,
            running: Mutex::default(),
            leading: Mutex::default(),
            background,
            in_cluster,
        });
        if !in_cluster {
            webhooks.lead(webhooks.background.stopping()).await?;
        }
        Ok(webhooks)
    }

    /// This node delivers from now on, until `stop`: every stored subscription gets its
    /// dispatcher (those running already keep theirs).
    pub async fn lead(&self, stop: CancellationToken) -> Result<(), sqlx::Error> {
        *lock(&self.leading) = Some(stop);
        self.sync().await
    }

    /// This node no longer delivers: every dispatcher stops (what is in flight goes again
    /// from the next leader, at least once).
    pub fn follow(&self) {
        if let Some(stop) = lock(&self.leading).take() {
            stop.cancel();
        }
        lock(&self.running).clear();
    }

    /// While leading: a dispatcher for every stored subscription, none for a deleted one.
    pub async fn sync(&self) -> Result<(), sqlx::Error> {
        if lock(&self.leading).is_none() {
            return Ok(());
        }
        let stored = store::all(&self.db).await?;
        let live: std::collections::HashSet<Uuid> = stored.iter().map(|s| s.id).collect();
        lock(&self.running).retain(|id, running| {
            let keep = live.contains(id);
            if !keep {
                running.stop.cancel();
            }
            keep
        });
        for subscription in stored {
            self.run_here(subscription);
        }
        Ok(())
    }

    /// Starts delivering to a new subscription (told to the leader in a cluster).
    pub async fn run(&self, subscription: Subscription) {
        if self.in_cluster {
            self.tell(&format!("run {}", subscription.id)).await;
        } else {
            self.run_here(subscription);
        }
    }

    fn run_here(&self, subscription: Subscription) {
        let Some(leading) = lock(&self.leading).clone() else {
            return;
        };
        let mut running = lock(&self.running);
        if running.contains_key(&subscription.id) {
            return;
        }
        let stop = leading.child_token();
        let (commands, received) = mpsc::channel(64);
        let id = subscription.id;
        let worker = worker::Worker::new(
            self.db.clone(),
            self.client.clone(),
            self.targets.clone(),
            self.policy,
            subscription,
            self.hub.newest(),
        );
        self.background.spawn(worker.run(received, stop.clone()));
        running.insert(id, Running { stop, commands });
    }

    /// The rule a new subscription's URL is checked by.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// Stops delivering to a deleted subscription (told to the leader in a cluster).
    pub async fn stop(&self, id: Uuid) {
        if self.in_cluster {
            self.tell(&format!("stop {id}")).await;
        } else {
            self.stop_here(id);
        }
    }

    fn stop_here(&self, id: Uuid) {
        if let Some(running) = lock(&self.running).remove(&id) {
            running.stop.cancel();
        }
    }

    /// Tells the subscription's dispatcher that a failed delivery is pending again (told
    /// to the leader in a cluster).
    pub async fn retry(&self, id: Uuid, event_id: i64) {
        if self.in_cluster {
            self.tell(&format!("retry {id} {event_id}")).await;
        } else {
            self.retry_here(id, event_id);
        }
    }

    fn retry_here(&self, id: Uuid, event_id: i64) {
        if let Some(running) = lock(&self.running).get(&id) {
            // A full queue means the dispatcher is busy with retries already; it reloads
            // pending deliveries when it starts, and the row is pending in the database.
            let _ = running.commands.try_send(Command::Retry(event_id));
        }
    }

    /// A command another node told (see [`tell`](Self::tell)); only the leader acts on it.
    pub async fn command(&self, said: &str) {
        let mut words = said.split(' ');
        let (Some(verb), Some(Ok(id))) = (words.next(), words.next().map(Uuid::parse_str)) else {
            tracing::warn!(said, "an unreadable webhook command was ignored");
            return;
        };
        match (verb, words.next().map(str::parse::<i64>)) {
            ("run", None) => match store::get(&self.db, id).await {
                Ok(Some(subscription)) => self.run_here(subscription),
                Ok(None) => {}
                // The next sync starts it.
                Err(error) => tracing::warn!(%error, "reading a new webhook failed"),
            },
            ("stop", None) => self.stop_here(id),
            ("retry", Some(Ok(event_id))) => self.retry_here(id, event_id),
            _ => tracing::warn!(said, "an unknown webhook command was ignored"),
        }
    }

    /// Tells every node (the leader acts) of a change to a subscription. A notice lost is
    /// made up for by the leader's next [`sync`](Self::sync); a retry's by the dispatcher's
    /// next start.
    async fn tell(&self, command: &str) {
        let told = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WEBHOOK_COMMANDS)
            .bind(command)
            .execute(&self.db)
            .await;
        if let Err(error) = told {
            tracing::warn!(%error, command, "telling the other nodes of a webhook change failed");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `t=<unix>,v1=<hex HMAC-SHA256 of "t.body" with the secret>`.
pub fn signature(secret: &str, unix: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(unix.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("t={unix},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The subscription's types, as stored.
fn type_names(types: &[EventType]) -> Vec<&'static str> {
    types.iter().map(|t| t.as_str()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_signature_is_the_hmac_of_time_dot_body_in_hex() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            super::signature("secret", 1_700_000_000, r#"{"a":1}"#),
            "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
