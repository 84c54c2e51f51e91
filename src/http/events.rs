//! `/events`: the outbox, as a list to page through (`?after=`) and as a live stream
//! (server-sent events) that resumes where a client left off (`Last-Event-ID`).
//!
//! A stream first reads the table from its position, a page at a time (only as fast as
//! the client takes them), then subscribes to the hub, reads the table on to its end
//! again (what committed between its last page and the subscription), and from then on
//! sends what the hub brings, skipping what it has sent. Nothing is skipped and nothing is sent twice. A
//! stream that falls a whole ring behind the newest event gets a last `cutoff` event with
//! the id to resume from, and ends: its memory never grows.
//!
//! A stream outlives the request that opened it, so it asks again every
//! [`RECHECK_EVERY`] whether its caller may still see what it sends: a caller that logged
//! out, was disabled, had its role changed or lost a shop it was following gets a last
//! `revoked` event (`{"type": "revoked", "reason"}`) within five seconds, and the stream
//! ends. A role is read again from the database when older than [`ROLE_FRESH_FOR`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::extract::{Json, List, Query};
use super::openapi::ErrorBody;
use crate::auth::Identity;
use crate::error::{AppError, Result};
use crate::events::hub::Published;
use crate::events::parse_types;
use crate::events::read::{self, Filter};
use crate::http::AppState;
use crate::http::caller::Caller;

/// Events a stream reads from the table at a time while catching up.
const CATCH_UP_PAGE: i64 = 500;
/// `total` counts at most this many events.
const COUNT_CAP: i64 = 1_000_000;
/// How often an open stream checks that its caller still has the right to it.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// A stream's recheck reads the caller's role again when the cached one is older: with
/// [`RECHECK_EVERY`], a change made on another node ends the stream within 4 s.
const ROLE_FRESH_FOR: Duration = Duration::from_secs(3);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(stream))
}

#[derive(Deserialize, IntoParams)]
struct ListQuery {
    /// Events with a larger id than this (default 0: the oldest kept).
    after: Option<i64>,
    /// Comma-separated event types (default: all).
    types: Option<String>,
    /// At most 500, default 50.
    limit: Option<i64>,
}

/// What the caller may see, of which types.
fn filter(state: &AppState, caller: &Identity, types: Option<&str>) -> Result<Filter> {
    let scope = state.access(caller).scope()?;
    let types = parse_types(types.unwrap_or_default().split(','))
        .map_err(|message| AppError::validation("types", message))?;
    Ok(Filter {
        types,
        shops: match scope {
            crate::shops::Scope::All => None,
            crate::shops::Scope::Shops(shops) => Some(shops),
        },
    })
}

fn position(after: Option<i64>, field: &str) -> Result<Option<i64>> {
    match after {
        Some(after) if after < 0 => Err(AppError::validation(field, "must not be negative")),
        other => Ok(other),
    }
}

#[utoipa::path(get, path = "/events", tag = "events", security(("bearer" = [])), params(ListQuery), responses((status = 200, description = "`{items: [{id, type, at, data}], total}`, oldest first; `total` counts the matching events after `after` (at most 1,000,000)", body = Object), (status = 403, description = "Neither an operator nor a shop member", body = ErrorBody), (status = 422, description = "An unknown type, or a bad `after` or `limit`", body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<List<Value>>> {
    let filter = filter(&state, &caller, query.types.as_deref())?;
    let after = position(query.after, "after")?.unwrap_or(0);
    let limit = super::extract::Page::new(query.limit, None).limit()?;
    let page = read::page(&state.db, after, &filter, limit).await?;
    let total = read::count(&state.db, after, &filter, COUNT_CAP).await?;
    let items = page
        .iter()
        .map(|e| serde_json::from_str(&filter.shown(&e.shop_ids, &e.to_json())))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| AppError::Internal(format!("a stored event is not JSON: {e}")))?;
    Ok(Json(List { items, total }))
}

#[derive(Deserialize, IntoParams)]
struct StreamQuery {
    /// Resume after this event id (the `Last-Event-ID` header wins); without either, the
    /// stream starts with the next event.
    after: Option<i64>,
    /// Comma-separated event types (default: all).
    types: Option<String>,
}

