//! The biller's capacity, shared by class: payments may use all of it, user inquiries all but
//! the payment reserve, scheduled polling all but both reserves. Scheduled polling is therefore
//! shed first, user inquiries next, payments last.
//!
//! # A ceiling over every window
//!
//! `capacity = "N/s"` is a ceiling: in every window of one second (of the rate's period), the
//! first after a start or a reload included, at most N requests pass. A GCRA alone cannot hold
//! that: started full, it lets its whole burst through at once and then N more within the same
//! second (a 400/s biller got 629 calls in the first second of a flood). So each level is two
//! checks, both of which must pass:
//!
//! - a sliding window: a count of admissions, and for each of the last [`STEPS`] steps of the
//!   period (10 ms of a second) the count when the step's first admission came. An admission
//!   counts as if it came at the end of its step, so it leaves the window at most one step
//!   late, never early; the window holds at most N, exactly, from the start.
//! - the GCRA ([`Gcra`], governor's) at rate N per period with the rate's burst (N unless
//!   `burst M` says less): how many may pass at once.
//!
//! A reload that keeps the settings keeps the budget; one that changes them starts a new one
//! seeded with what the old one admitted in the last period, so the window spanning the reload
//! holds too.
//!
//! # Sharded by core
//!
//! Every level (total, inquiries, scheduled) is split over the shards of [`crate::shards`]:
//! shard `k` runs each level at rate `count / S` (emission interval `S × t`) with its part of
//! the burst and of the window's count, the parts adding up to the whole. A request spends in
//! its core's shard, and tries the other shards only when its own refuses, so two cores
//! admitting requests write no common line, and in all no more than the capacity pass in any
//! window. A shard checks every level a class answers to before spending any, so a refusal
//! spends nothing. The price: a refusal waits for the soonest shard, which can be up to `S`
//! emission intervals later than one unsharded limiter would say. Small budgets (a burst under
//! [`MIN_SHARD_BURST`] per shard at the smallest level) are not split, and answer exactly as
//! one limiter.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::nanos::Nanos;

use super::gcra::Gcra;
use crate::clock::nanos;
use crate::config::{Class, Rate};
use crate::shards::{self, split, Padded};

/// A level is split over several shards only when each gets at least this much burst.
pub const MIN_SHARD_BURST: u64 = 16;

/// The steps a period is counted in: an admission leaves the window at most a step late.
pub const STEPS: u64 = 100;

/// Marks kept per level: two periods' worth, so that a thread whose clock reading is up to a
/// period old still finds the marks of its window.
const MARKS: u64 = 2 * STEPS + 2;

/// The levels, by index into a shard.
const TOTAL: usize = 0;
const INQUIRIES: usize = 1;
const SCHEDULED: usize = 2;

/// One level's parameters in one shard.
#[derive(Debug, Clone, Copy)]
enum Level {
    /// The class does not answer to this level (its reserve is zero).
    Absent,
    /// This shard's part of the burst or of the count is zero: it never admits at this level.
    Closed,
    /// This shard's part of the level's rate and burst, and of its count per window.
    Open(Gcra, u64),
}

/// Where a level's count stood when a step's first admission came.
#[derive(Debug, Default)]
struct Mark {
    /// The step's number plus one; 0 for a mark never set.
    step: AtomicU64,
    /// Admissions before the step's first.
    before: AtomicU64,
}

