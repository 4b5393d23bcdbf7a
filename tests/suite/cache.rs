//! The answer cache over real sockets on a fake clock: hits, misses, expiry, `no-store`,
//! per-partner isolation against shared scope, 304s, coalescing, a failed leader, payment
//! invalidation and eviction at the ceiling.

use crate::common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};

const Q: &str = r#"payment = "1000/s", inquiry_user = "1000/s", inquiry_scheduled = "1000/s""#;

/// The standard routes with `cache_for` on bill-inquiry (and `extra` lines on it), payments
/// naming their account in the body.
fn cached_config(biller_url: &str, timeout: &str, partners: &str, extra: &str) -> String {
    config_toml(biller_url, timeout, "10000/s", partners)
        .replacen(
            "path = \"/v1/bills/{account}\"\nclass = \"inquiry\"\n",
            &format!("path = \"/v1/bills/{{account}}\"\nclass = \"inquiry\"\ncache_for = \"60s\"\n{extra}"),
            1,
        )
        .replacen("class = \"payment\"\n", "class = \"payment\"\naccount_field = \"account\"\n", 1)
}

fn two_partners() -> String {
    partner("wallet-a", "key-a", Q, "") + &partner("bank-b", "key-b", Q, "")
}

const A: [(&str, &str); 1] = [("x-api-key", "key-a")];
const B: [(&str, &str); 1] = [("x-api-key", "key-b")];

#[tokio::test]
async fn a_repeated_inquiry_is_answered_from_memory_until_it_expires() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(load(&cached_config(
        &biller.url(),
        "2s",
        &two_partners(),
        "",
    )))
    .await;
    let first = get(&gw.url("/v1/bills/100234"), &A).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-billgate-cache"), Some("miss"));
    let etag = first.header("etag").expect("an ETag").to_owned();
    gw.hand.advance(Duration::from_secs(59));
    let hit = get(&gw.url("/v1/bills/100234"), &A).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.header("x-billgate-cache"), Some("hit"));
    assert_eq!(hit.header("age"), Some("59"));
    assert_eq!(hit.header("etag"), Some(etag.as_str()));
    assert_eq!(hit.body, first.body);
    assert!(
        hit.header("ratelimit").is_some(),
        "a hit still spends the partner's quota"
    );
    assert_eq!(biller.biller.stats().received, 1);
    gw.hand.advance(Duration::from_secs(1));
    let expired = get(&gw.url("/v1/bills/100234"), &A).await;
    assert_eq!(expired.header("x-billgate-cache"), Some("miss"));
    assert_eq!(biller.biller.stats().received, 2);
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(&metrics, r#"billgate_cache_requests_total{result="hit"}"#),
        1.0
    );
    assert_eq!(
        sample(&metrics, r#"billgate_cache_requests_total{result="miss"}"#),
        2.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_requests_total{class="inquiry_scheduled",outcome="cached",partner="wallet-a"}"#
        ),
        1.0
    );
    assert_eq!(sample(&metrics, "billgate_cache_entries"), 1.0);
}

#[tokio::test]
async fn partners_do_not_share_answers_unless_the_route_says_so() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(load(&cached_config(
        &biller.url(),
        "2s",
        &two_partners(),
        "",
    )))
    .await;
    assert_eq!(
        get(&gw.url("/v1/bills/7"), &A)
            .await
            .header("x-billgate-cache"),
        Some("miss")
    );
    assert_eq!(
        get(&gw.url("/v1/bills/7"), &B)
            .await
            .header("x-billgate-cache"),
        Some("miss")
    );
    assert_eq!(
        get(&gw.url("/v1/bills/7"), &B)
            .await
            .header("x-billgate-cache"),
        Some("hit")
    );
    assert_eq!(biller.biller.stats().received, 2);

    let biller = TestBiller::roomy().await;
    let shared = cached_config(
        &biller.url(),
        "2s",
        &two_partners(),
        "cache_scope = \"shared\"\n",
    );
    let gw = TestGateway::start(load(&shared)).await;
    assert_eq!(
        get(&gw.url("/v1/bills/7"), &A)
            .await
            .header("x-billgate-cache"),
        Some("miss")
    );
    assert_eq!(
        get(&gw.url("/v1/bills/7"), &B)
            .await
            .header("x-billgate-cache"),
        Some("hit")
    );
    assert_eq!(biller.biller.stats().received, 1);
}

