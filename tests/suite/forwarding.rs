//! What reaches the biller: no API key, only the trusted partner header, no hop-by-hop headers,
//! `x-forwarded-for` extended; and what comes back.

use crate::common;

use common::*;
use http::StatusCode;
use std::time::Duration;

const Q: &str = r#"payment = "10/s", inquiry_user = "10/s", inquiry_scheduled = "10/s""#;

#[tokio::test]
async fn the_biller_sees_the_trusted_partner_and_never_the_key() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config(
        &biller.url(),
        &partner("wallet-a", "secret-key-a", Q, ""),
    ))
    .await;
    let reply = get(
        &gw.url("/v1/bills/55501?lang=en"),
        &[
            ("x-api-key", "secret-key-a"),
            ("x-billgate-partner", "bank-b"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "connection-scoped"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-trace-id", "abc-123"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = biller.biller.recent_requests();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.path_and_query, "/v1/bills/55501?lang=en");
    let h = &request.headers;
    assert!(h.get("x-api-key").is_none(), "the biller saw the API key");
    assert!(
        !h.values().any(|v| v.as_bytes() == b"secret-key-a"),
        "the key leaked in another header"
    );
    let partners: Vec<_> = h.get_all("x-billgate-partner").iter().collect();
    assert_eq!(
        partners,
        ["wallet-a"],
        "a spoofed partner header reached the biller"
    );
    assert!(h.get("x-hop").is_none());
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-trace-id"], "abc-123");
    assert_eq!(h["host"], biller.addr.to_string());
}

#[tokio::test]
async fn a_spoofed_partner_header_alone_identifies_nobody() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config(&biller.url(), &partner("wallet-a", "key-a", Q, ""))).await;
    let reply = get(
        &gw.url("/v1/bills/1"),
        &[("x-billgate-partner", "wallet-a")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(biller.biller.recent_requests().is_empty());
}

#[tokio::test]
async fn rotated_keys_both_identify_the_partner() {
    let biller = TestBiller::roomy().await;
    let block = format!(
        "[[partner]]\nid = \"bank-b\"\nkeys_sha256 = [\"{}\", \"{}\"]\nquota = {{ {Q} }}\n",
        billgate::config::hash_key("old-key"),
        billgate::config::hash_key("new-key")
    );
    let gw = TestGateway::start(config(&biller.url(), &block)).await;
    for key in ["old-key", "new-key"] {
        assert_eq!(
            get(&gw.url("/v1/bills/1"), &[("x-api-key", key)])
                .await
                .status,
            StatusCode::OK
        );
    }
    let seen = biller.biller.recent_requests();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|r| r.headers["x-billgate-partner"] == "bank-b"));
}

#[tokio::test]
async fn the_account_comes_from_the_query_when_the_route_says_so() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config(
        &biller.url(),
        &partner("wallet-a", "key-a", Q, "per_account = \"1/min\""),
    ))
    .await;
    let headers = [("x-api-key", "key-a")];
    // The stand-in biller has no /v1/lookup; what matters is the gateway's per-account count.
    let first = get(&gw.url("/v1/lookup?account=777"), &headers).await;
    assert_eq!(first.status, StatusCode::NOT_FOUND);
    assert_eq!(biller.biller.stats().received, 1);
    let second = get(&gw.url("/v1/lookup?account=777"), &headers).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.json()["reason"], "account_quota");
    assert_eq!(
        get(&gw.url("/v1/lookup?account=778"), &headers)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(biller.biller.stats().received, 2);
}

#[tokio::test]
async fn a_worker_keeps_its_biller_connections_for_the_next_requests() {
    for (status, headers) in [
        (200, &[][..]),
        // A known-empty body is never read to its end: the connection goes back all the same.
        (204, &[][..]),
        (200, &[("cache-control", "no-store")][..]),
    ] {
        let upstream = FixedUpstream::start(status, headers).await;
        let gw = one_worker(&upstream).await;
        for i in 0..10 {
            // Each call opens a partner connection of its own; the one worker serves them all.
            let reply = bill(&gw, i).await;
            assert_eq!(reply.status.as_u16(), status);
        }
        assert_eq!(upstream.received(), 10);
        assert_eq!(
            upstream.connections(),
            1,
            "status {status}: every request after the first reuses the connection"
        );
    }
}

