//! A webhook receiver for the tests: a real HTTP server on a loopback port that records what
//! it is sent and answers as told.
#![allow(dead_code)]

use bytes::Bytes;

/// A webhook receiver: records what it is sent, answers `fail_first` requests 500 and the
/// rest 204 (or never answers, with `stall`).
pub struct Receiver {
    pub addr: std::net::SocketAddr,
    got: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Received>>,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Requests still to be answered 500: set it to change how the receiver answers.
    pub failures: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug)]
pub struct Received {
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub body: Bytes,
    /// What the receiver answered (0: nothing, a stalled receiver).
    pub status: u16,
}

impl Receiver {
    pub async fn start(fail_first: usize, stall: bool) -> Receiver {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let failures = Arc::new(AtomicUsize::new(fail_first));
        let failing = Arc::clone(&failures);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                let failures = Arc::clone(&failing);
                tokio::spawn(async move {
                    if stall {
                        // Says it has the connection, then holds it: reads nothing, answers
                        // nothing.
                        let _ = tx.send(Received {
                            id: String::new(),
                            timestamp: 0,
                            signature: String::new(),
                            body: Bytes::new(),
                            status: 0,
                        });
                        let _held = &stream;
                        std::future::pending::<()>().await;
                    }
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let tx = tx.clone();
                            let failures = Arc::clone(&failures);
                            async move {
                                use http_body_util::BodyExt;
                                let header = |name: &str| {
                                    request
                                        .headers()
                                        .get(name)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or_default()
                                        .to_owned()
                                };
                                let (id, timestamp, signature) = (
                                    header("webhook-id"),
                                    header("webhook-timestamp"),
                                    header("webhook-signature"),
                                );
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let fail = failures
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                        n.checked_sub(1)
                                    })
                                    .is_ok();
                                let status = if fail { 500 } else { 204 };
                                let _ = tx.send(Received {
                                    id,
                                    timestamp: timestamp.parse().unwrap_or(0),
                                    signature,
                                    body,
                                    status,
                                });
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(status)
                                        .body(http_body_util::Full::new(Bytes::new()))
                                        .expect("response"),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            got: tokio::sync::Mutex::new(rx),
            accepted,
            failures,
        }
    }

    pub fn prefix(&self) -> String {
        format!("http://{}/hooks/", self.addr)
    }

    /// The next webhook, waiting at most 20 s for it.
    pub async fn next(&self) -> Received {
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            self.got.lock().await.recv(),
        )
        .await
        .expect("a webhook within 20 s")
        .expect("the receiver runs")
    }
}
