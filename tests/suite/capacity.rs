//! The biller's `capacity` is a ceiling over every one-second window, the first after start
//! included: partners flooding the gateway from its first instant get no more through to the
//! stand-in biller, in any second, than the capacity.

use crate::common;

use std::time::Duration;

use billgate::clock::Clock;
use billgate::gateway::{self, Gateway};
use billgate_sim::biller::{BillerOptions, StandInBiller};
use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

const CAPACITY: u64 = 60;
const QUOTA: &str =
    r#"payment = "100000/s", inquiry_user = "100000/s", inquiry_scheduled = "100000/s""#;

#[tokio::test]
async fn partners_flooding_from_the_start_get_at_most_the_capacity_through_in_any_second() {
    // The gateway and the biller read one fake clock: the biller files each arrival in the
    // 100 ms bucket of the instant the gateway decided it at.
    let (clock, hand) = Clock::fake();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let biller_addr = listener.local_addr().unwrap();
    let biller = StandInBiller::new(
        BillerOptions {
            capacity_per_sec: 100_000.0,
            base_latency: Duration::from_millis(1),
            ..BillerOptions::default()
        },
        clock.clone(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(biller.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    let partners = partner("wallet-a", "key-a", QUOTA, "") + &partner("bank-b", "key-b", QUOTA, "");
    let config = load(&config_toml(
        &format!("http://{biller_addr}"),
        "2s",
        &format!("{CAPACITY}/s"),
        &partners,
    ));
    let options = gateway::Options {
        clock,
        ..gateway::Options::default()
    };
    let gw = Gateway::start(config, options).await.unwrap();

    // Every 10 ms for 3 s, each partner sends a payment, a user inquiry and a poll at once:
    // 600 requests a second against a capacity of 60.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut statuses = [0u64; 2];
    for step in 0..300u32 {
        let mut sent = tokio::task::JoinSet::new();
        for key in ["key-a", "key-b"] {
            for (n, (method, path, origin)) in [
                (Method::POST, "/v1/payments".to_owned(), "scheduled"),
                (Method::GET, format!("/v1/bills/u{step}"), "user"),
                (Method::GET, format!("/v1/bills/s{step}"), "scheduled"),
            ]
            .into_iter()
            .enumerate()
            {
                let request = Request::builder()
                    .method(method)
                    .uri(format!("http://{}{path}", gw.addr))
                    .header("x-api-key", key)
                    .header("x-request-origin", origin)
                    .header("content-type", "application/json")
                    .body(Full::new(if n == 0 {
                        Bytes::from(PAYMENT)
                    } else {
                        Bytes::new()
                    }))
                    .unwrap();
                let client = client.clone();
                sent.spawn(async move {
                    let response = client.request(request).await.expect("an answer");
                    let status = response.status();
                    let _ = response.into_body().collect().await;
                    status
                });
            }
        }
        while let Some(status) = sent.join_next().await {
            match status.unwrap() {
                s if s.is_success() => statuses[0] += 1,
                StatusCode::SERVICE_UNAVAILABLE => statuses[1] += 1,
                other => panic!("unexpected {other}"),
            }
        }
        hand.advance(Duration::from_millis(10));
    }

    let arrivals = biller.arrivals();
    assert_eq!(arrivals.bucket, Duration::from_millis(100));
    let counts = arrivals.range(0, 30);
    let windows: Vec<u64> = (0..=20).map(|b| counts[b..b + 10].iter().sum()).collect();
    let busiest = windows.iter().copied().max().unwrap_or(0);
    assert!(
        busiest <= CAPACITY,
        "{busiest} calls reached the biller in one second; per 100 ms: {counts:?}"
    );
    // The capacity is used, not wasted: a whole capacity in each of the three seconds.
    assert_eq!(counts.iter().sum::<u64>(), 3 * CAPACITY, "{counts:?}");
    assert_eq!(statuses, [3 * CAPACITY, 1800 - 3 * CAPACITY]);
    assert_eq!(biller.stats().received, 3 * CAPACITY);
    let _ = stop.send(());
    gw.shutdown().await;
}
