//! Every status the gateway answers itself, with its headers and problem body, plus a 200.

use crate::common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};

const A: &str = r#"payment = "10/s", inquiry_user = "5/s", inquiry_scheduled = "2/s""#;

fn assert_problem(reply: &Reply, status: u16, reason: &str) -> serde_json::Value {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let body = reply.json();
    assert_eq!(body["status"], status);
    assert_eq!(body["reason"], reason);
    assert_eq!(body["type"], format!("urn:billgate:problem:{reason}"));
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(body["detail"].as_str().is_some_and(|t| !t.is_empty()));
    body
}

#[tokio::test]
async fn admitted_inquiry_is_answered_by_the_biller_with_ratelimit_fields() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config(&biller.url(), &partner("wallet-a", "key-a", A, ""))).await;
    let reply = get(
        &gw.url("/v1/bills/100234"),
        &[("x-api-key", "key-a"), ("x-request-origin", "user")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["account"], "100234");
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"inquiry_user\";q=5;w=1")
    );
    assert_eq!(reply.header("ratelimit"), Some("\"inquiry_user\";r=4;t=1"));
    let reply = pay(&gw.url("/v1/payments"), &[("x-api-key", "key-a")]).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.header("ratelimit"), Some("\"payment\";r=9;t=1"));
    assert_eq!(biller.biller.stats().received, 2);
}

#[tokio::test]
async fn missing_and_unknown_keys_get_401_and_never_reach_the_biller() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config(&biller.url(), &partner("wallet-a", "key-a", A, ""))).await;
    let reply = get(&gw.url("/v1/bills/1"), &[]).await;
    let body = assert_problem(&reply, 401, "missing_key");
    assert!(body["detail"].as_str().unwrap().contains("x-api-key"));
    assert_eq!(body.get("partner"), None);
    let reply = get(&gw.url("/v1/bills/1"), &[("x-api-key", "not-a-key")]).await;
    assert_problem(&reply, 401, "unknown_key");
    assert_eq!(reply.header("retry-after"), None);
    assert_eq!(biller.biller.stats().received, 0);
}

#[tokio::test]
async fn a_closed_class_gets_403() {
    let biller = TestBiller::roomy().await;
    let quota = r#"payment = "10/s", inquiry_user = "5/s""#;
    let gw = TestGateway::start(config(
        &biller.url(),
        &partner("paynow-c", "key-c", quota, ""),
    ))
    .await;
    let reply = get(&gw.url("/v1/bills/1"), &[("x-api-key", "key-c")]).await;
    let body = assert_problem(&reply, 403, "class_closed");
    assert_eq!(body["partner"], "paynow-c");
    assert_eq!(body["class"], "inquiry_scheduled");
    assert_eq!(biller.biller.stats().received, 0);
}

#[tokio::test]
async fn an_unrouted_request_gets_404_and_is_never_forwarded() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config(&biller.url(), &partner("wallet-a", "key-a", A, ""))).await;
    for (method, path) in [
        (Method::GET, "/v1/admin"),
        (Method::DELETE, "/v1/bills/1"),
        (Method::GET, "/v1/bills/1/2"),
    ] {
        let reply = send(method, &gw.url(path), &[("x-api-key", "key-a")], "").await;
        let body = assert_problem(&reply, 404, "no_route");
        assert_eq!(body["partner"], "wallet-a");
    }
    assert_eq!(biller.biller.stats().received, 0);
}

#[tokio::test]
async fn an_oversize_body_gets_413_whether_declared_or_streamed() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config(&biller.url(), &partner("wallet-a", "key-a", A, ""))).await;
    let big = vec![b'x'; 5000];
    let reply = send(
        Method::POST,
        &gw.url("/v1/payments"),
        &[("x-api-key", "key-a")],
        big.clone(),
    )
    .await;
    assert_problem(&reply, 413, "body_too_large");
    assert_eq!(biller.biller.stats().received, 0);
    // Without a Content-Length the limit trips while streaming.
    let reply = send_chunked(&gw.url("/v1/payments"), &[("x-api-key", "key-a")], big).await;
    assert_problem(&reply, 413, "body_too_large");
}

