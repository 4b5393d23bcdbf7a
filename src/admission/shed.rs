//! Shedding inquiries when the biller struggles: a biller that is already failing needs less
//! traffic, not the same. Every quarter second the share of calls that failed or were slow is
//! compared with a target; above it, the admitted share of inquiries is cut (scheduled polls
//! first, then user inquiries), at or below half of it, it grows back step by step (AIMD).
//! Payments are never shed here.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::Clock;
use crate::config::Class;

/// How often the failure share is judged.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// The failure share (failed or slow calls) the biller is allowed before inquiries are cut.
pub const TARGET: f64 = 0.03;
/// Fewer calls than this in an interval tell nothing; the level then grows back.
const MIN_CALLS: u32 = 10;
/// The level runs from 0 (no inquiry passes) through 1000 (every user inquiry, no scheduled
/// poll) to 2000 (everything passes).
const FULL: u32 = 2000;
const USER_ONLY: u32 = 1000;
/// A bad interval takes a quarter of the full range away; a good one gives a twentieth back.
/// A good interval whose calls were mostly fast (the biller answering well under its long-term
/// latency: it has recovered) gives everything back at once.
const CUT: u32 = 500;
const GROW: u32 = 100;
const PPM: u64 = 1_000_000;

/// The shedder's state: all atomics, read and updated without a lock.
pub struct Shedder {
    clock: Clock,
    /// The interval (number since the clock's origin) the counters belong to.
    interval: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    fast: AtomicU32,
    level: AtomicU32,
    /// Accumulated admission credit per shed class, in millionths.
    credit: [AtomicU64; 2],
}

impl Shedder {
    pub fn new(clock: Clock) -> Shedder {
        Shedder {
            interval: AtomicU64::new(0),
            calls: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            fast: AtomicU32::new(0),
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
        self.roll();
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
        let now = self.clock.now().as_u64() / INTERVAL.as_nanos() as u64;
        let seen = self.interval.load(Ordering::Relaxed);
        if now <= seen
            || self
                .interval
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let calls = self.calls.swap(0, Ordering::AcqRel);
        let failures = self.failures.swap(0, Ordering::AcqRel);
        let fast = self.fast.swap(0, Ordering::AcqRel);
        let level = self.level.load(Ordering::Relaxed);
        // Several intervals may have passed without a call: each quiet one counts as good.
        let quiet = u32::try_from(now - seen - 1).unwrap_or(u32::MAX);
        let next = if calls >= MIN_CALLS && f64::from(failures) > TARGET * f64::from(calls) {
            level.saturating_sub(CUT)
        } else if calls >= MIN_CALLS && f64::from(failures) > TARGET / 2.0 * f64::from(calls) {
            level
        } else if calls >= MIN_CALLS && fast * 2 >= calls {
            FULL
        } else {
            level.saturating_add(GROW.saturating_mul(quiet.saturating_add(1)))
        }
        .min(FULL);
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

    #[test]
    fn failures_cut_scheduled_polls_first_then_user_inquiries_never_payments() {
        let (clock, hand) = Clock::fake();
        let s = Shedder::new(clock);
        assert_eq!(passed(&s, Class::InquiryScheduled, 10), 10);
        interval(&s, &hand, 100, 10);
        assert_eq!(passed(&s, Class::InquiryScheduled, 10), 5);
        assert_eq!(passed(&s, Class::InquiryUser, 10), 10);
        interval(&s, &hand, 100, 10);
        assert_eq!(s.level(), 1.0);
        assert_eq!(passed(&s, Class::InquiryScheduled, 10), 0);
        assert_eq!(passed(&s, Class::InquiryUser, 10), 10);
        interval(&s, &hand, 100, 10);
        interval(&s, &hand, 100, 10);
        assert_eq!(s.level(), 0.0);
        assert_eq!(passed(&s, Class::InquiryUser, 10), 0);
        assert_eq!(passed(&s, Class::Payment, 10), 10);
    }

    #[test]
    fn a_healthy_or_quiet_biller_gets_inquiries_back_step_by_step() {
        let (clock, hand) = Clock::fake();
        let s = Shedder::new(clock);
        for _ in 0..4 {
            interval(&s, &hand, 100, 50);
        }
        assert_eq!(s.level(), 0.0);
        interval(&s, &hand, 100, 1);
        assert_eq!(s.level(), 0.1);
        assert_eq!(passed(&s, Class::InquiryUser, 10), 1);
        // Between half the target and the target: hold.
        interval(&s, &hand, 100, 2);
        assert_eq!(s.level(), 0.1);
        interval(&s, &hand, 100, 2);
        assert_eq!(s.level(), 0.1);
        // Quiet intervals count as good ones.
        hand.advance(INTERVAL * 8);
        assert!((s.level() - 0.9).abs() < 1e-9, "{}", s.level());
        hand.advance(INTERVAL * 100);
        s.record(false, false);
        assert_eq!(s.level(), 2.0);
    }

    #[test]
    fn a_biller_fast_again_gets_everything_back_at_once() {
        let (clock, hand) = Clock::fake();
        let s = Shedder::new(clock);
        for _ in 0..4 {
            interval(&s, &hand, 100, 50);
        }
        assert_eq!(s.level(), 0.0);
        for i in 0..20 {
            s.record(false, i % 2 == 0);
        }
        hand.advance(INTERVAL);
        s.record(false, false);
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
