//! The storm replay, short form, over real loopback sockets: through the gateway, through a
//! fleet of two sharing a real Redis, and bypassing them. Assertions are on counts, never on
//! timings, so a busy machine cannot fail them.

#[path = "common/redis.rs"]
mod redis_server;

use billgate::config::Class;
use billgate::replay;
use billgate_sim::storm::{self, Phase, ReplayMode, StormOptions, StormReport};
use tokio::sync::Mutex;

use redis_server::RedisServer;

const WELL_BEHAVED: [&str; 2] = ["wallet", "bank"];

/// Held by each test for its whole replay: run side by side, two replays would share the
/// machine's cores and disturb each other's latencies, which the gateway's adaptive parts react
/// to.
static ONE_REPLAY_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn every_stream(report: &StormReport) -> impl Iterator<Item = &storm::StreamReport> {
    report.phases.iter().flat_map(|p| p.streams.iter())
}

/// Both replays in one test, one after the other (see [`ONE_REPLAY_AT_A_TIME`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storm_replayed_with_and_without_the_gateway() {
    let _alone = ONE_REPLAY_AT_A_TIME.lock().await;
    through_the_gateway_the_biller_never_sees_more_than_its_capacity().await;
    without_the_gateway_the_storm_takes_the_biller_down().await;
}

async fn through_the_gateway_the_biller_never_sees_more_than_its_capacity() {
    let options = StormOptions::short();
    let c = u64::from(options.capacity_per_sec);
    let report = replay::storm(options).await.expect("the replay runs");
    assert!(report.fleet.is_none(), "one gateway is in no fleet");
    assert!(!report.to_string().contains("fleet:"));
    the_gateway_protected_the_biller(&report, c);
}

/// `--subscribe`: the poller subscribes to its accounts and polls none; the gateway asks the
/// biller about each new account once, before the phases; then the biller's load in the storm
/// is the well-behaved partners' alone, as in the calm (the refresher, at 6 h for 500 accounts,
/// adds a call every 43 s), where polling brought it the poller's whole quota more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_the_storm_leaves_the_billers_load_as_in_the_calm() {
    let _alone = ONE_REPLAY_AT_A_TIME.lock().await;
    let options = StormOptions {
        subscribe: true,
        poller_accounts: 500,
        ..StormOptions::short()
    };
    let report = replay::storm(options).await.expect("the replay runs");
    let subscribed = report.subscribed.expect("a subscribed run says so");
    assert_eq!(subscribed.accounts, 500);
    // The gateway asked the biller about each new account once, before the phases began.
    assert_eq!(subscribed.onboarding_calls, 500, "{report}");
    assert!(
        every_stream(&report).all(|s| s.partner != "poller"),
        "the poller polled"
    );
    let load = |phase: Phase| {
        report
            .phases
            .iter()
            .find(|p| p.phase == phase)
            .map(|p| p.load.mean_per_sec)
            .unwrap_or(f64::NAN)
    };
    let (calm, storm) = (load(Phase::Calm), load(Phase::Storm));
    // The well-behaved partners send 0.225 C a second; nothing is added in the storm.
    assert!(
        calm > 0.0 && storm <= calm * 1.1 + 2.0,
        "calm {calm}/s, storm {storm}/s"
    );
    assert!(report
        .to_string()
        .contains("--subscribe: the poller subscribed to its 500 accounts"));
}

/// `--instances 2` on a Redis the test started: the stand-in (one, shared) sees the whole
/// fleet's load, and it stays within C in every second, with the same counts as one gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_fleet_of_two_the_biller_never_sees_more_than_its_capacity() {
    let redis = RedisServer::start();
    let _alone = ONE_REPLAY_AT_A_TIME.lock().await;
    let options = StormOptions {
        instances: 2,
        redis: Some(redis.url()),
        ..StormOptions::short()
    };
    let c = u64::from(options.capacity_per_sec);
    let report = replay::storm(options).await.expect("the replay runs");

    let fleet = report.fleet.as_ref().expect("a fleet report");
    let names: Vec<_> = fleet
        .instances
        .iter()
        .map(|i| i.instance.as_str())
        .collect();
    assert_eq!(names, ["gw-1", "gw-2"]);
    assert_eq!(fleet.redis, redis.url());
    assert!(!fleet.redis_started, "the named Redis is used");
    for instance in &fleet.instances {
        // The replay starts the load only once both count each other and hear Redis.
        assert_eq!(instance.alive_max, Some(2), "{instance:?}");
        assert!(instance.redis_up_samples > 0, "{instance:?}");
        assert!(instance.refills_granted > 0, "{instance:?}");
        assert!(instance.breaker.exported, "{instance:?}");
    }
    let text = report.to_string();
    assert!(
        text.contains(&format!(
            "fleet: 2 gateway instances (gw-1, gw-2) sharing Redis {}",
            redis.url()
        )),
        "{text}"
    );
    the_gateway_protected_the_biller(&report, c);
    // The busiest second of the whole run, on the one stand-in every instance calls.
    let busiest = report
        .phases
        .iter()
        .filter_map(|p| p.load.max_per_sec)
        .max()
        .expect("whole seconds");
    assert!(busiest <= c, "{busiest}/s reached the biller, C = {c}/s");
}

/// What the short storm through the gateway (one, or a fleet) must show, whatever the machine:
/// the biller within C in every second, the well-behaved partners and payments served, the
/// poller refused, the stand-in up.
fn the_gateway_protected_the_biller(report: &StormReport, c: u64) {
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
        every_stream(report).all(|s| s.other == 0),
        "no unexpected statuses"
    );
    assert!(every_stream(report).all(|s| s.sent == s.ok + s.rejected + s.failed + s.unsent));

    // Every figure is reported, judged or marked as not measurable.
    assert!(report.checks.len() >= 8, "{:#?}", report.checks);
    let text = report.to_string();
    assert!(text.contains("checks"), "{text}");
    assert!(text.contains("breaker"), "{text}");
    let json = serde_json::to_value(report).expect("JSON");
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

/// `--instances` and `--redis` parse, default to one gateway, and refuse `--bypass`.
#[test]
fn the_fleet_flags_parse_and_refuse_bypass() {
    use billgate::cli::{Command, Opts};
    use clap::Parser;

    let storm = |args: &[&str]| {
        let argv = ["billgate", "storm"].iter().chain(args);
        Opts::try_parse_from(argv).map(|opts| match opts.command {
            Command::Storm(args) => args,
            other => panic!("parsed as {other:?}"),
        })
    };
    let alone = storm(&["--short"]).expect("parses");
    assert_eq!((alone.instances, alone.redis), (1, None));
    let fleet = storm(&[
        "--short",
        "--instances",
        "3",
        "--redis",
        "redis://127.0.0.1:6379/2",
    ])
    .expect("parses");
    assert_eq!(fleet.instances, 3);
    assert_eq!(fleet.redis.as_deref(), Some("redis://127.0.0.1:6379/2"));
    assert!(storm(&["--bypass", "--instances", "2"]).is_err());
    assert!(storm(&["--bypass", "--redis", "redis://127.0.0.1/0"]).is_err());

    let refused = |options: StormOptions| options.validate().unwrap_err().to_string();
    let too_many = StormOptions {
        instances: 17,
        ..StormOptions::short()
    };
    assert!(refused(too_many).contains("--instances"));
    let not_redis = StormOptions {
        instances: 2,
        redis: Some("http://127.0.0.1:6379".into()),
        ..StormOptions::short()
    };
    assert!(refused(not_redis).contains("--redis"));
}
