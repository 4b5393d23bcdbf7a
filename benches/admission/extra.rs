//! Figures criterion does not time: bytes per tracked account, and eviction sweeps of a million
//! accounts with the latency of checks made by another thread while the sweep runs.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use billgate::admission::AccountLimiter;
use billgate::clock::Clock;
use billgate::config::parse_rate;

use crate::alloc;
use crate::baselines::{GovernorString, GovernorU64, MutexHashMap, Ours, PerAccount};
use crate::workload::{self, Fixture, Req, Rng, Shape};

const MILLION: usize = 1_000_000;

/// The filter given on the command line (criterion's positional argument), if any.
fn filter() -> Option<String> {
    const WITH_VALUE: [&str; 14] = [
        "--save-baseline",
        "-s",
        "--baseline",
        "-b",
        "--baseline-lenient",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--significance-level",
        "--profile-time",
        "--color",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut skip = false;
    for arg in args {
        if skip {
            skip = false;
        } else if WITH_VALUE.contains(&arg.as_str()) {
            skip = true;
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

/// Whether the benchmark named `name` is selected: the filter is a regular expression, as
/// criterion takes it.
pub fn selected(name: &str) -> bool {
    filter().is_none_or(|f| match regex::Regex::new(&f) {
        Ok(re) => re.is_match(name),
        Err(_) => name.contains(&f),
    })
}

/// Whether any of the thread counts of the benchmark `prefix/tN` is selected.
pub fn selected_prefix(prefix: &str) -> bool {
    crate::THREADS
        .iter()
        .any(|t| selected(&format!("{prefix}/t{t}")))
}

fn accounts(n: usize) -> Vec<(Req, String)> {
    (0..n)
        .map(|j| {
            let acct = workload::account(0, n, j);
            (Req::new("k", &format!("/v1/bills/{acct}"), &acct), acct)
        })
        .collect()
}

/// Live heap bytes per tracked account, a million accounts in each structure.
pub fn memory() {
    if !selected("memory/bytes_per_account") {
        return;
    }
    let keys = accounts(MILLION);
    let rate = parse_rate(workload::HUGE).expect("rate");
    println!("memory/bytes_per_account: {MILLION} accounts tracked");
    type Build = Box<dyn Fn() -> Box<dyn PerAccount>>;
    let builders: Vec<(&str, Build)> = vec![
        (
            "billgate",
            Box::new(move || Box::new(Ours::new(rate, 2 * MILLION))),
        ),
        (
            "governor_dashmap_string",
            Box::new(|| Box::new(GovernorString::new())),
        ),
        (
            "governor_dashmap_u64",
            Box::new(|| Box::new(GovernorU64::new())),
        ),
        ("mutex_hashmap", Box::new(|| Box::new(MutexHashMap::new()))),
    ];
    for (name, build) in builders {
        let before = alloc::live();
        let started = Instant::now();
        let limiter = build();
        for (req, text) in &keys {
            limiter.check(req, text);
        }
        let took = started.elapsed();
        let bytes = alloc::live().saturating_sub(before);
        println!(
            "  {name:<26} {:>6.1} bytes/account  ({:>6.1} MiB; filled in {took:.2?})",
            bytes as f64 / MILLION as f64,
            bytes as f64 / f64::from(1 << 20),
        );
        drop(limiter);
    }
    for (partners, accounts) in [(1, MILLION), (10_000, MILLION)] {
        let before = alloc::live();
        let fixture = Fixture::new(partners, accounts, Shape::Allow);
        let bytes = alloc::live().saturating_sub(before);
        println!(
            "  whole gate p{partners}_a{accounts}: {:>6.1} bytes/account ({:.1} MiB, config included)",
            bytes as f64 / accounts as f64,
            bytes as f64 / f64::from(1 << 20)
        );
        drop(fixture);
    }
}

/// The per-account tables a sweep is measured on, on a fake clock.
trait Sweepable: Send + Sync {
    fn check(&self, req: &Req) -> bool;
    fn sweep(&self);
    fn len(&self) -> usize;
}

struct OursSweep(AccountLimiter, Clock);

impl Sweepable for OursSweep {
    fn check(&self, req: &Req) -> bool {
        self.0.check(req.account(), self.1.now()).is_ok()
    }
    fn sweep(&self) {
        self.0.sweep()
    }
    fn len(&self) -> usize {
        self.0.tracked()
    }
}

type GovernorFake = governor::RateLimiter<
    u64,
    governor::state::keyed::DefaultKeyedStateStore<u64>,
    Clock,
    governor::middleware::NoOpMiddleware<governor::nanos::Nanos>,
>;

struct GovernorSweep(GovernorFake);

impl Sweepable for GovernorSweep {
    fn check(&self, req: &Req) -> bool {
        self.0.check_key(&req.account_u64).is_ok()
    }
    fn sweep(&self) {
        self.0.retain_recent()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

const IDLE: u8 = 0;
const SWEEPING: u8 = 1;
const DONE: u8 = 2;

/// Check latencies (ns) of one thread while `phase` is idle and while it is sweeping.
fn checker(table: Arc<dyn Sweepable>, list: Arc<Vec<Req>>, phase: Arc<AtomicU8>) -> [Vec<u64>; 2] {
    let clock = quanta::Clock::new();
    let mut seen = [Vec::with_capacity(1 << 22), Vec::with_capacity(1 << 22)];
    let mut i = 0;
    loop {
        let at = phase.load(Ordering::Acquire);
        if at == DONE {
            return seen;
        }
        let start = clock.raw();
        std::hint::black_box(table.check(&list[i]));
        let took = clock.delta_as_nanos(start, clock.raw());
        let bucket = &mut seen[usize::from(at)];
        if bucket.len() < bucket.capacity() {
            bucket.push(took);
        }
        i = (i + 1) % list.len();
    }
}

fn percentiles(mut v: Vec<u64>) -> String {
    if v.is_empty() {
        return "no checks".into();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    format!(
        "p50 {} ns, p99 {} ns, p99.9 {} ns, max {:.2} ms ({} checks)",
        at(0.5),
        at(0.99),
        at(0.999),
        *v.last().unwrap_or(&0) as f64 / 1e6,
        v.len()
    )
}

/// Sweeps of a million accounts, none idle and all idle, with checks running beside them.
pub fn sweep() {
    if !selected("sweep/evict_") {
        return;
    }
    let keys = accounts(MILLION);
    let mut rng = Rng::new(0x5eeb);
    let list: Arc<Vec<Req>> = Arc::new(
        (0..1 << 20)
            .map(|_| keys[rng.below(MILLION)].0.clone())
            .collect(),
    );
    let rate = parse_rate("1/s").expect("rate");
    type Build = fn(&Clock) -> Arc<dyn Sweepable>;
    let impls: [(&str, Build); 2] = [
        ("billgate", |clock| {
            let rate = parse_rate("1/s").expect("rate");
            Arc::new(OursSweep(
                AccountLimiter::new(rate, 2 * MILLION, clock.clone()),
                clock.clone(),
            ))
        }),
        ("governor_dashmap_u64", |clock| {
            let quota = governor::Quota::per_second(NonZeroU32::MIN);
            Arc::new(GovernorSweep(governor::RateLimiter::dashmap_with_clock(
                quota,
                clock.clone(),
            )))
        }),
    ];
    let _ = rate;
    for evict_all in [false, true] {
        let mode = if evict_all { "evict_all" } else { "evict_none" };
        for (name, build) in impls {
            if !selected(&format!("sweep/{mode}/{name}")) {
                continue;
            }
            let (mut times, mut idle, mut during, mut left) = (vec![], vec![], vec![], 0);
            for _ in 0..5 {
                let (clock, hand) = Clock::fake();
                let table = build(&clock);
                for (req, _) in &keys {
                    table.check(req);
                }
                if evict_all {
                    hand.advance(Duration::from_secs(2));
                }
                let phase = Arc::new(AtomicU8::new(IDLE));
                let probe = {
                    let (table, list, phase) =
                        (Arc::clone(&table), Arc::clone(&list), Arc::clone(&phase));
                    std::thread::spawn(move || checker(table, list, phase))
                };
                std::thread::sleep(Duration::from_millis(50));
                phase.store(SWEEPING, Ordering::Release);
                let started = Instant::now();
                table.sweep();
                times.push(started.elapsed());
                phase.store(DONE, Ordering::Release);
                let [quiet, busy] = probe.join().expect("checker");
                idle.extend(quiet);
                during.extend(busy);
                left = table.len();
            }
            times.sort();
            println!(
                "sweep/{mode}/{name}: 1000000 accounts swept in {:.2?} (median of 5; {:.2?}..{:.2?}), {left} left after the last",
                times[2], times[0], times[4]
            );
            println!("  checks beside, idle:     {}", percentiles(idle));
            println!("  checks beside, sweeping: {}", percentiles(during));
        }
    }
}
