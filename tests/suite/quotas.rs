//! Quotas over real sockets on a fake clock: a flood is cut to quota while others pass,
//! per-account limits, shadow mode, and the counts in `/metrics`.

use crate::common;

use std::time::Duration;

use common::*;
use http::StatusCode;

#[tokio::test]
async fn a_scheduled_flood_is_cut_to_its_burst_while_payments_and_other_partners_pass() {
    let biller = TestBiller::roomy().await;
    let partners = partner(
        "wallet-a",
        "key-a",
        r#"payment = "200/s", inquiry_user = "50/s", inquiry_scheduled = "20/s burst 40""#,
        "",
    ) + &partner(
        "bank-b",
        "key-b",
        r#"payment = "100/s", inquiry_user = "30/s", inquiry_scheduled = "10/s""#,
        "",
    );
    let gw = TestGateway::start(config(&biller.url(), &partners)).await;
    let a = [("x-api-key", "key-a")];
    let b = [("x-api-key", "key-b")];
    let (mut admitted, mut rejected) = (0, 0);
    for n in 0..200 {
        // Interleave the others' traffic with the flood.
        let reply = get(&gw.url(&format!("/v1/bills/{n}")), &a).await;
        match reply.status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => rejected += 1,
            other => panic!("unexpected {other}"),
        }
        if n % 20 == 0 {
            assert_eq!(
                pay(&gw.url("/v1/payments"), &a).await.status,
                StatusCode::CREATED
            );
            assert_eq!(
                get(&gw.url(&format!("/v1/bills/b{n}")), &b).await.status,
                StatusCode::OK
            );
        }
    }
    // The clock stands still: exactly the burst passes.
    assert_eq!((admitted, rejected), (40, 160));
    // One second later, exactly one second's worth more.
    gw.hand.advance(Duration::from_secs(1));
    let mut more = 0;
    for n in 0..40 {
        if get(&gw.url(&format!("/v1/bills/x{n}")), &a).await.status == StatusCode::OK {
            more += 1;
        }
    }
    assert_eq!(more, 20);
    let metrics = gw.metrics().await;
    let series = |p: &str, c: &str, o: &str| {
        sample(
            &metrics,
            &format!(r#"billgate_requests_total{{class="{c}",outcome="{o}",partner="{p}"}}"#),
        )
    };
    assert_eq!(series("wallet-a", "inquiry_scheduled", "forwarded"), 60.0);
    assert_eq!(series("wallet-a", "inquiry_scheduled", "rejected"), 180.0);
    assert_eq!(series("wallet-a", "payment", "forwarded"), 10.0);
    assert_eq!(series("bank-b", "inquiry_scheduled", "forwarded"), 10.0);
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_rejections_total{class="inquiry_scheduled",partner="wallet-a",reason="partner_quota"}"#
        ),
        180.0
    );
    assert_eq!(biller.biller.stats().received, 80);
}

