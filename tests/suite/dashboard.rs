//! The Grafana dashboard against a real Prometheus: a gateway and a stand-in biller in-process,
//! traffic that gives every panel something to show, the `prometheus` binary scraping the admin
//! listener, and every query of every panel run through Prometheus's HTTP API. Also lints
//! `/metrics` with `promtool check metrics` and checks the example `grafana/prometheus.yml`.
//!
//! The fleet's panels read a second gateway scraped beside the first: a fleet of one on a
//! `redis-server` of the test's own, on the real clock. The traffic's gateway stays alone: it
//! runs on a fake clock, which the fleet's buckets (kept on Redis's clock) would not follow, so
//! its quotas would no longer refill when the test moves the clock. `tests/suite/fleet.rs` checks the
//! fleet's metrics' values across instances.
//!
//! Needs `prometheus` and `promtool` (Debian's `prometheus` package) and `redis-server` on the
//! PATH; `.ci/run` installs them. Without them this test fails and says so.

use crate::common;
use crate::hooks;
use crate::redis_server;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use billgate::clock::{Clock, FakeClock};
use billgate::gateway::{self, Gateway};
use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis_server::RedisServer;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TOKEN: &str = "dashboard-admin-token";
/// What the test puts for the dashboard's `$partner` variable: every partner it drives.
const PARTNERS: &str = "wallet-a|bank-b|paynow-c";
/// The metric family another change is adding; its panels are checked once it exists.
const CACHE_FAMILY: &str = "billgate_cache_requests_total";
/// Exported only by a listener with `[server.tls]`, which this test's gateway has not:
/// `tests/suite/tls.rs` checks its value against a TLS gateway.
const TLS_ONLY_FAMILY: &str = "billgate_tls_cert_expiry_seconds";

const BREAKER: &str =
    "[biller.breaker]\nfailure_rate = 0.5\nwindow = \"10s\"\nmin_calls = 4\nopen_for = \"5s\"\n";