#[tokio::test]
async fn a_biller_closing_each_connection_gets_a_new_one_for_every_request() {
    let upstream = FixedUpstream::start(200, &[("connection", "close")]).await;
    let gw = one_worker(&upstream).await;
    for i in 0..5 {
        let reply = bill(&gw, i).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
        assert_eq!(reply.text(), "{\"upstream\":true}");
    }
    assert_eq!(upstream.received(), 5);
    assert_eq!(upstream.connections(), 5);
}

/// A gateway with one worker thread in front of `upstream`, for wallet-a (`key-a`).
async fn one_worker(upstream: &FixedUpstream) -> TestGateway {
    let text = config_toml(
        &upstream.url(),
        "2s",
        "10000/s",
        &partner("wallet-a", "key-a", Q, ""),
    )
    .replacen("[server]", "[server]\nworkers = 1", 1);
    TestGateway::start(load(&text)).await
}

/// wallet-a asks about bill account `account`.
async fn bill(gw: &TestGateway, account: usize) -> Reply {
    get(
        &gw.url(&format!("/v1/bills/{account}")),
        &[("x-api-key", "key-a")],
    )
    .await
}

/// A body of `frames` frames of `size` bytes, length not announced (sent chunked).
struct Frames {
    left: usize,
    size: usize,
}

impl http_body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        let byte = b'a' + (self.left % 26) as u8;
        let frame = http_body::Frame::data(bytes::Bytes::from(vec![byte; self.size]));
        std::task::Poll::Ready(Some(Ok(frame)))
    }
}

/// An upstream answering `/v1/bills/big` with 3 MiB of known length and anything else with
/// 40 chunks of 64 KiB; it counts the connections that carried a request.
async fn large_answers() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        if first.swap(false, Ordering::SeqCst) {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                        let body = if req.uri().path() == "/v1/bills/big" {
                            http_body_util::Either::Left(http_body_util::Full::new(
                                bytes::Bytes::from(vec![b'x'; 3 << 20]),
                            ))
                        } else {
                            http_body_util::Either::Right(Frames {
                                left: 40,
                                size: 64 << 10,
                            })
                        };
                        async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, connections)
}

#[tokio::test]
async fn large_and_chunked_answers_stream_through_whole_and_free_their_connection() {
    let (url, connections) = large_answers().await;
    let text = config_toml(&url, "5s", "10000/s", &partner("wallet-a", "key-a", Q, "")).replacen(
        "[server]",
        "[server]\nworkers = 1",
        1,
    );
    let gw = TestGateway::start(load(&text)).await;
    for _ in 0..2 {
        let big = get(&gw.url("/v1/bills/big"), &[("x-api-key", "key-a")]).await;
        assert_eq!(big.status, StatusCode::OK);
        assert_eq!(big.body.len(), 3 << 20);
        assert!(big.body.iter().all(|&b| b == b'x'));

        let chunked = get(&gw.url("/v1/bills/chunked"), &[("x-api-key", "key-a")]).await;
        assert_eq!(chunked.status, StatusCode::OK);
        assert_eq!(chunked.body.len(), 40 * (64 << 10));
        let expected: Vec<u8> = (0..40usize)
            .rev()
            .flat_map(|left| std::iter::repeat_n(b'a' + (left % 26) as u8, 64 << 10))
            .collect();
        assert!(
            chunked.body[..] == expected[..],
            "the chunks arrived in order"
        );
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "each answer read to its end handed the connection back"
    );
}

