//! The two reference points for the end-to-end comparison, run by `run.sh` beside nginx
//! and billgate: what hyper 1.x does when used the plain way, with no admission at all.
//!
//! - `bare proxy`: a hyper server that forwards every request to the backend through
//!   hyper-util's pooled legacy client, changing only the URI. No key check, no quota, no header
//!   hygiene, no metrics: the floor a hyper-based gateway starts from.
//! - `bare proxy --client conn`: the same, but on hyper's connection API, the way billgate's own
//!   pool uses it: each worker keeps a queue of open connections' senders and sends the request
//!   as it came (origin-form, the partner's `Host`). No pool key, no URI made per request, no
//!   pool bookkeeping: about the least hyper does per forwarded request.
//! - `bare refuse`: a hyper server that answers every request with the same 429 billgate and
//!   nginx send for bench-tiny's quota (the same problem body, `Retry-After` and `RateLimit`
//!   fields), built per request from static parts.
//!
//! Both serve on `--workers` threads, each a current-thread runtime with its own listener on a
//! shared port (`SO_REUSEPORT`) and, for the proxy, its own client pool; `--flavor multi` runs
//! one multi-thread runtime with `--workers` threads instead. Like billgate's partner
//! connections, accepted connections have `TCP_NODELAY` and a 10 s limit on reading a request
//! head (here hyper's own header-read timeout, the plain way; billgate watches its heads with a
//! sweep per worker), and the process allocates with billgate's allocator (mimalloc): what
//! differs between the two is billgate's work.
//!
//! This is a benchmark target (`cargo bench --no-run` keeps it compiling), not a criterion
//! bench: `cargo bench` only prints where it is used.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self as client_http1, SendRequest};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Bare hyper baselines for benches/e2e/run.sh")]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Passed by `cargo bench`; this target has nothing to measure on its own.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum Mode {
    /// Forward every request to the backend with hyper-util's pooled client.
    Proxy {
        #[command(flatten)]
        serve: Serve,
        /// The backend, `host:port`.
        #[arg(long)]
        backend: String,
        /// Which of hyper's clients forwards.
        #[arg(long, value_enum, default_value_t = ClientKind::Legacy)]
        client: ClientKind,
    },
    /// Answer every request with a static 429.
    Refuse {
        #[command(flatten)]
        serve: Serve,
        /// The partner and quota the refusal names (the same bytes billgate answers).
        #[arg(long, default_value = "bench-tiny")]
        partner: String,
        #[arg(long, default_value_t = 10)]
        rate: u64,
    },
}

#[derive(clap::Args, Clone)]
struct Serve {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[arg(long, value_enum, default_value_t = Flavor::PerCore)]
    flavor: Flavor,
}

#[derive(Clone, Copy, ValueEnum)]
enum ClientKind {
    /// hyper-util's pooled `legacy::Client`.
    Legacy,
    /// hyper's `client::conn::http1`, a queue of senders per worker.
    Conn,
}

#[derive(Clone, Copy, ValueEnum)]
enum Flavor {
    /// One current-thread runtime per worker, each with its own `SO_REUSEPORT` listener.
    PerCore,
    /// One multi-thread runtime, one listener.
    Multi,
}

type Answer = Response<Either<Incoming, Full<Bytes>>>;

/// What a worker answers with: the proxy's client and backend, or the refusal's parts. Made
/// once per worker and cloned per connection, so the client's size is no cost worth a box.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
enum Work {
    Proxy {
        client: Client<HttpConnector, Incoming>,
        backend: Arc<str>,
    },
    Lean(Arc<Lean>),
    Refuse(Arc<Refusal>),
}

/// One worker's connections to the backend on hyper's connection API. The lock is the
/// worker's own (uncontended, per-core flavor); each connection runs as a task of the worker.
/// Senders go back first in, first out: the one put back longest ago has most likely finished
/// its answer's body.
struct Lean {
    backend: Arc<str>,
    idle: Mutex<VecDeque<SendRequest<Incoming>>>,
}

impl Lean {
    /// A sender that can take a request now: an idle one, or a new connection.
    async fn sender(&self) -> Result<SendRequest<Incoming>, ()> {
        {
            let mut idle = self.idle.lock().map_err(|_| ())?;
            for _ in 0..idle.len() {
                let Some(sender) = idle.pop_front() else {
                    break;
                };
                if sender.is_ready() {
                    return Ok(sender);
                }
                // Still answering (a partner has not taken the whole body yet): kept for later.
                if !sender.is_closed() {
                    idle.push_back(sender);
                }
            }
        }
        let stream = TcpStream::connect(&*self.backend).await.map_err(|_| ())?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = client_http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| ())?;
        tokio::spawn(connection);
        Ok(sender)
    }

    fn put_back(&self, sender: SendRequest<Incoming>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push_back(sender);
        }
    }
}