fn partners() -> String {
    partner(
        "wallet-a",
        "key-a",
        r#"payment = "50/s", inquiry_user = "20/s", inquiry_scheduled = "5/s""#,
        "per_account = \"30/min\"",
    ) + &partner(
        "bank-b",
        "key-b",
        r#"payment = "50/s", inquiry_user = "10/s""#,
        "per_account = \"60/min\"",
    ) + &partner(
        "paynow-c",
        "key-c",
        r#"inquiry_user = "2/s""#,
        "per_account = \"1/min\"\nmode = \"shadow\"",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    require_prometheus().await;
    let dir = TempDir::new("dashboard");
    let dashboard = read_dashboard();
    check_provisioning(&dashboard);
    check_example_config().await;

    let biller = TestBiller::roomy().await;
    let (gw, hand) = start_gateway(&dir, &biller.url()).await;
    let admin = format!("http://{}", gw.admin_addr);
    let proxy = format!("http://{}", gw.addr);
    let redis = RedisServer::start();
    let hooks = hooks::Receiver::start(0, false).await;
    let member = start_fleet_member(&biller.url(), &redis.url(), &dir, &hooks).await;
    // A subscription on the fleet member, refreshed every 2 s, for the Subscriptions row.
    let subscribed = send(
        Method::POST,
        &format!("http://{}/v1/subscriptions", member.addr),
        &[("x-api-key", "key-a")],
        format!(
            "{{\"account\": \"dash-1\", \"callback\": \"{}dash\"}}",
            hooks.prefix()
        ),
    )
    .await;
    assert_eq!(
        subscribed.status,
        StatusCode::CREATED,
        "{}",
        subscribed.text()
    );

    // billgate creates a transition's series at its first occurrence, and `increase()` cannot
    // see a series' first sample as an increase: this first cycle makes the series, the one
    // between scrapes below shows in the transitions panel.
    open_and_close_the_breaker(&biller, &hand, &proxy).await;

    // Traffic runs in rounds until every query has been asked; holding `pause` stops it between
    // rounds.
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(Mutex::new(()));
    let traffic = tokio::spawn(drive_traffic(
        proxy.clone(),
        hand.clone(),
        Arc::clone(&stop),
        Arc::clone(&pause),
    ));

    let mut prometheus = Prometheus::start(&dir, &[gw.admin_addr, member.admin_addr]).await;
    let scraped = prometheus.wait_for_scrapes(2.0).await;

    // Between scrapes: a reload through the admin API, and the breaker opened and closed again,
    // so the reload and transition panels show increases, not only zeros.
    {
        let _paused = pause.lock().await;
        let reloaded = send(
            Method::POST,
            &format!("{admin}/admin/reload"),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            "",
        )
        .await;
        assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
        open_and_close_the_breaker(&biller, &hand, &proxy).await;
    }
    // A bill event pushed to the fleet member, delivered to its subscriber between scrapes.
    let pushed = send(
        Method::POST,
        &format!("http://{}/v1/bill-events", member.admin_addr),
        &[("authorization", "Bearer dashboard-biller-token")],
        r#"{"account":"dash-1","bill_id":"DASH-1","status":"due","amount_due":"1.00","due_date":"2026-12-31"}"#,
    )
    .await;
    assert_eq!(pushed.status, StatusCode::ACCEPTED, "{}", pushed.text());
    assert!(!hooks.next().await.id.is_empty());
    // And a few requests through the fleet member, so its leases are refilled between scrapes.
    for n in 0..5 {
        let reply = get(
            &format!("http://{}/v1/bills/m{n}", member.addr),
            &[("x-api-key", "key-a"), ("x-request-origin", "user")],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    prometheus.wait_for_scrapes(scraped + 2.0).await;

    // Every family has its series by now, the breaker transitions' included.
    let metrics = get(&format!("{admin}/metrics"), &[]).await.text();
    lint_metrics(&metrics).await;
    let fleet_metrics = get(&format!("http://{}/metrics", member.admin_addr), &[])
        .await
        .text();
    lint_metrics(&fleet_metrics).await;
    for (series, value) in [
        ("billgate_fleet_redis_up", 1.0),
        ("billgate_fleet_instances", 1.0),
        ("billgate_fleet_config_mismatch", 0.0),
        ("billgate_fleet_fallbacks_total", 0.0),
    ] {
        assert!(
            fleet_metrics.contains(&format!("\n{series} ")),
            "the fleet member's /metrics lacks {series}"
        );
        assert_eq!(sample(&fleet_metrics, series), value, "{series}");
    }

    let cache_present = metrics.contains(&format!("# TYPE {CACHE_FAMILY} "));
    if !cache_present {
        eprintln!(
            "note: {CACHE_FAMILY} is not in the gateway's /metrics yet; the cache panels' queries are skipped"
        );
    }
    let mut checked = 0;
    // By panel title; the two panels looked up below have one query each.
    let mut results = BTreeMap::new();
    for (panel, expr) in panel_queries(&dashboard) {
        let query = substitute(&expr);
        if (query.contains(CACHE_FAMILY) && !cache_present) || query.contains(TLS_ONLY_FAMILY) {
            eprintln!("note: skipped \"{panel}\": {query}");
            continue;
        }
        let result = prometheus.query(&query).await;
        let series = result.as_array().map_or(0, Vec::len);
        assert!(
            series > 0,
            "panel \"{panel}\": the query returned no series\n  {query}"
        );
        // A ratio of caches that saw no lookups is NaN; everything the test drives must be a number.
        if !query.contains(CACHE_FAMILY) {
            assert!(
                has_number(&result),
                "panel \"{panel}\": every value is NaN or infinite\n  {query}\n  {result}"
            );
        }
        results.insert(panel, result);
        checked += 1;
    }
    assert!(checked >= 24, "only {checked} panel queries were checked");
    let increased = |panel: &str, label: &str, value: &str| {
        results[panel]
            .as_array()
            .into_iter()
            .flatten()
            .any(|series| {
                series["metric"][label] == value
                    && series["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v > 0.0)
            })
    };
    assert!(
        increased("Configuration reloads", "result", "ok"),
        "the reload panel does not show the reload: {}",
        results["Configuration reloads"]
    );
    assert!(
        increased("Breaker transitions", "to", "open"),
        "the transitions panel does not show the breaker opening: {}",
        results["Breaker transitions"]
    );
    assert!(
        increased("Fleet: lease refills by result", "result", "granted"),
        "the refills panel shows no lease granted: {}",
        results["Fleet: lease refills by result"]
    );

    // The `partner` variable's query, as Grafana asks it.
    let values = prometheus.partner_values().await;
    for id in PARTNERS.split('|') {
        assert!(
            values.iter().any(|v| v == id),
            "label_values(billgate_requests_total, partner) lacks {id}: {values:?}"
        );
    }

    stop.store(true, Ordering::Relaxed);
    let statuses = traffic.await.expect("traffic task");
    for expected in [200, 201, 401, 403, 404, 429] {
        assert!(
            statuses.contains_key(&expected),
            "the traffic saw no {expected}: {statuses:?}"
        );
    }
    prometheus.stop().await;
    gw.shutdown().await;
    member.shutdown().await;
}

/// Fails, saying how to get them, unless `prometheus` and `promtool` run.
async fn require_prometheus() {
    for tool in ["prometheus", "promtool"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "`{tool}` is not installed: run .ci/run, which installs Debian's prometheus package \
             (or `apt-get install prometheus`); this test needs a real Prometheus"
        );
    }
}

fn read_dashboard() -> Value {
    let path = format!("{ROOT}/grafana/dashboards/billgate.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// The dashboard and the provisioning files agree: the data source uid, the file provider, the
/// variables every panel uses.
fn check_provisioning(dashboard: &Value) {
    let read = |rel: &str| {
        let path = format!("{ROOT}/grafana/{rel}");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let datasources = read("provisioning/datasources/billgate.yml");
    let providers = read("provisioning/dashboards/billgate.yml");
    assert!(datasources.contains("type: prometheus"));
    assert!(datasources.contains("url: http://127.0.0.1:9090"));
    assert!(providers.contains("type: file"));
    assert!(providers.contains("path: "));

    assert!(dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 39);
    assert_eq!(dashboard["uid"], "billgate");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("the dashboard has no `{name}` variable"))
    };
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    let uid = datasource["current"]["value"]
        .as_str()
        .expect("the datasource variable's default");
    assert!(
        datasources.contains(&format!("uid: {uid}\n")),
        "the datasource variable defaults to {uid}, which the provisioning file does not define"
    );
    assert_eq!(
        variable("partner")["definition"],
        "label_values(billgate_requests_total, partner)"
    );

    let mut ids = std::collections::HashSet::new();
    for panel in all_panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(panel["id"].as_u64()),
            "panel id repeated: {title}"
        );
        assert!(panel["gridPos"]["w"].is_u64(), "{title} has no gridPos");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel \"{title}\" does not use the datasource variable"
        );
        let targets = panel["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel \"{title}\" has no query");
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Each panel target's `(panel title, expr)`.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in all_panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel \"{title}\" has a target without expr"));
            out.push((title.to_owned(), expr.to_owned()));
        }
    }
    out
}

