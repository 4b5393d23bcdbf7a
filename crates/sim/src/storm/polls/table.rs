//! A polls report as the table people read.

use std::fmt;

use super::report::{Counts, PollsReport, MIB};
use crate::storm::Status;

/// What a refusal reason means, for the table.
fn gloss(reason: &str) -> &'static str {
    match reason {
        "biller_capacity" => "the biller's budget for polls was spent",
        "biller_strained" => "the shedder: over 3 % of biller calls slow or failing",
        "biller_busy" => "the in-flight cap to the biller was reached",
        "breaker_open" => "the breaker was open (or half-open: polls never probe)",
        "partner_quota" => "a partner's quota (should not bind here)",
        _ => "",
    }
}

/// Milliseconds to the microsecond, or `-`.
pub(super) fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_owned()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

fn row(f: &mut fmt::Formatter<'_>, label: &str, c: &Counts, tail: &str) -> fmt::Result {
    writeln!(
        f,
        "  {label:<11} {:>8} {:>8} {:>6} {:>6} {:>8} {:>6} {:>6}{tail}",
        c.sent, c.hit, c.miss, c.coalesced, c.rejected, c.failed, c.unsent
    )
}

impl fmt::Display for PollsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.capacity_per_sec;
        writeln!(
            f,
            "billgate polls: 3 partners poll {} accounts at {} × the biller's capacity through \
             the answer cache",
            self.accounts, self.factor
        )?;
        writeln!(
            f,
            "capacity C = {c}/s (scheduled polls may use {:.0}/s of it); the partners poll \
             {:.0}/s together for {:.0} s, open loop;\ncache_for {:.0} s, cache_scope shared; \
             accounts uniformly random, seed {}; breaker min_calls {}\n",
            self.scheduled_share * f64::from(c),
            self.rate_per_sec,
            self.duration_secs,
            self.cache_for_secs,
            self.seed,
            self.breaker_min_calls
        )?;
        writeln!(
            f,
            "timeline (requests by scheduled send time; biller calls during the step; cache \
             entries at its end)"
        )?;
        writeln!(
            f,
            "  {:<11} {:>8} {:>8} {:>6} {:>6} {:>8} {:>6} {:>6} {:>7} {:>8}  breaker",
            "seconds",
            "sent",
            "hit",
            "miss",
            "coal.",
            "rejected",
            "failed",
            "unsent",
            "biller",
            "entries"
        )?;
        for i in &self.timeline {
            let label = format!("{:.0}–{:.0}", i.from_secs, i.to_secs);
            let entries = i.cache_entries.map_or("-".to_owned(), |e| e.to_string());
            row(
                f,
                &label,
                &i.counts,
                &format!(
                    " {:>7} {:>8}  {}",
                    i.biller_calls,
                    entries,
                    i.breaker.unwrap_or("-")
                ),
            )?;
        }
        writeln!(f, "\nrequests by partner")?;
        writeln!(
            f,
            "  {:<11} {:>8} {:>8} {:>6} {:>6} {:>8} {:>6} {:>6} {:>9}",
            "partner", "sent", "hit", "miss", "coal.", "rejected", "failed", "unsent", "hit share"
        )?;
        for p in &self.partners {
            let share = format!(" {:>9}", pct(p.counts.hit, p.counts.sent));
            row(f, p.partner, &p.counts, &share)?;
        }
        let t = &self.totals;
        row(f, "all", t, &format!(" {:>9}", pct(t.hit, t.sent)))?;
        if t.other > 0 {
            writeln!(f, "  {} answers had an unexpected status", t.other)?;
        }

        writeln!(
            f,
            "\nrejected by the gateway: {} ({} of sent); every one was a lookup that missed",
            t.rejected,
            pct(t.rejected, t.sent)
        )?;
        for (reason, n) in &self.rejections {
            writeln!(
                f,
                "  {reason:<16} {n:>8} {:>7}  {}",
                pct(*n, t.sent),
                gloss(reason)
            )?;
        }
        writeln!(
            f,
            "  at first every account misses, and the biller's budget fills the cache at most \
             {:.0} accounts a second;\n  a refused poll is not retried by the gateway: the \
             account's next poll asks again",
            self.scheduled_share * f64::from(c)
        )?;
        match &self.cache {
            Some(k) => writeln!(
                f,
                "cache (gateway /metrics at the end): hits {}, misses {}, coalesced {}, \
                 evictions {}; {} entries, {:.2} MiB",
                k.hits,
                k.misses,
                k.coalesced,
                k.evictions,
                k.entries,
                k.bytes as f64 / MIB
            )?,
            None => writeln!(f, "cache: /metrics could not be read")?,
        }
        let b = &self.biller;
        writeln!(
            f,
            "biller: received {} (bound {} for {} distinct accounts), served {}, failed {} \
             (overload {}, down {}), went down {} time(s)",
            b.received,
            self.biller_calls_bound,
            self.distinct_accounts,
            b.served,
            b.failed(),
            b.failed_overload,
            b.failed_down,
            b.times_down
        )?;
        let a = &self.account_calls;
        writeln!(
            f,
            "accounts by answers fetched for them (2xx marked miss): none {}, one {}, two {}, \
             more {}; most {}",
            a.never, a.once, a.twice, a.more, a.most
        )?;
        writeln!(
            f,
            "\nlatency, ms                         {:>8} {:>8} {:>8} {:>8} {:>8}",
            "count", "p50", "p99", "p99.9", "max"
        )?;
        for (label, l) in [
            ("cache hits, from scheduled send", &self.hit_latency),
            ("cache hits, from actual send", &self.hit_service_latency),
            ("fetched (miss/coalesced), sched.", &self.fetched_latency),
            ("dispatch lag, every request", &self.dispatch_lag),
        ] {
            writeln!(
                f,
                "  {label:<33} {:>8} {:>8} {:>8} {:>8} {:>8}",
                l.count,
                ms(l.p50_ms),
                ms(l.p99_ms),
                ms(l.p999_ms),
                ms(l.max_ms)
            )?;
        }
        let mib = |b: Option<u64>| b.map_or("-".to_owned(), |b| format!("{:.1}", b as f64 / MIB));
        writeln!(
            f,
            "memory: process RSS {} MiB before the first poll, {} MiB after the last answer",
            mib(self.rss_before_bytes),
            mib(self.rss_after_bytes)
        )?;
        let load = |l: Option<f64>| l.map_or("-".to_owned(), |l| format!("{l:.2}"));
        writeln!(
            f,
            "machine: {} CPUs; one-minute load average {} before, {} after",
            self.cpus.map_or("-".to_owned(), |n| n.to_string()),
            load(self.load_average_before),
            load(self.load_average_after)
        )?;
        if let Some(lag) = self.dispatch_lag.p99_ms.filter(|&l| l >= 1.0) {
            writeln!(
                f,
                "note: 1 % of requests left {lag:.1} ms or more after their scheduled time: the \
                 process was held up (by other work on the machine, or by its own load), and the \
                 open-loop latencies above include that"
            )?;
        }
        writeln!(f, "\nchecks")?;
        for check in &self.checks {
            let status = match check.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::NotMeasured => "N/A ",
                Status::Info => "INFO",
            };
            writeln!(f, "  {status}  {}: {}", check.name, check.measured)?;
        }
        Ok(())
    }
}
