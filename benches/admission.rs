//! Admission benchmarks: the whole decision as the proxy runs it, its quota path alone, and the
//! per-account check beside governor's keyed limiter and a `Mutex<HashMap>`, in one harness.
//!
//! `cargo bench --bench admission -- <filter>`; see `benches/README.md` for the groups, the
//! workload and the figures. Memory and sweep figures are printed, not timed by criterion.

#[path = "admission/alloc.rs"]
mod alloc;
#[path = "admission/baselines.rs"]
mod baselines;
#[path = "admission/extra.rs"]
mod extra;
#[path = "admission/pool.rs"]
mod pool;
#[path = "admission/workload.rs"]
mod workload;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use billgate::admission::KeyIndex;
use criterion::{BenchmarkId, Criterion, Throughput};
use http::Method;

use baselines::{GovernorString, GovernorU64, MutexHashMap, Ours, PerAccount};
use pool::{Job, Pool};
use workload::{Fixture, Req, Rng, Shape};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

const PARTNERS: [usize; 3] = [1, 100, 10_000];
const ACCOUNTS: [usize; 3] = [1, 10_000, 1_000_000];
const THREADS: [usize; 2] = [1, 2];

/// Requests pre-generated per worker: enough that a million accounts are asked about without
/// the list itself repeating much, and streamed in order so the list costs no cache misses.
fn list_len(accounts: usize) -> usize {
    if accounts >= 1_000_000 {
        1 << 20
    } else {
        1 << 16
    }
}

/// Times `job` on `threads` long-lived workers as one criterion benchmark.
fn bench_threads(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    threads: usize,
    job: Job,
) {
    c.throughput(Throughput::Elements(threads as u64));
    let mut pool: Option<Pool> = None;
    c.bench_function(id, |b| {
        let pool = pool.get_or_insert_with(|| Pool::new(threads, job.clone()));
        b.iter_custom(|iters| pool.run(iters));
    });
}

/// A job deciding each worker's own list of requests in turn, dropping each ticket.
fn decide_job(fixture: &Fixture, lists: Arc<Vec<Vec<Req>>>) -> Job {
    let gate = Arc::clone(&fixture.gate);
    Arc::new(move |worker, iters, cursor| {
        let list = &lists[worker];
        let mut i = *cursor;
        for _ in 0..iters {
            drop(black_box(gate.decide(&list[i].parts())));
            i += 1;
            if i == list.len() {
                i = 0;
            }
        }
        *cursor = i;
    })
}

/// A job running only what billgate's own quota path does for a request: identify, classify,
/// the partner's class quota, the per-account quota. No biller protection.
fn quota_path_job(fixture: &Fixture, lists: Arc<Vec<Vec<Req>>>) -> Job {
    let gate = Arc::clone(&fixture.gate);
    let keys = Arc::new(KeyIndex::new(
        fixture.config.partners.iter().map(|p| &p.keys_sha256[..]),
    ));
    Arc::new(move |worker, iters, cursor| {
        let list = &lists[worker];
        let mut i = *cursor;
        for _ in 0..iters {
            let req = &list[i];
            let ok = (|| {
                let partner = &gate.partners()[keys.find(req.key())?];
                let matched = gate.router().find(&Method::GET, req.path(), None)?;
                let now = gate.clock().now();
                partner.quotas[2].as_ref()?.check(now).ok()?;
                let accounts = partner.accounts.as_ref()?;
                accounts.check(matched.account?, now).ok()
            })();
            black_box(ok);
            i += 1;
            if i == list.len() {
                i = 0;
            }
        }
        *cursor = i;
    })
}

fn lists(fixture: &Fixture, threads: usize, len: usize) -> Arc<Vec<Vec<Req>>> {
    Arc::new(
        (0..threads)
            .map(|w| fixture.requests(w, threads, len))
            .collect(),
    )
}

/// The whole decision: allow, deny at the per-account quota, deny at the partner quota.
fn admission(c: &mut Criterion) {
    for shape in [Shape::Allow, Shape::DenyAccount] {
        let name = match shape {
            Shape::Allow => "allow",
            _ => "deny_account",
        };
        for partners in PARTNERS {
            for accounts in ACCOUNTS {
                let id = format!("p{partners}_a{accounts}");
                if !extra::selected_prefix(&format!("{name}/{id}")) {
                    continue;
                }
                let fixture = Fixture::new(partners, accounts, shape);
                let mut group = c.benchmark_group(name);
                for threads in THREADS {
                    let lists = lists(&fixture, threads, list_len(accounts));
                    lists.iter().for_each(|l| fixture.verify(l, shape));
                    let job = decide_job(&fixture, lists);
                    bench_threads(
                        &mut group,
                        BenchmarkId::new(&id, format!("t{threads}")),
                        threads,
                        job,
                    );
                }
                group.finish();
            }
        }
    }
    for partners in PARTNERS {
        let id = format!("p{partners}");
        if !extra::selected_prefix(&format!("deny_partner/{id}")) {
            continue;
        }
        let fixture = Fixture::new(partners, partners, Shape::DenyPartner);
        let mut group = c.benchmark_group("deny_partner");
        for threads in THREADS {
            let lists = lists(&fixture, threads, 1 << 16);
            lists
                .iter()
                .for_each(|l| fixture.verify(l, Shape::DenyPartner));
            let job = decide_job(&fixture, lists);
            bench_threads(
                &mut group,
                BenchmarkId::new(&id, format!("t{threads}")),
                threads,
                job,
            );
        }
        group.finish();
    }
}

