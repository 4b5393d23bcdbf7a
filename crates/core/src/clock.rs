//! The one clock every time-dependent part of billgate reads: limiters, breaker, cache, the
//! stand-in biller's load model. Real in production, fake (advanced by hand) in tests.

use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock as GovernorClock, FakeRelativeClock, Reference};
use governor::nanos::Nanos;

/// A monotonic clock reading nanoseconds since the clock was made.
///
/// Cloning is cheap and every clone reads the same time. It implements governor's `Clock`, so
/// rate limiters run on it directly.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Inner,
}

#[derive(Clone, Debug)]
enum Inner {
    /// `origin` is a raw reading of `clock` (TSC ticks where the TSC is usable): reading the
    /// time is one raw read and one multiply-shift, no conversion through `Duration`.
    Real {
        clock: quanta::Clock,
        origin: u64,
    },
    Fake(FakeRelativeClock),
}

impl Clock {
    /// The real monotonic clock.
    pub fn real() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Clock {
            inner: Inner::Real { clock, origin },
        }
    }

    /// A clock standing still at zero until [`FakeClock::advance`] moves it.
    pub fn fake() -> (Self, FakeClock) {
        let fake = FakeRelativeClock::default();
        (
            Clock {
                inner: Inner::Fake(fake.clone()),
            },
            FakeClock(Arc::new(fake)),
        )
    }

    /// Nanoseconds since this clock's origin.
    #[inline]
    pub fn now(&self) -> Nanos {
        match &self.inner {
            Inner::Real { clock, origin } => {
                Nanos::from(clock.delta_as_nanos(*origin, clock.raw()))
            }
            Inner::Fake(fake) => fake.now(),
        }
    }

    /// Time since the origin as a `Duration`.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.now().as_u64())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::real()
    }
}

impl GovernorClock for Clock {
    type Instant = Nanos;

    #[inline]
    fn now(&self) -> Nanos {
        Clock::now(self)
    }
}

/// The hand that moves a fake [`Clock`].
#[derive(Clone, Debug)]
pub struct FakeClock(Arc<FakeRelativeClock>);

impl FakeClock {
    /// Moves every clone of the fake clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.advance(by);
    }
}

/// `d` in whole nanoseconds, saturating (past 584 years).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whole seconds in `d`, rounded up (what `Retry-After` and `RateLimit` `t=` carry).
pub fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs();
    if d.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

/// Duration between two readings of the same clock (zero if `later` is earlier).
pub fn since(later: Nanos, earlier: Nanos) -> Duration {
    later.duration_since(earlier).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_advanced() {
        let (clock, hand) = Clock::fake();
        let other = clock.clone();
        assert_eq!(clock.now().as_u64(), 0);
        hand.advance(Duration::from_millis(1500));
        assert_eq!(other.elapsed(), Duration::from_millis(1500));
    }

    #[test]
    fn real_clock_is_monotonic() {
        let clock = Clock::real();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
    }

    #[test]
    fn real_clock_keeps_time_with_the_system() {
        use std::time::Instant;
        let clock = Clock::real();
        // Each reading is bracketed by the system clock, so preemption cannot fail the test.
        let (t0, a, t1) = (Instant::now(), clock.now(), Instant::now());
        std::thread::sleep(Duration::from_millis(50));
        let (t2, b, t3) = (Instant::now(), clock.now(), Instant::now());
        let measured = since(b, a);
        let (shortest, longest) = (t2 - t1, t3 - t0);
        // A little slack for the counter's calibration (parts per thousand at most).
        let slack = Duration::from_micros(500);
        assert!(
            measured + slack >= shortest && measured <= longest + slack,
            "{measured:?} outside {shortest:?}..{longest:?}"
        );
    }

    #[test]
    fn rounds_up_to_whole_seconds() {
        assert_eq!(ceil_secs(Duration::from_millis(0)), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
    }
}
