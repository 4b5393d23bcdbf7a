//! The per-(partner, account) limiter: one GCRA state per bill account, every partner's
//! accounts in one bounded table.
//!
//! # Layout
//!
//! One [`AccountTable`] per gateway holds every partner's accounts. The table is a fixed set of
//! shards; each shard is an open-addressing array of 16-byte slots (key and theoretical arrival
//! time side by side, one cache line read per lookup). The shard headers are few and shared by
//! all partners, so they stay in cache: checking an account costs one read from memory, the
//! slot.
//!
//! An account is tracked under a 64-bit key (foldhash, seeded per table so a partner cannot aim
//! collisions) made in two steps, so that the slot can be asked for before the partner is
//! known. The account number alone gives its [`Place`]: the key's top bits, which choose the
//! shard, and its low bits, which choose the home slot. The partner's tag, hashed with the
//! place, fills the middle 32 bits. A decision can thus ask for the slot as soon as it has
//! routed the request, while the key's own look-up is still on its way, and the two misses
//! overlap instead of following one another. (A table per partner, as at first, put three
//! dependent misses — the partner's table, its shard, its array — in front of the slot; a key
//! hashed from tag and account put the slot's miss behind the key's.) One account number asked
//! about through several partners has its slots side by side, a probe apart; each partner
//! tracks an account at most once, so that run is at most as long as the number of partners
//! that track it. Two partners' entries for one account are confused only if the middle bits
//! agree, one chance in 2^32 per pair; distinct accounts, one in 2^64.
//!
//! A known account is checked without a lock: a compare-and-swap on its arrival time. New
//! accounts, growth and eviction take the shard's lock. Each partner has its own ceiling on
//! accounts tracked ([`AccountLimiter`], counted in its tally); idle accounts — those whose
//! state is indistinguishable from a fresh one — and the accounts of limiters no longer in use
//! (a reload changed the partner's rate, or removed the partner) are evicted by a sweep that
//! runs beside the request path, one shard at a time.
//!
//! The GCRA is [`Gcra`], governor's step for step: emission interval `t = period / count`,
//! tolerance `τ = t × (burst − 1)`; a request at `now` passes if `now ≥ tat − τ` and sets
//! `tat = max(tat, now) + t`. An account with `tat ≤ now` would pass with `tat = now + t`,
//! exactly as an untracked one does: that is when a sweep may forget it.

mod table;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::nanos::Nanos;

use super::gcra::Gcra;
use crate::clock::Clock;
use crate::config::Rate;
use table::{Entry, Slot, Slots, FROZEN};

/// Why an account was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountDenial {
    /// The account was asked about too often; retry after this long.
    TooOften(Duration),
    /// The partner's ceiling is reached and this account is not tracked.
    TableFull,
}

/// A shard: the current array of slots, and the lock its writers take (guarding its count).
/// 32 bytes, two to a cache line: only writers write here.
struct Shard {
    writer: Mutex<u32>,
    slots: ArcSwap<Slots>,
    /// Where the current array's slots are and its mask, as numbers: enough to prefetch an
    /// account's slot without taking a guard on the array (a stale pair only prefetches the
    /// wrong line).
    first: AtomicUsize,
    mask: AtomicUsize,
}

impl Shard {
    fn new(slots: Arc<Slots>) -> Self {
        let (first, mask) = slots.lines();
        Shard {
            writer: Mutex::new(0),
            slots: ArcSwap::new(slots),
            first: AtomicUsize::new(first),
            mask: AtomicUsize::new(mask),
        }
    }

    /// Makes `slots` the shard's array. Only under the shard's lock.
    fn publish(&self, slots: Arc<Slots>) {
        let (first, mask) = slots.lines();
        self.slots.store(slots);
        self.first.store(first, Ordering::Relaxed);
        self.mask.store(mask, Ordering::Relaxed);
    }
}

