//! One polls run start to finish: start the stand-in biller and the gateway on loopback, poll,
//! read the biller's counters and the gateway's `/metrics` at every step, stop everything, and
//! turn what was counted into a [`PollsReport`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

use super::answers::PollRecorder;
use super::config::{gateway_config, PARTNERS};
use super::load::Load;
use super::report::{
    calls_bound, AccountCalls, CacheCounts, Counts, Interval, Latency, PartnerCounts, PollsReport,
};
use super::PollsOptions;
use crate::biller::{BillerOptions, BillerStats, StandInBiller};
use crate::clock::Clock;
use crate::launch::Launch;
use crate::storm::breaker::{label, samples};
use crate::storm::watch::scrape;
use crate::storm::BillerReport;

/// How long after the gateway starts the first poll is due.
const LEAD_IN: Duration = Duration::from_millis(300);

/// Play the polls as `options` say and report what happened. Takes `duration` plus a second or
/// so; needs a multi-threaded Tokio runtime, and one thread beside it for the pacer.
///
/// # Errors
/// Options out of range, a loopback port that cannot be bound, or a gateway that cannot start.
/// What the run measures is never an error: it is in the report's checks.
pub async fn run(options: PollsOptions, gateways: &dyn Launch) -> anyhow::Result<PollsReport> {
    options.validate()?;
    let clock = Clock::real();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let biller_addr = listener.local_addr()?;
    let biller = StandInBiller::new(
        BillerOptions {
            capacity_per_sec: f64::from(options.capacity_per_sec),
            ..BillerOptions::default()
        },
        clock.clone(),
    );
    let (stop_biller, biller_stopped) = tokio::sync::oneshot::channel::<()>();
    let biller_task = tokio::spawn(biller.clone().serve(listener, async move {
        let _ = biller_stopped.await;
    }));
    let config = gateway_config(&options, biller_addr)?;
    let scheduled_share =
        (1.0 - config.biller.payment_reserve - config.biller.user_reserve).clamp(0.0, 1.0);
    let gateway = gateways.launch(config, clock).await?;

    let load_before = load_average();
    let load = Arc::new(Load::new(gateway.addr(), &options)?);
    load.warm_up().await;
    let rss_before = rss_bytes();
    let start = std::time::Instant::now() + LEAD_IN;
    let sampler = tokio::spawn(sample(
        biller.clone(),
        gateway.admin_addr(),
        tokio::time::Instant::from_std(start),
        options.step,
        options.duration,
    ));
    let recorder = load.run(start).await;
    let steps = sampler.await.unwrap_or_default();
    let rss_after = rss_bytes();
    let load_after = load_average();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let cache = scrape(&client, gateway.admin_addr())
        .await
        .map(|text| cache_counts(&text));
    let biller_end = biller.stats();

    gateway.shutdown().await;
    let _ = stop_biller.send(());
    if let Ok(Err(error)) = biller_task.await {
        tracing::warn!(%error, "polls: the stand-in biller stopped with an error");
    }
    let mut report = report(
        &options,
        scheduled_share,
        recorder,
        &steps,
        cache,
        &biller_end,
    );
    report.rss_before_bytes = rss_before;
    report.rss_after_bytes = rss_after;
    report.cpus = std::thread::available_parallelism().ok().map(usize::from);
    report.load_average_before = load_before;
    report.load_average_after = load_after;
    report.checks = report.judge();
    Ok(report)
}

/// The biller's counters, the cache's entries and the inquiry breaker at one step's end.
#[derive(Debug, Clone)]
struct Step {
    biller: BillerStats,
    entries: Option<u64>,
    breaker: Option<&'static str>,
}

/// The biller's counters at the start, then at the end of every step, with `/metrics`.
async fn sample(
    biller: StandInBiller,
    admin: SocketAddr,
    start: tokio::time::Instant,
    step: Duration,
    duration: Duration,
) -> Vec<Step> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let steps = (duration.as_secs_f64() / step.as_secs_f64()).ceil() as u32;
    let mut taken = Vec::with_capacity(steps as usize + 1);
    for i in 0..=steps {
        tokio::time::sleep_until(start + (step * i).min(duration)).await;
        let biller = biller.stats();
        let text = scrape(&client, admin).await;
        let read = |name, label| text.as_deref().and_then(|t| metric(t, name, label));
        taken.push(Step {
            biller,
            entries: read("billgate_cache_entries", None),
            breaker: read("billgate_breaker_state", Some(("breaker", "inquiry"))).map(
                |v| match v {
                    0 => "closed",
                    1 => "open",
                    _ => "half-open",
                },
            ),
        });
    }
    taken
}

