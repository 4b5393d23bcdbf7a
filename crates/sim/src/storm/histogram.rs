//! A bounded latency histogram: log-linear buckets in microseconds (32 per power of two, so a
//! percentile is within ~3 % of the true value), a fixed array whatever the number of samples.

use std::time::Duration;

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// The largest value kept apart, in microseconds (about 67 s); longer latencies count here.
const MAX_MICROS: u64 = (1 << 26) - 1;
/// Buckets needed to cover `0..=MAX_MICROS`.
const BUCKETS: usize = (SUB + (26 - SUB_BITS as u64) * SUB) as usize;

/// Latencies in a fixed number of buckets (~5.6 KiB), with their exact count, minimum and maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    min: u64,
    max: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl LatencyHistogram {
    /// Count one latency; anything above ~67 s counts as ~67 s.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .min(MAX_MICROS);
        self.counts[index(micros)] += 1;
        self.total += 1;
        self.min = self.min.min(micros);
        self.max = self.max.max(micros);
    }

    /// Add every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// How many latencies were recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The latency at quantile `q` (0–1): the highest value of the bucket holding the sample of
    /// rank ⌈q·n⌉, clamped to the recorded minimum and maximum; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // `as` saturates; the rank is at least 1 and at most `total`.
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let value = highest(i).clamp(self.min, self.max);
                return Some(Duration::from_micros(value));
            }
        }
        Some(Duration::from_micros(self.max))
    }
}

/// The bucket of a value in microseconds (≤ `MAX_MICROS`).
fn index(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let magnitude = 63 - u64::from(micros.leading_zeros()); // ≥ SUB_BITS
    let shift = magnitude - u64::from(SUB_BITS);
    let sub = (micros >> shift) - SUB; // 0..SUB
    (SUB + shift * SUB + sub) as usize
}

/// The highest value that falls in bucket `i`.
fn highest(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = (i - SUB) / SUB;
    let sub = (i - SUB) % SUB;
    ((SUB + sub + 1) << shift) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = LatencyHistogram::default();
        for v in 1..=20 {
            h.record(us(v));
        }
        assert_eq!(h.len(), 20);
        assert_eq!(h.quantile(0.5), Some(us(10)));
        assert_eq!(h.quantile(0.95), Some(us(19)));
        assert_eq!(h.quantile(1.0), Some(us(20)));
        assert_eq!(h.quantile(0.0), Some(us(1)));
    }

    #[test]
    fn every_bucket_boundary_round_trips() {
        for i in 0..BUCKETS {
            let top = highest(i);
            assert_eq!(index(top), i, "top of bucket {i}");
            if i + 1 < BUCKETS {
                assert_eq!(index(top + 1), i + 1, "bottom of bucket {}", i + 1);
            }
        }
        assert_eq!(highest(BUCKETS - 1), MAX_MICROS);
    }

    #[test]
    fn percentiles_of_a_wide_spread_are_within_three_percent() {
        let mut h = LatencyHistogram::default();
        // 1 ms .. 10 s in 1 ms steps: p50 = 5 s, p99 = 9.9 s.
        for ms in 1..=10_000u64 {
            h.record(Duration::from_millis(ms));
        }
        let close = |got: Option<Duration>, want: f64| {
            let got = got.unwrap().as_secs_f64();
            assert!((got - want).abs() / want <= 0.032, "{got} vs {want}");
        };
        close(h.quantile(0.5), 5.0);
        close(h.quantile(0.99), 9.9);
        assert_eq!(h.quantile(1.0), Some(Duration::from_secs(10)));
    }

    #[test]
    fn a_slow_tail_shows_at_p99_not_p50() {
        let mut h = LatencyHistogram::default();
        for _ in 0..980 {
            h.record(Duration::from_millis(5));
        }
        for _ in 0..20 {
            h.record(Duration::from_millis(800));
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!(p50 >= Duration::from_millis(5) && p50 < Duration::from_micros(5_200));
        let p99 = h.quantile(0.99).unwrap();
        assert!(p99 >= Duration::from_millis(800) && p99 < Duration::from_millis(826));
    }

    #[test]
    fn empty_huge_and_merged() {
        let mut a = LatencyHistogram::default();
        assert!(a.is_empty());
        assert_eq!(a.quantile(0.99), None);
        a.record(Duration::MAX);
        assert_eq!(a.quantile(0.5), Some(us(MAX_MICROS)));
        let mut b = LatencyHistogram::default();
        b.record(us(3));
        b.merge(&a);
        assert_eq!(b.len(), 2);
        assert_eq!(b.quantile(0.5), Some(us(3)));
        assert_eq!(b.quantile(f64::NAN), Some(us(MAX_MICROS)));
    }
}
