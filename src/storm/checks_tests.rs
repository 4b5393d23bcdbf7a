//! The checks judged on made-up reports: each figure passes, fails or is not measured on its own.

use std::time::Duration;

use super::checks::checks;
use super::histogram::LatencyHistogram;
use super::report::{
    BillerReport, BreakerReport, Check, LoadReport, Mode, PhaseReport, Status, StormReport,
    StreamReport,
};
use super::scenario::{Phase, POLLER};
use super::Transition;
use crate::config::Class;

fn stream(
    partner: &'static str,
    class: Class,
    ok: u64,
    rejected: u64,
    failed: u64,
) -> StreamReport {
    let mut latency = LatencyHistogram::default();
    for _ in 0..ok + rejected + failed {
        latency.record(Duration::from_millis(10));
    }
    StreamReport {
        partner,
        class: class.as_str(),
        sent: ok + rejected + failed,
        admitted: ok + failed,
        ok,
        rejected,
        failed,
        other: 0,
        unsent: 0,
        success_share: 0.0,
        p50_ms: None,
        p99_ms: None,
        latency,
    }
}

/// A gateway run where everything the issue asks for holds, and the breaker opened 0.4 s
/// after the crossing and closed 1 s into recovery.
fn good_run() -> StormReport {
    let phases = Phase::ALL
        .into_iter()
        .map(|phase| {
            let failed = if phase == Phase::Brownout { 2 } else { 0 };
            PhaseReport {
                phase,
                start_secs: 0.0,
                secs: 1.0,
                load: LoadReport {
                    max_per_sec: Some(100),
                    mean_per_sec: 90.0,
                    per_second: vec![90],
                },
                biller: BillerReport::default(),
                streams: vec![
                    stream("wallet", Class::Payment, 100 - failed, 0, failed),
                    stream("bank", Class::Payment, 100, 0, 0),
                    stream(POLLER, Class::InquiryScheduled, 5, 95, 0),
                ],
            }
        })
        .collect();
    let transition = |at_secs, from: &str, to: &str| Transition {
        at_secs,
        from: from.to_owned(),
        to: to.to_owned(),
    };
    StormReport {
        mode: Mode::Gateway,
        capacity_per_sec: 400,
        seed: 1,
        brownout_latency_factor: 3.0,
        brownout_failure_share: 0.3,
        phases,
        storm_load_max_per_sec: Some(169),
        biller: BillerReport::default(),
        biller_down_at: Vec::new(),
        biller_up_at: Vec::new(),
        breaker: BreakerReport {
            exported: true,
            failure_rate: 0.2,
            window_secs: 5.0,
            min_calls: 20,
            open_for_secs: 2.0,
            transitions: vec![
                transition(33.8, "closed", "open"),
                transition(41.0, "half-open", "closed"),
            ],
            crossed_at: Some(33.4),
            opened_at: Some(33.8),
            recovery_at: 40.0,
            state_at_recovery: "open".to_owned(),
            closed_at: Some(41.0),
            state_at_end: "closed".to_owned(),
        },
        checks: Vec::new(),
    }
}

fn status(checks: &[Check], starts: &str) -> Status {
    checks
        .iter()
        .find(|c| c.name.starts_with(starts))
        .map(|c| c.status)
        .unwrap_or_else(|| panic!("no check {starts:?} in {checks:#?}"))
}

#[test]
fn a_run_that_meets_every_figure_passes_every_check() {
    let checks = checks(&good_run());
    assert_eq!(checks.len(), 9);
    assert!(
        checks.iter().all(|c| c.status == Status::Pass),
        "{checks:#?}"
    );
}

#[test]
fn each_figure_fails_on_its_own_measure() {
    let mut run = good_run();
    run.storm_load_max_per_sec = Some(401);
    run.phases[1].streams[0] = stream("wallet", Class::Payment, 99, 1, 0);
    run.phases[2].streams[1] = stream("bank", Class::Payment, 50, 0, 50);
    run.breaker.opened_at = Some(34.5);
    run.breaker.closed_at = Some(44.1);
    run.biller.times_down = 1;
    let checks = checks(&run);
    for name in [
        "storm: load",
        "well-behaved",
        "brown-out: payments",
        "breaker opens",
    ] {
        assert_eq!(status(&checks, name), Status::Fail, "{name}");
    }
    assert_eq!(status(&checks, "breaker closes"), Status::Fail);
    assert_eq!(status(&checks, "with the gateway"), Status::Fail);
    assert_eq!(status(&checks, "wallet: p99"), Status::Pass);
}

#[test]
fn a_breaker_that_is_not_exported_is_not_judged() {
    let mut run = good_run();
    run.breaker.exported = false;
    let checks = checks(&run);
    assert_eq!(status(&checks, "breaker opens"), Status::NotMeasured);
    assert_eq!(status(&checks, "breaker closes"), Status::NotMeasured);
    run.checks = checks;
    assert!(run.passed());
}

#[test]
fn a_breaker_that_never_opens_or_never_closes_fails() {
    let mut run = good_run();
    run.breaker.opened_at = None;
    run.breaker.closed_at = None;
    run.breaker.state_at_end = "open".to_owned();
    let checks = checks(&run);
    assert_eq!(status(&checks, "breaker opens"), Status::Fail);
    assert_eq!(status(&checks, "breaker closes"), Status::Fail);
}

#[test]
fn bypass_judges_only_the_collapse() {
    let mut run = good_run();
    run.mode = Mode::Bypass;
    let standing = checks(&run);
    assert_eq!(standing[0].status, Status::Fail, "the stand-in stayed up");
    assert!(standing[1..].iter().all(|c| c.status == Status::Info));
    run.biller.times_down = 2;
    run.biller_down_at = vec![13.5];
    let fallen = checks(&run);
    assert_eq!(fallen[0].status, Status::Pass);
    assert!(fallen[0].measured.contains("first at +13.5 s"));
}
