//! Protecting the biller, whoever is asking: its capacity shared by class with payments first,
//! pauses the biller asked for, the circuit breaker and the in-flight limit. None of these is
//! relaxed by a partner's shadow mode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::nanos::Nanos;

use super::budget::Budget;
use super::shed::{share_of_calls, Shedder};
use crate::breaker::{outcome_of_status, Admission, Breaker, BreakerSettings, CallOutcome, Probe};
use crate::clock::Clock;
use crate::concurrency::{AdaptiveLimit, ConcurrencySettings, Slot};
use crate::config::{self, Class};

/// The least failure share at which payments are held back (see [`Protection::payment_breaker`]).
pub const PAYMENT_FAILURE_RATE: f64 = 0.5;

/// A pause the biller asked for (429/503 with `Retry-After`): nothing is sent until it ends.
#[derive(Default)]
pub struct Pause(AtomicU64);

impl Pause {
    /// Pauses until `until` (a later pause wins).
    pub fn until(&self, until: Nanos) {
        self.0.fetch_max(until.as_u64(), Ordering::Relaxed);
    }

    /// Time left, if paused.
    #[inline]
    pub fn remaining(&self, now: Nanos) -> Option<Duration> {
        let until = self.0.load(Ordering::Relaxed);
        (until > now.as_u64()).then(|| Duration::from_nanos(until - now.as_u64()))
    }
}

/// Everything standing between admitted partners and the biller. Carried over by reloads as
/// long as its settings are unchanged.
pub struct Protection {
    pub budget: Budget,
    /// Fed by every call; while open it holds back inquiries.
    pub breaker: Arc<Breaker>,
    /// Fed by payments alone; it holds payments back only when the biller fails at least half
    /// of them ([`PAYMENT_FAILURE_RATE`]): a biller that still completes most payments is worth
    /// sending them to, and the gateway never retries them.
    pub payment_breaker: Arc<Breaker>,
    pub concurrency: Arc<AdaptiveLimit>,
    /// One pause per class.
    pub pauses: Arc<[Pause; 3]>,
    /// Cuts inquiries while the biller fails or slows.
    pub shedder: Arc<Shedder>,
    breaker_settings: config::BreakerConfig,
    max_in_flight: u32,
    reserves: (f64, f64),
    /// The gateways sharing the biller when this was built: 1 alone, else the fleet's
    /// instances then alive.
    instances: u32,
}

impl Protection {
    pub fn build(
        biller: &config::Biller,
        previous: Option<&Protection>,
        clock: &Clock,
    ) -> Protection {
        Protection::one_of(biller, previous, clock, 1)
    }

    /// [`Protection::build`] for one of `instances` gateways sharing the biller (a fleet's,
    /// as many as were alive): the budget is the fleet's (spent from leases beside this one),
    /// but the breakers, the shedder and the in-flight limit see only this gateway's calls.
    /// So the breakers and the shedder judge on their share of the calls a lone gateway
    /// would wait for, and at most a share of `max_in_flight` is in flight from here.
    pub fn one_of(
        biller: &config::Biller,
        previous: Option<&Protection>,
        clock: &Clock,
        instances: u32,
    ) -> Protection {
        let instances = instances.max(1);
        // The in-flight limit is kept only for as many instances as it was built for.
        let same_share = previous.filter(|p| p.instances == instances);
        let (capacity, payment, user) =
            (biller.capacity, biller.payment_reserve, biller.user_reserve);
        let budget = match previous {
            Some(p) if p.budget.same(capacity, payment, user) => p.budget.clone(),
            // New settings: what the old budget let through in the last period still counts.
            Some(p) => Budget::after(capacity, payment, user, &p.budget, clock.now()),
            None => Budget::new(capacity, payment, user),
        };
        let kept = previous.filter(|p| p.breaker_settings == biller.breaker);
        let breaker = kept.map(|p| Arc::clone(&p.breaker)).unwrap_or_else(|| {
            Arc::new(Breaker::new(
                BreakerSettings::for_biller(biller),
                clock.clone(),
            ))
        });
        let payment_breaker = kept
            .map(|p| Arc::clone(&p.payment_breaker))
            .unwrap_or_else(|| {
                let mut settings = BreakerSettings::for_biller(biller);
                settings.failure_rate = settings.failure_rate.max(PAYMENT_FAILURE_RATE);
                Arc::new(Breaker::new(settings, clock.clone()))
            });
        let concurrency = same_share
            .filter(|p| p.max_in_flight == biller.max_in_flight)
            .map(|p| Arc::clone(&p.concurrency))
            .unwrap_or_else(|| {
                Arc::new(AdaptiveLimit::new(
                    ConcurrencySettings::new(biller.max_in_flight.div_ceil(instances)),
                    clock.clone(),
                ))
            });
        let protection = Protection {
            budget,
            breaker,
            payment_breaker,
            concurrency,
            pauses: previous.map(|p| Arc::clone(&p.pauses)).unwrap_or_default(),
            shedder: previous
                .map(|p| Arc::clone(&p.shedder))
                .unwrap_or_else(|| Arc::new(Shedder::new(clock.clone()))),
            breaker_settings: biller.breaker.clone(),
            max_in_flight: biller.max_in_flight,
            reserves: (biller.payment_reserve, biller.user_reserve),
            instances,
        };
        protection.share_among(instances);
        protection
    }

