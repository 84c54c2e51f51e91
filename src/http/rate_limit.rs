//! Rate limiting of login and register per client address (governor's keyed GCRA):
//! password guessing and sign-up floods get 429 `rate_limited` with `Retry-After`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::AppError;
use crate::http::AppState;

/// The middleware: lets the request through or answers 429.
pub async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let Some(client) = client else {
        return next.run(request).await;
    };
    match state.auth.limiter.check(client) {
        Ok(()) => next.run(request).await,
        Err(wait) => AppError::RateLimited {
            retry_after_secs: wait.as_secs().max(1),
        }
        .into_response(),
    }
}
