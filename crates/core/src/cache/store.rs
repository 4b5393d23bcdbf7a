//! The answer cache itself: fresh answers by (route, scope, account), bounded in entries and
//! bytes, evicted by `quick_cache`, voided per account by payments, counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::nanos::Nanos;
use http::{HeaderMap, StatusCode};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use super::answer::CachedAnswer;
use super::invalidate::Invalidations;
use super::key::{CacheKey, KeyRef};
use super::policy::{self, NotStored};
use crate::clock::Clock;

/// Limits of an [`AnswerCache`]. Zero limits are read as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// The most answers kept at once. Default 100 000.
    pub max_entries: usize,
    /// The most bytes kept at once, as estimated by [`CacheStats::bytes`] (rounded down to a
    /// multiple of `max_entries`). Default 64 MiB.
    pub max_bytes: u64,
    /// Answers with a larger body are served but not kept. Default 256 KiB.
    pub max_body_bytes: usize,
    /// The most accounts remembered as recently paid ([`AnswerCache::invalidate_account`]);
    /// past it, every answer fetched until then is voided at once. Default 100 000.
    pub max_invalidations: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
            max_body_bytes: 256 * 1024,
            max_invalidations: 100_000,
        }
    }
}

/// A snapshot of the cache's counters (monotonic since the cache was made) and gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from memory.
    pub hits: u64,
    /// Lookups that found nothing fresh.
    pub misses: u64,
    /// Requests that joined another's biller call ([`Coalescer::join`] followers).
    pub coalesced: u64,
    /// Answers stored.
    pub stores: u64,
    /// Answers pushed out to stay under the ceilings (not counting replacements, expiries or
    /// invalidations).
    pub evictions: u64,
    /// Answers held now.
    pub entries: usize,
    /// Estimated bytes held now: bodies, headers, keys and per-entry structures.
    pub bytes: u64,
    /// Accounts remembered as recently paid.
    pub invalidations: usize,
}

/// Counts requests that joined another's biller call into a cache's
/// [`CacheStats::coalesced`] ([`AnswerCache::coalesced_counter`]); the default counts alone.
#[derive(Debug, Default, Clone)]
pub struct CoalescedCounter(Arc<Counters>);

impl CoalescedCounter {
    /// One more request followed a flight under way.
    pub fn add_one(&self) {
        self.0.coalesced.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters shared by the cache and its coalescers.
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
    stores: AtomicU64,
    evictions: AtomicU64,
    bytes: AtomicU64,
}

/// Fixed bytes per entry besides the answer's own: key and slot structures, the `Arc`s' counts,
/// quick_cache's 21 bytes of bookkeeping and its table's slack, allocator headers.
const ENTRY_OVERHEAD: usize =
    std::mem::size_of::<CacheKey>() + std::mem::size_of::<Slot>() + 2 * 16 + 21 + 64;

/// What the cache holds per key. Cloned on every lookup: one `Arc` and two integers.
#[derive(Clone)]
struct Slot {
    answer: Arc<CachedAnswer>,
    /// Estimated bytes, counted into [`CacheStats::bytes`].
    bytes: u64,
    /// What the entry costs against the capacity: its bytes, but at least an equal share of the
    /// capacity per allowed entry, so one weight bounds both entries and bytes.
    weight: u64,
}

#[derive(Clone)]
struct SlotWeight;

impl Weighter<CacheKey, Slot> for SlotWeight {
    fn weight(&self, _key: &CacheKey, slot: &Slot) -> u64 {
        slot.weight
    }
}

/// Hands every entry an insert displaces back to the inserting call. quick_cache 0.7 reports
/// evictions, the old value of a replaced key and an insert too heavy to admit all through
/// `on_evict`; the caller tells them apart.
#[derive(Clone, Default)]
struct Displaced;

impl Lifecycle<CacheKey, Slot> for Displaced {
    type RequestState = Vec<(CacheKey, Slot)>;

