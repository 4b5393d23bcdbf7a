//! The in-flight cap and the adaptive limit, driven by hand.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use billgate_core::clock::Clock;
use billgate_core::concurrency::*;

const MS: Duration = Duration::from_millis(1);

fn limiter(settings: ConcurrencySettings) -> Arc<AdaptiveLimit> {
    let (clock, _hand) = Clock::fake();
    Arc::new(AdaptiveLimit::new(settings, clock))
}

/// Fills every slot the limit allows, then completes them all after `rtt`.
fn round(limit: &Arc<AdaptiveLimit>, rtt: Duration) {
    let permits: Vec<Permit> = std::iter::from_fn(|| limit.try_acquire()).collect();
    assert!(permits.len() as u32 >= limit.settings().min_limit.min(limit.limit()));
    for permit in permits {
        permit.success(rtt);
    }
    assert_eq!(limit.in_flight(), 0);
}

fn warmed(max: u32, rtt: Duration) -> Arc<AdaptiveLimit> {
    let limit = limiter(ConcurrencySettings::new(max));
    for _ in 0..30 {
        round(&limit, rtt);
    }
    assert_eq!(limit.limit(), max, "a steady biller earns the whole cap");
    limit
}

#[test]
fn the_hard_cap_is_never_exceeded() {
    let limit = warmed(16, 10 * MS);
    let held: Vec<Permit> = (0..16).filter_map(|_| limit.try_acquire()).collect();
    assert_eq!(held.len(), 16);
    assert!(limit.try_acquire().is_none());
    assert_eq!(limit.in_flight(), 16);
    // More good news does not lift the limit past the cap.
    for permit in held {
        permit.success(MS);
    }
    round(&limit, MS);
    assert_eq!(limit.limit(), 16);
}

#[test]
fn two_threads_hammering_stay_under_the_cap() {
    let settings = ConcurrencySettings {
        initial_limit: 4,
        ..ConcurrencySettings::new(4)
    };
    let limit = limiter(settings);
    let held = AtomicU32::new(0);
    let peak = AtomicU32::new(0);
    std::thread::scope(|scope| {
        for thread in 0..2u32 {
            let (limit, held, peak) = (&limit, &held, &peak);
            scope.spawn(move || {
                let mut mine = Vec::new();
                for i in 0..50_000u32 {
                    if let Some(permit) = limit.try_acquire() {
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        assert!(limit.in_flight() <= 4);
                        mine.push(permit);
                    }
                    if (i + thread) % 3 == 0 {
                        if let Some(permit) = mine.pop() {
                            held.fetch_sub(1, Ordering::SeqCst);
                            match i % 4 {
                                0 => permit.success(MS),
                                1 => permit.failure(),
                                2 => permit.ignore(),
                                _ => drop(permit),
                            }
                        }
                    }
                }
                held.fetch_sub(mine.len() as u32, Ordering::SeqCst);
            });
        }
    });
    assert!(peak.load(Ordering::SeqCst) <= 4);
    assert!(peak.load(Ordering::SeqCst) >= 1);
    assert_eq!(limit.in_flight(), 0);
}

#[test]
fn the_limit_falls_when_latency_rises_and_recovers_when_it_falls() {
    let limit = warmed(64, 10 * MS);
    round(&limit, 40 * MS);
    round(&limit, 40 * MS);
    let slowed = limit.limit();
    assert!(
        slowed < 40,
        "limit {slowed} after the biller slowed fourfold"
    );
    for _ in 0..20 {
        round(&limit, 10 * MS);
    }
    assert_eq!(limit.limit(), 64);
}

#[test]
fn failures_back_off_to_the_floor_and_no_further() {
    let limit = warmed(64, 10 * MS);
    limit.try_acquire().expect("a slot").failure();
    assert_eq!(limit.limit(), 57, "64 × 0.9");
    for _ in 0..100 {
        limit.try_acquire().expect("a slot").failure();
    }
    assert_eq!(limit.limit(), 4);
    // A biller slowing down round after round cannot push it below the floor either (at the
    // floor Gradient2 still lets `queue_size` calls queue: 4 × 0.5 + 4 > 4).
    for rtt in [100, 400, 1600, 6400, 25_600] {
        round(&limit, rtt * MS);
        assert!((4..=8).contains(&limit.limit()), "{}", limit.limit());
    }
}

#[test]
fn no_growth_without_evidence() {
    let limit = limiter(ConcurrencySettings::new(64));
    // One call at a time never shows that more would be served as fast.
    for _ in 0..200 {
        limit.try_acquire().expect("a slot").success(10 * MS);
    }
    assert_eq!(limit.limit(), 20);
}

#[test]
fn headroom_keeps_the_last_slots() {
    let limit = limiter(ConcurrencySettings {
        initial_limit: 10,
        ..ConcurrencySettings::new(64)
    });
    let polls: Vec<Permit> = std::iter::from_fn(|| limit.try_acquire_with_headroom(6)).collect();
    assert_eq!(polls.len(), 4, "scheduled polls: 10 − 6");
    let users: Vec<Permit> = std::iter::from_fn(|| limit.try_acquire_with_headroom(2)).collect();
    assert_eq!(users.len(), 4, "user inquiries: up to 10 − 2");
    let payments: Vec<Permit> = std::iter::from_fn(|| limit.try_acquire()).collect();
    assert_eq!(payments.len(), 2, "payments take the last slots");
    assert!(limit.try_acquire_with_headroom(100).is_none());
    drop(polls);
    assert_eq!(limit.in_flight(), 6);
    assert!(limit.try_acquire_with_headroom(6).is_none(), "6 + 6 ≥ 10");
    assert!(limit.try_acquire_with_headroom(3).is_some());
}

#[test]
fn dropped_and_ignored_permits_free_their_slot_and_nothing_else() {
    let limit = limiter(ConcurrencySettings::new(8));
    let before = limit.limit();
    let (a, b) = (limit.try_acquire(), limit.try_acquire());
    assert_eq!(limit.in_flight(), 2);
    drop(a);
    b.expect("a slot").ignore();
    assert_eq!((limit.in_flight(), limit.limit()), (0, before));
    assert_eq!(limit.rtt(), None);
}

#[test]
fn elapsed_reads_the_injected_clock() {
    let (clock, hand) = Clock::fake();
    let limit = Arc::new(AdaptiveLimit::new(ConcurrencySettings::new(8), clock));
    let permit = limit.try_acquire();
    hand.advance(250 * MS);
    assert_eq!(permit.as_ref().map(Permit::elapsed), Some(250 * MS));
    let permit = permit.expect("a slot");
    let rtt = permit.elapsed();
    permit.success(rtt);
    assert_eq!(limit.rtt(), Some((250 * MS, 250 * MS)));
}

#[test]
fn settings_are_clamped() {
    let limit = limiter(ConcurrencySettings {
        min_limit: 50,
        initial_limit: 0,
        smoothing: f64::NAN,
        ..ConcurrencySettings::new(0)
    });
    assert_eq!(limit.limit(), 1);
    assert!(limit.try_acquire().is_some());
    let limit = limiter(ConcurrencySettings {
        initial_limit: 1,
        ..ConcurrencySettings::new(8)
    });
    assert_eq!(
        limit.limit(),
        4,
        "initial limit below the floor starts at the floor"
    );
}
