//! Time series in 100 ms buckets turned into the figures the replay prints: load per one-second
//! window (sliding and tumbling) and the moment a rolling failure share crosses a threshold.

/// The width of a bucket, in milliseconds (the stand-in biller counts arrivals per 100 ms).
pub const BUCKET_MS: u64 = 100;
/// Buckets in one second.
pub const PER_SECOND: usize = 10;

/// The largest sum of `width` consecutive buckets, each window wholly inside `counts` and
/// stepping one bucket at a time; `None` when `counts` is shorter than one window.
pub fn max_window(counts: &[u64], width: usize) -> Option<u64> {
    if width == 0 || counts.len() < width {
        return None;
    }
    let mut sum: u64 = counts[..width].iter().sum();
    let mut max = sum;
    for i in width..counts.len() {
        sum = sum + counts[i] - counts[i - width];
        max = max.max(sum);
    }
    Some(max)
}

/// Sums of consecutive, non-overlapping runs of `width` buckets from the start; a last run
/// shorter than `width` is left out.
pub fn tumbling(counts: &[u64], width: usize) -> Vec<u64> {
    if width == 0 {
        return Vec::new();
    }
    counts
        .chunks_exact(width)
        .map(|run| run.iter().sum())
        .collect()
}

/// The rule a breaker opens by: at least `min_calls` calls in the last `width` buckets, of
/// which at least `threshold` (0–1) failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShareRule {
    /// The rolling window, in buckets.
    pub width: usize,
    /// Calls needed in the window.
    pub min_calls: u64,
    /// The failed share (0–1) that crosses.
    pub threshold: f64,
}

/// The first bucket, at or after `from`, at whose end the calls of the last `rule.width` buckets
/// satisfy `rule`; `ok[i]` and `failed[i]` are the calls that ended well and badly in bucket `i`.
pub fn first_crossing(ok: &[u64], failed: &[u64], from: usize, rule: ShareRule) -> Option<usize> {
    let len = ok.len().min(failed.len());
    if rule.width == 0 {
        return None;
    }
    (from..len).find(|&end| {
        let start = (end + 1).saturating_sub(rule.width);
        let bad: u64 = failed[start..=end].iter().sum();
        let all = bad + ok[start..=end].iter().sum::<u64>();
        all > 0 && all >= rule.min_calls && bad as f64 >= rule.threshold * all as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_windows_catch_a_burst_that_straddles_two_seconds() {
        // 100 in the last half of second one, 100 in the first half of second two.
        let mut counts = vec![0; 20];
        for c in &mut counts[5..15] {
            *c = 20;
        }
        assert_eq!(tumbling(&counts, PER_SECOND), vec![100, 100]);
        assert_eq!(max_window(&counts, PER_SECOND), Some(200));
    }

    #[test]
    fn windows_need_a_whole_second() {
        assert_eq!(max_window(&[5; 9], PER_SECOND), None);
        assert_eq!(max_window(&[5; 10], PER_SECOND), Some(50));
        assert_eq!(max_window(&[1, 2, 3], 0), None);
        assert_eq!(tumbling(&[1; 25], PER_SECOND), vec![10, 10]);
        assert_eq!(tumbling(&[1; 9], PER_SECOND), Vec::<u64>::new());
        assert_eq!(tumbling(&[1; 9], 0), Vec::<u64>::new());
    }

    #[test]
    fn steady_load_gives_the_same_sliding_and_tumbling_maximum() {
        let counts = vec![40; 50];
        assert_eq!(max_window(&counts, PER_SECOND), Some(400));
        assert!(tumbling(&counts, PER_SECOND).iter().all(|&w| w == 400));
    }

    const RULE: ShareRule = ShareRule {
        width: 10,
        min_calls: 20,
        threshold: 0.25,
    };

    #[test]
    fn the_share_crosses_when_enough_of_the_window_is_failing() {
        // 10 calls per bucket; from bucket 20 on, 3 of them fail (30 %).
        let ok: Vec<u64> = (0..40).map(|i| if i < 20 { 10 } else { 7 }).collect();
        let failed: Vec<u64> = (0..40).map(|i| if i < 20 { 0 } else { 3 }).collect();
        // After k failing buckets the share is 3k/100: it reaches 0.25 at k = 9 (27 %).
        assert_eq!(first_crossing(&ok, &failed, 0, RULE), Some(28));
        assert_eq!(first_crossing(&ok, &failed, 30, RULE), Some(30));
        let lenient = ShareRule {
            threshold: 0.5,
            ..RULE
        };
        assert_eq!(first_crossing(&ok, &failed, 0, lenient), None);
    }

    #[test]
    fn too_few_calls_never_cross() {
        let ok = vec![0; 30];
        let failed = vec![1; 30]; // 10 calls per window, all failing
        assert_eq!(first_crossing(&ok, &failed, 0, RULE), None);
        let few = ShareRule {
            min_calls: 10,
            ..RULE
        };
        assert_eq!(first_crossing(&ok, &failed, 0, few), Some(9));
        assert_eq!(first_crossing(&[], &[], 0, RULE), None);
        let zero_width = ShareRule { width: 0, ..RULE };
        assert_eq!(first_crossing(&ok, &failed, 0, zero_width), None);
    }
}
