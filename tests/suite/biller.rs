//! The stand-in biller, black box over a real socket: bills, receipts, errors, stats, the
//! recorded requests, and overload, collapse and brown-out driven by a fake clock.

use std::net::SocketAddr;
use std::time::Duration;

use billgate::clock::{Clock, FakeClock};
use billgate_sim::biller::{BillerOptions, StandInBiller};
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Running {
    biller: StandInBiller,
    hand: FakeClock,
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: oneshot::Sender<()>,
    served: JoinHandle<std::io::Result<()>>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(name).unwrap().to_str().unwrap()
    }
}

/// A biller on 127.0.0.1:0 with a fake clock, so its load model moves only when told.
async fn start(options: BillerOptions) -> Running {
    let (clock, hand) = Clock::fake();
    let biller = StandInBiller::new(options, clock);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(biller.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    let client = Client::builder(TokioExecutor::new()).build_http();
    Running {
        biller,
        hand,
        addr,
        client,
        stop,
        served,
    }
}

impl Running {
    async fn send(&self, method: Method, path: &str, body: impl Into<Bytes>) -> Answer {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .header("x-trace-probe", "probe-42")
            .body(Full::new(body.into()))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, Bytes::new()).await
    }

    async fn pay(&self, body: &str) -> Answer {
        self.send(Method::POST, "/v1/payments", body.to_owned())
            .await
    }
}

fn instant() -> BillerOptions {
    BillerOptions {
        base_latency: Duration::ZERO,
        ..BillerOptions::default()
    }
}

/// An RFC 9457 problem with this status and type.
fn assert_problem(answer: &Answer, status: StatusCode, kind: &str) {
    assert_eq!(answer.status, status);
    assert_eq!(
        answer.header(header::CONTENT_TYPE),
        "application/problem+json"
    );
    let body = answer.json();
    assert_eq!(body["type"], kind);
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

#[tokio::test]
async fn answers_a_bill_deterministically() {
    let b = start(BillerOptions::default()).await;
    let answer = b.get("/v1/bills/ACC-1001").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header(header::CONTENT_TYPE), "application/json");
    assert_eq!(
        answer.json(),
        json!({
            "account": "ACC-1001",
            "biller": "City Water & Power",
            "bill_id": "BILL-202610-2AE71495",
            "period": "2026-10",
            "amount_due": {"value": "375.81", "currency": "CNY"},
            "due_date": "2026-12-15",
            "status": "due",
        })
    );
    assert_eq!(b.get("/v1/bills/ACC-1001").await.body, answer.body);
}

#[tokio::test]
async fn some_accounts_have_no_bill_due() {
    let b = start(BillerOptions {
        name: "Harbour Gas".to_owned(),
        ..instant()
    })
    .await;
    let answer = b.get("/v1/bills/ACC-1000").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json(),
        json!({"account": "ACC-1000", "biller": "Harbour Gas", "status": "no_bill_due"})
    );
}