/// billgate's quota path without the biller's protection: what scales with distinct partners.
fn quota_path(c: &mut Criterion) {
    for (partners, accounts) in [(1, 1_000_000), (100, 10_000), (10_000, 1_000_000)] {
        let id = format!("p{partners}_a{accounts}");
        if !extra::selected_prefix(&format!("quota_path/{id}")) {
            continue;
        }
        let fixture = Fixture::new(partners, accounts, Shape::Allow);
        let mut group = c.benchmark_group("quota_path");
        for threads in THREADS {
            let lists = lists(&fixture, threads, list_len(accounts));
            let job = quota_path_job(&fixture, lists);
            let bench_id = BenchmarkId::new(&id, format!("t{threads}"));
            bench_threads(&mut group, bench_id, threads, job);
        }
        group.finish();
    }
}

/// The biller's protection alone (pause, breaker, budget by class, in-flight slot, ticket
/// dropped): the state every request shares, whichever partner it comes from.
fn protection(c: &mut Criterion) {
    if !extra::selected_prefix("protection/admit") {
        return;
    }
    let fixture = Fixture::new(2, 2, Shape::Allow);
    let mut group = c.benchmark_group("protection");
    for threads in THREADS {
        let gate = Arc::clone(&fixture.gate);
        let job: Job = Arc::new(move |worker, iters, _| {
            let pause = &gate.partners()[worker % 2].pause;
            for _ in 0..iters {
                let now = gate.clock().now();
                let class = billgate::config::Class::InquiryScheduled;
                drop(black_box(gate.protection().admit(class, pause, now)));
            }
        });
        bench_threads(
            &mut group,
            BenchmarkId::new("admit", format!("t{threads}")),
            threads,
            job,
        );
    }
    group.finish();
}

/// The per-account check alone: one table, every worker asking about random tracked accounts.
fn per_account(c: &mut Criterion) {
    for accounts in ACCOUNTS {
        let keys: Vec<(Req, String)> = (0..accounts)
            .map(|j| {
                let acct = workload::account(0, accounts, j);
                let path = format!("/v1/bills/{acct}");
                (Req::new("k", &path, &acct), acct)
            })
            .collect();
        let len = list_len(accounts);
        let worker_lists: Arc<Vec<Vec<(Req, String)>>> = Arc::new(
            (0..2)
                .map(|w| {
                    let mut rng = Rng::new(0xacc0 + w);
                    (0..len)
                        .map(|_| keys[rng.below(accounts)].clone())
                        .collect()
                })
                .collect(),
        );
        let ceiling = 2 * accounts;
        let rate = billgate::config::parse_rate(workload::HUGE).expect("rate");
        let impls: Vec<Arc<dyn PerAccount>> = vec![
            Arc::new(Ours::new(rate, ceiling)),
            Arc::new(GovernorString::new()),
            Arc::new(GovernorU64::new()),
            Arc::new(MutexHashMap::new()),
        ];
        let mut group = c.benchmark_group("per_account");
        for limiter in impls {
            let param = |t: usize| format!("a{accounts}_t{t}");
            if !THREADS
                .iter()
                .any(|&t| extra::selected(&format!("per_account/{}/{}", limiter.name(), param(t))))
            {
                continue;
            }
            for (req, text) in &keys {
                assert!(limiter.check(req, text), "{} refused", limiter.name());
            }
            for threads in THREADS {
                let (checker, lists) = (Arc::clone(&limiter), Arc::clone(&worker_lists));
                let job: Job = Arc::new(move |worker, iters, cursor| {
                    let list = &lists[worker];
                    let mut i = *cursor;
                    for _ in 0..iters {
                        let (req, text) = &list[i];
                        black_box(checker.check(req, text));
                        i += 1;
                        if i == list.len() {
                            i = 0;
                        }
                    }
                    *cursor = i;
                });
                let id = BenchmarkId::new(limiter.name(), param(threads));
                bench_threads(&mut group, id, threads, job);
            }
        }
        group.finish();
    }
}

/// The pieces every decision pays for whatever its shape: a clock reading, hashing an account.
fn pieces(c: &mut Criterion) {
    let mut group = c.benchmark_group("pieces");
    let clock = billgate::clock::Clock::real();
    group.bench_function("clock_now", |b| b.iter(|| black_box(clock.now())));
    let rate = billgate::config::parse_rate(workload::HUGE).expect("rate");
    let limiter = billgate::admission::AccountLimiter::new(rate, 1, clock.clone());
    group.bench_function("account_key", |b| {
        b.iter(|| black_box(limiter.key(black_box("000123456789"))))
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
        .configure_from_args();
    pieces(&mut c);
    admission(&mut c);
    quota_path(&mut c);
    protection(&mut c);
    per_account(&mut c);
    extra::memory();
    extra::sweep();
    c.final_summary();
}
