//! How many calls may be at the biller at once: a hard cap, and below it a limit that adapts
//! to the biller's latency (Gradient2, from Netflix's concurrency-limits) and backs off on
//! failures.
//!
//! # Why Gradient2
//!
//! The stand-in biller, like the real one in 2014, gets slower well before it fails: latency
//! climbs as load nears capacity. Gradient2 reacts to that climb, relative to the biller's own
//! long-term latency, so no operator has to know a target latency (AIMD needs one, and Envoy's
//! filter needs periodic low-concurrency windows to measure the minimum RTT, which would throttle
//! payments on a timer). It has no timers and no windows, so it is a pure function of the
//! samples it is given: deterministic under the fake clock. Failures (timeouts, overload
//! answers) carry no trustworthy RTT, so they cut the limit multiplicatively, as AIMD does.
//!
//! On each success with round-trip time `rtt`:
//! ```text
//! long     = EMA(rtt) over long_window samples   (the biller's normal latency)
//! short    = EMA(rtt) over short_window samples  (its latency now)
//! if long > 2 × short: long ×= 0.95              (recover fast once an overload is over)
//! gradient = clamp(rtt_tolerance × long / short, 0.5, 1.0)
//! new      = limit × gradient + queue_size
//! if new > limit and in_flight (as the call ends) < limit / 2: keep limit (no evidence)
//! limit    = clamp(limit × (1 − smoothing) + new × smoothing, min_limit, max_in_flight)
//! ```
//! On each failure: `limit = max(min_limit, limit × backoff_ratio)`.
//!
//! # Headroom for payments
//!
//! [`AdaptiveLimit::try_acquire_with_headroom`] admits only while `in_flight + reserve <
//! limit`, so a caller can keep the last slots for more important work: scheduled polls shed
//! first (largest reserve), user inquiries next, payments last (reserve 0, the plain
//! [`AdaptiveLimit::try_acquire`]). The reserves are absolute slots: when the limit shrinks to
//! the size of a reserve, everything but payments is refused — which is the point.
//!
//! # Sharded by core
//!
//! The in-flight count is kept per core ([`crate::shards`]), so two cores admitting calls
//! write no common line: the limit and the reserve are split over the shards (the parts add up
//! to the whole), a call takes a slot in its core's shard, or in another's when its own is
//! full. The hard cap stays exact — at most `limit` calls in flight in all — and a class with a
//! reserve never holds more than `limit − reserve` slots; the reserve is checked per shard, so
//! a lower class may still find a free slot in one shard while another shard is full of
//! payments. The limit itself is read-mostly: only completed calls write it.

mod in_flight;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{since, Clock};
use crate::config;
use governor::nanos::Nanos;
use in_flight::InFlight;

/// Round-trip times below this are all taken as this: the limit reacts to a biller slowing
/// down, not to the microseconds of a fast one's jitter.
pub const RTT_FLOOR: Duration = Duration::from_millis(10);

/// The tuning of an [`AdaptiveLimit`]. [`ConcurrencySettings::new`] gives the defaults; values
/// out of range are clamped when the limit is built.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencySettings {
    /// The hard cap on calls in flight (`[biller] max_in_flight`; at least 1).
    pub max_in_flight: u32,
    /// The limit never falls below this (clamped to 1..=max_in_flight). Default 4.
    pub min_limit: u32,
    /// The limit to start from (clamped to min_limit..=max_in_flight). Default 20.
    pub initial_limit: u32,
    /// How far the limit may run ahead of what the latency justifies. Default 4.
    pub queue_size: u32,
    /// Share of each new estimate taken into the limit (0 < x ≤ 1). Default 0.2.
    pub smoothing: f64,
    /// How much slower than usual the biller may get before the limit shrinks (≥ 1). Default 1.5.
    pub rtt_tolerance: f64,
    /// Samples the long-term (normal) latency averages over. Default 600.
    pub long_window: u32,
    /// Samples the short-term (current) latency averages over. Default 10.
    pub short_window: u32,
    /// The limit is multiplied by this on every failure (0 < x < 1). Default 0.9.
    pub backoff_ratio: f64,
}

impl ConcurrencySettings {
    /// The defaults, under the hard cap `max_in_flight`.
    pub fn new(max_in_flight: u32) -> Self {
        ConcurrencySettings {
            max_in_flight,
            min_limit: 4,
            initial_limit: 20,
            queue_size: 4,
            smoothing: 0.2,
            rtt_tolerance: 1.5,
            long_window: 600,
            short_window: 10,
            backoff_ratio: 0.9,
        }
    }
}

