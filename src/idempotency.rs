//! `Idempotency-Key`: the same key from the same user with the same request answers the
//! first answer again (status and body) and moves nothing a second time, also after a
//! restart; the same key with another request is 422 `idempotency_key_reused`.
//!
//! Every request through [`run`] executes inside a flush group, and its answer is journaled
//! in that group, so the stock it moved, the records it wrote and the answer to replay are
//! committed in one transaction: after a crash either all of it is there or none. A
//! duplicate that arrives while the first is still running waits for it and replays it.
//! Answers stay in memory for an hour (replays need no query), then only in PostgreSQL.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use stockline_actors::Lsn;

use crate::store::records::{IdempotencyRecord, StoreRecord};

use crate::error::{AppError, Result};
use crate::state::AppState;
use crate::state::answers::{AnswerState, Claim};

/// A JSON body and, if the client sent one, its idempotency key and request fingerprint.
pub struct Idempotent<T> {
    pub body: T,
    key: Option<String>,
    fingerprint: String,
    grouped: Grouped,
}

/// A JSON body that does not fit the request, in the contract's words: a missing field
/// is named, anything else is invalid JSON.
pub fn body_error(error: serde_json::Error) -> AppError {
    let text = error.to_string();
    match text
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        Some(field) => AppError::validation(field, "is required"),
        None => AppError::InvalidJson(text),
    }
}

/// A request's idempotency key and fingerprint, as they travel with an operation to the
/// node that runs it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Keyed {
    key: String,
    fingerprint: String,
}

impl Keyed {
    pub(crate) fn new(key: String, fingerprint: String) -> Self {
        Self { key, fingerprint }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl<T> Idempotent<T> {
    /// `body` under the key it came with.
    pub fn of(body: T, keyed: Option<Keyed>) -> Self {
        let (key, fingerprint) = match keyed {
            Some(Keyed { key, fingerprint }) => (Some(key), fingerprint),
            None => (None, String::new()),
        };
        Self {
            body,
            key,
            fingerprint,
            grouped: Grouped::Yes,
        }
    }

    /// The body, and the key and fingerprint if the client sent a key.
    pub fn into_parts(self) -> (T, Option<Keyed>) {
        let keyed = self.key.map(|key| Keyed {
            key,
            fingerprint: self.fingerprint,
        });
        (self.body, keyed)
    }

    /// For work whose effects other nodes make durable (the parts of a reservation across
    /// shards): [`run`] then holds no flush group while it runs, since this node's own
    /// forwarded parts would wait on that group to be flushed. Only the answer is
    /// journaled here.
    pub fn durable_elsewhere(mut self) -> Self {
        self.grouped = Grouped::No;
        self
    }
}

/// What a request answered, and the journal position to await before answering it.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub lsn: Lsn,
}

impl Answer {
    pub fn new(status: StatusCode, body: impl serde::Serialize, lsn: Lsn) -> Result<Self> {
        let body = serde_json::to_value(body).map_err(|e| AppError::Internal(e.to_string()))?;
        Ok(Self { status, body, lsn })
    }
}

async fn stored(
    state: &AppState,
    user: i64,
    key: &str,
) -> Result<Option<(String, StatusCode, Value)>> {
    let row: Option<(String, i16, String)> = sqlx::query_as(
        "SELECT request_hash, status, body FROM idempotency_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(user)
    .bind(key)
    .fetch_optional(&state.db)
    .await?;
    Ok(row.map(|(fingerprint, status, body)| {
        let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
        (
            fingerprint,
            status,
            serde_json::from_str(&body).unwrap_or(Value::Null),
        )
    }))
}

fn respond(status: StatusCode, body: Value) -> Response {
    if body.is_null() {
        status.into_response()
    } else {
        (status, axum::Json(body)).into_response()
    }
}

/// Runs `work` for `user` at most once per idempotency key, inside a flush group, and
/// answers once its effects are durable (`sync` mode).
///
/// The work runs in a task of its own: a client that hangs up drops the request's future,
/// and the work must not stop half-way (a retry would then wait forever on its key, or move
/// stock a second time for an effect whose answer was never kept).
pub async fn run<T, F, Fut>(
    state: &AppState,
    user: i64,
    request: Idempotent<T>,
    work: F,
) -> Result<Response>
where
    T: Send + 'static,
    F: FnOnce(T) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Answer>> + Send + 'static,
{
    let state = state.clone();
    tokio::spawn(async move { run_to_end(&state, user, request, work).await })
        .await
        .map_err(|e| AppError::Internal(format!("idempotent request task: {e}")))?
}

/// A refusal of a request before its operation went anywhere, kept under its key like any
/// answer (a retry with the same key is answered the same).
pub async fn refuse_keyed(
    state: &AppState,
    user: i64,
    keyed: Option<Keyed>,
    error: AppError,
) -> Result<Response> {
    let request = Idempotent::of(error, keyed);
    run(state, user, request, |error| async move { Err(error) }).await
}

/// Whether the work runs inside a flush group.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Grouped {
    Yes,
    No,
}

async fn open_group(
    state: &AppState,
    grouped: Grouped,
) -> Option<stockline_actors::journal::FlushGroup<'_, StoreRecord>> {
    match grouped {
        Grouped::Yes => Some(state.store.buffer.group().await),
        Grouped::No => None,
    }
}

