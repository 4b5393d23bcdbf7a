//! The subscription API over real sockets: a gateway with `[subscriptions]` on a SQLite store
//! of the test's own, the stand-in biller, and partners subscribing, listing and deleting.

use crate::common;
use crate::hooks;

use bytes::Bytes;
use common::*;
use hooks::{Received, Receiver};
use http::{Method, StatusCode};

const BANK_KEY: &str = "bank-b-key";
const WALLET_KEY: &str = "wallet-a-key";
const CLOSED_KEY: &str = "closed-c-key";
const PREFIX: &str = "https://hooks.bank-b.example/billgate/";

/// bank-b's and wallet-a's signing secrets and the biller's token, in `dir`.
fn write_secrets(dir: &TempDir) {
    for (file, text) in [
        ("bank-b.whsec", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"),
        ("wallet-a.whsec", "whsec_c2VjcmV0LW9mLXdhbGxldC1h\n"),
        ("biller.token", "biller-events-token\n"),
    ] {
        std::fs::write(dir.join(file), text).expect("a secret file");
    }
}

/// A gateway whose bank-b may subscribe (2/s burst 4, at most 3 subscriptions), wallet-a may
/// too (its own prefix), closed-c may not; the store and the secrets in `dir`.
async fn gateway(biller: &TestBiller, dir: &TempDir, extra: &str) -> TestGateway {
    write_secrets(dir);
    std::fs::write(dir.join("admin.token"), "admin-token\n").expect("token");
    let partners = format!(
        "{}{}{}",
        partner(
            "bank-b",
            BANK_KEY,
            "payment = \"10/s\", subscription = \"2/s burst 4\"",
            &format!(
                "max_subscriptions = 3\nwebhook_prefixes = [\"{PREFIX}\"]\nwebhook_secret_file = \"{}\"",
                dir.join("bank-b.whsec").display()
            ),
        ),
        partner(
            "wallet-a",
            WALLET_KEY,
            "subscription = \"100/s\"",
            &format!(
                "webhook_prefixes = [\"https://hooks.wallet-a.example/\"]\nwebhook_secret_file = \"{}\"",
                dir.join("wallet-a.whsec").display()
            ),
        ),
        partner("closed-c", CLOSED_KEY, "payment = \"10/s\"", ""),
    );
    let text = config_toml(&biller.url(), "2s", "10000/s", &partners).replacen(
        "max_body_bytes = 4096",
        &format!(
            "max_body_bytes = 4096\nadmin_token_file = \"{}\"",
            dir.join("admin.token").display()
        ),
        1,
    );
    let block = format!(
        "[subscriptions]\nstore = \"sqlite://{}\"\nrefresh = \"1h\"\nbiller_token_file = \"{}\"\n{extra}",
        dir.join("billgate.db").display(),
        dir.join("biller.token").display()
    );
    TestGateway::start(load(&with_block(&text, &block))).await
}

/// Subscribes, and asserts a new subscription was made (201).
async fn subscribed(gw: &TestGateway, key: &str, account: &str, callback: &str) {
    let reply = subscribe(gw, key, account, callback).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
}

async fn subscribe(gw: &TestGateway, key: &str, account: &str, callback: &str) -> Reply {
    let body = serde_json::json!({ "account": account, "callback": callback }).to_string();
    send(
        Method::POST,
        &gw.url("/v1/subscriptions"),
        &[("x-api-key", key), ("content-type", "application/json")],
        body,
    )
    .await
}

#[tokio::test]
async fn partners_subscribe_list_and_delete_their_own() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("subs-api");
    let gw = gateway(&biller, &dir, "").await;

    let created = subscribe(&gw, BANK_KEY, "100234", &format!("{PREFIX}a")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let first = created.json();
    let id = first["id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("sub_"), "{first}");
    assert_eq!(first["account"], "100234");
    assert_eq!(
        created.header("ratelimit-policy"),
        Some("\"subscription\";q=2;w=1")
    );

    // The same partner, account and callback: the same subscription, 200.
    let again = subscribe(&gw, BANK_KEY, "100234", &format!("{PREFIX}a")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["id"], id.as_str());

    gw.hand.advance(std::time::Duration::from_secs(10));
    let other = subscribe(&gw, BANK_KEY, "100235", &format!("{PREFIX}a")).await;
    assert_eq!(other.status, StatusCode::CREATED);
    let third = subscribe(&gw, BANK_KEY, "100236", &format!("{PREFIX}b")).await;
    assert_eq!(third.status, StatusCode::CREATED);
    gw.hand.advance(std::time::Duration::from_secs(10));
    let over = subscribe(&gw, BANK_KEY, "100237", &format!("{PREFIX}b")).await;
    assert_eq!(over.status, StatusCode::FORBIDDEN, "{}", over.text());
    assert_eq!(over.json()["reason"], "max_subscriptions");
    assert_eq!(
        over.header("content-type"),
        Some("application/problem+json")
    );

    // Pages of two: every subscription once, in order.
    let page = get(
        &gw.url("/v1/subscriptions?limit=2"),
        &[("x-api-key", BANK_KEY)],
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let page = page.json();
    assert_eq!(page["subscriptions"].as_array().map(Vec::len), Some(2));
    let cursor = page["next_cursor"].as_str().unwrap_or_default().to_owned();
    gw.hand.advance(std::time::Duration::from_secs(10));
    let rest = get(
        &gw.url(&format!("/v1/subscriptions?limit=2&cursor={cursor}")),
        &[("x-api-key", BANK_KEY)],
    )
    .await
    .json();
    assert_eq!(rest["subscriptions"].as_array().map(Vec::len), Some(1));
    assert!(rest["next_cursor"].is_null());
    let mut accounts: Vec<String> = page["subscriptions"]
        .as_array()
        .into_iter()
        .chain(rest["subscriptions"].as_array())
        .flatten()
        .map(|s| s["account"].as_str().unwrap_or_default().to_owned())
        .collect();
    accounts.sort();
    assert_eq!(accounts, ["100234", "100235", "100236"]);

    // Another partner sees none of them, and cannot read or delete one.
    let theirs = get(
        &gw.url(&format!("/v1/subscriptions/{id}")),
        &[("x-api-key", WALLET_KEY)],
    )
    .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(theirs.json()["reason"], "no_such_subscription");
    let listed = get(&gw.url("/v1/subscriptions"), &[("x-api-key", WALLET_KEY)])
        .await
        .json();
    assert_eq!(listed["subscriptions"].as_array().map(Vec::len), Some(0));
    let deleted = send(
        Method::DELETE,
        &gw.url(&format!("/v1/subscriptions/{id}")),
        &[("x-api-key", WALLET_KEY)],
        Bytes::new(),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NOT_FOUND);

    gw.hand.advance(std::time::Duration::from_secs(10));
    let mine = get(
        &gw.url(&format!("/v1/subscriptions/{id}")),
        &[("x-api-key", BANK_KEY)],
    )
    .await;
    assert_eq!(mine.status, StatusCode::OK);
    assert_eq!(mine.json()["callback"], format!("{PREFIX}a"));
    let deleted = send(
        Method::DELETE,
        &gw.url(&format!("/v1/subscriptions/{id}")),
        &[("x-api-key", BANK_KEY)],
        Bytes::new(),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(deleted.body.is_empty());
    let gone = get(
        &gw.url(&format!("/v1/subscriptions/{id}")),
        &[("x-api-key", BANK_KEY)],
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    // Room again under the limit.
    let room = subscribe(&gw, BANK_KEY, "100237", &format!("{PREFIX}b")).await;
    assert_eq!(room.status, StatusCode::CREATED);
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn bad_subscriptions_and_strangers_are_refused_with_problems() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("subs-refused");
    let gw = gateway(&biller, &dir, "").await;
    let cases: [(&str, &str, StatusCode, &str); 5] = [
        (
            "100234",
            "https://evil.example/billgate/",
            StatusCode::BAD_REQUEST,
            "callback_not_allowed",
        ),
        (
            "100234",
            "https://hooks.bank-b.example/billgate/../admin",
            StatusCode::BAD_REQUEST,
            "bad_callback",
        ),
        (
            "100234",
            "http://hooks.bank-b.example/billgate/",
            StatusCode::BAD_REQUEST,
            "callback_not_allowed",
        ),
        (
            "../x",
            &format!("{PREFIX}a"),
            StatusCode::BAD_REQUEST,
            "bad_account",
        ),
        (
            "",
            &format!("{PREFIX}a"),
            StatusCode::BAD_REQUEST,
            "bad_account",
        ),
    ];
    for (account, callback, status, reason) in cases {
        gw.hand.advance(std::time::Duration::from_secs(1));
        let reply = subscribe(&gw, BANK_KEY, account, callback).await;
        assert_eq!(
            (reply.status, reply.json()["reason"].clone()),
            (status, reason.into()),
            "{account} {callback}"
        );
    }
    let not_json = send(
        Method::POST,
        &gw.url("/v1/subscriptions"),
        &[("x-api-key", BANK_KEY)],
        "account=1",
    )
    .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_json.json()["reason"], "invalid_body");

    let anonymous = get(&gw.url("/v1/subscriptions"), &[]).await;
    assert_eq!(
        (anonymous.status, anonymous.json()["reason"].clone()),
        (StatusCode::UNAUTHORIZED, "missing_key".into())
    );
    let unknown = get(&gw.url("/v1/subscriptions"), &[("x-api-key", "nobody")]).await;
    assert_eq!(
        (unknown.status, unknown.json()["reason"].clone()),
        (StatusCode::UNAUTHORIZED, "unknown_key".into())
    );
    let closed = get(&gw.url("/v1/subscriptions"), &[("x-api-key", CLOSED_KEY)]).await;
    assert_eq!(
        (closed.status, closed.json()["reason"].clone()),
        (StatusCode::FORBIDDEN, "class_closed".into())
    );
    let put = send(
        Method::PUT,
        &gw.url("/v1/subscriptions"),
        &[("x-api-key", WALLET_KEY)],
        Bytes::new(),
    )
    .await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(put.header("allow"), Some("GET, POST"));

    // The quota: a burst of 4, then 429 with Retry-After, on a clock that does not move.
    gw.hand.advance(std::time::Duration::from_secs(10));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            get(&gw.url("/v1/subscriptions"), &[("x-api-key", BANK_KEY)])
                .await
                .status,
        );
    }
    let refused = get(&gw.url("/v1/subscriptions"), &[("x-api-key", BANK_KEY)]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json()["reason"], "partner_quota");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        4,
        "{statuses:?}"
    );
    // None of it reached the biller.
    assert_eq!(biller.biller.stats().received, 0);

    // Suspended: 403 suspended, as on every other path.
    let suspend = send(
        Method::POST,
        &gw.admin_url("/admin/partners/bank-b/suspend"),
        &[("authorization", "Bearer admin-token")],
        Bytes::from_static(b"{\"reason\": \"test\"}"),
    )
    .await;
    assert_eq!(suspend.status, StatusCode::OK, "{}", suspend.text());
    gw.hand.advance(std::time::Duration::from_secs(10));
    let suspended = get(&gw.url("/v1/subscriptions"), &[("x-api-key", BANK_KEY)]).await;
    assert_eq!(suspended.status, StatusCode::FORBIDDEN);
    assert_eq!(suspended.json()["reason"], "suspended");
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn the_billers_events_need_its_token() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("subs-events");
    let gw = gateway(&biller, &dir, "").await;
    let event = r#"{"account":"100234","bill_id":"BILL-1","status":"due","amount_due":"12.30","due_date":"2026-12-15"}"#;
    let url = gw.admin_url("/v1/bill-events");
    let none = send(Method::POST, &url, &[], event).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    let wrong = send(
        Method::POST,
        &url,
        &[("authorization", "Bearer nope")],
        event,
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let bad = send(
        Method::POST,
        &url,
        &[("authorization", "Bearer biller-events-token")],
        "{}",
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // Nobody subscribed yet: stored, nothing to deliver.
    let ok = send(
        Method::POST,
        &url,
        &[("authorization", "Bearer biller-events-token")],
        event,
    )
    .await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.text());
    assert_eq!(ok.json()["enqueued"], 0);
    gw.gateway.shutdown().await;
}

/// A gateway whose bank-b and wallet-a may send webhooks to `bank` and `wallet`.
async fn webhook_gateway(
    biller_url: &str,
    dir: &TempDir,
    bank: &Receiver,
    wallet: &Receiver,
    extra: &str,
) -> TestGateway {
    write_secrets(dir);
    let partners = format!(
        "{}{}",
        partner(
            "bank-b",
            BANK_KEY,
            "payment = \"10/s\", inquiry_user = \"10/s\", subscription = \"100/s\"",
            &format!(
                "webhook_prefixes = [\"{}\"]\nwebhook_secret_file = \"{}\"",
                bank.prefix(),
                dir.join("bank-b.whsec").display()
            )
        ),
        partner(
            "wallet-a",
            WALLET_KEY,
            "subscription = \"100/s\"",
            &format!(
                "webhook_prefixes = [\"{}\"]\nwebhook_secret_file = \"{}\"",
                wallet.prefix(),
                dir.join("wallet-a.whsec").display()
            )
        ),
    );
    std::fs::write(dir.join("admin.token"), "admin-token\n").expect("token");
    let text = config_toml(biller_url, "2s", "10000/s", &partners)
        .replacen(
            "class = \"inquiry\"\n",
            "class = \"inquiry\"\ncache_for = \"60s\"\n",
            1,
        )
        .replacen(
            "max_body_bytes = 4096",
            &format!(
                "max_body_bytes = 4096\nadmin_token_file = \"{}\"",
                dir.join("admin.token").display()
            ),
            1,
        );
    let block = format!(
        "[subscriptions]\nstore = \"sqlite://{}\"\nrefresh = \"1h\"\nbiller_token_file = \"{}\"\nfirst_retry = \"50ms\"\n{extra}",
        dir.join("billgate.db").display(),
        dir.join("biller.token").display()
    );
    TestGateway::start(load(&with_block(&text, &block))).await
}

async fn push(gw: &TestGateway, event: &str) -> serde_json::Value {
    let reply = send(
        Method::POST,
        &gw.admin_url("/v1/bill-events"),
        &[("authorization", "Bearer biller-events-token")],
        event.to_owned(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    reply.json()
}

fn verified(secret: &str, got: &Received) -> serde_json::Value {
    let secret = billgate_subs::webhook::Secret::parse(secret).expect("secret");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64;
    assert!(
        secret.verify(&got.id, got.timestamp, &got.body, &got.signature, now, 300),
        "signature of {got:?}"
    );
    serde_json::from_slice(&got.body).expect("a JSON body")
}

// The stand-in biller has no bill due for 100235: the refresh a new subscription asks for finds
// nothing there, so the events below are the pushed ones alone.
const DUE: &str = r#"{"account":"100235","bill_id":"BILL-7","status":"due","amount_due":"12.30","due_date":"2026-12-15"}"#;
const PAID: &str = r#"{"account":"100235","bill_id":"BILL-7","status":"paid","amount_due":"12.30","due_date":"2026-12-15"}"#;

#[tokio::test]
async fn a_new_bill_reaches_every_subscriber_once_signed() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("subs-deliver");
    let (bank, wallet) = (
        Receiver::start(0, false).await,
        Receiver::start(0, false).await,
    );
    let gw = webhook_gateway(&biller.url(), &dir, &bank, &wallet, "").await;
    subscribed(&gw, BANK_KEY, "100235", &format!("{}bank", bank.prefix())).await;
    subscribed(
        &gw,
        WALLET_KEY,
        "100235",
        &format!("{}wallet", wallet.prefix()),
    )
    .await;
    subscribed(
        &gw,
        WALLET_KEY,
        "999999",
        &format!("{}wallet", wallet.prefix()),
    )
    .await;

    assert_eq!(push(&gw, DUE).await["enqueued"], 2);
    let to_bank = bank.next().await;
    let event = verified("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &to_bank);
    assert_eq!(
        (event["type"].as_str(), event["specversion"].as_str()),
        (Some("bill.due"), Some("1.0"))
    );
    assert_eq!(event["data"]["bill_id"], "BILL-7");
    assert_eq!(event["data"]["amount_due"], "12.30");
    assert_eq!(event["id"].as_str(), Some(to_bank.id.as_str()));
    let to_wallet = wallet.next().await;
    let event = verified("whsec_c2VjcmV0LW9mLXdhbGxldC1h", &to_wallet);
    assert_eq!(event["type"], "bill.due");
    assert_ne!(to_wallet.id, to_bank.id, "one event id per subscription");

    // The same change heard again is not delivered again; the next change is, in order.
    assert_eq!(push(&gw, DUE).await["enqueued"], 0);
    assert_eq!(push(&gw, PAID).await["enqueued"], 2);
    let paid = verified("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &bank.next().await);
    assert_eq!(paid["type"], "bill.paid");
    assert_eq!(
        verified("whsec_c2VjcmV0LW9mLXdhbGxldC1h", &wallet.next().await)["type"],
        "bill.paid"
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "billgate_subscription_events_total{source=\"push\",type=\"bill.due\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "billgate_subscription_events_total{source=\"push\",type=\"bill.paid\"}"
        ),
        1.0
    );
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_the_fourth() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("subs-retry");
    let (bank, wallet) = (
        Receiver::start(3, false).await,
        Receiver::start(0, false).await,
    );
    let gw = webhook_gateway(&biller.url(), &dir, &bank, &wallet, "").await;
    subscribed(&gw, BANK_KEY, "100235", &format!("{}bank", bank.prefix())).await;
    assert_eq!(push(&gw, DUE).await["enqueued"], 1);
    let tries: Vec<Received> = vec![
        bank.next().await,
        bank.next().await,
        bank.next().await,
        bank.next().await,
    ];
    assert!(
        tries.iter().all(|t| t.id == tries[0].id),
        "the same event each time"
    );
    for t in &tries {
        verified("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", t);
    }
    // The subscription's next event goes only once this one is settled: when it arrives, the
    // first is counted delivered (and the second may be already).
    assert_eq!(push(&gw, PAID).await["enqueued"], 1);
    let paid = bank.next().await;
    assert_ne!(paid.id, tries[0].id);
    let metrics = gw.metrics().await;
    let delivered = sample(
        &metrics,
        "billgate_webhook_deliveries_total{result=\"delivered\"}",
    );
    assert!((1.0..=2.0).contains(&delivered), "{delivered}");
    assert_eq!(
        sample(
            &metrics,
            "billgate_webhook_deliveries_total{result=\"retried\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(
            &metrics,
            "billgate_webhook_deliveries_total{result=\"dead\"}"
        ),
        0.0
    );
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn a_dead_receiver_does_not_delay_a_live_one() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("subs-isolated");
    let (stalled, live) = (
        Receiver::start(0, true).await,
        Receiver::start(0, false).await,
    );
    let gw = webhook_gateway(
        &biller.url(),
        &dir,
        &stalled,
        &live,
        "attempt_timeout = \"60s\"",
    )
    .await;
    subscribed(
        &gw,
        BANK_KEY,
        "100235",
        &format!("{}bank", stalled.prefix()),
    )
    .await;
    assert_eq!(push(&gw, DUE).await["enqueued"], 1);
    // The stalled receiver has the bank's delivery in hand, unanswered …
    let _ = stalled.next().await;
    assert_eq!(
        stalled.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // … while the wallet subscribes, is told at once of the bill already due, and of the
    // next change.
    subscribed(
        &gw,
        WALLET_KEY,
        "100235",
        &format!("{}wallet", live.prefix()),
    )
    .await;
    let event = verified("whsec_c2VjcmV0LW9mLXdhbGxldC1h", &live.next().await);
    assert_eq!(
        (event["type"].as_str(), event["data"]["bill_id"].as_str()),
        (Some("bill.due"), Some("BILL-7"))
    );
    assert_eq!(push(&gw, PAID).await["enqueued"], 2);
    let event = verified("whsec_c2VjcmV0LW9mLXdhbGxldC1h", &live.next().await);
    assert_eq!(event["type"], "bill.paid");
    assert_eq!(
        stalled.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the bank's events wait, in order"
    );
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn a_restart_loses_no_pending_delivery() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("subs-restart");
    // Refused for ever by the first receiver; the second takes it.
    let (refusing, wallet) = (
        Receiver::start(usize::MAX, false).await,
        Receiver::start(0, false).await,
    );
    let gw = webhook_gateway(&biller.url(), &dir, &refusing, &wallet, "").await;
    subscribed(
        &gw,
        BANK_KEY,
        "100235",
        &format!("{}bank", refusing.prefix()),
    )
    .await;
    assert_eq!(push(&gw, DUE).await["enqueued"], 1);
    let first = refusing.next().await;
    gw.gateway.shutdown().await;

    // The same store, the bank's prefix now at a receiver that answers: the pending
    // delivery goes there, with the id it had.
    let taking = Receiver::start(0, false).await;
    assert!(dir.join("billgate.db").exists());
    let gw = webhook_gateway(&biller.url(), &dir, &taking, &wallet, "").await;
    let moved = subscribe(&gw, BANK_KEY, "100235", &format!("{}bank", taking.prefix())).await;
    assert_eq!(moved.status, StatusCode::CREATED);
    // The old subscription's delivery still targets the refusing receiver, and is retried
    // there after the restart: it was not lost.
    let again = refusing.next().await;
    assert_eq!(again.id, first.id);
    gw.gateway.shutdown().await;
}

/// The stand-in biller pushing to the gateway: a new bill issued at the biller, and the bill
/// paid through the gateway, each reach the subscriber as a signed webhook.
#[tokio::test]
async fn the_stand_in_billers_bills_reach_subscribers() {
    use billgate_sim::biller::{BillerOptions, PushOptions, StandInBiller};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let biller_addr = listener.local_addr().expect("addr");
    let dir = TempDir::new("subs-stand-in");
    let (bank, wallet) = (
        Receiver::start(0, false).await,
        Receiver::start(0, false).await,
    );
    // The gateway first (it is where the biller pushes), on the biller's address.
    let gw = webhook_gateway(&format!("http://{biller_addr}"), &dir, &bank, &wallet, "").await;
    let biller = StandInBiller::new(
        BillerOptions {
            capacity_per_sec: 100_000.0,
            base_latency: std::time::Duration::from_millis(1),
            push: Some(PushOptions {
                url: gw.admin_url("/v1/bill-events"),
                token: "biller-events-token".into(),
            }),
            ..BillerOptions::default()
        },
        billgate::clock::Clock::real(),
    );
    tokio::spawn(biller.clone().serve(listener, std::future::pending()));
    subscribed(&gw, BANK_KEY, "ACC-7", &format!("{}bank", bank.prefix())).await;

    let issued = send(
        Method::POST,
        &format!("http://{biller_addr}/_biller/bills/ACC-7/new"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.text());
    let bill_id = issued.json()["bill_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(bill_id.ends_with("-1"), "{bill_id}");
    let due = verified("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &bank.next().await);
    assert_eq!(
        (due["type"].as_str(), due["data"]["bill_id"].as_str()),
        (Some("bill.due"), Some(bill_id.as_str()))
    );

    // Paid through the gateway: the biller marks it paid and says so.
    let body = format!(r#"{{"account":"ACC-7","bill_id":"{bill_id}","amount":"10.00"}}"#);
    let paid = send(
        Method::POST,
        &gw.url("/v1/payments"),
        &[
            ("x-api-key", BANK_KEY),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text());
    let event = verified("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &bank.next().await);
    assert_eq!(
        (event["type"].as_str(), event["data"]["status"].as_str()),
        (Some("bill.paid"), Some("paid"))
    );
    let inquiry = get(&format!("http://{biller_addr}/v1/bills/ACC-7"), &[])
        .await
        .json();
    assert_eq!(inquiry["status"], "paid");
    assert_eq!(biller.stats().pushed, 2);
    assert_eq!(biller.stats().push_failures, 0);
    gw.gateway.shutdown().await;
}

/// The refresher's answer is kept in the inquiry cache: a subscribed partner that still polls
/// its account is answered from memory, and the biller is asked once.
#[tokio::test]
async fn a_refreshed_account_is_answered_from_memory() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("subs-cache");
    let (bank, wallet) = (
        Receiver::start(0, false).await,
        Receiver::start(0, false).await,
    );
    let gw = webhook_gateway(&biller.url(), &dir, &bank, &wallet, "").await;
    subscribed(&gw, BANK_KEY, "100234", &format!("{}bank", bank.prefix())).await;
    // The refresher finds the subscription within a second and asks the biller; the change it
    // sees (a bill seen for the first time) is delivered once the answer is cached.
    assert_eq!(
        verified("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &bank.next().await)["type"],
        "bill.due"
    );
    let polled = get(
        &gw.url("/v1/bills/100234"),
        &[("x-api-key", BANK_KEY), ("x-request-origin", "user")],
    )
    .await;
    assert_eq!(polled.status, StatusCode::OK, "{}", polled.text());
    assert_eq!(polled.header("x-billgate-cache"), Some("hit"));
    assert_eq!(biller.biller.stats().received, 1);
    gw.gateway.shutdown().await;
}

/// A new subscriber hears of the bill due now without waiting out the refresh period (an
/// hour here): an account the gateway knew nothing of is asked about ahead of the schedule,
/// one the gateway knows is told from the store, with no call to the biller.
#[tokio::test]
async fn a_new_subscriber_hears_of_the_bill_due_now() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("subs-first");
    let (bank, wallet) = (
        Receiver::start(0, false).await,
        Receiver::start(0, false).await,
    );
    let gw = webhook_gateway(&biller.url(), &dir, &bank, &wallet, "").await;
    let due = |got: &Received| {
        let event = verified("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", got);
        assert_eq!(event["type"], "bill.due");
        (
            event["data"]["account"].as_str().map(str::to_owned),
            event["data"]["bill_id"].as_str().map(str::to_owned),
        )
    };
    // The first account starts the refresher's period (of one account, an hour long) …
    subscribed(&gw, BANK_KEY, "100234", &format!("{}bank", bank.prefix())).await;
    let (account, first_bill) = due(&bank.next().await);
    assert_eq!(account.as_deref(), Some("100234"));
    // … and one subscribed in the middle of that period is asked about at once, not in an
    // hour.
    subscribed(&gw, BANK_KEY, "100236", &format!("{}bank", bank.prefix())).await;
    let (account, _) = due(&bank.next().await);
    assert_eq!(account.as_deref(), Some("100236"));
    assert_eq!(biller.biller.stats().received, 2);

    // The wallet subscribes to an account the gateway knows: the bill due is told from the
    // store, the biller is not asked again.
    subscribed(
        &gw,
        WALLET_KEY,
        "100234",
        &format!("{}wallet", wallet.prefix()),
    )
    .await;
    let event = verified("whsec_c2VjcmV0LW9mLXdhbGxldC1h", &wallet.next().await);
    assert_eq!(
        (event["type"].as_str(), event["data"]["bill_id"].as_str()),
        (Some("bill.due"), first_bill.as_deref())
    );
    assert_eq!(biller.biller.stats().received, 2);
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "billgate_subscription_refreshes_total{result=\"answered\"}"
        ),
        2.0
    );
    gw.gateway.shutdown().await;
}

/// The outbox as `/admin/deliveries` shows it.
async fn deliveries(gw: &TestGateway) -> serde_json::Value {
    let reply = get(
        &gw.admin_url("/admin/deliveries"),
        &[("authorization", "Bearer admin-token")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

/// A delivery past its horizon is a dead letter the operators see at `/admin/deliveries` and
/// can replay; finished deliveries leave the store after `keep_delivered` and `keep_dead`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_and_in_time_removed() {
    use std::sync::atomic::Ordering;
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("subs-dead");
    let (bank, wallet) = (
        Receiver::start(0, false).await,
        Receiver::start(usize::MAX, false).await,
    );
    let gw = webhook_gateway(
        &biller.url(),
        &dir,
        &bank,
        &wallet,
        "delivery_horizon = \"200ms\"\nkeep_delivered = \"1s\"\nkeep_dead = \"3s\"",
    )
    .await;
    subscribed(&gw, BANK_KEY, "100235", &format!("{}bank", bank.prefix())).await;
    subscribed(
        &gw,
        WALLET_KEY,
        "100235",
        &format!("{}wallet", wallet.prefix()),
    )
    .await;
    assert_eq!(push(&gw, DUE).await["enqueued"], 2);
    assert_eq!(bank.next().await.status, 204);

    // The wallet's receiver fails every try: past the horizon, a dead letter.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let listed = loop {
        let listed = deliveries(&gw).await;
        if listed["dead"] == 1 {
            break listed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letter: {listed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let letter = &listed["dead_letters"][0];
    assert_eq!(
        (
            letter["partner"].as_str(),
            letter["state"].as_str(),
            letter["last_error"].as_str()
        ),
        (Some("wallet-a"), Some("dead"), Some("HTTP 500"))
    );
    assert!(letter["attempts"].as_u64() >= Some(1), "{letter}");
    let id = letter["id"].as_str().unwrap_or_default().to_owned();

    // Replayed once the receiver works again: delivered, under the dead letter's id. A dead
    // letter is replayed once.
    wallet.failures.store(0, Ordering::SeqCst);
    let replay = |token: &'static str| {
        let url = gw.admin_url(&format!("/admin/deliveries/{id}/replay"));
        async move {
            send(
                Method::POST,
                &url,
                &[("authorization", token)],
                Bytes::new(),
            )
            .await
        }
    };
    assert_eq!(
        replay("Bearer wrong").await.status,
        StatusCode::UNAUTHORIZED
    );
    let replayed = replay("Bearer admin-token").await;
    assert_eq!(replayed.status, StatusCode::OK, "{}", replayed.text());
    assert_eq!(replayed.json()["replayed"].as_str(), Some(id.as_str()));
    let delivered = loop {
        let got = wallet.next().await;
        if got.status == 204 {
            break got;
        }
    };
    assert_eq!(delivered.id, id);
    assert_eq!(
        replay("Bearer admin-token").await.status,
        StatusCode::NOT_FOUND
    );

    // The next event dies for the wallet too. Delivered ones leave after a second, the dead
    // letter after three.
    wallet.failures.store(usize::MAX, Ordering::SeqCst);
    assert_eq!(push(&gw, PAID).await["enqueued"], 2);
    assert_eq!(bank.next().await.status, 204);
    let pruned = |metrics: &str, state: &str| {
        sample(
            metrics,
            &format!("billgate_webhook_pruned_total{{state=\"{state}\"}}"),
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let metrics = gw.metrics().await;
        if pruned(&metrics, "delivered") == 3.0 && pruned(&metrics, "dead") == 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pruned {} delivered, {} dead",
            pruned(&metrics, "delivered"),
            pruned(&metrics, "dead")
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let listed = deliveries(&gw).await;
    assert_eq!(
        (&listed["pending"], &listed["delivered"], &listed["dead"]),
        (
            &serde_json::json!(0),
            &serde_json::json!(0),
            &serde_json::json!(0)
        ),
        "{listed}"
    );
    gw.gateway.shutdown().await;
}

/// A partner that subscribes, deletes and subscribes again does not make the gateway ask the
/// biller again within the period: what the biller said stands.
#[tokio::test]
async fn subscribing_again_does_not_ask_the_biller_again() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("subs-again");
    let (bank, wallet) = (
        Receiver::start(0, false).await,
        Receiver::start(0, false).await,
    );
    let gw = webhook_gateway(&biller.url(), &dir, &bank, &wallet, "").await;
    let refreshes = |metrics: &str, result: &str| {
        sample(
            metrics,
            &format!("billgate_subscription_refreshes_total{{result=\"{result}\"}}"),
        )
    };
    let until = |result: &'static str| {
        let gw = &gw;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let metrics = gw.metrics().await;
                if refreshes(&metrics, result) >= 1.0 {
                    return metrics;
                }
                assert!(std::time::Instant::now() < deadline, "no {result} refresh");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    let callback = format!("{}bank", bank.prefix());
    // 100235 has no bill due at the stand-in: the store learns nothing it could tell.
    let made = subscribe(&gw, BANK_KEY, "100235", &callback).await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text());
    until("answered").await;
    let id = made.json()["id"].as_str().unwrap_or_default().to_owned();
    let deleted = send(
        Method::DELETE,
        &gw.url(&format!("/v1/subscriptions/{id}")),
        &[("x-api-key", BANK_KEY)],
        Bytes::new(),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    subscribed(&gw, BANK_KEY, "100235", &callback).await;
    let metrics = until("recent").await;
    assert_eq!(
        (
            refreshes(&metrics, "answered"),
            refreshes(&metrics, "recent")
        ),
        (1.0, 1.0)
    );
    assert_eq!(biller.biller.stats().received, 1);
    gw.gateway.shutdown().await;
}
