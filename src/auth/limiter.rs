//! Login and register attempts per client address (governor's keyed GCRA); the HTTP
//! middleware that answers 429 is `http::rate_limit`.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Attempts per client address.
pub struct AuthLimiter(DefaultKeyedRateLimiter<IpAddr>);

impl AuthLimiter {
    /// `per_minute` attempts a minute, all of which may come at once.
    pub fn new(per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Self(RateLimiter::keyed(Quota::per_minute(per_minute)))
    }

    /// Lets an attempt from `client` through, or says how long until the next is allowed.
    pub fn check(&self, client: IpAddr) -> Result<(), std::time::Duration> {
        self.0
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_back_at_a_full_allowance_are_swept() {
        // One attempt a millisecond: a millisecond later every address is back at full.
        let limiter = AuthLimiter::new(60_000);
        for i in 0..1000u32 {
            let address = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(limiter.check(address).is_ok());
        }
        assert_eq!(limiter.len(), 1000);
        std::thread::sleep(std::time::Duration::from_millis(20));
        limiter.sweep();
        assert!(limiter.is_empty(), "{} addresses left", limiter.len());
    }
}
