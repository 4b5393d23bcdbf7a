//! The breaker's behaviour on a fake clock.

use std::sync::Arc;
use std::time::Duration;

use billgate_core::breaker::*;
use std::sync::atomic::Ordering;

use billgate_core::clock::{Clock, FakeClock};

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

fn breaker(settings: BreakerSettings) -> (Arc<Breaker>, FakeClock) {
    let (clock, hand) = Clock::fake();
    (Arc::new(Breaker::new(settings, clock)), hand)
}

/// min_calls 4, rate 0.5, window 10 s, open 5 s (cap 40 s), 3 probes, 3 to close, timeout 5 s.
fn small() -> BreakerSettings {
    BreakerSettings {
        min_calls: 4,
        ..BreakerSettings::default()
    }
}

fn trip(b: &Breaker) {
    for _ in 0..4 {
        b.record(CallOutcome::Failure);
    }
    assert_eq!(b.state(), BreakerState::Open);
}

fn retry_after(a: Admission) -> Duration {
    match a {
        Admission::Reject { retry_after } => retry_after,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn probe(a: Admission) -> Probe {
    match a {
        Admission::Probe(p) => p,
        other => panic!("expected a probe, got {other:?}"),
    }
}

#[test]
fn outcomes_of_statuses() {
    for status in [100, 200, 204, 304, 400, 404, 429, 499] {
        assert_eq!(outcome_of_status(status), CallOutcome::Success, "{status}");
    }
    for status in [500, 502, 503, 504, 599] {
        assert_eq!(outcome_of_status(status), CallOutcome::Failure, "{status}");
    }
}

#[test]
fn settings_from_config_fill_the_defaults() {
    let c = billgate_core::config::BreakerConfig {
        failure_rate: 0.25,
        window: 30 * S,
        min_calls: 7,
        open_for: 10 * S,
    };
    let s = BreakerSettings::from(&c);
    assert_eq!((s.failure_rate, s.window, s.min_calls), (0.25, 30 * S, 7));
    assert_eq!(
        (s.open_for, s.max_open_for, s.probe_timeout),
        (10 * S, 60 * S, 10 * S)
    );
    assert_eq!(
        (s.half_open_probes, s.probes_to_close, s.buckets),
        (3, 3, 10)
    );
    assert_eq!(default_max_open_for(5 * S), 40 * S);
    assert_eq!(default_max_open_for(90 * S), 90 * S);
}

#[test]
fn stays_closed_below_min_calls() {
    let (b, _hand) = breaker(BreakerSettings::default());
    for _ in 0..19 {
        b.record(CallOutcome::Failure);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert!(matches!(b.admit(false), Admission::Allow));
    b.record(CallOutcome::Failure);
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn opens_on_the_call_that_reaches_the_rate() {
    let (b, _hand) = breaker(BreakerSettings {
        min_calls: 10,
        ..BreakerSettings::default()
    });
    for _ in 0..10 {
        b.record(CallOutcome::Success);
    }
    for _ in 0..9 {
        b.record(CallOutcome::Failure);
    }
    assert_eq!(b.state(), BreakerState::Closed, "9 of 19 is under half");
    b.record(CallOutcome::Failure);
    assert_eq!(b.state(), BreakerState::Open, "10 of 20 is half");

    // A rate that is not exact in binary floating point still opens exactly: 3 of 30 is 0.1.
    let (b, _hand) = breaker(BreakerSettings {
        failure_rate: 0.1,
        min_calls: 10,
        ..BreakerSettings::default()
    });
    for _ in 0..27 {
        b.record(CallOutcome::Success);
    }
    b.record(CallOutcome::Failure);
    b.record(CallOutcome::Failure);
    assert_eq!(b.state(), BreakerState::Closed);
    b.record(CallOutcome::Failure);
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn reaching_min_calls_with_a_success_opens_too() {
    let (b, _hand) = breaker(small());
    for _ in 0..3 {
        b.record(CallOutcome::Failure);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    b.record(CallOutcome::Success);
    assert_eq!(b.state(), BreakerState::Open, "3 of 4 failed");
}

#[test]
fn open_rejects_with_the_exact_time_left_then_turns_half_open() {
    let (b, hand) = breaker(small());
    hand.advance(2 * S);
    trip(&b);
    assert_eq!(retry_after(b.admit(true)), 5 * S);
    hand.advance(1500 * MS);
    assert_eq!(retry_after(b.admit(true)), 3500 * MS);
    assert_eq!(retry_after(b.admit(false)), 3500 * MS);
    hand.advance(3500 * MS - Duration::from_nanos(1));
    assert_eq!(retry_after(b.admit(true)), Duration::from_nanos(1));
    assert_eq!(b.state(), BreakerState::Open);
    hand.advance(Duration::from_nanos(1));
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(b.state().as_gauge(), 2);
}

#[test]
fn half_open_lets_only_a_few_eligible_probes_through() {
    let (b, hand) = breaker(small());
    trip(&b);
    hand.advance(5 * S);
    // Scheduled polls are never probes.
    assert_eq!(
        retry_after(b.admit(false)),
        5 * S,
        "no probe yet: probe_timeout"
    );
    let probes: Vec<Probe> = (0..3).map(|_| probe(b.admit(true))).collect();
    hand.advance(S);
    assert_eq!(
        retry_after(b.admit(true)),
        4 * S,
        "until the oldest probe times out"
    );
    assert_eq!(retry_after(b.admit(false)), 4 * S);
    // Calls admitted before it opened do not decide a half-open breaker.
    for _ in 0..10 {
        b.record(CallOutcome::Success);
    }
    assert_eq!(b.state(), BreakerState::HalfOpen);
    drop(probes);
}

#[test]
fn enough_successful_probes_close_it_and_reset_the_window() {
    let (b, hand) = breaker(small());
    trip(&b);
    hand.advance(5 * S);
    let (p1, p2, p3) = (
        probe(b.admit(true)),
        probe(b.admit(true)),
        probe(b.admit(true)),
    );
    p1.record(CallOutcome::Success);
    p2.record(CallOutcome::Success);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    // A freed slot takes the next probe.
    let p4 = probe(b.admit(true));
    p3.record(CallOutcome::Success);
    assert_eq!(b.state(), BreakerState::Closed);
    assert!(matches!(b.admit(false), Admission::Allow));
    // Its answer arrives after the spell is over: ignored.
    p4.record(CallOutcome::Failure);
    assert_eq!(b.state(), BreakerState::Closed);
    // The four failures that opened it are forgotten: three new ones (of four calls needed)
    // do not reopen it.
    for _ in 0..3 {
        b.record(CallOutcome::Failure);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn failed_probes_reopen_it_for_twice_as_long_up_to_the_cap() {
    let (b, hand) = breaker(BreakerSettings {
        max_open_for: 20 * S,
        ..small()
    });
    trip(&b);
    assert_eq!(b.next_open_for(), 10 * S);
    for expected in [10, 20, 20] {
        hand.advance(retry_after(b.admit(true)));
        probe(b.admit(true)).record(CallOutcome::Failure);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(retry_after(b.admit(true)), expected * S);
    }
    // Closing resets the open time.
    hand.advance(20 * S);
    for _ in 0..3 {
        probe(b.admit(true)).record(CallOutcome::Success);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.next_open_for(), 5 * S);
    trip(&b);
    assert_eq!(retry_after(b.admit(true)), 5 * S);
}

#[test]
fn a_probe_that_never_answers_loses_its_slot_after_probe_timeout() {
    let (b, hand) = breaker(BreakerSettings {
        half_open_probes: 1,
        probes_to_close: 1,
        probe_timeout: 2 * S,
        ..small()
    });
    trip(&b);
    hand.advance(5 * S);
    let lost = probe(b.admit(true));
    assert_eq!(retry_after(b.admit(true)), 2 * S);
    hand.advance(2 * S - MS);
    assert_eq!(retry_after(b.admit(true)), MS);
    hand.advance(MS);
    let fresh = probe(b.admit(true));
    // The lost probe's late answer no longer counts, and dropping it leaves the new one alone.
    lost.record(CallOutcome::Success);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(
        retry_after(b.admit(true)),
        2 * S,
        "the fresh probe still holds the slot"
    );
    fresh.record(CallOutcome::Success);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn a_dropped_probe_frees_its_slot_and_decides_nothing() {
    let (b, hand) = breaker(BreakerSettings {
        half_open_probes: 1,
        ..small()
    });
    trip(&b);
    hand.advance(5 * S);
    let p = probe(b.admit(true));
    assert!(matches!(b.admit(true), Admission::Reject { .. }));
    drop(p);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    probe(b.admit(true)).record(CallOutcome::Success);
    assert_eq!(b.state(), BreakerState::HalfOpen, "one success of three");
}

#[test]
fn a_probe_from_an_earlier_half_open_spell_is_ignored() {
    let (b, hand) = breaker(small());
    trip(&b);
    hand.advance(5 * S);
    let old = probe(b.admit(true));
    probe(b.admit(true)).record(CallOutcome::Failure);
    hand.advance(10 * S);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    let new = probe(b.admit(true));
    old.record(CallOutcome::Failure);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    new.record(CallOutcome::Success);
    assert_eq!(b.state(), BreakerState::HalfOpen);
}

#[test]
fn the_rolling_window_forgets_old_failures() {
    let (b, hand) = breaker(small());
    for _ in 0..3 {
        b.record(CallOutcome::Failure);
    }
    hand.advance(10 * S);
    b.record(CallOutcome::Failure);
    for _ in 0..3 {
        b.record(CallOutcome::Success);
    }
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "1 of 4 in the window; 4 of 7 all told"
    );
    // Inside the window they add up.
    hand.advance(5 * S);
    b.record(CallOutcome::Failure);
    b.record(CallOutcome::Failure);
    b.record(CallOutcome::Failure);
    assert_eq!(b.state(), BreakerState::Open, "4 of 7 in the window");
}

#[test]
fn transitions_are_counted_and_the_last_one_is_kept() {
    let (b, hand) = breaker(small());
    assert_eq!((b.transitions(), b.last_transition()), (0, None));
    assert_eq!(b.state().as_gauge(), 0);
    hand.advance(S);
    trip(&b);
    assert_eq!(b.state().as_gauge(), 1);
    let open = Transition {
        from: BreakerState::Closed,
        to: BreakerState::Open,
        at: S,
    };
    assert_eq!((b.transitions(), b.last_transition()), (1, Some(open)));
    // Noticed late, dated when the open time ran out.
    hand.advance(7 * S);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(
        b.last_transition().map(|t| (t.to, t.at)),
        Some((BreakerState::HalfOpen, 6 * S))
    );
    for _ in 0..3 {
        probe(b.admit(true)).record(CallOutcome::Success);
    }
    assert_eq!(b.transitions(), 3);
    for (from, to, n) in [
        (BreakerState::Closed, BreakerState::Open, 1),
        (BreakerState::Open, BreakerState::HalfOpen, 1),
        (BreakerState::HalfOpen, BreakerState::Closed, 1),
        (BreakerState::HalfOpen, BreakerState::Open, 0),
        (BreakerState::Closed, BreakerState::HalfOpen, 0),
    ] {
        assert_eq!(b.transitions_between(from, to), n, "{from:?} -> {to:?}");
    }
}

#[test]
fn concurrent_probes_never_exceed_the_slots() {
    let (b, hand) = breaker(small());
    trip(&b);
    hand.advance(5 * S);
    let held = std::sync::atomic::AtomicU32::new(0);
    let peak = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..10_000 {
                    if let Admission::Probe(p) = b.admit(true) {
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        held.fetch_sub(1, Ordering::SeqCst);
                        drop(p);
                    }
                }
            });
        }
    });
    assert!(peak.load(Ordering::SeqCst) <= 3);
    assert_eq!(b.state(), BreakerState::HalfOpen);
}

/// One of a fleet's gateways sees its share of the calls and judges on its share of
/// `min_calls`: with 20 to wait for alone, 10 failures open it as one of two.
#[test]
fn one_of_a_fleet_judges_on_its_share_of_the_calls() {
    let (b, _hand) = breaker(BreakerSettings::default());
    for _ in 0..10 {
        b.record(CallOutcome::Failure);
    }
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "20 calls are waited for alone"
    );
    let (b, _hand) = breaker(BreakerSettings::default());
    b.judge_on(10);
    for _ in 0..9 {
        b.record(CallOutcome::Failure);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    b.record(CallOutcome::Failure);
    assert_eq!(b.state(), BreakerState::Open);
}
