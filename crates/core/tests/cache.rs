//! The answer cache on a fake clock: freshness, scopes, invalidation, ceilings, counters.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AGE, CACHE_CONTROL, CONTENT_TYPE, DATE};
use http::{HeaderMap, StatusCode};

use billgate_core::cache::*;
use billgate_core::clock::{Clock, FakeClock};

const MINUTE: Duration = Duration::from_secs(60);
const ROUTE: &str = "bill-inquiry";

fn cache(settings: CacheSettings) -> (AnswerCache, FakeClock) {
    let (clock, hand) = Clock::fake();
    (AnswerCache::new(settings, clock), hand)
}

fn small(max_entries: usize, max_bytes: u64) -> CacheSettings {
    CacheSettings {
        max_entries,
        max_bytes,
        ..CacheSettings::default()
    }
}

fn key(partner: &str, account: &str) -> CacheKey {
    KeyRef::new(ROUTE, Sharing::PerPartner, partner, account).to_key()
}

/// What the stand-in biller sends with a bill.
fn bill_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        DATE,
        HeaderValue::from_static("Tue, 01 Sep 2026 10:00:00 GMT"),
    );
    h
}

/// A bill-sized (≈200 B) JSON answer; equal length for every account of equal length.
fn bill(account: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"account":"{account}","biller":"City Water & Power","bill_id":"BILL-202610-2AE71495","period":"2026-10","amount_due":{{"value":"375.81","currency":"CNY"}},"due_date":"2026-12-15","status":"due"}}"#
    ))
}

fn store(cache: &AnswerCache, key: &CacheKey) -> Result<Arc<CachedAnswer>, NotStored> {
    store_with(cache, key, &bill_headers(), MINUTE)
}

fn store_with(
    cache: &AnswerCache,
    key: &CacheKey,
    headers: &HeaderMap,
    cache_for: Duration,
) -> Result<Arc<CachedAnswer>, NotStored> {
    let body = bill(key.account());
    cache.store(
        key.clone(),
        cache.now(),
        StatusCode::OK,
        headers,
        body,
        cache_for,
    )
}

/// The bytes one bill answer for a 7-character account is counted as.
fn one_entry_bytes() -> u64 {
    let (c, _) = cache(CacheSettings::default());
    store(&c, &key("wallet-a", "ACC-000")).expect("stored");
    c.stats().bytes
}

#[test]
fn a_stored_answer_is_a_hit_and_anything_else_a_miss() {
    let (c, _) = cache(CacheSettings::default());
    assert!(c.get(&key("wallet-a", "ACC-1")).is_none());
    let stored = store(&c, &key("wallet-a", "ACC-1")).expect("stored");
    let hit = c.get(&key("wallet-a", "ACC-1")).expect("hit");
    assert!(Arc::ptr_eq(&hit, &stored), "the same Arc, nothing rebuilt");
    assert_eq!(hit.body, bill("ACC-1"));
    assert!(c.get(&key("wallet-a", "ACC-2")).is_none());
    let s = c.stats();
    assert_eq!((s.hits, s.misses, s.stores, s.entries), (1, 2, 1, 1));
}

#[test]
fn peeking_counts_nothing() {
    let (c, _) = cache(CacheSettings::default());
    assert!(c.peek(&key("wallet-a", "ACC-1")).is_none());
    store(&c, &key("wallet-a", "ACC-1")).expect("stored");
    assert!(c.peek(&key("wallet-a", "ACC-1")).is_some());
    let s = c.stats();
    assert_eq!((s.hits, s.misses), (0, 0));
}

#[test]
fn expires_at_exactly_cache_for() {
    let (c, hand) = cache(CacheSettings::default());
    store(&c, &key("wallet-a", "ACC-1")).expect("stored");
    hand.advance(MINUTE - Duration::from_nanos(1));
    let hit = c
        .get(&key("wallet-a", "ACC-1"))
        .expect("fresh until the last nanosecond");
    assert_eq!(hit.age(c.now()), 59);
    assert_eq!(
        hit.headers_for(c.now(), CacheStatus::Hit).get(AGE),
        Some(&59.into())
    );
    hand.advance(Duration::from_nanos(1));
    assert!(c.get(&key("wallet-a", "ACC-1")).is_none());
    // The stale entry was dropped on the way.
    assert_eq!((c.stats().entries, c.stats().bytes), (0, 0));
}

#[test]
fn a_shorter_max_age_wins() {
    let (c, hand) = cache(CacheSettings::default());
    let mut h = bill_headers();
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=10"),
    );
    store_with(&c, &key("wallet-a", "ACC-1"), &h, MINUTE).expect("stored");
    hand.advance(Duration::from_millis(9_999));
    assert!(c.get(&key("wallet-a", "ACC-1")).is_some());
    hand.advance(Duration::from_millis(1));
    assert!(c.get(&key("wallet-a", "ACC-1")).is_none());
}

