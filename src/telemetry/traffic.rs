//! The console's live view of the traffic: requests, server errors and latency per second
//! over the last minute, kept in a ring of one-second slots of atomics, so that counting a
//! request takes no lock.
//!
//! It is for eyes: at the turn of a slot to a new second a count can be lost to a race.
//! Prometheus' counters and histograms (`http::metrics::track`) are the exact record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

/// Seconds kept (a power of two over the minute shown, so a slot is not reused while read).
const SLOTS: usize = 64;
/// Seconds the series shows.
const SERIES: u64 = 60;
/// Seconds the rates and quantiles are taken over.
const WINDOW: u64 = 10;
/// Latency buckets: the first holds up to `SMALLEST_US`, each next one reaches
/// 2^(1/4) further (about 19%: a quantile is off by at most that), the last holds the rest
/// (above about 11 s).
const BUCKETS: usize = 72;
const SMALLEST_US: f64 = 50.0;
const PER_DOUBLING: f64 = 4.0;

struct Second {
    /// The second (since start, from 1) the counts are of; 0 while never used.
    second: AtomicU64,
    requests: AtomicU64,
    server_errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl Second {
    fn new() -> Self {
        Self {
            second: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn clear(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.server_errors.store(0, Ordering::Relaxed);
        for bucket in &self.latency {
            bucket.store(0, Ordering::Relaxed);
        }
    }
}

/// Requests answered per second over the last minute, with their latency.
pub struct Traffic {
    started: Instant,
    slots: Box<[Second]>,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            slots: (0..SLOTS).map(|_| Second::new()).collect(),
        }
    }
}

/// What the console's overview shows of the traffic.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrafficSummary {
    /// Requests answered per second over the last 10 whole seconds.
    pub requests_per_second: f64,
    /// Of those, answers with a 5xx status, per second.
    pub server_errors_per_second: f64,
    /// Latency quantiles over the same 10 seconds, in milliseconds (within 19%); null
    /// without requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests answered in each of the last 60 whole seconds, oldest first.
    pub series: Vec<u64>,
}

impl Traffic {
    /// Counts one answered request.
    pub fn record(&self, elapsed: Duration, server_error: bool) {
        let second = self.second_now();
        let slot = &self.slots[second as usize % SLOTS];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.clear();
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if server_error {
            slot.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// The last minute, up to the second before this one (the current one is not whole).
    pub fn summary(&self) -> TrafficSummary {
        let now = self.second_now();
        let whole = |second: u64| {
            let slot = &self.slots[second as usize % SLOTS];
            (second >= 1 && slot.second.load(Ordering::Acquire) == second).then_some(slot)
        };
        // Right after start, the seconds before it (as 0) fill the minute.
        let series = (now as i64 - SERIES as i64..now as i64)
            .map(|second| {
                u64::try_from(second)
                    .ok()
                    .and_then(whole)
                    .map_or(0, |slot| slot.requests.load(Ordering::Relaxed))
            })
            .collect();
        let (mut requests, mut errors, mut latency) = (0, 0, [0u64; BUCKETS]);
        for slot in (now.saturating_sub(WINDOW)..now).filter_map(whole) {
            requests += slot.requests.load(Ordering::Relaxed);
            errors += slot.server_errors.load(Ordering::Relaxed);
            for (sum, bucket) in latency.iter_mut().zip(&slot.latency) {
                *sum += bucket.load(Ordering::Relaxed);
            }
        }
        TrafficSummary {
            requests_per_second: requests as f64 / WINDOW as f64,
            server_errors_per_second: errors as f64 / WINDOW as f64,
            p50_ms: quantile(&latency, 0.5),
            p99_ms: quantile(&latency, 0.99),
            series,
        }
    }

    fn second_now(&self) -> u64 {
        self.started.elapsed().as_secs() + 1
    }
}

fn bucket(elapsed: Duration) -> usize {
    let us = elapsed.as_secs_f64() * 1e6;
    if us <= SMALLEST_US {
        return 0;
    }
    ((PER_DOUBLING * (us / SMALLEST_US).log2()).ceil() as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `index`, in milliseconds.
fn upper_ms(index: usize) -> f64 {
    SMALLEST_US * (index as f64 / PER_DOUBLING).exp2() / 1e3
}

fn quantile(latency: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = latency.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    latency.iter().enumerate().find_map(|(index, count)| {
        seen += count;
        (seen >= rank).then(|| upper_ms(index))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_the_latency_within_a_fifth() {
        for us in [1u64, 50, 51, 120, 1_000, 4_999, 250_000, 3_000_000] {
            let index = bucket(Duration::from_micros(us));
            let upper = upper_ms(index) * 1e3;
            assert!(
                upper >= us as f64,
                "{us} µs above its bucket's bound {upper}"
            );
            if us > 50 {
                assert!(upper < us as f64 * 1.2, "{us} µs: bound {upper} too loose");
            }
        }
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
    }

    #[test]
    fn quantiles_come_from_the_counts() {
        let mut latency = [0u64; BUCKETS];
        latency[bucket(Duration::from_millis(1))] = 98;
        latency[bucket(Duration::from_millis(40))] = 2;
        let p50 = quantile(&latency, 0.5).unwrap();
        let p99 = quantile(&latency, 0.99).unwrap();
        assert!((1.0..1.2).contains(&p50), "p50 {p50}");
        assert!((40.0..48.0).contains(&p99), "p99 {p99}");
        assert_eq!(quantile(&[0; BUCKETS], 0.5), None);
    }

    #[test]
    fn the_current_second_is_not_counted_until_it_is_whole() {
        let traffic = Traffic::default();
        for _ in 0..30 {
            traffic.record(Duration::from_millis(2), false);
        }
        traffic.record(Duration::from_millis(2), true);
        let now = traffic.summary();
        assert_eq!(now.requests_per_second, 0.0);
        assert_eq!(now.series.len(), 60);
        // Pretend a second went by: the counts are those of a whole second now.
        let traffic = Traffic {
            started: traffic.started - Duration::from_secs(1),
            slots: traffic.slots,
        };
        let later = traffic.summary();
        assert_eq!(later.requests_per_second, 3.1);
        assert_eq!(later.server_errors_per_second, 0.1);
        assert_eq!(*later.series.last().unwrap(), 31);
        assert_eq!(later.series.iter().sum::<u64>(), 31);
        assert!((2.0..2.4).contains(&later.p99_ms.unwrap()));
    }

    #[test]
    fn a_slot_is_cleared_when_its_second_comes_round_again() {
        let mut traffic = Traffic::default();
        traffic.record(Duration::from_millis(1), false);
        traffic.started -= Duration::from_secs(SLOTS as u64);
        traffic.record(Duration::from_millis(1), false);
        traffic.started -= Duration::from_secs(1);
        let summary = traffic.summary();
        assert_eq!(summary.series.iter().sum::<u64>(), 1);
    }
}
