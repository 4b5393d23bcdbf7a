//! The stand-in biller's capacity model: how a request arriving now fares given recent load.
//! Pure apart from the injected clock, so overload, collapse and recovery test deterministically.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::{nanos, Clock};

/// Width of one bucket of the arrival-rate window.
const BUCKET_NANOS: u64 = 100_000_000;
/// Completed buckets the rate is measured over (10 × 100 ms = 1 s).
const WINDOW_BUCKETS: usize = 10;
/// Ring slots: the completed window plus the bucket filling now.
const SLOTS: usize = WINDOW_BUCKETS + 1;
/// One in parts per million; shares and factors are kept in ppm so failure counts are exact.
const PPM: u64 = 1_000_000;
/// Headroom never counts as less than this (5 %), so idle latency is multiplied by at most 20.
const MIN_HEADROOM_PPM: u64 = 50_000;
/// No answer is delayed longer than this, whatever the options and brown-out say.
pub(crate) const MAX_LATENCY: Duration = Duration::from_secs(30);
/// The largest brown-out latency factor accepted.
pub(crate) const MAX_LATENCY_FACTOR: f64 = 1000.0;
/// The smallest capacity the model works with; smaller or invalid capacities are raised to it.
const MIN_CAPACITY: f64 = 0.001;

/// What happens to one request, decided when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Answer normally after `latency`.
    Serve { latency: Duration },
    /// Fail with 500 after `latency` (brown-out).
    FailBrownout { latency: Duration },
    /// Fail at once with 503 and `Retry-After: 1` (past capacity).
    FailOverload,
    /// Fail at once with 503: the biller is down for `retry_after` more.
    FailDown { retry_after: Duration },
}

/// Counters and state of the model, as `stats()` reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LoadStats {
    pub failed_overload: u64,
    pub failed_down: u64,
    pub failed_brownout: u64,
    pub times_down: u64,
    pub down: bool,
    /// Arrivals per second over the last completed second.
    pub current_rate: f64,
}

/// The knobs of the model (taken from `BillerOptions`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadOptions {
    pub capacity_per_sec: f64,
    pub base_latency: Duration,
    pub overload_grace: Duration,
    pub down_for: Duration,
}

/// The capacity model. Arrivals are counted in 100 ms buckets; utilisation is the rate over the
/// last ten *completed* buckets divided by capacity, so it is constant within a bucket and tests
/// can count failures exactly. The model lags a burst by at most 100 ms, as real load metrics do.
#[derive(Debug)]
pub(crate) struct LoadModel {
    clock: Clock,
    capacity: f64,
    base_nanos: u64,
    grace_nanos: u64,
    down_nanos: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Arrivals per bucket, indexed by bucket number modulo `SLOTS`.
    counts: [u64; SLOTS],
    /// The bucket number that `counts` is current up to.
    head: u64,
    overload_since: Option<u64>,
    down_until: Option<u64>,
    overload_debt_ppm: u64,
    brownout: Option<Brownout>,
    brownout_debt_ppm: u64,
    failed_overload: u64,
    failed_down: u64,
    failed_brownout: u64,
    times_down: u64,
}

#[derive(Debug, Clone, Copy)]
struct Brownout {
    latency_factor_ppm: u64,
    failure_share_ppm: u64,
    /// A brown-out proper fails calls in proportion to load; a failing component fails its
    /// share whatever the load.
    load_dependent: bool,
}

impl LoadModel {
    pub(crate) fn new(options: LoadOptions, clock: Clock) -> Self {
        let capacity = if options.capacity_per_sec >= MIN_CAPACITY {
            options.capacity_per_sec
        } else {
            tracing::warn!(
                capacity = options.capacity_per_sec,
                "biller capacity must be > 0; using {MIN_CAPACITY}/s"
            );
            MIN_CAPACITY
        };
        LoadModel {
            clock,
            capacity,
            base_nanos: nanos(options.base_latency),
            grace_nanos: nanos(options.overload_grace),
            down_nanos: nanos(options.down_for),
            state: Mutex::new(State::default()),
        }
    }

