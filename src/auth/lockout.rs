//! Per-account lockout against password guessing: the limit per client address does not
//! stop a guesser with many addresses, so failures are also counted per account.
//!
//! After [`FREE_FAILURES`] failed logins in a row, an account refuses further attempts
//! (429 `rate_limited`, with the honest `Retry-After`) for one second, then two, four, ...
//! up to [`MAX_LOCK`], whatever address they come from; a successful login clears it. A
//! locked account's password is not even checked, so guessing costs the server nothing.
//! Only existing accounts are tracked (unknown logins have nothing to protect), so the map
//! is bounded by the number of users; entries quiet for [`FORGET_AFTER`] are swept.

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Failures in a row allowed before the first lock.
pub const FREE_FAILURES: u32 = 5;
/// The longest lock.
pub const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// An account with no failure for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

struct Failures {
    in_a_row: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

/// Failed logins by user id.
#[derive(Default)]
pub struct Lockout {
    accounts: DashMap<i64, Failures>,
}

impl Lockout {
    /// How long `user` must still wait before an attempt is taken, if locked.
    pub fn locked_for(&self, user: i64) -> Option<Duration> {
        let now = Instant::now();
        self.accounts
            .get(&user)?
            .locked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Counts a failed attempt; answers the lock it starts, if any.
    pub fn failed(&self, user: i64) -> Option<Duration> {
        let now = Instant::now();
        let mut entry = self.accounts.entry(user).or_insert(Failures {
            in_a_row: 0,
            locked_until: None,
            last: now,
        });
        entry.in_a_row += 1;
        entry.last = now;
        let over = entry.in_a_row.checked_sub(FREE_FAILURES)?;
        let lock = Duration::from_secs(1u64 << over.min(20)).min(MAX_LOCK);
        entry.locked_until = Some(now + lock);
        Some(lock)
    }

    /// A successful login clears the account's failures.
    pub fn succeeded(&self, user: i64) {
        self.accounts.remove(&user);
    }

    /// Forgets accounts with no recent failure and no lock in force.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.accounts.retain(|_, f| {
            f.locked_until.is_some_and(|until| until > now) || now - f.last < FORGET_AFTER
        });
    }

    /// Accounts tracked now.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_starts_after_the_free_failures_and_doubles_up_to_the_maximum() {
        let lockout = Lockout::default();
        for _ in 0..FREE_FAILURES - 1 {
            assert_eq!(lockout.failed(7), None);
        }
        assert_eq!(lockout.failed(7), Some(Duration::from_secs(1)));
        assert_eq!(lockout.failed(7), Some(Duration::from_secs(2)));
        assert_eq!(lockout.failed(7), Some(Duration::from_secs(4)));
        assert!(
            lockout
                .locked_for(7)
                .is_some_and(|d| d <= Duration::from_secs(4))
        );
        assert_eq!(
            lockout.locked_for(8),
            None,
            "other accounts are not touched"
        );
        for _ in 0..40 {
            lockout.failed(7);
        }
        assert_eq!(lockout.failed(7), Some(MAX_LOCK));
        lockout.succeeded(7);
        assert_eq!(lockout.locked_for(7), None);
        assert!(lockout.is_empty());
    }
}
