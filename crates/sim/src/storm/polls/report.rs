//! What a polls run found, as structured data for tests and `--json`, as the table people read,
//! and judged against the three figures.

use serde::Serialize;
use std::collections::BTreeMap;

use super::figures::{CACHE_BYTES, CALLS_SLACK, HIT_P99_MS};
use super::table::ms;
use crate::storm::{BillerReport, Check, LatencyHistogram, Status};

pub(super) const MIB: f64 = 1024.0 * 1024.0;

/// Requests by what became of them. `sent` counts every request due by the schedule; the rest
/// split those answered (or not) as the partners saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub sent: u64,
    /// Due while `max_outstanding` were in flight, so not sent.
    pub unsent: u64,
    /// 2xx with `x-billgate-cache: hit`.
    pub hit: u64,
    /// 2xx with `x-billgate-cache: miss`: this request's own biller call.
    pub miss: u64,
    /// 2xx with `x-billgate-cache: coalesced`: another request's biller call.
    pub coalesced: u64,
    /// Refused by the gateway: 429, or 503 with its problem type.
    pub rejected: u64,
    /// Any other 5xx, a broken exchange or no answer within the request timeout.
    pub failed: u64,
    /// Any other status (a fault in the scenario if ever non-zero).
    pub other: u64,
}

impl Counts {
    /// Adds every count of `other`.
    pub fn add(&mut self, other: &Counts) {
        self.sent += other.sent;
        self.unsent += other.unsent;
        self.hit += other.hit;
        self.miss += other.miss;
        self.coalesced += other.coalesced;
        self.rejected += other.rejected;
        self.failed += other.failed;
        self.other += other.other;
    }
}

/// One partner's requests.
#[derive(Debug, Clone, Serialize)]
pub struct PartnerCounts {
    pub partner: &'static str,
    pub counts: Counts,
}

/// One step of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    pub from_secs: f64,
    pub to_secs: f64,
    /// Requests scheduled in the step.
    pub counts: Counts,
    /// Calls the biller received during the step.
    pub biller_calls: u64,
    /// `billgate_cache_entries` at the step's end.
    pub cache_entries: Option<u64>,
    /// The inquiry breaker's state at the step's end (`closed`, `open`, `half-open`).
    pub breaker: Option<&'static str>,
}

/// The gateway's cache metrics at the end of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheCounts {
    /// `billgate_cache_requests_total{result="hit"|"miss"|"coalesced"}`.
    pub hits: u64,
    pub misses: u64,
    pub coalesced: u64,
    /// `billgate_cache_evictions_total`.
    pub evictions: u64,
    /// `billgate_cache_entries` and `billgate_cache_bytes`.
    pub entries: u64,
    pub bytes: u64,
}

/// Accounts by how many 2xx answers marked `x-billgate-cache: miss` the partners got about
/// them: answers fetched from the biller and then kept by the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AccountCalls {
    pub never: u64,
    pub once: u64,
    pub twice: u64,
    pub more: u64,
    pub most: u32,
}

