//! The biller's capacity, shared by class: payments may use all of it, user inquiries all but
//! the payment reserve, scheduled polling all but both reserves. Scheduled polling is therefore
//! shed first, user inquiries next, payments last.
//!
//! # Sharded by core
//!
//! Every level (total, inquiries, scheduled) is a GCRA ([`Gcra`], governor's) split over
//! the shards of [`crate::shards`]: shard `k` runs each level at rate `count / S` (emission
//! interval `S × t`) with its part of the burst, the parts adding up to the whole. A request
//! spends in its core's shard, and tries the other shards only when its own refuses, so two
//! cores admitting requests write no common line, and in all no more than the capacity and its
//! burst pass. A shard checks every level a class answers to before spending any, so a refusal
//! spends nothing. The price: a refusal waits for the soonest shard, which can be up to `S`
//! emission intervals later than one unsharded limiter would say. Small budgets (a burst under
//! [`MIN_SHARD_BURST`] per shard at the smallest level) are not split, and answer exactly as
//! one limiter.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::nanos::Nanos;

use super::gcra::Gcra;
use crate::config::{Class, Rate};
use crate::shards::{self, split, Padded};

/// A level is split over several shards only when each gets at least this much burst.
pub const MIN_SHARD_BURST: u64 = 16;

/// The levels, by index into a shard.
const TOTAL: usize = 0;
const INQUIRIES: usize = 1;
const SCHEDULED: usize = 2;

/// One level's GCRA parameters in one shard (nanoseconds).
#[derive(Debug, Clone, Copy)]
enum Level {
    /// The class does not answer to this level (its reserve is zero).
    Absent,
    /// This shard's part of the burst is zero: it never admits at this level.
    Closed,
    /// This shard's part of the level's rate and burst.
    Open(Gcra),
}

/// A shard: its arrival times and, beside them on the same line, its read-only parameters.
#[derive(Debug)]
struct Shard {
    tat: [AtomicU64; 3],
    levels: [Level; 3],
}

/// The capacity budget. Cloning shares its state (a reload carries it over).
#[derive(Clone)]
pub struct Budget {
    settings: (Rate, u64, u64),
    shards: Arc<[Padded<Shard>]>,
}

/// `rate` × `share`, at least one request per period.
fn scaled(rate: Rate, share: f64) -> Rate {
    let scale = |n: NonZeroU32| {
        let scaled = (f64::from(n.get()) * share).floor();
        NonZeroU32::new(scaled as u32).unwrap_or(NonZeroU32::MIN)
    };
    Rate {
        count: scale(rate.count),
        period: rate.period,
        burst: scale(rate.burst),
    }
}

impl Budget {
    pub fn new(capacity: Rate, payment_reserve: f64, user_reserve: f64) -> Budget {
        let level = |share: f64| (share < 1.0).then(|| scaled(capacity, share));
        let rates = [
            Some(capacity),
            level(1.0 - payment_reserve),
            level(1.0 - payment_reserve - user_reserve),
        ];
        Budget::with_shards(capacity, payment_reserve, user_reserve, rates, None)
    }

    /// As [`Budget::new`], split over exactly `shards` shards (tests).
    #[cfg(test)]
    fn split_over(capacity: Rate, payment_reserve: f64, user_reserve: f64, n: usize) -> Budget {
        let level = |share: f64| (share < 1.0).then(|| scaled(capacity, share));
        let rates = [
            Some(capacity),
            level(1.0 - payment_reserve),
            level(1.0 - payment_reserve - user_reserve),
        ];
        Budget::with_shards(capacity, payment_reserve, user_reserve, rates, Some(n))
    }

    fn with_shards(
        capacity: Rate,
        payment_reserve: f64,
        user_reserve: f64,
        rates: [Option<Rate>; 3],
        shards: Option<usize>,
    ) -> Budget {
        let smallest = rates
            .iter()
            .flatten()
            .map(|r| u64::from(r.burst.get()))
            .min()
            .unwrap_or(1);
        let n = shards.unwrap_or_else(|| {
            let fit = usize::try_from(smallest / MIN_SHARD_BURST).unwrap_or(usize::MAX);
            shards::count().min(fit).max(1)
        });
        let scale = u32::try_from(n).unwrap_or(u32::MAX);
        let shard = |k: usize| Shard {
            tat: Default::default(),
            levels: rates.map(|rate| match rate {
                None => Level::Absent,
                Some(rate) => match split(u64::from(rate.burst.get()), n, k) {
                    0 => Level::Closed,
                    burst => {
                        let burst = u32::try_from(burst).unwrap_or(u32::MAX);
                        Level::Open(Gcra::new(
                            rate.replenish_interval().saturating_mul(scale),
                            NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
                        ))
                    }
                },
            }),
        };
        Budget {
            settings: Self::key(capacity, payment_reserve, user_reserve),
            shards: (0..n).map(|k| Padded(shard(k))).collect(),
        }
    }

    fn key(capacity: Rate, payment_reserve: f64, user_reserve: f64) -> (Rate, u64, u64) {
        (capacity, payment_reserve.to_bits(), user_reserve.to_bits())
    }