/// Locks ignoring poison: nothing panics while holding these, so the data is sound.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Shards in a table: 2^10. A growth or a sweep rebuilds one shard while checks of the others
/// go on; checks of known accounts take no lock, so shards are not there for them. Their
/// headers (16 KiB, and as much again for the arrays' headers) stay in cache.
const SHARD_BITS: u32 = 10;

/// Home bits a [`Place`] fixes: a shard of up to 2^22 slots (four billion in the table) has
/// every account's home known from its number alone. Past that, homes still hold, but depend
/// on the partner too, and the early ask reads a nearby line instead.
const HOME_BITS: u32 = 22;

/// The bits of a key its [`Place`] gives: the shard's and the home slot's.
const PLACE_BITS: u64 = !(u64::MAX >> SHARD_BITS) | ((1 << HOME_BITS) - 1);

/// Where an account number's slots are, for every partner that tracks it: the number's keyed
/// hash, whose top bits choose the shard and low bits the home slot. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place(u64);

/// One partner's count of accounts in the table, against its ceiling.
struct Tally {
    ceiling: usize,
    len: AtomicUsize,
    evicted: AtomicU64,
}

/// Which tag belongs to which limiter, for sweeps: every limiter made and not yet swept away.
struct Owners {
    /// The tag the next limiter gets; tags are never reused.
    next: u32,
    tallies: HashMap<u32, Weak<Tally>>,
}

/// Every partner's per-account state: see the module docs. Shared by the snapshots a reload
/// builds, so a partner whose limit did not change keeps its accounts' state.
pub struct AccountTable {
    seed: foldhash::quality::RandomState,
    /// A secret from the seed, keying how a partner's tag is mixed into a place.
    owner_secret: u64,
    shards: Box<[Shard]>,
    clock: Clock,
    owners: Mutex<Owners>,
}

impl AccountTable {
    /// An empty table. Takes memory only as accounts arrive: 20 bytes per slot, slots at most
    /// ¾ full, plus the shard headers.
    pub fn new(clock: Clock) -> Self {
        // Every shard starts on one shared empty array: no allocation per shard until used.
        let empty = Arc::new(Slots::default());
        let seed = foldhash::quality::RandomState::default();
        let owner_secret = seed.hash_one("account owners");
        AccountTable {
            seed,
            owner_secret,
            shards: (0..1usize << SHARD_BITS)
                .map(|_| Shard::new(Arc::clone(&empty)))
                .collect(),
            clock,
            owners: Mutex::new(Owners {
                next: 1,
                tallies: HashMap::new(),
            }),
        }
    }

    /// A new limiter in this table: `rate` per account, at most `ceiling` accounts (at least 1),
    /// under a tag of its own. Its accounts are forgotten once it and every clone are dropped.
    pub fn limiter(self: &Arc<Self>, rate: Rate, ceiling: usize) -> AccountLimiter {
        let tally = Arc::new(Tally {
            ceiling: ceiling.max(1),
            len: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
        });
        let mut owners = lock(&self.owners);
        let tag = owners.next;
        owners.next = owners.next.saturating_add(1);
        owners.tallies.insert(tag, Arc::downgrade(&tally));
        AccountLimiter {
            tag,
            gcra: Gcra::new(rate.replenish_interval(), rate.burst),
            table: Arc::clone(self),
            tally,
            rate,
        }
    }

    /// Where `account` is tracked, whichever partner asks: see [`Place`].
    #[inline]
    pub fn place(&self, account: &str) -> Place {
        Place(self.seed.hash_one(account.as_bytes()))
    }