#[test]
fn forbidden_or_unsuitable_answers_are_not_stored() {
    let (c, hand) = cache(CacheSettings::default());
    hand.advance(MINUTE); // so an answer can be older than the clock's origin
    for (directive, why) in [
        ("no-store", NotStored::Directive),
        ("private, max-age=60", NotStored::Directive),
        ("no-cache", NotStored::Directive),
    ] {
        let mut h = bill_headers();
        h.insert(CACHE_CONTROL, HeaderValue::from_static(directive));
        assert_eq!(
            store_with(&c, &key("wallet-a", "ACC-1"), &h, MINUTE).err(),
            Some(why)
        );
    }
    let mut aged = bill_headers();
    aged.insert(AGE, HeaderValue::from_static("60"));
    let stale = store_with(&c, &key("wallet-a", "ACC-1"), &aged, MINUTE);
    assert_eq!(stale.err(), Some(NotStored::Stale));
    let not_found = c.store(
        key("wallet-a", "ACC-1"),
        c.now(),
        StatusCode::NOT_FOUND,
        &bill_headers(),
        Bytes::from_static(b"{}"),
        MINUTE,
    );
    assert_eq!(not_found.err(), Some(NotStored::Status));
    assert!(c.get(&key("wallet-a", "ACC-1")).is_none());
    let s = c.stats();
    assert_eq!((s.stores, s.entries, s.bytes), (0, 0, 0));
}

#[test]
fn partners_are_isolated_unless_the_route_shares() {
    let (c, _) = cache(CacheSettings::default());
    store(&c, &key("wallet-a", "ACC-1")).expect("stored");
    assert!(c.get(&key("wallet-a", "ACC-1")).is_some());
    assert!(
        c.get(&key("bank-b", "ACC-1")).is_none(),
        "one partner never sees another's"
    );

    let shared = |partner| KeyRef::new(ROUTE, Sharing::Shared, partner, "ACC-2");
    store(&c, &shared("wallet-a").to_key()).expect("stored");
    assert!(
        c.get(shared("bank-b")).is_some(),
        "a shared route serves everyone"
    );
    assert!(
        c.get(&key("bank-b", "ACC-2")).is_none(),
        "scopes stay apart"
    );
}

#[test]
fn a_payment_voids_the_account_everywhere_and_later_answers_are_served() {
    let (c, hand) = cache(CacheSettings::default());
    let keys = [
        KeyRef::new("bill-inquiry", Sharing::PerPartner, "wallet-a", "ACC-1"),
        KeyRef::new("bill-detail", Sharing::PerPartner, "bank-b", "ACC-1"),
        KeyRef::new("bill-inquiry", Sharing::Shared, "wallet-a", "ACC-1"),
    ];
    for k in keys {
        store(&c, &k.to_key()).expect("stored");
    }
    store(&c, &key("wallet-a", "ACC-2")).expect("stored");
    hand.advance(Duration::from_secs(1));
    c.invalidate_account("ACC-1");
    for k in keys {
        assert!(c.get(k).is_none(), "{k:?}");
    }
    assert!(
        c.get(&key("wallet-a", "ACC-2")).is_some(),
        "other accounts untouched"
    );
    assert_eq!(c.stats().entries, 1, "voided entries dropped when met");

    hand.advance(Duration::from_secs(1));
    for k in keys {
        store(&c, &k.to_key()).expect("stored after the payment");
        assert!(c.get(k).is_some(), "{k:?}");
    }
}

#[test]
fn an_inquiry_that_raced_a_payment_is_not_kept() {
    let (c, hand) = cache(CacheSettings::default());
    let requested_at = c.now();
    hand.advance(Duration::from_millis(200));
    c.invalidate_account("ACC-1"); // the payment's answer arrives while the inquiry is out
    hand.advance(Duration::from_millis(200));
    let raced = c.store(
        key("wallet-a", "ACC-1"),
        requested_at,
        StatusCode::OK,
        &bill_headers(),
        bill("ACC-1"),
        MINUTE,
    );
    assert_eq!(raced.err(), Some(NotStored::Invalidated));
    assert!(c.get(&key("wallet-a", "ACC-1")).is_none());
}

#[test]
fn evicts_at_the_entry_ceiling() {
    let (c, _) = cache(small(10, 64 * 1024 * 1024));
    for i in 0..15 {
        store(&c, &key("wallet-a", &format!("ACC-{i:03}"))).expect("stored");
    }
    let s = c.stats();
    assert_eq!((s.stores, s.entries, s.evictions), (15, 10, 5));
    assert_eq!(s.bytes, 10 * one_entry_bytes());
    let kept = (0..15)
        .filter(|i| c.get(&key("wallet-a", &format!("ACC-{i:03}"))).is_some())
        .count();
    assert_eq!(kept, 10);
}

