//! A partner sending its payment bodies slowly holds its own connections and nothing of the
//! biller's: no in-flight slot, no breaker probe, no capacity token. Over raw sockets, beside a
//! polite partner whose payments must all pass.

use crate::common;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_hold_no_biller_slot_and_a_polite_partner_is_untouched() {
    let biller = TestBiller::roomy().await;
    let partners = partner("slow-a", "key-slow", r#"payment = "1000/s""#, "")
        + &partner("polite-b", "key-polite", r#"payment = "1000/s""#, "");
    // Two calls at the biller at once at most: sixteen stalled bodies would hold eight times that.
    let text = config_toml(&biller.url(), "2s", "1000/s", &partners).replacen(
        "[biller]\n",
        "[biller]\nmax_in_flight = 2\n",
        1,
    );
    let gw = TestGateway::start(load(&text)).await;

    let mut stalled = Vec::new();
    for _ in 0..16 {
        let mut stream = TcpStream::connect(gw.gateway.addr).await.unwrap();
        stream
            .write_all(b"POST /v1/payments HTTP/1.1\r\nhost: gw\r\nx-api-key: key-slow\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"acc")
            .await
            .unwrap();
        stalled.push(stream);
    }
    let h = [("x-api-key", "key-polite")];
    let mut created = 0;
    for _ in 0..20 {
        if pay(&gw.url("/v1/payments"), &h).await.status == StatusCode::CREATED {
            created += 1;
        }
    }
    assert_eq!(created, 20, "the polite partner's payments");
    let metrics = gw.metrics().await;
    assert_eq!(sample(&metrics, "billgate_upstream_in_flight"), 0.0);
    let busy =
        r#"billgate_rejections_total{class="payment",partner="polite-b",reason="biller_busy"}"#;
    assert_eq!(sample(&metrics, busy), 0.0);
    drop(stalled);
}

/// A partner that pipelines requests and never reads the answers is cut off once its answers
/// have waited the head timeout (10 s), however much it still sends; hyper reads no more than
/// its buffer holds meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_that_never_reads_its_answers_is_cut_off() {
    let biller = TestBiller::roomy().await;
    let partners = partner("stall-a", "key-a", r#"inquiry_scheduled = "1000000/s""#, "");
    let text = config_toml(&biller.url(), "2s", "1000000/s", &partners);
    let gw = TestGateway::start(load(&text)).await;
    let mut stream = TcpStream::connect(gw.gateway.addr).await.unwrap();
    let request = b"GET /v1/bills/1 HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\n\r\n";
    // Writes until the gateway stops taking them (its buffers and the socket's full) or cuts
    // the connection; bounded both ways.
    let writer = tokio::spawn(async move {
        for _ in 0..200_000 {
            let write = stream.write_all(request);
            match tokio::time::timeout(std::time::Duration::from_secs(30), write).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        stream
    });
    let mut cut = 0.0;
    for _ in 0..120 {
        cut = sample(
            &gw.metrics().await,
            "billgate_partner_connections_cut_total",
        );
        if cut >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(cut, 1.0, "the stalled reader kept its connection for 60 s");
    let metrics = gw.metrics().await;
    assert_eq!(sample(&metrics, "billgate_partner_connections"), 0.0);
    drop(writer.await);
}

/// Reads until the gateway closes the connection (bounded by a timeout); returns what came
/// before the end, or before a reset (the gateway closes with the rest of the head unread).
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut closed = false;
    for _ in 0..10_000 {
        match tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    assert!(
        closed,
        "the gateway closes the connection; got {:?}",
        String::from_utf8_lossy(&got)
    );
    String::from_utf8_lossy(&got).into_owned()
}

/// A head larger than 64 KiB, or with more than 100 fields, is
/// answered 431 and its connection closed; the biller never hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_64_kib_or_100_fields_is_refused_431() {
    let biller = TestBiller::roomy().await;
    let partners = partner("big-a", "key-a", r#"inquiry_scheduled = "1000/s""#, "");
    let gw = TestGateway::start(load(&config_toml(&biller.url(), "2s", "1000/s", &partners))).await;
    let long = format!(
        "GET /v1/bills/1 HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\nx-pad: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let many = format!(
        "GET /v1/bills/1 HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\n{}\r\n",
        (0..101)
            .map(|i| format!("x-f{i}: v\r\n"))
            .collect::<String>()
    );
    for head in [long, many] {
        let mut stream = TcpStream::connect(gw.gateway.addr).await.unwrap();
        // The gateway may answer and close before taking the whole head.
        let _ = stream.write_all(head.as_bytes()).await;
        let answer = read_to_close(&mut stream).await;
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "{} bytes got {answer:?}",
            head.len()
        );
    }
    // Just under the bound is served.
    let fits = format!(
        "GET /v1/bills/1 HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\nconnection: close\r\nx-pad: {}\r\n\r\n",
        "a".repeat(60 * 1024)
    );
    let mut stream = TcpStream::connect(gw.gateway.addr).await.unwrap();
    stream.write_all(fits.as_bytes()).await.unwrap();
    assert!(read_to_close(&mut stream).await.starts_with("HTTP/1.1 200"));
    assert_eq!(biller.biller.stats().received, 1);
}

/// Requests pipelined far past the connection's buffer (2 000 heads, about 120 KiB, in one
/// write) are read one at a time and all answered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_past_the_buffer_are_answered_in_order() {
    let biller = TestBiller::roomy().await;
    let partners = partner("pipe-a", "key-a", r#"inquiry_scheduled = "1000000/s""#, "");
    let gw = TestGateway::start(load(&config_toml(
        &biller.url(),
        "2s",
        "1000000/s",
        &partners,
    )))
    .await;
    let n = 2_000;
    let mut requests = String::new();
    for i in 0..n {
        let close = if i == n - 1 {
            "connection: close\r\n"
        } else {
            ""
        };
        requests += &format!(
            "GET /v1/bills/p{i:05} HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\n{close}\r\n"
        );
    }
    assert!(requests.len() > 64 * 1024);
    let mut stream = TcpStream::connect(gw.gateway.addr).await.unwrap();
    let (mut read, mut write) = stream.split();
    let (written, answers) = tokio::join!(write.write_all(requests.as_bytes()), async {
        read_to_close_half(&mut read).await
    });
    written.unwrap();
    assert_eq!(answers.matches("HTTP/1.1 200").count(), n);
    assert_eq!(answers.matches("HTTP/1.1 ").count(), n);
}

async fn read_to_close_half(read: &mut tokio::net::tcp::ReadHalf<'_>) -> String {
    let mut got = Vec::new();
    let done = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        read.read_to_end(&mut got),
    );
    assert!(matches!(done.await, Ok(Ok(_))), "all answered and closed");
    String::from_utf8_lossy(&got).into_owned()
}
