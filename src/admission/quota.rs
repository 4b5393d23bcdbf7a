//! Direct (unkeyed) GCRA limiters: a partner's quota for one class, and the biller's budget.
//! Each answers with what the `RateLimit` fields need: remaining requests and time to refill.
//!
//! The arithmetic is governor's GCRA step for step (emission interval `t`, tolerance
//! `τ = t × (burst − 1)`, one `AtomicU64` theoretical arrival time updated by compare-and-swap),
//! but on the `now` the caller read once for the whole decision instead of a clock read per
//! limiter, and with the state on a cache line of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::nanos::Nanos;

use crate::clock::Clock;
use crate::config::Rate;

/// What a quota says after a check: enough for `RateLimit: "name";r=…;t=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    /// Requests that may still be sent at once.
    pub remaining: u32,
    /// Time until the quota is whole again (denied: until the next request may pass).
    pub reset: Duration,
}

/// The theoretical arrival time in nanoseconds on the clock (0: never used), alone on its
/// cache line so two partners' quotas never share one.
#[repr(align(64))]
#[derive(Default)]
struct State(AtomicU64);

/// One GCRA limiter enforcing a [`Rate`]. Cloning shares the state.
#[derive(Clone)]
pub struct Quota {
    rate: Rate,
    /// Emission interval and tolerance, in nanoseconds.
    t: u64,
    tau: u64,
    /// `rate.replenish_interval()`, kept: computing it divides.
    interval: Duration,
    state: Arc<State>,
}

impl Quota {
    /// A fresh quota (its whole burst available). Its checks must be given readings of `clock`,
    /// the clock every limiter of a gate shares.
    pub fn new(rate: Rate, clock: Clock) -> Self {
        let _ = clock;
        let t = u64::try_from(rate.replenish_interval().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        Quota {
            rate,
            t,
            tau: t.saturating_mul(u64::from(rate.burst.get() - 1)),
            interval: rate.replenish_interval(),
            state: Arc::default(),
        }
    }

    /// The rate this quota enforces.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Spends one request at `now`: `Ok` with what remains, or `Err` with what the denial says.
    #[inline]
    pub fn check(&self, now: Nanos) -> Result<Remaining, Remaining> {
        let (now, t, tau) = (now.as_u64(), self.t, self.tau);
        let state = &self.state.0;
        let mut seen = state.load(Ordering::Acquire);
        loop {
            let tat = if seen == 0 { now } else { seen };
            let earliest = tat.saturating_sub(tau);
            if now < earliest {
                return Err(Remaining {
                    remaining: 0,
                    reset: Duration::from_nanos(earliest - now),
                });
            }
            let next = tat.max(now).saturating_add(t);
            match state.compare_exchange_weak(seen, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // governor's `remaining_burst_capacity` for this outcome.
                    let whole = tau.saturating_add(t);
                    let room = now.saturating_add(whole).saturating_sub(next).min(whole);
                    let remaining = u32::try_from(room / t).unwrap_or(u32::MAX);
                    let spent = self.rate.burst.get().saturating_sub(remaining);
                    return Ok(Remaining {
                        remaining,
                        reset: self.interval.saturating_mul(spent),
                    });
                }
                Err(actual) => seen = actual,
            }
        }
    }

    /// True when two quotas share one state (a reload carried this one over).
    pub fn same_state(&self, other: &Quota) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
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
    fn threads_racing_share_the_burst_exactly() {
        let (clock, _) = Clock::fake();
        let q = Quota::new(parse_rate("1000/h").unwrap(), clock.clone());
        let admitted: usize = std::thread::scope(|s| {
            let spend = || (0..2_000).filter(|_| q.check(clock.now()).is_ok()).count();
            let (a, b) = (s.spawn(spend), s.spawn(spend));
            a.join().unwrap() + b.join().unwrap()
        });
        assert_eq!(admitted, 1_000);
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
