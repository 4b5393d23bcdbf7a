//! Beside the load: the brown-out switched on and off on schedule, the biller's counters read at
//! each phase boundary, and its state and the gateway's `/metrics` sampled until the end.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::breaker::BreakerTrace;
use super::StormOptions;
use crate::biller::{BillerStats, StandInBiller};

/// How long one read of `/metrics` may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);

/// The biller's counters at the start of each phase and at the end (five readings).
pub(crate) async fn script(
    biller: StandInBiller,
    options: StormOptions,
    start: Instant,
) -> Vec<BillerStats> {
    let phases = super::Phase::ALL;
    let mut readings = Vec::with_capacity(phases.len() + 1);
    for phase in phases {
        tokio::time::sleep_until(start + options.start_of(phase)).await;
        match phase {
            super::Phase::Brownout => biller.set_brownout(
                options.brownout_latency_factor,
                options.brownout_failure_share,
            ),
            super::Phase::Recovery => biller.clear_brownout(),
            super::Phase::Calm | super::Phase::Storm => {}
        }
        readings.push(biller.stats());
    }
    tokio::time::sleep_until(start + options.total()).await;
    readings.push(biller.stats());
    readings
}

/// What the samples showed.
#[derive(Debug, Default)]
pub(crate) struct Watched {
    /// Seconds into the run at which the biller was first seen down, each time it went down.
    pub down_at: Vec<f64>,
    /// Seconds into the run at which it was first seen up again.
    pub up_at: Vec<f64>,
    pub breaker: BreakerTrace,
}

/// Sample every `every` from `start` until `until`: the biller's `down` flag and, when there is
/// a gateway, its `/metrics` at `admin`.
pub(crate) async fn sample(
    biller: StandInBiller,
    admin: Option<SocketAddr>,
    start: Instant,
    until: Instant,
    every: Duration,
) -> Watched {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut watched = Watched::default();
    let mut down = false;
    let mut ticks = tokio::time::interval_at(start, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let tick = ticks.tick().await;
        if tick > until {
            break;
        }
        let at = Instant::now()
            .saturating_duration_since(start)
            .as_secs_f64();
        let now_down = biller.stats().down;
        if now_down != down {
            if now_down {
                watched.down_at.push(at);
            } else {
                watched.up_at.push(at);
            }
            down = now_down;
        }
        if let Some(admin) = admin {
            if let Some(text) = scrape(&client, admin).await {
                watched.breaker.observe(at, &text);
            }
        }
    }
    watched
}

/// `GET /metrics` on the admin listener; `None` on any failure.
pub(crate) async fn scrape(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    admin: SocketAddr,
) -> Option<String> {
    let uri: http::Uri = format!("http://{admin}/metrics").parse().ok()?;
    let read = async {
        let response = client.get(uri).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, read)
        .await
        .ok()
        .flatten()
}
