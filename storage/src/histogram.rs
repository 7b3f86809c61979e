//! A lock-free histogram with fixed bucket bounds, for Prometheus: observing is a few
//! relaxed atomic adds, so the flusher, the event loops and the HA threads can record
//! on their hot paths.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bounds for durations, in seconds: 50 us to 10 s.
pub const SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Bounds for counts (records per fsync): 1 to 10,000.
pub const COUNTS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// How long each group commit's fsyncs took, and how many records each covered.
pub struct FlushTimings {
    pub fsync_seconds: Histogram,
    pub records_per_fsync: Histogram,
}

impl Default for FlushTimings {
    fn default() -> FlushTimings {
        FlushTimings {
            fsync_seconds: Histogram::new(SECONDS),
            records_per_fsync: Histogram::new(COUNTS),
        }
    }
}

pub struct Histogram {
    bounds: &'static [f64],
    /// `buckets[i]`: observations at most `bounds[i]` and above the bound before; the
    /// last one is the observations above every bound.
    buckets: Vec<AtomicU64>,
    /// Sum of the observations in millionths (microseconds for durations).
    sum_millionths: AtomicU64,
    count: AtomicU64,
}

/// A histogram as Prometheus wants it: cumulative counts by upper bound.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, observations at most it), ascending; `+Inf` is `count`.
    pub cumulative: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_millionths: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let value = if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        };
        let index = self.bounds.partition_point(|bound| *bound < value);
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_millionths
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let cumulative = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(bound, bucket)| {
                running += bucket.load(Ordering::Relaxed);
                (*bound, running)
            })
            .collect();
        let above = self
            .buckets
            .last()
            .map_or(0, |bucket| bucket.load(Ordering::Relaxed));
        HistogramSnapshot {
            cumulative,
            sum: self.sum_millionths.load(Ordering::Relaxed) as f64 / 1e6,
            // At least the buckets' total: `count` is added last, and a reader between
            // the adds must not see a bucket above `+Inf`.
            count: self.count.load(Ordering::Relaxed).max(running + above),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_add_up() {
        let histogram = Histogram::new(COUNTS);
        for value in [1.0, 1.0, 3.0, 10.0, 20000.0] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.cumulative[0], (1.0, 2));
        assert_eq!(snapshot.cumulative[2], (5.0, 3));
        assert_eq!(snapshot.cumulative[3], (10.0, 4));
        assert_eq!(snapshot.cumulative.last().unwrap().1, 4);
        assert_eq!(snapshot.count, 5);
        assert_eq!(snapshot.sum, 20015.0);
    }
}