impl From<&config::Biller> for ConcurrencySettings {
    /// The defaults under `[biller] max_in_flight`.
    fn from(biller: &config::Biller) -> Self {
        ConcurrencySettings::new(biller.max_in_flight)
    }
}

/// The clamped tuning the arithmetic uses.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    max: f64,
    min: f64,
    queue: f64,
    smoothing: f64,
    tolerance: f64,
    long_alpha: f64,
    short_alpha: f64,
    backoff: f64,
}

fn clamp_or(value: f64, low: f64, high: f64, default: f64) -> f64 {
    if value.is_nan() {
        default
    } else {
        value.clamp(low, high)
    }
}

/// Weight of a new sample in an exponential average over `n` samples.
fn alpha(n: u32) -> f64 {
    2.0 / (f64::from(n.max(1)) + 1.0)
}

impl Tuning {
    fn new(s: &ConcurrencySettings) -> Self {
        let max = s.max_in_flight.max(1);
        Tuning {
            max: f64::from(max),
            min: f64::from(s.min_limit.clamp(1, max)),
            queue: f64::from(s.queue_size),
            smoothing: clamp_or(s.smoothing, 0.01, 1.0, 0.2),
            tolerance: clamp_or(s.rtt_tolerance, 1.0, 100.0, 1.5),
            long_alpha: alpha(s.long_window),
            short_alpha: alpha(s.short_window),
            backoff: clamp_or(s.backoff_ratio, 0.1, 0.99, 0.9),
        }
    }
}

/// The in-flight cap and adaptive limit, shared through an `Arc`. Lock-free: a counter per
/// core, and the limit and two latency averages as `f64` bits in atomics.
#[derive(Debug)]
pub struct AdaptiveLimit {
    settings: ConcurrencySettings,
    tuning: Tuning,
    clock: Clock,
    in_flight: InFlight,
    limit: AtomicU64,
    /// Long- and short-term RTT averages in nanoseconds; 0 before the first sample.
    long_rtt: AtomicU64,
    short_rtt: AtomicU64,
}

/// One slot at the biller, held across the call (it owns an `Arc`, so it crosses `.await`).
/// Report how the call went with [`success`](Permit::success), [`failure`](Permit::failure) or
/// [`ignore`](Permit::ignore); dropping it unreported is an `ignore`. The slot is freed either way.
#[derive(Debug)]
#[must_use = "dropping a permit frees its slot at once"]
pub struct Permit {
    limit: Arc<AdaptiveLimit>,
    slot: Slot,
}

/// One slot at the biller without a hold on its limit: what a caller that keeps the limit at
/// hand (borrowed) stores instead of a [`Permit`]. Give it back with [`AdaptiveLimit::release`],
/// [`AdaptiveLimit::success`] or [`AdaptiveLimit::failure`] — exactly once, on the limit that
/// issued it; a slot never given back stays taken.
#[derive(Debug)]
#[must_use = "a slot stays taken until it is given back"]
pub struct Slot {
    shard: usize,
    started: Nanos,
}

impl Slot {
    /// When it was taken, on the limit's clock.
    pub fn started(&self) -> Nanos {
        self.started
    }
}

fn load_f64(cell: &AtomicU64) -> f64 {
    f64::from_bits(cell.load(Ordering::Acquire))
}

/// Applies `f` to the `f64` in `cell` and returns the new value.
fn update_f64(cell: &AtomicU64, f: impl Fn(f64) -> f64) -> f64 {
    let mut new = 0.0;
    let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
        new = f(f64::from_bits(bits));
        Some(new.to_bits())
    });
    new
}

impl AdaptiveLimit {
    /// A limit starting at `initial_limit`, nothing in flight.
    pub fn new(settings: ConcurrencySettings, clock: Clock) -> Self {
        let tuning = Tuning::new(&settings);
        let initial = f64::from(settings.initial_limit).clamp(tuning.min, tuning.max);
        AdaptiveLimit {
            tuning,
            clock,
            in_flight: InFlight::new(crate::shards::count()),
            limit: AtomicU64::new(initial.to_bits()),
            long_rtt: AtomicU64::new(0),
            short_rtt: AtomicU64::new(0),
            settings,
        }
    }

    /// The settings it was built with (before clamping).
    pub fn settings(&self) -> &ConcurrencySettings {
        &self.settings
    }