    /// From now on, one of `instances` gateways sharing the biller: the breakers and the
    /// shedder judge on their share of the calls a lone gateway waits for. (The in-flight
    /// limit's share is set when the configuration is loaded.)
    pub fn share_among(&self, instances: u32) {
        let min_calls = self.breaker_settings.min_calls;
        self.breaker.judge_on(share_of_calls(min_calls, instances));
        self.payment_breaker
            .judge_on(share_of_calls(min_calls, instances));
        self.shedder.share_among(instances);
    }

    /// In-flight slots `class` must leave free for the classes above it.
    pub fn headroom(&self, class: Class) -> u32 {
        let limit = f64::from(self.concurrency.limit());
        let (payment, user) = self.reserves;
        let share = match class {
            Class::Payment => 0.0,
            Class::InquiryUser => payment,
            Class::InquiryScheduled => payment + user,
        };
        round_up(limit * share)
    }
}

/// How the biller answered a forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillerOutcome {
    /// The biller answered with this status after `rtt`.
    Answered { status: u16, rtt: Duration },
    /// No answer within the timeout.
    TimedOut,
    /// No connection, or the exchange broke.
    Unreachable,
    /// The exchange never really happened (the partner's body was refused): decides nothing.
    NotSent,
}

/// What a ticket holds its protection by: borrowed from the snapshot a request is served
/// under (no reference count touched per request), or owned, for a call made from a task of
/// its own ([`Ticket::into_owned`]).
enum Holder<'p> {
    Borrowed(&'p Arc<Protection>),
    Owned(Arc<Protection>),
}

impl Holder<'_> {
    #[inline]
    fn get(&self) -> &Protection {
        match self {
            Holder::Borrowed(p) => p,
            Holder::Owned(p) => p,
        }
    }
}

/// The right to send one request to the biller: a breaker pass (or probe) and an in-flight
/// slot. A payment's outcome also counts in the main breaker's window, since it tells of the
/// biller's health like any call. Report how it went with [`Ticket::finish`]; dropping it
/// frees both and decides nothing.
///
/// It borrows the protection that issued it, so taking and dropping one writes nothing but
/// the slot's own shard; [`Ticket::into_owned`] makes one that may outlive the borrow.
pub struct Ticket<'p> {
    protection: Holder<'p>,
    class: Class,
    /// A half-open probe; `None` for a plain pass of a closed breaker.
    probe: Option<Probe>,
    /// `None` once given back.
    slot: Option<Slot>,
}

impl std::fmt::Debug for Ticket<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.probe.is_some() {
            "probe"
        } else {
            "allow"
        };
        f.debug_struct("Ticket").field("breaker", &kind).finish()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.protection.get().concurrency.release(slot);
        }
    }
}

/// A call this many times slower than the biller's long-term latency counts as a failure for
/// the inquiry breaker: a biller browning out slows down before it fails, and answering its
/// slowness by holding inquiries back keeps payments going (slow-call rate, as resilience4j).
pub const SLOW_CALL_FACTOR: u32 = 2;

/// Calls faster than this are never slow, however fast the biller usually is.
pub const SLOW_CALL_FLOOR: Duration = Duration::from_millis(50);