#[tokio::test]
async fn one_account_is_limited_without_touching_other_accounts() {
    let biller = TestBiller::roomy().await;
    let q = r#"payment = "100/s", inquiry_user = "100/s", inquiry_scheduled = "100/s""#;
    let gw = TestGateway::start(config(
        &biller.url(),
        &partner("wallet-a", "key-a", q, "per_account = \"2/min\""),
    ))
    .await;
    let h = [("x-api-key", "key-a"), ("x-request-origin", "user")];
    assert_eq!(
        get(&gw.url("/v1/bills/900"), &h).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&gw.url("/v1/bills/900"), &h).await.status,
        StatusCode::OK
    );
    let reply = get(&gw.url("/v1/bills/900"), &h).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json()["reason"], "account_quota");
    assert_eq!(reply.header("retry-after"), Some("30"));
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"per_account\";q=2;w=60")
    );
    // `t` is the time until `r` is back at `q` (both requests again: 60 s), `Retry-After` the
    // time until the next one may pass (30 s).
    assert_eq!(reply.header("ratelimit"), Some("\"per_account\";r=0;t=60"));
    assert_eq!(
        get(&gw.url("/v1/bills/901"), &h).await.status,
        StatusCode::OK
    );
    assert_eq!(
        pay(&gw.url("/v1/payments"), &h).await.status,
        StatusCode::CREATED
    );
    gw.hand.advance(Duration::from_secs(29));
    let reply = get(&gw.url("/v1/bills/900"), &h).await;
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.header("ratelimit"), Some("\"per_account\";r=0;t=31"));
    gw.hand.advance(Duration::from_secs(1));
    assert_eq!(
        get(&gw.url("/v1/bills/900"), &h).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_account_table_has_a_ceiling_and_idle_accounts_are_evicted() {
    let biller = TestBiller::roomy().await;
    let q = r#"inquiry_scheduled = "1000/s""#;
    let gw = TestGateway::start(config(
        &biller.url(),
        &partner(
            "wallet-a",
            "key-a",
            q,
            "per_account = \"1/s\"\nmax_tracked_accounts = 5",
        ),
    ))
    .await;
    let h = [("x-api-key", "key-a")];
    for n in 0..5 {
        assert_eq!(
            get(&gw.url(&format!("/v1/bills/{n}")), &h).await.status,
            StatusCode::OK
        );
    }
    let reply = get(&gw.url("/v1/bills/random-6"), &h).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json()["reason"], "account_table_full");
    gw.hand.advance(Duration::from_secs(2));
    gw.gateway.sweep();
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_account_keys_tracked{partner="wallet-a"}"#
        ),
        0.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_account_keys_evicted_total{partner="wallet-a"}"#
        ),
        5.0
    );
    assert_eq!(
        get(&gw.url("/v1/bills/random-6"), &h).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn shadow_mode_forwards_everything_and_counts_what_it_would_have_refused() {
    let biller = TestBiller::roomy().await;
    let q = r#"payment = "50/s", inquiry_user = "2/s""#;
    let gw = TestGateway::start(config(
        &biller.url(),
        &partner(
            "paynow-c",
            "key-c",
            q,
            "per_account = \"1/min\"\nmode = \"shadow\"",
        ),
    ))
    .await;
    let h = [("x-api-key", "key-c"), ("x-request-origin", "user")];
    for _ in 0..5 {
        let reply = get(&gw.url("/v1/bills/4242"), &h).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(biller.biller.stats().received, 5);
    let metrics = gw.metrics().await;
    let shadow = |reason: &str| {
        sample(
            &metrics,
            &format!(
                r#"billgate_shadow_rejections_total{{class="inquiry_user",partner="paynow-c",reason="{reason}"}}"#
            ),
        )
    };
    // Requests 3–5 were over the 2/s quota; 2–5 asked about the same account within a minute.
    // A request is counted once, under the first limit it broke.
    assert_eq!(shadow("partner_quota"), 3.0);
    assert_eq!(shadow("account_quota"), 1.0);
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_requests_total{class="inquiry_user",outcome="forwarded",partner="paynow-c"}"#
        ),
        5.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_requests_total{class="inquiry_user",outcome="rejected",partner="paynow-c"}"#
        ),
        0.0
    );
    // Shadow mode does not open a closed class.
    let reply = get(&gw.url("/v1/bills/4242"), &[("x-api-key", "key-c")]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

/// What the README tells a partner's engineer: read `q` and `w` from `RateLimit-Policy`, send
/// one request every `w`/`q` seconds, and nothing is refused — with a burst larger than the rate,
/// `r` never says more than `q`, and every answer's `t` is the time until `r` is back at `q`.
#[tokio::test]
async fn a_client_pacing_itself_by_the_ratelimit_fields_is_never_refused() {
    let biller = TestBiller::roomy().await;
    let q = r#"inquiry_scheduled = "20/s burst 40""#;
    let gw = TestGateway::start(config(&biller.url(), &partner("wallet-a", "key-a", q, ""))).await;
    let h = [("x-api-key", "key-a")];
    let first = get(&gw.url("/v1/bills/1"), &h).await;
    assert_eq!(first.status, StatusCode::OK);
    let policy = first.header("ratelimit-policy").unwrap_or_default();
    assert_eq!(policy, "\"inquiry_scheduled\";q=20;w=1");
    let field = |value: &str, name: &str| -> u64 {
        value
            .split(';')
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    let (quota, window) = (field(policy, "q"), field(policy, "w"));
    // Full (the burst of 40 less the one just sent), but `r` says `q`.
    assert_eq!(
        first.header("ratelimit"),
        Some("\"inquiry_scheduled\";r=20;t=0")
    );
    let step = Duration::from_secs(window) / u32::try_from(quota).unwrap_or(1);
    let mut refused = 0;
    for n in 0..200 {
        gw.hand.advance(step);
        let reply = get(&gw.url(&format!("/v1/bills/{}", 2 + n % 50)), &h).await;
        if reply.status != StatusCode::OK {
            refused += 1;
        }
        let state = reply.header("ratelimit").unwrap_or_default();
        assert!(field(state, "r") <= quota, "{state}");
    }
    assert_eq!(refused, 0);
}
