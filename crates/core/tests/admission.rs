//! Decision tests on a fake clock: every reason, its order, shadow mode and carry-over.

use std::time::Duration;

use http::Method;
use sha2::{Digest, Sha256};

use billgate_core::admission::*;
use billgate_core::clock::Clock;
use billgate_core::config::*;
use billgate_core::ids::{PartnerId, RouteId};
use std::sync::Arc;

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn rate(text: &str) -> Rate {
    parse_rate(text).unwrap()
}

fn partner(id: &str, key: &str, quotas: [Option<&str>; 3], per_account: Option<&str>) -> Partner {
    Partner {
        id: id.into(),
        keys_sha256: vec![digest(key)],
        client_cert_sha256: Vec::new(),
        quota: ClassQuotas(quotas.map(|q| q.map(rate))),
        per_account: per_account.map(rate),
        max_tracked_accounts: 3,
        mode: Mode::Enforce,
        webhooks: None,
    }
}

fn config(capacity: &str, partners: Vec<Partner>) -> Config {
    Config {
        server: Server {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            key_header: http::HeaderName::from_static("x-api-key"),
            origin_header: http::HeaderName::from_static("x-request-origin"),
            partner_header: http::HeaderName::from_static("x-billgate-partner"),
            max_body_bytes: 1024,
            access_log: false,
            admin_token_file: None,
            state_file: None,
            workers: None,
            listen_backlog: 4096,
            max_config_bytes: billgate_core::config::DEFAULT_MAX_CONFIG_BYTES,
            tls: None,
        },
        biller: Biller {
            url: BillerUrl {
                authority: "127.0.0.1:9".parse().unwrap(),
                base_path: String::new(),
                tls: false,
            },
            timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            capacity: rate(capacity),
            max_in_flight: 8,
            payment_reserve: 0.2,
            user_reserve: 0.2,
            pause_partner_header: None,
            breaker: BreakerConfig {
                failure_rate: 0.5,
                window: Duration::from_secs(10),
                min_calls: 20,
                open_for: Duration::from_secs(5),
            },
            ca_file: None,
            client_cert: None,
            client_key: None,
        },
        cache: Cache::default(),
        fleet: None,
        subscriptions: None,
        routes: vec![
            Route {
                name: "bill-inquiry".into(),
                method: Method::GET,
                path: PathTemplate {
                    raw: "/v1/bills/{account}".into(),
                    segments: vec![
                        Segment::Literal("v1".into()),
                        Segment::Literal("bills".into()),
                        Segment::Account,
                    ],
                },
                account: AccountSource::PathSegment,
                class: RouteClass::Inquiry,
                cache_for: None,
                cache_scope: CacheScope::Partner,
                account_field: None,
            },
            Route {
                name: "bill-payment".into(),
                method: Method::POST,
                path: PathTemplate {
                    raw: "/v1/payments".into(),
                    segments: vec![
                        Segment::Literal("v1".into()),
                        Segment::Literal("payments".into()),
                    ],
                },
                account: AccountSource::None,
                class: RouteClass::Payment,
                cache_for: None,
                cache_scope: CacheScope::Partner,
                account_field: None,
            },
        ]
        .into(),
        partners: partners.into(),
        source_sha256: String::new(),
        fleet_sha256: String::new(),
        warnings: Vec::new(),
    }
}

fn inquiry<'r>(key: &'r str, path: &'r str, user: bool) -> RequestParts<'r> {
    RequestParts {
        method: &Method::GET,
        path,
        query: None,
        key: Some(key.as_bytes()),
        origin_user: user,
        certificate: None,
    }
}

fn payment(key: &str) -> RequestParts<'_> {
    RequestParts {
        method: &Method::POST,
        path: "/v1/payments",
        query: None,
        key: Some(key.as_bytes()),
        origin_user: false,
        certificate: None,
    }
}

fn reason(d: Decision<'_, '_>) -> Option<Reason> {
    match d {
        Decision::Admit(_) => None,
        Decision::Deny(denied) => Some(denied.reason),
    }
}

