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
use super::fleet::FleetSeen;
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
    /// Each gateway's breaker and fleet, in the order of the admin addresses.
    pub gateways: Vec<(BreakerTrace, FleetSeen)>,
}

/// Sample every `every` from `start` until `until`: the biller's `down` flag and the `/metrics`
/// of each gateway at `admins` (none when bypassing the gateway).
pub(crate) async fn sample(
    biller: StandInBiller,
    admins: Vec<SocketAddr>,
    start: Instant,
    until: Instant,
    every: Duration,
) -> Watched {
    // Each gateway is read by a task of its own, so a slow one cannot delay the others' samples.
    let gateways: Vec<_> = admins
        .into_iter()
        .map(|admin| tokio::spawn(gateway(admin, start, until, every)))
        .collect();
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
    }
    for task in gateways {
        watched.gateways.push(task.await.unwrap_or_default());
    }
    watched
}

/// One gateway's `/metrics` at `admin`, every `every` from `start` until `until`.
async fn gateway(
    admin: SocketAddr,
    start: Instant,
    until: Instant,
    every: Duration,
) -> (BreakerTrace, FleetSeen) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let (mut breaker, mut fleet) = (BreakerTrace::default(), FleetSeen::default());
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
        if let Some(text) = scrape(&client, admin).await {
            breaker.observe(at, &text);
            fleet.observe(&text);
        }
    }
    (breaker, fleet)
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
