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
pub struct Webhooks {
    db: PgPool,
    hub: Arc<EventHub>,
    client: reqwest::Client,
    /// Where deliveries may go (public addresses only, unless allowed).
    targets: Targets,
    policy: Policy,
    running: Mutex<HashMap<Uuid, Running>>,
    stop: CancellationToken,
}

impl Webhooks {
    /// Starts a dispatcher for every stored subscription; all end on `stop`.
    pub async fn start(
        db: PgPool,
        hub: Arc<EventHub>,
        policy: Policy,
        targets: Targets,
        stop: CancellationToken,
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
            stop,
        });
        for subscription in store::all(&db).await? {
            webhooks.run(subscription);
        }
        Ok(webhooks)
    }

    /// Starts delivering to a new subscription.
    pub fn run(&self, subscription: Subscription) {
        let stop = self.stop.child_token();
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
        tokio::spawn(worker.run(received, stop.clone()));
        self.lock().insert(id, Running { stop, commands });
    }

    /// The rule a new subscription's URL is checked by.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// Stops delivering to a deleted subscription.
    pub fn stop(&self, id: Uuid) {
        if let Some(running) = self.lock().remove(&id) {
            running.stop.cancel();
        }
    }

    /// Tells the subscription's dispatcher that a failed delivery is pending again.
    pub fn retry(&self, id: Uuid, event_id: i64) {
        if let Some(running) = self.lock().get(&id) {
            // A full queue means the dispatcher is busy with retries already; it reloads
            // pending deliveries when it starts, and the row is pending in the database.
            let _ = running.commands.try_send(Command::Retry(event_id));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Running>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
