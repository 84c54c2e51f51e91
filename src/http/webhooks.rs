//! `/webhooks`: subscriptions to events, their deliveries, and retrying a failed one.
//! Admins subscribe to every event or to a shop's; a shop's owner to its own shop's.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::extract::{Json, List, Page, Path, Query};
use super::openapi::ErrorBody;
use crate::auth::{Identity, Role};
use crate::error::{AppError, Result};
use crate::events::parse_types;
use crate::events::webhooks::{self, Delivery, Retried, Subscription};
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::shops::ShopRole;

/// Subscriptions per shop (and for the platform) at most.
pub const MAX_PER_SHOP: i64 = 100;
const MIN_SECRET: usize = 16;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, remove))
        .routes(routes!(deliveries))
        .routes(routes!(retry))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub types: Vec<String>,
    /// Only this shop's events; null: every event.
    pub shop_id: Option<i64>,
    pub created_by: i64,
    pub created_at: DateTime<Utc>,
}

impl From<&Subscription> for Webhook {
    fn from(s: &Subscription) -> Self {
        Self {
            id: s.id,
            url: s.url.clone(),
            types: s.types.iter().map(|t| t.as_str().to_owned()).collect(),
            shop_id: s.shop_id,
            created_by: s.created_by,
            created_at: s.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
struct CreateWebhook {
    /// `http` or `https`, at most 2,048 characters.
    url: String,
    /// Event types to deliver (at least one).
    types: Vec<String>,
    /// 16 to 255 characters; the key of `Stockline-Signature`. Never shown again.
    secret: String,
    /// Only this shop's events (required for a shop owner).
    shop_id: Option<i64>,
}

/// May subscribe to, or manage, the events of `shop` (`None`: every event).
fn may_manage(state: &AppState, caller: &Identity, shop: Option<i64>) -> Result<()> {
    match shop {
        None => Ok(caller.require(Role::Admin)?),
        Some(shop) => Ok(state.access(caller).manage_shop(shop)?),
    }
}

/// A webhook's URL, parsed, and refused if it points inside (see [`webhooks::target`]).
async fn url(state: &AppState, value: &str) -> Result<String> {
    let invalid = || AppError::validation("url", "must be an http or https URL with a host");
    if value.len() > 2048 {
        return Err(AppError::validation(
            "url",
            "must have at most 2,048 characters",
        ));
    }
    let parsed = reqwest::Url::parse(value.trim()).map_err(|_| invalid())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid());
    }
    state
        .events
        .webhooks
        .targets()
        .check(&parsed)
        .await
        .map_err(|refused| {
            if let webhooks::target::Refused::Internal { host, ip } = &refused {
                tracing::info!(%host, %ip, "a webhook to an internal address was refused");
            }
            AppError::validation("url", refused.to_string())
        })?;
    Ok(parsed.to_string())
}

#[utoipa::path(post, path = "/webhooks", tag = "events", security(("bearer" = [])), request_body = CreateWebhook, responses((status = 201, body = Webhook), (status = 403, description = "Not an admin, nor the shop's owner", body = ErrorBody), (status = 404, description = "Unknown shop", body = ErrorBody), (status = 409, description = "The shop (or the platform) has 100 subscriptions already", body = ErrorBody), (status = 422, description = "A bad URL, type or secret; details name the field", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<CreateWebhook>,
) -> Result<(StatusCode, Json<Webhook>)> {
    if let Some(shop) = body.shop_id {
        state.shops.require(shop)?;
    }
    may_manage(&state, &caller, body.shop_id)?;
    let url = url(&state, &body.url).await?;
    let types = parse_types(body.types.iter().map(String::as_str))
        .map_err(|message| AppError::validation("types", message))?;
    if types.is_empty() {
        return Err(AppError::validation(
            "types",
            "must name at least one event type",
        ));
    }
    if !(MIN_SECRET..=255).contains(&body.secret.len()) {
        return Err(AppError::validation(
            "secret",
            format!("must have {MIN_SECRET} to 255 bytes"),
        ));
    }
    let subscription = Subscription {
        id: Uuid::now_v7(),
        url,
        types,
        secret: body.secret,
        shop_id: body.shop_id,
        created_by: caller.user_id,
        created_at: stockline_actors::types::now(),
    };
    if webhooks::insert(&state.db, &subscription, MAX_PER_SHOP)
        .await?
        .is_none()
    {
        return Err(AppError::conflict(format!(
            "at most {MAX_PER_SHOP} webhooks per shop (and for the platform); delete one first"
        )));
    }
    let shown = Webhook::from(&subscription);
    state.events.webhooks.run(subscription).await;
    Ok((StatusCode::CREATED, Json(shown)))
}

