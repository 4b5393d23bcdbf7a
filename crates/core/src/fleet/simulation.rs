//! A fleet simulated on one clock: `N` instances' leases on one bucket that does in Rust what
//! the Redis script does (`src/fleet/scripts/refill.lua`), refills that land a round trip
//! after they are asked, a client over the quota spread over the instances. The stated bound
//! is checked over every window, and so is what a fleet must not do instead: starve, burst
//! after an outage, or dip below the rate when Redis comes back.

use std::sync::Arc;

use super::{Ask, FleetState, Lease, TICK};
use crate::clock::nanos;
use crate::config::parse_rate;

const MS: u64 = 1_000_000;

/// The bucket as the refill script keeps it.
struct Bucket {
    tokens: f64,
    at: u64,
    per_ns: f64,
    burst: f64,
}

impl Bucket {
    fn refill(&mut self, now: u64, ask: &Ask) -> u64 {
        let elapsed = now.saturating_sub(self.at) as f64;
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.per_ns).min(self.burst);
        self.tokens = (self.tokens + ask.give_back as f64).min(self.burst);
        self.tokens = (self.tokens - ask.debt as f64).max(0.0);
        let granted = (ask.want as f64).min(self.tokens.max(0.0).floor());
        self.tokens -= granted;
        granted as u64
    }
}

/// One instance: its lease, what it last heard, and a refill on its way.
struct Instance {
    lease: Lease,
    state: Arc<FleetState>,
    next_tick: u64,
    in_flight: Option<(u64, Ask)>,
}

struct Fleet {
    bucket: Bucket,
    instances: Vec<Instance>,
    round_trip: u64,
    redis_up: bool,
}

impl Fleet {
    fn new(rate: &str, n: usize, round_trip_ms: u64) -> Fleet {
        let rate = parse_rate(rate).unwrap_or_else(|e| panic!("{rate}: {e}"));
        let per_ns = f64::from(rate.count.get()) / rate.period.duration().as_nanos() as f64;
        let instances = (0..n)
            .map(|i| {
                let state = Arc::new(FleetState::new());
                state.set_up(true);
                state.set_instances(n as u32);
                Instance {
                    lease: Lease::new("q:a:payment".into(), rate),
                    state,
                    // Ticks staggered, as independent processes' are.
                    next_tick: MS + (i as u64 * nanos(TICK)) / n as u64,
                    in_flight: None,
                }
            })
            .collect();
        Fleet {
            bucket: Bucket {
                tokens: f64::from(rate.burst.get()),
                at: 0,
                per_ns,
                burst: f64::from(rate.burst.get()),
            },
            instances,
            round_trip: round_trip_ms * MS,
            redis_up: true,
        }
    }

    /// Advances every instance's refiller to `now`.
    fn refill(&mut self, now: u64) {
        let lead = TICK + std::time::Duration::from_nanos(2 * self.round_trip);
        for i in 0..self.instances.len() {
            let instance = &mut self.instances[i];
            if let Some((lands, ask)) = instance.in_flight {
                if now >= lands {
                    instance.in_flight = None;
                    if self.redis_up {
                        // The bucket acted when the ask reached it: half a round trip earlier.
                        let granted = self.bucket.refill(now - self.round_trip / 2, &ask);
                        instance.lease.granted(&ask, granted);
                        instance.state.set_up(true);
                    } else {
                        instance.state.set_up(false);
                        instance.lease.lapse();
                    }
                }
            }
            if now >= instance.next_tick && instance.in_flight.is_none() {
                instance.next_tick = now + nanos(TICK);
                let ask = instance.lease.plan(&instance.state, now, lead);
                if !ask.is_empty() {
                    instance.in_flight = Some((now + self.round_trip, ask));
                }
            }
        }
    }

    /// Runs `ms` milliseconds from `start` with `per_ms` requests a millisecond, the
    /// instances in turn: admitted per millisecond.
    fn run(&mut self, start: u64, ms: u64, per_ms: usize) -> Vec<u64> {
        let mut turn = 0;
        (0..ms)
            .map(|k| {
                let now = start + k * MS;
                self.refill(now);
                let mut admitted = 0;
                for _ in 0..per_ms {
                    let instance = &self.instances[turn % self.instances.len()];
                    turn += 1;
                    if instance.lease.take(&instance.state, now, 1).is_ok() {
                        admitted += 1;
                    }
                }
                admitted
            })
            .collect()
    }
}

/// The most any window of `window` milliseconds of `admitted` (per millisecond) holds.
fn busiest(admitted: &[u64], window: usize) -> u64 {
    admitted
        .windows(window.min(admitted.len()))
        .map(|w| w.iter().sum())
        .max()
        .unwrap_or(0)
}

/// The stated bound: rate × (T + N × 0.2 s) + 2 × burst.
fn bound(per_second: f64, burst: f64, seconds: f64, n: usize) -> f64 {
    per_second * (seconds + n as f64 * 0.2) + 2.0 * burst
}