/// A shard: its arrival times and counts and, beside them, its read-only parameters; the marks
/// are read through a pointer, one line of them per check.
#[derive(Debug)]
struct Shard {
    tat: [AtomicU64; 3],
    /// Admissions so far, per level.
    counts: [AtomicU64; 3],
    levels: [Level; 3],
    /// The window's length and its step, in nanoseconds.
    period: u64,
    step: u64,
    /// Per level, [`MARKS`] marks by step number modulo [`MARKS`] (empty for a level not
    /// open).
    marks: [Box<[Mark]>; 3],
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

/// Each level's rate: the whole capacity, the inquiries' share, the scheduled polls' share
/// (`None` for a level whose reserve is zero).
pub(crate) fn level_rates(
    capacity: Rate,
    payment_reserve: f64,
    user_reserve: f64,
) -> [Option<Rate>; 3] {
    let level = |share: f64| (share < 1.0).then(|| scaled(capacity, share));
    [
        Some(capacity),
        level(1.0 - payment_reserve),
        level(1.0 - payment_reserve - user_reserve),
    ]
}

impl Budget {
    /// A fresh budget: nothing admitted yet.
    pub fn new(capacity: Rate, payment_reserve: f64, user_reserve: f64) -> Budget {
        let rates = level_rates(capacity, payment_reserve, user_reserve);
        Budget::with_shards(capacity, payment_reserve, user_reserve, rates, None)
    }

    /// A budget with new settings taking over from `previous` at `now`: what `previous`
    /// admitted in its last period counts in the new one's windows, so a reload lets no more
    /// through in the second around it than either configuration allows.
    pub fn after(
        capacity: Rate,
        payment_reserve: f64,
        user_reserve: f64,
        previous: &Budget,
        now: Nanos,
    ) -> Budget {
        let budget = Budget::new(capacity, payment_reserve, user_reserve);
        budget.seed_from(previous, now.as_u64());
        budget
    }