    /// The key the account at `place` is tracked under for the partner tagged `tag`: the
    /// place's bits, and the middle ones from the tag mixed with the place.
    ///
    /// The mix is foldhash's own step, one folded multiply: the place, keyed by a secret, times
    /// `2 × tag + 1` spread by an odd constant (distinct tags, distinct odd factors), the product's
    /// halves xor'ed. A second full hash here cost the per-account check 9–12% of its rate.
    #[inline]
    pub fn key_at(&self, place: Place, tag: u32) -> u64 {
        const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;
        let factor = (u64::from(tag) << 1 | 1).wrapping_mul(SPREAD);
        let wide = u128::from(place.0 ^ self.owner_secret) * u128::from(factor);
        let owner = (wide as u64) ^ (wide >> 64) as u64;
        Slots::key_of(place.0 & PLACE_BITS | owner & !PLACE_BITS)
    }

    /// The key `account` of the partner tagged `tag` is tracked under.
    #[inline]
    pub fn key(&self, tag: u32, account: &str) -> u64 {
        self.key_at(self.place(account), tag)
    }

    #[inline]
    fn shard(&self, key: u64) -> &Shard {
        let index = (key >> (64 - SHARD_BITS)) as usize;
        // There are 2^SHARD_BITS shards and the index has SHARD_BITS bits: always in range.
        &self.shards[index & (self.shards.len() - 1)]
    }

    /// Asks for the slot an account at `place` would be found in to be brought into cache (see
    /// [`crate::memory`]), for whichever partner. The shard headers are normally in cache
    /// already.
    #[inline]
    pub fn prefetch(&self, place: Place) {
        let shard = self.shard(place.0);
        let first = shard.first.load(Ordering::Relaxed);
        let mask = shard.mask.load(Ordering::Relaxed);
        // An empty array's mask is all ones: the address is then meaningless, and harmless.
        let home = place.0 as usize & mask;
        let offset = home.wrapping_mul(std::mem::size_of::<Slot>());
        crate::memory::prefetch_address(first.wrapping_add(offset));
    }

    /// Evicts every account whose state is indistinguishable from a fresh one, and every
    /// account of a limiter no longer in use. Locks one shard at a time, so checks on the others
    /// go on meanwhile.
    pub fn sweep(&self) {
        // The limiters dropped since the last sweep: their accounts all go now, and their tags
        // are forgotten after (none of their accounts is left, and none can be added).
        let (dead, live) = {
            let owners = lock(&self.owners);
            let mut dead = Vec::new();
            let mut live = HashMap::with_capacity(owners.tallies.len());
            for (&tag, tally) in &owners.tallies {
                match tally.upgrade() {
                    Some(tally) => _ = live.insert(tag, tally),
                    None => dead.push(tag),
                }
            }
            dead.sort_unstable();
            (dead, live)
        };
        let now = self.clock.now().as_u64();
        let keep = |e: &Entry| e.tat > now && dead.binary_search(&e.owner).is_err();
        // Evictions are counted against their partner's tally; a sweep meets the same tags
        // again and again, so the last one found is remembered.
        let mut last: Option<(u32, Option<&Arc<Tally>>)> = None;
        let mut evicted = |e: &Entry| {
            let tally = match last {
                Some((tag, tally)) if tag == e.owner => tally,
                _ => {
                    let tally = live.get(&e.owner);
                    last = Some((e.owner, tally));
                    tally
                }
            };
            if let Some(tally) = tally {
                tally.len.fetch_sub(1, Ordering::Relaxed);
                tally.evicted.fetch_add(1, Ordering::Relaxed);
            }
        };
        for shard in self.shards.iter() {
            let mut len = lock(&shard.writer);
            if *len == 0 {
                continue;
            }
            let slots = shard.slots.load_full();
            let staying = slots.entries().filter(keep).count();
            if staying == *len as usize {
                continue;
            }
            let size = table::shrunk(slots.capacity(), staying);
            let (kept, count) = slots.rebuild(size, keep, &mut evicted);
            shard.publish(Arc::new(kept));
            *len = count as u32;
        }
        let mut owners = lock(&self.owners);
        for tag in dead {
            owners.tallies.remove(&tag);
        }
    }