#[utoipa::path(get, path = "/events/stream", tag = "events", security(("bearer" = [])), params(StreamQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")), responses((status = 200, description = "`text/event-stream`: each event as `id`, `event` (its type) and `data` (`{id, type, at, data}`); a slow client gets a last `cutoff` event naming the id to resume from", content_type = "text/event-stream", body = String), (status = 403, description = "Neither an operator nor a shop member", body = ErrorBody), (status = 422, description = "An unknown type, or a bad position", body = ErrorBody), (status = 429, description = "This caller has 32 streams open already; Retry-After says when to try again", body = ErrorBody), (status = 503, description = "Too many streams are open", body = ErrorBody)))]
async fn stream(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Response> {
    let filter = filter(&state, &caller, query.types.as_deref())?;
    let resume = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or_else(|| AppError::validation("Last-Event-ID", "must be an event id"))?,
        ),
        None => query.after,
    };
    let resume = position(resume, "after")?;
    let mine = state
        .events
        .stream_of(caller.user_id)
        .ok_or(AppError::RateLimited {
            retry_after_secs: 5,
        })?;
    let permit = state
        .events
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| AppError::Overloaded)?;
    let cursor = resume.unwrap_or_else(|| *state.events.hub.newest().borrow());
    let follower = Follower {
        state,
        caller,
        next_check: tokio::time::Instant::now() + RECHECK_EVERY,
        filter,
        cursor,
        queued: VecDeque::new(),
        live: None,
        settled: false,
        done: false,
        _permit: (permit, mine),
    };
    let events = futures_util::stream::unfold(follower, |mut f| async move {
        f.next().await.map(|event| (Ok::<_, Infallible>(event), f))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One open stream.
struct Follower {
    state: AppState,
    /// Who opened it, as it was then: a role other than this one ends the stream.
    caller: Identity,
    /// When to check next that `caller` still may follow.
    next_check: tokio::time::Instant,
    filter: Filter,
    /// The id of the last event sent (or the position resumed from).
    cursor: i64,
    queued: VecDeque<SseEvent>,
    /// Subscribed once caught up with the table.
    live: Option<broadcast::Receiver<Arc<Published>>>,
    /// The table was read to its end after subscribing: from now on, the ring.
    settled: bool,
    done: bool,
    /// Its place among all streams, and among its caller's.
    _permit: (OwnedSemaphorePermit, crate::events::CallerStream),
}

impl Follower {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            if tokio::time::Instant::now() >= self.next_check {
                self.recheck().await;
                continue;
            }
            match (self.live.as_mut(), self.settled) {
                (None, _) => {
                    if self.read_page().await? {
                        // Subscribe, then read the table again until a short page: what
                        // committed before the subscription is there, what after it is
                        // in the ring (or both; `cursor` drops repeats).
                        self.live = Some(self.state.events.hub.subscribe());
                    }
                }
                (Some(_), false) => self.settled = self.read_page().await?,
                (Some(live), true) => match tokio::select! {
                    received = live.recv() => received,
                    _ = tokio::time::sleep_until(self.next_check) => continue,
                    _ = self.state.events.closing.cancelled() => {
                        // Shutting down: the client resumes elsewhere or later.
                        self.done = true;
                        continue;
                    }
                } {
                    Ok(event) => {
                        if event.id > self.cursor && self.filter.allows(event.kind, &event.shop_ids)
                        {
                            self.cursor = event.id;
                            let shown = self.filter.shown(&event.shop_ids, &event.json);
                            self.queued.push_back(
                                SseEvent::default()
                                    .id(event.id.to_string())
                                    .event(event.kind.as_str())
                                    .data(shown),
                            );
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.done = true;
                        self.queued.push_back(cutoff(self.cursor));
                    }
                    Err(broadcast::error::RecvError::Closed) => self.done = true,
                },
            }
        }
    }

    /// Ends the stream with a `revoked` event if its caller lost the right to it.
    async fn recheck(&mut self) {
        self.next_check = tokio::time::Instant::now() + RECHECK_EVERY;
        if let Some(reason) = self.lost().await {
            self.done = true;
            self.queued.clear();
            self.queued.push_back(revoked(self.cursor, reason));
        }
    }

    /// What the caller lost, if anything: its sign-in, its role, or a shop it follows.
    async fn lost(&self) -> Option<&'static str> {
        let state = &self.state;
        let now = match state
            .auth
            .recheck(&state.db, &self.caller, ROLE_FRESH_FOR)
            .await
        {
            Ok(now) => now,
            Err(lost) => return lost.map(crate::auth::Lost::as_str),
        };
        if now.role != self.caller.role {
            return Some("role_changed");
        }
        match (state.access(&now).scope(), &self.filter.shops) {
            (Err(_), _) => Some("removed_from_shop"),
            (Ok(crate::shops::Scope::All), _) => None,
            (Ok(crate::shops::Scope::Shops(_)), None) => Some("role_changed"),
            (Ok(crate::shops::Scope::Shops(now)), Some(followed)) => {
                let kept = followed.iter().all(|shop| now.contains(shop));
                (!kept).then_some("removed_from_shop")
            }
        }
    }

    /// Reads the next page of the table into the queue; answers whether it was the last
    /// one for now. A failing read ends the stream (the client resumes).
    async fn read_page(&mut self) -> Option<bool> {
        match read::page(&self.state.db, self.cursor, &self.filter, CATCH_UP_PAGE).await {
            Ok(page) => {
                let caught_up = (page.len() as i64) < CATCH_UP_PAGE;
                for event in page {
                    self.cursor = event.id;
                    let json = event.to_json();
                    self.queued.push_back(
                        SseEvent::default()
                            .id(event.id.to_string())
                            .event(event.kind.as_str())
                            .data(self.filter.shown(&event.shop_ids, &json)),
                    );
                }
                Some(caught_up)
            }
            Err(error) => {
                tracing::warn!(%error, "an event stream could not read the outbox; ending it");
                self.done = true;
                None
            }
        }
    }
}

/// The last event of a stream whose caller lost the right to it.
fn revoked(cursor: i64, reason: &str) -> SseEvent {
    SseEvent::default()
        .id(cursor.to_string())
        .event("revoked")
        .data(
            json!({
                "type": "revoked",
                "reason": reason,
                "message": "the caller may no longer follow these events; sign in again to resume",
            })
            .to_string(),
        )
}

/// The last event of a stream that fell too far behind: where to resume from.
fn cutoff(cursor: i64) -> SseEvent {
    SseEvent::default().id(cursor.to_string()).event("cutoff").data(
        json!({
            "reason": "slow_consumer",
            "resume_after": cursor,
            "message": "this stream fell too far behind the newest events and was closed; reconnect with Last-Event-ID to resume",
        })
        .to_string(),
    )
}