#[tokio::test]
async fn no_store_from_the_biller_is_obeyed() {
    let upstream = FixedUpstream::start(200, &[("cache-control", "no-store")]).await;
    let gw = TestGateway::start(load(&cached_config(
        &upstream.url(),
        "2s",
        &two_partners(),
        "",
    )))
    .await;
    for _ in 0..3 {
        assert_eq!(
            get(&gw.url("/v1/bills/1"), &A)
                .await
                .header("x-billgate-cache"),
            Some("miss")
        );
    }
    assert_eq!(upstream.received(), 3);
    let short = FixedUpstream::start(200, &[("cache-control", "max-age=5")]).await;
    let gw = TestGateway::start(load(&cached_config(
        &short.url(),
        "2s",
        &two_partners(),
        "",
    )))
    .await;
    get(&gw.url("/v1/bills/1"), &A).await;
    gw.hand.advance(Duration::from_secs(4));
    assert_eq!(
        get(&gw.url("/v1/bills/1"), &A)
            .await
            .header("x-billgate-cache"),
        Some("hit")
    );
    gw.hand.advance(Duration::from_secs(1));
    assert_eq!(
        get(&gw.url("/v1/bills/1"), &A)
            .await
            .header("x-billgate-cache"),
        Some("miss")
    );
    assert_eq!(short.received(), 2, "max-age shorter than cache_for wins");
}

#[tokio::test]
async fn a_matching_if_none_match_gets_304_from_the_gateway() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(load(&cached_config(
        &biller.url(),
        "2s",
        &two_partners(),
        "",
    )))
    .await;
    let first = get(&gw.url("/v1/bills/55"), &A).await;
    let etag = first.header("etag").unwrap().to_owned();
    let not_modified = get(
        &gw.url("/v1/bills/55"),
        &[("x-api-key", "key-a"), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
    let other = get(
        &gw.url("/v1/bills/55"),
        &[("x-api-key", "key-a"), ("if-none-match", "\"other\"")],
    )
    .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(biller.biller.stats().received, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_inquiries_become_one_biller_call() {
    let biller = TestBiller::slow(Duration::from_millis(300)).await;
    let gw = TestGateway::start(load(&cached_config(
        &biller.url(),
        "2s",
        &two_partners(),
        "",
    )))
    .await;
    let url = gw.url("/v1/bills/424242");
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &A).await })
        })
        .collect();
    let mut kinds = Vec::new();
    for waiter in waiters {
        let reply = waiter.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["account"], "424242");
        kinds.push(reply.header("x-billgate-cache").unwrap().to_owned());
    }
    assert_eq!(biller.biller.stats().received, 1, "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "miss").count(),
        1,
        "{kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .all(|k| k == "miss" || k == "coalesced" || k == "hit"),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_leader_fails_every_waiter_and_the_next_inquiry_tries_again() {
    let biller = TestBiller::slow(Duration::from_secs(5)).await;
    let gw = TestGateway::start(load(&cached_config(
        &biller.url(),
        "200ms",
        &two_partners(),
        "",
    )))
    .await;
    let url = gw.url("/v1/bills/9");
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &A).await })
        })
        .collect();
    for waiter in waiters {
        let reply = waiter.await.unwrap();
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(reply.json()["reason"], "biller_timeout");
    }
    assert_eq!(biller.biller.stats().received, 1);
    assert_eq!(get(&url, &A).await.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(biller.biller.stats().received, 2, "a failure is not cached");
}

