//! The circuit breaker in front of the biller: a lock-free state machine on an injected clock.
//!
//! Closed, it counts the outcome of every call in a rolling window and opens on the
//! [`Breaker::record`] that brings the failure share to `failure_rate` (once `min_calls` calls
//! are in the window). Open, [`Breaker::admit`] refuses at once with the exact time left. When the
//! open time has run out it is half-open: up to `half_open_probes` probe-eligible requests go
//! through as [`Probe`]s; `probes_to_close` successes close it, one failure reopens it for twice
//! as long (capped at `max_open_for`). Scheduled polls are never probes.
//!
//! All state is atomics: one word packs state, generation and time, so each transition is a
//! compare-and-swap. `admit` and `record` never block and never allocate. Time-driven changes
//! (open → half-open) are taken by the first `admit` or `state` call that sees the time has come.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use billgate_core::breaker::{Admission, Breaker, BreakerSettings, BreakerState, CallOutcome};
//! use billgate_core::clock::Clock;
//!
//! let (clock, hand) = Clock::fake();
//! let settings = BreakerSettings { min_calls: 2, ..BreakerSettings::default() };
//! let breaker = Arc::new(Breaker::new(settings, clock));
//! assert!(matches!(breaker.admit(true), Admission::Allow));
//! breaker.record(CallOutcome::Failure);
//! breaker.record(CallOutcome::Failure);
//! hand.advance(Duration::from_secs(2));
//! assert!(matches!(
//!     breaker.admit(true),
//!     Admission::Reject { retry_after } if retry_after == Duration::from_secs(3)
//! ));
//! hand.advance(Duration::from_secs(3));
//! let Admission::Probe(probe) = breaker.admit(true) else { unreachable!() };
//! probe.record(CallOutcome::Failure); // open again, for twice as long
//! assert_eq!(breaker.state(), BreakerState::Open);
//! ```

mod probe;
mod settings;
mod window;
mod word;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::nanos;

pub use probe::Probe;
pub use settings::{
    default_max_open_for, outcome_of_status, BreakerSettings, BreakerState, CallOutcome, Transition,
};

use crate::clock::Clock;
use governor::nanos::Nanos;
use window::Window;
use word::{ceil_ms, floor_ms, ms_to_nanos, Word};

/// The breaker. Share it through an `Arc`; every method takes `&self` or `&Arc<Self>`.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    clock: Clock,
    /// `failure_rate` in millionths, 1..=1 000 000.
    rate_ppm: u64,
    /// Calls the window must hold before it is judged: the settings', or this gateway's share
    /// of them in a fleet ([`Breaker::judge_on`]).
    min_calls: AtomicU64,
    probes_to_close: u64,
    open_nanos: u64,
    max_open_nanos: u64,
    probe_timeout_nanos: u64,
    word: AtomicU64,
    window: Window,
    slots: Box<[AtomicU64]>,
    successes: AtomicU64,
    counts: [AtomicU64; 9],
    total: AtomicU64,
    last: AtomicU64,
}

/// What [`Breaker::admit`] says about one request.
#[derive(Debug)]
#[must_use]
pub enum Admission {
    /// Closed: send it, then report its outcome with [`Breaker::record`].
    Allow,
    /// Half-open: send it as a probe, then report its outcome with [`Probe::record`].
    Probe(Probe),
    /// Do not send it. Open: `retry_after` is the exact time left until half-open. Half-open
    /// (no probe slot, or not probe-eligible): the time until the oldest probe in flight must
    /// have answered, or `probe_timeout` when none is.
    Reject { retry_after: Duration },
}

