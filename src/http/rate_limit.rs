//! Rate limiting of login and register per client address (governor's keyed GCRA):
//! password guessing and sign-up floods get 429 `rate_limited` with `Retry-After`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::AppError;
use crate::http::AppState;

/// Attempts per client address.
pub struct AuthLimiter(DefaultKeyedRateLimiter<IpAddr>);

impl AuthLimiter {
    /// `per_minute` attempts a minute, all of which may come at once.
    pub fn new(per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Self(RateLimiter::keyed(Quota::per_minute(per_minute)))
    }

    /// Forgets addresses that are back to a full allowance.
    pub fn sweep(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The middleware: lets the request through or answers 429.
pub async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let Some(client) = client else {
        return next.run(request).await;
    };
    match state.auth_limiter.0.check_key(&client) {
        Ok(()) => next.run(request).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            AppError::RateLimited {
                retry_after_secs: wait.as_secs().max(1),
            }
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_back_at_a_full_allowance_are_swept() {
        // One attempt a millisecond: a millisecond later every address is back at full.
        let limiter = AuthLimiter::new(60_000);
        for i in 0..1000u32 {
            let address = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(limiter.0.check_key(&address).is_ok());
        }
        assert_eq!(limiter.len(), 1000);
        std::thread::sleep(std::time::Duration::from_millis(20));
        limiter.sweep();
        assert!(limiter.is_empty(), "{} addresses left", limiter.len());
    }
}