#[tokio::test]
async fn a_payment_invalidates_its_accounts_cached_answers() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(load(&cached_config(
        &biller.url(),
        "2s",
        &two_partners(),
        "",
    )))
    .await;
    assert_eq!(
        get(&gw.url("/v1/bills/100234"), &A)
            .await
            .header("x-billgate-cache"),
        Some("miss")
    );
    assert_eq!(
        get(&gw.url("/v1/bills/100235"), &A)
            .await
            .header("x-billgate-cache"),
        Some("miss")
    );
    assert_eq!(
        get(&gw.url("/v1/bills/100234"), &B)
            .await
            .header("x-billgate-cache"),
        Some("miss")
    );
    // common::PAYMENT pays account 100234.
    assert_eq!(
        pay(&gw.url("/v1/payments"), &A).await.status,
        StatusCode::CREATED
    );
    gw.hand.advance(Duration::from_millis(1));
    assert_eq!(
        get(&gw.url("/v1/bills/100234"), &A)
            .await
            .header("x-billgate-cache"),
        Some("miss")
    );
    assert_eq!(
        get(&gw.url("/v1/bills/100234"), &B)
            .await
            .header("x-billgate-cache"),
        Some("miss")
    );
    assert_eq!(
        get(&gw.url("/v1/bills/100235"), &A)
            .await
            .header("x-billgate-cache"),
        Some("hit")
    );
    assert_eq!(
        get(&gw.url("/v1/bills/100234"), &A)
            .await
            .header("x-billgate-cache"),
        Some("hit")
    );
    let seen: Vec<_> = biller
        .biller
        .recent_requests()
        .iter()
        .map(|r| (r.method.clone(), r.path_and_query.clone()))
        .collect();
    assert_eq!(
        seen.iter().filter(|(m, _)| *m == Method::POST).count(),
        1,
        "payments are never cached"
    );
    assert_eq!(biller.biller.stats().received, 6);
}

#[tokio::test]
async fn the_cache_evicts_at_its_ceiling() {
    let biller = TestBiller::roomy().await;
    let text = cached_config(&biller.url(), "2s", &two_partners(), "").replacen(
        "[[route]]",
        "[cache]\nmax_entries = 4\n\n[[route]]",
        1,
    );
    let gw = TestGateway::start(load(&text)).await;
    for n in 0..10 {
        get(&gw.url(&format!("/v1/bills/{n}")), &A).await;
    }
    let metrics = gw.metrics().await;
    let entries = sample(&metrics, "billgate_cache_entries");
    let evictions = sample(&metrics, "billgate_cache_evictions_total");
    assert!(entries <= 4.0, "{entries} entries held");
    assert_eq!(entries + evictions, 10.0);
    assert_eq!(biller.biller.stats().received, 10);
}

#[tokio::test]
async fn hits_still_spend_the_partners_quota() {
    let biller = TestBiller::roomy().await;
    let q = r#"inquiry_scheduled = "3/s""#;
    let gw = TestGateway::start(load(&cached_config(
        &biller.url(),
        "2s",
        &partner("wallet-a", "key-a", q, ""),
        "",
    )))
    .await;
    let statuses: Vec<u16> = {
        let mut s = Vec::new();
        for _ in 0..5 {
            s.push(get(&gw.url("/v1/bills/1"), &A).await.status.as_u16());
        }
        s
    };
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(biller.biller.stats().received, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_get_their_answer_when_the_leaders_partner_hangs_up() {
    let biller = TestBiller::slow(Duration::from_millis(400)).await;
    let gw = TestGateway::start(load(&cached_config(
        &biller.url(),
        "2s",
        &two_partners(),
        "",
    )))
    .await;
    let url = gw.url("/v1/bills/31337");
    let leader = {
        let url = url.clone();
        tokio::spawn(async move { get(&url, &A).await })
    };
    biller.until_received(1).await;
    let followers: Vec<_> = (0..5)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &A).await })
        })
        .collect();
    // The leader's partner goes away mid-flight.
    leader.abort();
    for follower in followers {
        let reply = follower.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["account"], "31337");
    }
    assert_eq!(biller.biller.stats().received, 1);
}
