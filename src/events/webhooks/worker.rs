//! One subscription's dispatcher (see the module's opening for what it promises).
//!
//! The window is the subscription's pending deliveries, in event id order, at most
//! [`WINDOW`] of them: the memory a dead endpoint can hold is bounded, and once the window
//! is full of undeliverable events nothing more is taken until some are delivered or
//! given up. Outcomes take effect in the window at once and are written in batches (within
//! 50 ms): a line's next event does not wait for a database round trip.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::target::{self, Targets};
use super::{Command, Policy, Subscription};
use crate::events::read::{self, Filter};

/// Pending deliveries held at most.
const WINDOW: usize = 1_000;
/// Requests in flight at most, per subscription.
const IN_FLIGHT: usize = 8;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3_600);
/// Outcomes are written at most this long after they happened, or once this many wait.
/// Until then a crash only means an attempt made again (at least once).
const SAVE_WITHIN: Duration = Duration::from_millis(50);
const SAVE_EVERY_ATTEMPTS: usize = 1_000;

struct Pending {
    kind: String,
    key: Arc<str>,
    /// `{id, type, at, data}`.
    body: Arc<str>,
    attempts: i32,
    first_attempt_at: Option<DateTime<Utc>>,
    due: Instant,
    in_flight: bool,
}

/// What one attempt came to.
struct Attempt {
    event_id: i64,
    at: DateTime<Utc>,
    status_code: Option<u16>,
    error: Option<String>,
    took: Duration,
}

