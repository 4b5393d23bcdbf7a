//! The hand-written biller pool (`proxy::BillerPool`, kept for its CPU per forwarded answer:
//! `benches/results/hyper-std.txt`) answers as hyper-util's pooled client, the crate it stands
//! in for: the same requests to the same stand-in biller, through each, give the same statuses,
//! headers (but `date`) and bodies (but a payment's receipt number), round after round on
//! kept-alive connections.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use billgate::proxy::{BillerPool, Target};
use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn request(
    method: Method,
    path: &str,
    body: &'static str,
    absolute: Option<&str>,
) -> Request<Full<Bytes>> {
    let uri = match absolute {
        Some(base) => format!("{base}{path}"),
        None => path.to_owned(),
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "biller");
    if !body.is_empty() {
        builder = builder.header("content-type", "application/json");
    }
    builder
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_answers_as_hyper_utils_pooled_client() {
    let biller = TestBiller::roomy().await;
    let base = biller.url();
    let address: Arc<str> = Arc::from(biller.addr.to_string());
    let pool = BillerPool::new(Duration::from_secs(30), 8);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let payment = r#"{"account":"100234","amount":"12.50"}"#;
    let cases: Vec<(Method, &str, &'static str)> = vec![
        (Method::GET, "/v1/bills/100234", ""),
        (Method::GET, "/v1/bills/100235?x=1", ""),
        (Method::GET, "/v1/bills/not%20valid", ""),
        (Method::GET, "/nowhere", ""),
        (Method::DELETE, "/v1/payments", ""),
        (Method::POST, "/v1/payments", payment),
        (Method::POST, "/v1/payments", "{not json"),
    ];
    for round in 0..3 {
        for (method, path, body) in &cases {
            let target = Target {
                address: &address,
                connect_timeout: Duration::from_secs(1),
                tls: None,
            };
            let ours = pool
                .send(
                    target,
                    request(method.clone(), path, body, None),
                    tokio::time::Instant::now(),
                )
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: the pool failed: {e}"));
            let theirs = client
                .request(request(method.clone(), path, body, Some(&base)))
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: the client failed: {e}"));
            let at = format!("round {round}, {method} {path}");
            assert_eq!(ours.status(), theirs.status(), "{at}");
            let headers = |h: &http::HeaderMap| {
                let mut v: Vec<(String, String)> = h
                    .iter()
                    .filter(|(n, _)| *n != "date" && *n != "content-length")
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                v.sort();
                v
            };
            assert_eq!(headers(ours.headers()), headers(theirs.headers()), "{at}");
            let ours = ours.into_body().collect().await.unwrap().to_bytes();
            let theirs = theirs.into_body().collect().await.unwrap().to_bytes();
            if *method == Method::POST && ours.starts_with(b"{\"receipt") {
                assert_eq!(
                    ours.len(),
                    theirs.len(),
                    "{at}: receipts differ only in number"
                );
            } else {
                assert_eq!(ours, theirs, "{at}");
            }
        }
    }
}
