//! A fleet of gateway instances sharing one real Redis: quotas and the biller's capacity hold
//! for the fleet as a whole, Redis dying or stalling changes neither, and suspensions and
//! configuration hashes are seen fleet-wide. Each gateway runs on the real clock (the buckets
//! in Redis run on Redis's), so the bounds are worked out from the time the traffic took; no
//! assertion is on a time.

use crate::common;
use crate::redis_server;

use std::time::{Duration, Instant};

use billgate::gateway::Gateway;
use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use redis_server::{Proxy, RedisServer};

const TOKEN: &str = "fleet-admin-token";

/// The fleet's bound for one quota (see `billgate_core::fleet`'s lease module): over `elapsed`,
/// `instances` together admit at most the rate over the window plus each instance's slice
/// (0.2 s of the rate, at least one), plus the burst, plus what was spent on shares and not yet
/// subtracted when the traffic stopped (at most one tick's worth per instance; a sequential
/// client spends at most a request or two in it).
fn bound(per_second: f64, burst: f64, elapsed: Duration, instances: usize) -> f64 {
    let slice = (per_second * 0.2).ceil().max(1.0);
    burst + per_second * elapsed.as_secs_f64() + instances as f64 * (slice + 2.0)
}

/// One instance's configuration: the standard routes, `partners`, the biller at `biller`,
/// and `[fleet]` on `redis` as `gw-{n}`.
fn instance_config(
    biller: &str,
    capacity: &str,
    partners: &str,
    redis: &str,
    n: usize,
    dir: &TempDir,
) -> String {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).expect("token file");
    let text = config_toml(biller, "2s", capacity, partners);
    let server = format!(
        "[server]\nadmin_token_file = \"{}\"\nstate_file = \"{}\"\n",
        dir.join("token").display(),
        dir.join(&format!("state-{n}.json")).display()
    );
    let text = text.replacen("[server]\n", &server, 1);
    format!("{text}\n[fleet]\nredis = \"{redis}\"\ninstance = \"gw-{n}\"\ntimeout = \"250ms\"\n")
}

/// `n` instances of one configuration on `redis`, each having seen all `n` alive.
async fn fleet(biller: &str, capacity: &str, partners: &str, redis: &str, n: usize) -> Fleet {
    fleet_with(biller, capacity, partners, redis, n, "").await
}

/// [`fleet`], with `tail` after each instance's configuration.
async fn fleet_with(
    biller: &str,
    capacity: &str,
    partners: &str,
    redis: &str,
    n: usize,
    tail: &str,
) -> Fleet {
    let dir = TempDir::new(&format!("fleet-{n}"));
    let mut instances = Vec::new();
    for i in 1..=n {
        let text = instance_config(biller, capacity, partners, redis, i, &dir) + tail;
        instances.push(start_real(&text).await);
    }
    let fleet = Fleet {
        instances,
        _dir: dir,
    };
    fleet
        .until(
            |view| {
                view["instances"].as_array().map_or(0, Vec::len) == n && view["redis_up"] == true
            },
            "every instance sees the whole fleet",
        )
        .await;
    fleet
}

struct Fleet {
    instances: Vec<Gateway>,
    _dir: TempDir,
}

