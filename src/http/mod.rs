//! The axum edge: one file per resource, each with its own `router()`, merged here.

mod admin;
mod auth;
mod body;
pub mod caller;
mod carts;
mod cluster;
mod console;
mod events;
pub mod extract;
pub mod health;
mod keyed;
mod metrics;
pub mod openapi;
mod orders;
mod products;
pub mod rate_limit;
mod refusals;
mod reservations;
pub mod serve;
mod shard_map;
mod shops;
mod stock;
mod transfers;
pub mod users;
mod warehouses;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::error::AppError;
pub use crate::idempotency;
pub use crate::state::{AppParts, AppState, StoreState};

pub use crate::telemetry::prometheus::recorder as metrics_recorder;
pub use crate::telemetry::requests::RequestMetrics;
pub use admin::{Actor, Actors, DeadLetter, LowStock, Persistence};
pub use auth::{email as auth_email, password_ok as auth_password_ok};
pub use cluster::{ClusterMode, ClusterView, NodeView, ShardView, listen as listen_to_cluster};
pub use extract::List;
pub use products::Product;
pub use shard_map::{ShardMap, ShardOwner};
pub use shops::{Member, Shop};
pub use stock::Movement;
pub use warehouses::Warehouse;
pub use webhooks::Webhook;

/// Bodies over this are refused with 413.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// The whole HTTP surface, and `GET /openapi.json` describing it.
pub fn router(state: AppState) -> Router {
    let (router, mut document) = documented(&state).split_for_parts();
    openapi::declare_common_answers(&mut document);
    let json: Arc<str> = document.to_pretty_json().unwrap_or_default().into();
    let router = router
        .fallback(|| async { AppError::NotFound("path".into()) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(serde_json::json!({ "error": {
                    "code": "method_not_allowed",
                    "message": "this path does not take that method",
                    "details": {},
                }})),
            )
        });
    let router = match state.config.metrics {
        true => router.layer(axum::middleware::from_fn_with_state(
            state.requests.clone(),
            metrics::track,
        )),
        false => router,
    };
    // Around the whole router, not each route: `Router::layer` wraps every route apart,
    // and each layer so applied costs every request a boxed service and a boxed future.
    //
    // Every request gets an id: the client's `x-request-id` if it is a sane one (1 to 128
    // visible ASCII characters), else a new UUID. It is echoed in the answer's
    // `x-request-id` and is a field (`request_id`) of the span every log line of the
    // request is written in (so JSON logs carry it).
    let whole = tower::ServiceBuilder::new()
        .layer(axum::middleware::map_request(drop_insane_request_id))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |request: &axum::extract::Request| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    // At the error level so that it exists whenever any line of the request
                    // is written, whatever the filter (a span's level only decides that).
                    tracing::error_span!("request", method = %request.method(), path = request.uri().path(), request_id = id)
                },
            ),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::Extension(Document(json)))
        .service(router.with_state(state));
    Router::new().fallback_service(whole)
}

/// What every request passes before its route, in this order: the bounds on its headers,
/// its body read whole (`body`), and in cluster mode the node that serves it
/// (`cluster::edge`). One middleware rather than three: each costs every request a boxed
/// service and a boxed future.
async fn edge(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(error) = within_header_bounds(request.headers()) {
        return error.into_response();
    }
    match body::read_body(&state, request).await {
        Ok(request) => cluster::edge(state, request, next).await,
        Err(refused) => refused,
    }
}

/// A client's `x-request-id` that is empty, too long or not visible ASCII is replaced.
async fn drop_insane_request_id(mut request: axum::extract::Request) -> axum::extract::Request {
    let sane = request.headers().get("x-request-id").is_none_or(|id| {
        (1..=128).contains(&id.len()) && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
    });
    if !sane {
        request.headers_mut().remove("x-request-id");
    }
    request
}

/// Every route, registered together with its documentation.
fn documented(state: &AppState) -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::new()
        .merge(auth::router(state))
        .merge(users::router())
        .merge(products::router())
        .merge(warehouses::router())
        .merge(stock::router())
        .merge(reservations::router())
        .merge(orders::router())
        .merge(transfers::router())
        .merge(shops::router())
        .merge(carts::router())
        .merge(events::router())
        .merge(webhooks::router())
        .merge(admin::router())
        .merge(cluster::router())
        .merge(shard_map::router());
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api/v1", api)
        .merge(health::router())
        .merge(console::router())
        .merge(metrics::metrics_router())
        .routes(utoipa_axum::routes!(openapi_json))
}

/// The rendered document, handed to its handler.
#[derive(Clone)]
struct Document(Arc<str>);

#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "This document", body = Object)))]
async fn openapi_json(
    axum::Extension(document): axum::Extension<Document>,
) -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.0.to_string(),
    )
}

/// The OpenAPI document (for tools that want it without a running server).
pub fn openapi_document(state: &AppState) -> utoipa::openapi::OpenApi {
    let mut document = documented(state).into_openapi();
    openapi::declare_common_answers(&mut document);
    document
}

/// Request headers at most, by count and by total size. The connection layer lets more
/// through, so that these are answered here with the contract's error body.
const MAX_HEADERS: usize = 100;
const MAX_HEADER_BYTES: usize = 32 * 1024;

fn within_header_bounds(headers: &axum::http::HeaderMap) -> Result<(), AppError> {
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Err(AppError::HeadersTooLarge);
    }
    Ok(())
}
