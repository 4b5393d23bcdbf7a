//! One quota's lease: the tokens this instance holds of a bucket the fleet keeps in Redis, and
//! the share it falls back to without them.
//!
//! A request spends a held token with one atomic subtraction. Without a lease — Redis down, the
//! quota idle here until now, or before the first refill — it spends in a GCRA cell at the
//! quota's rate and burst divided by the instances alive (its *share*), and what it spent so is
//! owed: the next refill subtracts it from the fleet's bucket, so the bucket counts every
//! request the fleet admitted. The refiller ([`Lease::plan`], [`Lease::granted`]) runs beside
//! the request path, never on it.
//!
//! # The bound
//!
//! Over any window of `T`, a fleet of `N` instances admits at most
//! `rate × T + burst` from the bucket, plus what the instances held when the window opened
//! (each at most [`SLICE`] of the rate), plus what was spent on shares and not yet subtracted
//! (each instance at most its share's burst, `burst / N`): `rate × (T + N × SLICE) + 2 × burst`.
//!
//! What an instance spent on its share while Redis was out of reach is settled differently:
//! not all of it, which would count against the bucket every token the outage spent while
//! the bucket (capped at its burst) forgot the refill that paid for them, and so refuse
//! requests under the quota for the first refills back; but what the share's cell still
//! holds against the instance, its part of the fleet's bucket as spent as an ideal bucket
//! would be (the cells' deficits add up to at least the ideal bucket's). The bucket, which
//! also refilled over the outage, may so count the outage's refill twice: at most one burst
//! more per outage.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::admission::gcra::{Gcra, Refused};
use crate::clock::nanos;
use crate::config::Rate;

use super::FleetState;

/// How often the refiller looks at every lease.
pub const TICK: Duration = Duration::from_millis(50);

/// How far ahead of need a lease is refilled: this long at the rate it is being spent.
pub const AHEAD: Duration = Duration::from_millis(150);

/// The most a lease holds: this long at the quota's rate (at least one token, at most the
/// burst). It bounds what a fleet can admit beyond the quota (see the module's bound).
pub const SLICE: Duration = Duration::from_millis(200);

/// A lease not spent from for this long is given back.
pub const IDLE: Duration = Duration::from_secs(1);

/// How a request was let through, for [`Lease::refund`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// From the held tokens.
    Leased,
    /// From the share, owed to the bucket.
    Shared,
}

/// What the refiller asks of the fleet's bucket for one lease.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    /// Tokens to take.
    pub want: u64,
    /// Unspent tokens given back (the lease was idle).
    pub give_back: u64,
    /// Tokens spent on the share since the last refill, to subtract (at most the burst).
    pub debt: u64,
    /// What was owed when the ask was made; the part above `debt` is forgiven once it lands.
    owed: u64,
}

impl Ask {
    /// True when there is nothing to tell the bucket.
    pub fn is_empty(&self) -> bool {
        self.want == 0 && self.give_back == 0 && self.debt == 0
    }
}

/// The refiller's own view of a lease: what it saw last tick.
#[derive(Debug, Default)]
struct Plan {
    /// When it last looked (clock nanoseconds; 0 never).
    at: u64,
    spent: u64,
    wanted: u64,
    /// Requests per second lately (spent and refused alike), smoothed.
    demand: f64,
    /// When the lease was last spent from or asked for.
    active: u64,
}

/// One quota's lease. Shared by every gate built while the quota's rate stays the same.
#[derive(Debug)]
pub struct Lease {
    key: String,
    rate: Rate,
    /// The quota's emission interval, in nanoseconds.
    interval: u64,
    /// Held tokens: spent by subtraction; below zero only for an instant, between a
    /// subtraction and its undoing.
    tokens: AtomicI64,
    /// The lease is live: requests spend held tokens.
    leased: AtomicBool,
    /// The last refill got less than it asked: the fleet's bucket is dry, so a live lease
    /// without tokens refuses. Otherwise tokens are on their way, and the share answers
    /// until they come.
    dry: AtomicBool,
    /// Requests admitted through this lease, ever (leased and shared).
    spent: AtomicU64,
    /// Requests refused by it, ever.
    wanted: AtomicU64,
    /// Spent on the share and not yet subtracted from the bucket.
    owed: AtomicU64,
    /// The share's GCRA arrival time.
    share_tat: AtomicU64,
    /// Lapsed (Redis out of reach) and not refilled since: what is owed is settled as the
    /// share's cell holds it (see the module's bound).
    lapsed: AtomicBool,
    plan: Mutex<Plan>,
}