async fn run_to_end<T, F, Fut>(
    state: &AppState,
    user: i64,
    request: Idempotent<T>,
    work: F,
) -> Result<Response>
where
    F: FnOnce(T) -> Fut,
    Fut: Future<Output = Result<Answer>>,
{
    let Some(key) = request.key else {
        let group = open_group(state, request.grouped).await;
        let answer = work(request.body).await;
        drop(group);
        let answer = answer?;
        state.store.durable(answer.lsn).await?;
        return Ok(respond(answer.status, answer.body));
    };
    let fingerprint = request.fingerprint;
    loop {
        let known = if state.answers.slots.contains_key(&(user, key.clone())) {
            None
        } else {
            stored(state, user, &key).await?
        };
        match state.answers.claim(user, &key, &fingerprint, known) {
            Claim::Mine => break,
            Claim::Replay(status, body, lsn) => {
                // In `sync` mode a repeat, like the first, is answered only once durable.
                match state.store.durable(lsn).await {
                    Ok(()) => return Ok(respond(status, body)),
                    // The first try's batch was refused: it never happened, so this one
                    // runs it again (kept, the key would answer 503 for good).
                    Err(_) if state.store.refused(lsn) => {
                        state.answers.forget_refused(user, &key, lsn);
                        continue;
                    }
                    Err(error) => return Err(error),
                }
            }
            Claim::Reused => {
                return Err(AppError::Unprocessable {
                    code: "idempotency_key_reused",
                    message: "this Idempotency-Key was used for another request".into(),
                });
            }
            Claim::Wait(done) => {
                let notified = done.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if !matches!(
                    state.answers.slots.get(&(user, key.clone())).as_deref(),
                    Some(AnswerState::Running { .. })
                ) {
                    continue;
                }
                notified.await;
            }
        }
    }
    let group = open_group(state, request.grouped).await;
    let (status, body, lsn) = match work(request.body).await {
        Ok(answer) => (answer.status, answer.body, answer.lsn),
        // Nothing happened and the client is told to retry: no answer to keep.
        Err(error @ (AppError::Overloaded | AppError::Unavailable(_) | AppError::Internal(_))) => {
            drop(group);
            state.answers.finish(user, &key, None);
            return Err(error);
        }
        Err(error) => (
            error.status(),
            serde_json::json!({ "error": error.body() }),
            0,
        ),
    };
    let record = IdempotencyRecord {
        user_id: user,
        key: key.clone(),
        request_hash: fingerprint.clone(),
        status: status.as_u16(),
        body: body.to_string(),
        created_at: stockline_actors::types::now(),
    };
    let answer_lsn = state.store.buffer.push([StoreRecord::Idempotency(record)]);
    drop(group);
    // Kept before it is durable: a retry after a 503 below replays it rather than moving
    // stock again, and it will be durable with the effect it describes.
    state.answers.finish(
        user,
        &key,
        Some((fingerprint, status, body.clone(), lsn.max(answer_lsn))),
    );
    let last = lsn.max(answer_lsn);
    if let Err(error) = state.store.durable(last).await {
        if state.store.refused(last) {
            state.answers.forget_refused(user, &key, last);
        }
        return Err(error);
    }
    Ok(respond(status, body))
}