    fn on_evict(&self, state: &mut Self::RequestState, key: CacheKey, slot: Slot) {
        state.push((key, slot));
    }
}

/// Fresh biller answers by (route, scope, account). `Send + Sync`; share it with an `Arc`.
///
/// A lookup takes one shard read lock and clones one `Arc`; it never allocates. Freshness is
/// read from the injected [`Clock`], so tests drive it with `Clock::fake()`.
pub struct AnswerCache {
    entries: Cache<CacheKey, Slot, SlotWeight, DefaultHashBuilder, Displaced>,
    max_body_bytes: usize,
    min_weight: u64,
    clock: Clock,
    invalidations: Invalidations,
    counters: Arc<Counters>,
}

impl AnswerCache {
    /// An empty cache with these limits, reading time from `clock`.
    ///
    /// The entry ceiling is never exceeded, nor the byte ceiling (but for rounding it up to a
    /// multiple of the shard count). The cache is split into shards that each hold their share,
    /// so when it is nearly full, eviction may begin a little before the totals are reached;
    /// caches of fewer than 2 048 entries are one shard and exact.
    pub fn new(settings: CacheSettings, clock: Clock) -> Self {
        let max_entries = settings.max_entries.max(1);
        let entries_u64 = u64::try_from(max_entries).unwrap_or(u64::MAX);
        // Every entry weighs at least an equal share of the capacity, so the one weight bounds
        // both: `max_entries` shares fit exactly, and never more bytes than `max_bytes` (rounded
        // down to a multiple of `max_entries`, which loses fewer than `max_entries` bytes).
        let min_weight = (settings.max_bytes / entries_u64).max(1);
        let max_bytes = if settings.max_bytes >= entries_u64 {
            min_weight * entries_u64
        } else {
            settings.max_bytes.max(1)
        };
        // Shards of at least ~1 000 entries keep the per-shard split from evicting early.
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = (max_entries / 1024).clamp(1, parallelism * 4);
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(max_entries)
            .weight_capacity(max_bytes)
            .build();
        let entries = match options {
            Ok(options) => Cache::with_options(
                options,
                SlotWeight,
                DefaultHashBuilder::default(),
                Displaced,
            ),
            // Only if a required option were unset; both are set above.
            Err(_) => Cache::with(
                max_entries,
                max_bytes,
                SlotWeight,
                DefaultHashBuilder::default(),
                Displaced,
            ),
        };
        AnswerCache {
            entries,
            max_body_bytes: settings.max_body_bytes,
            min_weight,
            clock,
            invalidations: Invalidations::new(settings.max_invalidations),
            counters: Arc::default(),
        }
    }

    /// The cache's clock reading. Read it just before sending an inquiry to the biller and pass
    /// it to [`AnswerCache::store`] as `requested_at`.
    pub fn now(&self) -> Nanos {
        self.clock.now()
    }

