//! Shedding inquiries when the biller struggles: a biller that is already failing needs less
//! traffic, not the same. Every quarter second the share of calls that failed or were slow over
//! the last second is compared with a target; above it, the admitted share of inquiries is cut
//! (scheduled polls first, then user inquiries) — at most once a second, so the cut's effect is
//! seen before the next — and at or below half of it, it grows back step by step (AIMD).
//! Payments are never shed here.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use governor::nanos::Nanos;

use crate::clock::Clock;
use crate::config::Class;

/// How often the failure share is judged.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// The failure share (failed or slow calls) the biller is allowed before inquiries are cut.
pub const TARGET: f64 = 0.03;
/// Intervals judged together (a second's worth).
const WINDOW: u64 = 4;
/// Fewer calls than this in the window tell nothing; the level then grows back. One of `N`
/// gateways in a fleet sees `1/N` of the calls, and judges on `1/N` as many (see
/// [`Shedder::share_among`]).
const MIN_CALLS: u32 = 20;
/// The level runs from 0 (no inquiry passes) through 1000 (every user inquiry, no scheduled
/// poll) to 2000 (everything passes).
const FULL: u32 = 2000;
const USER_ONLY: u32 = 1000;
/// A bad second takes a quarter of the full range away for every twice the target in its
/// failure share; a good interval gives a twentieth back.
/// [`MIN_CALLS`] / 2 fast calls (the biller answering well under its long-term latency: it has
/// recovered) in good intervals in a row, the last of them mostly fast, give everything back
/// at once. The evidence is counted in calls, not intervals, so a biller with little traffic
/// recovers on as much evidence as a busy one, only over more intervals.
const CUT: u32 = 500;
const GROW: u32 = 100;
const PPM: u64 = 1_000_000;

/// One of `instances` gateways' share of `calls`, at least 4: as much evidence as a lone
/// gateway would wait for, gathered by the fleet together.
pub fn share_of_calls(calls: u32, instances: u32) -> u32 {
    if instances <= 1 {
        return calls;
    }
    calls.div_ceil(instances).max(calls.min(4))
}

/// The shedder's state: all atomics, read and updated without a lock.
pub struct Shedder {
    clock: Clock,
    /// The interval (number since the clock's origin) the counters belong to.
    interval: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    fast: AtomicU32,
    /// Fast calls in the judged intervals since the last one with a failure.
    clean_fast: AtomicU32,
    /// The last `WINDOW` intervals' (calls, failures), packed, by interval number modulo WINDOW.
    window: [AtomicU64; WINDOW as usize],
    /// No cut before this interval: the last cut's effect must be seen first.
    calm_until: AtomicU64,
    level: AtomicU32,
    /// Accumulated admission credit per shed class, in millionths.
    credit: [AtomicU64; 2],
    /// [`MIN_CALLS`], or its share in a fleet.
    min_calls: AtomicU32,
}

impl Shedder {
    /// From now on, one of `instances` gateways: judges on its share of [`MIN_CALLS`].
    pub fn share_among(&self, instances: u32) {
        self.min_calls
            .store(share_of_calls(MIN_CALLS, instances), Ordering::Relaxed);
    }

    pub fn new(clock: Clock) -> Shedder {
        Shedder {
            min_calls: AtomicU32::new(MIN_CALLS),
            interval: AtomicU64::new(0),
            calls: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            fast: AtomicU32::new(0),
            clean_fast: AtomicU32::new(0),
            window: [0; WINDOW as usize].map(AtomicU64::new),
            calm_until: AtomicU64::new(0),
            level: AtomicU32::new(FULL),
            credit: [AtomicU64::new(0), AtomicU64::new(0)],
            clock,
        }
    }

    /// The level from 0 (inquiries shed) to 2 (nothing shed); 1 means user inquiries only.
    pub fn level(&self) -> f64 {
        self.roll();
        f64::from(self.level.load(Ordering::Relaxed)) / f64::from(USER_ONLY)
    }

