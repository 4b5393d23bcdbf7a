//! A partner's class quota alone, billgate's [`Quota`] beside governor's direct limiter on the
//! same rate and clock, at one thread and at two threads on one hot quota.
//!
//! billgate's check reads the clock once, as a decision does, and works out what remains (the
//! `RateLimit` fields); governor's reads the clock itself, and with its state middleware its
//! snapshot gives what remains. `governor_plain` is governor's bare check, which answers only
//! yes or no. The quota is huge (`workload::HUGE`), so every check passes and writes its cell:
//! two threads on one quota contend for governor's one arrival time, and for billgate's only if
//! they share a core.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use billgate::admission::Quota;
use billgate::clock::Clock;
use billgate::config::Rate;
use billgate::fleet::{FleetState, Lease, AHEAD};
use criterion::{BenchmarkId, Criterion};
use governor::middleware::StateInformationMiddleware;
use governor::RateLimiter;

use crate::pool::Job;
use crate::scaling::{self, Contender};

/// Requests spent at once by the `_n3` contenders (`check_n`).
const N: NonZeroU32 = NonZeroU32::new(3).unwrap();

/// billgate's check in a fleet: the fleet's lease first (one atomic subtraction on a word
/// every thread shares), then the quota as alone. The lease holds more than any run spends.
fn billgate_in_fleet(rate: Rate) -> Job {
    let quota = Quota::new(rate);
    let own = AtomicU64::new(0);
    let clock = Clock::real();
    let state = Arc::new(FleetState::new());
    state.set_up(true);
    let lease = Arc::new(Lease::new("q:bench:payment".into(), rate));
    let now = clock.now().as_u64();
    let _ = lease.take(&state, now, 1);
    let ask = lease.plan(&state, now, AHEAD);
    lease.granted(&ask, 1 << 60);
    Arc::new(move |_, iters, _| {
        for _ in 0..iters {
            let now = clock.now();
            black_box(lease.take(&state, now.as_u64(), 1).is_ok());
            black_box(quota.check_n(&own, now, 1).map(|r| r.remaining).ok());
        }
    })
}

/// billgate's check: one clock reading, then the quota, what remains worked out.
fn billgate(rate: Rate, n: u32) -> Job {
    let quota = Quota::new(rate);
    // A one-cell quota's arrival time is its partner's; a sharded one ignores it.
    let own = AtomicU64::new(0);
    let clock = Clock::real();
    Arc::new(move |_, iters, _| {
        for _ in 0..iters {
            let now = clock.now();
            black_box(quota.check_n(&own, now, n).map(|r| r.remaining).ok());
        }
    })
}

fn governor_quota(rate: Rate) -> governor::Quota {
    governor::Quota::with_period(rate.replenish_interval())
        .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MAX))
        .allow_burst(rate.burst)
}

/// governor's direct limiter with its state middleware: what remains, as the fields need it.
fn governor(rate: Rate) -> Job {
    let limiter = RateLimiter::direct_with_clock(governor_quota(rate), Clock::real())
        .with_middleware::<StateInformationMiddleware>();
    Arc::new(move |_, iters, _| {
        for _ in 0..iters {
            black_box(limiter.check().map(|s| s.remaining_burst_capacity()).ok());
        }
    })
}

/// [`governor`] spending `n` at once (`check_n`).
fn governor_n(rate: Rate, n: NonZeroU32) -> Job {
    let limiter = RateLimiter::direct_with_clock(governor_quota(rate), Clock::real())
        .with_middleware::<StateInformationMiddleware>();
    Arc::new(move |_, iters, _| {
        for _ in 0..iters {
            let passed = limiter.check_n(n).ok().and_then(Result::ok);
            black_box(passed.map(|s| s.remaining_burst_capacity()));
        }
    })
}

/// governor's direct limiter as it comes: passed or not, nothing about what remains.
fn governor_plain(rate: Rate) -> Job {
    let limiter = RateLimiter::direct_with_clock(governor_quota(rate), Clock::real());
    Arc::new(move |_, iters, _| {
        for _ in 0..iters {
            black_box(limiter.check().is_ok());
        }
    })
}

/// Makes a contender's job on a limiter of its own.
type MakeJob = Box<dyn Fn() -> Job>;

/// The contenders, each with a fresh limiter per thread count.
fn contenders(rate: Rate) -> Vec<(&'static str, MakeJob)> {
    vec![
        ("billgate", Box::new(move || billgate(rate, 1))),
        ("billgate_fleet", Box::new(move || billgate_in_fleet(rate))),
        ("governor", Box::new(move || governor(rate))),
        ("governor_plain", Box::new(move || governor_plain(rate))),
        ("billgate_n3", Box::new(move || billgate(rate, N.get()))),
        ("governor_n3", Box::new(move || governor_n(rate, N))),
    ]
}

/// `class_quota/IMPL/tT` by criterion, then the same contenders in interleaved rounds
/// (`scaling.rs`), which a shared machine disturbs least.
pub fn class_quota(c: &mut Criterion) {
    let rate = billgate::config::parse_rate(crate::workload::HUGE).expect("rate");
    let all = contenders(rate);
    let mut group = c.benchmark_group("class_quota");
    for (name, make) in &all {
        for threads in crate::THREADS {
            if !crate::extra::selected(&format!("class_quota/{name}/t{threads}")) {
                continue;
            }
            let id = BenchmarkId::new(*name, format!("t{threads}"));
            crate::bench_threads(&mut group, id, threads, make());
        }
    }
    group.finish();
    if !crate::extra::selected("class_quota/interleaved") {
        return;
    }
    let rounds: Vec<Contender> = all
        .iter()
        .map(|(name, make)| Contender {
            name: (*name).into(),
            one: make(),
            two: make(),
        })
        .collect();
    scaling::compare("class_quota/interleaved (one hot quota)", &rounds);
}
