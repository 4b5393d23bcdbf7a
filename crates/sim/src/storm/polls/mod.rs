//! The polling figure of the answer cache, measured in-process: three partners poll scheduled
//! inquiries about the same bill accounts at a combined `factor` × the biller's capacity C, and
//! the gateway answers repeats from memory (`cache_for`, `cache_scope = "shared"`). The report
//! sets the calls that reached the stand-in biller against twice the distinct accounts asked
//! about, the latency of cache hits as the partners saw it, and the cache's memory.
//!
//! The load is open-loop: a pacer thread sends every request at its scheduled time whatever the
//! answers (a thread, not a Tokio timer, whose 1 ms granularity would swamp sub-millisecond
//! latencies), and latency runs from that scheduled time. Everything is bounded: the schedule
//! ends, every request has a timeout, at most `max_outstanding` are in flight, latencies go
//! into fixed-size histograms and per-account counts into one array sized by `accounts`.
//!
//! ```no_run
//! # use billgate_sim::{launch::Launch, storm::polls};
//! # async fn demo(gateways: &dyn Launch) -> anyhow::Result<()> {
//! let report = polls::run(polls::PollsOptions::short(), gateways).await?;
//! println!("{report}");
//! # Ok(())
//! # }
//! ```

mod answers;
mod config;
mod load;
mod report;
mod run;
mod table;

use std::time::Duration;

pub use config::{gateway_config, gateway_toml, PARTNERS};
pub use report::{
    calls_bound, AccountCalls, CacheCounts, Counts, Interval, Latency, PartnerCounts, PollsReport,
};
pub use run::run;

/// The three cached figures the issue names.
pub mod figures {
    /// Calls reaching the biller may exceed twice the distinct accounts by this share.
    pub const CALLS_SLACK: f64 = 0.01;
    /// The cache-hit latency p99 must be below this many milliseconds.
    pub const HIT_P99_MS: f64 = 1.0;
    /// The cache's memory must stay below this many bytes (64 MiB).
    pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;
}

/// The share of C the gateway leaves scheduled polls by default (1 less its payment and user
/// reserves of 0.2 each).
const SCHEDULED_SHARE: f64 = 0.6;
/// The breaker's default window, in seconds.
const BREAKER_WINDOW_SECS: f64 = 10.0;

/// How the polls are played. [`PollsOptions::default`] is the issue's form (two minutes,
/// 10 000 accounts), [`PollsOptions::short`] the ten-second one for CI.
#[derive(Debug, Clone, PartialEq)]
pub struct PollsOptions {
    /// The biller's capacity C, requests per second (10–10 000); the gateway's `[biller]
    /// capacity` too. Default 100, so that the partners poll at 5 000/s: about what one
    /// release-built process on two shared cores plays (partners, gateway and biller) without
    /// its own queueing swamping the figures. Short form 20 (1 000/s), which a debug build
    /// under `cargo test` still keeps up with.
    pub capacity_per_sec: u32,
    /// The partners together poll at this many times C (1–1000). Default 50.
    pub factor: u32,
    /// Distinct bill accounts polled, uniformly at random (1–1 000 000). Default 10 000.
    pub accounts: u32,
    /// How long the partners poll (1 s–10 min). Default 120 s.
    pub duration: Duration,
    /// The bill-inquiry route's `cache_for` (1 s–1 h). Default 60 s.
    pub cache_for: Duration,
    /// Seeds the choice of accounts, so a run can be repeated. Default 2014.
    pub seed: u64,
    /// Most requests in flight at once (1–65 536); one due beyond that is counted `unsent`.
    /// Default 1024.
    pub max_outstanding: u32,
    /// How long a partner waits for one answer before counting it failed. Default 5 s.
    pub request_timeout: Duration,
    /// The timeline's step: how often the biller's counters and `/metrics` are read. Default
    /// 10 s (short form 1 s).
    pub step: Duration,
    /// The gateway's `[biller.breaker] min_calls`. Default `None`: a whole ten-second window
    /// of the polls' share of C (0.6 × C × 10), so that the breaker judges the biller on a
    /// window of calls, not on the first twenty of a cold start. With the shipped 20, a process
    /// short of CPU as the polls begin (a debug build on a busy machine, or 10 000 polls/s here)
    /// times the first biller calls as slow and opens the breaker; scheduled polls are never
    /// half-open probes, so with nothing but polls flowing it then never closes, and every
    /// poll is refused to the end (`--breaker-min-calls 20` lets that be seen).
    pub breaker_min_calls: Option<u32>,
}

