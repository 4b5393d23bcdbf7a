//! Subscriptions at scale and in a fleet, on a real PostgreSQL (and Redis) started by the
//! tests: the refresher's pace over ten thousand accounts, and two instances delivering each
//! event once, one after the other when the first goes away.

use crate::common;
use crate::hooks;
use crate::postgres;
use crate::redis_server;

use std::time::Duration;

use billgate_subs::store::{Store, Subscribed};
use common::*;
use hooks::Receiver;
use http::{Method, StatusCode};
use postgres::Postgres;
use redis_server::RedisServer;

const BANK_KEY: &str = "bank-b-key";

/// A gateway configuration: bank-b may subscribe with callbacks under `hooks`, the store at
/// `store`, `extra` in `[subscriptions]`, and `tail` after everything.
fn config_text(
    biller: &str,
    dir: &TempDir,
    hooks: std::net::SocketAddr,
    store: &str,
    extra: &str,
    tail: &str,
) -> String {
    std::fs::write(
        dir.join("bank-b.whsec"),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
    )
    .expect("secret");
    std::fs::write(dir.join("biller.token"), "biller-events-token\n").expect("token");
    let partners = partner(
        "bank-b",
        BANK_KEY,
        "subscription = \"1000/s\"",
        &format!(
            "max_subscriptions = 20000\nwebhook_prefixes = [\"http://{hooks}/\"]\nwebhook_secret_file = \"{}\"",
            dir.join("bank-b.whsec").display()
        ),
    );
    let text = config_toml(biller, "2s", "10000/s", &partners);
    let block = format!(
        "[subscriptions]\nstore = \"{store}\"\nbiller_token_file = \"{}\"\nfirst_retry = \"50ms\"\n{extra}",
        dir.join("biller.token").display()
    );
    format!("{}\n{tail}", with_block(&text, &block))
}

/// Ten thousand subscribed accounts at `refresh = "100s"`: the biller is asked 100 times a
/// second, ± 10 %, in every whole second measured, and never in a burst (no tenth of a second
/// above twice its share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_accounts_over_100s_are_a_hundred_calls_a_second() {
    let database = Postgres::start("refresh");
    let store = Store::open(&database.url()).await.expect("store");
    let receiver = Receiver::start(0, false).await;
    let hooks = receiver.addr;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in (w..10_000).step_by(8) {
                    let made = store
                        .subscribe(
                            "bank-b",
                            &format!("A{i:05}"),
                            &format!("http://{hooks}/x"),
                            20_000,
                            1,
                        )
                        .await
                        .expect("subscribe");
                    assert!(matches!(made, Subscribed::Created(_)));
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_eq!(store.account_count().await.expect("count"), 10_000);

    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("subs-spread");
    let gateway = start_real(&config_text(
        &biller.url(),
        &dir,
        hooks,
        &database.url(),
        "refresh = \"100s\"",
        "",
    ))
    .await;
    // Every tenth of a second for six seconds, the biller's count; the first second is left
    // out (the period starts while the gateway does).
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    let mut counts = Vec::new();
    for _ in 0..61 {
        ticks.tick().await;
        counts.push(biller.biller.stats().received);
    }
    let per_tenth: Vec<u64> = counts.windows(2).map(|w| w[1] - w[0]).collect();
    let per_second: Vec<u64> = per_tenth[10..].chunks(10).map(|c| c.iter().sum()).collect();
    assert_eq!(per_second.len(), 5);
    for (second, n) in per_second.iter().enumerate() {
        assert!(
            (90..=110).contains(n),
            "second {second}: {n} calls ({per_second:?})"
        );
    }
    eprintln!("biller calls per second {per_second:?}, per tenth {per_tenth:?}");
    let most = per_tenth.iter().max().copied().unwrap_or(0);
    assert!(
        most <= 20,
        "a tenth of a second with {most} calls: {per_tenth:?}"
    );
    let metrics = {
        let url = format!("http://{}/metrics", gateway.admin_addr);
        get(&url, &[]).await.text()
    };
    assert!(
        sample(
            &metrics,
            "billgate_subscription_refreshes_total{result=\"answered\"}"
        ) >= 500.0
    );
    gateway.shutdown().await;
}

/// Two instances on one Redis and one PostgreSQL: one delivers (the leader); events pushed
/// through either are delivered once each; the leader stopped, the other takes over within
/// seconds and delivers the rest, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_each_event_once() {
    let database = Postgres::start("fleet");
    let redis = RedisServer::start();
    let receiver = Receiver::start(0, false).await;
    let hooks = receiver.addr;
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("subs-fleet");
    let instance = |n: usize| {
        config_text(
            &biller.url(),
            &dir,
            hooks,
            &database.url(),
            "refresh = \"1h\"",
            &format!(
                "[fleet]\nredis = \"{}\"\ninstance = \"gw-{n}\"\n",
                redis.url()
            ),
        )
    };
    let one = start_real(&instance(1)).await;
    let two = start_real(&instance(2)).await;
    for i in 0..10 {
        let body = serde_json::json!({ "account": format!("F{i}"), "callback": format!("http://{hooks}/bank") });
        let url = format!(
            "http://{}/v1/subscriptions",
            if i % 2 == 0 { one.addr } else { two.addr }
        );
        let reply = send(
            Method::POST,
            &url,
            &[("x-api-key", BANK_KEY)],
            body.to_string(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }
    let push = |admin: std::net::SocketAddr, account: String, status: &'static str| async move {
        let event = serde_json::json!({ "account": account, "bill_id": "B1", "status": status, "amount_due": "5.00", "due_date": "2026-12-31" });
        let reply = send(
            Method::POST,
            &format!("http://{admin}/v1/bill-events"),
            &[("authorization", "Bearer biller-events-token")],
            event.to_string(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
        reply.json()["enqueued"].as_u64().unwrap_or(0)
    };
    // Each account's bill pushed through both instances: one delivery each.
    let mut enqueued = 0;
    for i in 0..10 {
        enqueued += push(one.admin_addr, format!("F{i}"), "due").await;
        enqueued += push(two.admin_addr, format!("F{i}"), "due").await;
    }
    assert_eq!(enqueued, 10, "the same change heard twice is one event");
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for _ in 0..10 {
        let id = receiver.next().await.id;
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), 10);

    // Whichever leads, stop the first instance; the second delivers what comes next.
    one.shutdown().await;
    let mut enqueued = 0;
    for i in 0..10 {
        enqueued += push(two.admin_addr, format!("F{i}"), "paid").await;
    }
    assert_eq!(enqueued, 10);
    for _ in 0..10 {
        let id = receiver.next().await.id;
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), 20);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    two.shutdown().await;
}
