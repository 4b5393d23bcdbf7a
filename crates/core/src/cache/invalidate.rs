//! Per-account invalidation: a payment voids every cached answer about its account, on every
//! route and in every scope, in O(1) — by recording when, and checking that time on each hit,
//! instead of finding the entries.
//!
//! Records are keyed by a keyed 64-bit hash of the account. A collision here only voids another
//! account's answers too (one extra biller call), never serves a wrong one. The table is
//! bounded: records older than any answer could still be fresh are pruned, and if it still
//! overflows, a floor voiding everything fetched before now replaces them all.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::nanos::Nanos;

use super::answer::nanos;

/// How much longer than the longest freshness lifetime a record is kept: an answer in flight
/// when a record would be pruned may still arrive and must still be voided.
const GRACE: Duration = Duration::from_secs(60);

/// When each account was last invalidated.
#[derive(Debug)]
pub(super) struct Invalidations {
    seed: RandomState,
    records: DashMap<u64, Nanos>,
    /// Records in the table (kept beside the map: its own `len` locks every shard).
    len: AtomicUsize,
    ceiling: usize,
    /// Every answer fetched strictly before this (nanoseconds) is void.
    floor: AtomicU64,
    /// The longest freshness lifetime any stored answer had (nanoseconds).
    horizon: AtomicU64,
}

impl Invalidations {
    /// A table of at most `ceiling` records (at least 2).
    pub(super) fn new(ceiling: usize) -> Self {
        Invalidations {
            seed: RandomState::new(),
            records: DashMap::new(),
            len: AtomicUsize::new(0),
            ceiling: ceiling.max(2),
            floor: AtomicU64::new(0),
            horizon: AtomicU64::new(0),
        }
    }

    /// Voids every answer about `account` fetched at or before `now`.
    pub(super) fn invalidate(&self, account: &str, now: Nanos) {
        if self.len.load(Ordering::Relaxed) >= self.ceiling {
            self.make_room(now);
        }
        let hash = self.seed.hash_one(account.as_bytes());
        // Counted under the shard's lock, so a concurrent prune never counts it out first.
        self.records
            .entry(hash)
            .and_modify(|at| *at = (*at).max(now))
            .or_insert_with(|| {
                self.len.fetch_add(1, Ordering::Relaxed);
                now
            });
    }

    /// Whether an answer about `account` fetched at `fetched_at` has been voided.
    #[inline]
    pub(super) fn voids(&self, account: &str, fetched_at: Nanos) -> bool {
        if fetched_at.as_u64() < self.floor.load(Ordering::Acquire) {
            return true;
        }
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let hash = self.seed.hash_one(account.as_bytes());
        self.records.get(&hash).is_some_and(|at| *at >= fetched_at)
    }

    /// Notes that an answer may stay fresh for `lifetime`, so records are kept that long.
    pub(super) fn note_lifetime(&self, lifetime: Duration) {
        self.horizon
            .fetch_max(nanos(lifetime).as_u64(), Ordering::Relaxed);
    }

    /// Drops the records no answer could still need (older than the longest lifetime plus a
    /// grace) and raises the floor to cover them. O(records); the request path never calls it
    /// except when the table is full.
    pub(super) fn prune(&self, now: Nanos) {
        let keep = nanos(GRACE)
            .as_u64()
            .saturating_add(self.horizon.load(Ordering::Relaxed));
        let cutoff = now.as_u64().saturating_sub(keep);
        if cutoff == 0 {
            return;
        }
        // The floor first: a record pruned below is then still in force through it.
        self.floor.fetch_max(cutoff, Ordering::AcqRel);
        let mut removed = 0;
        self.records.retain(|_, at| {
            let keep = at.as_u64() >= cutoff;
            removed += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(removed, Ordering::Relaxed);
    }

    /// Records in the table.
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Prunes; if that leaves the table over half full, voids everything fetched up to `now` by
    /// the floor and empties it. Either way the next full scan is at least `ceiling / 2`
    /// invalidations away, so the cost per invalidation stays O(1) on average.
    fn make_room(&self, now: Nanos) {
        self.prune(now);
        if self.len.load(Ordering::Relaxed) < self.ceiling / 2 {
            return;
        }
        let past_now = now.as_u64().saturating_add(1);
        self.floor.fetch_max(past_now, Ordering::AcqRel);
        let mut removed = 0;
        self.records.retain(|_, _| {
            removed += 1;
            false
        });
        self.len.fetch_sub(removed, Ordering::Relaxed);
        tracing::warn!(
            ceiling = self.ceiling,
            "cache invalidation table full: every cached answer fetched until now is void"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Nanos {
        nanos(Duration::from_secs(secs))
    }

    #[test]
    fn voids_answers_fetched_at_or_before_the_invalidation_only() {
        let table = Invalidations::new(10);
        assert!(!table.voids("A", at(0)));
        table.invalidate("A", at(5));
        assert!(table.voids("A", at(4)));
        assert!(table.voids("A", at(5)));
        assert!(!table.voids("A", at(6)));
        assert!(!table.voids("B", at(4)));
        // A later payment moves the record forward, an earlier reading never back.
        table.invalidate("A", at(9));
        table.invalidate("A", at(7));
        assert!(table.voids("A", at(8)));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn pruning_keeps_what_a_fresh_answer_could_need() {
        let table = Invalidations::new(100);
        table.note_lifetime(Duration::from_secs(60));
        table.invalidate("old", at(10));
        table.invalidate("new", at(200));
        // At 200 s the cutoff is 200 - 60 - 60 = 80: "old" goes, its effect kept by the floor.
        table.prune(at(200));
        assert_eq!(table.len(), 1);
        assert!(table.voids("old", at(10)));
        assert!(table.voids("new", at(150)));
        assert!(!table.voids("other", at(100)));
    }

    #[test]
    fn stays_bounded_under_a_flood_of_payments() {
        let table = Invalidations::new(8);
        table.note_lifetime(Duration::from_secs(60));
        for i in 0..1000u64 {
            table.invalidate(&format!("ACC-{i}"), at(1000 + i / 100));
            assert!(table.len() <= 8, "len {} at {i}", table.len());
        }
        // Whatever was dropped is still in force: every answer fetched before the flood ended
        // is void, for any account.
        for i in 0..1000u64 {
            assert!(table.voids(&format!("ACC-{i}"), at(1000 + i / 100)));
        }
        assert!(!table.voids("ACC-0", at(1011)));
    }
}
