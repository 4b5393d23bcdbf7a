//! What a replay found, as structured data for tests and `--json`, and as the table people read.

use std::fmt;

use serde::Serialize;

use super::breaker::SeenTransition;
use super::fleet::FleetReport;
use super::histogram::LatencyHistogram;
use super::scenario::Phase;
use crate::config::Class;

/// Whether the load went through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayMode {
    Gateway,
    Bypass,
}

/// The whole replay.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub mode: ReplayMode,
    /// The biller's capacity C.
    pub capacity_per_sec: u32,
    pub seed: u64,
    pub brownout_latency_factor: f64,
    pub brownout_failure_share: f64,
    /// One per phase, in order.
    pub phases: Vec<PhaseReport>,
    /// The most requests reaching the biller in any one-second window from the start of the
    /// storm to the end (100 ms steps, windows straddling phases included).
    pub storm_load_max_per_sec: Option<u64>,
    /// The biller's counters over the whole run.
    pub biller: BillerReport,
    /// Seconds into the run at which the biller was seen going down, and coming back up.
    pub biller_down_at: Vec<f64>,
    pub biller_up_at: Vec<f64>,
    /// The inquiry breaker; in a fleet, every instance's as one (see
    /// [`super::fleet::combined_breaker`]).
    pub breaker: BreakerReport,
    /// The gateway instances and the Redis they shared (`--instances`, `--redis`); `None` for
    /// one gateway alone, or none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetReport>,
    /// With `--subscribe`: what the poller did instead of polling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<SubscribedReport>,
    pub checks: Vec<Check>,
}

/// `--subscribe`: the poller's subscriptions, the biller calls the gateway made to learn each
/// new account's bills before the phases began, and the webhooks they brought the poller.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SubscribedReport {
    pub accounts: u32,
    /// Biller calls from the first subscription to the end of onboarding.
    pub onboarding_calls: u64,
    pub onboarding_secs: f64,
    pub webhooks: u64,
}

/// One phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: Phase,
    pub start_secs: f64,
    pub secs: f64,
    /// Requests reaching the biller.
    pub load: LoadReport,
    /// The biller's counters over this phase (read at its boundaries, so an answer straddling
    /// one may be counted in the next).
    pub biller: BillerReport,
    /// One per stream that sends in this phase.
    pub streams: Vec<StreamReport>,
}

/// Requests reaching the biller within one phase.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The most in any one-second window wholly inside the phase, in 100 ms steps.
    pub max_per_sec: Option<u64>,
    pub mean_per_sec: f64,
    /// Consecutive whole seconds from the phase's start.
    pub per_second: Vec<u64>,
}

/// The stand-in biller's counters (see [`crate::biller::BillerStats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BillerReport {
    pub received: u64,
    pub served: u64,
    pub failed_overload: u64,
    pub failed_down: u64,
    pub failed_brownout: u64,
    pub times_down: u64,
}

impl BillerReport {
    /// Every request it failed, whatever the cause.
    pub fn failed(&self) -> u64 {
        self.failed_overload + self.failed_down + self.failed_brownout
    }
}

/// One partner's requests of one class in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub partner: &'static str,
    /// `payment`, `inquiry_user` or `inquiry_scheduled`.
    pub class: &'static str,
    /// Requests due by the schedule (sent or not).
    pub sent: u64,
    /// Passed by the gateway: `ok + failed + other` (all of them when bypassing it).
    pub admitted: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Refused by the gateway without touching the biller: 429, or 503 with its problem type.
    pub rejected: u64,
    /// The biller's 5xx, the gateway's 502/504, or no answer within the request timeout.
    pub failed: u64,
    /// Any other status (a fault in the scenario if ever non-zero).
    pub other: u64,
    /// Due while the outstanding cap was reached, so not sent.
    pub unsent: u64,
    /// `ok / sent`.
    pub success_share: f64,
    /// Of `sent` and `ok`, those due in the phase's first second while the gateway sees the
    /// biller change (brown-out and recovery only; see `scenario::SETTLE`).
    pub settling_sent: u64,
    pub settling_ok: u64,
    /// From the scheduled send time to the whole answer, over every answered request.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    #[serde(skip)]
    pub latency: LatencyHistogram,
}

/// The breaker, as the gateway's `/metrics` showed it, against the failure share the generator
/// saw among calls that reached the biller.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BreakerReport {
    /// Whether the gateway exported any breaker metric (never when bypassing it).
    pub exported: bool,
    /// The settings written into the gateway's configuration.
    pub failure_rate: f64,
    pub window_secs: f64,
    pub min_calls: u32,
    pub open_for_secs: f64,
    pub transitions: Vec<SeenTransition>,
    /// When the failure share over the last `window_secs` first reached `failure_rate` with at
    /// least `min_calls` calls (100 ms resolution).
    pub crossed_at: Option<f64>,
    /// The first transition to open at or after the brown-out began (or the crossing).
    pub opened_at: Option<f64>,
    /// When the recovery phase began.
    pub recovery_at: f64,
    pub state_at_recovery: String,
    /// The first transition to closed at or after `recovery_at`.
    pub closed_at: Option<f64>,
    pub state_at_end: String,
}