#[test]
fn evicts_at_the_byte_ceiling() {
    let one = one_entry_bytes();
    let ceiling = 4 * one + one / 2;
    let (c, _) = cache(small(50, ceiling));
    for i in 0..10 {
        store(&c, &key("wallet-a", &format!("ACC-{i:03}"))).expect("stored");
        assert!(c.stats().bytes <= ceiling);
    }
    let s = c.stats();
    assert_eq!((s.stores, s.entries, s.evictions), (10, 4, 6));
    assert_eq!(s.bytes, 4 * one);
}

#[test]
fn replacing_an_answer_is_not_an_eviction_and_frees_the_old_bytes() {
    let (c, _) = cache(small(10, 1 << 20));
    let first = store(&c, &key("wallet-a", "ACC-001")).expect("stored");
    let second = store(&c, &key("wallet-a", "ACC-001")).expect("stored");
    assert!(Arc::ptr_eq(
        &c.get(&key("wallet-a", "ACC-001")).expect("hit"),
        &second
    ));
    assert!(!Arc::ptr_eq(&first, &second));
    let s = c.stats();
    assert_eq!((s.stores, s.entries, s.evictions), (2, 1, 0));
    assert_eq!(s.bytes, one_entry_bytes());
}

#[test]
fn oversize_answers_are_served_but_not_stored() {
    let (c, _) = cache(CacheSettings {
        max_body_bytes: 1000,
        ..CacheSettings::default()
    });
    let put = |len: usize| {
        c.store(
            key("wallet-a", "ACC-1"),
            c.now(),
            StatusCode::OK,
            &bill_headers(),
            Bytes::from(vec![b'x'; len]),
            MINUTE,
        )
    };
    assert_eq!(put(1001).err(), Some(NotStored::TooLarge));
    assert_eq!(c.stats().entries, 0);
    assert!(put(1000).is_ok());

    // An entry heavier than the whole cache is refused without disturbing what is there.
    let (tiny, _) = cache(small(10, 900));
    let fits = tiny.store(
        key("wallet-a", "ACC-1"),
        tiny.now(),
        StatusCode::OK,
        &HeaderMap::new(),
        Bytes::from_static(b"{}"),
        MINUTE,
    );
    assert!(fits.is_ok());
    let before = tiny.stats();
    let heavy = store(&tiny, &key("wallet-a", "ACC-2"));
    assert_eq!(heavy.err(), Some(NotStored::TooLarge));
    let after = tiny.stats();
    assert_eq!(
        (after.entries, after.bytes, after.evictions),
        (1, before.bytes, 0)
    );
}

#[test]
fn sweep_drops_what_can_no_longer_be_served() {
    let (c, hand) = cache(CacheSettings::default());
    for i in 0..5 {
        store(&c, &key("wallet-a", &format!("ACC-{i}"))).expect("stored");
    }
    c.invalidate_account("ACC-0");
    hand.advance(Duration::from_secs(1));
    store(&c, &key("wallet-a", "ACC-9")).expect("stored");
    c.sweep();
    assert_eq!(c.stats().entries, 5, "only the voided one went");
    hand.advance(MINUTE);
    c.sweep();
    let s = c.stats();
    assert_eq!((s.entries, s.bytes), (0, 0));
}

#[test]
fn hits_from_many_threads_add_up() {
    let (c, _) = cache(CacheSettings::default());
    store(&c, &key("wallet-a", "ACC-1")).expect("stored");
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..1000 {
                    assert!(c.get(&key("wallet-a", "ACC-1")).is_some());
                }
            });
        }
    });
    assert_eq!(c.stats().hits, 4000);
}

/// 10 000 accounts' bill-sized answers, as in the 2-minute polling storm, with the default
/// settings. Each is counted at about 1 000 bytes: a 200-byte body; three headers (content
/// type, date, ETag) at name + value + ~100 bytes of `HeaderMap` bucket and allocation each,
/// ≈ 450; the answer, key and slot structures and quick_cache's bookkeeping, ≈ 350. (A counting
/// global allocator around the same 10 000 stores measured 993 bytes of heap per answer.) So
/// 1 200 bytes an answer is a safe bound, and the whole storm takes under 12 MB — less than a
/// fifth of the 64 MiB budget, with nothing evicted.
#[test]
fn ten_thousand_bill_answers_take_about_ten_megabytes() {
    let (c, _) = cache(CacheSettings::default());
    for i in 0..10_000 {
        store(&c, &key("wallet-a", &format!("ACC-{i:05}"))).expect("stored");
    }
    let s = c.stats();
    eprintln!(
        "10 000 bill answers: {} bytes ({} per answer)",
        s.bytes,
        s.bytes / 10_000
    );
    assert_eq!((s.entries, s.evictions), (10_000, 0));
    assert!(s.bytes > 10_000 * 200, "at least the bodies are counted");
    assert!(s.bytes <= 10_000 * 1_200, "{} bytes", s.bytes);
}
