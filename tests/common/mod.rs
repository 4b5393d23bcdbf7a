//! Test harness: a stand-in biller and a gateway on port 0, a plain HTTP client, and
//! configuration builders. Every test talks real HTTP over loopback sockets.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use billgate::clock::{Clock, FakeClock};
use billgate::config::{hash_key, load_str, Config};
use billgate::gateway::{self, Gateway};
use billgate_sim::biller::{BillerOptions, StandInBiller};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running stand-in biller.
pub struct TestBiller {
    pub biller: StandInBiller,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl TestBiller {
    pub async fn start(options: BillerOptions) -> TestBiller {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind biller");
        let addr = listener.local_addr().expect("biller addr");
        let biller = StandInBiller::new(options, Clock::real());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(biller.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        TestBiller {
            biller,
            addr,
            stop: Some(stop),
        }
    }

    /// A biller fast and large enough never to be the limit.
    pub async fn roomy() -> TestBiller {
        TestBiller::start(BillerOptions {
            capacity_per_sec: 100_000.0,
            base_latency: Duration::from_millis(1),
            ..BillerOptions::default()
        })
        .await
    }

    /// A biller that takes `latency` to answer anything.
    pub async fn slow(latency: Duration) -> TestBiller {
        TestBiller::start(BillerOptions {
            capacity_per_sec: 100_000.0,
            base_latency: latency,
            ..BillerOptions::default()
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Yields until the biller has received `n` requests (bounded), then asserts it has.
    pub async fn until_received(&self, n: u64) {
        for _ in 0..1_000_000 {
            if self.biller.stats().received >= n {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            self.biller.stats().received,
            n,
            "the biller never got request {n}"
        );
    }
}

impl Drop for TestBiller {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A gateway started in-process on a fake clock.
pub struct TestGateway {
    pub gateway: Gateway,
    pub hand: FakeClock,
}

impl TestGateway {
    pub async fn start(config: Config) -> TestGateway {
        let (clock, hand) = Clock::fake();
        let options = gateway::Options {
            clock,
            ..gateway::Options::default()
        };
        let gateway = Gateway::start(config, options)
            .await
            .expect("start gateway");
        TestGateway { gateway, hand }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.admin_addr, path)
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> String {
        let reply = send(Method::GET, &self.admin_url("/metrics"), &[], Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.text()
    }
}

/// Parses the value of one sample (`name{labels}`) from Prometheus text; 0 when absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// An answer as the test reads it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request and reads the whole answer.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body.into())).expect("request");
    let response = client.request(request).await.expect("gateway answered");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(Method::GET, url, headers, Bytes::new()).await
}

pub const PAYMENT: &str = r#"{"account":"100234","amount":"42.10","currency":"CNY"}"#;

pub async fn pay(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(Method::POST, url, &all, PAYMENT).await
}

/// One `[[partner]]` block.
pub fn partner(id: &str, key: &str, quota: &str, extra: &str) -> String {
    format!(
        "[[partner]]\nid = \"{id}\"\nkeys_sha256 = [\"{}\"]\nquota = {{ {quota} }}\n{extra}\n",
        hash_key(key)
    )
}

/// A whole configuration: listeners on port 0, the biller at `biller_url` with `timeout` and
/// `capacity`, the standard routes, then `partners`.
pub fn config_toml(biller_url: &str, timeout: &str, capacity: &str, partners: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_body_bytes = 4096

[biller]
url = "{biller_url}"
timeout = "{timeout}"
connect_timeout = "500ms"
capacity = "{capacity}"

[[route]]
name = "bill-inquiry"
method = "GET"
path = "/v1/bills/{{account}}"
class = "inquiry"

[[route]]
name = "bill-lookup"
method = "GET"
path = "/v1/lookup"
account_query = "account"
class = "inquiry"

[[route]]
name = "bill-payment"
method = "POST"
path = "/v1/payments"
class = "payment"

{partners}"#
    )
}

pub fn config_with(biller_url: &str, timeout: &str, capacity: &str, partners: &str) -> Config {
    let text = config_toml(biller_url, timeout, capacity, partners);
    load_str(&text, "test.toml").unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{text}"))
}

/// A loopback port with nothing listening on it.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

/// A configuration with a 2s timeout and a capacity that never binds.
pub fn config(biller_url: &str, partners: &str) -> Config {
    config_with(biller_url, "2s", "10000/s", partners)
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("billgate-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A gateway for `text` on the real clock (a fleet's buckets run on Redis's clock, which a fake
/// one would not follow).
pub async fn start_real(text: &str) -> Gateway {
    let options = gateway::Options {
        clock: Clock::real(),
        ..gateway::Options::default()
    };
    Gateway::start(load(text), options)
        .await
        .expect("start gateway")
}

impl TestGateway {
    /// Starts a gateway from a configuration file, so reloads re-read it.
    pub async fn start_from_file(path: &std::path::Path) -> TestGateway {
        let config = billgate::config::load_file(path).unwrap_or_else(|e| panic!("{e}"));
        let (clock, hand) = Clock::fake();
        let options = gateway::Options {
            clock,
            config_path: Some(path.to_path_buf()),
            ..gateway::Options::default()
        };
        let gateway = Gateway::start(config, options)
            .await
            .expect("start gateway");
        TestGateway { gateway, hand }
    }
}

/// Inserts `block` (extra `[biller]` keys, `[biller.breaker]` …) just before the routes.
pub fn with_block(text: &str, block: &str) -> String {
    text.replacen("[[route]]", &format!("{block}\n[[route]]"), 1)
}

pub fn load(text: &str) -> Config {
    load_str(text, "test.toml").unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{text}"))
}

/// An upstream that answers every request with `status`, `headers` and a small JSON body,
/// counting what it received.
pub struct FixedUpstream {
    pub addr: SocketAddr,
    pub received: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Connections that carried at least one request (the gateway's reachability probe only
    /// connects).
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FixedUpstream {
    pub async fn start(status: u16, headers: &[(&'static str, &'static str)]) -> FixedUpstream {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&received);
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        let headers: Vec<(&'static str, &'static str)> = headers.to_vec();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = Arc::clone(&counter);
                let accepted = Arc::clone(&accepted);
                let first = std::sync::atomic::AtomicBool::new(true);
                let headers = headers.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                            counter.fetch_add(1, Ordering::SeqCst);
                            if first.swap(false, Ordering::SeqCst) {
                                accepted.fetch_add(1, Ordering::SeqCst);
                            }
                            let mut response = http::Response::builder().status(status);
                            for (n, v) in &headers {
                                response = response.header(*n, *v);
                            }
                            let response = response
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{\"upstream\":true}")))
                                .expect("response");
                            async move { Ok::<_, std::convert::Infallible>(response) }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FixedUpstream {
            addr,
            received,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> usize {
        self.received.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Reads one answer (head and `content-length` body) from `stream`; returns it as text.
pub async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bounded: an answer of a few hundred bytes comes in a handful of reads.
    for _ in 0..1_000 {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .expect("the answer has a content-length");
            if seen.len() >= end + 4 + length {
                assert_eq!(seen.len(), end + 4 + length, "nothing after the answer");
                return text;
            }
        }
        let n = stream.read(&mut chunk).await.expect("read the answer");
        assert!(n > 0, "closed before the answer was complete");
        seen.extend_from_slice(&chunk[..n]);
    }
    panic!("no complete answer in 1 000 reads");
}

/// A raw TCP connection to the gateway's partner listener, for tests that write HTTP by hand.
pub async fn connect(gw: &TestGateway) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(gw.gateway.addr)
        .await
        .expect("connect to the gateway")
}
