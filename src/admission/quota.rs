//! Direct (unkeyed) GCRA limiters on governor: a partner's quota for one class. Each answers
//! with what the `RateLimit` fields need: remaining requests and time to refill.
//!
//! # Sharded by core
//!
//! A quota with a burst of at least [`MIN_SHARD_BURST`] per core is split into one governor
//! limiter per core ([`crate::shards`]), each at `count / S` with its part of the burst, the
//! parts adding up to the whole: one partner sending from several cores at once writes no
//! common line. A request spends in its core's limiter, else in the first other one with room;
//! a refusal waits for the soonest. No more than the rate and its burst pass in all, but a
//! refusal may name a wait up to `S` emission intervals longer than one limiter would, and the
//! remaining count is the serving limiter's share scaled up, an estimate. Smaller quotas are
//! one limiter and answer exactly as governor does.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, RateLimiter};

use crate::clock::Clock;
use crate::config::Rate;
use crate::shards::{self, split, Padded};

type Direct = RateLimiter<NotKeyed, InMemoryState, Clock, StateInformationMiddleware>;

/// A quota is split over several cores only when each gets at least this much burst.
pub const MIN_SHARD_BURST: u32 = 16;

/// What a quota says after a check: enough for `RateLimit: "name";r=…;t=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    /// Requests that may still be sent at once.
    pub remaining: u32,
    /// Time until the quota is whole again (denied: until the next request may pass).
    pub reset: Duration,
}

/// One GCRA limiter (or one per core) enforcing a [`Rate`]. Cloning shares the state.
#[derive(Clone)]
pub struct Quota {
    rate: Rate,
    limiters: Arc<[Padded<Limiter>]>,
}

/// One core's limiter and the part of the burst it holds.
struct Limiter {
    limiter: Direct,
    burst: u32,
    /// Its emission interval (the quota's, times the number of limiters).
    interval: Duration,
}

impl Quota {
    pub fn new(rate: Rate, clock: Clock) -> Self {
        let fit = (rate.burst.get() / MIN_SHARD_BURST) as usize;
        Quota::split_over(rate, clock, shards::count().min(fit).max(1))
    }

    /// A quota split over exactly `n` limiters (each must get some burst).
    fn split_over(rate: Rate, clock: Clock, n: usize) -> Self {
        let interval = rate.replenish_interval() * n as u32;
        let limiter = |k: usize| {
            let part = split(u64::from(rate.burst.get()), n, k);
            let burst =
                NonZeroU32::new(u32::try_from(part).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
            let quota = match n {
                1 => rate.quota(),
                _ => governor::Quota::with_period(interval)
                    .unwrap_or_else(|| rate.quota())
                    .allow_burst(burst),
            };
            Padded(Limiter {
                limiter: RateLimiter::direct_with_clock(quota, clock.clone())
                    .with_middleware::<StateInformationMiddleware>(),
                burst: burst.get(),
                interval,
            })
        };
        Quota {
            rate,
            limiters: (0..n).map(limiter).collect(),
        }
    }

    /// The rate this quota enforces.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The limiter this core spends in first.
    #[inline]
    fn home(&self) -> usize {
        shards::home(self.limiters.len())
    }

    /// Where this quota's limiters are, for [`QuotaLines::prefetch`].
    pub fn lines(&self) -> QuotaLines {
        // Limiters are 128-byte aligned and at most MAX_SHARDS (16): the count fits below.
        let first = crate::memory::address_of(&*self.limiters);
        QuotaLines(first | (self.limiters.len().saturating_sub(1) & 0x7f))
    }

    /// What remains after a check passed in `limiter`: its share, scaled to the whole.
    fn allowed(&self, limiter: &Limiter, snapshot: StateSnapshot) -> Remaining {
        let left = snapshot.remaining_burst_capacity();
        let spent = limiter.burst.saturating_sub(left);
        let scale = self.limiters.len() as u32;
        Remaining {
            remaining: left.saturating_mul(scale).min(self.rate.burst.get()),
            reset: limiter.interval * spent,
        }
    }

    /// Spends one request: `Ok` with what remains, or `Err` with what the denial says.
    #[inline]
    pub fn check(&self, now: Nanos) -> Result<Remaining, Remaining> {
        self.check_n(now, 1)
    }

    /// Spends `n` requests at once (`n` ≥ 1; more than the burst is always refused, with the
    /// wait for a whole burst).
    #[inline]
    pub fn check_n(&self, now: Nanos, n: u32) -> Result<Remaining, Remaining> {
        self.pass_n(now, n).map(|passed| self.remaining(passed))
    }

    /// [`Quota::check_n`], leaving what remains to be worked out by [`Quota::remaining`] only
    /// if it is needed (a division: a request refused by a later check never needs it).
    #[inline]
    pub fn pass_n(&self, now: Nanos, n: u32) -> Result<Passed, Remaining> {
        let Some(n) = NonZeroU32::new(n).filter(|n| n.get() > 1) else {
            return self.spend(now, |l| l.check().map_err(Denial::NotUntil));
        };
        self.spend(now, |l| match l.check_n(n) {
            Ok(Ok(snapshot)) => Ok(snapshot),
            Ok(Err(not_until)) => Err(Denial::NotUntil(not_until)),
            Err(_insufficient) => Err(Denial::TooMany),
        })
    }

    /// What remains of this quota after `passed` (which it let through).
    #[inline]
    pub fn remaining(&self, passed: Passed) -> Remaining {
        match self.limiters.get(passed.limiter) {
            Some(limiter) => self.allowed(limiter, passed.snapshot),
            None => Remaining {
                remaining: 0,
                reset: Duration::ZERO,
            },
        }
    }

    /// Tries this core's limiter, then the others; the soonest wait if none admits.
    #[inline]
    fn spend(
        &self,
        now: Nanos,
        check: impl Fn(&Direct) -> Result<StateSnapshot, Denial>,
    ) -> Result<Passed, Remaining> {
        if let [only] = &*self.limiters {
            return check(&only.limiter)
                .map(|snapshot| Passed {
                    limiter: 0,
                    snapshot,
                })
                .map_err(|denial| Remaining {
                    remaining: 0,
                    reset: self.wait(denial, now),
                });
        }
        let mut soonest: Option<Duration> = None;
        for k in shards::from(self.home(), self.limiters.len()) {
            let limiter = &self.limiters[k];
            let wait = match check(&limiter.limiter) {
                Ok(snapshot) => {
                    return Ok(Passed {
                        limiter: k,
                        snapshot,
                    })
                }
                Err(denial) => self.wait(denial, now),
            };
            soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
        }
        Err(Remaining {
            remaining: 0,
            reset: soonest.unwrap_or_default(),
        })
    }

    /// How long one limiter's refusal says to wait.
    fn wait(&self, denial: Denial, now: Nanos) -> Duration {
        match denial {
            Denial::NotUntil(not_until) => not_until.wait_time_from(now),
            // More than a limiter's part of the burst at once: the wait for a whole burst.
            Denial::TooMany => self.rate.replenish_interval() * self.rate.burst.get(),
        }
    }

    /// True when two quotas share one state (a reload carried this one over).
    pub fn same_state(&self, other: &Quota) -> bool {
        Arc::ptr_eq(&self.limiters, &other.limiters)
    }
}

/// Where a [`Quota`]'s limiters are, as a number (the first one's address, their count less
/// one in the low bits): kept in a compact table so this core's limiter can be asked for before
/// the quota itself is read (see [`crate::memory`]). The default is no quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaLines(pub(crate) usize);

impl QuotaLines {
    /// Asks for this core's limiter to be brought into cache.
    #[inline]
    pub fn prefetch(self) {
        if self.0 != 0 {
            let count = (self.0 & 0x7f) + 1;
            let first = self.0 & !0x7f;
            let size = std::mem::size_of::<Padded<Limiter>>();
            crate::memory::prefetch_address(first.wrapping_add(shards::home(count) * size));
        }
    }
}

/// A request a [`Quota`] let through, what remains not yet worked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    limiter: usize,
    snapshot: StateSnapshot,
}