/// A body that does not arrive whole within the biller timeout is the partner's 408: the
/// biller never hears of the request, and nothing is counted against the biller (no biller
/// timeout, which the breaker would count as the biller failing).
#[tokio::test]
async fn a_body_sent_too_slowly_gets_408_and_never_reaches_the_biller() {
    use tokio::io::AsyncWriteExt;

    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config_with(
        &biller.url(),
        "300ms",
        "10000/s",
        &partner("wallet-a", "key-a", A, ""),
    ))
    .await;
    let mut stream = connect(&gw).await;
    // A head promising 60 bytes, then 11 of them, then nothing.
    stream
        .write_all(
            b"POST /v1/payments HTTP/1.1\r\nhost: billgate\r\nx-api-key: key-a\r\n\
              content-type: application/json\r\ncontent-length: 60\r\n\r\n{\"account\":",
        )
        .await
        .expect("send the head and part of the body");
    let answer = read_answer(&mut stream).await;
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("content-type: application/problem+json\r\n"),
        "{answer}"
    );
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let problem: serde_json::Value = serde_json::from_str(body).expect("a problem body");
    assert_eq!(problem["reason"], "body_timeout");
    assert_eq!(problem["status"], 408);
    assert_eq!(problem["partner"], "wallet-a");
    assert_eq!(biller.biller.stats().received, 0);
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_rejections_total{class="payment",partner="wallet-a",reason="body_timeout"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_upstream_errors_total{kind="timeout"}"#
        ),
        0.0
    );
}

#[tokio::test]
async fn over_quota_gets_429_with_retry_after_and_ratelimit_fields() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config(&biller.url(), &partner("wallet-a", "key-a", A, ""))).await;
    let headers = [("x-api-key", "key-a")];
    assert_eq!(get(&gw.url("/v1/bills/1"), &headers).await.status, 200);
    assert_eq!(get(&gw.url("/v1/bills/2"), &headers).await.status, 200);
    let reply = get(&gw.url("/v1/bills/3"), &headers).await;
    let body = assert_problem(&reply, 429, "partner_quota");
    assert_eq!(body["partner"], "wallet-a");
    assert_eq!(body["class"], "inquiry_scheduled");
    assert_eq!(body["retry_after"], 1);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"inquiry_scheduled\";q=2;w=1")
    );
    assert_eq!(
        reply.header("ratelimit"),
        Some("\"inquiry_scheduled\";r=0;t=1")
    );
    assert_eq!(biller.biller.stats().received, 2);
    // Half a second later the limiter has one request again.
    gw.hand.advance(Duration::from_millis(500));
    assert_eq!(get(&gw.url("/v1/bills/3"), &headers).await.status, 200);
}

