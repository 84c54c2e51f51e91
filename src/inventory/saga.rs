//! Reservations whose products are in several shards (cluster mode): a saga over one part
//! per shard, coordinated by the node the request reached.
//!
//! - **Reserve**: the request is checked whole first, with the answers one process gives.
//!   Then each shard's items go to the shard's owner at once, as a reservation of their
//!   own under an id derived from the reservation's and the shard's ([`SagaPart`]):
//!   asking again names the same part and holds nothing twice. Once every part is held,
//!   a row in `reservation_sagas` ties them together and the client gets one
//!   reservation. If any part is refused, every part is released, and a part whose
//!   answer never came is buried, so that its reserve, arriving late, is refused. Each
//!   part carries the reservation's expiry: its owner expires it even if the coordinator
//!   died on the way.
//! - **Commit**: every part is first extended, so that none can expire while the parts
//!   are committed one by one. If a part had already expired or been released, the whole
//!   ends `expired` and the other parts are released: nothing is committed. Then the
//!   decision is written (`committing`), and only then are the parts committed. If the
//!   coordinator dies after the decision, the row stays `committing`, and every node
//!   commits its own parts of such a row ([`finish_decided`]) while the extension holds
//!   them.
//! - **Release**: the decision (`releasing`), then every part.
//! - **Read**: from the store (a part is durable before its owner answers). **Extend** and
//!   **partial settlement**: sent to each part.
//!
//! The parts are the truth of what is held; the whole's status follows them
//! ([`status_of`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use stockline_actors::{CoreError, ReservationRequest, ReservationStatus};
use uuid::Uuid;

mod answers;
mod finish;
mod record;

pub(super) use answers::PartAnswer;
use answers::{all_held, refusal};
pub use finish::{finish_decided, fold};
use record::SagaStatus::{self, *};
use record::mark;
pub use record::{Saga, find};

use super::reservations::{self, ReservationBody};
use super::{Hold, Operation, Step};
use crate::cluster::saga::{Outcome, SagaPart, saga_id, spanning, status_of};
use crate::cluster::{Cluster, Shard, shard_of};
use crate::error::{AppError, Result};
use crate::idempotency::{self, Answer, Idempotent, Keyed};
use crate::state::AppState;
use crate::store::records::{SagaRecord, StoreRecord};

/// How long a commit keeps the parts held at least (their own expiry may be later): the
/// time the nodes have to finish a commit whose coordinator died after deciding it.
const COMMIT_GRACE: Duration = Duration::from_secs(120);

/// How often a release of a part is sent again while its shard has no owner.
const RELEASE_ATTEMPTS: usize = 5;

/// The node coordinating one request: it sends each part to its shard's owner, typed
/// (`inventory::Operation::Part`), or serves it from its own core if it owns the shard.
#[derive(Clone)]
struct Coordinator {
    state: AppState,
    cluster: Arc<Cluster>,
}

impl Coordinator {
    fn new(state: &AppState, cluster: &Arc<Cluster>) -> Self {
        Self {
            state: state.clone(),
            cluster: cluster.clone(),
        }
    }

    /// Asks `step` of the part `part` in `shard`.
    async fn ask(&self, part: Uuid, shard: Shard, step: Step) -> PartAnswer {
        let part = Operation::Part { part, shard, step };
        PartAnswer::of(super::at_owner(&self.state, &self.cluster, shard, part).await).await
    }

    /// Asks of every part of `saga` at once: `what()` gives the step.
    async fn each(&self, saga: &Saga, what: impl Fn() -> Step) -> Vec<PartAnswer> {
        futures_util::future::join_all(
            saga.parts()
                .map(|(shard, part)| self.ask(part, shard, what())),
        )
        .await
    }

    /// Gives up every part in `shards`, burying those never held; retried while a shard
    /// has no owner. A part that still cannot be reached expires by itself.
    async fn release_all(&self, saga: Uuid, shards: &[Shard]) {
        futures_util::future::join_all(shards.iter().map(|&shard| async move {
            for attempt in 1..=RELEASE_ATTEMPTS {
                let part = SagaPart::new(saga, shard).id.0;
                let answer = self.ask(part, shard, Step::GiveUp).await;
                if answer.ok() || answer.not_pending().is_some() {
                    return;
                }
                if attempt == RELEASE_ATTEMPTS {
                    tracing::warn!(%saga, shard, status = %answer.status, "a part could not be released; it expires by itself");
                }
                tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
            }
        }))
        .await;
    }
}