/// Grafana's variables as the test sets them.
fn substitute(expr: &str) -> String {
    let query = expr
        .replace("$__rate_interval", "30s")
        .replace("$__interval", "5s")
        .replace("${partner}", PARTNERS)
        .replace("$partner", PARTNERS);
    assert!(
        !query.contains('$'),
        "a variable the test does not know: {expr}"
    );
    query
}

fn has_number(result: &Value) -> bool {
    result.as_array().into_iter().flatten().any(|series| {
        series["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

/// A gateway on a fake clock, from a file so the admin API can reload it, sweeping accounts
/// often so the tracked-accounts gauge moves.
async fn start_gateway(dir: &TempDir, biller_url: &str) -> (Gateway, FakeClock) {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).expect("write token");
    let text = with_block(
        &config_toml(biller_url, "2s", "10000/s", &partners()),
        BREAKER,
    )
    .replacen(
        "[server]\n",
        &format!(
            "[server]\nadmin_token_file = \"{}\"\n",
            dir.join("token").display()
        ),
        1,
    );
    let path = dir.join("billgate.toml");
    std::fs::write(&path, text).expect("write config");
    let config = billgate::config::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    let (clock, hand) = Clock::fake();
    let options = gateway::Options {
        clock,
        config_path: Some(path),
        drain: Duration::from_millis(500),
        sweep_every: Duration::from_millis(200),
        ..gateway::Options::default()
    };
    let gw = Gateway::start(config, options)
        .await
        .expect("start gateway");
    (gw, hand)
}

/// A gateway in a fleet of one on the Redis at `redis_url`, on the real clock, with the same
/// partners; idle but for what the test sends it.
/// A fleet of one, whose wallet-a may also subscribe (webhooks to `hooks`).
async fn start_fleet_member(
    biller_url: &str,
    redis_url: &str,
    dir: &TempDir,
    hooks: &hooks::Receiver,
) -> Gateway {
    std::fs::write(
        dir.join("wallet-a.whsec"),
        "whsec_c2VjcmV0LW9mLXdhbGxldC1h\n",
    )
    .expect("secret");
    std::fs::write(dir.join("biller.token"), "dashboard-biller-token\n").expect("token");
    let partners = partners()
        .replacen(
            r#"inquiry_scheduled = "5/s" }"#,
            r#"inquiry_scheduled = "5/s", subscription = "100/s" }"#,
            1,
        )
        .replacen(
            "per_account = \"30/min\"",
            &format!(
                "per_account = \"30/min\"\nwebhook_prefixes = [\"{}\"]\nwebhook_secret_file = \"{}\"",
                hooks.prefix(),
                dir.join("wallet-a.whsec").display()
            ),
            1,
        );
    let subscriptions = format!(
        "[subscriptions]\nstore = \"sqlite://{}\"\nrefresh = \"2s\"\nbiller_token_file = \"{}\"\n",
        dir.join("member.db").display(),
        dir.join("biller.token").display()
    );
    let text = format!(
        "{}\n[fleet]\nredis = \"{redis_url}\"\ninstance = \"dashboard\"\n",
        with_block(
            &config_toml(biller_url, "2s", "10000/s", &partners),
            &subscriptions
        )
    );
    Gateway::start(load(&text), gateway::Options::default())
        .await
        .expect("start the fleet member")
}

/// Failing biller calls open the breaker; after `open_for`, probes to a recovered biller close
/// it: three transitions for the breaker panels. First moves the clock past the breaker's window
/// so the traffic's successes do not outvote the failures.
async fn open_and_close_the_breaker(biller: &TestBiller, hand: &FakeClock, proxy: &str) {
    let user = [("x-api-key", "key-a"), ("x-request-origin", "user")];
    hand.advance(Duration::from_secs(11));
    biller.biller.set_failing(1.0);
    for n in 0..4 {
        get(&format!("{proxy}/v1/bills/f{n}"), &user).await;
    }
    let refused = get(&format!("{proxy}/v1/bills/f9"), &user).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json()["reason"], "breaker_open");
    biller.biller.clear_brownout();
    hand.advance(Duration::from_secs(5));
    for n in 0..3 {
        let probe = get(&format!("{proxy}/v1/bills/p{n}"), &user).await;
        assert_eq!(probe.status, StatusCode::OK, "{}", probe.text());
    }
}

/// Rounds of mixed traffic until `stop`: admitted and refused requests for two partners, a
/// shadow partner over its quota, per-account limits, unknown keys, unrouted paths. Each round
/// moves the fake clock 100ms so quotas refill a little. Returns how often each status came.
async fn drive_traffic(
    proxy: String,
    hand: FakeClock,
    stop: Arc<AtomicBool>,
    pause: Arc<Mutex<()>>,
) -> BTreeMap<u16, u32> {
    const MAX_ROUNDS: u32 = 600;
    let a_user = [("x-api-key", "key-a"), ("x-request-origin", "user")];
    let a_poll = [("x-api-key", "key-a")];
    let b_user = [("x-api-key", "key-b"), ("x-request-origin", "user")];
    let b_poll = [("x-api-key", "key-b")];
    let c_user = [("x-api-key", "key-c"), ("x-request-origin", "user")];
    let mut statuses = BTreeMap::new();
    for round in 0..MAX_ROUNDS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let running = pause.lock().await;
        let url = |path: String| format!("{proxy}{path}");
        let replies = [
            get(&url(format!("/v1/bills/a{}", round % 5)), &a_user).await,
            get(&url(format!("/v1/bills/a{}", round % 5)), &a_user).await,
            get(&url(format!("/v1/bills/s{round}")), &a_poll).await,
            get(&url(format!("/v1/bills/s{round}x")), &a_poll).await,
            pay(&url("/v1/payments".into()), &a_poll).await,
            get(&url(format!("/v1/lookup?account=b{}", round % 3)), &b_user).await,
            get(&url(format!("/v1/bills/b{round}")), &b_poll).await,
            pay(&url("/v1/payments".into()), &b_poll).await,
            get(&url("/v1/bills/c1".into()), &c_user).await,
            get(&url("/v1/bills/c1".into()), &c_user).await,
            get(&url("/v1/bills/c2".into()), &c_user).await,
            get(&url("/v1/bills/u1".into()), &[("x-api-key", "no-such-key")]).await,
            get(&url("/v1/nowhere".into()), &a_poll).await,
        ];
        for reply in replies {
            *statuses.entry(reply.status.as_u16()).or_insert(0) += 1;
        }
        hand.advance(Duration::from_millis(100));
        drop(running);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    statuses
}

/// `promtool check metrics` on the gateway's `/metrics`: exit 0 and nothing printed.
async fn lint_metrics(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run promtool");
    let mut stdin = child.stdin.take().expect("promtool stdin");
    stdin
        .write_all(metrics.as_bytes())
        .await
        .expect("write to promtool");
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("promtool check metrics took over 10s")
        .expect("promtool check metrics");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && printed.trim().is_empty(),
        "promtool check metrics on /metrics ({}):\n{printed}",
        output.status
    );
}

/// `promtool check config` on the shipped example.
async fn check_example_config() {
    let path = format!("{ROOT}/grafana/prometheus.yml");
    let output = Command::new("promtool")
        .args(["check", "config", &path])
        .output()
        .await
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool check config {path}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&path).expect("prometheus.yml");
    for line in [
        "127.0.0.1:9100",
        "metrics_path: /metrics",
        "scrape_interval: 5s",
    ] {
        assert!(text.contains(line), "{path} lacks `{line}`");
    }
}

