//! Zero heap allocations per admission decision once warm, counted by a counting global
//! allocator: on the allow path (with and without an account) and on every kind of denial.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use billgate::admission::{Decision, Gate, Reason, RequestParts, Suspensions};
use billgate::clock::Clock;
use billgate::config::{self, ClassQuotas, Config, Mode, Partner};
use http::Method;
use sha2::{Digest, Sha256};

/// Counts the allocations made by the current thread (tests run on threads of their own).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches no allocated memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const KEY: &str = "bk_live_wallet_0123456789abcdef";

fn gate(class_quota: &str, per_account: &str, ceiling: usize, capacity: &str) -> Gate {
    let mut cfg: Config = config::load_str(config::DEFAULT_CONFIG, "config.toml").unwrap();
    let rate = |text: &str| config::parse_rate(text).unwrap();
    cfg.biller.capacity = rate(capacity);
    cfg.partners = vec![Partner {
        id: "wallet".into(),
        keys_sha256: vec![Sha256::digest(KEY.as_bytes()).into()],
        client_cert_sha256: Vec::new(),
        quota: ClassQuotas([Some(rate("1000000/s")), None, Some(rate(class_quota))]),
        per_account: Some(rate(per_account)),
        max_tracked_accounts: ceiling,
        mode: Mode::Enforce,
        webhooks: None,
    }]
    .into();
    Gate::build(&cfg, None, &Clock::real(), &Suspensions::default())
}

fn parts<'r>(method: &'r Method, path: &'r str, key: Option<&'r str>) -> RequestParts<'r> {
    RequestParts {
        method,
        path,
        query: None,
        key: key.map(str::as_bytes),
        origin_user: false,
        certificate: None,
    }
}

/// Decides every request `rounds` times after one warming round; returns the allocations
/// made by the counted rounds and the last decision's reason.
fn allocations_deciding(gate: &Gate, requests: &[RequestParts<'_>], rounds: usize) -> u64 {
    for request in requests {
        drop(gate.decide(request));
    }
    let before = allocations();
    for _ in 0..rounds {
        for request in requests {
            drop(gate.decide(request));
        }
    }
    allocations() - before
}

fn reason(gate: &Gate, request: &RequestParts<'_>) -> Option<Reason> {
    match gate.decide(request) {
        Decision::Admit(_) => None,
        Decision::Deny(denied) => Some(denied.reason),
    }
}

fn inquiry_paths(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("/v1/bills/{:012}", i * 7919))
        .collect()
}

#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let boxed = std::hint::black_box(Box::new([0u8; 64]));
    assert_eq!(allocations() - before, 1);
    drop(boxed);
}

#[test]
fn the_allow_path_allocates_nothing() {
    let gate = gate("1000000/s", "1000000/s", 10_000, "1000000/s");
    let paths = inquiry_paths(1_000);
    let mut requests: Vec<RequestParts<'_>> = paths
        .iter()
        .map(|p| parts(&Method::GET, p, Some(KEY)))
        .collect();
    requests.push(parts(&Method::POST, "/v1/payments", Some(KEY)));
    assert!(requests.iter().all(|r| reason(&gate, r).is_none()));
    assert_eq!(allocations_deciding(&gate, &requests, 10), 0);
}

#[test]
fn every_denial_allocates_nothing() {
    let paths = inquiry_paths(100);
    let inquiries = |key| -> Vec<RequestParts<'_>> {
        paths.iter().map(|p| parts(&Method::GET, p, key)).collect()
    };
    let cases: Vec<(Gate, Vec<RequestParts<'_>>, Reason)> = vec![
        (
            gate("1/h", "1000000/s", 10_000, "1000000/s"),
            inquiries(Some(KEY)),
            Reason::PartnerQuota,
        ),
        (
            gate("1000000/s", "1/h", 10_000, "1000000/s"),
            inquiries(Some(KEY)),
            Reason::AccountQuota,
        ),
        (
            gate("1000000/s", "1000000/s", 50, "1000000/s"),
            inquiries(Some(KEY)),
            Reason::AccountTableFull,
        ),
        (
            gate("1000000/s", "1000000/s", 10_000, "10/h"),
            inquiries(Some(KEY)),
            Reason::BillerCapacity,
        ),
        (
            gate("1000000/s", "1000000/s", 10_000, "1000000/s"),
            inquiries(Some("not-a-key")),
            Reason::UnknownKey,
        ),
        (
            gate("1000000/s", "1000000/s", 10_000, "1000000/s"),
            inquiries(None),
            Reason::MissingKey,
        ),
        (
            gate("1000000/s", "1000000/s", 10_000, "1000000/s"),
            vec![parts(&Method::GET, "/v1/nowhere", Some(KEY))],
            Reason::NoRoute,
        ),
        (
            gate("1000000/s", "1000000/s", 10_000, "1000000/s"),
            vec![RequestParts {
                origin_user: true,
                certificate: None,
                ..parts(&Method::GET, "/v1/bills/1", Some(KEY))
            }],
            Reason::ClassClosed,
        ),
    ];
    for (gate, requests, want) in cases {
        // Spend what the case needs spent (quotas, the first 50 accounts, the budget).
        for request in &requests {
            drop(gate.decide(request));
        }
        let last = requests.last().unwrap();
        assert_eq!(reason(&gate, last), Some(want));
        assert_eq!(allocations_deciding(&gate, &requests, 10), 0, "{want:?}");
    }
}
