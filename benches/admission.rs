//! Admission benchmarks: the whole decision as the proxy runs it, its quota path alone, and the
//! per-account check beside governor's keyed limiter and a `Mutex<HashMap>`, in one harness.
//!
//! `cargo bench --bench admission -- <filter>`; see `benches/README.md` for the groups, the
//! workload and the figures. Memory and sweep figures are printed, not timed by criterion.

#[path = "admission/alloc.rs"]
mod alloc;
#[path = "admission/baselines.rs"]
mod baselines;
#[path = "admission/class_quota.rs"]
mod class_quota;
#[path = "admission/extra.rs"]
mod extra;
#[path = "admission/latency.rs"]
mod latency;
#[path = "admission/pool.rs"]
mod pool;
#[path = "admission/scaling.rs"]
mod scaling;
#[path = "admission/workload.rs"]
mod workload;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use billgate::admission::KeyIndex;
use billgate::ids::PartnerId;
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
                let (quota, own) = partner.quota(billgate::config::Class::InquiryScheduled)?;
                quota.check(own, now).ok()?;
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

/// `Protection::admit` for a scheduled poll of partner `worker % 2`, the ticket dropped.
fn protection_job(fixture: &Fixture) -> Job {
    let gate = Arc::clone(&fixture.gate);
    Arc::new(move |worker, iters, _| {
        let pause = gate.partners()[PartnerId::new(worker % 2)].cell.pause();
        for _ in 0..iters {
            let now = gate.clock().now();
            let class = billgate::config::Class::InquiryScheduled;
            drop(black_box(gate.protection().admit(class, pause, now)));
        }
    })
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
        let job = protection_job(&fixture);
        bench_threads(
            &mut group,
            BenchmarkId::new("admit", format!("t{threads}")),
            threads,
            job,
        );
    }
    group.finish();
}

type AccountLists = Arc<Vec<Vec<(Req, String)>>>;

/// A job checking each worker's own list of accounts against one shared limiter.
fn per_account_job(limiter: &Arc<dyn PerAccount>, lists: &AccountLists) -> Job {
    let (limiter, lists) = (Arc::clone(limiter), Arc::clone(lists));
    Arc::new(move |worker, iters, cursor| {
        let list = &lists[worker];
        let mut i = *cursor;
        for _ in 0..iters {
            let (req, text) = &list[i];
            black_box(limiter.check(req, text));
            i += 1;
            if i == list.len() {
                i = 0;
            }
        }
        *cursor = i;
    })
}

/// `accounts` tracked accounts of one partner, and two workers' random picks among them.
fn account_lists(accounts: usize) -> (Vec<(Req, String)>, AccountLists) {
    let keys: Vec<(Req, String)> = (0..accounts)
        .map(|j| {
            let acct = workload::account(0, accounts, j);
            let path = format!("/v1/bills/{acct}");
            (Req::new("k", &path, &acct), acct)
        })
        .collect();
    let len = list_len(accounts);
    let lists = (0..2)
        .map(|w| {
            let mut rng = Rng::new(0xacc0 + w);
            (0..len)
                .map(|_| keys[rng.below(accounts)].clone())
                .collect()
        })
        .collect();
    (keys, Arc::new(lists))
}

fn limiters(accounts: usize) -> Vec<Arc<dyn PerAccount>> {
    let rate = billgate::config::parse_rate(workload::HUGE).expect("rate");
    vec![
        Arc::new(Ours::new(rate, 2 * accounts)),
        Arc::new(GovernorString::new()),
        Arc::new(GovernorU64::new()),
        Arc::new(MutexHashMap::new()),
    ]
}

/// One thread against two, robust to a noisy machine (see `scaling.rs`): the per-account check
/// alone, and the whole decision against its parts.
fn scaling() {
    if !extra::selected("scaling/per_account") && !extra::selected("scaling/decision") {
        return;
    }
    let (keys, lists) = account_lists(10_000);
    let contenders: Vec<scaling::Contender> = limiters(10_000)
        .into_iter()
        .map(|limiter| {
            for (req, text) in &keys {
                limiter.check(req, text);
            }
            let job = per_account_job(&limiter, &lists);
            scaling::Contender {
                name: format!("per_account/{}", limiter.name()),
                one: job.clone(),
                two: job,
            }
        })
        .collect();
    scaling::compare("scaling/per_account a10000", &contenders);
    let mut decisions = vec![];
    for (partners, accounts) in [(100, 10_000), (1, 10_000)] {
        let fixture = Fixture::new(partners, accounts, Shape::Allow);
        let (one, two) = (
            lists_for(&fixture, 1, accounts),
            lists_for(&fixture, 2, accounts),
        );
        decisions.push(scaling::Contender {
            name: format!("allow/p{partners}_a{accounts}"),
            one: decide_job(&fixture, one.clone()),
            two: decide_job(&fixture, two.clone()),
        });
        decisions.push(scaling::Contender {
            name: format!("quota_path/p{partners}_a{accounts}"),
            one: quota_path_job(&fixture, one),
            two: quota_path_job(&fixture, two),
        });
    }
    let fixture = Fixture::new(2, 2, Shape::Allow);
    let job = protection_job(&fixture);
    decisions.push(scaling::Contender {
        name: "protection/admit".into(),
        one: job.clone(),
        two: job,
    });
    scaling::compare("scaling/decision", &decisions);
    let mut targets = vec![];
    for (shape, name, partners, accounts) in [
        (Shape::Allow, "allow", 10_000, 1_000_000),
        (Shape::Allow, "allow", 1, 1_000_000),
        (Shape::DenyPartner, "deny_partner", 100, 100),
        (Shape::DenyPartner, "deny_partner", 10_000, 10_000),
        (Shape::DenyAccount, "deny_account", 100, 10_000),
        (Shape::DenyAccount, "deny_account", 10_000, 1_000_000),
    ] {
        let fixture = Fixture::new(partners, accounts, shape);
        let (one, two) = (
            lists_for(&fixture, 1, accounts),
            lists_for(&fixture, 2, accounts),
        );
        one.iter()
            .chain(two.iter())
            .for_each(|l| fixture.verify(l, shape));
        targets.push(scaling::Contender {
            name: format!("{name}/p{partners}_a{accounts}"),
            one: decide_job(&fixture, one),
            two: decide_job(&fixture, two),
        });
    }
    scaling::compare("scaling/decision (targets)", &targets);
}

