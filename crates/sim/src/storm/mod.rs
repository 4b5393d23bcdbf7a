//! The 2014 polling storm, replayed in-process: a stand-in biller, the gateway in front of it
//! (or not, with `bypass`), and an open-loop load generator playing three partners through four
//! phases, then a report of what reached the biller and what each partner got.
//!
//! The script ([`scenario`]): `wallet` and `bank` send payments and user inquiries at half their
//! quotas throughout; from the `storm` phase the `poller` sends scheduled inquiries about random
//! accounts at 20 × its `inquiry_scheduled` quota; in `brownout` the stand-in's latency triples
//! and 30 % of its calls fail; in `recovery` it is healthy again while the storm goes on.
//!
//! Requests leave on a fixed schedule whatever the answers (open loop); latency is measured from
//! the *scheduled* send time, so a slow system cannot hide its queueing by slowing the sender
//! (coordinated omission). At most `max_outstanding` are in flight; one due beyond that is not
//! sent and is counted `unsent`. Everything is bounded: the phases end, every request has a
//! timeout, latencies go into fixed-size histograms, and the biller's arrival log is a ring.
//!
//! ```no_run
//! # use billgate_sim::{launch::Launch, storm};
//! # async fn demo(gateways: &dyn Launch) -> anyhow::Result<()> {
//! let report = storm::run(storm::StormOptions::short(), gateways).await?;
//! println!("{report}");
//! # Ok(())
//! # }
//! ```

mod breaker;
mod checks;
pub mod fleet;
mod histogram;
pub mod polls;
mod report;
mod run;
pub mod scenario;
mod subscribe;
mod traffic;
mod watch;
pub mod windows;

use std::time::Duration;

use crate::config::BreakerConfig;

pub use breaker::SeenTransition;
pub use fleet::{FleetReport, InstanceReport};
pub use histogram::LatencyHistogram;
pub use report::{
    BillerReport, BreakerReport, Check, LoadReport, PhaseReport, ReplayMode, Status, StormReport,
    StreamReport, SubscribedReport,
};
pub use run::run;
pub use scenario::Phase;

/// How the storm is replayed. [`StormOptions::default`] is the full form (55 s),
/// [`StormOptions::short`] the seconds-long one (8 s).
#[derive(Debug, Clone, PartialEq)]
pub struct StormOptions {
    /// Send the same load straight to the biller, without the gateway. Default false.
    pub bypass: bool,
    /// The biller's capacity C, requests per second (10–10 000). Default 400.
    pub capacity_per_sec: u32,
    /// Phase lengths, each 1 s–10 min, rounded to 100 ms. Defaults 10 s / 20 s / 10 s / 15 s.
    pub calm: Duration,
    pub storm: Duration,
    pub brownout: Duration,
    pub recovery: Duration,
    /// The gateway's `[biller.breaker]`. Default: failure rate 0.2 (below the brown-out's 0.3, so
    /// the brown-out can open it), a 5 s window (short form 1 s), 20 calls, open for 2 s (short
    /// form 500 ms).
    pub breaker: BreakerConfig,
    /// The brown-out: latency × this (1–1000). Default 3.
    pub brownout_latency_factor: f64,
    /// The brown-out: this share (0–1) of the stand-in's calls fail with 500. Default 0.3.
    pub brownout_failure_share: f64,
    /// The poller sends this many times its `inquiry_scheduled` quota (1–100). Default 20.
    pub storm_factor: u32,
    /// Distinct bill accounts the poller asks about. Default 10 000.
    pub poller_accounts: u32,
    /// Seeds the poller's choice of accounts, so a run can be repeated. Default 2014.
    pub seed: u64,
    /// The gateway's `[biller] timeout`. Default 2 s.
    pub biller_timeout: Duration,
    /// The stand-in goes down after overload sustained this long. Default 3 s (short 1 s).
    pub overload_grace: Duration,
    /// And stays down this long. Default 10 s (short 3 s).
    pub down_for: Duration,
    /// Most requests in flight at once (1–65 536); a request due beyond that is counted
    /// `unsent`. Default 1024.
    pub max_outstanding: u32,
    /// How long the generator waits for one answer before counting it failed. Default 5 s.
    pub request_timeout: Duration,
    /// How often the biller's state and the gateway's `/metrics` are sampled. Default 100 ms.
    pub sample_every: Duration,
    /// Gateway instances (1–16), each with the same configuration plus a `[fleet]` table
    /// naming one Redis, the partners' requests dealt to them in turn (see [`fleet`]).
    /// Default 1: one gateway, in no fleet unless `redis` is set.
    pub instances: u32,
    /// The fleet's Redis (`redis://…`). Default `None`: with more than one instance, a
    /// `redis-server` from `PATH` is started for the run and stopped at its end.
    pub redis: Option<String>,
    /// The poller subscribes to its accounts (`[subscriptions]`, a SQLite store in a temp
    /// directory, `refresh = "6h"`) instead of polling them. Default false.
    pub subscribe: bool,
}