impl Attempt {
    fn succeeded(&self) -> bool {
        self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

pub(super) struct Worker {
    db: PgPool,
    client: reqwest::Client,
    /// Checks an address written in the URL before each attempt (names are checked by
    /// the client's resolver).
    targets: Targets,
    policy: Policy,
    subscription: Subscription,
    newest: watch::Receiver<i64>,
    window: BTreeMap<i64, Pending>,
    cursor: i64,
}

impl Worker {
    pub(super) fn new(
        db: PgPool,
        client: reqwest::Client,
        targets: Targets,
        policy: Policy,
        subscription: Subscription,
        newest: watch::Receiver<i64>,
    ) -> Self {
        Self {
            db,
            client,
            targets,
            policy,
            subscription,
            newest,
            window: BTreeMap::new(),
            cursor: 0,
        }
    }

    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        while let Err(error) = self.load().await {
            tracing::warn!(%error, webhook = %self.subscription.id, "loading a webhook's deliveries failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        let mut flying: JoinSet<Attempt> = JoinSet::new();
        // Outcomes applied but not yet written, and when they must be.
        let mut unsaved: Vec<Outcome> = Vec::new();
        let mut save_by: Option<Instant> = None;
        loop {
            // Taken in pages: only once half the window is free (or nothing is held).
            if self.window.len() <= WINDOW / 2
                && let Err(error) = self.take_new().await
            {
                tracing::warn!(%error, webhook = %self.subscription.id, "taking new events failed; will retry");
            }
            let next_due = self.dispatch(&mut flying);
            if unsaved.len() >= SAVE_EVERY_ATTEMPTS
                || save_by.is_some_and(|by| by <= Instant::now())
            {
                match self.save(&unsaved).await {
                    Ok(()) => {
                        unsaved.clear();
                        save_by = None;
                    }
                    Err(error) => {
                        tracing::warn!(%error, webhook = %self.subscription.id, "recording webhook attempts failed; will retry");
                        save_by = Some(Instant::now() + Duration::from_millis(500));
                    }
                }
            }
            let wants_more = self.window.len() <= WINDOW / 2;
            tokio::select! {
                Some(Ok(attempt)) = flying.join_next() => {
                    unsaved.extend(self.settle(attempt));
                    while let Some(Ok(attempt)) = flying.try_join_next() {
                        unsaved.extend(self.settle(attempt));
                    }
                    save_by.get_or_insert_with(|| Instant::now() + SAVE_WITHIN);
                }
                changed = self.newest.changed(), if wants_more => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = sleep_until(min(next_due, save_by)) => {}
                Some(Command::Retry(event_id)) = commands.recv() => {
                    if let Err(error) = self.load_one(event_id).await {
                        tracing::warn!(%error, "taking back a retried delivery failed");
                    }
                }
                _ = stop.cancelled() => {
                    // What is in flight is abandoned: it is pending in the database and
                    // goes again after a restart (at least once). What finished is written
                    // if the database lets it, for the same reason not required.
                    flying.abort_all();
                    let _ = self.save(&unsaved).await;
                    return;
                }
            }
        }
    }

    /// The cursor, and the pending deliveries with their events.
    async fn load(&mut self) -> Result<(), sqlx::Error> {
        let id = self.subscription.id;
        self.cursor = sqlx::query_scalar("SELECT cursor FROM webhooks WHERE id = $1")
            .bind(id)
            .fetch_one(&self.db)
            .await?;
        let rows = pending_rows(&self.db, id, None).await?;
        self.window.clear();
        for row in rows {
            self.hold(row);
        }
        Ok(())
    }

    async fn load_one(&mut self, event_id: i64) -> Result<(), sqlx::Error> {
        for row in pending_rows(&self.db, self.subscription.id, Some(event_id)).await? {
            self.hold(row);
        }
        Ok(())
    }

    fn hold(&mut self, row: PendingRow) {
        let (event_id, kind, key, attempts, first_attempt_at, next_at, at, data, shop_ids) = row;
        let wait = (next_at - Utc::now()).to_std().unwrap_or_default();
        let wire = crate::events::wire(event_id, &kind, at, &data);
        let body: Arc<str> = self.filter().shown(&shop_ids, &wire).into();
        self.window.entry(event_id).or_insert(Pending {
            body,
            kind,
            key: key.into(),
            attempts,
            first_attempt_at,
            due: Instant::now() + wait,
            in_flight: false,
        });
    }

    /// What the subscription is sent: its types, and its shop's part of events.
    fn filter(&self) -> Filter {
        Filter {
            types: self.subscription.types.clone(),
            shops: self.subscription.shop_id.map(|shop| vec![shop]),
        }
    }

    /// Takes the events after the cursor into the window (and the database), moving the
    /// cursor in the same transaction.
    async fn take_new(&mut self) -> Result<(), sqlx::Error> {
        let newest = *self.newest.borrow_and_update();
        if newest <= self.cursor {
            return Ok(());
        }
        let filter = self.filter();
        let room = (WINDOW - self.window.len()) as i64;
        let page = read::page(&self.db, self.cursor, &filter, room).await?;
        // A short page read every event up to `newest`: the ones it skipped are not wanted.
        let cursor = match page.last() {
            Some(last) if page.len() as i64 == room => last.id,
            _ => newest.max(page.last().map_or(0, |e| e.id)),
        };
        let now = Utc::now();
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, ordering_key, status, next_attempt_at)
             SELECT $1, * , 'pending', $5 FROM UNNEST($2::bigint[], $3::text[], $4::text[])
             ON CONFLICT DO NOTHING",
        )
        .bind(self.subscription.id)
        .bind(page.iter().map(|e| e.id).collect::<Vec<_>>())
        .bind(page.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
        .bind(page.iter().map(|e| e.ordering_key.as_str()).collect::<Vec<_>>())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE webhooks SET cursor = $2 WHERE id = $1 AND cursor < $2")
            .bind(self.subscription.id)
            .bind(cursor)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.cursor = cursor;
        for event in page {
            self.window.insert(
                event.id,
                Pending {
                    body: filter.shown(&event.shop_ids, &event.to_json()).into(),
                    kind: event.kind,
                    key: event.ordering_key.into(),
                    attempts: 0,
                    first_attempt_at: None,
                    due: Instant::now(),
                    in_flight: false,
                },
            );
        }
        Ok(())
    }

    /// Starts every delivery that is due and not behind an undelivered one of its key;
    /// answers when the next one that waits only for its time falls due.
    fn dispatch(&mut self, flying: &mut JoinSet<Attempt>) -> Option<Instant> {
        let now = Instant::now();
        let mut blocked: HashSet<Arc<str>> = HashSet::new();
        let mut in_flight = self.window.values().filter(|p| p.in_flight).count();
        let mut next_due: Option<Instant> = None;
        for (event_id, pending) in self.window.iter_mut() {
            // Only the first undelivered event of each key may go.
            if !blocked.insert(pending.key.clone()) || pending.in_flight {
                continue;
            }
            if pending.due > now {
                next_due = Some(next_due.map_or(pending.due, |n| n.min(pending.due)));
                continue;
            }
            if in_flight >= IN_FLIGHT {
                // Due, waiting for a free slot: a completion wakes the loop.
                continue;
            }
            pending.in_flight = true;
            in_flight += 1;
            flying.spawn(send(
                self.client.clone(),
                self.targets.clone(),
                self.subscription.url.clone(),
                self.subscription.secret.clone(),
                *event_id,
                pending.kind.clone(),
                pending.body.clone(),
            ));
        }
        next_due
    }

    /// Applies finished attempts to the window at once (a line's next event can go right
    /// away); answers what is to be written.
    fn settle(&mut self, attempt: Attempt) -> Option<Outcome> {
        let now = Utc::now();
        let pending = self.window.get_mut(&attempt.event_id)?;
        pending.in_flight = false;
        pending.attempts += 1;
        let first = *pending.first_attempt_at.get_or_insert(attempt.at);
        let given_up = chrono::Duration::from_std(self.policy.retry_for).unwrap_or_default();
        let (status, wait) = if attempt.succeeded() {
            ("delivered", Duration::ZERO)
        } else if now - first >= given_up {
            ("failed", Duration::ZERO)
        } else {
            ("pending", backoff(self.policy.retry_base, pending.attempts))
        };
        pending.due = Instant::now() + wait;
        let outcome = Outcome {
            attempts: pending.attempts,
            first_attempt_at: first,
            status,
            next_at: now + chrono::Duration::from_std(wait).unwrap_or_default(),
            attempt,
        };
        if status != "pending" {
            if status == "failed" {
                tracing::warn!(webhook = %self.subscription.id, event = outcome.attempt.event_id, "a webhook delivery failed for good");
            }
            self.window.remove(&outcome.attempt.event_id);
        }
        Some(outcome)
    }

    /// Writes attempts and where their deliveries stand, in one transaction.
    async fn save(&self, rows: &[Outcome]) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let id = self.subscription.id;
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (webhook_id, event_id, attempt, at, status_code, error, duration_ms)
             SELECT $1, * FROM UNNEST($2::bigint[], $3::int[], $4::timestamptz[], $5::int[], $6::text[], $7::int[])
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(rows.iter().map(|r| r.attempt.event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.attempts).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.attempt.at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.attempt.status_code.map(i32::from)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.attempt.error.as_deref()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.attempt.took.as_millis().min(i32::MAX as u128) as i32)
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        // The newest outcome of each delivery wins (a delivery may have several here).
        let mut newest: BTreeMap<i64, &Outcome> = BTreeMap::new();
        for row in rows {
            newest.insert(row.attempt.event_id, row);
        }
        let rows: Vec<&Outcome> = newest.into_values().collect();
        sqlx::query(
            "UPDATE webhook_deliveries d
             SET status = u.status, attempts = u.attempts, first_attempt_at = u.first_at,
                 next_attempt_at = u.next_at, last_status_code = u.code, last_error = u.error,
                 updated_at = now()
             FROM UNNEST($2::bigint[], $3::text[], $4::int[], $5::timestamptz[], $6::timestamptz[],
                         $7::int[], $8::text[])
               AS u (event_id, status, attempts, first_at, next_at, code, error)
             WHERE d.webhook_id = $1 AND d.event_id = u.event_id",
        )
        .bind(id)
        .bind(rows.iter().map(|r| r.attempt.event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.attempts).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.first_attempt_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.next_at).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.attempt.status_code.map(i32::from))
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.attempt.error.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

/// An attempt and where it leaves its delivery, to be written.
struct Outcome {
    attempt: Attempt,
    attempts: i32,
    first_attempt_at: DateTime<Utc>,
    status: &'static str,
    next_at: DateTime<Utc>,
}

fn min(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Waits until `due`, or for ever when nothing is due.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// The wait before attempt `attempts + 1`: `base * 2^(attempts - 1)`, at most an hour, of
/// which a random half (jitter: receivers that failed together do not retry together).
fn backoff(base: Duration, attempts: i32) -> Duration {
    let exponent = attempts.clamp(1, 32) as u32 - 1;
    let full = base
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(MAX_BACKOFF);
    full / 2 + full.mul_f64(rand::random::<f64>() / 2.0)
}

/// One POST of an event to the subscription's URL, signed.
async fn send(
    client: reqwest::Client,
    targets: Targets,
    url: String,
    secret: String,
    event_id: i64,
    kind: String,
    body: Arc<str>,
) -> Attempt {
    let at = Utc::now();
    let started = std::time::Instant::now();
    let refused = |error: String| Attempt {
        event_id,
        at,
        status_code: None,
        error: Some(error),
        took: started.elapsed(),
    };
    // A subscription stored before the rule (or by another version) is checked here too.
    let checked = reqwest::Url::parse(&url)
        .map_err(|e| e.to_string())
        .and_then(|parsed| targets.check_literal(&parsed).map_err(|e| e.to_string()));
    if let Err(error) = checked {
        return refused(format!("refused: {error}"));
    }
    let signature = super::signature(&secret, at.timestamp(), &body);
    let sent = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Stockline-Event-Id", event_id.to_string())
        .header("Stockline-Event-Type", kind)
        .header("Stockline-Signature", signature)
        .body(body.to_string())
        .send()
        .await;
    let (status_code, error) = match sent {
        Ok(response) => {
            let status = response.status();
            let error = (!status.is_success()).then(|| format!("answered {status}"));
            (Some(status.as_u16()), error)
        }
        Err(error) if target::refusal(&error).is_some() => {
            let refusal = target::refusal(&error).map(ToString::to_string);
            (None, refusal.map(|r| format!("refused: {r}")))
        }
        Err(error) if error.is_timeout() => (None, Some("timed out".to_owned())),
        Err(error) if error.is_connect() => (None, Some("could not connect".to_owned())),
        Err(error) => (None, Some(error.to_string())),
    };
    Attempt {
        event_id,
        at,
        status_code,
        error,
        took: started.elapsed(),
    }
}

type PendingRow = (
    i64,
    String,
    String,
    i32,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    DateTime<Utc>,
    String,
    Vec<i64>,
);

async fn pending_rows(
    db: &PgPool,
    id: uuid::Uuid,
    only: Option<i64>,
) -> Result<Vec<PendingRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.event_id, d.event_type, d.ordering_key, d.attempts, d.first_attempt_at,
                d.next_attempt_at, e.at, e.data, e.shop_ids
         FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
         WHERE d.webhook_id = $1 AND d.status = 'pending' AND ($2::bigint IS NULL OR d.event_id = $2)
         ORDER BY d.event_id LIMIT $3",
    )
    .bind(id)
    .bind(only)
    .bind(WINDOW as i64)
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_growing_at_an_hour() {
        let base = Duration::from_secs(1);
        for attempts in 1..=6 {
            let full = Duration::from_secs(1 << (attempts - 1));
            let wait = backoff(base, attempts);
            assert!(wait >= full / 2 && wait <= full, "{attempts}: {wait:?}");
        }
        assert!(backoff(base, 30) <= MAX_BACKOFF);
        assert!(backoff(base, 30) >= MAX_BACKOFF / 2);
    }
}