impl Fleet {
    fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{}", self.instances[i].addr, path)
    }

    fn admin(&self, i: usize, path: &str) -> String {
        format!("http://{}{}", self.instances[i].admin_addr, path)
    }

    async fn view(&self, i: usize) -> serde_json::Value {
        let reply = get(
            &self.admin(i, "/admin/fleet"),
            &[("authorization", &bearer())],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()
    }

    async fn metrics(&self, i: usize) -> String {
        let reply = get(&self.admin(i, "/metrics"), &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.text()
    }

    /// Polls every instance's `/admin/fleet` until `ok` holds for all (bounded: 10 s).
    async fn until(&self, ok: impl Fn(&serde_json::Value) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut all = true;
            let mut last = serde_json::Value::Null;
            for i in 0..self.instances.len() {
                let view = self.view(i).await;
                if !ok(&view) {
                    all = false;
                    last = view;
                    break;
                }
            }
            if all {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: never so; last {last}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// What a run of traffic got back: admitted, refused by a quota or the biller's capacity,
/// and anything else (status and reason).
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    refused: usize,
    other: Vec<(u16, String)>,
}

/// Sends payments as `key`, one at a time, to the instances in turn, for `run` (by the
/// wall clock): what came back, and how long it took from the first request to the last
/// answer.
async fn alternate(fleet: &Fleet, key: &str, run: Duration) -> (Tally, Duration) {
    let mut tally = Tally::default();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < run {
        let reply = pay(
            &fleet.url(i % fleet.instances.len(), "/v1/payments"),
            &[("x-api-key", key)],
        )
        .await;
        match reply.status {
            status if status.is_success() => tally.ok += 1,
            status => {
                let reason = reply.json()["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                match (status, reason.as_str()) {
                    (StatusCode::TOO_MANY_REQUESTS, "partner_quota")
                    | (StatusCode::SERVICE_UNAVAILABLE, "biller_capacity") => tally.refused += 1,
                    _ => tally.other.push((status.as_u16(), reason)),
                }
            }
        }
        i += 1;
    }
    (tally, started.elapsed())
}

/// Two, then three instances behind a client alternating between them admit what one
/// instance would: the quota's burst and its rate over the run, within the stated bound —
/// where each on its own would admit the whole quota again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_admits_what_one_instance_would() {
    let biller = TestBiller::roomy().await;
    for n in [2, 3] {
        let redis = RedisServer::start();
        let partners = partner("wallet-a", "key-a", r#"payment = "20/s burst 20""#, "");
        let fleet = fleet(&biller.url(), "10000/s", &partners, &redis.url(), n).await;
        let (tally, elapsed) = alternate(&fleet, "key-a", Duration::from_secs(2)).await;
        assert!(tally.other.is_empty(), "{n} instances: {tally:?}");
        let most = bound(20.0, 20.0, elapsed, n);
        let least = 0.75 * (20.0 + 20.0 * elapsed.as_secs_f64());
        eprintln!("{n} instances: {tally:?} in {elapsed:?}; bound {most:.1}");
        assert!(
            (tally.ok as f64) <= most,
            "{n} instances admitted {} in {elapsed:?}, over the bound {most:.1}",
            tally.ok
        );
        // Alone, each would have admitted about this much: the fleet is not n times it.
        assert!(
            (tally.ok as f64) >= least,
            "{n} instances admitted only {} in {elapsed:?} (one alone: {least:.1} at least)",
            tally.ok
        );
        let metrics = fleet.metrics(0).await;
        assert_eq!(sample(&metrics, "billgate_fleet_instances"), n as f64);
        assert_eq!(sample(&metrics, "billgate_fleet_redis_up"), 1.0);
        assert!(
            sample(
                &metrics,
                "billgate_fleet_lease_refills_total{result=\"granted\"}"
            ) > 0.0
        );
        for gw in fleet.instances {
            gw.shutdown().await;
        }
    }
}

/// The biller's capacity is the fleet's: a flood of payments through three instances reaches
/// the biller within the capacity's bound, not three times it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_billers_capacity_holds_across_the_fleet() {
    let biller = TestBiller::roomy().await;
    let redis = RedisServer::start();
    let partners = partner("wallet-a", "key-a", r#"payment = "10000/s""#, "");
    let fleet = fleet(&biller.url(), "30/s", &partners, &redis.url(), 3).await;
    let before = biller.biller.stats().received;
    let (tally, elapsed) = alternate(&fleet, "key-a", Duration::from_secs(2)).await;
    let received = biller.biller.stats().received - before;
    assert!(tally.other.is_empty(), "{tally:?}");
    assert_eq!(
        received as usize, tally.ok,
        "every admitted payment reached the biller"
    );
    let most = bound(30.0, 30.0, elapsed, 3);
    eprintln!("biller: {received} in {elapsed:?}; bound {most:.1}; {tally:?}");
    assert!(
        (received as f64) <= most,
        "the biller received {received} in {elapsed:?}, over the bound {most:.1}"
    );
    assert!(
        tally.refused > 0,
        "the flood was over the capacity: {tally:?}"
    );
    for gw in fleet.instances {
        gw.shutdown().await;
    }
}

/// Redis killed mid-run: each instance falls back to its share (the quota over the instances
/// it last saw), the fleet stays within the quota and no request fails for it; Redis back,
/// the leases resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_leaves_each_instance_its_share_and_its_return_brings_the_leases_back() {
    let biller = TestBiller::roomy().await;
    let mut redis = RedisServer::start();
    let partners = partner("wallet-a", "key-a", r#"payment = "20/s burst 20""#, "");
    let fleet = fleet(&biller.url(), "10000/s", &partners, &redis.url(), 2).await;
    let (first, _) = alternate(&fleet, "key-a", Duration::from_millis(500)).await;
    assert!(first.other.is_empty(), "{first:?}");

    redis.kill();
    fleet
        .until(
            |view| view["redis_up"] == false && view["mode"] == "shares",
            "both fall back to shares",
        )
        .await;
    let (down, elapsed) = alternate(&fleet, "key-a", Duration::from_secs(2)).await;
    eprintln!("Redis down: {down:?} in {elapsed:?}");
    assert!(
        down.other.is_empty(),
        "no request fails for Redis: {down:?}"
    );
    // Two shares of 10/s burst 10: the quota, whole.
    let most = 20.0 + 20.0 * elapsed.as_secs_f64() + 2.0;
    assert!(
        (down.ok as f64) <= most,
        "{} admitted with Redis down, over {most:.1}",
        down.ok
    );
    assert!(down.ok > 0 && down.refused > 0, "{down:?}");
    for i in 0..2 {
        let metrics = fleet.metrics(i).await;
        assert_eq!(sample(&metrics, "billgate_fleet_redis_up"), 0.0);
        assert_eq!(
            sample(&metrics, "billgate_fleet_fallbacks_total"),
            1.0,
            "said once"
        );
        assert_eq!(
            sample(&metrics, "billgate_fleet_instances"),
            2.0,
            "as last seen"
        );
    }

    redis.restart();
    fleet
        .until(
            |view| view["redis_up"] == true && view["mode"] == "leases",
            "both back on leases",
        )
        .await;
    let granted = |m: &str| sample(m, "billgate_fleet_lease_refills_total{result=\"granted\"}");
    let before = granted(&fleet.metrics(0).await) + granted(&fleet.metrics(1).await);
    let (back, elapsed) = alternate(&fleet, "key-a", Duration::from_secs(1)).await;
    eprintln!("Redis back: {back:?} in {elapsed:?}");
    assert!(back.other.is_empty(), "{back:?}");
    assert!(
        (back.ok as f64) <= bound(20.0, 20.0, elapsed, 2),
        "{back:?}"
    );
    let after = granted(&fleet.metrics(0).await) + granted(&fleet.metrics(1).await);
    assert!(after > before, "leases resumed: {before} → {after}");
    for gw in fleet.instances {
        gw.shutdown().await;
    }
}

/// Redis answering slowly (50 ms each way) leaves the leases flowing; Redis stalled outright
/// leaves every request answered — none waits on it — on the shares, until it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_stalled_redis_never_holds_a_request() {
    let biller = TestBiller::roomy().await;
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.addr());
    let partners = partner("wallet-a", "key-a", r#"payment = "200/s""#, "");
    let fleet = fleet(&biller.url(), "10000/s", &partners, &proxy.url(), 2).await;

    proxy.set_delay(Duration::from_millis(50));
    let (slow, _) = alternate(&fleet, "key-a", Duration::from_secs(1)).await;
    assert!(slow.other.is_empty(), "{slow:?}");
    let view = fleet.view(0).await;
    assert_eq!(
        view["mode"], "leases",
        "50 ms is within the timeout: {view}"
    );

    proxy.set_stalled(true);
    let (stalled, _) = alternate(&fleet, "key-a", Duration::from_secs(1)).await;
    assert!(stalled.other.is_empty(), "{stalled:?}");
    assert!(stalled.ok > 0, "{stalled:?}");
    fleet
        .until(
            |view| view["mode"] == "shares",
            "a stalled Redis counts as down",
        )
        .await;

    proxy.set_stalled(false);
    proxy.set_delay(Duration::ZERO);
    fleet
        .until(
            |view| view["mode"] == "leases",
            "back on leases once it answers",
        )
        .await;
    for gw in fleet.instances {
        gw.shutdown().await;
    }
}

/// A suspension made through one instance's admin API is enforced by the other; lifted there,
/// it is lifted here too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_reaches_the_whole_fleet() {
    let biller = TestBiller::roomy().await;
    let redis = RedisServer::start();
    let partners = partner("wallet-a", "key-a", r#"payment = "200/s""#, "");
    let fleet = fleet(&biller.url(), "10000/s", &partners, &redis.url(), 2).await;
    let suspended = send(
        Method::POST,
        &fleet.admin(0, "/admin/partners/wallet-a/suspend"),
        &[("authorization", &bearer())],
        Bytes::from_static(br#"{"reason":"polling storm"}"#),
    )
    .await;
    assert_eq!(suspended.status, StatusCode::OK, "{}", suspended.text());

    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        let reply = pay(&fleet.url(1, "/v1/payments"), &[("x-api-key", "key-a")]).await;
        if !reply.status.is_success() || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert!(reply.text().contains("polling storm"), "{}", reply.text());
    // The second instance keeps it in its own state file too: a restart without Redis keeps it.
    let state = std::fs::read_to_string(fleet._dir.join("state-2.json")).unwrap_or_default();
    assert!(
        state.contains("wallet-a") && state.contains("polling storm"),
        "{state}"
    );

    let resumed = send(
        Method::POST,
        &fleet.admin(0, "/admin/partners/wallet-a/resume"),
        &[("authorization", &bearer())],
        Bytes::new(),
    )
    .await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text());
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        let reply = pay(&fleet.url(1, "/v1/payments"), &[("x-api-key", "key-a")]).await;
        if reply.status.is_success() || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        reply.status.is_success(),
        "{} {}",
        reply.status,
        reply.text()
    );
    for gw in fleet.instances {
        gw.shutdown().await;
    }
}

/// `/admin/fleet` lists every instance with its configuration's hash; an instance started on
/// another configuration makes the mismatch visible everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_view_shows_instances_and_a_configuration_mismatch() {
    let biller = TestBiller::roomy().await;
    let redis = RedisServer::start();
    let partners = partner("wallet-a", "key-a", r#"payment = "200/s""#, "");
    let mut fleet = fleet(&biller.url(), "10000/s", &partners, &redis.url(), 2).await;
    let view = fleet.view(0).await;
    assert_eq!(view["instance"], "gw-1");
    assert_eq!(view["config_mismatch"], false);
    let ids: Vec<&str> = view["instances"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["instance"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["gw-1", "gw-2"]);
    for m in view["instances"].as_array().into_iter().flatten() {
        assert_eq!(m["config_sha256"], view["config_sha256"]);
    }
    assert_eq!(
        sample(&fleet.metrics(0).await, "billgate_fleet_config_mismatch"),
        0.0
    );

    let other = partner("wallet-a", "key-a", r#"payment = "300/s""#, "");
    let text = instance_config(
        &biller.url(),
        "10000/s",
        &other,
        &redis.url(),
        3,
        &fleet._dir,
    );
    fleet.instances.push(start_real(&text).await);
    fleet
        .until(
            |view| view["config_mismatch"] == true,
            "every instance sees the mismatch",
        )
        .await;
    assert_eq!(
        sample(&fleet.metrics(0).await, "billgate_fleet_config_mismatch"),
        1.0
    );

    let alone = TestGateway::start(config(&biller.url(), &partners)).await;
    let reply = get(&alone.admin_url("/admin/fleet"), &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    for gw in fleet.instances {
        gw.shutdown().await;
    }
}

/// Per-account quotas are divided among the instances alive: a client asking about one
/// account through two instances in turn gets the account's burst once, not once per instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_account_quota_is_the_fleets() {
    let biller = TestBiller::roomy().await;
    let redis = RedisServer::start();
    let partners = partner(
        "wallet-a",
        "key-a",
        r#"inquiry_scheduled = "1000/s""#,
        "per_account = \"10/min\"",
    );
    let fleet = fleet(&biller.url(), "10000/s", &partners, &redis.url(), 2).await;
    let mut statuses = Vec::new();
    for i in 0..40 {
        let reply = get(
            &fleet.url(i % 2, "/v1/bills/100234"),
            &[("x-api-key", "key-a")],
        )
        .await;
        statuses.push(reply.status.as_u16());
    }
    // 10 a minute, burst 10: each instance holds the account to 5 a minute, burst 5.
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((admitted, refused), (10, 30), "{statuses:?}");
    for gw in fleet.instances {
        gw.shutdown().await;
    }
}

/// Two processes given one instance name: both say so (`/admin/fleet`, the metric) and count
/// the name as two instances, so their shares stay within the quotas; when one stops, the
/// other is one instance again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_under_one_name_are_told() {
    let biller = TestBiller::roomy().await;
    let redis = RedisServer::start();
    let partners = partner("wallet-a", "key-a", r#"payment = "200/s""#, "");
    let dir = TempDir::new("fleet-twins");
    let first = instance_config(&biller.url(), "10000/s", &partners, &redis.url(), 1, &dir);
    let second = instance_config(&biller.url(), "10000/s", &partners, &redis.url(), 2, &dir)
        .replace("instance = \"gw-2\"", "instance = \"gw-1\"");
    let mut fleet = Fleet {
        instances: vec![start_real(&first).await, start_real(&second).await],
        _dir: dir,
    };
    fleet
        .until(
            |view| view["duplicate_instance"] == true,
            "both see their name shared",
        )
        .await;
    for i in 0..2 {
        let metrics = fleet.metrics(i).await;
        assert_eq!(sample(&metrics, "billgate_fleet_duplicate_instance"), 1.0);
        assert_eq!(sample(&metrics, "billgate_fleet_instances"), 2.0);
        let view = fleet.view(i).await;
        assert_eq!(view["instance"], "gw-1");
        assert_eq!(view["instances"].as_array().map(Vec::len), Some(1));
    }
    if let Some(gone) = fleet.instances.pop() {
        gone.shutdown().await;
    }
    fleet
        .until(
            |view| view["duplicate_instance"] == false,
            "the name is its own again",
        )
        .await;
    let metrics = fleet.metrics(0).await;
    assert_eq!(sample(&metrics, "billgate_fleet_duplicate_instance"), 0.0);
    assert_eq!(sample(&metrics, "billgate_fleet_instances"), 1.0);
    for gw in fleet.instances {
        gw.shutdown().await;
    }
}

/// The subscription quota is the fleet's too: a partner subscribing through two instances in
/// turn is admitted what one instance would admit, within the stated bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_quota_is_the_fleets() {
    let biller = TestBiller::roomy().await;
    let redis = RedisServer::start();
    let dir = TempDir::new("fleet-subs");
    std::fs::write(
        dir.join("wallet-a.whsec"),
        "whsec_c2VjcmV0LW9mLXdhbGxldC1h\n",
    )
    .expect("secret");
    let partners = partner(
        "wallet-a",
        "key-a",
        r#"subscription = "20/s burst 20""#,
        &format!(
            "webhook_prefixes = [\"https://hooks.wallet-a.example/\"]\nwebhook_secret_file = \"{}\"",
            dir.join("wallet-a.whsec").display()
        ),
    );
    let subscriptions = format!(
        "\n[subscriptions]\nstore = \"sqlite://{}\"\n",
        dir.join("subscriptions.db").display()
    );
    let fleet = fleet_with(
        &biller.url(),
        "10000/s",
        &partners,
        &redis.url(),
        2,
        &subscriptions,
    )
    .await;
    let (mut ok, mut refused, mut other) = (0usize, 0usize, Vec::new());
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let body =
            format!("{{\"account\":\"A{i}\",\"callback\":\"https://hooks.wallet-a.example/x\"}}");
        let reply = send(
            Method::POST,
            &fleet.url(i % 2, "/v1/subscriptions"),
            &[("x-api-key", "key-a"), ("content-type", "application/json")],
            body,
        )
        .await;
        match reply.status {
            StatusCode::CREATED => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            status => other.push((status.as_u16(), reply.text())),
        }
        i += 1;
    }
    let elapsed = started.elapsed();
    assert!(other.is_empty(), "{other:?}");
    let most = bound(20.0, 20.0, elapsed, 2);
    let least = 0.75 * (20.0 + 20.0 * elapsed.as_secs_f64());
    eprintln!("subscriptions through 2 instances: {ok} created, {refused} refused in {elapsed:?}; bound {most:.1}");
    assert!(
        (ok as f64) <= most && (ok as f64) >= least,
        "{ok} created in {elapsed:?}: not within {least:.1}..={most:.1}"
    );
    assert!(refused > 0, "nothing refused: the client sent too few");
    for gw in fleet.instances {
        gw.shutdown().await;
    }
}

/// An instance that was away while a suspension was lifted, and kept the suspension in its
/// state file, does not bring it back when it returns: it lifts it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_lifted_while_an_instance_was_away_stays_lifted() {
    let biller = TestBiller::roomy().await;
    let redis = RedisServer::start();
    let partners = partner("wallet-a", "key-a", r#"payment = "200/s""#, "");
    let mut fleet = fleet(&biller.url(), "10000/s", &partners, &redis.url(), 2).await;
    let admin =
        |fleet: &Fleet, what: &str| fleet.admin(0, &format!("/admin/partners/wallet-a/{what}"));
    let suspended = send(
        Method::POST,
        &admin(&fleet, "suspend"),
        &[("authorization", &bearer())],
        Bytes::from_static(br#"{"reason":"polling storm"}"#),
    )
    .await;
    assert_eq!(suspended.status, StatusCode::OK, "{}", suspended.text());
    // The second instance takes it, and keeps it in its state file.
    let state_file = fleet._dir.join("state-2.json");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&state_file)
        .unwrap_or_default()
        .contains("polling storm")
    {
        assert!(
            Instant::now() < deadline,
            "the second instance never took it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(away) = fleet.instances.pop() {
        away.shutdown().await;
    }
    let resumed = send(
        Method::POST,
        &admin(&fleet, "resume"),
        &[("authorization", &bearer())],
        Bytes::new(),
    )
    .await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text());
    // The first instance's next heartbeat lifts it in Redis.
    let client = redis::Client::open(redis.url()).expect("a Redis client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("a Redis connection");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lifted: bool = redis::cmd("HEXISTS")
            .arg("billgate:fleet:lifted")
            .arg("wallet-a")
            .query_async(&mut conn)
            .await
            .expect("HEXISTS");
        if lifted {
            break;
        }
        assert!(Instant::now() < deadline, "never lifted in Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Back, on the same state file: its first heartbeat (before it serves) finds the
    // suspension lifted, and lifts it here too.
    let text = instance_config(
        &biller.url(),
        "10000/s",
        &partners,
        &redis.url(),
        2,
        &fleet._dir,
    );
    fleet.instances.push(start_real(&text).await);
    fleet
        .until(
            |view| view["instances"].as_array().map_or(0, Vec::len) == 2,
            "both instances see each other",
        )
        .await;
    for i in 0..2 {
        let reply = pay(&fleet.url(i, "/v1/payments"), &[("x-api-key", "key-a")]).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "instance {i}: {}",
            reply.text()
        );
    }
    let state = std::fs::read_to_string(&state_file).unwrap_or_default();
    assert!(!state.contains("polling storm"), "{state}");
    for gw in fleet.instances {
        gw.shutdown().await;
    }
}

/// An instance started while Redis is out of reach divides its quotas by the fleet it last saw
/// (kept in its state file), not by one: it spends its share, never the whole quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_without_redis_spends_its_share_of_the_fleet_it_last_saw() {
    let biller = TestBiller::roomy().await;
    let mut redis = RedisServer::start();
    let partners = partner("wallet-a", "key-a", r#"payment = "20/min burst 20""#, "");
    let fleet = fleet(&biller.url(), "10000/s", &partners, &redis.url(), 2).await;
    let state_file = fleet._dir.join("state-1.json");
    let deadline = Instant::now() + Duration::from_secs(5);
    let on_file = || {
        let text = std::fs::read_to_string(&state_file).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default()["fleet_instances"]
            .as_u64()
    };
    while on_file() != Some(2) {
        assert!(
            Instant::now() < deadline,
            "the fleet's size never reached the state file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Fleet {
        instances,
        _dir: dir,
    } = fleet;
    for gw in instances {
        gw.shutdown().await;
    }

    redis.kill();
    let text = instance_config(&biller.url(), "10000/s", &partners, &redis.url(), 1, &dir);
    let alone = Fleet {
        instances: vec![start_real(&text).await],
        _dir: dir,
    };
    let view = alone.view(0).await;
    assert_eq!(
        (view["redis_up"].as_bool(), view["mode"].as_str()),
        (Some(false), Some("shares"))
    );
    assert_eq!(
        sample(&alone.metrics(0).await, "billgate_fleet_instances"),
        2.0
    );
    // 20 a minute, burst 20, over two: a burst of 10 here.
    let mut admitted = 0;
    for _ in 0..20 {
        let reply = pay(&alone.url(0, "/v1/payments"), &[("x-api-key", "key-a")]).await;
        if reply.status.is_success() {
            admitted += 1;
        } else {
            assert_eq!(
                reply.status,
                StatusCode::TOO_MANY_REQUESTS,
                "{}",
                reply.text()
            );
        }
    }
    assert_eq!(admitted, 10);
    for gw in alone.instances {
        gw.shutdown().await;
    }
}

/// Polls the first `n` instances' `billgate_upstream_concurrency_limit` until all are `want`
/// (bounded: 10 s).
async fn concurrency_limits(fleet: &Fleet, n: usize, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut got = Vec::new();
        for i in 0..n {
            got.push(sample(
                &fleet.metrics(i).await,
                "billgate_upstream_concurrency_limit",
            ));
        }
        if got.iter().all(|l| *l == want) {
            return;
        }
        assert!(Instant::now() < deadline, "limits {got:?}, not {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each instance's share of `max_in_flight` follows the fleet's size: 24 over two instances is
/// 12 each, over three 8 each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_share_follows_the_fleets_size() {
    let biller = TestBiller::roomy().await;
    let redis = RedisServer::start();
    let partners = partner("wallet-a", "key-a", r#"payment = "200/s""#, "");
    let dir = TempDir::new("fleet-in-flight");
    let texts: Vec<String> = (1..=3)
        .map(|n| {
            instance_config(&biller.url(), "10000/s", &partners, &redis.url(), n, &dir).replacen(
                "capacity = \"10000/s\"",
                "capacity = \"10000/s\"\nmax_in_flight = 24",
                1,
            )
        })
        .collect();
    let mut fleet = Fleet {
        instances: vec![start_real(&texts[0]).await, start_real(&texts[1]).await],
        _dir: dir,
    };
    concurrency_limits(&fleet, 2, 12.0).await;
    fleet.instances.push(start_real(&texts[2]).await);
    concurrency_limits(&fleet, 3, 8.0).await;
    for gw in fleet.instances {
        gw.shutdown().await;
    }
}
