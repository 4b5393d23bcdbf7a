//! The figures the issue asks the replay to show, each judged PASS or FAIL on what was measured
//! (or N/A when this run cannot measure it; INFO when shown for comparison only).

use super::histogram::LatencyHistogram;
use super::report::{BreakerReport, Check, ReplayMode, Status, StormReport, StreamReport};
use super::scenario::{Phase, POLLER, WELL_BEHAVED};
use crate::config::Class;

/// Well-behaved partners' success share outside the brown-out.
const SUCCESS_OUTSIDE_BROWNOUT: f64 = 0.999;
/// Their p99 in the storm and recovery, as a multiple of their calm p99.
const P99_FACTOR: f64 = 2.0;
/// Payments' success share during the brown-out.
const PAYMENTS_IN_BROWNOUT: f64 = 0.95;
/// The share of the poller's scheduled inquiries refused during the brown-out.
const POLLS_SHED: f64 = 0.90;
/// The longest the breaker may take to open once the failure share crossed its threshold.
const OPEN_WITHIN_SECS: f64 = 1.0;

/// Sums over some streams of some phases.
#[derive(Debug, Default)]
struct Totals {
    sent: u64,
    admitted: u64,
    ok: u64,
    rejected: u64,
    failed: u64,
    unsent: u64,
    /// Of `sent` and `ok`, those due while the gateway was seeing the biller change.
    settling_sent: u64,
    settling_ok: u64,
}

impl Totals {
    fn share(part: u64, whole: u64) -> f64 {
        if whole == 0 {
            0.0
        } else {
            part as f64 / whole as f64
        }
    }

    /// The success share once the gateway has seen the biller change, and how many it covers.
    fn settled(&self) -> (f64, u64) {
        let sent = self.sent - self.settling_sent;
        (Totals::share(self.ok - self.settling_ok, sent), sent)
    }
}

fn totals(report: &StormReport, phases: &[Phase], pick: impl Fn(&StreamReport) -> bool) -> Totals {
    let mut t = Totals::default();
    for p in report.phases.iter().filter(|p| phases.contains(&p.phase)) {
        for s in p.streams.iter().filter(|s| pick(s)) {
            t.sent += s.sent;
            t.admitted += s.admitted;
            t.ok += s.ok;
            t.rejected += s.rejected;
            t.failed += s.failed;
            t.unsent += s.unsent;
            t.settling_sent += s.settling_sent.min(s.sent);
            t.settling_ok += s.settling_ok.min(s.ok);
        }
    }
    t
}

fn p99_ms(report: &StormReport, phase: Phase, partner: &str) -> Option<f64> {
    let mut merged = LatencyHistogram::default();
    for s in report
        .phase(phase)?
        .streams
        .iter()
        .filter(|s| s.partner == partner)
    {
        merged.merge(&s.latency);
    }
    merged.quantile(0.99).map(|d| d.as_secs_f64() * 1000.0)
}

fn check(name: impl Into<String>, status: Status, measured: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status,
        measured: measured.into(),
    }
}