/// Why one limiter refused.
enum Denial {
    NotUntil(NotUntil<Nanos>),
    /// More than its burst at once.
    TooMany,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_rate;

    #[test]
    fn spends_the_burst_then_denies_with_the_wait() {
        let (clock, hand) = Clock::fake();
        let q = Quota::new(parse_rate("2/s burst 3").unwrap(), clock.clone());
        assert_eq!(
            q.check(clock.now()),
            Ok(Remaining {
                remaining: 2,
                reset: Duration::from_millis(500)
            })
        );
        assert_eq!(q.check(clock.now()).unwrap().remaining, 1);
        assert_eq!(q.check(clock.now()).unwrap().remaining, 0);
        let denied = q.check(clock.now()).unwrap_err();
        assert_eq!(
            denied,
            Remaining {
                remaining: 0,
                reset: Duration::from_millis(500)
            }
        );
        hand.advance(Duration::from_millis(499));
        assert_eq!(
            q.check(clock.now()).unwrap_err().reset,
            Duration::from_millis(1)
        );
        hand.advance(Duration::from_millis(1));
        assert_eq!(q.check(clock.now()).unwrap().remaining, 0);
    }

    #[test]
    fn a_per_minute_rate_waits_the_full_interval() {
        let (clock, hand) = Clock::fake();
        let q = Quota::new(parse_rate("2/min").unwrap(), clock.clone());
        assert!(q.check(clock.now()).is_ok());
        assert!(q.check(clock.now()).is_ok());
        assert_eq!(
            q.check(clock.now()).unwrap_err().reset,
            Duration::from_secs(30)
        );
        hand.advance(Duration::from_secs(10));
        assert_eq!(
            q.check(clock.now()).unwrap_err().reset,
            Duration::from_secs(20)
        );
    }

    #[test]
    fn split_over_cores_it_passes_the_whole_and_no_more() {
        let (clock, hand) = Clock::fake();
        let rate = parse_rate("100/s").unwrap();
        for n in 1..=4 {
            let q = Quota::split_over(rate, clock.clone(), n);
            let burst = std::iter::from_fn(|| q.check(clock.now()).ok()).count();
            assert_eq!(burst, 100, "{n} limiters");
            let mut later = 0;
            for _ in 0..1000 {
                hand.advance(Duration::from_millis(1));
                later += usize::from(q.check(clock.now()).is_ok());
            }
            assert!((100 - n..=100).contains(&later), "{n} limiters: {later}");
            hand.advance(Duration::from_secs(5));
        }
        let small = Quota::new(parse_rate("20/s").unwrap(), clock.clone());
        assert_eq!(small.limiters.len(), 1);
        for n in [1, 2, 16] {
            let q = Quota::split_over(rate, clock.clone(), n);
            let lines = q.lines();
            assert_eq!(lines.0 & !0x7f, crate::memory::address_of(&*q.limiters));
            assert_eq!((lines.0 & 0x7f) + 1, n);
            lines.prefetch();
        }
    }
}
