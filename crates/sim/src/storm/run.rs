//! One replay start to finish: start the biller and the gateway on loopback, play the phases,
//! stop everything, and turn what was counted into a [`StormReport`].

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

use super::breaker::BreakerTrace;
use super::checks::checks;
use super::fleet::{self, redis::FleetRedis, FleetReport};
use super::report::{
    BillerReport, BreakerReport, LoadReport, PhaseReport, ReplayMode, StormReport, StreamReport,
    SubscribedReport,
};
use super::scenario::{self, Phase, Stream};
use super::subscribe::Subscribing;
use super::traffic::{Recorder, Traffic};
use super::watch;
use super::windows::{self, ShareRule, BUCKET_MS, PER_SECOND};
use super::StormOptions;
use crate::biller::{Arrivals, BillerOptions, BillerStats, StandInBiller};
use crate::clock::Clock;
use crate::launch::{Launch, Running};

const BUCKET_NANOS: u64 = BUCKET_MS * 1_000_000;

/// Replay the storm as `options` say, through a gateway `gateways` starts, and report what
/// happened. Takes the phases' total plus a
/// few seconds; needs a multi-threaded Tokio runtime to keep to its schedule.
///
/// # Errors
/// Options out of range, a loopback port that cannot be bound, or a gateway that cannot start.
/// What the replay measures is never an error: it is in the report's checks.
pub async fn run(options: StormOptions, gateways: &dyn Launch) -> anyhow::Result<StormReport> {
    options.validate()?;
    let subscribing = match options.subscribe {
        true => Some(Subscribing::start().await?),
        false => None,
    };
    let clock = Clock::real();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let biller_addr = listener.local_addr()?;
    let biller = StandInBiller::new(
        BillerOptions {
            capacity_per_sec: f64::from(options.capacity_per_sec),
            overload_grace: options.overload_grace,
            down_for: options.down_for,
            ..BillerOptions::default()
        },
        clock.clone(),
    );
    let (stop_biller, biller_stopped) = tokio::sync::oneshot::channel::<()>();
    let biller_task = tokio::spawn(biller.clone().serve(listener, async move {
        let _ = biller_stopped.await;
    }));
    let started = start_gateways(
        &options,
        biller_addr,
        gateways,
        &clock,
        subscribing.as_ref(),
    )
    .await;
    let (running, redis) = match started {
        Ok(started) => started,
        Err(error) => {
            let _ = stop_biller.send(());
            return Err(error);
        }
    };
    let targets: Vec<_> = if running.is_empty() {
        vec![biller_addr]
    } else {
        running.iter().map(|g| g.addr()).collect()
    };
    let admins = running.iter().map(|g| g.admin_addr()).collect();
    // Subscribed: every account before the phases begin, as a partner would on day one, and
    // the gateway's first look at each (one biller call per new account, at the refresher's
    // share of the capacity) done before them too, so the phases measure the steady state.
    let subscribed = match (&subscribing, targets.first()) {
        (Some(subscribing), Some(gateway)) => {
            let before = (Instant::now(), biller.stats().received);
            match subscribing.subscribe(&options, *gateway).await {
                Ok(made) => {
                    let calls = onboarded(&biller, before.1, u64::from(made), &options).await;
                    Some((made, calls, before.0.elapsed().as_secs_f64()))
                }
                Err(error) => {
                    stop(running).await;
                    let _ = stop_biller.send(());
                    return Err(error.context("storm: subscribing the poller's accounts"));
                }
            }
        }
        _ => None,
    };

    // Start on a 100 ms boundary of the biller's clock, so phases and its arrival buckets align.
    let now = clock.now().as_u64();
    let first_bucket = now / BUCKET_NANOS + 3;
    let start = Instant::now() + Duration::from_nanos(first_bucket * BUCKET_NANOS - now);
    let lengths = Phase::ALL.map(|p| options.length(p));
    let streams = scenario::streams(&options);
    let traffic = Arc::new(Traffic::new(
        &targets,
        start,
        lengths,
        streams.len(),
        &options,
    ));
    let end = start + options.total();
    let sampler = tokio::spawn(watch::sample(
        biller.clone(),
        admins,
        start,
        end + Duration::from_millis(500),
        options.sample_every,
    ));
    let script = tokio::spawn(watch::script(biller.clone(), options.clone(), start));
    let recorder = traffic.run(streams.clone()).await;
    let readings = script.await?;
    let watched = sampler.await?;
    let arrivals = biller.arrivals();

    stop(running).await;
    let fleet = redis.map(|redis| {
        let report = FleetReport {
            redis: fleet::redacted(redis.url()),
            redis_started: redis.started(),
            keys: fleet::KEYS,
            split: fleet::SPLIT,
            instances: watched
                .gateways
                .iter()
                .enumerate()
                .map(|(i, (trace, seen))| {
                    seen.report(fleet::instance_name(i), breaker(&options, &recorder, trace))
                })
                .collect(),
        };
        redis.stop();
        report
    });
    let _ = stop_biller.send(());
    if let Ok(Err(error)) = biller_task.await {
        tracing::warn!(%error, "storm: the stand-in biller stopped with an error");
    }
    let breaker = match (&fleet, watched.gateways.first()) {
        (Some(fleet), _) => fleet::combined_breaker(&fleet.instances),
        (None, Some((trace, _))) => breaker(&options, &recorder, trace),
        (None, None) => breaker(&options, &recorder, &BreakerTrace::default()),
    };

    let mut report = StormReport {
        mode: if options.bypass {
            ReplayMode::Bypass
        } else {
            ReplayMode::Gateway
        },
        capacity_per_sec: options.capacity_per_sec,
        seed: options.seed,
        brownout_latency_factor: options.brownout_latency_factor,
        brownout_failure_share: options.brownout_failure_share,
        phases: phases(
            &options,
            &streams,
            &recorder,
            &arrivals,
            first_bucket,
            &readings,
        ),
        storm_load_max_per_sec: {
            let from = first_bucket + bucket_count(options.start_of(Phase::Storm));
            let to = first_bucket + bucket_count(options.total());
            windows::max_window(&arrivals.range(from, to), PER_SECOND)
        },
        biller: delta(readings.first(), readings.last()),
        biller_down_at: watched.down_at.clone(),
        biller_up_at: watched.up_at.clone(),
        breaker,
        fleet,
        subscribed: subscribed.map(|(accounts, onboarding_calls, onboarding_secs)| {
            SubscribedReport {
                accounts,
                onboarding_calls,
                onboarding_secs,
                webhooks: subscribing
                    .as_ref()
                    .map_or(0, |s| s.webhooks.load(std::sync::atomic::Ordering::Relaxed)),
            }
        }),
        checks: Vec::new(),
    };
    report.checks = checks(&report);
    Ok(report)
}