/// A figure the issue asks for, measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// The measured value(s), as printed.
    pub measured: String,
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    #[serde(rename = "PASS")]
    Pass,
    #[serde(rename = "FAIL")]
    Fail,
    /// It could not be measured in this run (e.g. the breaker is not exported).
    #[serde(rename = "N/A")]
    NotMeasured,
    /// Shown for comparison, not judged (bypass runs).
    #[serde(rename = "INFO")]
    Info,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::NotMeasured => "N/A ",
            Status::Info => "INFO",
        }
    }
}

impl StormReport {
    /// The report of `phase`.
    pub fn phase(&self, phase: Phase) -> Option<&PhaseReport> {
        self.phases.iter().find(|p| p.phase == phase)
    }

    /// Whether no check failed (checks not measured do not count).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }
}

impl PhaseReport {
    /// `partner`'s requests of `class` in this phase.
    pub fn stream(&self, partner: &str, class: Class) -> Option<&StreamReport> {
        self.streams
            .iter()
            .find(|s| s.partner == partner && s.class == class.as_str())
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

impl fmt::Display for StormReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.capacity_per_sec;
        let how = match self.mode {
            ReplayMode::Gateway => "through the gateway",
            ReplayMode::Bypass => "straight to the biller (--bypass: no gateway)",
        };
        writeln!(f, "billgate storm: the 2014 polling storm replayed {how}")?;
        write!(f, "capacity C = {c}/s, seed {}; phases:", self.seed)?;
        for p in &self.phases {
            write!(
                f,
                " {} {:.1}–{:.1} s",
                p.phase.as_str(),
                p.start_secs,
                p.start_secs + p.secs
            )?;
        }
        writeln!(
            f,
            "\nbrown-out: latency ×{}, {:.0} % of the biller's calls fail",
            self.brownout_latency_factor,
            self.brownout_failure_share * 100.0
        )?;
        if let Some(fleet) = &self.fleet {
            fmt_fleet(f, fleet)?;
        }
        if let Some(subscribed) = self.subscribed {
            writeln!(
                f,
                "--subscribe: the poller subscribed to its {} accounts (refresh 6h) and polled none; {} webhooks reached it",
                subscribed.accounts, subscribed.webhooks
            )?;
            writeln!(
                f,
                "  before the phases: the gateway asked the biller about each new account once, {} calls in {:.1} s ({:.1}/s, its refresh share)",
                subscribed.onboarding_calls,
                subscribed.onboarding_secs,
                subscribed.onboarding_calls as f64 / subscribed.onboarding_secs.max(0.001)
            )?;
        }
        writeln!(f)?;

        writeln!(
            f,
            "load reaching the biller (one-second windows in 100 ms steps)"
        )?;
        writeln!(
            f,
            "  {:<9} {:>6} {:>7} {:>6}  {:>8} {:>7} {:>8} {:>6} {:>8} {:>9}",
            "phase",
            "max/s",
            "mean/s",
            "max/C",
            "received",
            "served",
            "overload",
            "down",
            "brownout",
            "went down"
        )?;
        for p in &self.phases {
            let max = p.load.max_per_sec.map_or("-".to_owned(), |m| m.to_string());
            let ratio = p.load.max_per_sec.map_or("-".to_owned(), |m| {
                format!("{:.2}", m as f64 / f64::from(c))
            });
            let b = &p.biller;
            writeln!(
                f,
                "  {:<9} {:>6} {:>7.1} {:>6}  {:>8} {:>7} {:>8} {:>6} {:>8} {:>9}",
                p.phase.as_str(),
                max,
                p.load.mean_per_sec,
                ratio,
                b.received,
                b.served,
                b.failed_overload,
                b.failed_down,
                b.failed_brownout,
                b.times_down
            )?;
        }

        writeln!(
            f,
            "\nrequests by partner (sent = due by the schedule; admitted = passed the gateway; \
             rejected = 429/503 from the gateway;\n  failed = 5xx/502/504/timeout after \
             admission; latency from the scheduled send time, answered requests)"
        )?;
        writeln!(
            f,
            "  {:<9} {:<7} {:<18} {:>6} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8}",
            "phase",
            "partner",
            "class",
            "sent",
            "admitted",
            "rejected",
            "failed",
            "success",
            "p50 ms",
            "p99 ms"
        )?;
        let mut unsent = 0;
        let mut other = 0;
        for p in &self.phases {
            for s in &p.streams {
                unsent += s.unsent;
                other += s.other;
                writeln!(
                    f,
                    "  {:<9} {:<7} {:<18} {:>6} {:>8} {:>8} {:>6} {:>7.2}% {:>8} {:>8}",
                    p.phase.as_str(),
                    s.partner,
                    s.class,
                    s.sent,
                    s.admitted,
                    s.rejected,
                    s.failed,
                    s.success_share * 100.0,
                    ms(s.p50_ms),
                    ms(s.p99_ms)
                )?;
            }
        }
        if unsent > 0 {
            writeln!(f, "  {unsent} requests were due while the outstanding cap was reached and were not sent")?;
        }
        if other > 0 {
            writeln!(
                f,
                "  {other} answers had an unexpected status (not 2xx, 429 or 5xx)"
            )?;
        }

        let b = &self.biller;
        write!(
            f,
            "\nbiller: received {}, served {}, failed {} (overload {}, down {}, brown-out {}), went down {} time(s)",
            b.received, b.served, b.failed(), b.failed_overload, b.failed_down, b.failed_brownout,
            b.times_down
        )?;
        for (i, down) in self.biller_down_at.iter().enumerate() {
            match self.biller_up_at.get(i) {
                Some(up) => write!(f, "; down +{down:.1} s to +{up:.1} s")?,
                None => write!(f, "; down from +{down:.1} s")?,
            }
        }
        writeln!(f)?;
        self.fmt_breaker(f)?;

        writeln!(f, "\nchecks")?;
        for check in &self.checks {
            writeln!(
                f,
                "  {}  {}: {}",
                check.status.as_str(),
                check.name,
                check.measured
            )?;
        }
        Ok(())
    }
}