#[utoipa::path(get, path = "/webhooks", tag = "events", security(("bearer" = [])), params(("limit" = Option<i64>, Query, description = "At most 500, default 50"), ("offset" = Option<i64>, Query)), responses((status = 200, description = "`{items: [Webhook], total}`: every one for an admin, its shops' for a shop owner", body = Object), (status = 403, description = "Neither an admin nor a shop owner", body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(page): Query<Page>,
) -> Result<Json<List<Webhook>>> {
    let shops: Option<Vec<i64>> = match caller.role {
        Role::Admin => None,
        _ => {
            let owned: Vec<i64> = state
                .shops
                .of(caller.user_id)
                .into_iter()
                .filter(|(_, role)| *role == ShopRole::Owner)
                .map(|(shop, _)| shop)
                .collect();
            if owned.is_empty() {
                return Err(AppError::Forbidden);
            }
            Some(owned)
        }
    };
    let (items, total) =
        webhooks::list(&state.db, shops.as_deref(), page.limit()?, page.offset()?).await?;
    Ok(Json(List {
        items: items.iter().map(Webhook::from).collect(),
        total,
    }))
}

/// The subscription, if the caller may manage it.
async fn managed(state: &AppState, caller: &Identity, id: Uuid) -> Result<Subscription> {
    let subscription = webhooks::get(&state.db, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("webhook {id}")))?;
    may_manage(state, caller, subscription.shop_id)?;
    Ok(subscription)
}

#[utoipa::path(get, path = "/webhooks/{id}", tag = "events", security(("bearer" = [])), params(("id" = Uuid, Path)), responses((status = 200, body = Webhook), (status = 403, description = "Someone else's", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody)))]
async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Webhook>> {
    Ok(Json(Webhook::from(&managed(&state, &caller, id).await?)))
}

#[utoipa::path(delete, path = "/webhooks/{id}", tag = "events", security(("bearer" = [])), params(("id" = Uuid, Path)), responses((status = 204, description = "Deleted with its deliveries; nothing more is sent"), (status = 403, description = "Someone else's", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody)))]
async fn remove(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    managed(&state, &caller, id).await?;
    state.events.webhooks.stop(id).await;
    webhooks::remove(&state.db, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
struct DeliveriesQuery {
    /// `pending`, `delivered` or `failed` (default: all).
    status: Option<String>,
    /// At most 500, default 50.
    limit: Option<i64>,
    offset: Option<i64>,
}

#[utoipa::path(get, path = "/webhooks/{id}/deliveries", tag = "events", security(("bearer" = [])), params(("id" = Uuid, Path), DeliveriesQuery), responses((status = 200, description = "`{items: [{event_id, event_type, status, attempts, next_attempt_at, last_status_code, last_error, updated_at, attempt_log: [{attempt, at, status_code, error, duration_ms}]}], total}`, newest event first", body = Object), (status = 403, description = "Someone else's", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 422, description = "An unknown status", body = ErrorBody)))]
async fn deliveries(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
    Query(query): Query<DeliveriesQuery>,
) -> Result<Json<List<Delivery>>> {
    managed(&state, &caller, id).await?;
    let status = query.status.as_deref();
    if status.is_some_and(|s| !matches!(s, "pending" | "delivered" | "failed")) {
        return Err(AppError::validation(
            "status",
            "must be pending, delivered or failed",
        ));
    }
    let page = Page::new(query.limit, query.offset);
    let (items, total) =
        webhooks::deliveries(&state.db, id, status, page.limit()?, page.offset()?).await?;
    Ok(Json(List { items, total }))
}

#[utoipa::path(post, path = "/webhooks/{id}/deliveries/{event_id}/retry", tag = "events", security(("bearer" = [])), params(("id" = Uuid, Path), ("event_id" = i64, Path)), responses((status = 202, description = "The failed delivery is pending again, due now, with a fresh retry period", body = Object), (status = 403, description = "Someone else's", body = ErrorBody), (status = 404, description = "Unknown webhook or delivery", body = ErrorBody), (status = 409, description = "The delivery has not failed (it is pending or delivered)", body = ErrorBody)))]
async fn retry(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, event_id)): Path<(Uuid, i64)>,
) -> Result<(StatusCode, Json<Delivery>)> {
    managed(&state, &caller, id).await?;
    match webhooks::retry_failed(&state.db, id, event_id).await? {
        Retried::Pending(delivery) => {
            state.events.webhooks.retry(id, event_id).await;
            Ok((StatusCode::ACCEPTED, Json(delivery)))
        }
        Retried::NotFailed(status) => Err(AppError::conflict(format!(
            "the delivery is {status}; only a failed one can be retried"
        ))),
        Retried::NotFound => Err(AppError::NotFound(format!("delivery of event {event_id}"))),
    }
}
