//! Direct (unkeyed) GCRA limiters: a partner's quota for one class, and the biller's budget.
//! Each answers with what the `RateLimit` fields need: remaining requests and time to refill.

use std::sync::Arc;
use std::time::Duration;

use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::RateLimiter;

use crate::clock::Clock;
use crate::config::Rate;

type Direct = RateLimiter<NotKeyed, InMemoryState, Clock, StateInformationMiddleware>;

/// What a quota says after a check: enough for `RateLimit: "name";r=…;t=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    /// Requests that may still be sent at once.
    pub remaining: u32,
    /// Time until the quota is whole again (denied: until the next request may pass).
    pub reset: Duration,
}

/// One GCRA limiter enforcing a [`Rate`]. Cloning shares the state.
#[derive(Clone)]
pub struct Quota {
    rate: Rate,
    limiter: Arc<Direct>,
}

impl Quota {
    pub fn new(rate: Rate, clock: Clock) -> Self {
        Quota {
            rate,
            limiter: Arc::new(
                RateLimiter::direct_with_clock(rate.quota(), clock)
                    .with_middleware::<StateInformationMiddleware>(),
            ),
        }
    }

    /// The rate this quota enforces.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Spends one request: `Ok` with what remains, or `Err` with what the denial says.
    #[inline]
    pub fn check(&self, now: Nanos) -> Result<Remaining, Remaining> {
        match self.limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let spent = self.rate.burst.get().saturating_sub(remaining);
                Ok(Remaining {
                    remaining,
                    reset: self.rate.replenish_interval() * spent,
                })
            }
            Err(not_until) => Err(Remaining {
                remaining: 0,
                reset: not_until.wait_time_from(now),
            }),
        }
    }

    /// Spends `n` requests at once (`n` ≥ 1; more than the burst is always refused, with the
    /// wait for a whole burst).
    #[inline]
    pub fn check_n(&self, now: Nanos, n: u32) -> Result<Remaining, Remaining> {
        let Some(n) = std::num::NonZeroU32::new(n).filter(|n| n.get() > 1) else {
            return self.check(now);
        };
        match self.limiter.check_n(n) {
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                let spent = self.rate.burst.get().saturating_sub(remaining);
                Ok(Remaining {
                    remaining,
                    reset: self.rate.replenish_interval() * spent,
                })
            }
            Ok(Err(not_until)) => Err(Remaining {
                remaining: 0,
                reset: not_until.wait_time_from(now),
            }),
            Err(_insufficient) => Err(Remaining {
                remaining: 0,
                reset: self.rate.replenish_interval() * self.rate.burst.get(),
            }),
        }
    }

    /// Asks for the limiter's state to be brought into cache (see [`crate::memory`]).
    #[inline]
    pub fn prefetch(&self) {
        crate::memory::prefetch(&*self.limiter);
    }

    /// True when two quotas share one state (a reload carried this one over).
    pub fn same_state(&self, other: &Quota) -> bool {
        Arc::ptr_eq(&self.limiter, &other.limiter)
    }
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
}