    /// Record one arrival now and decide its fate.
    pub(crate) fn admit(&self) -> Verdict {
        let now = self.clock.now().as_u64();
        let mut s = self.lock();
        s.roll(now / BUCKET_NANOS);
        let slot = (s.head % SLOTS as u64) as usize;
        s.counts[slot] = s.counts[slot].saturating_add(1);

        if let Some(until) = s.down_until {
            if now < until {
                s.failed_down += 1;
                return Verdict::FailDown {
                    retry_after: Duration::from_nanos(until - now),
                };
            }
            s.down_until = None;
        }

        let utilisation = s.window_count() as f64 / self.capacity;
        if utilisation > 1.0 {
            let since = *s.overload_since.get_or_insert(now);
            // Readings taken on other threads may land out of order: never underflow.
            if now.saturating_sub(since) > self.grace_nanos {
                s.overload_since = None;
                s.overload_debt_ppm = 0;
                s.down_until = Some(now.saturating_add(self.down_nanos));
                s.times_down += 1;
                s.failed_down += 1;
                tracing::warn!(
                    utilisation,
                    "stand-in biller overloaded too long: going down"
                );
                return Verdict::FailDown {
                    retry_after: Duration::from_nanos(self.down_nanos),
                };
            }
            let share = to_ppm((utilisation - 1.0) / utilisation);
            if take_share(&mut s.overload_debt_ppm, share) {
                s.failed_overload += 1;
                return Verdict::FailOverload;
            }
        } else {
            s.overload_since = None;
            s.overload_debt_ppm = 0;
        }

        let headroom = to_ppm(1.0 - utilisation).max(MIN_HEADROOM_PPM);
        let mut latency = u128::from(self.base_nanos) * u128::from(PPM) / u128::from(headroom);
        if let Some(brownout) = s.brownout {
            latency = latency * u128::from(brownout.latency_factor_ppm) / u128::from(PPM);
            // A browned-out biller is slowed `latency_factor` times, so it copes with that much
            // less: calls fail in proportion to how loaded the slowed biller is — none up to
            // half its reduced capacity, `failure_share` from all of it on.
            let slowed = utilisation * brownout.latency_factor_ppm as f64 / PPM as f64;
            let loaded = if brownout.load_dependent {
                ((slowed - 0.5) / 0.5).clamp(0.0, 1.0)
            } else {
                1.0
            };
            let share = (brownout.failure_share_ppm as f64 * loaded).round() as u64;
            if take_share(&mut s.brownout_debt_ppm, share) {
                s.failed_brownout += 1;
                return Verdict::FailBrownout {
                    latency: cap_latency(latency),
                };
            }
        }
        Verdict::Serve {
            latency: cap_latency(latency),
        }
    }

    /// Slow every answer by `latency_factor` (clamped to 1–1000) and fail `failure_share`
    /// (clamped to 0–1) of the requests that get past the capacity check with 500.
    pub(crate) fn set_brownout(&self, latency_factor: f64, failure_share: f64) {
        let factor = if latency_factor.is_nan() {
            1.0
        } else {
            latency_factor.clamp(1.0, MAX_LATENCY_FACTOR)
        };
        let share = if failure_share.is_nan() {
            0.0
        } else {
            failure_share.clamp(0.0, 1.0)
        };
        let mut s = self.lock();
        s.brownout = Some(Brownout {
            latency_factor_ppm: to_ppm(factor),
            failure_share_ppm: to_ppm(share),
            load_dependent: true,
        });
        s.brownout_debt_ppm = 0;
    }