/// The value of `name` (with the label `key` = `value` when given) in Prometheus text.
fn metric(text: &str, name: &str, with: Option<(&str, &str)>) -> Option<u64> {
    samples(text, name)
        .find(|(labels, _)| with.is_none_or(|(k, v)| label(labels, k) == Some(v)))
        .map(|(_, value)| value.max(0.0) as u64)
}

fn cache_counts(text: &str) -> CacheCounts {
    let requests = |result| {
        metric(
            text,
            "billgate_cache_requests_total",
            Some(("result", result)),
        )
    };
    CacheCounts {
        hits: requests("hit").unwrap_or(0),
        misses: requests("miss").unwrap_or(0),
        coalesced: requests("coalesced").unwrap_or(0),
        evictions: metric(text, "billgate_cache_evictions_total", None).unwrap_or(0),
        entries: metric(text, "billgate_cache_entries", None).unwrap_or(0),
        bytes: metric(text, "billgate_cache_bytes", None).unwrap_or(0),
    }
}

/// `VmRSS` from `/proc/self/status`, in bytes; `None` where there is no such file.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The one-minute load average from `/proc/loadavg`; `None` where there is no such file.
fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn delta(a: &BillerStats, b: &BillerStats) -> BillerReport {
    BillerReport {
        received: b.received.saturating_sub(a.received),
        served: b.served.saturating_sub(a.served),
        failed_overload: b.failed_overload.saturating_sub(a.failed_overload),
        failed_down: b.failed_down.saturating_sub(a.failed_down),
        failed_brownout: b.failed_brownout.saturating_sub(a.failed_brownout),
        times_down: b.times_down.saturating_sub(a.times_down),
    }
}

fn report(
    options: &PollsOptions,
    scheduled_share: f64,
    recorder: PollRecorder,
    steps: &[Step],
    cache: Option<CacheCounts>,
    biller_end: &BillerStats,
) -> PollsReport {
    let step = options.step.as_secs_f64();
    let duration = options.duration.as_secs_f64();
    let timeline = recorder
        .intervals
        .iter()
        .enumerate()
        .map(|(i, counts)| {
            let calls = match (steps.get(i), steps.get(i + 1)) {
                (Some(a), Some(b)) => b.biller.received.saturating_sub(a.biller.received),
                _ => 0,
            };
            Interval {
                from_secs: i as f64 * step,
                to_secs: ((i + 1) as f64 * step).min(duration),
                counts: *counts,
                biller_calls: calls,
                cache_entries: steps.get(i + 1).and_then(|s| s.entries),
                breaker: steps.get(i + 1).and_then(|s| s.breaker),
            }
        })
        .collect();
    let mut totals = Counts::default();
    for p in &recorder.partners {
        totals.add(p);
    }
    let biller = steps
        .first()
        .map(|first| delta(&first.biller, biller_end))
        .unwrap_or_default();
    PollsReport {
        capacity_per_sec: options.capacity_per_sec,
        scheduled_share,
        factor: options.factor,
        rate_per_sec: options.rate_per_sec(),
        accounts: options.accounts,
        duration_secs: duration,
        cache_for_secs: options.cache_for.as_secs_f64(),
        seed: options.seed,
        breaker_min_calls: options.breaker_min_calls(),
        totals,
        partners: PARTNERS
            .iter()
            .zip(recorder.partners)
            .map(|(&partner, counts)| PartnerCounts { partner, counts })
            .collect(),
        rejections: recorder.reasons.clone(),
        cache,
        biller,
        distinct_accounts: recorder.distinct_accounts,
        biller_calls_bound: calls_bound(recorder.distinct_accounts),
        account_calls: AccountCalls::of(&recorder.fetches),
        hit_latency: Latency::of(&recorder.hit),
        hit_service_latency: Latency::of(&recorder.hit_service),
        fetched_latency: Latency::of(&recorder.fetched),
        dispatch_lag: Latency::of(&recorder.dispatch),
        rss_before_bytes: None,
        rss_after_bytes: None,
        cpus: None,
        load_average_before: None,
        load_average_after: None,
        timeline,
        checks: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_metrics_are_read_from_prometheus_text() {
        let text = "# TYPE billgate_cache_requests_total counter\n\
            billgate_cache_requests_total{result=\"coalesced\"} 3\n\
            billgate_cache_requests_total{result=\"hit\"} 120\n\
            billgate_cache_requests_total{result=\"miss\"} 7\n\
            billgate_cache_evictions_total 0\n\
            billgate_cache_entries 4\n\
            billgate_cache_bytes 2048\n";
        let c = cache_counts(text);
        assert_eq!((c.hits, c.misses, c.coalesced), (120, 7, 3));
        assert_eq!((c.evictions, c.entries, c.bytes), (0, 4, 2048));
        assert_eq!(metric(text, "billgate_cache_size", None), None);
    }

    #[test]
    fn rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_bytes().is_some_and(|b| b > 0));
        }
    }
}
