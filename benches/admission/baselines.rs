//! The per-account check, ours and the alternatives, behind one trait so one harness runs all.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;

use billgate::admission::AccountLimiter;
use billgate::clock::Clock;
use billgate::config::Rate;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::workload::Req;

/// One per-account limiter: `check` spends one request for the request's account.
pub trait PerAccount: Send + Sync {
    fn name(&self) -> &'static str;
    /// Spends one request for the account of `req`: given as `text` (an owned string:
    /// governor's limiter keyed by `String` takes a `&String`) and as `req.account_u64`.
    #[allow(clippy::ptr_arg)]
    fn check(&self, req: &Req, text: &String) -> bool;
}

fn huge() -> Quota {
    Quota::per_second(NonZeroU32::MAX)
}

/// billgate's own [`AccountLimiter`].
pub struct Ours {
    pub limiter: AccountLimiter,
    pub clock: Clock,
}

impl Ours {
    pub fn new(rate: Rate, ceiling: usize) -> Ours {
        let clock = Clock::real();
        Ours {
            limiter: AccountLimiter::new(rate, ceiling, clock.clone()),
            clock,
        }
    }
}

impl PerAccount for Ours {
    fn name(&self) -> &'static str {
        "billgate"
    }

    fn check(&self, _: &Req, text: &String) -> bool {
        self.limiter.check(text, self.clock.now()).is_ok()
    }
}

/// governor's keyed limiter on its default dashmap store, keyed by the account string.
pub struct GovernorString(pub DefaultKeyedRateLimiter<String>);

impl GovernorString {
    pub fn new() -> Self {
        GovernorString(governor::RateLimiter::dashmap(huge()))
    }
}

impl PerAccount for GovernorString {
    fn name(&self) -> &'static str {
        "governor_dashmap_string"
    }

    fn check(&self, _: &Req, text: &String) -> bool {
        self.0.check_key(text).is_ok()
    }
}

/// governor's keyed limiter on its default dashmap store, keyed by the account as a `u64`.
pub struct GovernorU64(pub DefaultKeyedRateLimiter<u64>);

impl GovernorU64 {
    pub fn new() -> Self {
        GovernorU64(governor::RateLimiter::dashmap(huge()))
    }
}

impl PerAccount for GovernorU64 {
    fn name(&self) -> &'static str {
        "governor_dashmap_u64"
    }

    fn check(&self, req: &Req, _: &String) -> bool {
        self.0.check_key(&req.account_u64).is_ok()
    }
}

/// The obvious hand-written one: a token bucket per account (kept as its theoretical arrival
/// time, GCRA's form of a token bucket) in a `std` `HashMap` behind one `std` `Mutex`.
pub struct MutexHashMap {
    map: Mutex<HashMap<String, u64>>,
    clock: Clock,
    interval: u64,
    tolerance: u64,
}

impl MutexHashMap {
    pub fn new() -> Self {
        MutexHashMap {
            map: Mutex::new(HashMap::new()),
            clock: Clock::real(),
            interval: 1,
            tolerance: u64::from(u32::MAX),
        }
    }
}

impl PerAccount for MutexHashMap {
    fn name(&self) -> &'static str {
        "mutex_hashmap"
    }

    fn check(&self, _: &Req, text: &String) -> bool {
        let now = self.clock.now().as_u64();
        let Ok(mut map) = self.map.lock() else {
            return false;
        };
        let account = text.as_str();
        let tat = match map.get_mut(account) {
            Some(tat) => tat,
            None => map.entry(account.to_owned()).or_insert(now),
        };
        if now + self.tolerance < *tat {
            return false;
        }
        *tat = (*tat).max(now) + self.interval;
        true
    }
}