impl Lease {
    /// A lease of nothing yet on the fleet's bucket `key` for `rate`.
    pub fn new(key: String, rate: Rate) -> Lease {
        Lease {
            key,
            rate,
            interval: nanos(rate.replenish_interval()).max(1),
            tokens: AtomicI64::new(0),
            leased: AtomicBool::new(false),
            dry: AtomicBool::new(false),
            spent: AtomicU64::new(0),
            wanted: AtomicU64::new(0),
            owed: AtomicU64::new(0),
            share_tat: AtomicU64::new(0),
            lapsed: AtomicBool::new(false),
            plan: Mutex::new(Plan::default()),
        }
    }

    /// The bucket's name in the fleet.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The quota the bucket enforces, fleet-wide.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Tokens the bucket gains per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.rate.count.get()) / self.rate.period.duration().as_secs_f64()
    }

    /// Tokens held now.
    pub fn held(&self) -> u64 {
        u64::try_from(self.tokens.load(Ordering::Acquire)).unwrap_or(0)
    }

    /// Whether requests spend held tokens now (else the share).
    pub fn is_leased(&self) -> bool {
        self.leased.load(Ordering::Acquire)
    }

    /// The most this lease holds (see [`SLICE`]).
    pub fn slice(&self) -> u64 {
        let slice = (self.per_second() * SLICE.as_secs_f64()).ceil();
        (slice as u64).clamp(1, u64::from(self.rate.burst.get()))
    }

    /// Spends `n` tokens at `now` (clock nanoseconds): how, or how long until it could.
    #[inline]
    pub fn take(&self, state: &FleetState, now: u64, n: u32) -> Result<Taken, Duration> {
        if state.is_up() && self.leased.load(Ordering::Acquire) {
            let n64 = i64::from(n);
            if self.tokens.fetch_sub(n64, Ordering::AcqRel) >= n64 {
                self.spent.fetch_add(u64::from(n), Ordering::Relaxed);
                return Ok(Taken::Leased);
            }
            self.tokens.fetch_add(n64, Ordering::AcqRel);
            // The fleet has none to spare: refused. (Given back just now, or a refill still on
            // its way: the share answers instead.)
            if self.leased.load(Ordering::Acquire) && self.dry.load(Ordering::Acquire) {
                self.wanted.fetch_add(u64::from(n), Ordering::Relaxed);
                // The fleet's next token is one interval away; the refill after it brings it.
                return Err(Duration::from_nanos(self.interval).max(TICK));
            }
        }
        self.take_share(state.instances(), now, n)
    }

    /// Spends `n` of this instance's share: the quota divided by the `instances` alive.
    fn take_share(&self, instances: u32, now: u64, n: u32) -> Result<Taken, Duration> {
        let (gcra, burst) = self.share(instances);
        match gcra.spend(&self.share_tat, now, n) {
            Ok(_) => {
                self.spent.fetch_add(u64::from(n), Ordering::Relaxed);
                self.owed.fetch_add(u64::from(n), Ordering::Relaxed);
                Ok(Taken::Shared)
            }
            Err(refused) => {
                self.wanted.fetch_add(u64::from(n), Ordering::Relaxed);
                Err(match refused {
                    Refused::Until(earliest) => Duration::from_nanos(earliest.saturating_sub(now)),
                    Refused::TooMany => {
                        Duration::from_nanos(gcra.t().saturating_mul(u64::from(burst)))
                    }
                })
            }
        }
    }

    /// The share's cell among `instances`, and its burst.
    fn share(&self, instances: u32) -> (Gcra, u32) {
        let instances = instances.max(1);
        let burst = (self.rate.burst.get() / instances).max(1);
        let gcra = Gcra::from_nanos(
            self.interval.saturating_mul(u64::from(instances)),
            NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
        );
        (gcra, burst)
    }

    /// Undoes a [`Lease::take`] of `n` whose request a later check refused.
    pub fn refund(&self, taken: Taken, n: u32) {
        match taken {
            Taken::Leased => {
                self.tokens.fetch_add(i64::from(n), Ordering::AcqRel);
            }
            // The share's cell keeps the spend: what is owed is only what the fleet let through.
            Taken::Shared => {
                let _ = self
                    .owed
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                        Some(owed.saturating_sub(u64::from(n)))
                    });
            }
        }
    }

    /// The refiller's look at this lease at `now`, `state` as last heard: what to ask of the
    /// bucket, if anything, to hold what the next `lead` will spend (at least [`AHEAD`]'s
    /// worth: the caller adds the time a refill takes to land). An idle lease is given back
    /// here (requests spend the share until the next ask lands).
    pub fn plan(&self, state: &FleetState, now: u64, lead: Duration) -> Ask {
        let mut plan = self.plan.lock().unwrap_or_else(PoisonError::into_inner);
        let spent = self.spent.load(Ordering::Relaxed);
        let wanted = self.wanted.load(Ordering::Relaxed);
        let seen = spent.wrapping_sub(plan.spent) + wanted.wrapping_sub(plan.wanted);
        let elapsed = if plan.at == 0 {
            nanos(TICK)
        } else {
            now.saturating_sub(plan.at).max(1)
        };
        let lately = seen as f64 * 1e9 / elapsed as f64;
        plan.demand = if plan.at == 0 {
            lately
        } else {
            (plan.demand + lately) / 2.0
        };
        plan.at = now;
        plan.spent = spent;
        plan.wanted = wanted;
        if seen > 0 {
            plan.active = now;
        }
        let owed = self.owed.load(Ordering::Acquire);
        let debt = if self.lapsed.load(Ordering::Acquire) {
            let (gcra, burst) = self.share(state.instances());
            let held =
                burst.saturating_sub(gcra.remaining(now, self.share_tat.load(Ordering::Acquire)));
            owed.min(u64::from(held))
        } else {
            owed.min(u64::from(self.rate.burst.get()))
        };
        let idle = plan.active == 0 || now.saturating_sub(plan.active) >= nanos(IDLE);
        if idle {
            let give_back = if self.leased.swap(false, Ordering::AcqRel) {
                u64::try_from(self.tokens.swap(0, Ordering::AcqRel)).unwrap_or(0)
            } else {
                0
            };
            return Ask {
                want: 0,
                give_back,
                debt,
                owed,
            };
        }
        let lead = lead.max(AHEAD).as_secs_f64();
        let target = ((plan.demand * lead).ceil() as u64).clamp(1, self.slice());
        let held = if self.leased.load(Ordering::Acquire) {
            self.held()
        } else {
            0
        };
        // Below half the target, or not leased yet: ask for the rest.
        let want = if !self.leased.load(Ordering::Acquire) || held * 2 < target {
            target.saturating_sub(held)
        } else {
            0
        };
        Ask {
            want,
            give_back: 0,
            debt,
            owed,
        }
    }

    /// The bucket answered `ask` with `granted` tokens: the lease is live (even with none: the
    /// fleet has none to spare), and what was owed is settled.
    pub fn granted(&self, ask: &Ask, granted: u64) {
        let _ = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                Some(owed.saturating_sub(ask.owed))
            });
        self.lapsed.store(false, Ordering::Release);
        if ask.want > 0 {
            self.dry.store(granted < ask.want, Ordering::Release);
            let granted = i64::try_from(granted).unwrap_or(i64::MAX);
            self.tokens.fetch_add(granted, Ordering::AcqRel);
            self.leased.store(true, Ordering::Release);
        }
    }

    /// Redis is out of reach: the held tokens are dropped (the bucket counted them) and
    /// requests spend the share until a refill lands again.
    pub fn lapse(&self) {
        self.lapsed.store(true, Ordering::Release);
        self.leased.store(false, Ordering::Release);
        self.tokens.store(0, Ordering::Release);
    }

    /// Requests admitted through this lease, ever.
    pub fn spent(&self) -> u64 {
        self.spent.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_rate;

    fn ms(n: u64) -> u64 {
        n * 1_000_000
    }

    fn up(instances: u32) -> FleetState {
        let state = FleetState::new();
        state.set_up(true);
        state.set_instances(instances);
        state
    }

    /// Before any refill, requests spend the share: the quota divided by the instances, its
    /// burst too, and what they spend is owed to the bucket.
    #[test]
    fn without_a_lease_the_share_answers_and_is_owed() {
        let lease = Lease::new("q".into(), parse_rate("100/s burst 20").unwrap());
        let state = up(2);
        let passed = (0..30)
            .filter(|_| lease.take(&state, ms(1), 1).is_ok())
            .count();
        assert_eq!(passed, 10, "half the burst");
        let ask = lease.plan(&state, ms(1), AHEAD);
        assert_eq!((ask.debt, ask.give_back), (10, 0));
        // 30 seen in a tick: 600/s lately, 90 wanted ahead, at most the slice of 20.
        assert_eq!(ask.want, 20);
        lease.granted(&ask, 20);
        assert!(lease.is_leased());
        assert_eq!(lease.held(), 20);
        let passed = (0..30)
            .filter(|_| lease.take(&state, ms(2), 1) == Ok(Taken::Leased))
            .count();
        assert_eq!(passed, 20);
        // Dry, but the fleet gave all that was asked: the share answers until more comes,
        // and this instance's share is spent.
        assert!(lease.take(&state, ms(2), 1).is_err());
        assert_eq!(
            lease.plan(&state, ms(2), AHEAD).debt,
            0,
            "the debt was settled"
        );
    }

    /// A lease granted nothing is still live: the fleet has no tokens to spare, so the share
    /// does not answer either.
    #[test]
    fn an_empty_grant_refuses_rather_than_falling_back() {
        let lease = Lease::new("q".into(), parse_rate("10/s").unwrap());
        let state = up(1);
        assert!(lease.take(&state, ms(1), 1).is_ok());
        let ask = lease.plan(&state, ms(1), AHEAD);
        lease.granted(&ask, 0);
        assert!(lease.take(&state, ms(2), 1).is_err());
        assert!(lease.take(&state, ms(500), 1).is_err());
    }

    /// Idle for a second, a lease gives its tokens back; Redis lost, it lapses at once.
    #[test]
    fn an_idle_lease_is_given_back_and_a_lost_one_lapses() {
        let lease = Lease::new("q".into(), parse_rate("1000/s").unwrap());
        let state = up(1);
        assert!(lease.take(&state, ms(1), 1).is_ok());
        let ask = lease.plan(&state, ms(1), AHEAD);
        lease.granted(&ask, ask.want);
        let held = lease.held();
        assert!(held > 0);
        assert_eq!(lease.plan(&state, ms(500), AHEAD).give_back, 0);
        let back = lease.plan(&state, ms(1002), AHEAD);
        assert_eq!((back.give_back, back.want), (held, 0));
        assert!(!lease.is_leased());
        assert_eq!(lease.held(), 0);

        assert!(lease.take(&state, ms(1100), 1).is_ok());
        let ask = lease.plan(&state, ms(1100), AHEAD);
        lease.granted(&ask, 5);
        state.set_up(false);
        lease.lapse();
        assert_eq!(lease.held(), 0);
        // Down: the share of one instance, the whole quota.
        assert_eq!(lease.take(&state, ms(1101), 1), Ok(Taken::Shared));
    }

    /// A request refused after its lease was spent gives the token back.
    #[test]
    fn a_refund_returns_the_token() {
        let lease = Lease::new("q".into(), parse_rate("10/s").unwrap());
        let state = up(1);
        let _ = lease.take(&state, ms(1), 1);
        let ask = lease.plan(&state, ms(1), AHEAD);
        lease.granted(&ask, 1);
        assert_eq!(lease.take(&state, ms(2), 1), Ok(Taken::Leased));
        lease.refund(Taken::Leased, 1);
        assert_eq!(lease.held(), 1);
    }

    /// A long outage's debt is forgiven above one burst: the bucket goes no lower than empty
    /// by it, so the lease comes back without a dip.
    #[test]
    fn debt_is_at_most_a_burst() {
        let lease = Lease::new("q".into(), parse_rate("10/s").unwrap());
        let state = FleetState::new();
        let mut now = ms(1);
        for _ in 0..100 {
            let _ = lease.take(&state, now, 1);
            now += ms(100);
        }
        let ask = lease.plan(&state, now, AHEAD);
        assert_eq!(ask.debt, 10);
        lease.granted(&ask, 0);
        assert_eq!(lease.plan(&state, now + ms(1), AHEAD).debt, 0);
    }

    /// After an outage, what was spent on the share is settled as the share's cell holds it:
    /// spent under the share's rate, almost nothing (the bucket refilled as it was spent);
    /// spent over it, the share's whole burst (the bucket is empty, as an ideal one would be).
    #[test]
    fn an_outage_is_settled_as_the_share_holds_it() {
        let rate = parse_rate("200/s burst 200").unwrap();
        let state = up(2);
        for (every, expected) in [(ms(20), 0..=1), (ms(2), 99..=100)] {
            let lease = Lease::new("q".into(), rate);
            let ask = lease.plan(&state, ms(1), AHEAD);
            lease.granted(&ask, 0);
            state.set_up(false);
            lease.lapse();
            let mut now = ms(1);
            let mut owed = 0;
            // Three seconds: at 50/s of the share's 100/s, then at 500/s.
            while now < ms(3_001) {
                owed += u64::from(lease.take(&state, now, 1).is_ok());
                now += every;
            }
            state.set_up(true);
            let ask = lease.plan(&state, now, AHEAD);
            assert!(owed >= 150, "spent {owed} on the share");
            assert!(
                expected.contains(&ask.debt),
                "every {every} ns: debt {} of {owed} owed",
                ask.debt
            );
            lease.granted(&ask, ask.want);
            assert_eq!(lease.plan(&state, now + ms(1), AHEAD).debt, 0);
        }
        // Not lapsed (a lease idle, or not yet granted): everything owed is settled.
        let lease = Lease::new("q".into(), rate);
        for k in 0..50 {
            let _ = lease.take(&state, ms(1 + 20 * k), 1);
        }
        assert_eq!(lease.plan(&state, ms(1_001), AHEAD).debt, 50);
    }
}
