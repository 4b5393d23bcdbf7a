//! The admin listener: health, readiness and the Prometheus exposition.

use crate::common;

use common::*;
use http::{Method, StatusCode};

const Q: &str = r#"payment = "10/s", inquiry_user = "10/s", inquiry_scheduled = "10/s""#;

#[tokio::test]
async fn healthz_and_readyz_follow_the_biller() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config(&biller.url(), &partner("wallet-a", "key-a", Q, ""))).await;
    let health = get(&gw.admin_url("/healthz"), &[]).await;
    assert_eq!(
        (health.status, health.text()),
        (StatusCode::OK, "ok\n".to_string())
    );
    assert!(gw.gateway.probe_biller().await);
    let ready = get(&gw.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["biller_reachable"], true);

    let closed = closed_port().await;
    let gw = TestGateway::start(config(
        &format!("http://{closed}"),
        &partner("wallet-a", "key-a", Q, ""),
    ))
    .await;
    assert!(!gw.gateway.probe_biller().await);
    let ready = get(&gw.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["biller_reachable"], false);
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_requests_and_latency() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config(&biller.url(), &partner("wallet-a", "key-a", Q, ""))).await;
    assert_eq!(
        pay(&gw.url("/v1/payments"), &[("x-api-key", "key-a")])
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        get(&gw.url("/v1/bills/1"), &[("x-api-key", "nope")])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let reply = get(&gw.admin_url("/metrics"), &[]).await;
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = reply.text();
    assert_eq!(
        sample(
            &text,
            r#"billgate_requests_total{class="payment",outcome="forwarded",partner="wallet-a"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"billgate_requests_total{class="none",outcome="rejected",partner="unknown"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"billgate_rejections_total{class="none",partner="unknown",reason="unknown_key"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"billgate_upstream_duration_seconds_count{class="payment"}"#
        ),
        1.0
    );
    assert_eq!(sample(&text, "billgate_upstream_in_flight"), 0.0);
    assert!(text.contains("# TYPE billgate_upstream_duration_seconds histogram"));
    assert!(text.contains(r#"billgate_config_info{sha256=""#));
}

/// Every series `/metrics` exports can move: no named partner refused for an unknown key, no
/// request outside a class forwarded, no class-level refusal before a partner is known.
#[tokio::test]
async fn metrics_export_only_label_combinations_a_request_can_produce() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config(&biller.url(), &partner("wallet-a", "key-a", Q, ""))).await;
    let text = gw.metrics().await;
    let series: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| {
            l.starts_with("billgate_rejections_total{")
                || l.starts_with("billgate_requests_total{")
                || l.starts_with("billgate_shadow_rejections_total{")
        })
        .filter_map(|l| l.split_once('{'))
        .map(|(name, rest)| (name, rest.split('}').next().unwrap_or("")))
        .collect();
    let label = |labels: &str, name: &str| -> String {
        labels
            .split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
            .map(|v| v.trim_end_matches('"').to_owned())
            .unwrap_or_default()
    };
    let before_a_partner = ["missing_key", "unknown_key", "malformed_request"];
    let before_a_route = ["no_route", "suspended"];
    for (name, labels) in &series {
        let (partner, class) = (label(labels, "partner"), label(labels, "class"));
        let (reason, outcome) = (label(labels, "reason"), label(labels, "outcome"));
        let shown = format!("{name}{{{labels}}}");
        if partner == "unknown" {
            assert_eq!(class, "none", "{shown}");
            if *name == "billgate_rejections_total" {
                assert!(before_a_partner.contains(&reason.as_str()), "{shown}");
            }
        } else {
            assert!(!before_a_partner.contains(&reason.as_str()), "{shown}");
        }
        if class == "none" {
            if *name == "billgate_requests_total" {
                assert_eq!(outcome, "rejected", "{shown}");
            }
            assert_ne!(*name, "billgate_shadow_rejections_total", "{shown}");
        } else {
            assert!(!before_a_route.contains(&reason.as_str()), "{shown}");
        }
    }
    // What remains is exactly what can happen: wallet-a refused before a route for two
    // reasons, and callers not yet known for three (no key, an unknown key, a malformed head).
    let count = |partner: &str, class: &str| {
        series
            .iter()
            .filter(|(n, l)| {
                *n == "billgate_rejections_total"
                    && label(l, "partner") == partner
                    && label(l, "class") == class
            })
            .count()
    };
    assert_eq!(count("wallet-a", "none"), 2);
    assert_eq!(count("unknown", "none"), 3);
    assert!(!text.contains("billgate_unexported"));
}

#[tokio::test]
async fn unknown_admin_paths_and_methods_are_refused() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config(&biller.url(), &partner("wallet-a", "key-a", Q, ""))).await;
    assert_eq!(
        get(&gw.admin_url("/nope"), &[]).await.status,
        StatusCode::NOT_FOUND
    );
    let reply = send(Method::POST, &gw.admin_url("/metrics"), &[], "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow"), Some("GET"));
}

/// `GET /admin/partners/{id}`: every answer counts, those from memory included; the rate is over
/// the last minute of the gateway's clock; the quota says what remains without spending it.
#[tokio::test]
async fn one_partners_view_counts_every_answer_and_what_remains() {
    let biller = TestBiller::roomy().await;
    let q = r#"payment = "10/s", inquiry_scheduled = "10/s""#;
    let text = config_toml(
        &biller.url(),
        "2s",
        "1000/s",
        &partner("wallet-a", "key-a", q, ""),
    )
    .replacen(
        "path = \"/v1/bills/{account}\"\nclass = \"inquiry\"\n",
        "path = \"/v1/bills/{account}\"\nclass = \"inquiry\"\ncache_for = \"60s\"\n",
        1,
    );
    let gw = TestGateway::start(load(&text)).await;
    let h = [("x-api-key", "key-a")];
    // The quota's ten: one forwarded, nine from memory (a hit costs the partner one); then
    // four refused.
    for _ in 0..14 {
        get(&gw.url("/v1/bills/77"), &h).await;
    }
    gw.hand.advance(std::time::Duration::from_secs(60));
    let reply = get(&gw.admin_url("/admin/partners/wallet-a"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let view = reply.json();
    let polls = &view["classes"]["inquiry_scheduled"];
    assert_eq!(view["last_minute_secs"], 60.0);
    assert_eq!(polls["last_minute"]["answered_per_sec"], 10.0 / 60.0);
    assert_eq!(polls["last_minute"]["rejected_per_sec"], 4.0 / 60.0);
    assert_eq!(polls["refusals_since_start"]["partner_quota"], 4);
    // A minute on, the quota is whole again; looking did not spend it.
    assert_eq!(polls["remaining"], 10);
    assert_eq!(polls["full_in_secs"], 0);
    assert_eq!(view["classes"]["inquiry_user"]["quota"], "closed");
    assert_eq!(view["classes"]["payment"]["remaining"], 10);
    let again = get(&gw.admin_url("/admin/partners/wallet-a"), &[])
        .await
        .json();
    assert_eq!(again["classes"]["inquiry_scheduled"]["remaining"], 10);

    let list = get(&gw.admin_url("/admin/partners"), &[]).await.json();
    let since_start = &list["partners"][0]["requests_since_start"];
    assert_eq!(
        (
            &since_start["forwarded"],
            &since_start["cached"],
            &since_start["rejected"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(9),
            &serde_json::json!(4)
        )
    );
    let missing = get(&gw.admin_url("/admin/partners/nobody"), &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}