impl Default for PollsOptions {
    fn default() -> Self {
        PollsOptions {
            capacity_per_sec: 100,
            factor: 50,
            accounts: 10_000,
            duration: Duration::from_secs(120),
            cache_for: Duration::from_secs(60),
            seed: 2014,
            max_outstanding: 1024,
            request_timeout: Duration::from_secs(5),
            step: Duration::from_secs(10),
            breaker_min_calls: None,
        }
    }
}

impl PollsOptions {
    /// The ten-second form: 1 000 accounts, C = 20/s (so 1 000 polls a second), a one-second
    /// timeline.
    pub fn short() -> Self {
        PollsOptions {
            capacity_per_sec: 20,
            accounts: 1_000,
            duration: Duration::from_secs(10),
            step: Duration::from_secs(1),
            ..PollsOptions::default()
        }
    }

    /// The partners' combined rate, requests per second.
    pub fn rate_per_sec(&self) -> f64 {
        f64::from(self.capacity_per_sec) * f64::from(self.factor)
    }

    /// How many requests the schedule holds.
    pub fn requests(&self) -> u64 {
        (self.duration.as_secs_f64() * self.rate_per_sec()).ceil() as u64
    }

    /// The `min_calls` written into the gateway's configuration (see
    /// [`PollsOptions::breaker_min_calls`]).
    pub fn breaker_min_calls(&self) -> u32 {
        self.breaker_min_calls.unwrap_or_else(|| {
            let window = f64::from(self.capacity_per_sec) * SCHEDULED_SHARE * BREAKER_WINDOW_SECS;
            (window.ceil() as u32).max(20)
        })
    }

    /// Refuses options the run cannot play faithfully, naming the option.
    ///
    /// # Errors
    /// The first option out of range.
    pub fn validate(&self) -> anyhow::Result<()> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(anyhow::anyhow!("polls: {what}"))
            }
        };
        let second = Duration::from_secs(1);
        check(
            (10..=10_000).contains(&self.capacity_per_sec),
            "the capacity must be 10/s to 10000/s",
        )?;
        check(
            (1..=1000).contains(&self.factor),
            "the factor must be 1 to 1000",
        )?;
        check(
            self.rate_per_sec() <= 200_000.0,
            "capacity × factor must be at most 200000 requests per second",
        )?;
        check(
            (1..=1_000_000).contains(&self.accounts),
            "the accounts must be 1 to 1000000",
        )?;
        check(
            (second..=Duration::from_secs(600)).contains(&self.duration),
            "the duration must be 1s to 10min",
        )?;
        check(
            (second..=Duration::from_secs(3600)).contains(&self.cache_for),
            "cache_for must be 1s to 1h",
        )?;
        check(
            (1..=65_536).contains(&self.max_outstanding),
            "max_outstanding must be 1 to 65536",
        )?;
        check(
            (Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.request_timeout),
            "the request timeout must be 100ms to 60s",
        )?;
        check(
            self.breaker_min_calls.is_none_or(|n| n >= 1),
            "the breaker's min_calls must be at least 1",
        )?;
        check(
            (Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.step)
                && self.duration.as_secs_f64() / self.step.as_secs_f64() <= 1000.0,
            "the step must be 100ms to 60s and at most 1000 steps long",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_are_valid_and_say_what_the_issue_says() {
        let full = PollsOptions::default();
        assert!(full.validate().is_ok());
        assert_eq!(full.rate_per_sec(), 5_000.0);
        assert_eq!(full.requests(), 600_000);
        assert_eq!(
            (full.accounts, full.cache_for),
            (10_000, Duration::from_secs(60))
        );
        let short = PollsOptions::short();
        assert!(short.validate().is_ok());
        assert_eq!((short.accounts, short.requests()), (1_000, 10_000));
    }

    #[test]
    fn options_out_of_range_are_refused_by_name() {
        let refused = |o: PollsOptions| o.validate().unwrap_err().to_string();
        let o = PollsOptions {
            capacity_per_sec: 5,
            ..PollsOptions::short()
        };
        assert!(refused(o).contains("capacity"));
        let o = PollsOptions {
            accounts: 0,
            ..PollsOptions::short()
        };
        assert!(refused(o).contains("accounts"));
        let o = PollsOptions {
            duration: Duration::from_millis(500),
            ..PollsOptions::short()
        };
        assert!(refused(o).contains("duration"));
        let o = PollsOptions {
            step: Duration::from_millis(100),
            duration: Duration::from_secs(600),
            ..PollsOptions::short()
        };
        assert!(refused(o).contains("step"));
    }
}