struct Refusal {
    body: Bytes,
    policy: HeaderValue,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let Some(mode) = args.mode else {
        println!("bare: the bare hyper baselines of benches/e2e/run.sh; nothing to measure here");
        return Ok(());
    };
    let (serve, make) = match mode {
        Mode::Proxy {
            serve,
            backend,
            client,
        } => {
            let backend: Arc<str> = backend.into();
            let make: Box<dyn Fn() -> Work + Send + Sync> = match client {
                ClientKind::Legacy => Box::new(move || Work::Proxy {
                    client: Client::builder(TokioExecutor::new()).build_http(),
                    backend: Arc::clone(&backend),
                }),
                ClientKind::Conn => Box::new(move || {
                    Work::Lean(Arc::new(Lean {
                        backend: Arc::clone(&backend),
                        idle: Mutex::new(VecDeque::new()),
                    }))
                }),
            };
            (serve, make)
        }
        Mode::Refuse {
            serve,
            partner,
            rate,
        } => {
            let refusal = Arc::new(Refusal {
                body: Bytes::from(format!(
                    "{{\"type\":\"urn:billgate:problem:partner_quota\",\"title\":\"Partner quota exceeded\",\
                     \"status\":429,\"detail\":\"{partner} sent more inquiry_scheduled requests than its \
                     quota of {rate}/s; retry in 1s\",\"partner\":\"{partner}\",\"class\":\"inquiry_scheduled\",\
                     \"reason\":\"partner_quota\",\"retry_after\":1}}"
                )),
                policy: HeaderValue::try_from(format!("\"inquiry_scheduled\";q={rate};w=1"))
                    .map_err(std::io::Error::other)?,
            });
            let make: Box<dyn Fn() -> Work + Send + Sync> =
                Box::new(move || Work::Refuse(Arc::clone(&refusal)));
            (serve, make)
        }
    };
    match serve.flavor {
        Flavor::PerCore => {
            let mut threads = Vec::new();
            for _ in 0..serve.workers.max(1) {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let listener = runtime.block_on(async { shared_port(serve.listen) })?;
                let work = make();
                threads.push(std::thread::spawn(move || {
                    runtime.block_on(accept(listener, work))
                }));
            }
            for thread in threads {
                let _ = thread.join();
            }
            Ok(())
        }
        Flavor::Multi => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(serve.workers.max(1))
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let listener = TcpListener::bind(serve.listen).await?;
                accept(listener, make()).await;
                Ok(())
            })
        }
    }
}

/// A listener on `addr` that other threads may bind too; the kernel spreads connections.
fn shared_port(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseport(true)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn accept(listener: TcpListener, work: Work) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let work = work.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(work.clone(), request));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(work: Work, mut request: Request<Incoming>) -> Result<Answer, Infallible> {
    match work {
        Work::Proxy { client, backend } => {
            let target = request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            match Uri::try_from(format!("http://{backend}{target}")) {
                Ok(uri) => *request.uri_mut() = uri,
                Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
            }
            Ok(match client.request(request).await {
                Ok(response) => response.map(Either::Left),
                Err(_) => status(StatusCode::BAD_GATEWAY),
            })
        }
        Work::Lean(lean) => {
            let Ok(mut sender) = lean.sender().await else {
                return Ok(status(StatusCode::BAD_GATEWAY));
            };
            let answer = sender.send_request(request).await;
            lean.put_back(sender);
            Ok(match answer {
                Ok(response) => response.map(Either::Left),
                Err(_) => status(StatusCode::BAD_GATEWAY),
            })
        }
        Work::Refuse(refusal) => {
            let mut response = Response::new(Either::Right(Full::new(refusal.body.clone())));
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            let headers = response.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            headers.insert(
                HeaderName::from_static("ratelimit-policy"),
                refusal.policy.clone(),
            );
            headers.insert(
                HeaderName::from_static("ratelimit"),
                HeaderValue::from_static("\"inquiry_scheduled\";r=0;t=1"),
            );
            Ok(response)
        }
    }
}

fn status(status: StatusCode) -> Answer {
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    *response.status_mut() = status;
    response
}