/// Waits until the biller has been asked about each of `accounts` new accounts (its count past
/// `received`), or for three times as long as the gateway's refresh share of the capacity
/// needs for them (and ten seconds): the calls it was asked.
async fn onboarded(
    biller: &StandInBiller,
    received: u64,
    accounts: u64,
    options: &StormOptions,
) -> u64 {
    let share = (f64::from(options.capacity_per_sec) * scenario::ONBOARDING_SHARE).max(1.0);
    let deadline = Instant::now() + Duration::from_secs_f64(accounts as f64 / share * 3.0 + 10.0);
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    loop {
        ticks.tick().await;
        let calls = biller.stats().received.saturating_sub(received);
        if calls >= accounts || Instant::now() >= deadline {
            return calls;
        }
    }
}

/// The gateways of the run: none when bypassing them, one alone, or `options.instances` in a
/// fleet on a Redis (started here unless `options.redis` names one) and formed before the load.
///
/// # Errors
/// A gateway or the Redis cannot start, or the fleet does not form; whatever started is
/// stopped.
async fn start_gateways(
    options: &StormOptions,
    biller_addr: std::net::SocketAddr,
    gateways: &dyn Launch,
    clock: &Clock,
    subscribing: Option<&Subscribing>,
) -> anyhow::Result<(Vec<Box<dyn Running>>, Option<FleetRedis>)> {
    if options.bypass {
        return Ok((Vec::new(), None));
    }
    if !options.in_fleet() {
        let config = match subscribing {
            Some(subscribing) => subscribing.config(options, biller_addr)?,
            None => scenario::gateway_config(options, biller_addr)?,
        };
        return Ok((vec![gateways.launch(config, clock.clone()).await?], None));
    }
    let redis = FleetRedis::for_run(options.redis.as_deref()).await?;
    let mut running = Vec::new();
    for i in 0..options.instances as usize {
        let name = fleet::instance_name(i);
        let launched = match scenario::member_config(options, biller_addr, redis.url(), &name) {
            Ok(config) => gateways.launch(config, clock.clone()).await,
            Err(error) => Err(error),
        };
        match launched {
            Ok(gateway) => running.push(gateway),
            Err(error) => {
                stop(running).await;
                return Err(error.context(format!("storm: starting {name}")));
            }
        }
    }
    let admins: Vec<_> = running.iter().map(|g| g.admin_addr()).collect();
    if let Err(error) = fleet::formed(&admins, redis.url()).await {
        stop(running).await;
        return Err(error);
    }
    Ok((running, Some(redis)))
}