    pub(super) fn same(&self, capacity: Rate, payment_reserve: f64, user_reserve: f64) -> bool {
        self.settings == Self::key(capacity, payment_reserve, user_reserve)
    }

    /// True when two budgets share one state (a reload carried this one over).
    pub fn same_state(&self, other: &Budget) -> bool {
        Arc::ptr_eq(&self.shards, &other.shards)
    }

    /// Shards the budget is split over.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Spends one request of `class` at `now`: in this core's shard, else in the first other
    /// shard with room; `Err(wait)` when every shard refuses, `wait` being the soonest any
    /// shard would admit.
    #[inline]
    pub fn check(&self, class: Class, now: Nanos) -> Result<(), Duration> {
        let levels: &[usize] = match class {
            Class::Payment => &[TOTAL],
            Class::InquiryUser => &[INQUIRIES, TOTAL],
            Class::InquiryScheduled => &[SCHEDULED, INQUIRIES, TOTAL],
        };
        let now = now.as_u64();
        let n = self.shards.len();
        let mut soonest = u64::MAX;
        for k in shards::from(shards::home(n), n) {
            match self.shards[k].spend(levels, now) {
                Ok(()) => return Ok(()),
                Err(wait) => soonest = soonest.min(wait),
            }
        }
        Err(Duration::from_nanos(soonest))
    }
}

impl Shard {
    /// Spends one request at every level in `levels`, or at none: `Err(wait)` until all of
    /// them would admit (`u64::MAX` when a level is closed in this shard).
    #[inline]
    fn spend(&self, levels: &[usize], now: u64) -> Result<(), u64> {
        // Another core stealing from this shard may change an arrival time between the check
        // and the swap; then check again. The swaps of the levels before it have spent there,
        // which only errs on the side of admitting less.
        'retry: loop {
            let mut seen = [0u64; 3];
            let mut wait = 0u64;
            for &level in levels {
                let gcra = match self.levels[level] {
                    Level::Absent => continue,
                    Level::Closed => return Err(u64::MAX),
                    Level::Open(gcra) => gcra,
                };
                let tat = self.tat[level].load(Ordering::Acquire);
                let earliest = gcra.earliest(tat, 1);
                if now < earliest {
                    wait = wait.max(earliest - now);
                }
                seen[level] = tat;
            }
            if wait > 0 {
                return Err(wait);
            }
            for &level in levels {
                let Level::Open(gcra) = self.levels[level] else {
                    continue;
                };
                let tat = seen[level];
                let next = gcra.next(tat, now, 1);
                if self.tat[level]
                    .compare_exchange(tat, next, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    continue 'retry;
                }
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_rate;

    fn at(ms: u64) -> Nanos {
        Nanos::from(Duration::from_millis(ms))
    }

    #[test]
    fn unsplit_it_answers_as_one_limiter() {
        let budget = Budget::split_over(parse_rate("3/s").unwrap(), 0.2, 0.2, 1);
        for _ in 0..3 {
            assert_eq!(budget.check(Class::Payment, at(0)), Ok(()));
        }
        assert_eq!(
            budget.check(Class::Payment, at(0)),
            Err(Duration::from_nanos(333_333_333))
        );
        assert_eq!(budget.check(Class::Payment, at(334)), Ok(()));
    }

    #[test]
    fn split_it_never_passes_more_than_the_whole() {
        let capacity = parse_rate("100/s").unwrap();
        for n in 1..=4 {
            let budget = Budget::split_over(capacity, 0.0, 0.0, n);
            // The whole burst at once, then one second's worth over one second: never more,
            // and less only by what the shards' coarser intervals have not yet given back.
            let burst = std::iter::from_fn(|| budget.check(Class::Payment, at(0)).ok()).count();
            assert_eq!(burst, 100, "{n} shards");
            let later = (1..=1000)
                .filter(|&ms| budget.check(Class::Payment, at(ms)).is_ok())
                .count();
            assert!((100 - n..=100).contains(&later), "{n} shards: {later}");
        }
    }

    #[test]
    fn classes_keep_their_reserves_and_a_refusal_spends_nothing() {
        // 100/s: payments all of it, user inquiries 80, scheduled polls 60.
        let budget = Budget::split_over(parse_rate("100/s").unwrap(), 0.2, 0.2, 2);
        let polls = std::iter::from_fn(|| budget.check(Class::InquiryScheduled, at(0)).ok());
        assert_eq!(polls.count(), 60);
        let users = std::iter::from_fn(|| budget.check(Class::InquiryUser, at(0)).ok());
        assert_eq!(users.count(), 20);
        let payments = std::iter::from_fn(|| budget.check(Class::Payment, at(0)).ok());
        assert_eq!(payments.count(), 20);
        assert!(budget.check(Class::Payment, at(0)).is_err());
    }

    #[test]
    fn small_budgets_are_not_split() {
        let budget = Budget::new(parse_rate("3/s").unwrap(), 0.2, 0.2);
        assert_eq!(budget.shards(), 1);
        let big = Budget::new(parse_rate("100000/s").unwrap(), 0.2, 0.2);
        assert_eq!(big.shards(), shards::count());
    }
}
