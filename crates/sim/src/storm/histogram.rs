//! Latency histograms for the reports: hdrhistogram's, in microseconds to three significant
//! figures, with the exact minimum and maximum beside it so that no reported figure lies outside
//! what was seen.

use std::time::Duration;

use hdrhistogram::Histogram;

/// The largest latency kept apart, in microseconds (about 67 s); longer ones count as this.
const MAX_MICROS: u64 = (1 << 26) - 1;
/// Significant figures kept: a percentile is within 0.1 % of the latency it stands for.
const SIGFIG: u8 = 3;

/// Latencies with their count, minimum and maximum. The counts (about 136 KiB at these bounds,
/// whatever the number of samples) are made by the first sample, so a tally that never records
/// costs nothing.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    micros: Option<Histogram<u64>>,
    min: u64,
    max: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            micros: None,
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
        if self.micros.is_none() {
            // hdrhistogram refuses only bounds that these constants are not (a lowest value of
            // 0, a highest below twice the lowest, more than 5 figures): this always makes one.
            self.micros = Histogram::new_with_bounds(1, MAX_MICROS, SIGFIG).ok();
        }
        if let Some(h) = &mut self.micros {
            h.saturating_record(micros);
            self.min = self.min.min(micros);
            self.max = self.max.max(micros);
        }
    }

    /// Add every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        let Some(theirs) = &other.micros else { return };
        match &mut self.micros {
            None => self.micros = Some(theirs.clone()),
            // `add` answers a `Result` for a histogram of other bounds; every one here has the
            // same, so recording the other's buckets, which cannot fail, adds the same counts.
            Some(mine) => {
                for bucket in theirs.iter_recorded() {
                    mine.saturating_record_n(bucket.value_iterated_to(), bucket.count_at_value());
                }
            }
        }
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// How many latencies were recorded.
    pub fn len(&self) -> u64 {
        self.micros.as_ref().map_or(0, Histogram::len)
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The latency at quantile `q` (0–1, NaN read as 1): the highest value equivalent to the
    /// sample of rank ⌈q·n⌉, clamped to the recorded minimum and maximum; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let h = self.micros.as_ref().filter(|h| !h.is_empty())?;
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        let value = h.value_at_quantile(q).clamp(self.min, self.max);
        Some(Duration::from_micros(value))
    }
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
    fn three_significant_figures_over_the_whole_range() {
        let mut h = LatencyHistogram::default();
        // 2,048 µs and up share buckets of 2 µs, 16,384 µs and up of 16 µs; each quantile is
        // the top of the bucket of the sample of its rank.
        for v in [2_049, 16_390, 1_000_000, 60_000_001] {
            h.record(us(v));
        }
        assert_eq!(h.quantile(0.25), Some(us(2_049)));
        assert_eq!(h.quantile(0.5), Some(us(16_399)));
        assert_eq!(h.quantile(0.75), Some(us(1_000_447)));
        assert_eq!(h.quantile(1.0), Some(us(60_000_001)));
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
        let mut c = LatencyHistogram::default();
        c.merge(&LatencyHistogram::default());
        assert!(c.is_empty());
        c.merge(&b);
        assert_eq!((c.len(), c.quantile(0.0)), (2, Some(us(3))));
    }
}
