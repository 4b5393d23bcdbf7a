//! The admin listener: health, readiness and the Prometheus exposition.

mod common;

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