impl Default for StormOptions {
    fn default() -> Self {
        StormOptions {
            bypass: false,
            capacity_per_sec: 400,
            calm: Duration::from_secs(10),
            storm: Duration::from_secs(20),
            brownout: Duration::from_secs(10),
            recovery: Duration::from_secs(15),
            breaker: BreakerConfig {
                failure_rate: 0.2,
                window: Duration::from_secs(5),
                min_calls: 20,
                open_for: Duration::from_secs(2),
            },
            brownout_latency_factor: 3.0,
            brownout_failure_share: 0.3,
            storm_factor: 20,
            poller_accounts: 10_000,
            seed: 2014,
            biller_timeout: Duration::from_secs(2),
            overload_grace: Duration::from_secs(3),
            down_for: Duration::from_secs(10),
            max_outstanding: 1024,
            request_timeout: Duration::from_secs(5),
            sample_every: Duration::from_millis(100),
            instances: 1,
            redis: None,
            subscribe: false,
        }
    }
}

impl StormOptions {
    /// The seconds-long form: 2 s per phase, a 1 s breaker window open for 500 ms, and a
    /// stand-in that goes down after 1 s of overload for 3 s.
    pub fn short() -> Self {
        let two = Duration::from_secs(2);
        StormOptions {
            calm: two,
            storm: two,
            brownout: two,
            recovery: two,
            breaker: BreakerConfig {
                window: Duration::from_secs(1),
                open_for: Duration::from_millis(500),
                ..StormOptions::default().breaker
            },
            overload_grace: Duration::from_secs(1),
            down_for: Duration::from_secs(3),
            // Half the load of the full run: the short form runs in CI, in a debug build, on a
            // small machine, and every rate in the scenario is a share of C.
            capacity_per_sec: StormOptions::default().capacity_per_sec / 2,
            ..StormOptions::default()
        }
    }