    /// Whether a request of `class` may go on. Deterministic: at a share of one half, exactly
    /// every other request passes.
    #[inline]
    pub fn admit(&self, class: Class) -> bool {
        self.admit_at(class, self.clock.now())
    }

    /// [`Shedder::admit`] at `now`, a reading of the shedder's clock the caller already made.
    /// Writes nothing while nothing is shed (but for judging an interval once per quarter
    /// second).
    #[inline]
    pub fn admit_at(&self, class: Class, now: Nanos) -> bool {
        self.roll_at(now);
        let level = self.level.load(Ordering::Relaxed);
        let (share, credit) = match class {
            Class::Payment => return true,
            Class::InquiryUser => (level.min(USER_ONLY), &self.credit[0]),
            Class::InquiryScheduled => (level.saturating_sub(USER_ONLY), &self.credit[1]),
        };
        if share >= USER_ONLY {
            return true;
        }
        let share_ppm = u64::from(share) * (PPM / u64::from(USER_ONLY));
        let before = credit.fetch_add(share_ppm, Ordering::Relaxed);
        if before + share_ppm >= PPM {
            credit.fetch_sub(PPM, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Counts one call to the biller: `failed` when it failed or was slow, `fast` when it was
    /// answered well under the biller's long-term latency.
    pub fn record(&self, failed: bool, fast: bool) {
        self.roll();
        self.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        } else if fast {
            self.fast.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// When a new interval has begun, judges the last one (exactly once, by whoever sees the
    /// change first).
    fn roll(&self) {
        self.roll_at(self.clock.now());
    }

    #[inline]
    fn roll_at(&self, now: Nanos) {
        let now = now.as_u64() / INTERVAL.as_nanos() as u64;
        let seen = self.interval.load(Ordering::Relaxed);
        if now <= seen
            || self
                .interval
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.judge(seen, now);
    }

    /// Judges the intervals from `seen` to just before `now` (interval numbers).
    #[cold]
    fn judge(&self, seen: u64, now: u64) {
        let calls = self.calls.swap(0, Ordering::AcqRel);
        let failures = self.failures.swap(0, Ordering::AcqRel);
        let fast = self.fast.swap(0, Ordering::AcqRel);
        // The finished interval takes its slot; intervals that passed without a call are empty.
        for skipped in (seen + 1..now).take(WINDOW as usize) {
            self.window[(skipped % WINDOW) as usize].store(0, Ordering::Relaxed);
        }
        self.window[(seen % WINDOW) as usize].store(pack(calls, failures), Ordering::Relaxed);
        let (window_calls, window_failures) = self
            .window
            .iter()
            .map(|slot| unpack(slot.load(Ordering::Relaxed)))
            .fold((0u32, 0u32), |(c, f), (dc, df)| {
                (c.saturating_add(dc), f.saturating_add(df))
            });
        let level = self.level.load(Ordering::Relaxed);
        let min_calls = self.min_calls.load(Ordering::Relaxed);
        let judged = window_calls >= min_calls;
        let share = f64::from(window_failures) / f64::from(window_calls.max(1));
        // Several intervals may have passed without a call: each quiet one counts as good.
        let quiet = u32::try_from(now - seen - 1).unwrap_or(u32::MAX);
        // Fast calls enough in intervals without failures, in a row, the last of them mostly
        // fast, mean the biller has recovered: everything back at once.
        let clean_fast = if failures == 0 {
            let sum = self.clean_fast.load(Ordering::Relaxed).saturating_add(fast);
            self.clean_fast.store(sum, Ordering::Relaxed);
            sum
        } else {
            self.clean_fast.store(0, Ordering::Relaxed);
            0
        };
        let recovered = clean_fast >= min_calls / 2 && calls > 0 && fast * 2 >= calls;
        let next = if recovered {
            FULL
        } else if judged && share > TARGET {
            if now >= self.calm_until.load(Ordering::Relaxed) {
                self.calm_until.store(now + WINDOW, Ordering::Relaxed);
                // The worse the share, the deeper the cut: one step per twice the target.
                let steps = (share / (TARGET * 2.0)).ceil().clamp(1.0, 4.0) as u32;
                level.saturating_sub(CUT * steps)
            } else {
                level
            }
        } else if judged && share > TARGET / 2.0 {
            level
        } else {
            level.saturating_add(GROW.saturating_mul(quiet.saturating_add(1)))
        }
        .min(FULL);
        let (calls, failures) = (window_calls, window_failures);
        if next != level {
            self.level.store(next, Ordering::Relaxed);
            if next < level {
                tracing::warn!(
                    failures,
                    calls,
                    level = f64::from(next) / 1000.0,
                    "biller struggling: shedding inquiries"
                );
            } else if next == FULL {
                tracing::info!("biller healthy again: no inquiry shed");
            }
        }
    }
}

fn pack(calls: u32, failures: u32) -> u64 {
    (u64::from(calls) << 32) | u64::from(failures)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passed(s: &Shedder, class: Class, n: u32) -> u32 {
        (0..n).filter(|_| s.admit(class)).count() as u32
    }

    fn interval(s: &Shedder, hand: &crate::clock::FakeClock, calls: u32, failures: u32) {
        for i in 0..calls {
            s.record(i < failures, false);
        }
        hand.advance(INTERVAL);
    }

    /// `n` intervals of `calls` calls, `failures` of them failed.
    fn intervals(s: &Shedder, hand: &crate::clock::FakeClock, n: u32, calls: u32, failures: u32) {
        for _ in 0..n {
            interval(s, hand, calls, failures);
        }
    }

    /// One of two gateways sees half the calls, and cuts on half the evidence: a second of
    /// 12 calls, 3 failed, is judged (and cut) there, and tells a lone gateway nothing.
    #[test]
    fn in_a_fleet_a_share_of_the_calls_is_judged() {
        for (instances, cut) in [(1, false), (2, true)] {
            let (clock, hand) = Clock::fake();
            let s = Shedder::new(clock);
            s.share_among(instances);
            intervals(&s, &hand, 4, 3, 1);
            assert_eq!(s.level() < 2.0, cut, "{instances} instances: {}", s.level());
        }
        assert_eq!(share_of_calls(20, 1), 20);
        assert_eq!(share_of_calls(20, 3), 7);
        assert_eq!(share_of_calls(20, 16), 4);
        assert_eq!(share_of_calls(2, 3), 2);
    }

    #[test]
    fn failures_cut_scheduled_polls_first_then_user_inquiries_never_payments() {
        let (clock, hand) = Clock::fake();
        let s = Shedder::new(clock);
        assert_eq!(passed(&s, Class::InquiryScheduled, 10), 10);
        interval(&s, &hand, 100, 5);
        assert_eq!(s.level(), 1.5);
        assert_eq!(passed(&s, Class::InquiryScheduled, 10), 5);
        assert_eq!(passed(&s, Class::InquiryUser, 10), 10);
        // A cut's effect is waited for (a second) before the next.
        intervals(&s, &hand, 3, 100, 5);
        assert_eq!(s.level(), 1.5);
        interval(&s, &hand, 100, 5);
        assert_eq!(s.level(), 1.0);
        assert_eq!(passed(&s, Class::InquiryScheduled, 10), 0);
        assert_eq!(passed(&s, Class::InquiryUser, 10), 10);
        // A far worse share cuts deeper: 30% is five times the doubled target, four steps.
        interval(&s, &hand, 100, 30);
        interval(&s, &hand, 100, 30);
        intervals(&s, &hand, 4, 100, 30);
        assert_eq!(s.level(), 0.0);
        assert_eq!(passed(&s, Class::InquiryUser, 10), 0);
        assert_eq!(passed(&s, Class::Payment, 10), 10);
    }

    #[test]
    fn one_slow_call_among_many_cuts_nothing() {
        let (clock, hand) = Clock::fake();
        let s = Shedder::new(clock);
        intervals(&s, &hand, 8, 25, 0);
        interval(&s, &hand, 25, 1);
        intervals(&s, &hand, 4, 25, 0);
        assert_eq!(s.level(), 2.0);
    }

    #[test]
    fn a_healthy_or_quiet_biller_gets_inquiries_back_step_by_step() {
        let (clock, hand) = Clock::fake();
        let s = Shedder::new(clock);
        intervals(&s, &hand, 13, 100, 50);
        assert_eq!(s.level(), 0.0);
        // The bad second has to pass out of the window first.
        intervals(&s, &hand, 3, 100, 1);
        assert_eq!(s.level(), 0.0);
        interval(&s, &hand, 100, 1);
        assert_eq!(s.level(), 0.1);
        assert_eq!(passed(&s, Class::InquiryUser, 10), 1);
        // Between half the target and the target: hold.
        intervals(&s, &hand, 4, 100, 2);
        let held = s.level();
        intervals(&s, &hand, 4, 100, 2);
        assert_eq!(s.level(), held);
        // Quiet intervals count as good ones.
        hand.advance(INTERVAL * 8);
        assert!((s.level() - held - 0.8).abs() < 1e-9, "{}", s.level());
        hand.advance(INTERVAL * 100);
        s.record(false, false);
        assert_eq!(s.level(), 2.0);
    }

    #[test]
    fn a_biller_fast_again_gets_everything_back_at_once() {
        let (clock, hand) = Clock::fake();
        let s = Shedder::new(clock);
        intervals(&s, &hand, 13, 100, 50);
        assert_eq!(s.level(), 0.0);
        for i in 0..20 {
            s.record(false, i % 2 == 0);
        }
        hand.advance(INTERVAL);
        assert_eq!(s.level(), 2.0);
    }

    #[test]
    fn a_quiet_biller_fast_again_gets_everything_back_once_enough_calls_say_so() {
        let (clock, hand) = Clock::fake();
        let s = Shedder::new(clock);
        intervals(&s, &hand, 13, 100, 50);
        assert_eq!(s.level(), 0.0);
        // Four fast calls an interval: the evidence adds up over good intervals in a row, so
        // the third brings everything back (12 calls, all fast), not ten intervals of growth.
        let fast = |n: u32| {
            for _ in 0..n {
                s.record(false, true);
            }
            hand.advance(INTERVAL);
        };
        fast(4);
        fast(4);
        assert!(s.level() < 1.0, "{}", s.level());
        fast(4);
        assert_eq!(s.level(), 2.0);
    }

    #[test]
    fn a_failure_starts_the_evidence_of_recovery_afresh() {
        let (clock, hand) = Clock::fake();
        let s = Shedder::new(clock);
        intervals(&s, &hand, 13, 100, 50);
        let fast = |n: u32| {
            for _ in 0..n {
                s.record(false, true);
            }
        };
        fast(8);
        hand.advance(INTERVAL);
        // Eight fast calls, then an interval with a failure: nothing carries over.
        fast(3);
        s.record(true, false);
        hand.advance(INTERVAL);
        fast(8);
        hand.advance(INTERVAL);
        assert!(s.level() < 1.0, "{}", s.level());
        fast(2);
        hand.advance(INTERVAL);
        assert_eq!(s.level(), 2.0);
    }

    #[test]
    fn too_few_calls_decide_nothing_bad() {
        let (clock, hand) = Clock::fake();
        let s = Shedder::new(clock);
        interval(&s, &hand, 5, 5);
        s.record(false, false);
        assert_eq!(s.level(), 2.0);
    }
}
