//! The hand-written head timeout (`proxy::heads`, kept for its CPU per refusal:
//! `benches/results/hyper-std.txt`) behaves as hyper's `header_read_timeout`, the setting it
//! stands in for: a head dribbled a line at a time and a connection left idle are both closed
//! without an answer by each, and a whole request on a fresh connection is answered by each.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A plain hyper server with `header_read_timeout` at the gateway's 10 s.
async fn hyper_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|_request| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                    Bytes::from_static(b"ok"),
                )))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// What the server at `addr` does with `opening` followed by one more header line every two
/// seconds: `Some(bytes)` once it closes (what it answered), `None` if it is still open after
/// 40 s.
async fn dribble(
    addr: std::net::SocketAddr,
    opening: &'static [u8],
    lines: bool,
) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(opening).await.unwrap();
    let mut answer = Vec::new();
    for n in 0..20 {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(answer),
            Ok(Ok(read)) => answer.extend_from_slice(&buf[..read]),
            Err(_) if lines => {
                let line = format!("x-slow-{n}: 1\r\n");
                if stream.write_all(line.as_bytes()).await.is_err() {
                    return Some(answer);
                }
            }
            Err(_) => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_sweep_cuts_what_hypers_header_timeout_cuts() {
    let biller = TestBiller::roomy().await;
    let gw = TestGateway::start(config(
        &biller.url(),
        &partner("wallet-a", "key-a", r#"inquiry_scheduled = "10/s""#, ""),
    ))
    .await;
    let hyper = hyper_server().await;
    let ours = gw.gateway.addr;
    let slow: &'static [u8] = b"GET /v1/bills/1 HTTP/1.1\r\nhost: gw\r\n";
    let (ours_slow, theirs_slow, ours_idle, theirs_idle) = tokio::join!(
        dribble(ours, slow, true),
        dribble(hyper, slow, true),
        dribble(ours, b"", false),
        dribble(hyper, b"", false),
    );
    assert_eq!(ours_slow, Some(Vec::new()), "a dribbled head, billgate");
    assert_eq!(theirs_slow, Some(Vec::new()), "a dribbled head, hyper");
    assert_eq!(ours_idle, Some(Vec::new()), "an idle connection, billgate");
    assert_eq!(theirs_idle, Some(Vec::new()), "an idle connection, hyper");
    // A whole request is answered by both.
    let whole: &'static [u8] =
        b"GET /v1/bills/1 HTTP/1.1\r\nhost: gw\r\nx-api-key: key-a\r\nconnection: close\r\n\r\n";
    for addr in [ours, hyper] {
        let answered = dribble(addr, whole, false).await.unwrap_or_default();
        assert!(
            answered.starts_with(b"HTTP/1.1 200"),
            "{addr}: {}",
            String::from_utf8_lossy(&answered)
        );
    }
}
