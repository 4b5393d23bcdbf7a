//! The storm through a fleet (`--instances N`): N gateways with the storm's configuration plus
//! a `[fleet]` table naming one Redis (see [`redis`]), each stream's requests dealt to them in
//! turn, and what each instance's `/metrics` showed of its fleet and its breaker.
//!
//! Requests are dealt round-robin *per request* (the k-th request of a stream goes to instance
//! k mod N), as a load balancer in front of a fleet does: every instance sees every partner and
//! every class, so every quota and the biller's capacity must be shared through Redis. Dealing
//! per partner connection would pin each partner to one instance, and the fleet would have
//! little to share.

pub(crate) mod redis;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::time::Instant;

use super::breaker::samples;
use super::report::BreakerReport;
use super::watch::scrape;

pub use self::redis::redacted;

/// The most instances a storm starts.
pub const MAX_INSTANCES: u32 = 16;

/// The keys the gateways write in the fleet's Redis. The gateway's fleet names no prefix of
/// its own (`src/fleet/mod.rs` opens every link with `fleet`), so runs sharing one Redis share
/// these keys: a run never flushes them.
pub const KEYS: &str = "billgate:fleet:*";

/// How the load is spread over the instances, as the report says it.
pub const SPLIT: &str = "round-robin per request";

/// How long the instances have to see each other and Redis before the load starts.
const FORM_WITHIN: Duration = Duration::from_secs(10);

/// The name of the `i`-th instance (from 0): `gw-1`, `gw-2`, …
pub fn instance_name(i: usize) -> String {
    format!("gw-{}", i + 1)
}

/// The fleet of one run.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// The Redis the instances shared, password redacted.
    pub redis: String,
    /// Whether a `redis-server` was started for the run (else `--redis` named it).
    pub redis_started: bool,
    /// The keys the fleet used there (see [`KEYS`]).
    pub keys: &'static str,
    /// How the load was spread (see [`SPLIT`]).
    pub split: &'static str,
    pub instances: Vec<InstanceReport>,
}

/// One instance, as its `/metrics` showed it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceReport {
    pub instance: String,
    /// Samples of its `/metrics` read, and those in which Redis answered
    /// (`billgate_fleet_redis_up` 1).
    pub samples: u64,
    pub redis_up_samples: u64,
    /// The fewest and most instances it counted alive (`billgate_fleet_instances`).
    pub alive_min: Option<u32>,
    pub alive_max: Option<u32>,
    /// Its lease refills by result at the last sample (`billgate_fleet_lease_refills_total`).
    pub refills_granted: u64,
    pub refills_empty: u64,
    pub refills_error: u64,
    /// Times it lost Redis and fell back to its shares (`billgate_fleet_fallbacks_total`).
    pub fallbacks: u64,
    /// Its inquiry breaker: each instance runs its own.
    pub breaker: BreakerReport,
}

impl FleetReport {
    /// Samples in which Redis answered, over all instances, as a share.
    pub fn redis_up_share(&self) -> f64 {
        let (up, all) = self.instances.iter().fold((0, 0), |(up, all), i| {
            (up + i.redis_up_samples, all + i.samples)
        });
        if all == 0 {
            0.0
        } else {
            up as f64 / all as f64
        }
    }
}

/// What the samples of one instance's `/metrics` showed of its fleet.
#[derive(Debug, Clone, Default)]
pub(crate) struct FleetSeen {
    pub samples: u64,
    pub redis_up: u64,
    pub alive_min: Option<u32>,
    pub alive_max: Option<u32>,
    /// granted, empty, error.
    pub refills: [u64; 3],
    pub fallbacks: u64,
}