/// Stops every gateway, all at once.
async fn stop(running: Vec<Box<dyn Running>>) {
    let stopping: Vec<_> = running
        .into_iter()
        .map(|g| tokio::spawn(g.shutdown()))
        .collect();
    for task in stopping {
        let _ = task.await;
    }
}

fn bucket_count(d: Duration) -> u64 {
    u64::try_from(d.as_millis() / u128::from(BUCKET_MS)).unwrap_or(u64::MAX)
}

fn delta(from: Option<&BillerStats>, to: Option<&BillerStats>) -> BillerReport {
    let (Some(a), Some(b)) = (from, to) else {
        return BillerReport::default();
    };
    BillerReport {
        received: b.received.saturating_sub(a.received),
        served: b.served.saturating_sub(a.served),
        failed_overload: b.failed_overload.saturating_sub(a.failed_overload),
        failed_down: b.failed_down.saturating_sub(a.failed_down),
        failed_brownout: b.failed_brownout.saturating_sub(a.failed_brownout),
        times_down: b.times_down.saturating_sub(a.times_down),
    }
}

fn phases(
    options: &StormOptions,
    streams: &[Stream],
    recorder: &Recorder,
    arrivals: &Arrivals,
    first_bucket: u64,
    readings: &[BillerStats],
) -> Vec<PhaseReport> {
    Phase::ALL
        .into_iter()
        .map(|phase| {
            let start = options.start_of(phase);
            let length = options.length(phase);
            let from = first_bucket + bucket_count(start);
            let counts = arrivals.range(from, from + bucket_count(length));
            let total: u64 = counts.iter().sum();
            let i = phase.index();
            PhaseReport {
                phase,
                start_secs: start.as_secs_f64(),
                secs: length.as_secs_f64(),
                load: LoadReport {
                    max_per_sec: windows::max_window(&counts, PER_SECOND),
                    mean_per_sec: total as f64 / length.as_secs_f64(),
                    per_second: windows::tumbling(&counts, PER_SECOND),
                },
                biller: delta(readings.get(i), readings.get(i + 1)),
                streams: streams
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.from.index() <= i)
                    .map(|(index, s)| stream_report(s, recorder, phase, index))
                    .collect(),
            }
        })
        .collect()
}

fn stream_report(stream: &Stream, recorder: &Recorder, phase: Phase, index: usize) -> StreamReport {
    let t = recorder.tally(phase, index);
    let sent = t.ok + t.rejected + t.failed + t.other + t.unsent;
    let ms = |q: f64| t.latency.quantile(q).map(|d| d.as_secs_f64() * 1000.0);
    StreamReport {
        partner: stream.partner,
        class: stream.class.as_str(),
        sent,
        admitted: t.ok + t.failed + t.other,
        ok: t.ok,
        rejected: t.rejected,
        failed: t.failed,
        other: t.other,
        unsent: t.unsent,
        success_share: if sent == 0 {
            0.0
        } else {
            t.ok as f64 / sent as f64
        },
        settling_sent: t.settling_due,
        settling_ok: t.settling_ok,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        latency: t.latency.clone(),
    }
}

fn breaker(options: &StormOptions, recorder: &Recorder, trace: &BreakerTrace) -> BreakerReport {
    let settings = &options.breaker;
    let rule = ShareRule {
        width: usize::try_from(bucket_count(settings.window))
            .unwrap_or(usize::MAX)
            .max(1),
        min_calls: u64::from(settings.min_calls),
        threshold: settings.failure_rate,
    };
    let bucket_secs = BUCKET_MS as f64 / 1000.0;
    let crossed_at =
        windows::first_crossing(&recorder.forwarded_ok, &recorder.forwarded_failed, 0, rule)
            .map(|end| (end + 1) as f64 * bucket_secs);
    let brownout_at = options.start_of(Phase::Brownout).as_secs_f64();
    let open_from = crossed_at.map_or(brownout_at, |c| c.min(brownout_at));
    let recovery_at = options.start_of(Phase::Recovery).as_secs_f64();
    let end = options.total().as_secs_f64() + 0.5;
    BreakerReport {
        exported: trace.exported,
        failure_rate: settings.failure_rate,
        window_secs: settings.window.as_secs_f64(),
        min_calls: settings.min_calls,
        open_for_secs: settings.open_for.as_secs_f64(),
        transitions: trace.transitions.clone(),
        crossed_at,
        opened_at: trace
            .transitions
            .iter()
            .find(|t| t.to == "open" && t.at_secs >= open_from)
            .map(|t| t.at_secs),
        recovery_at,
        state_at_recovery: trace.state_at(recovery_at).to_owned(),
        closed_at: trace
            .transitions
            .iter()
            .find(|t| t.to == "closed" && t.at_secs >= recovery_at)
            .map(|t| t.at_secs),
        state_at_end: trace.state_at(end).to_owned(),
    }
}