    /// Fail `share` (clamped to 0–1) of the requests with 500 whatever the load, at normal
    /// speed — a broken component rather than a slowed one. Ended by `clear_brownout`.
    pub(crate) fn set_failing(&self, share: f64) {
        let share = if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 1.0)
        };
        let mut s = self.lock();
        s.brownout = Some(Brownout {
            latency_factor_ppm: PPM,
            failure_share_ppm: to_ppm(share),
            load_dependent: false,
        });
        s.brownout_debt_ppm = 0;
    }

    /// End a brown-out.
    pub(crate) fn clear_brownout(&self) {
        let mut s = self.lock();
        s.brownout = None;
        s.brownout_debt_ppm = 0;
    }

    /// The counters, whether it is down now, and the current arrival rate.
    pub(crate) fn stats(&self) -> LoadStats {
        let now = self.clock.now().as_u64();
        let mut s = self.lock();
        s.roll(now / BUCKET_NANOS);
        LoadStats {
            failed_overload: s.failed_overload,
            failed_down: s.failed_down,
            failed_brownout: s.failed_brownout,
            times_down: s.times_down,
            down: s.down_until.is_some_and(|until| now < until),
            current_rate: s.window_count() as f64,
        }
    }

    /// The state is only ever left consistent, so a panic elsewhere while it was held (there is
    /// none on these paths) must not stop the biller.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Move the head to bucket `to`, zeroing the buckets passed over.
    fn roll(&mut self, to: u64) {
        if to <= self.head {
            return;
        }
        let passed = (to - self.head).min(SLOTS as u64);
        for i in 1..=passed {
            let bucket = to - passed + i;
            self.counts[(bucket % SLOTS as u64) as usize] = 0;
        }
        self.head = to;
    }

    /// Arrivals in the last `WINDOW_BUCKETS` completed buckets (exactly one second).
    fn window_count(&self) -> u64 {
        let current = (self.head % SLOTS as u64) as usize;
        self.counts
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != current)
            .map(|(_, c)| *c)
            .fold(0u64, u64::saturating_add)
    }
}

/// Add `share` to the running `debt`; when it reaches one whole request, this one fails.
fn take_share(debt: &mut u64, share: u64) -> bool {
    *debt = debt.saturating_add(share);
    if *debt >= PPM {
        *debt -= PPM;
        true
    } else {
        false
    }
}

/// `x` (≥ 0) in parts per million, rounded; negative or NaN is zero.
fn to_ppm(x: f64) -> u64 {
    // `as` saturates for floats: NaN → 0, huge → u64::MAX.
    (x * PPM as f64).round() as u64
}

