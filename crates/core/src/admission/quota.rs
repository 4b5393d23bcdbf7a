//! A partner's quota for one class: GCRA cells ([`Gcra`], governor's arithmetic) spent at the
//! decision's own clock reading. Each answers with what the `RateLimit` fields need: remaining
//! requests and time to refill.
//!
//! # Sharded by core
//!
//! A quota with a burst of at least [`MIN_SHARD_BURST`] per core is split into one cell per
//! core ([`crate::shards`]), each at `count / S` with its part of the burst, the parts adding up
//! to the whole: one partner sending from several cores at once writes no common line. A
//! request spends in its core's cell, else in the first other one with room; a refusal waits
//! for the soonest. No more than the rate and its burst pass in all, but a refusal may name a
//! wait up to `S` emission intervals longer than one cell would, and the remaining count is the
//! serving cell's share scaled up, an estimate. Smaller quotas are one cell and answer exactly
//! as governor's direct limiter does.
//!
//! Kept over governor's direct limiter: two threads on one hot quota, 42.0 ns a check here against governor's 117.7 ns (criterion, 2026-12-04, `cargo bench --bench admission -- class_quota`).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::nanos::Nanos;

use super::gcra::{Gcra, Refused};
use crate::config::Rate;
use crate::shards::{self, split, Padded};

/// A quota is split over several cores only when each gets at least this much burst.
pub const MIN_SHARD_BURST: u32 = 16;

/// What a quota says after a check, in the terms of its `RateLimit-Policy` (`q` requests per
/// `w` seconds, the rate as configured): enough for `RateLimit: "name";r=…;t=…` and
/// `Retry-After`, each with one meaning on every answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    /// `r`: requests that may be sent now. Never more than `q`, even when the burst is larger:
    /// a client may take it literally.
    pub remaining: u32,
    /// `t`: time until `r` is back at `q` (zero when it is there), on an admitted answer and a
    /// refused one alike.
    pub reset: Duration,
    /// Time until the next request may pass: zero while `r` > 0; on a refusal, `Retry-After`.
    pub wait: Duration,
}

impl Remaining {
    /// A refusal by a limit of `rate`: the next request may pass after `wait`, and the rest of
    /// `q` follows one replenish interval apart.
    pub fn refused(rate: Rate, wait: Duration) -> Remaining {
        let more = ceiling(rate).saturating_sub(1);
        // A refusal is answered at once: no division for a quota of one, one for the rest.
        let reset = if more == 0 {
            wait
        } else {
            wait.saturating_add(rate.replenish_interval().saturating_mul(more))
        };
        Remaining {
            remaining: 0,
            reset,
            wait,
        }
    }
}

/// The most `r` ever says for `rate`: its `q`, or its burst when that is smaller.
pub fn ceiling(rate: Rate) -> u32 {
    rate.count.get().min(rate.burst.get())
}

/// One GCRA cell (or one per core) enforcing a [`Rate`]. Cloning shares the state.
///
/// A quota of one cell keeps only its parameters: its arrival time is the partner's, in the
/// partner's cell ([`crate::admission::PartnerCell`]), which every decision for the partner
/// reads anyway and which is shared by every snapshot. Every check is handed that arrival time
/// (`own`); a sharded quota keeps its cells itself and ignores it.
#[derive(Clone)]
pub struct Quota {
    rate: Rate,
    cells: Cells,
}

#[derive(Clone)]
enum Cells {
    /// One cell, its arrival time kept by the caller: its emission interval in nanoseconds
    /// (the rest of its parameters follow from the rate's burst). One word, so that a quota
    /// stays half a line.
    One(u64),
    /// One cell per core.
    Sharded(Arc<[Padded<Cell>]>),
}

/// One core's cell: its arrival time and, on the same line, its parameters and the part of the
/// burst it holds.
struct Cell {
    tat: AtomicU64,
    gcra: Gcra,
    burst: u32,
    /// Its emission interval (the quota's, times the number of cells).
    interval: Duration,
}

impl Quota {
    pub fn new(rate: Rate) -> Self {
        let fit = (rate.burst.get() / MIN_SHARD_BURST) as usize;
        Quota::split_over(rate, shards::count().min(fit).max(1))
    }

