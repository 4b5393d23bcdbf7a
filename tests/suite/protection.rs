//! Protecting a failing or overloaded biller, over real sockets on a fake clock: the breaker
//! (open, half-open probes, closing), shedding by class when capacity is short, and pauses the
//! biller asks for with `Retry-After`.

use crate::common;

use std::time::Duration;

use common::*;
use http::StatusCode;

const Q: &str = r#"payment = "1000/s", inquiry_user = "1000/s", inquiry_scheduled = "1000/s""#;
const BREAKER: &str =
    "[biller.breaker]\nfailure_rate = 0.5\nwindow = \"10s\"\nmin_calls = 4\nopen_for = \"5s\"\n";

/// wallet-a, a breaker that opens after 4 calls, half of them failed.
fn breaker_config(biller_url: &str) -> billgate::config::Config {
    let partners = partner("wallet-a", "key-a", Q, "");
    load(&with_block(
        &config_toml(biller_url, "2s", "10000/s", &partners),
        BREAKER,
    ))
}

fn user() -> [(&'static str, &'static str); 2] {
    [("x-api-key", "key-a"), ("x-request-origin", "user")]
}

#[tokio::test]
async fn an_open_breaker_answers_503_at_once_then_probes_and_closes() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(breaker_config(&biller.url())).await;
    biller.biller.set_failing(1.0);
    for n in 0..4 {
        let reply = get(&gw.url(&format!("/v1/bills/{n}")), &user()).await;
        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "the biller's own failure passes through"
        );
    }
    let reply = get(&gw.url("/v1/bills/9"), &user()).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["reason"], "breaker_open");
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert_eq!(
        biller.biller.stats().received,
        4,
        "an open breaker sent no inquiry on"
    );
    // Payments answer to their own breaker, which holds them back only when the biller fails
    // at least half of them: this one goes through (and the failing biller fails it).
    let payment = pay(&gw.url("/v1/payments"), &user()).await;
    assert_eq!(payment.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(biller.biller.stats().received, 5);
    gw.hand.advance(Duration::from_secs(2));
    assert_eq!(
        get(&gw.url("/v1/bills/9"), &user())
            .await
            .header("retry-after"),
        Some("3")
    );

    // Half-open: the biller has recovered; scheduled polls are never probes.
    biller.biller.clear_brownout();
    gw.hand.advance(Duration::from_secs(3));
    let poll = get(&gw.url("/v1/bills/9"), &[("x-api-key", "key-a")]).await;
    assert_eq!(
        (poll.status, poll.json()["reason"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, "breaker_open".into())
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(&metrics, r#"billgate_breaker_state{breaker="inquiry"}"#),
        2.0
    );
    for n in 0..3 {
        let probe = get(&gw.url(&format!("/v1/bills/p{n}")), &user()).await;
        assert_eq!(probe.status, StatusCode::OK);
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(&metrics, r#"billgate_breaker_state{breaker="inquiry"}"#),
        0.0
    );
    assert_eq!(
        sample(&metrics, r#"billgate_breaker_state{breaker="payment"}"#),
        0.0
    );
    let t = |from: &str, to: &str| {
        sample(
            &metrics,
            &format!(
                r#"billgate_breaker_transitions_total{{breaker="inquiry",from="{from}",to="{to}"}}"#
            ),
        )
    };
    assert_eq!(
        (
            t("closed", "open"),
            t("open", "half_open"),
            t("half_open", "closed")
        ),
        (1.0, 1.0, 1.0)
    );
    assert_eq!(
        get(&gw.url("/v1/bills/9"), &[("x-api-key", "key-a")])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(biller.biller.stats().received, 9);
}

#[tokio::test]
async fn a_failing_probe_reopens_the_breaker_for_longer() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(breaker_config(&biller.url())).await;
    biller.biller.set_failing(1.0);
    for n in 0..4 {
        get(&gw.url(&format!("/v1/bills/{n}")), &user()).await;
    }
    gw.hand.advance(Duration::from_secs(5));
    let probe = get(&gw.url("/v1/bills/probe"), &user()).await;
    assert_eq!(probe.status, StatusCode::INTERNAL_SERVER_ERROR);
    let reply = get(&gw.url("/v1/bills/after"), &user()).await;
    assert_eq!(reply.json()["reason"], "breaker_open");
    assert_eq!(
        reply.header("retry-after"),
        Some("10"),
        "open_for doubles after a failed probe"
    );
}

#[tokio::test]
async fn short_capacity_sheds_scheduled_polls_first_then_user_inquiries_then_payments() {
    let biller = TestBiller::roomy().await;
    // 10/s with 20% reserved for payments and 20% more for user inquiries:
    // polling may use 6, inquiries together 8, everything 10.
    let text = config_toml(
        &biller.url(),
        "2s",
        "10/s",
        &partner("wallet-a", "key-a", Q, ""),
    )
    .replacen(
        "capacity = \"10/s\"\n",
        "capacity = \"10/s\"\npayment_reserve = 0.2\nuser_reserve = 0.2\n",
        1,
    );
    let gw = TestGateway::start(load(&text)).await;
    let count = |status: StatusCode, tally: &mut [u32; 2]| {
        if status.is_success() {
            tally[0] += 1;
        } else {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            tally[1] += 1;
        }
    };
    let (mut polls, mut users, mut payments) = ([0; 2], [0; 2], [0; 2]);
    for n in 0..20 {
        count(
            get(
                &gw.url(&format!("/v1/bills/s{n}")),
                &[("x-api-key", "key-a")],
            )
            .await
            .status,
            &mut polls,
        );
    }
    for n in 0..20 {
        count(
            get(&gw.url(&format!("/v1/bills/u{n}")), &user())
                .await
                .status,
            &mut users,
        );
    }
    for _ in 0..20 {
        count(
            pay(&gw.url("/v1/payments"), &[("x-api-key", "key-a")])
                .await
                .status,
            &mut payments,
        );
    }
    assert_eq!(polls, [6, 14]);
    assert_eq!(users, [2, 18]);
    assert_eq!(payments, [2, 18]);
    let reply = get(&gw.url("/v1/bills/x"), &[("x-api-key", "key-a")]).await;
    assert_eq!(reply.json()["reason"], "biller_capacity");
    assert!(reply.header("retry-after").is_some());
    assert_eq!(biller.biller.stats().received, 10);

    // With the polls gone, payments get the whole capacity back.
    gw.hand.advance(Duration::from_secs(1));
    let mut later = [0; 2];
    for _ in 0..12 {
        count(
            pay(&gw.url("/v1/payments"), &[("x-api-key", "key-a")])
                .await
                .status,
            &mut later,
        );
    }
    assert_eq!(later, [10, 2]);
}

#[tokio::test]
async fn a_biller_retry_after_pauses_the_class_instead_of_hammering_it() {
    let upstream = FixedUpstream::start(503, &[("retry-after", "30")]).await;
    let gw = TestGateway::start(config(
        &upstream.url(),
        &partner("wallet-a", "key-a", Q, ""),
    ))
    .await;
    let first = get(&gw.url("/v1/bills/1"), &user()).await;
    assert_eq!(
        first.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the biller's own answer passes through"
    );
    assert_eq!(first.json()["upstream"], true);
    let held = get(&gw.url("/v1/bills/2"), &user()).await;
    assert_eq!(held.json()["reason"], "biller_paused");
    assert_eq!(held.header("retry-after"), Some("30"));
    assert_eq!(upstream.received(), 1);
    // Other classes are not paused.
    pay(&gw.url("/v1/payments"), &user()).await;
    assert_eq!(upstream.received(), 2);
    gw.hand.advance(Duration::from_secs(30));
    get(&gw.url("/v1/bills/3"), &user()).await;
    assert_eq!(upstream.received(), 3);
}

#[tokio::test]
async fn a_biller_naming_a_partner_pauses_only_that_partner() {
    let upstream = FixedUpstream::start(
        429,
        &[("retry-after", "10"), ("x-biller-throttle", "wallet-a")],
    )
    .await;
    let partners = partner("wallet-a", "key-a", Q, "") + &partner("bank-b", "key-b", Q, "");
    let text = config_toml(&upstream.url(), "2s", "10000/s", &partners).replacen(
        "capacity = \"10000/s\"\n",
        "capacity = \"10000/s\"\npause_partner_header = \"x-biller-throttle\"\n",
        1,
    );
    let gw = TestGateway::start(load(&text)).await;
    assert_eq!(
        get(&gw.url("/v1/bills/1"), &user()).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let held = pay(&gw.url("/v1/payments"), &[("x-api-key", "key-a")]).await;
    assert_eq!(
        (held.status, held.json()["reason"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, "biller_paused".into())
    );
    assert_eq!(held.header("retry-after"), Some("10"));
    assert_eq!(upstream.received(), 1);
    get(
        &gw.url("/v1/bills/1"),
        &[("x-api-key", "key-b"), ("x-request-origin", "user")],
    )
    .await;
    assert_eq!(upstream.received(), 2, "bank-b was not paused");
}

#[tokio::test]
async fn payments_are_held_back_only_when_the_biller_fails_most_of_them() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(breaker_config(&biller.url())).await;
    biller.biller.set_failing(1.0);
    for _ in 0..4 {
        assert_eq!(
            pay(&gw.url("/v1/payments"), &user()).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    let held = pay(&gw.url("/v1/payments"), &user()).await;
    assert_eq!(
        (held.status, held.json()["reason"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, "breaker_open".into())
    );
    assert_eq!(held.json()["class"], "payment");
    assert_eq!(held.header("retry-after"), Some("5"));
    // The payments' failures told the main breaker too: inquiries are held back as well.
    assert_eq!(
        get(&gw.url("/v1/bills/1"), &user()).await.json()["reason"],
        "breaker_open"
    );
    assert_eq!(biller.biller.stats().received, 4);
}

#[tokio::test]
async fn with_only_polls_flowing_the_gateways_own_probes_close_the_breaker() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(breaker_config(&biller.url())).await;
    let poll = [("x-api-key", "key-a")];
    biller.biller.set_failing(1.0);
    for n in 0..4 {
        get(&gw.url(&format!("/v1/bills/{n}")), &poll).await;
    }
    assert_eq!(
        get(&gw.url("/v1/bills/9"), &poll).await.json()["reason"],
        "breaker_open"
    );
    biller.biller.clear_brownout();
    gw.hand.advance(Duration::from_secs(5));
    // Half-open, and polls are never probes: without the gateway's own probes it would stay so.
    assert_eq!(
        get(&gw.url("/v1/bills/9"), &poll).await.json()["reason"],
        "breaker_open"
    );
    for _ in 0..3 {
        gw.gateway.probe_breakers().await;
    }
    assert_eq!(
        get(&gw.url("/v1/bills/9"), &poll).await.status,
        StatusCode::OK
    );
    let probes = biller
        .biller
        .recent_requests()
        .iter()
        .filter(|r| r.path_and_query == "/")
        .count();
    assert_eq!(probes, 3);
}
