//! The breaker's plain values: its settings, the outcome of a call, its states and transitions.

use std::time::Duration;

use crate::config;

/// How the breaker judges the biller. Build it from the configuration with
/// [`BreakerSettings::from`] (or [`BreakerSettings::for_biller`]) and adjust the extra fields.
///
/// Out-of-range values are clamped when the [`Breaker`](super::Breaker) is built, never
/// rejected: the configuration loader has validated what operators write.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Share of failed calls in the window (0 < x ≤ 1) that opens the breaker. Default 0.5.
    /// Compared exactly to the millionth, so `0.1` opens at 3 failures in 30 calls.
    pub failure_rate: f64,
    /// Rolling window the share is computed over. Default 10 s.
    pub window: Duration,
    /// Buckets the window is split into; the window forgets one bucket at a time. Default 10.
    pub buckets: u32,
    /// Calls needed in the window before the breaker may open (at least 1). Default 20.
    pub min_calls: u32,
    /// How long the breaker first stays open before going half-open. Default 5 s.
    pub open_for: Duration,
    /// The cap on the open time, which doubles on every failed probe and is reset to
    /// `open_for` when the breaker closes. Default: 8 × `open_for` (three doublings), but not
    /// more than 60 s unless `open_for` itself is longer (see [`default_max_open_for`]).
    pub max_open_for: Duration,
    /// Probes that may be in flight at once while half-open (at least 1). Default 3.
    pub half_open_probes: u32,
    /// Successful probes needed to close the breaker (at least 1). Default 3.
    pub probes_to_close: u32,
    /// A probe without an answer after this long no longer holds its half-open slot, so a lost
    /// probe cannot keep the breaker half-open for ever. Default `open_for`;
    /// [`BreakerSettings::for_biller`] uses the biller's connect + response timeouts.
    pub probe_timeout: Duration,
}

/// The default cap on the open time: 8 × `open_for`, no more than 60 s, no less than `open_for`.
pub fn default_max_open_for(open_for: Duration) -> Duration {
    open_for
        .saturating_mul(8)
        .min(Duration::from_secs(60))
        .max(open_for)
}

impl BreakerSettings {
    /// The breaker for a biller: `[biller.breaker]`, with `probe_timeout` set to the longest a
    /// forwarded call may take to answer (`connect_timeout + timeout`).
    pub fn for_biller(biller: &config::Biller) -> Self {
        BreakerSettings {
            probe_timeout: biller.connect_timeout.saturating_add(biller.timeout),
            ..BreakerSettings::from(&biller.breaker)
        }
    }
}

impl From<&config::BreakerConfig> for BreakerSettings {
    /// The four configured values, plus the documented defaults for the rest.
    fn from(c: &config::BreakerConfig) -> Self {
        BreakerSettings {
            failure_rate: c.failure_rate,
            window: c.window,
            min_calls: c.min_calls,
            open_for: c.open_for,
            max_open_for: default_max_open_for(c.open_for),
            probe_timeout: c.open_for,
            ..BreakerSettings::default()
        }
    }
}

impl Default for BreakerSettings {
    /// The defaults of `[biller.breaker]`: 0.5 over 10 s, 20 calls, open 5 s (cap 40 s),
    /// 3 probes, 3 successes to close, probes time out after 5 s.
    fn default() -> Self {
        let open_for = Duration::from_secs(5);
        BreakerSettings {
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            buckets: 10,
            min_calls: 20,
            open_for,
            max_open_for: default_max_open_for(open_for),
            half_open_probes: 3,
            probes_to_close: 3,
            probe_timeout: open_for,
        }
    }
}

/// What one call to the biller came to, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    /// An answer the biller meant to give, including 4xx: the partner's mistake, not the biller's.
    Success,
    /// A 5xx, a timeout or a connection error.
    Failure,
}

/// The outcome of a call the biller answered with `status`: 5xx is a failure, anything else
/// (1xx–4xx) a success. Timeouts and connection errors have no status: record them as
/// [`CallOutcome::Failure`].
pub fn outcome_of_status(status: u16) -> CallOutcome {
    if (500..600).contains(&status) {
        CallOutcome::Failure
    } else {
        CallOutcome::Success
    }
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls flow; failures are counted.
    Closed,
    /// Calls are refused at once until the open time has passed.
    Open,
    /// A few probe calls decide whether to close or to reopen.
    HalfOpen,
}

impl BreakerState {
    /// Every state, in gauge order.
    pub const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];

    /// The value of the `billgate_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        self.index() as i64
    }

    /// The label used in logs and metrics: `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    /// The state with this index; out-of-range bits read as closed (never written).
    pub(super) fn from_bits(bits: u64) -> Self {
        match bits & 0b11 {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// One change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    /// When it happened, on the breaker's clock (millisecond resolution). For open → half-open,
    /// the moment the open time ran out, even if the change was noticed later.
    pub at: Duration,
}