    /// Accounts held now, every partner's (and those of limiters not yet swept away).
    pub fn tracked(&self) -> usize {
        self.shard_lens().sum()
    }

    /// Accounts per shard.
    fn shard_lens(&self) -> impl Iterator<Item = usize> + '_ {
        self.shards.iter().map(|s| *lock(&s.writer) as usize)
    }
}

/// One partner's per-account limiter: a rate per account, at most `ceiling` accounts tracked,
/// its accounts kept in an [`AccountTable`] under its tag. Cloning shares the state; small and
/// immutable, so a partner's gate holds it inline.
#[derive(Clone)]
pub struct AccountLimiter {
    tag: u32,
    /// Each account's emission interval and tolerance.
    gcra: Gcra,
    table: Arc<AccountTable>,
    tally: Arc<Tally>,
    rate: Rate,
}

impl AccountLimiter {
    /// A limiter with a table of its own (benches and tests; the gateway's partners share one,
    /// see [`AccountTable::limiter`]).
    pub fn new(rate: Rate, ceiling: usize, clock: Clock) -> Self {
        Arc::new(AccountTable::new(clock)).limiter(rate, ceiling)
    }

    /// The rate each account is held to.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The most accounts tracked at once.
    pub fn ceiling(&self) -> usize {
        self.tally.ceiling
    }

    /// The tag this limiter's accounts are kept under in its table.
    pub fn tag(&self) -> u32 {
        self.tag
    }

    /// True when two limiters share one state (a reload carried this one over).
    pub fn same_state(&self, other: &AccountLimiter) -> bool {
        Arc::ptr_eq(&self.tally, &other.tally)
    }

    /// The key an account number is tracked under.
    #[inline]
    pub fn key(&self, account: &str) -> u64 {
        self.table.key(self.tag, account)
    }

    /// Spends one request for `account` at `now` (a reading of this limiter's clock). Never
    /// allocates for an account already tracked; a new one may grow its shard (amortised).
    #[inline]
    pub fn check(&self, account: &str, now: Nanos) -> Result<(), AccountDenial> {
        self.check_key(self.key(account), now)
    }

    /// [`AccountLimiter::check`] for an account by its [`AccountLimiter::key`].
    #[inline]
    pub fn check_key(&self, key: u64, now: Nanos) -> Result<(), AccountDenial> {
        self.check_shared(key, now, 1)
    }

    /// [`AccountLimiter::check_key`] for one of `instances` gateways sharing the quota (see
    /// `crate::fleet`): each holds each account to the rate and burst divided by them.
    #[inline]
    pub fn check_shared(&self, key: u64, now: Nanos, instances: u32) -> Result<(), AccountDenial> {
        let now = now.as_u64();
        let gcra = if instances <= 1 {
            self.gcra
        } else {
            let burst = (self.rate.burst.get() / instances).max(1);
            Gcra::from_nanos(
                self.gcra.t().saturating_mul(u64::from(instances)),
                std::num::NonZeroU32::new(burst).unwrap_or(std::num::NonZeroU32::MIN),
            )
        };
        let shard = self.table.shard(key);
        if let Some(slot) = shard.slots.load().find(key) {
            if let Some(verdict) = Self::spend(gcra, slot, now) {
                return verdict;
            }
        }
        self.check_locked(gcra, shard, key, now)
    }