impl Ticket<'_> {
    fn slow(&self, rtt: Duration) -> bool {
        rtt > SLOW_CALL_FLOOR
            && self
                .protection
                .get()
                .concurrency
                .rtt()
                .is_some_and(|(long, _)| rtt > long * SLOW_CALL_FACTOR)
    }

    /// Answered in under two thirds of the biller's long-term latency.
    fn fast(&self, rtt: Duration) -> bool {
        self.protection
            .get()
            .concurrency
            .rtt()
            .is_some_and(|(long, _)| rtt * 3 < long * 2)
    }

    /// Whether this request is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// The same ticket, holding its protection by an `Arc` of its own, so that it may move to
    /// a task that outlives the request's borrow (one reference count, paid only here).
    pub fn into_owned(mut self) -> Ticket<'static> {
        let protection = match &self.protection {
            Holder::Borrowed(p) => Arc::clone(p),
            Holder::Owned(p) => Arc::clone(p),
        };
        Ticket {
            protection: Holder::Owned(protection),
            class: self.class,
            probe: self.probe.take(),
            slot: self.slot.take(),
        }
    }

    /// Feeds the outcome to the breaker and the adaptive limit.
    pub fn finish(mut self, outcome: BillerOutcome) {
        let breaker_outcome = match outcome {
            BillerOutcome::Answered { status, rtt } if self.slow(rtt) && status < 500 => {
                Some(CallOutcome::Failure)
            }
            BillerOutcome::Answered { status, .. } => Some(outcome_of_status(status)),
            BillerOutcome::TimedOut | BillerOutcome::Unreachable => Some(CallOutcome::Failure),
            BillerOutcome::NotSent => None,
        };
        // A payment's own breaker counts only real failures: a slow payment still completed.
        let payment_outcome = match outcome {
            BillerOutcome::Answered { status, .. } => Some(outcome_of_status(status)),
            _ => breaker_outcome,
        };
        let payment = self.class == Class::Payment;
        let (breaker_outcome, main_outcome) = match payment {
            true => (payment_outcome, breaker_outcome),
            false => (breaker_outcome, None),
        };
        let fast = match outcome {
            BillerOutcome::Answered { rtt, .. } => self.fast(rtt),
            _ => false,
        };
        let probe = self.probe.take();
        let slot = self.slot.take();
        let p = self.protection.get();
        let gate = if payment {
            &p.payment_breaker
        } else {
            &p.breaker
        };
        match (probe, breaker_outcome) {
            (None, Some(o)) => gate.record(o),
            (Some(probe), Some(o)) => probe.record(o),
            (_, None) => {}
        }
        let struggled = main_outcome.or(breaker_outcome);
        if let Some(o) = main_outcome {
            p.breaker.record(o);
        }
        if let Some(o) = struggled {
            p.shedder.record(o == CallOutcome::Failure, fast);
        }
        let Some(slot) = slot else { return };
        match outcome {
            // 429 and 503 are the biller saying it is overloaded: shrink the limit.
            BillerOutcome::Answered { status, rtt } if status < 500 && status != 429 => {
                p.concurrency.success(slot, rtt)
            }
            BillerOutcome::Answered { .. } | BillerOutcome::TimedOut => p.concurrency.failure(slot),
            BillerOutcome::Unreachable | BillerOutcome::NotSent => p.concurrency.release(slot),
        }
    }
}

/// Why protection refused a request, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    Paused(Duration),
    BreakerOpen(Duration),
    Capacity(Duration),
    Busy,
    /// The biller is failing or slow: inquiries are being cut.
    Strained,
}

impl Protection {
    /// The checks in order: a pause the biller asked for, the breaker, the capacity share of the
    /// class, the in-flight limit with the class's headroom. Payments are never held back to
    /// leave room for anyone, and an open breaker holds back inquiries first; half-open probes
    /// are never scheduled polls. Everything reads `now`, the decision's one clock reading.
    #[inline]
    pub fn admit<'p>(
        self: &'p Arc<Self>,
        class: Class,
        partner_pause: &Pause,
        now: Nanos,
    ) -> Result<Ticket<'p>, Shed> {
        let paused = self.pauses[class.index()]
            .remaining(now)
            .into_iter()
            .chain(partner_pause.remaining(now))
            .max();
        if let Some(wait) = paused {
            return Err(Shed::Paused(wait));
        }
        // Payments answer to their own breaker; inquiries to the main one, where user inquiries
        // may be half-open probes and scheduled polls never are.
        let gate = match class {
            Class::Payment => &self.payment_breaker,
            _ => &self.breaker,
        };
        let probe = match gate.admit_at(class != Class::InquiryScheduled, now) {
            Admission::Allow => None,
            Admission::Probe(probe) => Some(probe),
            Admission::Reject { retry_after } => return Err(Shed::BreakerOpen(retry_after)),
        };
        if !self.shedder.admit_at(class, now) {
            return Err(Shed::Strained);
        }
        self.budget.check(class, now).map_err(Shed::Capacity)?;
        let slot = self
            .concurrency
            .try_take(self.headroom(class), now)
            .ok_or(Shed::Busy)?;
        Ok(Ticket {
            protection: Holder::Borrowed(self),
            class,
            probe,
            slot: Some(slot),
        })
    }
}

/// `slots.ceil() as u32` without `f64::ceil`, which is a library call on baseline x86-64
/// (saturating, as the cast is).
#[inline]
fn round_up(slots: f64) -> u32 {
    let whole = slots as u32;
    whole.saturating_add(u32::from(f64::from(whole) < slots))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rounds_up_as_ceil_does() {
        for slots in [
            0.0, 0.1, 0.5, 1.0, 1.000_001, 2.5, 6.0, 127.99, 128.0, 1e12, -1.0,
        ] {
            assert_eq!(super::round_up(slots), slots.ceil() as u32, "{slots}");
        }
    }
}