fn respond(outcome: Result<Response>) -> Response {
    outcome.unwrap_or_else(IntoResponse::into_response)
}

fn not_pending(status: ReservationStatus) -> AppError {
    CoreError::ReservationNotPending { status }.into()
}

/// Reserves `request`, whose items are in several shards, at most once per `key` of
/// `user` (the key names the reservation's id, so a retry through any node names the
/// same parts).
pub async fn reserve(
    state: &AppState,
    cluster: &Arc<Cluster>,
    user: i64,
    key: Option<Keyed>,
    request: ReservationRequest,
) -> Response {
    let coordinator = Coordinator::new(state, cluster);
    let saga = match &key {
        Some(keyed) => saga_id(user, keyed.key(), keyed.fingerprint()),
        None => spanning(),
    };
    let request = Idempotent::of(request, key).durable_elsewhere();
    idempotency::run(state, user, request, move |request| async move {
        reserve_parts(&coordinator, saga, request).await
    })
    .await
    .into_response()
}

async fn reserve_parts(
    coordinator: &Coordinator,
    saga: Uuid,
    request: ReservationRequest,
) -> Result<Answer> {
    let state = &coordinator.state;
    let reference = request.reference.clone();
    let shards: Vec<Shard> = Hold::by_shard(&request).keys().copied().collect();
    let send_all = |saga: Uuid| {
        futures_util::future::join_all(Hold::by_shard(&request).into_iter().map(
            move |(shard, hold)| {
                let part = SagaPart::new(saga, shard).id.0;
                coordinator.ask(part, shard, Step::Reserve(hold))
            },
        ))
    };
    let mut saga = saga;
    let mut answers = send_all(saga).await;
    if answers.iter().any(|a| a.not_pending().is_some()) {
        // The same key was tried before and its parts are settled: a reservation that was
        // made (its coordinator died before keeping the answer) is answered again; one
        // that was given up (a part could not be reached, so it was released) is made
        // afresh under a new id.
        if let Some(made) = find(&state.db, saga).await? {
            return Answer::new(StatusCode::CREATED, view(state, &made).await?, 0);
        }
        coordinator.release_all(saga, &shards).await;
        saga = spanning();
        answers = send_all(saga).await;
    }
    if answers.iter().any(|a| !a.ok()) {
        if find(&state.db, saga).await?.is_some() {
            // An earlier try under the same key made it (its answer was lost): its parts
            // are the client's, never released here. The next retry answers it.
            return Err(AppError::Unavailable(
                "this reservation was made by an earlier try; a shard did not answer just                  now: retry shortly"
                    .into(),
            ));
        }
        coordinator.release_all(saga, &shards).await;
        coordinator.cluster.sagas.count(Outcome::Refused);
        return match refusal(answers) {
            // Kept as the answer to the key, as one process keeps its refusals.
            Some(refused) if refused.status.is_client_error() => Ok(Answer {
                status: refused.status,
                body: refused.body,
                lsn: 0,
            }),
            refused => Err(AppError::Unavailable(format!(
                "a part of this reservation could not be held ({}); nothing is held, retry",
                refused
                    .as_ref()
                    .and_then(|r| r.body["error"]["message"].as_str())
                    .unwrap_or("no answer")
            ))),
        };
    }
    let bodies: Vec<Value> = answers.into_iter().map(|a| a.body).collect();
    let time = |field: &str| {
        bodies
            .iter()
            .filter_map(|b| b[field].as_str()?.parse::<DateTime<Utc>>().ok())
            .min()
            .unwrap_or_else(Utc::now)
    };
    let (expires_at, created_at) = (time("expires_at"), time("created_at"));
    // Written in this node's next batch (with the answer kept for the key, when they
    // meet there): the client has the id only once it is durable.
    let held = SagaRecord::Held {
        id: saga,
        parts: shards
            .iter()
            .map(|s| (*s, SagaPart::new(saga, *s).id.0))
            .collect(),
        reference: reference.clone(),
        expires_at,
        created_at,
    };
    let lsn = state.store.buffer.push([StoreRecord::Saga(held)]);
    coordinator.cluster.sagas.count(Outcome::Held);
    let items: Vec<Value> = bodies
        .iter()
        .flat_map(|b| b["items"].as_array().cloned().unwrap_or_default())
        .collect();
    let body = json!({
        "id": saga,
        "status": "pending",
        "items": items,
        "reference": reference,
        "expires_at": expires_at,
        "created_at": created_at,
    });
    Ok(Answer {
        status: StatusCode::CREATED,
        body,
        lsn,
    })
}