    /// A slot if fewer than `limit()` calls are in flight; `None` (at once) otherwise.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        self.try_acquire_with_headroom(0)
    }

    /// A slot only if `in_flight + reserve < limit()`, keeping `reserve` slots for more important
    /// calls (see the module docs). `None` (at once) otherwise.
    pub fn try_acquire_with_headroom(self: &Arc<Self>, reserve: u32) -> Option<Permit> {
        let slot = self.try_take(reserve, self.clock.now())?;
        Some(Permit {
            limit: Arc::clone(self),
            slot,
        })
    }

    /// As [`AdaptiveLimit::try_acquire_with_headroom`], without cloning the `Arc`: a [`Slot`]
    /// started at `now`, to be given back to this limit.
    #[inline]
    pub fn try_take(&self, reserve: u32, now: Nanos) -> Option<Slot> {
        let shard = self.in_flight.try_take(self.limit(), reserve)?;
        Some(Slot {
            shard,
            started: now,
        })
    }

    /// Gives a slot back; the call says nothing about the biller's capacity.
    #[inline]
    pub fn release(&self, slot: Slot) {
        self.in_flight.release(slot.shard);
    }

    /// Gives a slot back after a call that succeeded after `rtt` (see [`Permit::success`]).
    pub fn success(&self, slot: Slot, rtt: Duration) {
        self.on_success(rtt, self.in_flight());
        self.release(slot);
    }

    /// Gives a slot back after a call that timed out or was refused for overload.
    pub fn failure(&self, slot: Slot) {
        self.on_failure();
        self.release(slot);
    }

    /// The current limit: between `min_limit` and `max_in_flight`.
    pub fn limit(&self) -> u32 {
        // The stored value is always within [min, max] ⊆ [1, u32::MAX].
        load_f64(&self.limit) as u32
    }

    /// Calls in flight now. May briefly exceed `limit()` after the limit shrinks; never exceeds
    /// `max_in_flight`.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.total()
    }

    /// The long- and short-term latency averages, `None` before the first success.
    pub fn rtt(&self) -> Option<(Duration, Duration)> {
        let (long, short) = (load_f64(&self.long_rtt), load_f64(&self.short_rtt));
        (long > 0.0).then(|| {
            (
                Duration::from_nanos(long as u64),
                Duration::from_nanos(short as u64),
            )
        })
    }

    /// `in_flight`: calls in flight as this one completes, itself included (read when the call
    /// ends rather than when it starts, so that taking a slot reads no other core's count).
    fn on_success(&self, rtt: Duration, in_flight: u32) {
        let t = self.tuning;
        // Below the floor every answer counts as fast: jitter among sub-floor latencies is the
        // gateway's own scheduling (pool checkout, a task waiting for a core), not the biller
        // slowing down, and must not shrink the limit.
        let sample = (rtt.as_nanos() as f64).max(RTT_FLOOR.as_nanos() as f64);
        let ema = |alpha: f64| {
            move |avg: f64| {
                if avg > 0.0 {
                    avg + alpha * (sample - avg)
                } else {
                    sample
                }
            }
        };
        let mut long = update_f64(&self.long_rtt, ema(t.long_alpha));
        let short = update_f64(&self.short_rtt, ema(t.short_alpha));
        if long > 2.0 * short {
            long = update_f64(&self.long_rtt, |avg| avg * 0.95);
        }
        let gradient = (t.tolerance * long / short).clamp(0.5, 1.0);
        let in_flight = f64::from(in_flight);
        let _ = self
            .limit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let limit = f64::from_bits(bits);
                let estimate = limit * gradient + t.queue;
                if estimate > limit && in_flight < limit / 2.0 {
                    return None;
                }
                let next = limit * (1.0 - t.smoothing) + estimate * t.smoothing;
                Some(next.clamp(t.min, t.max).to_bits())
            });
    }

    fn on_failure(&self) {
        let t = self.tuning;
        update_f64(&self.limit, |limit| (limit * t.backoff).clamp(t.min, t.max));
    }
}

impl Permit {
    /// The call succeeded after `rtt` (as the caller measured it; [`Permit::elapsed`] is the
    /// time since the permit was taken). Feeds the latency averages and the limit.
    pub fn success(self, rtt: Duration) {
        self.limit.on_success(rtt, self.limit.in_flight());
    }

    /// The call timed out or the biller said it was overloaded: the limit backs off.
    pub fn failure(self) {
        self.limit.on_failure();
    }

    /// The call says nothing about the biller's capacity (refused before sending, cancelled by
    /// the partner, answered from cache): only the slot is freed.
    pub fn ignore(self) {}

    /// Time since the permit was taken, on the limit's clock.
    pub fn elapsed(&self) -> Duration {
        since(self.limit.clock.now(), self.slot.started)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.in_flight.release(self.slot.shard);
    }
}