#[test]
fn identifies_classifies_and_admits() {
    let (clock, _) = Clock::fake();
    let cfg = config(
        "100/s",
        vec![partner(
            "a",
            "ka",
            [Some("10/s"), Some("5/s"), Some("2/s")],
            None,
        )],
    );
    let gate = Gate::build(&cfg, None, &clock, &Suspensions::default());
    let Decision::Admit(a) = gate.decide(&inquiry("ka", "/v1/bills/77", true)) else {
        panic!("denied")
    };
    assert_eq!(
        (a.partner, a.class, a.route, a.account),
        (
            PartnerId::new(0),
            Class::InquiryUser,
            RouteId::new(0),
            Some("77")
        )
    );
    assert_eq!(a.limit.policy, Policy::Class(Class::InquiryUser));
    assert_eq!(a.limit.remaining.remaining, 4);
    let Decision::Admit(a) = gate.decide(&inquiry("ka", "/v1/bills/77", false)) else {
        panic!("denied")
    };
    assert_eq!(a.class, Class::InquiryScheduled);
    let Decision::Admit(a) = gate.decide(&payment("ka")) else {
        panic!("denied")
    };
    assert_eq!((a.class, a.account), (Class::Payment, None));
}

/// A verified client certificate identifies its partner; a key beside it must be that
/// partner's; a partner listing certificates is not reached by its key alone.
#[test]
fn a_client_certificate_identifies_its_partner_and_a_key_must_agree() {
    let (clock, _) = Clock::fake();
    let mut bank = partner("bank-b", "kb", [Some("10/s"), Some("10/s"), None], None);
    bank.client_cert_sha256 = vec![[0xa0; 32], CERT_B];
    let wallet = partner("wallet-a", "ka", [Some("10/s"), None, None], None);
    let gate = Gate::build(
        &config("100/s", vec![wallet, bank]),
        None,
        &clock,
        &Suspensions::default(),
    );
    let bank_id = PartnerId::new(1);
    let with = |key: Option<&'static str>, certificate: Option<&'static [u8; 32]>| RequestParts {
        key: key.map(str::as_bytes),
        certificate,
        ..payment("")
    };
    static CERT_B: [u8; 32] = [0xb0; 32];
    static STRANGER: [u8; 32] = [0xee; 32];
    // Certificate alone, or with the same partner's key.
    for request in [with(None, Some(&CERT_B)), with(Some("kb"), Some(&CERT_B))] {
        let Decision::Admit(a) = gate.decide(&request) else {
            panic!("denied")
        };
        assert_eq!((a.partner, a.class), (bank_id, Class::Payment));
    }
    let denied = |request: RequestParts<'_>| match gate.decide(&request) {
        Decision::Deny(d) => (d.reason, d.partner),
        Decision::Admit(a) => panic!("admitted as {:?}", a.partner),
    };
    // Another partner's key, or a key of no one, beside the certificate.
    assert_eq!(
        denied(with(Some("ka"), Some(&CERT_B))),
        (Reason::KeyCertificateMismatch, Some(bank_id))
    );
    assert_eq!(
        denied(with(Some("nobody"), Some(&CERT_B))),
        (Reason::KeyCertificateMismatch, Some(bank_id))
    );
    // The bank's key without its certificate, or with a certificate no partner lists.
    assert_eq!(
        denied(with(Some("kb"), None)),
        (Reason::CertificateRequired, Some(bank_id))
    );
    assert_eq!(
        denied(with(Some("kb"), Some(&STRANGER))),
        (Reason::CertificateRequired, Some(bank_id))
    );
    // A certificate no one lists identifies no one: the key decides, as without TLS.
    let Decision::Admit(a) = gate.decide(&with(Some("ka"), Some(&STRANGER))) else {
        panic!("denied")
    };
    assert_eq!(a.partner, PartnerId::new(0));
    assert_eq!(denied(with(None, Some(&STRANGER))).0, Reason::MissingKey);
}

#[test]
fn refuses_in_order_key_route_class() {
    let (clock, _) = Clock::fake();
    let cfg = config(
        "100/s",
        vec![partner("a", "ka", [Some("10/s"), None, None], None)],
    );
    let gate = Gate::build(&cfg, None, &clock, &Suspensions::default());
    let mut no_key = inquiry("ka", "/nowhere", false);
    no_key.key = None;
    assert_eq!(reason(gate.decide(&no_key)), Some(Reason::MissingKey));
    assert_eq!(
        reason(gate.decide(&inquiry("kx", "/nowhere", false))),
        Some(Reason::UnknownKey)
    );
    assert_eq!(
        reason(gate.decide(&inquiry("ka", "/nowhere", false))),
        Some(Reason::NoRoute)
    );
    assert_eq!(
        reason(gate.decide(&inquiry("ka", "/v1/bills/1", true))),
        Some(Reason::ClassClosed)
    );
    assert_eq!(reason(gate.decide(&payment("ka"))), None);
}