/// A `prometheus` started for this test on a free loopback port, its data in the temp dir,
/// scraping every target as job `billgate`.
struct Prometheus {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Prometheus {
    async fn start(dir: &TempDir, targets: &[std::net::SocketAddr]) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let targets = targets.join(", ");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: billgate\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [{targets}]\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("prometheus log");
        let err = out.try_clone().expect("prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        prometheus.wait_ready().await;
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `/-/ready` for up to 20s.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("{}/-/ready", self.base);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            if let Some((StatusCode::OK, _)) = try_get(&url).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after 20s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until `count` scrapes of each gateway have succeeded, for up to 20s; returns how
    /// many have (of the gateway scraped least).
    async fn wait_for_scrapes(&mut self, count: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let result = self
                .query(r#"min(sum_over_time(up{job="billgate"}[1m]))"#)
                .await;
            let scraped = result[0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if scraped >= count {
                return scraped;
            }
            if Instant::now() >= deadline {
                let targets = try_get(&format!("{}/api/v1/targets", self.base)).await;
                panic!(
                    "prometheus scraped the gateway successfully {scraped} times in 20s, not {count}\n\
                     targets: {targets:?}\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An instant query; fails unless Prometheus answers `success`. Returns `data.result`.
    async fn query(&self, query: &str) -> Value {
        let url = format!("{}/api/v1/query?query={}", self.base, encode(query));
        let Some((status, body)) = try_get(&url).await else {
            panic!(
                "prometheus did not answer the query {query}\n{}",
                self.log()
            );
        };
        let reply: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("prometheus answered {status}, not JSON ({e}): {body:?}"));
        assert!(
            status == StatusCode::OK && reply["status"] == "success",
            "prometheus refused the query ({status}):\n  {query}\n  {reply}"
        );
        assert_eq!(reply["data"]["resultType"], "vector", "{query}");
        reply["data"]["result"].clone()
    }

    /// `label_values(billgate_requests_total, partner)`, through the labels API.
    async fn partner_values(&self) -> Vec<String> {
        let url = format!(
            "{}/api/v1/label/partner/values?match[]=billgate_requests_total",
            self.base
        );
        let (status, body) = try_get(&url).await.expect("prometheus label values");
        assert_eq!(status, StatusCode::OK);
        let reply: Value = serde_json::from_slice(&body).expect("label values JSON");
        reply["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A GET that may fail (nothing listening yet): `None` then, or after 5s.
async fn try_get(url: &str) -> Option<(StatusCode, Bytes)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let fetch = async {
        let response = client.request(request).await.ok()?;
        let status = response.status();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