/// One hot partner, both threads sending as it: the whole decision (the partner's class quota,
/// its accounts, the biller's protection) beside governor's keyed limiter with both threads on
/// one key, in the same interleaved rounds. The target compares the two; both the rates and
/// the two-thread speed-ups are printed.
fn hot() {
    if !extra::selected("scaling/hot") {
        return;
    }
    let fixture = Fixture::new(1, 10_000, Shape::Allow);
    let (one, two) = (
        lists_for(&fixture, 1, 10_000),
        lists_for(&fixture, 2, 10_000),
    );
    one.iter()
        .chain(two.iter())
        .for_each(|l| fixture.verify(l, Shape::Allow));
    let mut contenders = vec![
        scaling::Contender {
            name: "allow/p1_a10000".into(),
            one: decide_job(&fixture, one.clone()),
            two: decide_job(&fixture, two.clone()),
        },
        scaling::Contender {
            name: "quota_path/p1_a10000".into(),
            one: quota_path_job(&fixture, one),
            two: quota_path_job(&fixture, two),
        },
    ];
    let (hot_key, hot_lists) = account_lists(1);
    let governor: Arc<dyn PerAccount> = Arc::new(GovernorU64::new());
    for (req, text) in &hot_key {
        assert!(governor.check(req, text), "governor refused");
    }
    let job = per_account_job(&governor, &hot_lists);
    contenders.push(scaling::Contender {
        name: "governor_dashmap_u64 (1 key)".into(),
        one: job.clone(),
        two: job,
    });
    scaling::compare("scaling/hot (one partner, one key)", &contenders);
}

fn lists_for(fixture: &Fixture, threads: usize, accounts: usize) -> Arc<Vec<Vec<Req>>> {
    lists(fixture, threads, list_len(accounts))
}

/// The per-account check alone: one table, every worker asking about random tracked accounts.
fn per_account(c: &mut Criterion) {
    for accounts in ACCOUNTS {
        let names = ["billgate", "governor_dashmap", "mutex_hashmap"];
        let name = |n: &str, t: usize| format!("per_account/{n}/a{accounts}_t{t}");
        if !names
            .iter()
            .any(|n| THREADS.iter().any(|&t| extra::selected(&name(n, t))))
        {
            continue;
        }
        let (keys, worker_lists) = account_lists(accounts);
        let impls = limiters(accounts);
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
                let job = per_account_job(&limiter, &worker_lists);
                let id = BenchmarkId::new(limiter.name(), param(threads));
                bench_threads(&mut group, id, threads, job);
            }
        }
        group.finish();
    }
}

/// The pieces every decision pays for whatever its shape: a clock reading, hashing an account,
/// finding the partner by key (cached, and by SHA-256 as every request did before the cache).
fn pieces(c: &mut Criterion) {
    let mut group = c.benchmark_group("pieces");
    let clock = billgate::clock::Clock::real();
    group.bench_function("clock_now", |b| b.iter(|| black_box(clock.now())));
    let rate = billgate::config::parse_rate(workload::HUGE).expect("rate");
    let limiter = billgate::admission::AccountLimiter::new(rate, 1, clock.clone());
    group.bench_function("account_key", |b| {
        b.iter(|| black_box(limiter.key(black_box("000123456789"))))
    });
    // Identifying a partner: a key already proven (the cache) and one never seen (SHA-256).
    let fixture_cfg = workload::config(1, 1, Shape::Allow);
    let keys = KeyIndex::new(fixture_cfg.partners.iter().map(|p| &p.keys_sha256[..]));
    let known = workload::key(0);
    assert_eq!(keys.find(known.as_bytes()), Some(PartnerId::new(0)));
    group.bench_function("key_cached", |b| {
        b.iter(|| black_box(keys.find(black_box(known.as_bytes()))))
    });
    let stranger = workload::key(1);
    group.bench_function("key_sha256", |b| {
        b.iter(|| black_box(keys.find(black_box(stranger.as_bytes()))))
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
    class_quota::class_quota(&mut c);
    scaling();
    hot();
    latency::ladder();
    extra::memory();
    extra::sweep();
    c.final_summary();
}