    /// The length of `phase`, rounded to 100 ms.
    pub fn length(&self, phase: Phase) -> Duration {
        let d = match phase {
            Phase::Calm => self.calm,
            Phase::Storm => self.storm,
            Phase::Brownout => self.brownout,
            Phase::Recovery => self.recovery,
        };
        let bucket = windows::BUCKET_MS as u128;
        let ms = (d.as_millis() + bucket / 2) / bucket * bucket;
        Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// When `phase` starts, from the start of the run.
    pub fn start_of(&self, phase: Phase) -> Duration {
        Phase::ALL[..phase.index()]
            .iter()
            .map(|&p| self.length(p))
            .sum()
    }

    /// Whether the gateways form a fleet: more than one, or a Redis named for one.
    pub fn in_fleet(&self) -> bool {
        !self.bypass && (self.instances > 1 || self.redis.is_some())
    }

    /// The whole run.
    pub fn total(&self) -> Duration {
        Phase::ALL.iter().map(|&p| self.length(p)).sum()
    }

    /// Refuses options the replay cannot run faithfully, naming the option.
    ///
    /// # Errors
    /// The first option out of range.
    pub fn validate(&self) -> anyhow::Result<()> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(anyhow::anyhow!("storm: {what}"))
            }
        };
        let (second, ten_min) = (Duration::from_secs(1), Duration::from_secs(600));
        check(
            (10..=10_000).contains(&self.capacity_per_sec),
            "the capacity must be 10/s to 10000/s",
        )?;
        for phase in Phase::ALL {
            let length = self.length(phase);
            check(
                (second..=ten_min).contains(&length),
                &format!("the {} phase must last 1s to 10min", phase.as_str()),
            )?;
        }
        let b = &self.breaker;
        check(
            b.failure_rate > 0.0 && b.failure_rate <= 1.0,
            "the breaker's failure rate must be above 0 and at most 1",
        )?;
        check(
            b.min_calls >= 1,
            "the breaker's min_calls must be at least 1",
        )?;
        check(
            b.window >= Duration::from_millis(100) && b.open_for >= Duration::from_millis(100),
            "the breaker's window and open_for must be at least 100ms",
        )?;
        check(
            (1.0..=1000.0).contains(&self.brownout_latency_factor)
                && (0.0..=1.0).contains(&self.brownout_failure_share),
            "the brown-out's latency factor must be 1 to 1000 and its failure share 0 to 1",
        )?;
        check(
            (1..=100).contains(&self.storm_factor),
            "the storm factor must be 1 to 100",
        )?;
        check(
            self.poller_accounts >= 1,
            "the poller needs at least one account",
        )?;
        check(
            !(self.subscribe && self.bypass),
            "subscribing needs the gateway: --subscribe and --bypass do not go together",
        )?;
        check(
            !(self.subscribe && self.in_fleet()),
            "--subscribe runs one gateway (a fleet's subscriptions need PostgreSQL)",
        )?;
        check(
            !self.subscribe || self.poller_accounts <= 100_000,
            "the poller subscribes to at most 100000 accounts",
        )?;
        check(
            (1..=65_536).contains(&self.max_outstanding),
            "max_outstanding must be 1 to 65536",
        )?;
        check(
            (Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.request_timeout)
                && (Duration::from_millis(100)..=Duration::from_secs(60))
                    .contains(&self.biller_timeout),
            "the request and biller timeouts must be 100ms to 60s",
        )?;
        check(
            (Duration::from_millis(10)..=second).contains(&self.sample_every),
            "sample_every must be 10ms to 1s",
        )?;
        check(
            (1..=fleet::MAX_INSTANCES).contains(&self.instances),
            &format!("--instances must be 1 to {}", fleet::MAX_INSTANCES),
        )?;
        check(
            !self.bypass || (self.instances == 1 && self.redis.is_none()),
            "--bypass sends the load past every gateway: it takes no --instances or --redis",
        )?;
        match &self.redis {
            Some(url) => {
                fleet::redis::check_url(url).map_err(|e| anyhow::anyhow!("storm: --redis: {e}"))
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_each_other_in_whole_100ms_steps() {
        let options = StormOptions {
            storm: Duration::from_millis(2_049),
            ..StormOptions::short()
        };
        assert_eq!(options.length(Phase::Storm), Duration::from_millis(2_000));
        assert_eq!(options.start_of(Phase::Calm), Duration::ZERO);
        assert_eq!(options.start_of(Phase::Brownout), Duration::from_secs(4));
        assert_eq!(options.total(), Duration::from_secs(8));
        assert_eq!(StormOptions::default().total(), Duration::from_secs(55));
        assert!(StormOptions::default().validate().is_ok());
        assert!(StormOptions::short().validate().is_ok());
    }

    #[test]
    fn options_out_of_range_are_refused_by_name() {
        let refused = |options: StormOptions| options.validate().unwrap_err().to_string();
        let calm = StormOptions {
            calm: Duration::from_millis(900),
            ..StormOptions::short()
        };
        assert!(refused(calm).contains("calm phase"));
        let capacity = StormOptions {
            capacity_per_sec: 5,
            ..StormOptions::short()
        };
        assert!(refused(capacity).contains("capacity"));
        let mut breaker = StormOptions::short();
        breaker.breaker.failure_rate = 0.0;
        assert!(refused(breaker).contains("failure rate"));
    }
}
