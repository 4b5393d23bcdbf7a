//! The per-(partner, account) limiter: one GCRA state per bill account, in a bounded table.
//!
//! Accounts are tracked by a keyed 64-bit hash of the account number (foldhash, seeded per table
//! so a partner cannot aim collisions), so a lookup allocates nothing. The table is sharded by
//! the hash's top bits; each shard is an open-addressing array of 16-byte slots (hash and
//! theoretical arrival time side by side, one cache line read per lookup). A known account is
//! checked without a lock: a compare-and-swap on its arrival time. New accounts, growth and
//! eviction take the shard's lock. The table has a ceiling; idle accounts — those whose state is
//! indistinguishable from a fresh one — are evicted by a sweep that runs beside the request path,
//! one shard at a time.
//!
//! The GCRA is governor's, step for step: emission interval `t = period / count`, tolerance
//! `τ = t × (burst − 1)`; a request at `now` passes if `now ≥ tat − τ` and sets
//! `tat = max(tat, now) + t`; a sweep evicts accounts with `tat ≤ now − t`.

mod table;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::nanos::Nanos;

use crate::clock::Clock;
use crate::config::Rate;
use table::{Slot, Slots, FROZEN};

/// Why an account was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountDenial {
    /// The account was asked about too often; retry after this long.
    TooOften(Duration),
    /// The table is at its ceiling and this account is not in it.
    TableFull,
}

