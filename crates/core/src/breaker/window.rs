//! The rolling window of (calls, failures): a ring of buckets, each one atomic word tagged
//! with the epoch it counts, so a stale bucket is ignored when read and restarted when written,
//! without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets are `epoch:32 | calls:16 | failures:16`.
///
/// The epoch is `now / bucket_width`, kept modulo 2³² (13 years of 100 ms buckets). A bucket
/// that reaches 65 535 calls halves both counts, keeping its failure share.
#[derive(Debug)]
pub(super) struct Window {
    buckets: Box<[AtomicU64]>,
    bucket_nanos: u64,
}

const COUNT_MAX: u64 = 0xffff;

fn pack(epoch: u32, calls: u64, failures: u64) -> u64 {
    (u64::from(epoch) << 32) | (calls.min(COUNT_MAX) << 16) | failures.min(COUNT_MAX)
}

fn unpack(bits: u64) -> (u32, u64, u64) {
    (
        (bits >> 32) as u32,
        (bits >> 16) & COUNT_MAX,
        bits & COUNT_MAX,
    )
}

impl Window {
    /// A window of `window_nanos` split into `buckets` buckets (both at least 1).
    pub fn new(window_nanos: u64, buckets: u32) -> Self {
        let n = buckets.max(1);
        Window {
            buckets: (0..n).map(|_| AtomicU64::new(0)).collect(),
            bucket_nanos: (window_nanos / u64::from(n)).max(1),
        }
    }

    fn epoch(&self, now: u64) -> u64 {
        now / self.bucket_nanos
    }

    /// Counts one call at `now`.
    pub fn add(&self, now: u64, failed: bool) {
        let epoch = self.epoch(now);
        let tag = epoch as u32;
        let index = (epoch % self.buckets.len() as u64) as usize;
        let Some(bucket) = self.buckets.get(index) else {
            return;
        };
        let failure = u64::from(failed);
        let _ = bucket.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
            let (seen, calls, failures) = unpack(bits);
            Some(if seen != tag {
                pack(tag, 1, failure)
            } else if calls >= COUNT_MAX {
                pack(tag, calls / 2 + 1, failures / 2 + failure)
            } else {
                pack(tag, calls + 1, failures + failure)
            })
        });
    }

    /// (calls, failures) in the buckets of the last `buckets` epochs up to `now`: the current,
    /// partly filled bucket and the full ones before it.
    pub fn sum(&self, now: u64) -> (u64, u64) {
        let current = self.epoch(now) as u32;
        let span = self.buckets.len() as u32;
        self.buckets
            .iter()
            .fold((0, 0), |(calls, failures), bucket| {
                let (tag, c, f) = unpack(bucket.load(Ordering::Acquire));
                if current.wrapping_sub(tag) < span {
                    (calls + c, failures + f)
                } else {
                    (calls, failures)
                }
            })
    }

    /// Forgets everything.
    pub fn reset(&self) {
        for bucket in self.buckets.iter() {
            bucket.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn forgets_one_bucket_at_a_time() {
        let window = Window::new(10 * S, 10);
        window.add(0, true);
        window.add(S / 2, false);
        window.add(5 * S, true);
        assert_eq!(window.sum(5 * S), (3, 2));
        assert_eq!(window.sum(10 * S - 1), (3, 2));
        // At 10 s the bucket of [0 s, 1 s) is eleven epochs old: gone.
        assert_eq!(window.sum(10 * S), (1, 1));
        // The same ring slot, written a lap later, restarts instead of adding.
        window.add(10 * S, false);
        assert_eq!(window.sum(10 * S), (2, 1));
        assert_eq!(window.sum(15 * S), (1, 0));
        window.reset();
        assert_eq!(window.sum(15 * S), (0, 0));
    }

    #[test]
    fn a_full_bucket_keeps_its_share() {
        let window = Window::new(10 * S, 10);
        for i in 0..70_000u64 {
            window.add(0, i % 2 == 0);
        }
        let (calls, failures) = window.sum(0);
        assert!(calls > 30_000 && calls <= COUNT_MAX, "{calls}");
        assert!(failures.abs_diff(calls / 2) <= 2, "{calls} {failures}");
    }
}