#[test]
fn partner_quota_denies_with_the_limiters_wait() {
    let (clock, hand) = Clock::fake();
    let cfg = config(
        "100/s",
        vec![partner("a", "ka", [None, None, Some("2/s")], None)],
    );
    let gate = Gate::build(&cfg, None, &clock, &Suspensions::default());
    assert_eq!(
        reason(gate.decide(&inquiry("ka", "/v1/bills/1", false))),
        None
    );
    assert_eq!(
        reason(gate.decide(&inquiry("ka", "/v1/bills/2", false))),
        None
    );
    let Decision::Deny(d) = gate.decide(&inquiry("ka", "/v1/bills/3", false)) else {
        panic!("admitted")
    };
    assert_eq!(d.reason, Reason::PartnerQuota);
    assert_eq!(d.retry_after, Some(Duration::from_millis(500)));
    assert_eq!(
        d.limit.unwrap().policy,
        Policy::Class(Class::InquiryScheduled)
    );
    hand.advance(Duration::from_millis(500));
    assert_eq!(
        reason(gate.decide(&inquiry("ka", "/v1/bills/3", false))),
        None
    );
}

#[test]
fn per_account_quota_is_per_account_and_per_partner() {
    let (clock, hand) = Clock::fake();
    let cfg = config(
        "100/s",
        vec![
            partner(
                "a",
                "ka",
                [Some("50/s"), Some("50/s"), Some("50/s")],
                Some("2/min"),
            ),
            partner(
                "b",
                "kb",
                [Some("50/s"), Some("50/s"), Some("50/s")],
                Some("2/min"),
            ),
        ],
    );
    let gate = Gate::build(&cfg, None, &clock, &Suspensions::default());
    for _ in 0..2 {
        assert_eq!(
            reason(gate.decide(&inquiry("ka", "/v1/bills/9", false))),
            None
        );
    }
    let Decision::Deny(d) = gate.decide(&inquiry("ka", "/v1/bills/9", true)) else {
        panic!("admitted")
    };
    assert_eq!(
        (d.reason, d.retry_after),
        (Reason::AccountQuota, Some(Duration::from_secs(30)))
    );
    assert_eq!(d.limit.unwrap().policy, Policy::PerAccount);
    // Another account, another partner, and payments are untouched.
    assert_eq!(
        reason(gate.decide(&inquiry("ka", "/v1/bills/10", false))),
        None
    );
    assert_eq!(
        reason(gate.decide(&inquiry("kb", "/v1/bills/9", false))),
        None
    );
    assert_eq!(reason(gate.decide(&payment("ka"))), None);
    hand.advance(Duration::from_secs(30));
    assert_eq!(
        reason(gate.decide(&inquiry("ka", "/v1/bills/9", false))),
        None
    );
}

#[test]
fn account_table_is_bounded_and_swept() {
    let (clock, hand) = Clock::fake();
    let cfg = config(
        "1000/s",
        vec![partner("a", "ka", [None, None, Some("500/s")], Some("1/s"))],
    );
    let gate = Gate::build(&cfg, None, &clock, &Suspensions::default());
    let accounts = gate.partners()[PartnerId::new(0)].accounts.clone().unwrap();
    for n in 0..3 {
        let path = format!("/v1/bills/{n}");
        assert_eq!(reason(gate.decide(&inquiry("ka", &path, false))), None);
    }
    assert_eq!(accounts.tracked(), 3);
    assert_eq!(
        reason(gate.decide(&inquiry("ka", "/v1/bills/new", false))),
        Some(Reason::AccountTableFull)
    );
    // Nothing is idle yet: a sweep keeps all three.
    gate.sweep_accounts();
    assert_eq!((accounts.tracked(), accounts.evicted()), (3, 0));
    // A state is forgotten once it is fresh again: one interval after its request.
    hand.advance(Duration::from_millis(999));
    gate.sweep_accounts();
    assert_eq!(accounts.tracked(), 3);
    hand.advance(Duration::from_millis(1));
    gate.sweep_accounts();
    assert_eq!((accounts.tracked(), accounts.evicted()), (0, 3));
    assert_eq!(
        reason(gate.decide(&inquiry("ka", "/v1/bills/new", false))),
        None
    );
}

