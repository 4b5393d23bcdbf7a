//! The gateway's client to the biller: hyper-util's pooled `Client` (HTTP/1.1 keep-alive) over
//! its `HttpConnector`, with the connect timeout of `[biller] connect_timeout` and `TCP_NODELAY`.
//! One client, cloned into every worker's requests, holds the gateway's pool of biller
//! connections (hyper-util's own pool replaced a hand-written per-worker pool:
//! `benches/results/hyper-std.txt`).
//!
//! Requests are handed over in absolute form (the pool is keyed by the biller's authority) and
//! hyper-util sends them in origin-form (`/path?query`) with the `Host` the caller set.
//! A connection goes back to the pool once its response body has been read to the end; one
//! dropped half-read is closed. A request that a reused connection could not take (the biller
//! closed it meanwhile) is sent again on another.
//!
//! The connector tells when connecting fails for want of a socket of the gateway's own (no
//! file descriptor, no local port): a run of such failures is warned of once, and its end
//! told, whichever worker's calls meet it.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::upstream::UpstreamBody;

/// The biller's response body, as it streams in.
pub type BillerBody = Incoming;

/// How long an unused biller connection stays in the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The pooled client to the biller. Cloning is cheap; clones share the pool.
#[derive(Clone)]
pub struct BillerClient {
    client: Client<Connector, UpstreamBody>,
}

/// Why a request found no answer: hyper-util's error, whose sources say what failed.
#[derive(Debug)]
pub struct PoolError(hyper_util::client::legacy::Error);

impl std::fmt::Display for PoolError {
    /// The whole chain ("client error (Connect): tcp connect error: Connection refused"):
    /// hyper-util's own text names only the stage.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl StdError for PoolError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

impl PoolError {
    /// Whether the gateway itself had nothing to connect with — no file descriptor, no local
    /// port, no kernel memory for a socket — rather than the biller failing to answer. Such a
    /// failure says nothing about the biller: it must not count against it.
    pub fn is_gateway_exhausted(&self) -> bool {
        self.0.is_connect() && io_cause(&self.0).is_some_and(is_gateway_exhausted)
    }
}

/// The first I/O error among `error`'s sources.
fn io_cause<'e>(error: &'e (dyn StdError + 'static)) -> Option<&'e std::io::Error> {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = cause.source();
    }
    None
}

/// Whether a failure to connect was the gateway's own want of a file descriptor, a local port
/// or kernel memory (see [`PoolError::is_gateway_exhausted`]).
#[cfg(unix)]
pub fn is_gateway_exhausted(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// See the Unix version: elsewhere every failure to connect counts as the biller's.
#[cfg(not(unix))]
pub fn is_gateway_exhausted(_error: &std::io::Error) -> bool {
    false
}

impl BillerClient {
    /// A client whose connections take at most `connect_timeout` to open, with up to
    /// `max_idle` of them kept for reuse.
    pub fn new(connect_timeout: Duration, max_idle: usize) -> BillerClient {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let connector = Connector {
            http,
            out_of_sockets: Arc::new(AtomicBool::new(false)),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_idle)
            .pool_timer(TokioTimer::new())
            // Every request carries the `Host` the gateway sets (`headers::to_biller`).
            .set_host(false)
            .build(connector);
        BillerClient { client }
    }

    /// Sends `request` (its URI in absolute form) on a pooled connection, or a new one.
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<BillerBody>, PoolError> {
        self.client.request(request).await.map_err(PoolError)
    }
}

/// `HttpConnector`, watched for the gateway running out of sockets.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    /// Whether the last attempt to connect failed for want of a socket of the gateway's.
    out_of_sockets: Arc<AtomicBool>,
}

type Connecting = Pin<
    Box<dyn Future<Output = Result<TokioIo<TcpStream>, Box<dyn StdError + Send + Sync>>> + Send>,
>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: Uri) -> Connecting {
        let connecting = self.http.call(target.clone());
        let out_of_sockets = Arc::clone(&self.out_of_sockets);
        Box::pin(async move {
            match connecting.await {
                Ok(stream) => {
                    if out_of_sockets.swap(false, Ordering::Relaxed) {
                        tracing::info!(biller = %target, "connections to the biller open again");
                    }
                    Ok(stream)
                }
                Err(error) => {
                    let error: Box<dyn StdError + Send + Sync> = error.into();
                    let exhausted = io_cause(&*error).is_some_and(is_gateway_exhausted);
                    if exhausted && !out_of_sockets.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            biller = %target,
                            error = %error,
                            "no socket for a connection to the biller: calls that need one are answered 503 gateway_out_of_sockets until one opens"
                        );
                    }
                    Err(error)
                }
            }
        })
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A connector that fails every connect as `HttpConnector` does, the I/O error beneath.
    #[derive(Clone)]
    struct Failing(i32);

    /// What `HttpConnector` wraps its I/O errors in.
    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error")]
    struct Wrapped(#[source] std::io::Error);

    impl tower_service::Service<Uri> for Failing {
        type Response = TokioIo<TcpStream>;
        type Error = Box<dyn StdError + Send + Sync>;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Uri) -> Self::Future {
            let cause = std::io::Error::from_raw_os_error(self.0);
            std::future::ready(Err(Box::new(Wrapped(cause))))
        }
    }

    /// hyper-util's error for a connect that failed with `errno`, as the client returns it.
    async fn connect_failed(errno: i32) -> PoolError {
        let client = Client::builder(TokioExecutor::new()).build(Failing(errno));
        let request = Request::get("http://127.0.0.1:9/")
            .body(UpstreamBody::default())
            .expect("request");
        client
            .request(request)
            .await
            .map(|_| ())
            .map_err(PoolError)
            .expect_err("the connector fails")
    }

    #[tokio::test]
    async fn only_the_gateways_own_want_of_a_socket_spares_the_biller() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(
                connect_failed(errno).await.is_gateway_exhausted(),
                "errno {errno}"
            );
        }
        for errno in [
            libc::ECONNREFUSED,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ETIMEDOUT,
        ] {
            assert!(
                !connect_failed(errno).await.is_gateway_exhausted(),
                "errno {errno}"
            );
        }
    }

    #[tokio::test]
    async fn a_refused_connect_is_told_with_its_cause() {
        let closed = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            listener.local_addr().expect("address")
        };
        let client = BillerClient::new(Duration::from_secs(1), 4);
        let request = Request::get(format!("http://{closed}/v1/bills/1"))
            .body(UpstreamBody::default())
            .expect("request");
        let error = client.send(request).await.expect_err("nothing listens");
        assert!(!error.is_gateway_exhausted());
        let text = error.to_string();
        assert!(
            text.starts_with("client error (Connect): tcp connect error: "),
            "{text}"
        );
    }
}