/// Two and three instances, a client at five times the quota for a minute, refills 1 ms or
/// 50 ms away: every 10 s window within the bound, and the fleet not starved (it admits
/// nearly the whole rate), where the instances alone would each admit the quota.
#[test]
fn a_fleet_over_its_quota_stays_within_the_bound_in_every_window() {
    for n in [2, 3] {
        for round_trip in [1, 50] {
            let mut fleet = Fleet::new("200/s burst 200", n, round_trip);
            let admitted = fleet.run(0, 60_000, 1);
            let at = format!("{n} instances, {round_trip} ms round trip");
            let ten = busiest(&admitted, 10_000) as f64;
            let most = bound(200.0, 200.0, 10.0, n);
            assert!(ten <= most, "{at}: {ten} in a 10 s window, over {most}");
            let one_s = busiest(&admitted, 1_000) as f64;
            assert!(one_s <= bound(200.0, 200.0, 1.0, n), "{at}: {one_s} in 1 s");
            let total: u64 = admitted.iter().sum();
            eprintln!("{at}: {total} in 60 s, busiest 10 s {ten}, busiest 1 s {one_s}");
            // One instance alone would admit 200 + 200 × 60 = 12 200.
            assert!(total as f64 <= 12_200.0 * 1.02, "{at}: {total} in 60 s");
            assert!(
                total as f64 >= 12_000.0 * 0.95,
                "{at}: starved, {total} in 60 s"
            );
        }
    }
}

/// Redis lost for ten seconds: each instance spends its share, so the fleet admits the rate
/// and no more; back, the fleet goes on at the rate: no burst from the refilled bucket, no
/// dip while the debt is settled.
#[test]
fn an_outage_changes_neither_the_rate_nor_the_quota() {
    let mut fleet = Fleet::new("200/s burst 200", 2, 1);
    let before = fleet.run(0, 10_000, 1);
    fleet.redis_up = false;
    let down = fleet.run(10_000 * MS, 10_000, 1);
    assert!(fleet.instances.iter().all(|i| !i.state.is_up()));
    fleet.redis_up = true;
    let after = fleet.run(20_000 * MS, 10_000, 1);
    assert!(fleet.instances.iter().all(|i| i.state.is_up()));

    let sum = |s: &[u64]| s.iter().sum::<u64>() as f64;
    // Down: two shares of 100/s burst 100, after the first lapse.
    assert!(sum(&down) <= 200.0 * 10.0 + 200.0, "down: {}", sum(&down));
    assert!(sum(&down) >= 200.0 * 10.0 * 0.95, "down: {}", sum(&down));
    // Back: the first second at the rate (give or take a refill), never a burst.
    let first = sum(&after[..1_000]);
    eprintln!(
        "before {} down {} first second back {first} after {}",
        sum(&before),
        sum(&down),
        sum(&after)
    );
    assert!(
        (150.0..=260.0).contains(&first),
        "first second back: {first}"
    );
    assert!(busiest(&after, 1_000) as f64 <= bound(200.0, 200.0, 1.0, 2));
    assert!(sum(&before) >= 200.0 * 10.0 * 0.95);
}

/// Under its quota (150/s of 200/s), a partner is refused nothing: not before, not during an
/// outage (each share 100/s), and not as Redis comes back and the outage is settled.
#[test]
fn under_the_quota_an_outage_refuses_nothing() {
    for n in [2, 3] {
        let mut fleet = Fleet::new("200/s burst 200", n, 1);
        let run = |fleet: &mut Fleet, start: u64| {
            let mut refused = 0;
            let mut turn = 0;
            for k in 0..3_000u64 {
                let now = start + k * MS;
                fleet.refill(now);
                // 150/s: three in every twenty milliseconds.
                if k % 20 < 3 {
                    let instance = &fleet.instances[turn % n];
                    turn += 1;
                    refused += u64::from(instance.lease.take(&instance.state, now, 1).is_err());
                }
            }
            refused
        };
        assert_eq!(run(&mut fleet, 0), 0, "{n} instances, before");
        fleet.redis_up = false;
        assert_eq!(run(&mut fleet, 3_000 * MS), 0, "{n} instances, down");
        fleet.redis_up = true;
        assert_eq!(run(&mut fleet, 6_000 * MS), 0, "{n} instances, back");
        assert!(fleet
            .instances
            .iter()
            .all(|i| i.state.is_up() && i.lease.is_leased()));
    }
}

/// A quiet partner on an idle lease is served at once from the share, and a fleet that has
/// given its idle leases back lets a busy instance have the whole quota.
#[test]
fn idle_instances_give_their_leases_back() {
    let mut fleet = Fleet::new("200/s burst 200", 2, 1);
    // Only instance 0 is sent anything (every other request, by turns, is not sent).
    let mut admitted = 0;
    for k in 0..10_000u64 {
        let now = k * MS;
        fleet.refill(now);
        let instance = &fleet.instances[0];
        for _ in 0..2 {
            admitted += u64::from(instance.lease.take(&instance.state, now, 1).is_ok());
        }
    }
    assert!(
        admitted as f64 >= 200.0 * 10.0 * 0.95,
        "the busy instance got {admitted} of the quota's 2 200"
    );
    assert_eq!(fleet.instances[1].lease.held(), 0);
}