    /// The answer for `key` if one is fresh and no payment for its account has voided it;
    /// counts a hit or a miss, so call it once per request. Takes a [`KeyRef`] (allocation-free)
    /// or a `&CacheKey`. A stale or voided entry found on the way is dropped.
    pub fn get<'k>(&self, key: impl Into<KeyRef<'k>>) -> Option<Arc<CachedAnswer>> {
        let found = self.lookup(key.into());
        let counter = match found {
            Some(_) => &self.counters.hits,
            None => &self.counters.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// [`AnswerCache::get`] without counting: for a new flight's leader to look once more before
    /// calling the biller, since a flight that completed between its miss and its join has just
    /// stored the answer.
    pub fn peek<'k>(&self, key: impl Into<KeyRef<'k>>) -> Option<Arc<CachedAnswer>> {
        self.lookup(key.into())
    }

    fn lookup(&self, key: KeyRef<'_>) -> Option<Arc<CachedAnswer>> {
        let answer = self.entries.get(&key)?.answer;
        if answer.is_fresh(self.clock.now())
            && !self.invalidations.voids(key.account(), answer.stored_at)
        {
            return Some(answer);
        }
        // Only this very entry: a fresh one stored meanwhile stays.
        if let Some((_, gone)) = self
            .entries
            .remove_if(&key, |s| Arc::ptr_eq(&s.answer, &answer))
        {
            self.counters.bytes.fetch_sub(gone.bytes, Ordering::Relaxed);
        }
        None
    }

    /// Builds the answer the biller gave to a request sent at `requested_at` and keeps it under
    /// `key` if it may be reused: a `200 OK` without `Vary` or `Set-Cookie`, a body of at most
    /// `max_body_bytes`, a lifetime of `cache_for` or less as [`policy::freshness`] reads
    /// `Cache-Control`, still fresh now, and no payment for the account since `requested_at`.
    /// Replaces any answer already under `key`; may evict others to stay under the ceilings.
    ///
    /// Returns the stored answer, or why nothing was stored (the caller then serves what it has;
    /// [`CachedAnswer::build`] makes a shareable answer for coalesced waiters all the same).
    pub fn store(
        &self,
        key: CacheKey,
        requested_at: Nanos,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        cache_for: Duration,
    ) -> Result<Arc<CachedAnswer>, NotStored> {
        let lifetime = policy::lifetime(status, headers, cache_for)?;
        if body.len() > self.max_body_bytes {
            return Err(NotStored::TooLarge);
        }
        let answer = Arc::new(CachedAnswer::build(
            requested_at,
            status,
            headers,
            &body,
            lifetime,
        ));
        if !answer.is_fresh(self.clock.now()) {
            return Err(NotStored::Stale);
        }
        self.invalidations.note_lifetime(lifetime);
        if self.invalidations.voids(key.account(), answer.stored_at) {
            return Err(NotStored::Invalidated);
        }
        let bytes = (answer.weight() + key.owned_bytes() + ENTRY_OVERHEAD) as u64;
        let slot = Slot {
            answer: Arc::clone(&answer),
            bytes,
            weight: bytes.max(self.min_weight),
        };
        let stored_key = key.clone();
        // Counted before the insert, so a concurrent eviction of it never takes the sum below 0.
        self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        let mut displaced = Vec::new();
        self.entries
            .insert_with_lifecycle(key, slot, &mut displaced);
        let mut admitted = true;
        for (old_key, old) in displaced {
            self.counters.bytes.fetch_sub(old.bytes, Ordering::Relaxed);
            if Arc::ptr_eq(&old.answer, &answer) {
                // Heavier than a shard may hold: never admitted.
                admitted = false;
            } else if old_key != stored_key {
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !admitted {
            return Err(NotStored::TooLarge);
        }
        self.counters.stores.fetch_add(1, Ordering::Relaxed);
        Ok(answer)
    }

    /// Voids every cached answer about `account` — on every route, in every scope — fetched at
    /// or before now. O(1) on average: entries are checked when next looked up, not found now.
    ///
    /// Call it when a payment's answer arrives, whatever its status, and when a payment fails or
    /// times out (the gateway cannot know whether it took effect), so inquiries that raced the
    /// payment are voided too. Answers fetched afterwards are served as usual.
    pub fn invalidate_account(&self, account: &str) {
        self.invalidations.invalidate(account, self.clock.now());
    }

    /// Drops every stale or voided entry and the payment records no fresh answer could need.
    /// O(entries), taking each shard's lock in turn: run it beside the request path (say once a
    /// minute), or not at all — memory stays bounded without it.
    pub fn sweep(&self) {
        let now = self.clock.now();
        let bytes = &self.counters.bytes;
        self.entries.retain(|key, slot| {
            let keep = slot.answer.is_fresh(now)
                && !self
                    .invalidations
                    .voids(key.account(), slot.answer.stored_at);
            if !keep {
                bytes.fetch_sub(slot.bytes, Ordering::Relaxed);
            }
            keep
        });
        self.invalidations.prune(now);
    }

    /// Where a coalescer counts the requests that joined another's biller call, so they show
    /// in this cache's [`CacheStats::coalesced`].
    pub fn coalesced_counter(&self) -> CoalescedCounter {
        CoalescedCounter(Arc::clone(&self.counters))
    }

    /// Counters and gauges now.
    pub fn stats(&self) -> CacheStats {
        let c = &*self.counters;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            stores: c.stores.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            entries: self.entries.len(),
            bytes: c.bytes.load(Ordering::Relaxed),
            invalidations: self.invalidations.len(),
        }
    }
}

impl std::fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerCache")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
