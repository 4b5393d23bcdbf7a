//! The storm replay, short form, over real loopback sockets: through the gateway and bypassing
//! it. Assertions are on counts, never on timings, so a busy machine cannot fail them.

use billgate::config::Class;
use billgate::replay;
use billgate_sim::storm::{self, Phase, ReplayMode, StormOptions, StormReport};

const WELL_BEHAVED: [&str; 2] = ["wallet", "bank"];

fn every_stream(report: &StormReport) -> impl Iterator<Item = &storm::StreamReport> {
    report.phases.iter().flat_map(|p| p.streams.iter())
}

/// Both replays in one test, one after the other: run side by side they would share the two
/// cores and disturb each other's latencies, which the gateway's adaptive parts react to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storm_replayed_with_and_without_the_gateway() {
    through_the_gateway_the_biller_never_sees_more_than_its_capacity().await;
    without_the_gateway_the_storm_takes_the_biller_down().await;
}

async fn through_the_gateway_the_biller_never_sees_more_than_its_capacity() {
    let options = StormOptions::short();
    let c = u64::from(options.capacity_per_sec);
    let report = replay::storm(options).await.expect("the replay runs");
    assert_eq!(report.mode, ReplayMode::Gateway);
    assert_eq!(report.phases.len(), 4);

    // No allowance is needed over C: the quotas admit at most the well-behaved 0.23 C plus
    // the poller's C/10 and its burst of C/10 in any second (≈ 0.43 C); and however the quotas
    // add up, the gateway's biller budget lets at most C through in any one-second window.
    for phase in &report.phases {
        let max = phase
            .load
            .max_per_sec
            .expect("each phase holds a whole second");
        assert!(max <= c, "{:?}: {max}/s reached the biller", phase.phase);
        assert!(phase.load.per_second.iter().all(|&n| n <= c));
    }
    let storm_max = report.storm_load_max_per_sec.expect("a whole second");
    assert!(storm_max <= c, "{storm_max}/s reached the biller");

    let calm = report.phase(Phase::Calm).expect("calm");
    for partner in WELL_BEHAVED {
        for class in [Class::Payment, Class::InquiryUser] {
            let s = calm.stream(partner, class).expect("stream");
            assert!(s.sent > 0, "{partner} {class:?} sent nothing");
            // The gateway's adaptive parts read latency, which a starved debug build inflates:
            // the counts are asserted with room for that, the figures come from release runs
            // (benches/README.md).
            assert!(s.rejected * 20 <= s.sent, "{partner} {class:?}: {s:?}");
            assert_eq!(s.unsent, 0, "{partner} {class:?}");
        }
    }
    assert!(
        calm.stream("poller", Class::InquiryScheduled).is_none(),
        "the poller waits for the storm"
    );

    let storm_phase = report.phase(Phase::Storm).expect("storm");
    let poller = storm_phase
        .stream("poller", Class::InquiryScheduled)
        .expect("poller");
    assert!(
        poller.rejected > poller.admitted,
        "poller: {} rejected, {} admitted",
        poller.rejected,
        poller.admitted
    );
    let payments_in_storm = storm_phase
        .stream("wallet", Class::Payment)
        .expect("wallet payments");
    assert!(
        payments_in_storm.rejected * 20 <= payments_in_storm.sent,
        "quota room is left for payments: {payments_in_storm:?}"
    );

    // In the brown-out, polls are shed first and payments last.
    let brownout = report.phase(Phase::Brownout).expect("brownout");
    let poller = brownout
        .stream("poller", Class::InquiryScheduled)
        .expect("poller");
    assert!(
        poller.rejected > poller.admitted,
        "poller in the brown-out: {poller:?}"
    );
    for partner in ["wallet", "bank"] {
        let payments = brownout.stream(partner, Class::Payment).expect("payments");
        assert!(
            payments.rejected * 20 <= payments.sent,
            "{partner}: {} of {} payments refused in the brown-out",
            payments.rejected,
            payments.sent
        );
    }
    assert_eq!(report.biller.times_down, 0, "the stand-in stayed up");
    assert!(
        every_stream(&report).all(|s| s.other == 0),
        "no unexpected statuses"
    );
    assert!(every_stream(&report).all(|s| s.sent == s.ok + s.rejected + s.failed + s.unsent));

    // Every figure is reported, judged or marked as not measurable.
    assert!(report.checks.len() >= 8, "{:#?}", report.checks);
    let text = report.to_string();
    assert!(text.contains("checks"), "{text}");
    assert!(text.contains("breaker"), "{text}");
    let json = serde_json::to_value(&report).expect("JSON");
    assert_eq!(json["mode"], "gateway");
    assert_eq!(json["phases"][1]["phase"], "storm");
}

async fn without_the_gateway_the_storm_takes_the_biller_down() {
    let options = StormOptions {
        bypass: true,
        ..StormOptions::short()
    };
    let c = u64::from(options.capacity_per_sec);
    let report = replay::storm(options).await.expect("the replay runs");
    assert_eq!(report.mode, ReplayMode::Bypass);
    let b = &report.biller;
    assert!(b.failed() > 0, "{b:?}");
    assert!(b.times_down >= 1, "{b:?}");
    assert!(!report.biller_down_at.is_empty());
    assert!(report.storm_load_max_per_sec.expect("a whole second") > c);
    assert!(
        every_stream(&report).all(|s| s.rejected == 0),
        "nothing rejects"
    );
    let failed: u64 = report
        .phases
        .iter()
        .filter(|p| p.phase != Phase::Calm)
        .flat_map(|p| p.streams.iter())
        .filter(|s| WELL_BEHAVED.contains(&s.partner))
        .map(|s| s.failed)
        .sum();
    assert!(failed > 0, "the well-behaved partners' calls fail with it");
    assert!(!report.breaker.exported);
    assert!(report.to_string().contains("breaker: none (no gateway)"));
    assert!(report.passed(), "{report}");
}