fn cap_latency(latency_nanos: u128) -> Duration {
    let capped = latency_nanos.min(MAX_LATENCY.as_nanos());
    Duration::from_nanos(u64::try_from(capped).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    const MS: Duration = Duration::from_millis(1);

    fn model(capacity: f64) -> (LoadModel, FakeClock) {
        let (clock, hand) = Clock::fake();
        let options = LoadOptions {
            capacity_per_sec: capacity,
            base_latency: 5 * MS,
            overload_grace: Duration::from_secs(3),
            down_for: Duration::from_secs(10),
        };
        (LoadModel::new(options, clock), hand)
    }

    /// `n` arrivals now; how many of each verdict kind: (served, brownout, overload, down).
    fn burst(m: &LoadModel, n: u64) -> (u64, u64, u64, u64) {
        let mut tally = (0, 0, 0, 0);
        for _ in 0..n {
            match m.admit() {
                Verdict::Serve { .. } => tally.0 += 1,
                Verdict::FailBrownout { .. } => tally.1 += 1,
                Verdict::FailOverload => tally.2 += 1,
                Verdict::FailDown { .. } => tally.3 += 1,
            }
        }
        tally
    }

    /// A steady `per_bucket` arrivals in each of `buckets` buckets, ending on a fresh bucket.
    fn steady(m: &LoadModel, hand: &FakeClock, per_bucket: u64, buckets: u32) {
        for _ in 0..buckets {
            burst(m, per_bucket);
            hand.advance(100 * MS);
        }
    }

    fn latency(v: Verdict) -> Duration {
        match v {
            Verdict::Serve { latency } | Verdict::FailBrownout { latency } => latency,
            other => panic!("expected an answer with latency, got {other:?}"),
        }
    }

    #[test]
    fn idle_biller_answers_at_base_latency() {
        let (m, _) = model(100.0);
        assert_eq!(m.admit(), Verdict::Serve { latency: 5 * MS });
    }

    /// The latency of a request arriving when the last second saw `rate` arrivals.
    fn latency_at(capacity: f64, rate: u64) -> Duration {
        let (m, hand) = model(capacity);
        burst(&m, rate);
        hand.advance(100 * MS);
        assert_eq!(m.stats().current_rate, rate as f64);
        latency(m.admit())
    }

    #[test]
    fn latency_climbs_as_load_nears_capacity() {
        assert_eq!(latency_at(100.0, 0), 5 * MS);
        assert_eq!(latency_at(100.0, 50), 10 * MS);
        assert_eq!(latency_at(100.0, 80), 25 * MS);
        assert_eq!(latency_at(100.0, 90), 50 * MS);
        // Headroom is floored at 5 %: at and near capacity latency stops at 20 × base.
        assert_eq!(latency_at(100.0, 95), 100 * MS);
        assert_eq!(latency_at(100.0, 100), 100 * MS);
    }

    #[test]
    fn rate_window_forgets_arrivals_older_than_a_second() {
        let (m, hand) = model(100.0);
        burst(&m, 30);
        assert_eq!(
            m.stats().current_rate,
            0.0,
            "the filling bucket is not counted"
        );
        hand.advance(100 * MS);
        assert_eq!(m.stats().current_rate, 30.0);
        hand.advance(900 * MS);
        assert_eq!(m.stats().current_rate, 30.0);
        hand.advance(100 * MS);
        assert_eq!(m.stats().current_rate, 0.0);
        hand.advance(Duration::from_secs(3600));
        assert_eq!(m.stats().current_rate, 0.0);
    }

    #[test]
    fn past_capacity_the_excess_share_fails_exactly() {
        let (m, hand) = model(100.0);
        burst(&m, 200);
        hand.advance(100 * MS); // 200/s: u = 2, one in two fails
        assert_eq!(m.admit(), Verdict::Serve { latency: 100 * MS });
        assert_eq!(m.admit(), Verdict::FailOverload, "shed at once, no latency");
        assert_eq!(burst(&m, 18), (9, 0, 9, 0));
        assert_eq!(m.stats().failed_overload, 10);

        let (m, hand) = model(100.0);
        burst(&m, 300);
        hand.advance(100 * MS); // 300/s: two in three fail
        assert_eq!(burst(&m, 30), (10, 0, 20, 0));
        assert_eq!(m.stats().failed_overload, 20);
    }

    #[test]
    fn sustained_overload_takes_it_down_then_it_comes_back() {
        let (m, hand) = model(10.0);
        burst(&m, 20);
        hand.advance(100 * MS); // t = 0.1 s: overload first seen
        steady(&m, &hand, 20, 31); // through t = 3.1 s: exactly the grace, still up
        let before = m.stats();
        assert_eq!(
            (before.times_down, before.failed_down, before.down),
            (0, 0, false)
        );
        // t = 3.2 s: overloaded for longer than the grace.
        assert_eq!(
            m.admit(),
            Verdict::FailDown {
                retry_after: Duration::from_secs(10)
            }
        );
        let after = m.stats();
        assert_eq!(
            (after.times_down, after.failed_down, after.down),
            (1, 1, true)
        );
        hand.advance(Duration::from_secs(4));
        assert_eq!(
            m.admit(),
            Verdict::FailDown {
                retry_after: Duration::from_secs(6)
            }
        );

        hand.advance(Duration::from_secs(6) - MS);
        assert!(m.stats().down, "still down 1 ms before down_for has passed");
        hand.advance(MS);
        assert!(!m.stats().down);
        assert_eq!(m.admit(), Verdict::Serve { latency: 5 * MS });
        let back = m.stats();
        assert_eq!(
            (back.times_down, back.failed_down, back.down),
            (1, 2, false)
        );
    }

    #[test]
    fn a_storm_that_goes_on_takes_it_down_again() {
        let (m, hand) = model(10.0);
        steady(&m, &hand, 20, 40); // down at t = 3.2 s
        assert_eq!(m.stats().times_down, 1);
        // Up again at 13.2 s into the same storm: overloaded at once, down again at 16.3 s.
        steady(&m, &hand, 20, 91); // through t = 13.0 s
        assert_eq!(m.stats().times_down, 1);
        assert!(m.stats().down);
        steady(&m, &hand, 20, 32); // through t = 16.2 s
        assert_eq!(m.stats().times_down, 1);
        assert!(!m.stats().down);
        steady(&m, &hand, 20, 1); // t = 16.3 s
        assert_eq!(m.stats().times_down, 2);
        assert!(m.stats().down);
    }

    #[test]
    fn overload_must_be_continuous_to_count() {
        let (m, hand) = model(10.0);
        steady(&m, &hand, 20, 25); // 2.4 s overloaded
        hand.advance(Duration::from_secs(2)); // quiet: the window empties
        assert_eq!(burst(&m, 1), (1, 0, 0, 0));
        hand.advance(100 * MS);
        steady(&m, &hand, 20, 25); // 2.3 s more: a fresh grace period, not 4.6 s in all
        assert_eq!(m.stats().times_down, 0);
    }

    #[test]
    fn brownout_slows_answers_and_fails_its_share_exactly() {
        let (m, hand) = model(100.0);
        m.set_brownout(3.0, 0.3);
        // 40/s is 1.2× what the slowed biller copes with: the whole share fails.
        burst(&m, 40);
        hand.advance(100 * MS);
        assert_eq!(burst(&m, 10), (7, 3, 0, 0));
        assert_eq!(m.stats().failed_brownout, 3);
        m.set_brownout(3.0, 0.0);
        assert_eq!(latency(m.admit()), latency_at(100.0, 40) * 3);
        m.clear_brownout();
        assert_eq!(latency(m.admit()), latency_at(100.0, 40));
    }

    #[test]
    fn brownout_failures_follow_the_load_on_the_slowed_biller() {
        let share_failing = |rate: u64| {
            let (m, hand) = model(100.0);
            m.set_brownout(3.0, 0.3);
            burst(&m, rate);
            hand.advance(100 * MS);
            burst(&m, 100).1
        };
        // Up to half of what the slowed biller copes with (100/3 ≈ 33/s): nothing fails.
        assert_eq!(share_failing(10), 0);
        assert_eq!(share_failing(16), 0);
        // Three quarters of it: half the share.
        assert_eq!(share_failing(25), 15);
        // All of it and more: the whole share.
        assert_eq!(share_failing(34), 30);
        assert_eq!(share_failing(90), 30);
    }

    #[test]
    fn brownout_values_are_clamped_not_trusted() {
        let (m, hand) = model(100.0);
        burst(&m, 60);
        hand.advance(100 * MS);
        // A NaN factor counts as 1 (60/s is then 0.6 of capacity: a fifth of the share fails)
        // and an infinite share as all calls.
        m.set_brownout(f64::NAN, f64::INFINITY);
        assert_eq!(burst(&m, 10), (8, 2, 0, 0));
        let (m, _) = model(100.0);
        m.set_brownout(f64::INFINITY, -1.0);
        assert_eq!(
            m.admit(),
            Verdict::Serve {
                latency: 5 * MS * 1000
            }
        );
    }

    #[test]
    fn latency_is_capped_and_odd_options_do_not_panic() {
        let (clock, _) = Clock::fake();
        let options = LoadOptions {
            capacity_per_sec: f64::NAN,
            base_latency: Duration::MAX,
            overload_grace: Duration::MAX,
            down_for: Duration::MAX,
        };
        let m = LoadModel::new(options, clock);
        assert_eq!(
            m.admit(),
            Verdict::Serve {
                latency: MAX_LATENCY
            }
        );
        m.set_brownout(1000.0, 0.0);
        assert_eq!(
            m.admit(),
            Verdict::Serve {
                latency: MAX_LATENCY
            }
        );
    }
}