/// The one line naming the fleet: its instances, its Redis, how the load was dealt, and whether
/// they saw each other and Redis throughout.
fn fmt_fleet(f: &mut fmt::Formatter<'_>, fleet: &FleetReport) -> fmt::Result {
    let names: Vec<&str> = fleet
        .instances
        .iter()
        .map(|i| i.instance.as_str())
        .collect();
    let alive = |pick: fn(&super::fleet::InstanceReport) -> Option<u32>| {
        fleet.instances.iter().filter_map(pick).collect::<Vec<_>>()
    };
    let (least, most) = (alive(|i| i.alive_min), alive(|i| i.alive_max));
    writeln!(
        f,
        "fleet: {} gateway instances ({}) sharing Redis {} ({}; keys {}), {}; Redis answered in {:.1} % of their /metrics samples, instances counted alive {}–{}",
        names.len(),
        names.join(", "),
        fleet.redis,
        if fleet.redis_started {
            "a redis-server started for this run"
        } else {
            "--redis"
        },
        fleet.keys,
        fleet.split,
        fleet.redis_up_share() * 100.0,
        least.iter().min().map_or("?".to_owned(), u32::to_string),
        most.iter().max().map_or("?".to_owned(), u32::to_string),
    )
}

impl StormReport {
    fn fmt_breaker(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let br = &self.breaker;
        match self.mode {
            ReplayMode::Bypass => return writeln!(f, "breaker: none (no gateway)"),
            ReplayMode::Gateway if !br.exported => writeln!(f, "breaker: not exported")?,
            ReplayMode::Gateway => {
                let whose = if self.fleet.is_some() {
                    "each instance's /metrics; the fleet's opening and closing are its slowest \
                     instance's"
                } else {
                    "/metrics"
                };
                writeln!(
                    f,
                    "breaker (failure_rate {}, window {} s, min_calls {}, open_for {} s), from {whose}:",
                    br.failure_rate, br.window_secs, br.min_calls, br.open_for_secs
                )?;
                if br.transitions.is_empty() {
                    writeln!(f, "  no transitions")?;
                }
                for t in &br.transitions {
                    let on = t
                        .instance
                        .as_ref()
                        .map_or(String::new(), |i| format!("{i}: "));
                    writeln!(f, "  +{:.1} s  {on}{} → {}", t.at_secs, t.from, t.to)?;
                }
            }
        }
        match br.crossed_at {
            Some(at) => write!(
                f,
                "  failure share of calls reaching the biller crossed {} at +{at:.1} s",
                br.failure_rate
            )?,
            None => write!(
                f,
                "  failure share of calls reaching the biller never crossed {}",
                br.failure_rate
            )?,
        }
        if !br.exported {
            return writeln!(f);
        }
        match (br.crossed_at, br.opened_at) {
            (Some(c), Some(o)) => writeln!(f, "; opened {:+.1} s after", o - c)?,
            (_, Some(o)) => writeln!(f, "; opened at +{o:.1} s")?,
            (_, None) => writeln!(f, "; never opened")?,
        }
        write!(
            f,
            "  recovery began at +{:.1} s with the breaker {}",
            br.recovery_at, br.state_at_recovery
        )?;
        match br.closed_at {
            Some(at) => writeln!(f, "; closed {:.1} s later", at - br.recovery_at)?,
            None => writeln!(f, "; {} at the end", br.state_at_end)?,
        }
        Ok(())
    }
}