#[tokio::test]
async fn a_payment_gets_a_unique_receipt() {
    let b = start(instant()).await;
    let first = b
        .pay(r#"{"account":"ACC-1001","bill_id":"BILL-202610-2AE71495","amount":"375.81"}"#)
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.header(header::CONTENT_TYPE), "application/json");
    let first = first.json();
    assert_eq!(first["receipt_id"], "RCPT-000000001");
    assert_eq!(first["account"], "ACC-1001");
    assert_eq!(first["bill_id"], "BILL-202610-2AE71495");
    assert_eq!(first["amount"], "375.81");
    assert_eq!(first["currency"], "CNY");
    assert_eq!(first["status"], "accepted");
    let paid_at = first["paid_at"].as_str().unwrap();
    assert_eq!(paid_at.len(), "2026-10-05T08:30:00Z".len(), "{paid_at}");
    assert!(
        paid_at.starts_with("20") && paid_at.ends_with('Z'),
        "{paid_at}"
    );
    assert_eq!(&paid_at[10..11], "T");

    let second = b
        .pay(r#"{"account":"ACC-7","amount":"12.5","currency":"USD"}"#)
        .await;
    assert_eq!(second.status, StatusCode::CREATED);
    let second = second.json();
    assert_eq!(second["receipt_id"], "RCPT-000000002");
    assert_eq!(second["amount"], "12.50");
    assert_eq!(second["currency"], "USD");
    assert!(second.get("bill_id").is_none());
}

#[tokio::test]
async fn refuses_bad_accounts_and_bad_payments_with_400() {
    let b = start(instant()).await;
    for path in [
        "/v1/bills/ACC_1",
        "/v1/bills/",
        &format!("/v1/bills/{}", "9".repeat(33)),
    ] {
        assert_problem(&b.get(path).await, StatusCode::BAD_REQUEST, "about:blank");
    }
    for body in [
        "{not json",
        r#"{"account":"ACC-1"}"#,
        r#"{"account":"ACC-1","amount":"-5"}"#,
        r#"{"account":"ACC-1","amount":12.5}"#,
        r#"{"account":"no spaces","amount":"1"}"#,
        "",
    ] {
        assert_problem(&b.pay(body).await, StatusCode::BAD_REQUEST, "about:blank");
    }
    let stats = b.biller.stats();
    assert_eq!((stats.received, stats.served), (9, 0));
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let b = start(instant()).await;
    for path in [
        "/",
        "/v1/bill/ACC-1",
        "/v1/bills/ACC-1/history",
        "/v1/payments/1",
    ] {
        assert_problem(&b.get(path).await, StatusCode::NOT_FOUND, "about:blank");
    }
    let answer = b.send(Method::DELETE, "/v1/bills/ACC-1", "").await;
    assert_problem(&answer, StatusCode::METHOD_NOT_ALLOWED, "about:blank");
    assert_eq!(answer.header(header::ALLOW), "GET");
    let answer = b.get("/v1/payments").await;
    assert_problem(&answer, StatusCode::METHOD_NOT_ALLOWED, "about:blank");
    assert_eq!(answer.header(header::ALLOW), "POST");
    let answer = b.send(Method::PUT, "/_biller/brownout", "").await;
    assert_eq!(answer.header(header::ALLOW), "POST, DELETE");
    let stats = b.biller.stats();
    assert_eq!((stats.received, stats.inquiries, stats.payments), (6, 0, 0));
}

#[tokio::test]
async fn bodies_over_64_kib_are_413_and_the_biller_carries_on() {
    let b = start(instant()).await;
    let padding = "x".repeat(64 * 1024);
    let body = format!(r#"{{"account":"ACC-1","amount":"1","padding":"{padding}"}}"#);
    assert_problem(
        &b.pay(&body).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "about:blank",
    );
    let overhead = body.len() - padding.len();
    let just_fits = format!(
        r#"{{"account":"ACC-1","amount":"1","padding":"{}"}}"#,
        &padding[overhead..]
    );
    assert_eq!(just_fits.len(), 64 * 1024);
    assert_eq!(b.pay(&just_fits).await.status, StatusCode::CREATED);

    // Declared far too large: refused before the body is sent, and the connection closed.
    let mut stream = TcpStream::connect(b.addr).await.unwrap();
    let head = "POST /v1/payments HTTP/1.1\r\nhost: biller\r\ncontent-length: 2000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{reply}"
    );
    assert!(reply.contains("connection: close\r\n"), "{reply}");
}

#[tokio::test]
async fn stats_count_exactly_and_control_paths_are_not_load() {
    let b = start(instant()).await;
    b.get("/v1/bills/ACC-1001").await;
    b.get("/v1/bills/ACC-1000").await;
    b.get("/v1/bills/bad_account").await;
    b.pay(r#"{"account":"ACC-1001","amount":"1.00"}"#).await;
    b.get("/nowhere").await;
    let over_http = b.get("/_biller/stats").await;
    assert_eq!(over_http.status, StatusCode::OK);
    assert_eq!(
        over_http.json(),
        json!({
            "received": 5, "served": 3, "failed_overload": 0, "failed_down": 0,
            "failed_brownout": 0, "inquiries": 3, "payments": 1, "down": false,
            "times_down": 0, "current_rate": 0.0,
            // Its client reuses one connection; in plain TCP there is no handshake.
            "connections": 1, "tls_handshakes": 0,
            // Nothing to push to.
            "pushed": 0, "push_failures": 0,
        })
    );
    b.hand.advance(Duration::from_millis(100));
    let stats = b.biller.stats();
    assert_eq!(stats.received, 5, "the stats call itself is not counted");
    assert_eq!(
        stats.current_rate, 4.0,
        "arrivals at the bill and payment paths"
    );
}

#[tokio::test]
async fn recent_requests_show_what_reached_the_biller() {
    let b = start(instant()).await;
    b.get("/v1/bills/ACC-1001?channel=app").await;
    b.get("/_biller/stats").await;
    let recent = b.biller.recent_requests();
    assert_eq!(recent.len(), 1, "control paths are not recorded");
    assert_eq!(recent[0].method, Method::GET);
    assert_eq!(recent[0].path_and_query, "/v1/bills/ACC-1001?channel=app");
    assert_eq!(recent[0].headers["x-trace-probe"], "probe-42");
    assert!(recent[0].headers.get("x-api-key").is_none());
}

#[tokio::test]
async fn overload_sheds_then_sustained_overload_takes_it_down_and_it_comes_back() {
    let b = start(BillerOptions {
        capacity_per_sec: 10.0,
        ..instant()
    })
    .await;
    for _ in 0..20 {
        assert_eq!(b.get("/v1/bills/ACC-1001").await.status, StatusCode::OK);
    }
    b.hand.advance(Duration::from_millis(100)); // t = 0.1 s, 200/s against 10/s: half fail
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(b.get("/v1/bills/ACC-1001").await);
    }
    assert_eq!(statuses[0].status, StatusCode::OK);
    assert_problem(
        &statuses[1],
        StatusCode::SERVICE_UNAVAILABLE,
        "/problems/biller-overloaded",
    );
    assert_eq!(statuses[1].header(header::RETRY_AFTER), "1");
    assert_eq!(b.biller.stats().failed_overload, 2);

    // Keep 200/s up: at t = 3.2 s overload has lasted longer than the 3 s grace.
    for _ in 0..30 {
        b.hand.advance(Duration::from_millis(100));
        for _ in 0..20 {
            b.get("/v1/bills/ACC-1001").await;
        }
    }
    assert_eq!(b.biller.stats().times_down, 0);
    b.hand.advance(Duration::from_millis(100));
    let down = b.pay(r#"{"account":"ACC-1","amount":"1"}"#).await;
    assert_problem(
        &down,
        StatusCode::SERVICE_UNAVAILABLE,
        "/problems/biller-down",
    );
    assert_eq!(down.header(header::RETRY_AFTER), "10");
    let stats = b.biller.stats();
    assert!(stats.down);
    assert_eq!((stats.times_down, stats.failed_down), (1, 1));

    b.hand.advance(Duration::from_secs(10));
    assert_eq!(b.get("/v1/bills/ACC-1001").await.status, StatusCode::OK);
    assert!(!b.biller.stats().down);
}

#[tokio::test]
async fn a_brownout_is_driven_over_http() {
    let b = start(instant()).await;
    let set = b
        .send(
            Method::POST,
            "/_biller/brownout?latency_factor=3&failure_share=0.5",
            "",
        )
        .await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(
        set.json(),
        json!({"latency_factor": 3.0, "failure_share": 0.5})
    );
    // A brown-out fails calls in proportion to load (unit-tested on a fake clock in
    // `biller::load`): an idle biller still answers.
    let first = b.get("/v1/bills/ACC-1001").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(b.biller.stats().failed_brownout, 0);

    for query in [
        "failure_share=2",
        "latency_factor=0.5",
        "latency_factor=x",
        "failure_rate=0.3",
    ] {
        let refused = b
            .send(Method::POST, &format!("/_biller/brownout?{query}"), "")
            .await;
        assert_problem(&refused, StatusCode::BAD_REQUEST, "about:blank");
    }

    let cleared = b.send(Method::DELETE, "/_biller/brownout", "").await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT);
    for _ in 0..4 {
        assert_eq!(b.get("/v1/bills/ACC-1001").await.status, StatusCode::OK);
    }

    // A broken component fails its share whatever the load.
    b.biller.set_failing(1.0);
    let failed = b.get("/v1/bills/ACC-1001").await;
    assert_problem(
        &failed,
        StatusCode::INTERNAL_SERVER_ERROR,
        "/problems/biller-brownout",
    );
    b.biller.clear_brownout();
    assert_eq!(b.get("/v1/bills/ACC-1001").await.status, StatusCode::OK);
    assert_eq!(b.biller.stats().failed_brownout, 1);
}

#[tokio::test]
async fn garbage_on_the_wire_does_not_stop_it() {
    let b = start(instant()).await;
    for garbage in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"\x00\xff\xfe\r\n\r\n",
        b"GET /v1/bills/\xff\xfe HTTP/1.1\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(b.addr).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply).await;
        assert!(
            reply.is_empty() || reply.starts_with(b"HTTP/1.1 4"),
            "{reply:?}"
        );
    }
    assert_eq!(b.get("/v1/bills/ACC-1001").await.status, StatusCode::OK);
}

#[tokio::test]
async fn serve_returns_once_shutdown_resolves() {
    let b = start(instant()).await;
    assert_eq!(b.get("/v1/bills/ACC-1001").await.status, StatusCode::OK);
    b.stop.send(()).unwrap();
    b.served.await.unwrap().unwrap();
    assert!(
        TcpStream::connect(b.addr).await.is_err(),
        "the listener is closed"
    );
}