impl Breaker {
    /// A closed breaker. Settings are clamped into range: `failure_rate` to (0, 1] (at least one
    /// millionth), `min_calls`, `buckets`, `half_open_probes` and `probes_to_close` to at least 1,
    /// `max_open_for` to at least `open_for`, `probe_timeout` to at least 1 ms.
    pub fn new(settings: BreakerSettings, clock: Clock) -> Self {
        let rate = (settings.failure_rate * 1e6).round();
        let rate_ppm = if rate >= 1.0 {
            (rate as u64).min(1_000_000)
        } else {
            1
        };
        let open_nanos = nanos(settings.open_for);
        let probes = settings.half_open_probes.max(1) as usize;
        let now = clock.now().as_u64();
        let start = Word {
            state: BreakerState::Closed,
            level: 0,
            generation: 0,
            at_ms: floor_ms(now),
        };
        Breaker {
            rate_ppm,
            min_calls: AtomicU64::new(u64::from(settings.min_calls.max(1))),
            probes_to_close: u64::from(settings.probes_to_close.max(1)),
            open_nanos,
            max_open_nanos: nanos(settings.max_open_for).max(open_nanos),
            probe_timeout_nanos: nanos(settings.probe_timeout).max(1_000_000),
            word: AtomicU64::new(start.pack()),
            window: Window::new(nanos(settings.window), settings.buckets),
            slots: (0..probes).map(|_| AtomicU64::new(0)).collect(),
            successes: AtomicU64::new(0),
            counts: Default::default(),
            total: AtomicU64::new(0),
            last: AtomicU64::new(0),
            settings,
            clock,
        }
    }

    /// Judges the window once it holds `min_calls` calls (at least 1) from now on: one of a
    /// fleet's gateways sees its share of the calls, and waits for its share of the evidence.
    pub fn judge_on(&self, min_calls: u32) {
        self.min_calls
            .store(u64::from(min_calls.max(1)), Ordering::Relaxed);
    }

    /// The settings it was built with (before clamping).
    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// Whether a request may go to the biller now. `probe_eligible` is false for scheduled
    /// polls, which are refused while half-open: probes are never polls.
    pub fn admit(self: &Arc<Self>, probe_eligible: bool) -> Admission {
        self.admit_at(probe_eligible, self.clock.now())
    }

    /// [`Breaker::admit`] at `now`, a reading of the breaker's clock the caller already made.
    #[inline]
    pub fn admit_at(self: &Arc<Self>, probe_eligible: bool, now: Nanos) -> Admission {
        let now = now.as_u64();
        // Closed is the common case: one load, nothing written.
        let word = self.current();
        if word.state == BreakerState::Closed {
            return Admission::Allow;
        }
        // A half-open probe slot can be claimed just as another thread closes or reopens the
        // breaker; then decide again on the new state. Two tries are plenty; a third refuses.
        for _ in 0..3 {
            let word = self.observe(now);
            match word.state {
                BreakerState::Closed => return Admission::Allow,
                BreakerState::Open => {
                    let retry_after = ms_to_nanos(word.at_ms).saturating_sub(now);
                    return Admission::Reject {
                        retry_after: Duration::from_nanos(retry_after),
                    };
                }
                BreakerState::HalfOpen => {
                    if !probe_eligible {
                        return self.refuse_half_open(word.generation, now);
                    }
                    match self.claim_slot(word.generation, now) {
                        None => return self.refuse_half_open(word.generation, now),
                        Some(probe) if self.current() == word => return Admission::Probe(probe),
                        Some(stale) => drop(stale),
                    }
                }
            }
        }
        Admission::Reject {
            retry_after: Duration::from_nanos(self.probe_timeout_nanos),
        }
    }

    /// Reports the outcome of a call admitted with [`Admission::Allow`]. While closed, this is
    /// where the breaker opens: on the call that brings the failure share in the window to
    /// `failure_rate`, once the window holds `min_calls` calls.
    pub fn record(&self, outcome: CallOutcome) {
        let now = self.clock.now().as_u64();
        self.window.add(now, outcome == CallOutcome::Failure);
        let word = self.current();
        if word.state != BreakerState::Closed {
            return;
        }
        let (calls, failures) = self.window.sum(now);
        if calls >= self.min_calls.load(Ordering::Relaxed)
            && u128::from(failures) * 1_000_000 >= u128::from(self.rate_ppm) * u128::from(calls)
        {
            self.open(word, 0, now);
        }
    }