fn judged(pass: bool) -> Status {
    if pass {
        Status::Pass
    } else {
        Status::Fail
    }
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

/// Every check for `report`.
pub(crate) fn checks(report: &StormReport) -> Vec<Check> {
    let c = report.capacity_per_sec;
    let outside = [Phase::Calm, Phase::Storm, Phase::Recovery];
    let well_behaved = |s: &StreamReport| WELL_BEHAVED.contains(&s.partner);
    let good = totals(report, &outside, well_behaved);
    let good_share = Totals::share(good.ok, good.sent);
    let (good_settled, good_settled_sent) = good.settled();
    let good_measured = format!(
        "{} of {} ok after the first second of recovery; {} over all of it ({} of {} not ok: {} rejected, {} failed, {} unsent)",
        pct(good_settled),
        good_settled_sent,
        pct(good_share),
        good.sent - good.ok,
        good.sent,
        good.rejected,
        good.failed,
        good.unsent
    );
    let pay = totals(report, &[Phase::Brownout], |s| {
        well_behaved(s) && s.class == Class::Payment.as_str()
    });
    let pay_share = Totals::share(pay.ok, pay.sent);
    let (pay_settled, pay_settled_sent) = pay.settled();
    let pay_measured = format!(
        "{} of {} ok after its first second; {} ok over all of it (admitted {}, failed {})",
        pct(pay_settled),
        pay_settled_sent,
        pct(pay_share),
        pct(Totals::share(pay.admitted, pay.sent)),
        pct(Totals::share(pay.failed, pay.sent))
    );
    let load = report.storm_load_max_per_sec;
    let load_name = "storm: load reaching the biller ≤ C in every one-second window";
    let load_measured = load.map_or("no whole window".to_owned(), |m| {
        format!(
            "max {m}/s from the storm on ({:.2} C, C = {c}/s)",
            m as f64 / f64::from(c)
        )
    });
    let b = &report.biller;

    if report.mode == ReplayMode::Bypass {
        let first = report
            .biller_down_at
            .first()
            .map_or(String::new(), |at| format!(", first at +{at:.1} s"));
        return vec![
            check(
                "without the gateway the storm takes the stand-in down",
                judged(b.times_down >= 1),
                format!(
                    "went down {} time(s){first}; it failed {} of {} calls (overload {}, down {}, brown-out {})",
                    b.times_down, b.failed(), b.received, b.failed_overload, b.failed_down, b.failed_brownout
                ),
            ),
            check(load_name, Status::Info, load_measured),
            check(
                "well-behaved partners' success outside the brown-out",
                Status::Info,
                good_measured,
            ),
            check("brown-out: payments' success", Status::Info, pay_measured),
        ];
    }

    let mut list = vec![
        check(
            load_name,
            load.map_or(Status::NotMeasured, |m| judged(m <= u64::from(c))),
            load_measured,
        ),
        check(
            "well-behaved partners succeed ≥ 99.9 % outside the brown-out and the second after it",
            judged(good_settled_sent > 0 && good_settled >= SUCCESS_OUTSIDE_BROWNOUT),
            good_measured,
        ),
    ];
    for partner in WELL_BEHAVED {
        let name = format!("{partner}: p99 in storm and recovery ≤ 2 × calm p99");
        let calm = p99_ms(report, Phase::Calm, partner);
        let later = [Phase::Storm, Phase::Recovery].map(|p| (p, p99_ms(report, p, partner)));
        let Some(calm) = calm.filter(|&c| c > 0.0) else {
            list.push(check(name, Status::NotMeasured, "no calm latencies"));
            continue;
        };
        let mut pass = true;
        let mut measured = format!("calm {calm:.1} ms");
        for (phase, p99) in later {
            match p99 {
                Some(v) => {
                    pass &= v <= P99_FACTOR * calm;
                    measured += &format!("; {} {v:.1} ms ({:.2}×)", phase.as_str(), v / calm);
                }
                None => {
                    pass = false;
                    measured += &format!("; {} none answered", phase.as_str());
                }
            }
        }
        list.push(check(name, judged(pass), measured));
    }
    list.push(check(
        "brown-out: payments succeed ≥ 95 % from its second second",
        judged(pay_settled_sent > 0 && pay_settled >= PAYMENTS_IN_BROWNOUT),
        pay_measured,
    ));
    // Subscribed, the poller sends no polls to shed.
    if report.subscribed.is_none() {
        let polls = totals(report, &[Phase::Brownout], |s| s.partner == POLLER);
        let shed = Totals::share(polls.rejected + polls.unsent, polls.sent);
        list.push(check(
            "brown-out: scheduled polls shed (≥ 90 % refused)",
            judged(polls.sent > 0 && shed >= POLLS_SHED),
            format!(
                "{} refused, {} admitted of {} sent",
                pct(shed),
                polls.admitted,
                polls.sent
            ),
        ));
    }
    list.extend(breaker_checks(report));
    list.push(check(
        "with the gateway the stand-in stays up",
        judged(b.times_down == 0),
        format!(
            "went down {} time(s); failed {} calls",
            b.times_down,
            b.failed()
        ),
    ));
    list
}

fn breaker_checks(report: &StormReport) -> [Check; 2] {
    let br = &report.breaker;
    let open_name = format!(
        "breaker opens within 1 s of the failure share crossing {}",
        br.failure_rate
    );
    let limit = 2.0 * br.open_for_secs;
    let close_name = format!("breaker closes within 2 × open_for ({limit} s) of recovery");
    if !br.exported {
        return [
            check(open_name, Status::NotMeasured, "breaker not exported"),
            check(close_name, Status::NotMeasured, "breaker not exported"),
        ];
    }
    let open = match (br.crossed_at, br.opened_at) {
        (None, _) => check(
            open_name,
            Status::NotMeasured,
            "the failure share never crossed",
        ),
        (Some(c), None) => check(
            open_name,
            Status::Fail,
            format!("crossed at +{c:.1} s; never opened"),
        ),
        (Some(c), Some(o)) => check(
            open_name,
            judged(o - c <= OPEN_WITHIN_SECS),
            format!(
                "crossed at +{c:.1} s, opened at +{o:.1} s ({:+.1} s)",
                o - c
            ),
        ),
    };
    let was_open = br.state_at_recovery != "closed";
    let close = match (was_open, br.closed_at, br.opened_at) {
        (false, _, None) => check(close_name, Status::NotMeasured, "the breaker never opened"),
        (false, _, Some(_)) => check(
            close_name,
            Status::Pass,
            "already closed when recovery began",
        ),
        (true, Some(at), _) => check(
            close_name,
            judged(at - br.recovery_at <= limit),
            format!("{:.1} s after recovery began", at - br.recovery_at),
        ),
        (true, None, _) => check(
            close_name,
            Status::Fail,
            format!(
                "{} when recovery began and still {} at the end",
                br.state_at_recovery, br.state_at_end
            ),
        ),
    };
    let [mut open, mut close] = [open, close];
    if let Some(fleet) = &report.fleet {
        let each = |pick: &dyn Fn(&BreakerReport) -> String| {
            let said: Vec<String> = fleet
                .instances
                .iter()
                .map(|i| format!("{} {}", i.instance, pick(&i.breaker)))
                .collect();
            format!(" (the slowest instance; {})", said.join(", "))
        };
        open.measured += &each(&|b| match b.opened_at {
            Some(o) => format!("opened at +{o:.1} s"),
            None => "never opened".to_owned(),
        });
        close.measured += &each(&|b| match (b.state_at_recovery.as_str(), b.closed_at) {
            ("closed", _) => "closed at recovery".to_owned(),
            (_, Some(at)) => format!("closed {:.1} s after", at - b.recovery_at),
            (state, None) => format!("{state} at recovery, {} at the end", b.state_at_end),
        });
    }
    [open, close]
}

#[cfg(test)]
mod tests {
    //! The checks judged on made-up reports: each figure passes, fails or is not measured on its own.

    use std::time::Duration;

    use super::checks;
    use crate::config::Class;
    use crate::storm::histogram::LatencyHistogram;
    use crate::storm::report::{
        BillerReport, BreakerReport, Check, LoadReport, PhaseReport, ReplayMode, Status,
        StormReport, StreamReport,
    };
    use crate::storm::scenario::{Phase, POLLER};
    use crate::storm::SeenTransition;

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
            settling_sent: 0,
            settling_ok: 0,
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
        let transition = |at_secs, from: &str, to: &str| SeenTransition {
            at_secs,
            from: from.to_owned(),
            to: to.to_owned(),
            instance: None,
        };
        StormReport {
            mode: ReplayMode::Gateway,
            capacity_per_sec: 400,
            seed: 1,
            brownout_latency_factor: 3.0,
            brownout_failure_share: 0.3,
            phases,
            storm_load_max_per_sec: Some(169),
            biller: BillerReport::default(),
            biller_down_at: Vec::new(),
            biller_up_at: Vec::new(),
            fleet: None,
            subscribed: None,
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

    /// Subscribed, the poller polls nothing: there are no polls to shed, and no check of them.
    #[test]
    fn a_subscribed_run_has_no_polls_to_shed() {
        let mut run = good_run();
        run.subscribed = Some(crate::storm::SubscribedReport {
            accounts: 10,
            onboarding_calls: 10,
            onboarding_secs: 0.5,
            webhooks: 3,
        });
        let checks = checks(&run);
        assert!(checks
            .iter()
            .all(|c| !c.name.contains("scheduled polls shed")));
        assert_eq!(checks.len(), super::checks(&good_run()).len() - 1);
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
    fn what_is_due_while_the_gateway_sees_the_biller_change_is_judged_apart() {
        let mut run = good_run();
        // Ten refusals in recovery and ten failed payments in the brown-out, all in their
        // phases' first second: shown, not judged.
        let mut refused = stream("wallet", Class::Payment, 90, 10, 0);
        (refused.settling_sent, refused.settling_ok) = (30, 20);
        run.phases[3].streams[0] = refused;
        let mut failing = stream("bank", Class::Payment, 90, 0, 10);
        (failing.settling_sent, failing.settling_ok) = (30, 20);
        run.phases[2].streams[1] = failing;
        let judged = checks(&run);
        assert_eq!(status(&judged, "well-behaved"), Status::Pass);
        assert_eq!(status(&judged, "brown-out: payments"), Status::Pass);
        let measured = |starts: &str| {
            judged
                .iter()
                .find(|c| c.name.starts_with(starts))
                .map(|c| c.measured.clone())
                .unwrap_or_default()
        };
        assert!(
            measured("brown-out: payments")
                .contains("98.82 % of 170 ok after its first second; 94.00 % ok over all of it"),
            "{}",
            measured("brown-out: payments")
        );
        // One refusal after the first second fails it.
        run.phases[3].streams[0].settling_ok = 21;
        assert_eq!(status(&checks(&run), "well-behaved"), Status::Fail);
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
        run.mode = ReplayMode::Bypass;
        let standing = checks(&run);
        assert_eq!(standing[0].status, Status::Fail, "the stand-in stayed up");
        assert!(standing[1..].iter().all(|c| c.status == Status::Info));
        run.biller.times_down = 2;
        run.biller_down_at = vec![13.5];
        let fallen = checks(&run);
        assert_eq!(fallen[0].status, Status::Pass);
        assert!(fallen[0].measured.contains("first at +13.5 s"));
    }
}
