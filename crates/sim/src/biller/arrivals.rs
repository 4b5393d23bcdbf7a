//! Arrivals at the stand-in biller counted per 100 ms over the last 20 minutes, so a replay can
//! show the load that reached it in any one-second window. Bounded: a fixed ring of counters.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

use crate::clock::Clock;

/// Width of one bucket.
pub(crate) const BUCKET: Duration = Duration::from_millis(100);
const BUCKET_NANOS: u64 = 100_000_000;
/// Buckets kept: 20 minutes.
const KEPT: u64 = 12_000;

/// Arrivals per 100 ms bucket on the biller's clock, as [`crate::biller::Biller::arrivals`]
/// returns them: the buckets from the first arrival (or the last 20 minutes, whichever is
/// shorter) up to the bucket filling now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Arrivals {
    /// The width of one bucket (100 ms).
    pub bucket: Duration,
    /// The number of `counts[0]`'s bucket: it covers `[first × bucket, (first + 1) × bucket)`
    /// on the biller's clock (see [`Clock::now`]).
    pub first: u64,
    /// Arrivals per bucket, oldest first; the last entry is still filling.
    pub counts: Vec<u64>,
}

impl Arrivals {
    /// Arrivals in bucket number `bucket`; 0 outside the kept range.
    pub fn count(&self, bucket: u64) -> u64 {
        bucket
            .checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.counts.get(i).copied())
            .unwrap_or(0)
    }

    /// Arrivals in buckets `from..to`, one entry per bucket.
    pub fn range(&self, from: u64, to: u64) -> Vec<u64> {
        (from..to.max(from)).map(|b| self.count(b)).collect()
    }

    /// The number of the bucket holding clock time `nanos`.
    pub fn bucket_of(nanos: u64) -> u64 {
        nanos / BUCKET_NANOS
    }
}

/// The ring of counters behind [`Arrivals`].
#[derive(Debug)]
pub(crate) struct ArrivalLog {
    clock: Clock,
    ring: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    /// Indexed by bucket number modulo `KEPT`; allocated at the first arrival.
    counts: Vec<u32>,
    /// The first bucket still held, and the newest bucket `counts` is current up to.
    span: Option<(u64, u64)>,
}

impl ArrivalLog {
    pub(crate) fn new(clock: Clock) -> Self {
        ArrivalLog {
            clock,
            ring: Mutex::new(Ring {
                counts: Vec::new(),
                span: None,
            }),
        }
    }

    /// Count one arrival now.
    pub(crate) fn record(&self) {
        let bucket = self.clock.now().as_u64() / BUCKET_NANOS;
        let mut ring = self.lock();
        if ring.counts.is_empty() {
            ring.counts = vec![0; KEPT as usize];
        }
        let (_, newest) = ring.roll(bucket);
        // A reading taken on another thread may land a bucket late: count it where it belongs
        // while that bucket is still held.
        let bucket = bucket.min(newest);
        if let Some((oldest, _)) = ring.span {
            if bucket >= oldest {
                let slot = (bucket % KEPT) as usize;
                ring.counts[slot] = ring.counts[slot].saturating_add(1);
            }
        }
    }

    /// Every bucket held, up to the one filling now.
    pub(crate) fn snapshot(&self) -> Arrivals {
        let now = self.clock.now().as_u64() / BUCKET_NANOS;
        let mut ring = self.lock();
        if ring.span.is_none() {
            return Arrivals {
                bucket: BUCKET,
                first: now,
                counts: Vec::new(),
            };
        }
        let (oldest, newest) = ring.roll(now);
        let counts = (oldest..=newest)
            .map(|b| u64::from(ring.counts[(b % KEPT) as usize]))
            .collect();
        Arrivals {
            bucket: BUCKET,
            first: oldest,
            counts,
        }
    }

    /// Only ever left consistent, so a poisoned lock is still good.
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Ring {
    /// Move the newest bucket up to `to` (never back), zeroing the buckets passed over and
    /// dropping those older than `KEPT`; returns the span held. Only called once `counts` is
    /// allocated or `span` is set.
    fn roll(&mut self, to: u64) -> (u64, u64) {
        let (oldest, newest) = match self.span {
            None => (to, to),
            Some((oldest, newest)) if to > newest => {
                let passed = (to - newest).min(KEPT);
                for b in to + 1 - passed..=to {
                    self.counts[(b % KEPT) as usize] = 0;
                }
                (oldest.max((to + 1).saturating_sub(KEPT)), to)
            }
            Some(span) => span,
        };
        self.span = Some((oldest, newest));
        (oldest, newest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> (ArrivalLog, crate::clock::FakeClock) {
        let (clock, hand) = Clock::fake();
        (ArrivalLog::new(clock), hand)
    }

    #[test]
    fn counts_each_arrival_in_its_100ms_bucket() {
        let (log, hand) = log();
        assert!(log.snapshot().counts.is_empty());
        hand.advance(Duration::from_millis(250)); // bucket 2
        log.record();
        log.record();
        hand.advance(Duration::from_millis(100)); // bucket 3
        log.record();
        hand.advance(Duration::from_millis(300)); // bucket 6, nothing yet
        let a = log.snapshot();
        assert_eq!(a.first, 2);
        assert_eq!(a.counts, vec![2, 1, 0, 0, 0]);
        assert_eq!(a.count(2), 2);
        assert_eq!(a.count(1), 0);
        assert_eq!(a.count(99), 0);
        assert_eq!(a.range(1, 5), vec![0, 2, 1, 0]);
        assert_eq!(a.range(5, 1), Vec::<u64>::new());
        assert_eq!(Arrivals::bucket_of(650_000_000), 6);
    }

    #[test]
    fn keeps_twenty_minutes_and_no_more() {
        let (log, hand) = log();
        log.record();
        hand.advance(Duration::from_secs(600));
        log.record();
        hand.advance(Duration::from_secs(3600));
        log.record();
        let a = log.snapshot();
        assert_eq!(a.counts.len(), KEPT as usize);
        assert_eq!(
            a.counts.iter().sum::<u64>(),
            1,
            "only the newest arrival is still held"
        );
        assert_eq!(a.counts.last(), Some(&1));
        assert_eq!(a.first, 42_000 - KEPT + 1);
    }

    #[test]
    fn a_gap_longer_than_the_ring_leaves_no_stale_counts() {
        let (log, hand) = log();
        for _ in 0..5 {
            log.record();
        }
        hand.advance(BUCKET * (KEPT as u32));
        log.record();
        let a = log.snapshot();
        assert_eq!(a.counts.iter().sum::<u64>(), 1);
    }
}
