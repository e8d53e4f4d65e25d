//! Counters and histograms of the write path, read by metrics exporters.
//!
//! Lock-free (relaxed atomics): recording costs a few nanoseconds on the
//! writer thread and a reader sees each value whole, if not all of them at
//! the same instant, which is what a scrape needs.

use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed upper bounds (Prometheus style: each count is of
/// observations `<=` its bound; one more bucket counts the rest).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    /// Sum of observations, in millionths of their unit.
    sum_micros: AtomicU64,
}

/// Bounds for durations in seconds: 10 µs to 10 s.
pub const SECONDS_BOUNDS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bounds for counts of things (commands in a group commit): 1 to 4096.
pub const COUNT_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

impl Histogram {
    /// An empty histogram with these (increasing) upper bounds.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let i = self.bounds.partition_point(|b| *b < value);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let micros = (value.max(0.0) * 1e6) as u64;
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }

    /// The upper bounds.
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Cumulative counts per bound, then the total count (the `+Inf`
    /// bucket), and the sum of observations.
    pub fn read(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect();
        (
            cumulative,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// What the group-commit writer did, since it started.
#[derive(Debug)]
pub struct WriterStats {
    /// Commands per group commit.
    pub batch_commands: Histogram,
    /// Time of one storage write (the batch and, under `--fsync always`,
    /// its fsync), in seconds.
    pub commit_seconds: Histogram,
    /// Entries that became durable.
    pub entries: AtomicU64,
    /// Payload bytes of those entries.
    pub payload_bytes: AtomicU64,
    /// Storage writes that failed.
    pub failed_commits: AtomicU64,
}

impl Default for WriterStats {
    fn default() -> Self {
        WriterStats {
            batch_commands: Histogram::new(COUNT_BOUNDS),
            commit_seconds: Histogram::new(SECONDS_BOUNDS),
            entries: AtomicU64::new(0),
            payload_bytes: AtomicU64::new(0),
            failed_commits: AtomicU64::new(0),
        }
    }
}

/// What a store reports of itself, for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StorageStats {
    /// Bytes the store takes on disk, where it knows (embedded storage).
    pub disk_bytes: Option<u64>,
    /// Connections of a pool, where the store has one (PostgreSQL).
    pub pool: Option<PoolStats>,
}

/// A connection pool's use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Most connections.
    pub size: usize,
    /// Connections handed out now.
    pub in_use: usize,
    /// Open connections waiting in the pool.
    pub idle: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_its_bucket_cumulatively() {
        let h = Histogram::new(&[1.0, 2.0, 4.0]);
        for v in [0.5, 1.0, 1.5, 3.0, 9.0] {
            h.observe(v);
        }
        let (counts, sum) = h.read();
        // <=1: 0.5 and 1.0; <=2: +1.5; <=4: +3.0; +Inf: +9.0
        assert_eq!(counts, vec![2, 3, 4, 5]);
        assert!((sum - 15.0).abs() < 1e-6, "{sum}");
    }
}