impl FleetSeen {
    /// Read one `/metrics` text; a text without fleet metrics (a gateway alone) is skipped.
    pub fn observe(&mut self, text: &str) {
        let (alive, up) = gauges(text);
        let Some(up) = up else { return };
        self.samples += 1;
        self.redis_up += u64::from(up);
        if let Some(alive) = alive {
            self.alive_min = Some(self.alive_min.map_or(alive, |m| m.min(alive)));
            self.alive_max = Some(self.alive_max.map_or(alive, |m| m.max(alive)));
        }
        for (labels, value) in samples(text, "billgate_fleet_lease_refills_total") {
            let slot = match super::breaker::label(labels, "result") {
                Some("granted") => 0,
                Some("empty") => 1,
                Some("error") => 2,
                _ => continue,
            };
            self.refills[slot] = value.max(0.0) as u64;
        }
        if let Some((_, value)) = samples(text, "billgate_fleet_fallbacks_total").next() {
            self.fallbacks = value.max(0.0) as u64;
        }
    }

    pub fn report(&self, instance: String, breaker: BreakerReport) -> InstanceReport {
        InstanceReport {
            instance,
            samples: self.samples,
            redis_up_samples: self.redis_up,
            alive_min: self.alive_min,
            alive_max: self.alive_max,
            refills_granted: self.refills[0],
            refills_empty: self.refills[1],
            refills_error: self.refills[2],
            fallbacks: self.fallbacks,
            breaker,
        }
    }
}

/// `billgate_fleet_instances` and `billgate_fleet_redis_up` in one `/metrics` text.
fn gauges(text: &str) -> (Option<u32>, Option<bool>) {
    let alive = samples(text, "billgate_fleet_instances")
        .next()
        .map(|(_, v)| v.max(0.0) as u32);
    let up = samples(text, "billgate_fleet_redis_up")
        .next()
        .map(|(_, v)| v >= 1.0);
    (alive, up)
}