#[test]
fn shadow_mode_admits_and_names_the_would_be_refusal() {
    let (clock, _) = Clock::fake();
    let mut p = partner("s", "ks", [None, None, Some("1/s")], Some("1/min"));
    p.mode = Mode::Shadow;
    let gate = Gate::build(
        &config("100/s", vec![p]),
        None,
        &clock,
        &Suspensions::default(),
    );
    let Decision::Admit(a) = gate.decide(&inquiry("ks", "/v1/bills/1", false)) else {
        panic!()
    };
    assert_eq!(a.shadow, None);
    let Decision::Admit(a) = gate.decide(&inquiry("ks", "/v1/bills/1", false)) else {
        panic!()
    };
    assert_eq!(a.shadow, Some(Reason::PartnerQuota));
    assert_eq!(a.limit.remaining.remaining, 0);
    // A closed class is an access rule, not a limit: shadow mode does not open it.
    assert_eq!(
        reason(gate.decide(&payment("ks"))),
        Some(Reason::ClassClosed)
    );
}

#[test]
fn biller_budget_is_shared_by_all_partners() {
    let (clock, _) = Clock::fake();
    let q = [Some("100/s"), Some("100/s"), Some("100/s")];
    let cfg = config(
        "3/s",
        vec![partner("a", "ka", q, None), partner("b", "kb", q, None)],
    );
    let gate = Gate::build(&cfg, None, &clock, &Suspensions::default());
    assert_eq!(reason(gate.decide(&payment("ka"))), None);
    assert_eq!(reason(gate.decide(&payment("kb"))), None);
    assert_eq!(reason(gate.decide(&payment("ka"))), None);
    let Decision::Deny(d) = gate.decide(&payment("kb")) else {
        panic!()
    };
    // The three are a second's capacity: room comes back when they are a second old (not
    // after one emission interval, which would let a fourth into the same second).
    assert_eq!(
        (d.reason, d.retry_after),
        (Reason::BillerCapacity, Some(Duration::from_secs(1)))
    );
}

#[test]
fn a_rebuild_carries_over_unchanged_quotas_only() {
    let (clock, _) = Clock::fake();
    // One registry of partner cells for every gate, as the proxy keeps it.
    let cells = Suspensions::default();
    let q = [Some("10/s"), None, Some("1/s")];
    let old = Gate::build(
        &config(
            "100/s",
            vec![
                partner("a", "ka", q, Some("1/s")),
                partner("b", "kb", q, None),
            ],
        ),
        None,
        &clock,
        &cells,
    );
    assert_eq!(
        reason(old.decide(&inquiry("ka", "/v1/bills/1", false))),
        None
    );
    assert_eq!(
        reason(old.decide(&inquiry("ka", "/v1/bills/1", false))),
        Some(Reason::PartnerQuota)
    );
    // b spends its whole payment burst and its one scheduled poll.
    let payments = |gate: &Gate| {
        std::iter::from_fn(|| reason(gate.decide(&payment("kb"))).is_none().then_some(()))
            .take(100)
            .count()
    };
    assert_eq!(payments(&old), 10);
    assert_eq!(
        reason(old.decide(&inquiry("kb", "/v1/bills/1", false))),
        None
    );
    let mut b = partner("b", "kb", q, None);
    b.quota.0[Class::Payment.index()] = Some(rate("20/s"));
    let new = Gate::build(
        &config("100/s", vec![partner("a", "ka", q, Some("1/s")), b]),
        Some(&old),
        &clock,
        &cells,
    );
    // a's spent scheduled quota is still spent after the rebuild: the same cell.
    assert_eq!(
        reason(new.decide(&inquiry("ka", "/v1/bills/2", false))),
        Some(Reason::PartnerQuota)
    );
    let (a_old, a_new) = (
        &old.partners()[PartnerId::new(0)],
        &new.partners()[PartnerId::new(0)],
    );
    assert_eq!(a_old.cell.slot(), a_new.cell.slot());
    assert!(std::ptr::eq(&*a_old.cell, &*a_new.cell));
    assert!(a_old
        .accounts
        .as_ref()
        .unwrap()
        .same_state(a_new.accounts.as_ref().unwrap()));
    assert!(Arc::ptr_eq(old.accounts(), new.accounts()));
    // b's payment rate changed: a fresh quota of 20. Its scheduled one did not: still spent.
    assert_eq!(payments(&new), 20);
    assert_eq!(
        reason(new.decide(&inquiry("kb", "/v1/bills/2", false))),
        Some(Reason::PartnerQuota)
    );
    // Back on the old snapshot (a decision racing the reload): the arrival times are the
    // new gate's too, so nothing is spent twice over.
    assert_eq!(
        reason(old.decide(&inquiry("kb", "/v1/bills/3", false))),
        Some(Reason::PartnerQuota)
    );
}

