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