impl AccountCalls {
    /// Counts `per_account`.
    pub fn of(per_account: &[u32]) -> Self {
        let mut calls = AccountCalls::default();
        for &n in per_account {
            match n {
                0 => calls.never += 1,
                1 => calls.once += 1,
                2 => calls.twice += 1,
                _ => calls.more += 1,
            }
            calls.most = calls.most.max(n);
        }
        calls
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Latency {
    /// The percentiles of `h`.
    pub fn of(h: &LatencyHistogram) -> Self {
        let ms = |q: f64| h.quantile(q).map(|d| d.as_secs_f64() * 1000.0);
        Latency {
            count: h.len(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: ms(1.0),
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct PollsReport {
    /// The biller's capacity C, and the gateway's `[biller] capacity`.
    pub capacity_per_sec: u32,
    /// The share of C that scheduled polls may use (C less the payment and user reserves).
    pub scheduled_share: f64,
    pub factor: u32,
    /// The partners' combined rate, `factor` × C.
    pub rate_per_sec: f64,
    pub accounts: u32,
    pub duration_secs: f64,
    pub cache_for_secs: f64,
    pub seed: u64,
    /// The gateway's `[biller.breaker] min_calls`.
    pub breaker_min_calls: u32,
    /// Every request, as the partners saw it.
    pub totals: Counts,
    pub partners: Vec<PartnerCounts>,
    /// Refusals by the reason in the gateway's problem type.
    pub rejections: BTreeMap<String, u64>,
    /// From the gateway's `/metrics` once the last answer was in; `None` if it could not be read.
    pub cache: Option<CacheCounts>,
    /// The stand-in biller's counters over the run.
    pub biller: BillerReport,
    /// Distinct accounts the partners asked about.
    pub distinct_accounts: u64,
    /// ⌊2 × distinct accounts × (1 + 1 %)⌋.
    pub biller_calls_bound: u64,
    pub account_calls: AccountCalls,
    /// Cache hits, from the scheduled send time (open loop).
    pub hit_latency: Latency,
    /// Cache hits, from when each request actually left.
    pub hit_service_latency: Latency,
    /// Answers fetched from the biller (miss or coalesced), from the scheduled send time.
    pub fetched_latency: Latency,
    /// Every request: from its scheduled time to when it actually left.
    pub dispatch_lag: Latency,
    /// The process's `VmRSS` before the first request and after the last answer.
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    /// CPUs this process may use, and the machine's one-minute load average before and after
    /// the run: other work on the machine competes for the same CPUs.
    pub cpus: Option<usize>,
    pub load_average_before: Option<f64>,
    pub load_average_after: Option<f64>,
    pub timeline: Vec<Interval>,
    pub checks: Vec<Check>,
}

impl PollsReport {
    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The process's RSS growth over the run, in bytes (negative if it shrank).
    pub fn rss_growth(&self) -> Option<i64> {
        let before = i64::try_from(self.rss_before_bytes?).ok()?;
        let after = i64::try_from(self.rss_after_bytes?).ok()?;
        Some(after - before)
    }

    /// The three figures judged, with the per-account check that shows the cache at
    /// work whatever the budget, and the RSS cross-check.
    pub fn judge(&self) -> Vec<Check> {
        let check = |name: &str, status, measured: String| Check {
            name: name.to_owned(),
            status,
            measured,
        };
        let judged = |pass: bool| if pass { Status::Pass } else { Status::Fail };
        let calls = self.biller.received;
        let windows = (self.duration_secs / self.cache_for_secs).ceil().max(1.0) as u32;
        let budget = self.scheduled_share * f64::from(self.capacity_per_sec) * self.duration_secs;
        let mut list = vec![check(
            "calls reaching the biller ≤ 2 × distinct accounts + 1 %",
            judged(self.distinct_accounts > 0 && calls <= self.biller_calls_bound),
            format!(
                "{calls} calls for {} distinct accounts (bound {}); the budget for scheduled \
                 polls alone would allow ~{budget:.0}{}",
                self.distinct_accounts,
                self.biller_calls_bound,
                if budget <= self.biller_calls_bound as f64 {
                    ", so at this C the budget alone keeps within the bound: the next check \
                     is the cache's own evidence"
                } else {
                    ""
                }
            ),
        )];
        list.push(check(
            &format!("no account's answer fetched more than once per cache_for ({windows} in all)"),
            judged(self.account_calls.most <= windows),
            format!(
                "accounts fetched once {}, twice {}, more {}, never {}",
                self.account_calls.once,
                self.account_calls.twice,
                self.account_calls.more,
                self.account_calls.never
            ),
        ));
        let h = &self.hit_latency;
        list.push(match h.p99_ms {
            None => check(
                "cache-hit latency p99 < 1 ms",
                Status::Fail,
                "no cache hits".to_owned(),
            ),
            Some(p99) => check(
                "cache-hit latency p99 < 1 ms",
                judged(p99 < HIT_P99_MS),
                format!(
                    "p50 {} ms, p99 {} ms, p99.9 {} ms over {} hits (open loop, from the \
                     scheduled send time)",
                    ms(h.p50_ms),
                    ms(h.p99_ms),
                    ms(h.p999_ms),
                    h.count
                ),
            ),
        });
        let name = "memory for the cache < 64 MiB (billgate_cache_bytes)";
        list.push(match &self.cache {
            None => check(name, Status::NotMeasured, "/metrics not read".to_owned()),
            Some(cache) => {
                let each = cache.bytes.checked_div(cache.entries).unwrap_or(0);
                let all = each * u64::from(self.accounts);
                check(
                    name,
                    judged(cache.bytes < CACHE_BYTES),
                    format!(
                        "{:.2} MiB in {} entries, {each} B each (~{:.1} MiB were all {} \
                         accounts cached)",
                        cache.bytes as f64 / MIB,
                        cache.entries,
                        all as f64 / MIB,
                        self.accounts
                    ),
                )
            }
        });
        list.push(match self.rss_growth() {
            None => check(
                "cross-check: process RSS growth",
                Status::NotMeasured,
                "/proc/self/status not readable".to_owned(),
            ),
            Some(growth) => check(
                "cross-check: process RSS growth",
                Status::Info,
                format!(
                    "{:+.1} MiB (biller, gateway and partners in one process)",
                    growth as f64 / MIB
                ),
            ),
        });
        list
    }
}

/// ⌊2 × `distinct` × (1 + 1 %)⌋.
pub fn calls_bound(distinct: u64) -> u64 {
    (2.0 * distinct as f64 * (1.0 + CALLS_SLACK)).floor() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_twice_the_accounts_plus_one_percent() {
        assert_eq!(calls_bound(10_000), 20_200);
        assert_eq!(calls_bound(1_000), 2_020);
        assert_eq!(calls_bound(0), 0);
    }

    #[test]
    fn accounts_are_counted_by_calls() {
        let a = AccountCalls::of(&[0, 1, 2, 2, 5]);
        assert_eq!((a.never, a.once, a.twice, a.more, a.most), (1, 1, 2, 1, 5));
    }
}