#[tokio::test]
async fn an_unreachable_biller_gets_502_at_once() {
    let closed = closed_port().await;
    let gw = TestGateway::start(config(
        &format!("http://{closed}"),
        &partner("wallet-a", "key-a", A, ""),
    ))
    .await;
    let reply = pay(&gw.url("/v1/payments"), &[("x-api-key", "key-a")]).await;
    let body = assert_problem(&reply, 502, "biller_unreachable");
    assert_eq!(body["class"], "payment");
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_requests_total{class="payment",outcome="failed",partner="wallet-a"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_upstream_errors_total{kind="connect"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_slow_biller_gets_504_after_the_timeout() {
    let biller = TestBiller::slow(Duration::from_secs(5)).await;
    let cfg = config_with(
        &biller.url(),
        "150ms",
        "10000/s",
        &partner("wallet-a", "key-a", A, ""),
    );
    let gw = TestGateway::start(cfg).await;
    let reply = get(&gw.url("/v1/bills/1"), &[("x-api-key", "key-a")]).await;
    let body = assert_problem(&reply, 504, "biller_timeout");
    assert!(body["detail"].as_str().unwrap().contains("150ms"));
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_upstream_errors_total{kind="timeout"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn biller_capacity_spent_gets_503_with_retry_after() {
    let biller = TestBiller::roomy().await;
    let cfg = config_with(
        &biller.url(),
        "2s",
        "2/s",
        &partner("wallet-a", "key-a", A, ""),
    );
    let gw = TestGateway::start(cfg).await;
    let headers = [("x-api-key", "key-a")];
    assert_eq!(pay(&gw.url("/v1/payments"), &headers).await.status, 201);
    assert_eq!(pay(&gw.url("/v1/payments"), &headers).await.status, 201);
    let reply = pay(&gw.url("/v1/payments"), &headers).await;
    assert_problem(&reply, 503, "biller_capacity");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(biller.biller.stats().received, 2);
}

#[tokio::test]
async fn a_bad_bill_account_gets_400_and_never_reaches_the_biller() {
    let biller = TestBiller::roomy().await;
    let q = r#"payment = "100/s", inquiry_user = "100/s", inquiry_scheduled = "100/s""#;
    let gw = TestGateway::start(config(&biller.url(), &partner("wallet-a", "key-a", q, ""))).await;
    let key = [("x-api-key", "key-a")];
    let long = "9".repeat(65);
    let paths = [
        "/v1/bills/..%2F..%2F_biller%2Fstats".to_owned(),
        "/v1/bills/a%2fb".to_owned(),
        "/v1/bills/..".to_owned(),
        "/v1/bills/.".to_owned(),
        "/v1/bills/%2E%2E".to_owned(),
        "/v1/bills/100234%0AX-Injected:%201".to_owned(),
        "/v1/bills/%1B%5B2J".to_owned(),
        format!("/v1/bills/{long}"),
        "/v1/lookup?account=..%2Fadmin".to_owned(),
        "/v1/lookup?account=%00".to_owned(),
    ];
    for path in &paths {
        let reply = get(&gw.url(path), &key).await;
        let body = assert_problem(&reply, 400, "bad_account");
        assert_eq!(body["partner"], "wallet-a", "{path}");
        assert!(reply.header("retry-after").is_none(), "{path}");
    }
    assert_eq!(
        biller.biller.stats().received,
        0,
        "nothing reached the biller"
    );
    let metrics = gw.metrics().await;
    let refused = r#"billgate_rejections_total{class="inquiry_scheduled",partner="wallet-a",reason="bad_account"}"#;
    assert_eq!(sample(&metrics, refused), paths.len() as f64);
    // A plain account goes through, and so does the longest: the stand-in biller takes at
    // most 32 characters and answers that one 400 itself.
    let plain = get(&gw.url("/v1/bills/100234"), &key).await;
    assert_eq!(plain.status, StatusCode::OK);
    let longest = get(&gw.url(&format!("/v1/bills/{}", "9".repeat(64))), &key).await;
    assert_ne!(
        longest.json()["reason"],
        "bad_account",
        "{}",
        longest.text()
    );
    assert_eq!(biller.biller.stats().received, 2);
}

/// Sends a body without Content-Length (chunked), so the limit can only trip while streaming.
async fn send_chunked(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    use http_body_util::BodyExt;
    let chunks = body
        .chunks(1000)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Chunked>();
    let mut builder = http::Request::builder().method(Method::POST).uri(url);
    for (n, v) in headers {
        builder = builder.header(*n, *v);
    }
    let response = client
        .request(builder.body(Chunked(chunks)).unwrap())
        .await
        .expect("answer");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A body of several chunks whose length is not announced.
struct Chunked(std::collections::VecDeque<bytes::Bytes>);

impl hyper::body::Body for Chunked {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}