/// The record that ties reservations already held, one per shard (a held cart's, each on
/// its shard's owner), together as reservation `id` across shards, pending until
/// `expires_at`: once stored, its parts are settled, extended and read as one. Stored
/// again, it changes nothing.
pub fn tie(
    id: Uuid,
    parts: Vec<(Shard, Uuid)>,
    reference: String,
    expires_at: DateTime<Utc>,
) -> StoreRecord {
    StoreRecord::Saga(SagaRecord::Held {
        id,
        parts,
        reference: Some(reference),
        expires_at,
        created_at: Utc::now(),
    })
}

/// Each part's dry run, put together; holds nothing anywhere.
pub async fn dry_run(
    state: &AppState,
    cluster: &Arc<Cluster>,
    request: ReservationRequest,
) -> Response {
    let coordinator = Coordinator::new(state, cluster);
    let answers = futures_util::future::join_all(
        Hold::by_shard(&request)
            .into_iter()
            .map(|(shard, hold)| coordinator.ask(Uuid::nil(), shard, Step::DryRun(hold))),
    )
    .await;
    let answers = match all_held(answers) {
        Ok(answers) => answers,
        Err(refused) => return refused.into_response(),
    };
    let expires_at = answers.first().map(|a| a.body["expires_at"].clone());
    let items: Vec<Value> = answers
        .iter()
        .flat_map(|a| a.body["items"].as_array().cloned().unwrap_or_default())
        .collect();
    let body = json!({
        "status": "dry_run",
        "items": items,
        "reference": request.reference,
        "expires_at": expires_at,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Reads a reservation across shards.
pub async fn read(state: &AppState, saga: &Saga) -> Response {
    view(state, saga).await.map(axum::Json).into_response()
}

/// Moves every part's expiry, and the whole's, to `ttl_secs` from now.
pub async fn extend(
    state: &AppState,
    cluster: &Arc<Cluster>,
    saga: &Saga,
    ttl_secs: u64,
) -> Response {
    respond(extend_parts(&Coordinator::new(state, cluster), saga, ttl_secs).await)
}

/// Commits (`commit`) or releases a reservation across shards: all of it, or the
/// (warehouse, product, quantity) `lines`.
pub async fn settle(
    state: &AppState,
    cluster: &Arc<Cluster>,
    saga: Saga,
    commit: bool,
    lines: Option<Vec<(i64, i64, u64)>>,
) -> Response {
    let coordinator = Coordinator::new(state, cluster);
    respond(match lines {
        Some(lines) => settle_lines(&coordinator, &saga, commit, lines).await,
        None => decide(&coordinator, saga, commit).await,
    })
}

/// The reservation as a client sees it: its parts, from the store, as one.
async fn view(state: &AppState, saga: &Saga) -> Result<ReservationBody> {
    let mut items = Vec::new();
    let mut statuses = Vec::new();
    for (_, part) in saga.parts() {
        let part = reservations::stored(state, part).await?;
        statuses.push(ReservationStatus::parse(&part.status).unwrap_or(ReservationStatus::Pending));
        items.extend(part.items);
    }
    let status = status_of(&statuses);
    // A commit extends the parts; the expiry shown stays the client's.
    Ok(ReservationBody {
        id: saga.id,
        status: status.as_str().into(),
        items,
        reference: saga.reference.clone(),
        expires_at: saga.expires_at,
        created_at: saga.created_at,
    })
}

/// Every part is extended; the first refusal is the answer.
async fn extend_parts(coordinator: &Coordinator, saga: &Saga, ttl_secs: u64) -> Result<Response> {
    let answers = coordinator.each(saga, || Step::Extend { ttl_secs }).await;
    let answers = match all_held(answers) {
        Ok(answers) => answers,
        Err(refused) => return Ok(refused.into_response()),
    };
    let saga: Saga = sqlx::query_as(
        "UPDATE reservation_sagas SET expires_at = now() + make_interval(secs => $2), updated_at = now()
         WHERE id = $1
         RETURNING id, shards, parts, status, reference, expires_at, created_at",
    )
    .bind(saga.id)
    .bind(ttl_secs as f64)
    .fetch_one(&coordinator.state.db)
    .await?;
    match joined(&saga, &answers) {
        Some(body) => Ok(axum::Json(body).into_response()),
        None => Ok(axum::Json(view(&coordinator.state, &saga).await?).into_response()),
    }
}

/// Commit or release of some quantities: each shard's items go to its part. The items are
/// checked against what the parts hold first, so an over-asking request changes nothing.
async fn settle_lines(
    coordinator: &Coordinator,
    saga: &Saga,
    commit: bool,
    lines: Vec<(i64, i64, u64)>,
) -> Result<Response> {
    let held = view(&coordinator.state, saga).await?;
    let mut by_shard: HashMap<Shard, Vec<(i64, i64, u64)>> = HashMap::new();
    for &(warehouse, product, quantity) in &lines {
        let asked: u64 = lines
            .iter()
            .filter(|(w, p, _)| (*w, *p) == (warehouse, product))
            .map(|(.., q)| q)
            .sum();
        let holds = held
            .items
            .iter()
            .find(|i| i.product_id == product && i.warehouse_id == warehouse)
            .map_or(0, |i| i.quantity.saturating_sub(i.committed + i.released));
        if asked > holds {
            return Err(CoreError::PartNotHeld {
                product_id: product,
                warehouse_id: warehouse,
                requested: asked,
                held: holds,
            }
            .into());
        }
        by_shard
            .entry(shard_of(product))
            .or_default()
            .push((warehouse, product, quantity));
    }
    let mut answers = Vec::new();
    for (shard, part) in saga.parts() {
        if let Some(lines) = by_shard.remove(&shard) {
            let step = Step::Settle {
                commit,
                lines: Some(lines),
            };
            answers.push(coordinator.ask(part, shard, step).await);
        }
    }
    if let Some(refused) = refusal(answers) {
        return Ok(refused.into_response());
    }
    Ok(axum::Json(view(&coordinator.state, saga).await?).into_response())
}

/// Commit or release of the whole reservation.
async fn decide(coordinator: &Coordinator, found: Saga, commit: bool) -> Result<Response> {
    let db = &coordinator.state.db;
    let id = found.id;
    let mut found = Some(found);
    for _ in 0..3 {
        // Read again after the first try: another node may have decided meanwhile.
        let saga = match found.take() {
            Some(saga) => saga,
            None => find(db, id)
                .await?
                .ok_or_else(|| AppError::NotFound("reservation".into()))?,
        };
        match (saga.status, commit) {
            (Pending, _) => {}
            (Committing, true) => {
                return finish(coordinator, &saga, Committing, Outcome::Committed).await;
            }
            (Releasing, false) => {
                return finish(coordinator, &saga, Releasing, Outcome::Released).await;
            }
            (Committing | Committed, _) => return Err(not_pending(ReservationStatus::Committed)),
            (Releasing | Released, _) => return Err(not_pending(ReservationStatus::Released)),
            (Expired, _) => return Err(not_pending(ReservationStatus::Expired)),
        }
        if Utc::now() >= saga.expires_at {
            mark(db, id, Pending, Expired).await?;
            return Err(not_pending(ReservationStatus::Expired));
        }
        if !commit {
            if mark(db, id, Pending, Releasing).await? {
                return finish(coordinator, &saga, Releasing, Outcome::Released).await;
            }
            continue;
        }
        // Held long enough to be committed, whatever happens to this node meanwhile.
        let left = (saga.expires_at - Utc::now()).to_std().unwrap_or_default();
        let ttl_secs = left.max(COMMIT_GRACE).as_secs().max(1);
        let answers = coordinator.each(&saga, || Step::Extend { ttl_secs }).await;
        // A part released whole by a partial release has nothing left to commit; one that
        // expired let its stock go, and then the whole cannot be committed any more.
        let gone = answers
            .iter()
            .any(|a| a.not_pending() == Some(ReservationStatus::Expired));
        if gone {
            if mark(db, id, Pending, Releasing).await? {
                let _ = finish(coordinator, &saga, Releasing, Outcome::Expired).await;
            }
            return Err(not_pending(ReservationStatus::Expired));
        }
        if let Some(failure) = answers
            .iter()
            .position(|a| !a.ok() && a.not_pending().is_none())
        {
            return Ok(answers.into_iter().nth(failure).map_or_else(
                || StatusCode::SERVICE_UNAVAILABLE.into_response(),
                PartAnswer::into_response,
            ));
        }
        // No part holds anything any more: there is nothing to commit.
        let settled: Vec<ReservationStatus> =
            answers.iter().filter_map(PartAnswer::not_pending).collect();
        if settled.len() == answers.len() {
            let status = status_of(&settled);
            // A part's stored status may still read pending (a part this node had not in
            // memory): the whole is then left as it is, for the parts to settle it.
            if Pending.can_become(status.into()) {
                mark(db, id, Pending, status.into()).await?;
            }
            return Err(not_pending(status));
        }
        if mark(db, id, Pending, Committing).await? {
            return finish(coordinator, &saga, Committing, Outcome::Committed).await;
        }
    }
    Err(AppError::Unavailable(
        "the reservation is being settled right now; retry shortly".into(),
    ))
}

/// Carries a decision (`committing` or `releasing`) to every part, then records the whole
/// `done`.
async fn finish(
    coordinator: &Coordinator,
    saga: &Saga,
    decided: SagaStatus,
    done: Outcome,
) -> Result<Response> {
    let commit = decided == Committing;
    let answers = coordinator
        .each(saga, || match commit {
            true => Step::Settle {
                commit,
                lines: None,
            },
            false => Step::GiveUp,
        })
        .await;
    // A part already settled (by a partial settlement, or an earlier try) is reached.
    let reached = answers.iter().all(|a| a.ok() || a.not_pending().is_some());
    if commit
        && answers
            .iter()
            .any(|a| a.not_pending() == Some(ReservationStatus::Expired))
    {
        tracing::error!(reservation = %saga.id, "a part expired after the commit was decided: the reservation is committed only in part");
    }
    if !reached {
        return Err(AppError::Unavailable(format!(
            "the reservation is {}; some of its shards did not answer yet and it \
             finishes by itself: retry to see it done",
            decided.as_str()
        )));
    }
    let ends = match done {
        Outcome::Committed => Committed,
        Outcome::Expired => Expired,
        _ => Released,
    };
    // The last mark rides in this node's next batch, unawaited: lost in a crash, the row
    // stays decided and every node finishes it (`finish_decided`).
    let settled = SagaRecord::Settled {
        id: saga.id,
        from: decided.as_str(),
        to: ends.as_str(),
    };
    coordinator
        .state
        .store
        .buffer
        .push([StoreRecord::Saga(settled)]);
    coordinator.cluster.sagas.count(done);
    let body = match joined(saga, &answers) {
        Some(body) => body,
        None => serde_json::to_value(view(&coordinator.state, saga).await?)
            .map_err(|e| AppError::Internal(e.to_string()))?,
    };
    // A commit is answered 200 only if stock left: parts that all let it go (released
    // or expired earlier) end the reservation so, and the commit is refused.
    let status = body["status"].as_str().and_then(ReservationStatus::parse);
    if commit && status != Some(ReservationStatus::Committed) {
        return Err(not_pending(status.unwrap_or(ReservationStatus::Expired)));
    }
    Ok(axum::Json(body).into_response())
}

/// The whole as its parts answered it, if every part answered with itself (one already
/// settled answers only its status: then the store is read instead).
fn joined(saga: &Saga, answers: &[PartAnswer]) -> Option<Value> {
    let mut items = Vec::new();
    let mut statuses = Vec::new();
    for answer in answers {
        if !answer.ok() {
            return None;
        }
        statuses.push(ReservationStatus::parse(answer.body["status"].as_str()?)?);
        items.extend(answer.body["items"].as_array()?.iter().cloned());
    }
    Some(json!({
        "id": saga.id,
        "status": status_of(&statuses).as_str(),
        "items": items,
        "reference": saga.reference,
        "expires_at": saga.expires_at,
        "created_at": saga.created_at,
    }))
}
