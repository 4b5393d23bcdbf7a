//! Request framing toward the biller is billgate's own: a partner cannot smuggle a request past
//! admission with a `Content-Length` on a body billgate does not forward, nor be read two ways
//! by `Host` or key headers. Over raw sockets, against a biller that records what it parsed.

use crate::common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the recording biller parsed: method, path, the trusted partner header, content-length
/// and the body's length, one entry per request.
type Seen = Arc<Mutex<Vec<(String, String, String, Option<String>, usize)>>>;

/// A hyper biller that records every request it parses and answers 200 with a small bill.
async fn recording_biller() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let record = Arc::clone(&record);
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes().len())
                                .unwrap_or(0);
                            let header = |name: &str| {
                                parts
                                    .headers
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            record.lock().unwrap().push((
                                parts.method.to_string(),
                                parts.uri.path().to_owned(),
                                header("x-billgate-partner").unwrap_or_default(),
                                header("content-length"),
                                body,
                            ));
                            let answer = http::Response::builder()
                                .status(200)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{\"bill\":1}")))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(answer)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

/// One worker, so the inquiry's biller connection is the one the payment reuses; inquiries
/// cached, as in the attack.
async fn gateway(biller: &str) -> TestGateway {
    let q = r#"payment = "100/s", inquiry_scheduled = "100/s""#;
    let text = config_toml(biller, "2s", "1000/s", &partner("wallet-a", "key-a", q, ""))
        .replacen("[server]\n", "[server]\nworkers = 1\n", 1)
        .replacen(
            "path = \"/v1/bills/{account}\"\nclass = \"inquiry\"\n",
            "path = \"/v1/bills/{account}\"\nclass = \"inquiry\"\ncache_for = \"60s\"\n",
            1,
        );
    TestGateway::start(load(&text)).await
}

/// Reads until `n` answers' heads have arrived, or the gateway closes.
async fn read_answers(stream: &mut TcpStream, n: usize) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(8).filter(|w| w == b"HTTP/1.1").count() < n {
        match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(read)) if read > 0 => got.extend_from_slice(&buf[..read]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The attack as found: a cacheable GET declaring a 164-byte body that is a whole second
/// request, then a payment whose body is a request in bank-b's name. The biller must parse
/// exactly the two requests billgate admitted, both wallet-a's, the GET without a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_on_an_inquiry_cannot_smuggle_a_request_to_the_biller() {
    let (biller, seen) = recording_biller().await;
    let gw = gateway(&biller).await;
    let embedded = "POST /v1/payments HTTP/1.1\r\nhost: biller\r\nx-billgate-partner: bank-b\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n{\"account\":\"sm1\",\"amount\":\"999.00\"}    ";
    let filler = format!("{embedded:<164}");
    assert_eq!(filler.len(), 164);
    let mut stream = TcpStream::connect(gw.gateway.addr).await.unwrap();
    let attack = format!(
        "GET /v1/bills/sm1 HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\ncontent-length: 164\r\n\r\n{filler}\
         POST /v1/payments HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{embedded}",
        embedded.len()
    );
    stream.write_all(attack.as_bytes()).await.unwrap();
    let answers = read_answers(&mut stream, 2).await;
    assert_eq!(
        answers.matches("HTTP/1.1 200").count() + answers.matches("HTTP/1.1 201").count(),
        2,
        "{answers}"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "the biller parsed {seen:?}");
    assert_eq!(
        seen[0],
        (
            "GET".into(),
            "/v1/bills/sm1".into(),
            "wallet-a".into(),
            None,
            0
        )
    );
    let (method, path, partner, length, body) = &seen[1];
    assert_eq!(
        (method.as_str(), path.as_str(), partner.as_str()),
        ("POST", "/v1/payments", "wallet-a")
    );
    assert_eq!(
        (length.as_deref(), *body),
        (Some(embedded.len().to_string().as_str()), embedded.len())
    );
}

/// Requests a cache or a biller could read two ways are refused 400 before anything is
/// decided; two different keys are no one partner's (401); the biller sees none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_are_refused_before_the_biller() {
    let (biller, seen) = recording_biller().await;
    let gw = gateway(&biller).await;
    let cases = [
        (
            "GET /v1/bills/1 HTTP/1.1\r\nx-api-key: key-a\r\n\r\n",
            "400",
            "malformed_request",
        ),
        (
            "GET /v1/bills/1 HTTP/1.1\r\nhost: a\r\nhost: b\r\nx-api-key: key-a\r\n\r\n",
            "400",
            "malformed_request",
        ),
        (
            "GET /v1/bills/1 HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\nx-api-key: key-b\r\n\r\n",
            "401",
            "unknown_key",
        ),
    ];
    for (request, status, reason) in cases {
        let mut stream = TcpStream::connect(gw.gateway.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answers(&mut stream, 1).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{request:?} got {answer}"
        );
        assert!(answer.contains(reason), "{request:?} got {answer}");
    }
    // The same key twice is one key.
    let mut stream = TcpStream::connect(gw.gateway.addr).await.unwrap();
    stream
        .write_all(
            b"GET /v1/bills/2 HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\nx-api-key: key-a\r\n\r\n",
        )
        .await
        .unwrap();
    assert!(read_answers(&mut stream, 1)
        .await
        .starts_with("HTTP/1.1 200"));
    // Both a length and chunked, in either order: refused, and the connection closed after
    // the answer (RFC 9112 §6.1), whatever followed on it.
    for lengths in [
        "content-length: 50\r\ntransfer-encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
    ] {
        let mut stream = TcpStream::connect(gw.gateway.addr).await.unwrap();
        let request = format!(
            "POST /v1/payments HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\n{lengths}\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
             GET /v1/bills/3 HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answers(&mut stream, 2).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{lengths:?} got {answer}"
        );
        assert!(answer.contains("malformed_request"), "{answer}");
        assert!(
            answer.contains("Content-Length or Transfer-Encoding, not both"),
            "{answer}"
        );
        assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    }
    // Chunked alone is framed by the chunks, and the biller is sent the five bytes read, under
    // billgate's own length.
    let mut stream = TcpStream::connect(gw.gateway.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/payments HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answers(&mut stream, 1).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].1, "/v1/bills/2");
    assert_eq!(
        (seen[1].1.as_str(), seen[1].3.as_deref(), seen[1].4),
        ("/v1/payments", Some("5"), 5)
    );
}

/// A trailing-slash variant shares its account's cached answer, so the biller is asked the one
/// way the answer is kept: once, without the slash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailing_slash_variant_is_forwarded_as_it_is_cached() {
    let (biller, seen) = recording_biller().await;
    let gw = gateway(&biller).await;
    for path in ["/v1/bills/55/", "/v1/bills/55"] {
        let mut stream = TcpStream::connect(gw.gateway.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answers(&mut stream, 1).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
    // A fragment is no part of a request target: the parser drops it, and the request is the
    // account's, answered from the same cached answer.
    let mut stream = TcpStream::connect(gw.gateway.addr).await.unwrap();
    stream
        .write_all(b"GET /v1/bills/55#x HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answers(&mut stream, 1).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "a fragment: {answer}");
    assert!(
        answer.contains("x-billgate-cache: hit"),
        "a fragment: {answer}"
    );
    let seen = seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(paths, ["/v1/bills/55"]);
}