/// A shard: the current array of slots, and the lock its writers take (guarding its count).
/// 16 bytes, four to a cache line: only writers write here.
struct Shard {
    writer: Mutex<u32>,
    slots: ArcSwap<Slots>,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, u32> {
        // Nothing panics while holding a shard, so a poisoned lock still guards a sound table.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// About this many accounts per shard at the ceiling: a sweep or a growth rebuilds one shard
/// (tens of microseconds) while checks of the others go on. Checks of known accounts take no
/// lock, so shards are not there for them; fewer shards keep small tables small.
const ACCOUNTS_PER_SHARD: usize = 4096;
const MAX_SHARD_BITS: u32 = 10;

/// One partner's per-account limiter: a rate per account, at most `ceiling` accounts tracked.
///
/// Laid out so a check of a known account reads one cache line of it (the first five fields);
/// the counters only new accounts and sweeps write come after.
#[repr(C, align(64))]
pub struct AccountLimiter {
    seed: foldhash::quality::RandomState,
    shards: Box<[Shard]>,
    /// Emission interval and tolerance, in nanoseconds.
    t: u64,
    tau: u64,
    shard_bits: u32,
    rate: Rate,
    ceiling: usize,
    clock: Clock,
    len: AtomicUsize,
    evicted: AtomicU64,
}

impl AccountLimiter {
    /// A limiter allowing `rate` per account for at most `ceiling` accounts (at least 1). Takes
    /// memory only as accounts arrive: about 16 bytes per slot, slots at most ¾ full.
    pub fn new(rate: Rate, ceiling: usize, clock: Clock) -> Self {
        let ceiling = ceiling.max(1);
        let shard_bits = (ceiling / ACCOUNTS_PER_SHARD)
            .next_power_of_two()
            .trailing_zeros()
            .min(MAX_SHARD_BITS);
        let t = u64::try_from(rate.replenish_interval().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        // Every shard starts on one shared empty array: no allocation per shard until used.
        let empty = Arc::new(Slots::default());
        let shards = (0..1usize << shard_bits)
            .map(|_| Shard {
                writer: Mutex::new(0),
                slots: ArcSwap::new(Arc::clone(&empty)),
            })
            .collect();
        AccountLimiter {
            rate,
            ceiling,
            t,
            tau: t.saturating_mul(u64::from(rate.burst.get() - 1)),
            seed: foldhash::quality::RandomState::default(),
            shard_bits,
            shards,
            clock,
            len: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    /// The rate each account is held to.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The most accounts tracked at once.
    pub fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// The key an account number is tracked under.
    #[inline]
    pub fn key(&self, account: &str) -> u64 {
        Slots::key_of(self.seed.hash_one(account.as_bytes()))
    }

    #[inline]
    fn shard(&self, key: u64) -> &Shard {
        let index = key.checked_shr(64 - self.shard_bits).unwrap_or(0) as usize;
        // There are 2^shard_bits shards and the index has shard_bits bits: always in range.
        &self.shards[index & (self.shards.len() - 1)]
    }

    /// Spends one request for `account` at `now` (a reading of this limiter's clock). Never
    /// allocates for an account already tracked; a new one may grow its shard (amortised).
    #[inline]
    pub fn check(&self, account: &str, now: Nanos) -> Result<(), AccountDenial> {
        self.check_key(self.key(account), now)
    }

    /// Asks for the shard `key` lives in to be brought into cache (see [`crate::memory`]).
    #[inline]
    pub fn prefetch(&self, key: u64) {
        crate::memory::prefetch(self.shard(key));
    }

    /// [`AccountLimiter::check`] for an account by its [`AccountLimiter::key`].
    #[inline]
    pub fn check_key(&self, key: u64, now: Nanos) -> Result<(), AccountDenial> {
        let now = now.as_u64();
        let shard = self.shard(key);
        if let Some(slot) = shard.slots.load().find(key) {
            if let Some(verdict) = self.spend(slot, now) {
                return verdict;
            }
        }
        self.check_locked(shard, key, now)
    }

    /// GCRA on one slot by compare-and-swap; `None` if the slot is frozen (copied away).
    #[inline]
    fn spend(&self, slot: &Slot, now: u64) -> Option<Result<(), AccountDenial>> {
        let mut seen = slot.tat.load(Ordering::Acquire);
        loop {
            if seen & FROZEN != 0 {
                return None;
            }
            let earliest = seen.saturating_sub(self.tau);
            if now < earliest {
                let wait = Duration::from_nanos(earliest - now);
                return Some(Err(AccountDenial::TooOften(wait)));
            }
            let next = seen.max(now).saturating_add(self.t).min(FROZEN - 1);
            match slot
                .tat
                .compare_exchange_weak(seen, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Ok(())),
                Err(actual) => seen = actual,
            }
        }
    }

    /// The slow path, under the shard's lock: an account not found (new, or being moved), or
    /// found frozen. Nothing else changes the shard meanwhile.
    #[cold]
    fn check_locked(&self, shard: &Shard, key: u64, now: u64) -> Result<(), AccountDenial> {
        let mut len = shard.lock();
        let mut slots = shard.slots.load_full();
        if let Some(slot) = slots.find(key) {
            // Only lock holders freeze slots, and they publish a new array before unlocking.
            return self
                .spend(slot, now)
                .unwrap_or(Err(AccountDenial::TableFull));
        }
        // Over the ceiling a new account cannot be tracked, so it is refused rather than let
        // through unlimited; known accounts are still served.
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.ceiling).then_some(n + 1)
            })
            .map_err(|_| AccountDenial::TableFull)?;
        if !slots.has_room(*len as usize) {
            let (grown, _) = slots.rebuild(slots.capacity() * 2, None);
            slots = Arc::new(grown);
            shard.slots.store(Arc::clone(&slots));
        }
        // A fresh state always passes: its arrival time becomes `now + t`.
        slots.insert(key, now.saturating_add(self.t));
        *len += 1;
        Ok(())
    }

    /// Evicts every account whose state is indistinguishable from a fresh one. Locks one shard
    /// at a time, so checks on the others go on meanwhile.
    pub fn sweep(&self) {
        let drop_below = self.clock.now().as_u64().saturating_sub(self.t);
        for shard in self.shards.iter() {
            let mut len = shard.lock();
            let slots = shard.slots.load_full();
            let staying = slots.count_above(drop_below);
            if staying == *len as usize {
                continue;
            }
            let size = table::shrunk(slots.capacity(), staying);
            let (kept, count) = slots.rebuild(size, Some(drop_below));
            shard.slots.store(Arc::new(kept));
            let removed = (*len as usize).saturating_sub(count);
            *len = count as u32;
            self.len.fetch_sub(removed, Ordering::Relaxed);
            self.evicted.fetch_add(removed as u64, Ordering::Relaxed);
        }
    }

    /// Accounts tracked now.
    pub fn tracked(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Accounts evicted by sweeps so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Accounts per shard, for tests of the layout.
    #[cfg(test)]
    fn shard_lens(&self) -> Vec<usize> {
        self.shards.iter().map(|s| *s.lock() as usize).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_rate;

    fn limiter(rate: &str, ceiling: usize) -> (AccountLimiter, crate::clock::FakeClock, Clock) {
        let (clock, hand) = Clock::fake();
        (
            AccountLimiter::new(parse_rate(rate).unwrap(), ceiling, clock.clone()),
            hand,
            clock,
        )
    }

    #[test]
    fn follows_governors_gcra_with_a_burst() {
        let (l, hand, clock) = limiter("2/s burst 3", 10);
        for _ in 0..3 {
            assert_eq!(l.check("a", clock.now()), Ok(()));
        }
        assert_eq!(
            l.check("a", clock.now()),
            Err(AccountDenial::TooOften(Duration::from_millis(500)))
        );
        hand.advance(Duration::from_millis(499));
        assert_eq!(
            l.check("a", clock.now()),
            Err(AccountDenial::TooOften(Duration::from_millis(1)))
        );
        hand.advance(Duration::from_millis(1));
        assert_eq!(l.check("a", clock.now()), Ok(()));
        assert_eq!(l.check("b", clock.now()), Ok(()));
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn the_ceiling_is_exact_and_sweeps_free_room() {
        let (l, hand, clock) = limiter("1/s", 100);
        for n in 0..100 {
            assert_eq!(l.check(&n.to_string(), clock.now()), Ok(()));
        }
        assert_eq!(l.check("new", clock.now()), Err(AccountDenial::TableFull));
        assert_eq!(
            l.check("7", clock.now()),
            Err(AccountDenial::TooOften(Duration::from_secs(1)))
        );
        hand.advance(Duration::from_secs(1));
        l.sweep();
        assert_eq!((l.tracked(), l.evicted()), (100, 0));
        hand.advance(Duration::from_secs(1));
        l.sweep();
        assert_eq!((l.tracked(), l.evicted()), (0, 100));
        assert_eq!(l.check("new", clock.now()), Ok(()));
    }

    #[test]
    fn many_accounts_spread_over_shards_and_are_all_found_again() {
        let (l, hand, clock) = limiter("1/min", 100_000);
        assert_eq!(l.shards.len(), 32);
        for n in 0..50_000 {
            assert_eq!(l.check(&format!("acct-{n}"), clock.now()), Ok(()));
        }
        let lens = l.shard_lens();
        assert_eq!(lens.iter().sum::<usize>(), 50_000);
        assert!(lens.iter().all(|&n| n > 1_000), "{lens:?}");
        for n in 0..50_000 {
            assert!(matches!(
                l.check(&format!("acct-{n}"), clock.now()),
                Err(AccountDenial::TooOften(_))
            ));
        }
        // Half of them asked about again later stay; the rest are swept.
        hand.advance(Duration::from_secs(60));
        for n in (0..50_000).step_by(2) {
            assert_eq!(l.check(&format!("acct-{n}"), clock.now()), Ok(()));
        }
        hand.advance(Duration::from_secs(60));
        l.sweep();
        assert_eq!((l.tracked(), l.evicted()), (25_000, 25_000));
        // The kept ones are found (nothing new is tracked); the swept ones come back fresh.
        for n in (0..50_000).step_by(2) {
            assert_eq!(l.check(&format!("acct-{n}"), clock.now()), Ok(()));
        }
        assert_eq!(l.tracked(), 25_000);
        for n in (1..50_000).step_by(2) {
            assert_eq!(l.check(&format!("acct-{n}"), clock.now()), Ok(()));
        }
        assert_eq!(l.tracked(), 50_000);
    }

    #[test]
    fn racing_threads_growing_the_table_spend_each_burst_exactly() {
        let (l, _, clock) = limiter("5/h", 3_000);
        let accounts: Vec<String> = (0..3_000).map(|n| format!("a{n}")).collect();
        let admitted: usize = std::thread::scope(|s| {
            let run = |reverse: bool| {
                let (l, accounts, clock) = (&l, &accounts, &clock);
                move || {
                    let mut admitted = 0;
                    for _ in 0..6 {
                        let mut order: Vec<&String> = accounts.iter().collect();
                        if reverse {
                            order.reverse();
                        }
                        admitted += order
                            .into_iter()
                            .filter(|a| l.check(a, clock.now()).is_ok())
                            .count();
                    }
                    admitted
                }
            };
            let (a, b) = (s.spawn(run(false)), s.spawn(run(true)));
            a.join().unwrap() + b.join().unwrap()
        });
        assert_eq!(admitted, 3_000 * 5);
        assert_eq!(l.tracked(), 3_000);
    }

    #[test]
    fn tables_take_memory_only_as_accounts_arrive() {
        let (l, _, clock) = limiter("1/s", 1_000_000);
        assert!(l.shards.iter().all(|s| s.slots.load().capacity() == 0));
        l.check("one", clock.now()).unwrap();
        let slots: usize = l.shards.iter().map(|s| s.slots.load().capacity()).sum();
        assert_eq!(slots, 4);
    }
}
