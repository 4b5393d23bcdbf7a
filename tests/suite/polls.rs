//! The polls run, short form, over real loopback sockets: the answer cache keeps the calls
//! reaching the biller to about two per account while three partners poll far past its
//! capacity. Assertions are on counts, never on timings, so a busy machine cannot fail them.

use billgate::replay;
use billgate_sim::storm::polls::PollsOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_keeps_the_biller_to_about_two_calls_per_account() {
    let options = PollsOptions::short();
    let accounts = u64::from(options.accounts);
    let report = replay::polls(options).await.expect("the run goes");

    let bound = (2 * accounts) + (2 * accounts) / 100;
    assert!(report.distinct_accounts > 0 && report.distinct_accounts <= accounts);
    assert!(
        report.biller.received <= bound,
        "{} calls reached the biller for {accounts} accounts\n{report}",
        report.biller.received
    );
    assert!(
        report.biller.received > 0,
        "the cache was filled from the biller"
    );
    // Ten seconds is less than `cache_for`: no account's answer is fetched twice, bar a failed
    // fetch (none is expected; allow one).
    assert!(report.account_calls.most <= 2, "{report}");

    let cache = report.cache.expect("the gateway's /metrics were read");
    assert!(
        cache.hits >= report.totals.hit && cache.hits > 0,
        "every hit a partner saw was counted by the gateway: {cache:?}"
    );
    assert!(
        cache.bytes > 0 && cache.bytes < 64 * 1024 * 1024,
        "{cache:?}"
    );
    assert!(cache.entries > 0 && cache.entries <= accounts, "{cache:?}");

    // Answers from memory outnumber answers fetched from the biller. (The gateway's own miss
    // counter also counts lookups then refused for the biller's capacity while the cache fills,
    // so in ten seconds at this C it need not be below the hits; see the report.)
    let t = &report.totals;
    assert!(t.hit > t.miss + t.coalesced, "{t:?}\n{report}");
    assert_eq!(
        t.sent,
        t.hit + t.miss + t.coalesced + t.rejected + t.failed + t.other + t.unsent,
        "every request is counted once"
    );
    assert_eq!(t.other, 0, "no unexpected statuses\n{report}");
    assert_eq!(report.partners.len(), 3);
    assert!(report.partners.iter().all(|p| p.counts.hit > 0));
    assert_eq!(report.biller.times_down, 0, "the stand-in stayed up");

    // Every figure is reported; the latency one is judged but not asserted here.
    assert!(report.checks.len() >= 4, "{:#?}", report.checks);
    let text = report.to_string();
    assert!(
        text.contains("checks") && text.contains("timeline"),
        "{text}"
    );
    let json = serde_json::to_value(&report).expect("JSON");
    assert_eq!(json["accounts"], 1000);
    assert!(json["hit_latency"]["count"].as_u64().is_some());
}
