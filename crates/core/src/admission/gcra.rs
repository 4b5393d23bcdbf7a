//! The generic cell rate algorithm, governor's step for step, on an arrival time the caller
//! keeps in an `AtomicU64` beside whatever else it reads: a partner's class quota (one cell per
//! core, [`super::Quota`]) and the biller's capacity levels ([`super::Budget`]).
//!
//! governor's own limiter reads its clock on every check and keeps its arrival time behind its
//! own layout; a decision already holds one clock reading for all its checks, and its cells are
//! laid out per core. The arithmetic is governor's: emission interval `t`, tolerance
//! `tau = t × (burst − 1)`, a request of `n` cells passing at `now` unless
//! `now < tat + t × (n − 1) − tau`, and then moving the arrival time to
//! `max(tat, now) + t × n`. An arrival time of 0 is a cell never spent, as governor's is. The
//! tests check the answers against governor's limiter on the same clock.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::nanos;

/// One cell's parameters, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// The emission interval: one request per `t`.
    t: u64,
    /// How far ahead of `now` the arrival time may run: `t × (burst − 1)`.
    tau: u64,
}

/// Why a cell refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not before this time (on the caller's clock).
    Until(u64),
    /// More cells at once than the burst holds: never.
    TooMany,
}

impl Gcra {
    /// One request per `interval` (at least a nanosecond), `burst` at once.
    pub fn new(interval: Duration, burst: NonZeroU32) -> Gcra {
        Gcra::from_nanos(nanos(interval).max(1), burst)
    }

    /// [`Gcra::new`] for an interval already in nanoseconds (as [`Gcra::t`] gives it back):
    /// a multiplication, cheap enough to redo per request where a word of room counts.
    #[inline]
    pub fn from_nanos(t: u64, burst: NonZeroU32) -> Gcra {
        Gcra {
            t,
            tau: t.saturating_mul(u64::from(burst.get() - 1)),
        }
    }

    /// The emission interval in nanoseconds.
    #[inline]
    pub fn t(&self) -> u64 {
        self.t
    }

    /// The earliest time `n` more cells may pass, given arrival time `tat`.
    #[inline]
    pub fn earliest(&self, tat: u64, n: u32) -> u64 {
        tat.saturating_add(self.extra(n)).saturating_sub(self.tau)
    }

    /// The arrival time after `n` cells pass at `now`.
    #[inline]
    pub fn next(&self, tat: u64, now: u64, n: u32) -> u64 {
        tat.max(now)
            .saturating_add(self.t)
            .saturating_add(self.extra(n))
    }

    /// The weight of the cells after the first of `n`.
    #[inline]
    fn extra(&self, n: u32) -> u64 {
        self.t.saturating_mul(u64::from(n.saturating_sub(1)))
    }

    /// Spends `n` cells (`n` ≥ 1) of the cell whose arrival time is `tat`, at `now`, by
    /// compare-and-swap: the new arrival time, or why not.
    #[inline]
    pub fn spend(&self, tat: &AtomicU64, now: u64, n: u32) -> Result<u64, Refused> {
        if self.extra(n) > self.tau {
            return Err(Refused::TooMany);
        }
        let mut seen = tat.load(Ordering::Acquire);
        loop {
            let earliest = self.earliest(seen, n);
            if now < earliest {
                return Err(Refused::Until(earliest));
            }
            let next = self.next(seen, now, n);
            match tat.compare_exchange_weak(seen, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(next),
                Err(current) => seen = current,
            }
        }
    }

    /// Requests that could pass at once at `now`, the arrival time having become `tat` then
    /// (governor's `remaining_burst_capacity`).
    #[inline]
    pub fn remaining(&self, now: u64, tat: u64) -> u32 {
        let whole = self.tau.saturating_add(self.t);
        let left = now.saturating_add(whole).saturating_sub(tat).min(whole);
        u32::try_from(left / self.t).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use governor::middleware::StateInformationMiddleware;
    use governor::{Quota, RateLimiter};

    /// A small deterministic generator for the sequences below.
    fn steps(seed: u64, len: usize) -> impl Iterator<Item = (u64, u32)> {
        let mut x = seed;
        (0..len).map(move |_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let advance = (x >> 33) % 400; // 0–399 ms
            let n = 1 + ((x >> 13) % 4) as u32; // 1–4 cells
            (advance, n)
        })
    }

    #[test]
    fn answers_as_governors_limiter_on_the_same_clock() {
        for (interval_ms, burst) in [(100, 1), (100, 3), (250, 5), (7, 20), (1000, 2)] {
            let (clock, hand) = Clock::fake();
            let burst = NonZeroU32::new(burst).unwrap();
            let interval = Duration::from_millis(interval_ms);
            let quota = Quota::with_period(interval).unwrap().allow_burst(burst);
            let governor = RateLimiter::direct_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>();
            let gcra = Gcra::new(interval, burst);
            let tat = AtomicU64::new(0);
            for (step, (advance, n)) in steps(interval_ms ^ u64::from(burst.get()), 400).enumerate()
            {
                // Half the steps come all at once, to exhaust the burst.
                if step % 2 == 0 {
                    hand.advance(Duration::from_millis(advance));
                }
                let now = clock.now();
                let ours = gcra.spend(&tat, now.as_u64(), n);
                let theirs = governor.check_n(NonZeroU32::new(n).unwrap());
                let at = format!("{interval_ms}ms burst {burst}, step {step}, {n} cells");
                match (ours, theirs) {
                    (Ok(after), Ok(Ok(snapshot))) => assert_eq!(
                        gcra.remaining(now.as_u64(), after),
                        snapshot.remaining_burst_capacity(),
                        "{at}"
                    ),
                    (Err(Refused::Until(earliest)), Ok(Err(not_until))) => assert_eq!(
                        Duration::from_nanos(earliest - now.as_u64()),
                        not_until.wait_time_from(now),
                        "{at}"
                    ),
                    (Err(Refused::TooMany), Err(_)) => {}
                    (ours, theirs) => panic!("{at}: ours {ours:?}, governor's {theirs:?}"),
                }
            }
        }
    }

    #[test]
    fn a_fresh_cell_holds_the_whole_burst() {
        let gcra = Gcra::new(Duration::from_millis(500), NonZeroU32::new(3).unwrap());
        let tat = AtomicU64::new(0);
        let after = gcra.spend(&tat, 0, 1).unwrap();
        assert_eq!(gcra.remaining(0, after), 2);
        assert_eq!(gcra.spend(&tat, 0, 3), Err(Refused::Until(500_000_000)));
        assert_eq!(gcra.spend(&tat, 0, 4), Err(Refused::TooMany));
        let after = gcra.spend(&tat, 0, 2).unwrap();
        assert_eq!(gcra.remaining(0, after), 0);
        assert_eq!(tat.load(Ordering::Relaxed), 1_500_000_000);
    }
}