/// A sharded quota (a burst of 16 per core or more) keeps its own cells, carried over by
/// sharing them when its rate did not change.
#[test]
fn a_rebuild_shares_an_unchanged_sharded_quota() {
    let (clock, _) = Clock::fake();
    let cells = Suspensions::default();
    let q = [Some("10000/s"), None, Some("1/s")];
    let build = |payment: &str, previous: Option<&Gate>| {
        let mut p = partner("a", "ka", q, None);
        p.quota.0[Class::Payment.index()] = Some(rate(payment));
        Gate::build(&config("100000/s", vec![p]), previous, &clock, &cells)
    };
    let old = build("10000/s", None);
    let same = build("10000/s", Some(&old));
    let changed = build("20000/s", Some(&same));
    let quota = |g: &Gate| {
        g.partners()[PartnerId::new(0)].quotas[Class::Payment.index()]
            .clone()
            .unwrap()
    };
    assert_eq!(
        quota(&old).is_one_cell(),
        billgate_core::shards::count() == 1
    );
    if !quota(&old).is_one_cell() {
        assert!(quota(&old).same_state(&quota(&same)));
        assert!(!quota(&same).same_state(&quota(&changed)));
    }
}

#[test]
fn a_suspended_partner_is_refused_before_anything_else() {
    let (clock, _) = Clock::fake();
    let suspensions = Suspensions::default();
    let cfg = config(
        "100/s",
        vec![partner("a", "ka", [Some("10/s"), None, None], None)],
    );
    let gate = Gate::build(&cfg, None, &clock, &suspensions);
    suspensions.suspend(
        "a",
        Suspension {
            reason: "unpaid fees".into(),
            since_unix: 1,
        },
    );
    let Decision::Deny(d) = gate.decide(&payment("ka")) else {
        panic!("admitted")
    };
    assert_eq!(
        (d.reason, d.partner),
        (Reason::Suspended, Some(PartnerId::new(0)))
    );
    // A rebuilt gate (a reload) still sees the suspension.
    let rebuilt = Gate::build(&cfg, Some(&gate), &clock, &suspensions);
    assert_eq!(
        reason(rebuilt.decide(&payment("ka"))),
        Some(Reason::Suspended)
    );
    suspensions.resume("a");
    assert_eq!(reason(gate.decide(&payment("ka"))), None);
}

#[test]
fn a_ticket_holds_its_slot_until_dropped_even_owned_past_its_gate() {
    let (clock, _) = Clock::fake();
    let q = [Some("100/s"), Some("100/s"), Some("100/s")];
    let cfg = config("100/s", vec![partner("a", "ka", q, None)]);
    let gate = Gate::build(&cfg, None, &clock, &Suspensions::default());
    let protection = Arc::clone(gate.protection());
    let Decision::Admit(borrowed) = gate.decide(&payment("ka")) else {
        panic!("refused")
    };
    // An owned ticket outlives the gate that admitted it, and still frees its slot.
    let owned = match gate.decide(&payment("ka")) {
        Decision::Admit(admitted) => admitted.ticket.into_owned(),
        Decision::Deny(denied) => panic!("{denied:?}"),
    };
    assert_eq!(protection.concurrency.in_flight(), 2);
    drop(borrowed);
    assert_eq!(protection.concurrency.in_flight(), 1);
    drop(gate);
    assert_eq!(protection.concurrency.in_flight(), 1);
    owned.finish(BillerOutcome::NotSent);
    assert_eq!(protection.concurrency.in_flight(), 0);
}

#[test]
fn a_rebuild_keeps_the_biller_budget_while_its_settings_stay() {
    let (clock, _) = Clock::fake();
    let q = [Some("100/s"), Some("100/s"), Some("100/s")];
    let cfg = config("3/s", vec![partner("a", "ka", q, None)]);
    let old = Gate::build(&cfg, None, &clock, &Suspensions::default());
    for _ in 0..3 {
        assert_eq!(reason(old.decide(&payment("ka"))), None);
    }
    let kept = Gate::build(&cfg, Some(&old), &clock, &Suspensions::default());
    assert!(kept
        .protection()
        .budget
        .same_state(&old.protection().budget));
    assert_eq!(
        reason(kept.decide(&payment("ka"))),
        Some(Reason::BillerCapacity)
    );
    let changed = Gate::build(
        &config("4/s", vec![partner("a", "ka", q, None)]),
        Some(&kept),
        &clock,
        &Suspensions::default(),
    );
    assert_eq!(reason(changed.decide(&payment("ka"))), None);
}