    /// GCRA on one slot by compare-and-swap; `None` if the slot is frozen (copied away).
    #[inline]
    fn spend(gcra: Gcra, slot: &Slot, now: u64) -> Option<Result<(), AccountDenial>> {
        let mut seen = slot.tat.load(Ordering::Acquire);
        loop {
            if seen & FROZEN != 0 {
                return None;
            }
            let earliest = gcra.earliest(seen, 1);
            if now < earliest {
                let wait = Duration::from_nanos(earliest - now);
                return Some(Err(AccountDenial::TooOften(wait)));
            }
            let next = gcra.next(seen, now, 1).min(FROZEN - 1);
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
    fn check_locked(
        &self,
        gcra: Gcra,
        shard: &Shard,
        key: u64,
        now: u64,
    ) -> Result<(), AccountDenial> {
        let mut len = lock(&shard.writer);
        let mut slots = shard.slots.load_full();
        if let Some(slot) = slots.find(key) {
            // Only lock holders freeze slots, and they publish a new array before unlocking.
            return Self::spend(gcra, slot, now).unwrap_or(Err(AccountDenial::TableFull));
        }
        // Over the ceiling a new account cannot be tracked, so it is refused rather than let
        // through unlimited; known accounts are still served.
        let tally = &self.tally;
        tally
            .len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < tally.ceiling).then_some(n + 1)
            })
            .map_err(|_| AccountDenial::TableFull)?;
        if !slots.has_room(*len as usize) {
            let (grown, _) = slots.rebuild(slots.capacity() * 2, |_| true, |_| {});
            slots = Arc::new(grown);
            shard.publish(Arc::clone(&slots));
        }
        // A fresh state always passes: its arrival time becomes `now + t`.
        slots.insert(Entry {
            key,
            owner: self.tag,
            tat: gcra.next(0, now, 1),
        });
        *len += 1;
        Ok(())
    }

    /// Sweeps the table this limiter's accounts are kept in (every partner's; see
    /// [`AccountTable::sweep`]).
    pub fn sweep(&self) {
        self.table.sweep();
    }

    /// This limiter's accounts tracked now.
    pub fn tracked(&self) -> usize {
        self.tally.len.load(Ordering::Relaxed)
    }

    /// This limiter's accounts evicted by sweeps so far.
    pub fn evicted(&self) -> u64 {
        self.tally.evicted.load(Ordering::Relaxed)
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
        // One nanosecond before their states are fresh again, all stay.
        hand.advance(Duration::from_secs(1) - Duration::from_nanos(1));
        l.sweep();
        assert_eq!((l.tracked(), l.evicted()), (100, 0));
        hand.advance(Duration::from_nanos(1));
        l.sweep();
        assert_eq!((l.tracked(), l.evicted()), (0, 100));
        assert_eq!(l.table.tracked(), 0);
        assert_eq!(l.check("new", clock.now()), Ok(()));
    }

    #[test]
    fn partners_sharing_a_table_have_their_own_accounts_and_ceilings() {
        let (clock, hand) = Clock::fake();
        let table = Arc::new(AccountTable::new(clock.clone()));
        let a = table.limiter(parse_rate("1/min").unwrap(), 2);
        let b = table.limiter(parse_rate("2/min").unwrap(), 3);
        assert_ne!(a.tag(), b.tag());
        // The same account number is two accounts: one per partner, each at its own rate.
        assert_eq!(a.check("42", clock.now()), Ok(()));
        assert!(a.check("42", clock.now()).is_err());
        assert_eq!(b.check("42", clock.now()), Ok(()));
        assert_eq!(b.check("42", clock.now()), Ok(()));
        assert!(b.check("42", clock.now()).is_err());
        // Each fills its own ceiling.
        assert_eq!(a.check("43", clock.now()), Ok(()));
        assert_eq!(a.check("44", clock.now()), Err(AccountDenial::TableFull));
        assert_eq!(b.check("43", clock.now()), Ok(()));
        assert_eq!(b.check("44", clock.now()), Ok(()));
        assert_eq!(b.check("45", clock.now()), Err(AccountDenial::TableFull));
        assert_eq!((a.tracked(), b.tracked(), table.tracked()), (2, 3, 5));
        // A clone is the same limiter; a new one with the same rate is not.
        let again = a.clone();
        assert!(again.same_state(&a));
        assert!(!table.limiter(a.rate(), 2).same_state(&a));
        assert!(again.check("43", clock.now()).is_err());

        // A limiter dropped (a reload changed the partner's rate): its accounts go at the next
        // sweep, busy or not; the other partner's stay.
        drop((a, again));
        table.sweep();
        assert_eq!((b.tracked(), table.tracked()), (3, 3));
        hand.advance(Duration::from_secs(60));
        table.sweep();
        assert_eq!((b.tracked(), b.evicted(), table.tracked()), (0, 3, 0));
        assert_eq!(lock(&table.owners).tallies.len(), 1);
    }

    #[test]
    fn an_accounts_place_is_the_same_for_every_partner_and_its_keys_are_not() {
        let (clock, hand) = Clock::fake();
        let table = Arc::new(AccountTable::new(clock.clone()));
        let limiters: Vec<AccountLimiter> = (0..200)
            .map(|_| table.limiter(parse_rate("1/min").unwrap(), 10))
            .collect();
        let place = table.place("000123456789");
        assert_eq!(place, table.place("000123456789"));
        assert_ne!(place, table.place("000123456788"));
        let keys: Vec<u64> = limiters
            .iter()
            .map(|l| table.key_at(place, l.tag()))
            .collect();
        for (l, &key) in limiters.iter().zip(&keys) {
            assert_eq!(key, l.key("000123456789"));
            // Shard and home slot come from the account number alone...
            assert_eq!(key & PLACE_BITS, place.0 & PLACE_BITS);
            assert!(std::ptr::eq(table.shard(key), table.shard(place.0)));
        }
        // ...and the rest from the partner: 200 partners, 200 keys.
        let distinct: std::collections::HashSet<u64> = keys.iter().copied().collect();
        assert_eq!(distinct.len(), 200);
        // All 200 share one home: each is still found, each with a quota of its own.
        for l in &limiters {
            assert_eq!(l.check("000123456789", clock.now()), Ok(()));
        }
        for l in &limiters {
            assert_eq!(
                l.check("000123456789", clock.now()),
                Err(AccountDenial::TooOften(Duration::from_secs(60)))
            );
        }
        assert_eq!(table.tracked(), 200);
        hand.advance(Duration::from_secs(60));
        table.sweep();
        assert_eq!(table.tracked(), 0);
    }

    #[test]
    fn many_accounts_spread_over_shards_and_are_all_found_again() {
        let (l, hand, clock) = limiter("1/min", 100_000);
        assert_eq!(l.table.shards.len(), 1024);
        for n in 0..50_000 {
            assert_eq!(l.check(&format!("acct-{n}"), clock.now()), Ok(()));
        }
        let lens: Vec<usize> = l.table.shard_lens().collect();
        assert_eq!(lens.iter().sum::<usize>(), 50_000);
        assert!(lens.iter().all(|&n| n > 10), "{lens:?}");
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
        hand.advance(Duration::from_secs(1));
        l.sweep();
        assert_eq!((l.tracked(), l.evicted()), (25_000, 25_000));
        // The kept ones are found, still spent (nothing new is tracked); the swept ones come
        // back fresh.
        for n in (0..50_000).step_by(2) {
            assert_eq!(
                l.check(&format!("acct-{n}"), clock.now()),
                Err(AccountDenial::TooOften(Duration::from_secs(59)))
            );
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
        let shards = &l.table.shards;
        assert!(shards.iter().all(|s| s.slots.load().capacity() == 0));
        // Prefetching into an empty shard, or a grown one, reads nothing and cannot fail.
        let place = l.table.place("one");
        l.table.prefetch(place);
        l.check("one", clock.now()).unwrap();
        l.table.prefetch(place);
        let shard = l.table.shard(l.key("one"));
        let (first, mask) = shard.slots.load().lines();
        assert_eq!(shard.first.load(Ordering::Relaxed), first);
        assert_eq!(shard.mask.load(Ordering::Relaxed), mask);
        let slots: usize = shards.iter().map(|s| s.slots.load().capacity()).sum();
        assert_eq!(slots, 4);
    }
}