/// Waits until every instance counts all `admins.len()` alive and hears Redis, so the load
/// meets a formed fleet.
///
/// # Errors
/// Not formed within [`FORM_WITHIN`]: what each instance last said.
pub(crate) async fn formed(admins: &[SocketAddr], redis: &str) -> anyhow::Result<()> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let n = u32::try_from(admins.len()).unwrap_or(u32::MAX);
    let deadline = Instant::now() + FORM_WITHIN;
    loop {
        let mut said = Vec::with_capacity(admins.len());
        for admin in admins {
            let text = scrape(&client, *admin).await.unwrap_or_default();
            said.push(gauges(&text));
        }
        if said
            .iter()
            .all(|&(alive, up)| alive == Some(n) && up == Some(true))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            let told: Vec<String> = said
                .iter()
                .enumerate()
                .map(|(i, (alive, up))| {
                    format!(
                        "{} counts {} alive, Redis {}",
                        instance_name(i),
                        alive.map_or("?".to_owned(), |a| a.to_string()),
                        match up {
                            Some(true) => "up",
                            Some(false) => "down",
                            None => "unknown",
                        }
                    )
                })
                .collect();
            anyhow::bail!(
                "storm: the fleet did not form within {FORM_WITHIN:?} on {}: {}",
                redacted(redis),
                told.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fleet's breakers as one, judged by the slowest: it opened when the last instance
/// opened (never, if one never did), was open at recovery if any instance was, and closed
/// when the last instance open at recovery closed.
pub(crate) fn combined_breaker(instances: &[InstanceReport]) -> BreakerReport {
    let Some(first) = instances.first() else {
        return BreakerReport::default();
    };
    let all: Vec<&BreakerReport> = instances.iter().map(|i| &i.breaker).collect();
    let worst = |state: fn(&BreakerReport) -> &str| {
        all.iter()
            .map(|b| state(b))
            .find(|s| *s != "closed")
            .unwrap_or("closed")
            .to_owned()
    };
    let mut transitions: Vec<_> = instances
        .iter()
        .flat_map(|i| {
            i.breaker.transitions.iter().map(|t| {
                let mut t = t.clone();
                t.instance = Some(i.instance.clone());
                t
            })
        })
        .collect();
    transitions.sort_by(|a, b| a.at_secs.total_cmp(&b.at_secs));
    BreakerReport {
        exported: all.iter().all(|b| b.exported),
        transitions,
        opened_at: latest(all.iter().map(|b| b.opened_at)),
        state_at_recovery: worst(|b| &b.state_at_recovery),
        closed_at: latest(
            all.iter()
                .filter(|b| b.state_at_recovery != "closed")
                .map(|b| b.closed_at),
        ),
        state_at_end: worst(|b| &b.state_at_end),
        ..first.breaker.clone()
    }
}

/// The latest of `times`: `None` if there are none, or if any is `None`.
fn latest(times: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let mut max: Option<f64> = None;
    for t in times {
        let t = t?;
        max = Some(max.map_or(t, |m| m.max(t)));
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storm::SeenTransition;

    fn instance(
        name: &str,
        opened: Option<f64>,
        at_recovery: &str,
        closed: Option<f64>,
    ) -> InstanceReport {
        let mut transitions = Vec::new();
        if let Some(at) = opened {
            transitions.push(SeenTransition {
                at_secs: at,
                from: "closed".into(),
                to: "open".into(),
                instance: None,
            });
        }
        FleetSeen::default().report(
            name.into(),
            BreakerReport {
                exported: true,
                transitions,
                crossed_at: Some(4.9),
                opened_at: opened,
                recovery_at: 6.0,
                state_at_recovery: at_recovery.into(),
                closed_at: closed,
                state_at_end: "closed".into(),
                ..BreakerReport::default()
            },
        )
    }

    #[test]
    fn the_fleets_breaker_is_its_slowest_instance() {
        let both = [
            instance("gw-1", Some(4.8), "closed", None),
            instance("gw-2", Some(5.2), "open", Some(6.9)),
        ];
        let b = combined_breaker(&both);
        assert_eq!(b.opened_at, Some(5.2));
        assert_eq!(b.state_at_recovery, "open");
        assert_eq!(b.closed_at, Some(6.9), "only gw-2 had to close");
        assert_eq!(b.crossed_at, Some(4.9));
        let names: Vec<_> = b
            .transitions
            .iter()
            .map(|t| t.instance.as_deref())
            .collect();
        assert_eq!(names, [Some("gw-1"), Some("gw-2")]);

        let one_never_opens = [
            instance("gw-1", Some(4.8), "open", Some(6.5)),
            instance("gw-2", None, "closed", None),
        ];
        let b = combined_breaker(&one_never_opens);
        assert_eq!(b.opened_at, None);
        assert_eq!(b.closed_at, Some(6.5));
        let one_never_closes = [
            instance("gw-1", Some(4.8), "open", Some(6.5)),
            instance("gw-2", Some(4.9), "half-open", None),
        ];
        assert_eq!(combined_breaker(&one_never_closes).closed_at, None);
    }

    #[test]
    fn fleet_metrics_are_read_from_each_sample() {
        let mut seen = FleetSeen::default();
        seen.observe("billgate_requests_total 3\n");
        assert_eq!(seen.samples, 0, "a gateway alone shows no fleet");
        seen.observe(
            "billgate_fleet_instances 2\nbillgate_fleet_redis_up 1\n\
             billgate_fleet_lease_refills_total{result=\"granted\"} 7\n\
             billgate_fleet_lease_refills_total{result=\"error\"} 1\n\
             billgate_fleet_fallbacks_total 1\n",
        );
        seen.observe("billgate_fleet_instances 1\nbillgate_fleet_redis_up 0\n");
        assert_eq!((seen.samples, seen.redis_up), (2, 1));
        assert_eq!((seen.alive_min, seen.alive_max), (Some(1), Some(2)));
        assert_eq!((seen.refills, seen.fallbacks), ([7, 0, 1], 1));
    }
}