#[tokio::test]
async fn a_biller_stalling_mid_body_cuts_the_answer_at_its_deadline() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Promises 100 bytes, sends 10, then holds the connection open without a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                if stream.read(&mut request).await.unwrap_or(0) == 0 {
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789";
                let _ = stream.write_all(head.as_bytes()).await;
                let mut rest = [0u8; 1];
                let _ = stream.read(&mut rest).await;
            });
        }
    });
    let text = config_toml(
        &url,
        "300ms",
        "10000/s",
        &partner("wallet-a", "key-a", Q, ""),
    );
    let gw = TestGateway::start(load(&text)).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request = http::Request::get(gw.url("/v1/bills/1"))
        .header("x-api-key", "key-a")
        .body(http_body_util::Empty::new())
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        let response = client.request(request).await.expect("the head arrives");
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await
    })
    .await
    .expect("the gateway ends the answer at its deadline instead of hanging");
    assert!(
        outcome.is_err(),
        "an answer cut short must not look complete"
    );
}

/// A gateway for wallet-a (key `key-a`) in front of a roomy biller, and a raw connection to it.
async fn raw_connection() -> (TestBiller, TestGateway, tokio::net::TcpStream) {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config(&biller.url(), &partner("wallet-a", "key-a", Q, ""))).await;
    let stream = connect(&gw).await;
    (biller, gw, stream)
}

/// Waits for the gateway to close `stream` without sending anything more, and checks that the
/// close was counted as a connection cut off. `what` says what kept the connection waiting.
async fn assert_cut_off(gw: &TestGateway, stream: &mut tokio::net::TcpStream, what: &str) {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    // The bound only lets the test fail if the connection is never closed.
    let closed = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| panic!("{what} kept its connection open for 60 s"));
    assert_eq!(closed.expect("read until closed"), 0);
    assert!(rest.is_empty(), "{what}: closed without an answer");
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(&metrics, "billgate_partner_connections_cut_total"),
        1.0
    );
    assert_eq!(sample(&metrics, "billgate_partner_connections"), 0.0);
}

/// A partner that starts a request head and never finishes it (slow headers, one way to tie up
/// a gateway's connections) is cut off once the head timeout, 10 s, has passed: the connection
/// is closed without an answer, and the biller never hears of the request.
#[tokio::test]
async fn a_request_head_never_finished_is_cut_off_at_the_header_timeout() {
    use tokio::io::AsyncWriteExt;

    let (biller, gw, mut stream) = raw_connection().await;
    stream
        .write_all(b"GET /v1/bills/100234 HTTP/1.1\r\nhost: billgate\r\nx-api-key: key-a\r\n")
        .await
        .expect("send half a head");
    assert_cut_off(&gw, &mut stream, "a half-sent head").await;
    assert_eq!(biller.biller.stats().received, 0);
}

/// A keep-alive connection left idle after its answer is closed once the head timeout, 10 s,
/// has passed, so idle partners cannot hold the gateway's connections for ever.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_head_timeout() {
    use tokio::io::AsyncWriteExt;

    let (biller, gw, mut stream) = raw_connection().await;
    stream
        .write_all(b"GET /v1/bills/100234 HTTP/1.1\r\nhost: billgate\r\nx-api-key: key-a\r\n\r\n")
        .await
        .expect("send a request");
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(biller.biller.stats().received, 1);
    assert_cut_off(&gw, &mut stream, "an idle connection").await;
}

/// The head timeout runs only while a connection waits for a request: an answer that takes
/// longer than it (here 11 s, within a 20 s biller timeout) still arrives, and the connection
/// then serves the next request.
#[tokio::test]
async fn an_answer_slower_than_the_head_timeout_is_not_cut_off() {
    use tokio::io::AsyncWriteExt;

    let biller = TestBiller::slow(Duration::from_secs(11)).await;
    let gw = TestGateway::start(config_with(
        &biller.url(),
        "20s",
        "10000/s",
        &partner("wallet-a", "key-a", Q, ""),
    ))
    .await;
    let mut stream = connect(&gw).await;
    let request = b"GET /v1/bills/100234 HTTP/1.1\r\nhost: billgate\r\nx-api-key: key-a\r\n\r\n";
    stream.write_all(request).await.expect("send a request");
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");

    // The same connection takes the next request.
    stream.write_all(request).await.expect("send another");
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(biller.biller.stats().received, 2);
    let metrics = gw.metrics().await;
    assert_eq!(sample(&metrics, "billgate_partner_connections"), 1.0);
    assert_eq!(
        sample(&metrics, "billgate_partner_connections_cut_total"),
        0.0
    );
}
