//! The per-(partner, account) limiter: one GCRA state per bill account, in a bounded map.
//!
//! Accounts are keyed by a keyed hash of the account number (64 bits, seeded per table so a
//! partner cannot aim collisions), so a lookup allocates nothing. The map has a ceiling; idle
//! accounts — those whose state is indistinguishable from a fresh one — are evicted by a sweep
//! that runs beside the request path.

use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{NotUntil, RateLimiter};

use crate::clock::Clock;
use crate::config::Rate;

/// Hashes a `u64` key to itself: keys are already uniformly distributed keyed hashes.
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if a non-u64 key is ever hashed; fold the bytes in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type AccountMap = DashMap<u64, InMemoryState, BuildHasherDefault<IdentityHasher>>;

/// A governor keyed state store over a dashmap of account hashes, counting its entries.
/// Shared (`Arc`) between the limiter and its owner, which reads its size and evictions.
#[derive(Default, Clone)]
pub struct AccountStore(Arc<AccountMapInner>);

#[derive(Default)]
pub struct AccountMapInner {
    map: AccountMap,
    len: AtomicUsize,
    evicted: AtomicU64,
}

impl StateStore for AccountStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let inner = &*self.0;
        if let Some(state) = inner.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let entry = inner.map.entry(*key).or_insert_with(|| {
            inner.len.fetch_add(1, Ordering::Relaxed);
            InMemoryState::default()
        });
        entry.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<u64> for AccountStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let inner = &*self.0;
        let mut removed = 0usize;
        inner.map.retain(|_, state| {
            // Read the theoretical arrival time without changing it.
            let tat = state.measure_and_replace(&NotKeyed::NonKey, |tat| {
                Err::<((), Nanos), Option<Nanos>>(tat)
            });
            let keep = match tat {
                Err(Some(tat)) => tat > drop_below,
                _ => false,
            };
            if !keep {
                removed += 1;
            }
            keep
        });
        inner.len.fetch_sub(removed, Ordering::Relaxed);
        inner.evicted.fetch_add(removed as u64, Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        self.0.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why an account was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountDenial {
    /// The account was asked about too often; retry after this long.
    TooOften(std::time::Duration),
    /// The table is at its ceiling and this account is not in it.
    TableFull,
}

/// One partner's per-account limiter: a rate per account, at most `ceiling` accounts tracked.
pub struct AccountLimiter {
    rate: Rate,
    ceiling: usize,
    seed: RandomState,
    store: AccountStore,
    limiter: RateLimiter<u64, AccountStore, Clock, NoOpMiddleware<Nanos>>,
}

impl AccountLimiter {
    /// A limiter allowing `rate` per account for at most `ceiling` accounts.
    pub fn new(rate: Rate, ceiling: usize, clock: Clock) -> Self {
        let store = AccountStore::default();
        AccountLimiter {
            rate,
            ceiling: ceiling.max(1),
            seed: RandomState::new(),
            store: store.clone(),
            limiter: RateLimiter::new(rate.quota(), store, clock),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    pub fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// The key an account number is tracked under.
    #[inline]
    pub fn key(&self, account: &str) -> u64 {
        self.seed.hash_one(account.as_bytes())
    }

    /// Spends one request for `account`. Never allocates for an account already tracked.
    pub fn check(&self, account: &str, now: Nanos) -> Result<(), AccountDenial> {
        let key = self.key(account);
        let store = &self.store;
        // Over the ceiling a new account cannot be tracked, so it is refused rather than let
        // through unlimited; known accounts are still served.
        if store.len() >= self.ceiling && !store.0.map.contains_key(&key) {
            return Err(AccountDenial::TableFull);
        }
        self.limiter
            .check_key(&key)
            .map_err(|not_until: NotUntil<Nanos>| {
                AccountDenial::TooOften(not_until.wait_time_from(now))
            })
    }

    /// Evicts every account whose state is indistinguishable from a fresh one.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
    }

    /// Accounts tracked now.
    pub fn tracked(&self) -> usize {
        self.store.len()
    }

    /// Accounts evicted by sweeps so far.
    pub fn evicted(&self) -> u64 {
        self.store.0.evicted.load(Ordering::Relaxed)
    }
}
