//! A partner sending its payment bodies slowly holds its own connections and nothing of the
//! biller's: no in-flight slot, no breaker probe, no capacity token. Over raw sockets, beside a
//! polite partner whose payments must all pass.

mod common;

use common::*;
use http::StatusCode;
use tokio::io::AsyncWriteExt;
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