    /// The state now (taking the open → half-open change if its time has come).
    pub fn state(&self) -> BreakerState {
        self.observe(self.clock.now().as_u64()).state
    }

    /// Transitions so far, all kinds together: a cheap "has anything changed" for the owner.
    pub fn transitions(&self) -> u64 {
        self.total.load(Ordering::Acquire)
    }

    /// Transitions so far from `from` to `to` (zero for pairs that never happen, such as
    /// closed → half-open).
    pub fn transitions_between(&self, from: BreakerState, to: BreakerState) -> u64 {
        self.counts[from.index() * 3 + to.index()].load(Ordering::Relaxed)
    }

    /// The latest transition, or `None` while the breaker has never left closed.
    pub fn last_transition(&self) -> Option<Transition> {
        word::unpack_transition(self.last.load(Ordering::Acquire))
    }

    /// How long the breaker will stay open the next time a probe fails: `open_for` doubled once
    /// per failed probe since it last closed, capped at `max_open_for`.
    pub fn next_open_for(&self) -> Duration {
        let word = self.current();
        let level = match word.state {
            BreakerState::Closed => 0,
            _ => self.next_level(word.level),
        };
        Duration::from_nanos(self.open_nanos_at(level))
    }

    fn current(&self) -> Word {
        Word::unpack(self.word.load(Ordering::Acquire))
    }

    /// The current word, after turning open into half-open if the open time has run out.
    fn observe(&self, now: u64) -> Word {
        loop {
            let word = self.current();
            if word.state != BreakerState::Open || now < ms_to_nanos(word.at_ms) {
                return word;
            }
            let next = word.next(BreakerState::HalfOpen, word.level, word.at_ms);
            if self.transition(word, next) {
                let generation = next.generation;
                let _ = self
                    .successes
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                        (word::count_of(bits, generation) == 0)
                            .then(|| word::pack_count(generation, 0))
                    });
                return next;
            }
        }
    }

    fn open_nanos_at(&self, level: u8) -> u64 {
        self.open_nanos
            .checked_shl(u32::from(level))
            .filter(|n| n >> u32::from(level) == self.open_nanos)
            .map_or(self.max_open_nanos, |n| n.min(self.max_open_nanos))
    }

    fn next_level(&self, level: u8) -> u8 {
        if self.open_nanos_at(level) >= self.max_open_nanos || level >= 63 {
            level
        } else {
            level + 1
        }
    }

    /// Opens from `word` for `open_for × 2^level` (capped).
    fn open(&self, word: Word, level: u8, now: u64) -> bool {
        let until = now.saturating_add(self.open_nanos_at(level));
        self.transition(word, word.next(BreakerState::Open, level, ceil_ms(until)))
    }

    fn transition(&self, from: Word, to: Word) -> bool {
        if self
            .word
            .compare_exchange(from.pack(), to.pack(), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let at_ms = match from.state {
            BreakerState::Open => from.at_ms,
            _ => floor_ms(self.clock.now().as_u64()),
        };
        self.counts[from.state.index() * 3 + to.state.index()].fetch_add(1, Ordering::Relaxed);
        self.last.store(
            word::pack_transition(from.state, to.state, at_ms),
            Ordering::Release,
        );
        self.total.fetch_add(1, Ordering::AcqRel);
        let (from_s, to_s) = (from.state.as_str(), to.state.as_str());
        match to.state {
            BreakerState::Open => {
                let open_ms = to.at_ms.saturating_sub(at_ms);
                tracing::warn!(from = from_s, to = to_s, open_ms, "biller breaker opened");
            }
            BreakerState::HalfOpen => {
                tracing::info!(
                    from = from_s,
                    to = to_s,
                    "biller breaker half-open, probing"
                )
            }
            BreakerState::Closed => {
                tracing::info!(from = from_s, to = to_s, "biller breaker closed")
            }
        }
        true
    }
}