    /// As [`Budget::new`], split over exactly `shards` shards (tests).
    #[cfg(test)]
    fn split_over(capacity: Rate, payment_reserve: f64, user_reserve: f64, n: usize) -> Budget {
        let rates = level_rates(capacity, payment_reserve, user_reserve);
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
        let period = nanos(capacity.period.duration());
        let step = (period / STEPS).max(1);
        let shard = |k: usize| {
            let levels = rates.map(|rate| match rate {
                None => Level::Absent,
                Some(rate) => {
                    let burst = split(u64::from(rate.burst.get()), n, k);
                    let count = split(u64::from(rate.count.get()), n, k);
                    match NonZeroU32::new(u32::try_from(burst).unwrap_or(u32::MAX)) {
                        Some(burst) if count > 0 => Level::Open(
                            Gcra::new(rate.replenish_interval().saturating_mul(scale), burst),
                            count,
                        ),
                        _ => Level::Closed,
                    }
                }
            });
            let marks = levels.map(|level| match level {
                Level::Open(..) => (0..MARKS).map(|_| Mark::default()).collect(),
                _ => Box::default(),
            });
            Shard {
                tat: Default::default(),
                counts: Default::default(),
                levels,
                period,
                step,
                marks,
            }
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

    /// Counts in this (new, unused) budget's windows what `previous` admitted in the period
    /// before `now`, level by level, each shard its share.
    fn seed_from(&self, previous: &Budget, now: u64) {
        for level in [TOTAL, INQUIRIES, SCHEDULED] {
            // By this budget's step: admissions, summed over the previous shards.
            let mut recent: BTreeMap<u64, u64> = BTreeMap::new();
            let Some(first) = self.shards.first() else {
                return;
            };
            let current = now.div_ceil(first.step);
            for shard in previous.shards.iter() {
                for (at, count) in shard.recent(level, now) {
                    // Counted at the end of a step of this budget's, never before the admission.
                    let step = at.div_ceil(first.step).min(current);
                    *recent.entry(step).or_default() += count;
                }
            }
            let whole: u64 = self
                .shards
                .iter()
                .map(|s| match s.levels[level] {
                    Level::Open(_, count) => count,
                    _ => 0,
                })
                .sum();
            if whole == 0 {
                continue;
            }
            for shard in self.shards.iter() {
                let Level::Open(_, part) = shard.levels[level] else {
                    continue;
                };
                // Each shard counts its share, rounded up: together at least what was admitted.
                for (&step, &count) in &recent {
                    let share = u128::from(count) * u128::from(part);
                    let share = u64::try_from(share.div_ceil(u128::from(whole)));
                    match share {
                        Ok(0) => {}
                        share => shard.seed(level, step, share.unwrap_or(u64::MAX)),
                    }
                }
            }
        }
    }
}

impl Shard {
    /// Spends one request at every level in `levels`, or at none: `Err(wait)` until all of
    /// them would admit (`u64::MAX` when a level is closed in this shard).
    #[inline]
    fn spend(&self, levels: &[usize], now: u64) -> Result<(), u64> {
        // Another core stealing from this shard may change an arrival time or a count between
        // the check and the swap; then check again. The swaps of the levels before it have
        // spent there, which only errs on the side of admitting less.
        // Every level of a shard counts over the same steps: two divisions per check.
        let steps = self.steps(now);
        'retry: loop {
            let mut seen = [0u64; 3];
            let mut counted = [0u64; 3];
            let mut wait = 0u64;
            for &level in levels {
                let (gcra, limit) = match self.levels[level] {
                    Level::Absent => continue,
                    Level::Closed => return Err(u64::MAX),
                    Level::Open(gcra, limit) => (gcra, limit),
                };
                let tat = self.tat[level].load(Ordering::Acquire);
                let earliest = gcra.earliest(tat, 1);
                if now < earliest {
                    wait = wait.max(earliest - now);
                }
                let count = self.counts[level].load(Ordering::Acquire);
                if let Some(frees) = self.full_until(level, limit, count, steps) {
                    wait = wait.max(frees.saturating_sub(now).max(1));
                }
                seen[level] = tat;
                counted[level] = count;
            }
            if wait > 0 {
                return Err(wait);
            }
            for &level in levels {
                let Level::Open(gcra, _) = self.levels[level] else {
                    continue;
                };
                self.mark(level, counted[level], steps.1);
                let count = counted[level];
                if self.counts[level]
                    .compare_exchange(count, count + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    continue 'retry;
                }
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

    /// The first step still in the window at `now`, and the step `now` is in (an admission at
    /// `now` counts as if at the end of that step).
    #[inline]
    fn steps(&self, now: u64) -> (u64, u64) {
        // A step `s` counts until `s × step + period`: it is in the window while that is later
        // than `now`.
        let first = match now.checked_sub(self.period) {
            Some(back) => back / self.step + 1,
            None => 0,
        };
        (first, now.div_ceil(self.step))
    }

    #[inline]
    fn mark_of(&self, level: usize, step: u64) -> Option<&Mark> {
        self.marks[level].get((step % MARKS) as usize)
    }

    /// When the window is full (`count` admissions so far, `limit` allowed in it; `steps` from
    /// [`Shard::steps`]): the time its oldest admissions leave it. `None` when there is room.
    #[inline]
    fn full_until(&self, level: usize, limit: u64, count: u64, steps: (u64, u64)) -> Option<u64> {
        let (first, current) = steps;
        // The oldest step in the window that saw an admission: every admission marks its step
        // first, so the steps before it in the window saw none.
        let (step, before) = (first..=current).find_map(|step| {
            let mark = self.mark_of(level, step)?;
            (mark.step.load(Ordering::Acquire) == step + 1)
                .then(|| (step, mark.before.load(Ordering::Acquire)))
        })?;
        (count.saturating_sub(before) >= limit)
            .then(|| step.saturating_mul(self.step).saturating_add(self.period))
    }

    /// Marks `step` (the one now is in) with `count` (the level's count before this
    /// admission), if no admission marked it yet. A mark read before it is set says less than
    /// the truth, which only makes the window look fuller.
    #[inline]
    fn mark(&self, level: usize, count: u64, step: u64) {
        let Some(mark) = self.mark_of(level, step) else {
            return;
        };
        let seen = mark.step.load(Ordering::Acquire);
        // A later step's mark (another core's newer clock reading) is left alone.
        if seen < step + 1
            && mark
                .step
                .compare_exchange(seen, step + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            mark.before.store(count, Ordering::Release);
        }
    }

    /// Admissions at `level` in the window at `now`, step by step: the end of each step that
    /// saw some (nanoseconds), and how many.
    fn recent(&self, level: usize, now: u64) -> Vec<(u64, u64)> {
        let (first, current) = self.steps(now);
        let mut marked: Vec<(u64, u64)> = (first..=current)
            .filter_map(|step| {
                let mark = self.mark_of(level, step)?;
                (mark.step.load(Ordering::Acquire) == step + 1)
                    .then(|| (step, mark.before.load(Ordering::Acquire)))
            })
            .collect();
        marked.push((u64::MAX, self.counts[level].load(Ordering::Acquire)));
        marked
            .windows(2)
            .map(|pair| {
                let ((step, before), (_, next)) = (pair[0], pair[1]);
                (step.saturating_mul(self.step), next.saturating_sub(before))
            })
            .filter(|(_, count)| *count > 0)
            .collect()
    }

    /// Counts `count` admissions at the end of `step`, in a budget no request has used yet;
    /// steps come in increasing order.
    fn seed(&self, level: usize, step: u64, count: u64) {
        let Some(mark) = self.mark_of(level, step) else {
            return;
        };
        let before = self.counts[level].fetch_add(count, Ordering::AcqRel);
        mark.before.store(before, Ordering::Release);
        mark.step.store(step + 1, Ordering::Release);
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
    fn unsplit_it_answers_as_one_window() {
        let budget = Budget::split_over(parse_rate("3/s").unwrap(), 0.2, 0.2, 1);
        for _ in 0..3 {
            assert_eq!(budget.check(Class::Payment, at(0)), Ok(()));
        }
        // The GCRA alone would let one more through every 333 ms; the window holds the three
        // until they are a second old.
        assert_eq!(
            budget.check(Class::Payment, at(0)),
            Err(Duration::from_secs(1))
        );
        assert_eq!(
            budget.check(Class::Payment, at(334)),
            Err(Duration::from_millis(666))
        );
        assert!(budget.check(Class::Payment, at(999)).is_err());
        for _ in 0..3 {
            assert_eq!(budget.check(Class::Payment, at(1000)), Ok(()));
        }
        assert!(budget.check(Class::Payment, at(1000)).is_err());
    }

    #[test]
    fn split_it_never_passes_more_than_the_whole() {
        let capacity = parse_rate("100/s").unwrap();
        for n in 1..=4 {
            let budget = Budget::split_over(capacity, 0.0, 0.0, n);
            // The whole burst at once, then nothing until it is a second old, then all again.
            let burst = std::iter::from_fn(|| budget.check(Class::Payment, at(0)).ok()).count();
            assert_eq!(burst, 100, "{n} shards");
            let later = (1..1000)
                .filter(|&ms| budget.check(Class::Payment, at(ms)).is_ok())
                .count();
            assert_eq!(later, 0, "{n} shards");
            // Less only by what a shard's coarser interval has not yet given back (a shard of
            // 34 at a third of 100/s refills in 1.02 s).
            let again = std::iter::from_fn(|| budget.check(Class::Payment, at(1000)).ok()).count();
            assert!((100 - n..=100).contains(&again), "{n} shards: {again}");
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

    /// Floods `budget` from `from` to `to` (ms, steps of `every` ms): at each step every class
    /// asks until refused. Admissions per millisecond.
    fn flood(budget: &Budget, from: u64, to: u64, every: usize, admitted: &mut [u64]) {
        for ms in (from..to).step_by(every) {
            for class in [Class::InquiryScheduled, Class::InquiryUser, Class::Payment] {
                // Bounded: a budget admits at most its capacity at once.
                for _ in 0..10_000 {
                    if budget.check(class, at(ms)).is_err() {
                        break;
                    }
                    admitted[ms as usize] += 1;
                }
            }
        }
    }

    /// The most admitted in any one-second window `[a, a + 1000)` ms, `a` sliding by 1 ms,
    /// among the windows for which `include(a)`.
    fn busiest_second(admitted: &[u64], include: impl Fn(usize) -> bool) -> u64 {
        (0..admitted.len())
            .filter(|&a| include(a))
            .map(|a| admitted[a..(a + 1000).min(admitted.len())].iter().sum())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn every_second_from_the_start_holds_at_most_the_capacity() {
        let capacity = parse_rate("400/s").unwrap();
        let budgets = [
            Budget::new(capacity, 0.2, 0.2),
            Budget::split_over(capacity, 0.2, 0.2, 1),
            Budget::split_over(capacity, 0.2, 0.2, 2),
            Budget::split_over(capacity, 0.2, 0.2, 4),
        ];
        for budget in &budgets {
            // A flood from the first instant, every millisecond: the whole capacity at once,
            // then nothing until it is a second old (a GCRA started full let 799 through).
            let mut admitted = vec![0u64; 3000];
            flood(budget, 0, 3000, 1, &mut admitted);
            let n = budget.shards();
            assert_eq!(busiest_second(&admitted, |_| true), 400, "{n} shards");
            assert_eq!(
                admitted.iter().sum::<u64>(),
                1200,
                "{n} shards: the capacity is used"
            );
            assert_eq!(
                (admitted[0], admitted[1000], admitted[2000]),
                (400, 400, 400)
            );

            // Off the steps, every 7 ms from 3 ms: an admission leaves the window up to one
            // step (10 ms) late, never early.
            let fresh = Budget::split_over(capacity, 0.2, 0.2, n);
            let mut admitted = vec![0u64; 3000];
            flood(&fresh, 3, 3000, 7, &mut admitted);
            assert_eq!(busiest_second(&admitted, |_| true), 400, "{n} shards");
            assert!(admitted.iter().sum::<u64>() >= 1100, "{n} shards");
        }
    }

    #[test]
    fn a_reload_carries_the_window_over() {
        let c400 = parse_rate("400/s").unwrap();
        for (next, n) in [
            ("400/s", 2),
            ("800/s", 1),
            ("800/s", 2),
            ("200/s", 2),
            ("1000/min", 1),
        ] {
            let next_rate = parse_rate(next).unwrap();
            let before = Budget::split_over(c400, 0.2, 0.2, n);
            let mut admitted = vec![0u64; 3000];
            // Requests come every 3 ms; the reload is at 1501 ms, between them.
            flood(&before, 0, 1500, 3, &mut admitted);
            let after = if before.same(next_rate, 0.2, 0.2) {
                before.clone()
            } else {
                Budget::after(next_rate, 0.2, 0.2, &before, at(1501))
            };
            flood(&after, 1503, 3000, 3, &mut admitted);
            // A per-minute capacity holds over each minute: a second after the reload sees at
            // most all of it.
            let (old, new) = (400, u64::from(next_rate.count.get()));
            // Windows holding an admission made after the reload answer to the new capacity;
            // the others to the old one.
            let last_after = |a: usize| {
                admitted[1503.max(a)..(a + 1000).min(3000)]
                    .iter()
                    .any(|&x| x > 0)
            };
            let with_new = busiest_second(&admitted, |a| a + 1000 > 1503 && last_after(a));
            let with_old = busiest_second(&admitted, |a| !(a + 1000 > 1503 && last_after(a)));
            assert!(
                with_new <= new,
                "{next} over {n}: {with_new} in a second after the reload"
            );
            assert!(
                with_old <= old,
                "{next} over {n}: {with_old} in a second before it"
            );
            assert!(
                with_new > 0,
                "{next} over {n}: nothing admitted after the reload"
            );
        }
    }

    #[test]
    fn small_budgets_are_not_split() {
        let budget = Budget::new(parse_rate("3/s").unwrap(), 0.2, 0.2);
        assert_eq!(budget.shards(), 1);
        let big = Budget::new(parse_rate("100000/s").unwrap(), 0.2, 0.2);
        assert_eq!(big.shards(), shards::count());
    }
}