    /// A quota of one cell, whose arrival time is the `own` each check is handed: state that
    /// the caller keeps where it outlives the quota.
    pub fn one_cell(rate: Rate) -> Self {
        Quota::split_over(rate, 1)
    }

    /// A quota split over exactly `n` cells (each must get some burst).
    fn split_over(rate: Rate, n: usize) -> Self {
        let interval = rate
            .replenish_interval()
            .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
        let cell = |k: usize| {
            let part = split(u64::from(rate.burst.get()), n, k);
            let burst =
                NonZeroU32::new(u32::try_from(part).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
            Padded(Cell {
                tat: AtomicU64::new(0),
                gcra: Gcra::new(interval, burst),
                burst: burst.get(),
                interval,
            })
        };
        if n == 1 {
            return Quota {
                rate,
                cells: Cells::One(Gcra::new(interval, rate.burst).t()),
            };
        }
        Quota {
            rate,
            cells: Cells::Sharded((0..n).map(cell).collect()),
        }
    }

    /// Whether its arrival time is the caller's (`own`): one cell, not sharded.
    pub fn is_one_cell(&self) -> bool {
        matches!(self.cells, Cells::One(_))
    }

    /// The rate this quota enforces.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Where a sharded quota's cells are, for [`QuotaLines::prefetch`] (none for one cell:
    /// its arrival time is in the partner's cell).
    pub fn lines(&self) -> QuotaLines {
        match &self.cells {
            Cells::One(_) => QuotaLines::default(),
            // Cells are 128-byte aligned and at most MAX_SHARDS (16): the count fits below.
            Cells::Sharded(cells) => QuotaLines(
                crate::memory::address_of(&**cells) | (cells.len().saturating_sub(1) & 0x7f),
            ),
        }
    }

    /// Spends one request: `Ok` with what remains, or `Err` with what the denial says. `own`
    /// is the arrival time of a one-cell quota (see [`Quota`]).
    #[inline]
    pub fn check(&self, own: &AtomicU64, now: Nanos) -> Result<Remaining, Remaining> {
        self.check_n(own, now, 1)
    }

    /// Spends `n` requests at once (`n` ≥ 1; more than the burst is always refused, with the
    /// wait for a whole burst).
    #[inline]
    pub fn check_n(&self, own: &AtomicU64, now: Nanos, n: u32) -> Result<Remaining, Remaining> {
        self.pass_n(own, now, n)
            .map(|passed| self.remaining(passed))
    }

    /// [`Quota::check_n`], leaving what remains to be worked out by [`Quota::remaining`] only
    /// if it is needed (a division: a request refused by a later check never needs it).
    #[inline]
    pub fn pass_n(&self, own: &AtomicU64, now: Nanos, n: u32) -> Result<Passed, Remaining> {
        let (now, n) = (now.as_u64(), n.max(1));
        let cells = match &self.cells {
            Cells::One(t) => {
                return match Gcra::from_nanos(*t, self.rate.burst).spend(own, now, n) {
                    Ok(tat) => Ok(Passed { cell: 0, now, tat }),
                    Err(refused) => Err(Remaining::refused(self.rate, self.wait(refused, now))),
                };
            }
            Cells::Sharded(cells) => cells,
        };
        let mut soonest: Option<Duration> = None;
        for k in shards::from(shards::home(cells.len()), cells.len()) {
            let cell = &cells[k];
            let wait = match cell.gcra.spend(&cell.tat, now, n) {
                Ok(tat) => return Ok(Passed { cell: k, now, tat }),
                Err(refused) => self.wait(refused, now),
            };
            soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
        }
        Err(Remaining::refused(self.rate, soonest.unwrap_or_default()))
    }

    /// What remains of this quota after `passed` (which it let through): the serving cell's
    /// share, scaled to the whole.
    #[inline]
    pub fn remaining(&self, passed: Passed) -> Remaining {
        let (gcra, burst, interval, scale) = match &self.cells {
            Cells::One(t) => (
                Gcra::from_nanos(*t, self.rate.burst),
                self.rate.burst.get(),
                *t,
                1,
            ),
            Cells::Sharded(cells) => {
                let Some(cell) = cells.get(passed.cell) else {
                    return Remaining::refused(self.rate, Duration::ZERO);
                };
                let interval = u64::try_from(cell.interval.as_nanos()).unwrap_or(u64::MAX);
                (cell.gcra, cell.burst, interval, cells.len() as u32)
            }
        };
        let ceiling = ceiling(self.rate);
        let left = gcra.remaining(passed.now, passed.tat);
        // In nanoseconds, one `Duration` made at the end: this runs on every admitted request.
        let ahead = passed.tat.saturating_sub(passed.now);
        // `r` reaches `q` when this cell holds its share of `q`: until then, the arrival time
        // must fall back to within (burst − share) intervals of now.
        let share = if scale == 1 {
            ceiling
        } else {
            ceiling.div_ceil(scale)
        };
        let slack = interval.saturating_mul(u64::from(burst - share.min(burst)));
        // The next request passes once the arrival time is within (burst − 1) intervals.
        let wait = if left == 0 {
            ahead.saturating_sub(interval.saturating_mul(u64::from(burst.saturating_sub(1))))
        } else {
            0
        };
        Remaining {
            remaining: left.saturating_mul(scale).min(ceiling),
            reset: Duration::from_nanos(ahead.saturating_sub(slack)),
            wait: Duration::from_nanos(wait),
        }
    }

    /// What this quota would say now, spending nothing: for the operators' view of a partner.
    /// `own` is the arrival time of a one-cell quota (see [`Quota`]).
    pub fn peek(&self, own: &AtomicU64, now: Nanos) -> Remaining {
        let now = now.as_u64();
        let ceiling = ceiling(self.rate);
        let one = |gcra: Gcra, tat: u64, burst: u32, interval: Duration, share: u32| {
            let left = gcra.remaining(now, tat);
            let ahead = Duration::from_nanos(tat.saturating_sub(now));
            let slack = interval.saturating_mul(burst.saturating_sub(share));
            let next = interval.saturating_mul(burst.saturating_sub(1));
            (
                left,
                ahead.saturating_sub(slack),
                ahead.saturating_sub(next),
            )
        };
        let (left, reset, wait) = match &self.cells {
            Cells::One(t) => {
                let burst = self.rate.burst.get();
                one(
                    Gcra::from_nanos(*t, self.rate.burst),
                    own.load(Ordering::Acquire),
                    burst,
                    Duration::from_nanos(*t),
                    ceiling.min(burst),
                )
            }
            Cells::Sharded(cells) => {
                let scale = u32::try_from(cells.len()).unwrap_or(u32::MAX);
                cells.iter().fold(
                    (0u32, Duration::ZERO, Duration::MAX),
                    |(left, reset, wait), cell| {
                        let share = ceiling.div_ceil(scale).min(cell.burst);
                        let tat = cell.tat.load(Ordering::Acquire);
                        let (l, r, w) = one(cell.gcra, tat, cell.burst, cell.interval, share);
                        (left.saturating_add(l), reset.max(r), wait.min(w))
                    },
                )
            }
        };
        Remaining {
            remaining: left.min(ceiling),
            reset,
            wait: if left > 0 { Duration::ZERO } else { wait },
        }
    }

    /// How long one cell's refusal says to wait.
    fn wait(&self, refused: Refused, now: u64) -> Duration {
        match refused {
            Refused::Until(earliest) => Duration::from_nanos(earliest.saturating_sub(now)),
            // More than a cell's part of the burst at once: the wait for a whole burst.
            Refused::TooMany => self.rate.replenish_interval() * self.rate.burst.get(),
        }
    }

    /// True when two sharded quotas share their cells (a reload carried this one over). A
    /// one-cell quota's state is its partner's: carried with the partner's cell.
    pub fn same_state(&self, other: &Quota) -> bool {
        match (&self.cells, &other.cells) {
            (Cells::Sharded(a), Cells::Sharded(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Where a sharded [`Quota`]'s cells are, as a number (the first one's address, their count
/// less one in the low bits), so this core's cell can be asked for (see [`crate::memory`]).
/// The default is none: no quota, or one whose arrival time is in the partner's cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaLines(pub(crate) usize);

impl QuotaLines {
    /// Asks for this core's cell to be brought into cache.
    #[inline]
    pub fn prefetch(self) {
        if self.0 != 0 {
            let count = (self.0 & 0x7f) + 1;
            let first = self.0 & !0x7f;
            let size = std::mem::size_of::<Padded<Cell>>();
            crate::memory::prefetch_address(first.wrapping_add(shards::home(count) * size));
        }
    }
}

/// A request a [`Quota`] let through, what remains not yet worked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    cell: usize,
    /// When it passed, and the serving cell's arrival time after it.
    now: u64,
    tat: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::config::parse_rate;

    /// `2/s burst 3`: the policy says `q=2;w=1`, so `r` never says more than 2 although three
    /// may pass at once; `t` is the time until `r` is back at 2, on admitted and refused
    /// answers alike; the refusal's wait is until the next request may pass.
    #[test]
    fn spends_the_burst_then_denies_with_the_wait() {
        let (clock, hand) = Clock::fake();
        let q = Quota::new(parse_rate("2/s burst 3").unwrap());
        let own = AtomicU64::new(0);
        let ms = Duration::from_millis;
        let state = |r: Result<Remaining, Remaining>| {
            let (Ok(x) | Err(x)) = r;
            (r.is_ok(), x.remaining, x.reset, x.wait)
        };
        assert_eq!(state(q.check(&own, clock.now())), (true, 2, ms(0), ms(0)));
        assert_eq!(state(q.check(&own, clock.now())), (true, 1, ms(500), ms(0)));
        assert_eq!(
            state(q.check(&own, clock.now())),
            (true, 0, ms(1000), ms(500))
        );
        assert_eq!(
            state(q.check(&own, clock.now())),
            (false, 0, ms(1000), ms(500))
        );
        hand.advance(ms(499));
        assert_eq!(
            state(q.check(&own, clock.now())),
            (false, 0, ms(501), ms(1))
        );
        hand.advance(ms(1));
        assert_eq!(
            state(q.check(&own, clock.now())),
            (true, 0, ms(1000), ms(500))
        );
    }

    /// Requests spaced by `w`/`q` seconds — the pacing the README tells partners — are never
    /// refused, whatever the burst.
    #[test]
    fn pacing_at_the_policy_rate_is_never_refused() {
        for text in ["10/s", "20/s burst 40", "2/min", "5/s burst 1"] {
            let rate = parse_rate(text).unwrap();
            let (clock, hand) = Clock::fake();
            let q = Quota::split_over(rate, 1);
            let own = AtomicU64::new(0);
            let step = rate.period.duration() / rate.count.get();
            for n in 0..1_000 {
                let passed = q.check(&own, clock.now());
                assert!(passed.is_ok(), "{text}: request {n} refused: {passed:?}");
                hand.advance(step);
            }
        }
    }

    /// A peek spends nothing and says what the next check would see before it spends.
    #[test]
    fn a_peek_spends_nothing() {
        for cells in [1, 2] {
            let (clock, hand) = Clock::fake();
            let q = Quota::split_over(parse_rate("40/s").unwrap(), cells);
            let own = AtomicU64::new(0);
            assert_eq!(q.peek(&own, clock.now()).remaining, 40, "{cells} cells");
            for _ in 0..40 {
                assert!(q.check(&own, clock.now()).is_ok());
            }
            let empty = q.peek(&own, clock.now());
            assert_eq!(empty.remaining, 0, "{cells} cells");
            assert_eq!(
                empty,
                q.peek(&own, clock.now()),
                "{cells} cells: a peek spent"
            );
            assert!(!empty.wait.is_zero(), "{cells} cells: {empty:?}");
            hand.advance(Duration::from_secs(1));
            assert_eq!(q.peek(&own, clock.now()).remaining, 40, "{cells} cells");
        }
    }

    /// `2/min`: after both requests `t` is 60 s on the admitted answer and on the refusal
    /// that follows; the refusal's wait (its `Retry-After`) is 30 s, the next request's.
    #[test]
    fn one_cell_answers_as_governors_direct_limiter() {
        use governor::middleware::StateInformationMiddleware;
        use governor::RateLimiter;

        for text in [
            "2/s burst 3",
            "10/s",
            "1/s",
            "5/min burst 2",
            "20/s burst 7",
        ] {
            let rate = parse_rate(text).unwrap();
            let interval = rate.replenish_interval();
            let (clock, hand) = Clock::fake();
            let theirs_quota = governor::Quota::with_period(interval)
                .unwrap()
                .allow_burst(rate.burst);
            let governor = RateLimiter::direct_with_clock(theirs_quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>();
            let q = Quota::split_over(rate, 1);
            let own = AtomicU64::new(0);
            let mut x = u64::from(rate.burst.get());
            for step in 0..400 {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                // Every other step at the same instant, to exhaust the burst; else 0–3 intervals.
                if step % 2 == 0 {
                    hand.advance(interval * ((x >> 33) % 300) as u32 / 100);
                }
                let n = 1 + ((x >> 13) % 4) as u32;
                let now = clock.now();
                let ours = q.check_n(&own, now, n);
                let at = format!("{text}, step {step}, {n} at once");
                match (ours, governor.check_n(NonZeroU32::new(n).unwrap())) {
                    // `r` is governor's remaining burst, capped at `q`; `t` (which governor
                    // has no word for) is zero exactly when `r` is at `q`, and at most the time
                    // `q` whole intervals take.
                    (Ok(ours), Ok(Ok(snapshot))) => {
                        let left = snapshot.remaining_burst_capacity();
                        let ceiling = ceiling(rate);
                        assert_eq!(ours.remaining, left.min(ceiling), "{at}");
                        assert_eq!(ours.reset.is_zero(), left >= ceiling, "{at}: {ours:?}");
                        assert!(ours.reset <= interval * ceiling, "{at}: {ours:?}");
                    }
                    (Err(ours), Ok(Err(not_until))) => assert_eq!(
                        ours,
                        Remaining::refused(rate, not_until.wait_time_from(now)),
                        "{at}"
                    ),
                    // More than the burst at once: never, so the wait for a whole burst.
                    (Err(ours), Err(_)) => assert_eq!(
                        ours,
                        Remaining::refused(rate, interval * rate.burst.get()),
                        "{at}"
                    ),
                    (ours, theirs) => panic!("{at}: ours {ours:?}, governor's {theirs:?}"),
                }
            }
        }
    }

    #[test]
    fn a_per_minute_rate_waits_the_full_interval() {
        let (clock, hand) = Clock::fake();
        let q = Quota::new(parse_rate("2/min").unwrap());
        let own = AtomicU64::new(0);
        assert!(q.check(&own, clock.now()).is_ok());
        let second = q.check(&own, clock.now()).unwrap();
        assert_eq!(
            (second.remaining, second.reset),
            (0, Duration::from_secs(60))
        );
        let refused = q.check(&own, clock.now()).unwrap_err();
        assert_eq!(
            (refused.reset, refused.wait),
            (Duration::from_secs(60), Duration::from_secs(30))
        );
        hand.advance(Duration::from_secs(10));
        let refused = q.check(&own, clock.now()).unwrap_err();
        assert_eq!(
            (refused.reset, refused.wait),
            (Duration::from_secs(50), Duration::from_secs(20))
        );
    }

    #[test]
    fn split_over_cores_it_passes_the_whole_and_no_more() {
        let (clock, hand) = Clock::fake();
        let rate = parse_rate("100/s").unwrap();
        for n in 1..=4 {
            let q = Quota::split_over(rate, n);
            let own = AtomicU64::new(0);
            let burst = std::iter::from_fn(|| q.check(&own, clock.now()).ok()).count();
            assert_eq!(burst, 100, "{n} limiters");
            let mut later = 0;
            for _ in 0..1000 {
                hand.advance(Duration::from_millis(1));
                later += usize::from(q.check(&own, clock.now()).is_ok());
            }
            assert!((100 - n..=100).contains(&later), "{n} limiters: {later}");
            hand.advance(Duration::from_secs(5));
            // One cell spends only the arrival time it is handed.
            assert_eq!(own.load(std::sync::atomic::Ordering::Relaxed) != 0, n == 1);
        }
        let small = Quota::new(parse_rate("20/s").unwrap());
        assert!(small.is_one_cell());
        assert_eq!(small.lines(), QuotaLines::default());
        for n in [2, 16] {
            let q = Quota::split_over(rate, n);
            let Cells::Sharded(cells) = &q.cells else {
                panic!("{n} cells are sharded");
            };
            let lines = q.lines();
            assert_eq!(lines.0 & !0x7f, crate::memory::address_of(&**cells));
            assert_eq!((lines.0 & 0x7f) + 1, n);
            lines.prefetch();
        }
    }
}
