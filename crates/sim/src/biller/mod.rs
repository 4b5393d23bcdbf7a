//! The stand-in EBPP biller: a realistic fake of the bill API billgate protects, with latency
//! that climbs under load, failures past capacity and collapse under sustained overload.
//!
//! The API it serves (HTTP/1.1, in plain TCP or, with [`StandInBiller::serve_tls`], in TLS):
//!
//! - `GET /v1/bills/{account}`: 200 with a bill derived from the account (about one account in
//!   five answers `"status":"no_bill_due"`); 400 unless the account is 1–32 of `[A-Za-z0-9-]`.
//! - `POST /v1/payments` with `{"account","bill_id"?,"amount":"123.45","currency"?}`: 201 with a
//!   receipt (`RCPT-000000001`, …); 400 on bad JSON or fields, 413 over 64 KiB.
//! - Anything else: 404, or 405 with `Allow`. Errors are `application/problem+json`.
//!
//! Every call to the two API routes passes the load model first (see `load.rs`): past capacity a
//! share fails with 503 and `Retry-After: 1`; overload sustained past `overload_grace` answers
//! every request 503 "biller down" for `down_for`; a brown-out slows answers and fails a share with
//! 500. Answers are delayed by the model's latency with `tokio::time::sleep`.
//!
//! Control paths under `/_biller/` are neither counted as load nor recorded:
//!
//! - `GET /_biller/stats`: [`BillerStats`] as JSON;
//! - `POST /_biller/brownout?latency_factor=3&failure_share=0.3`: start a brown-out (factor 1–1000,
//!   default 1; share 0–1, default 0; anything else is 400);
//! - `DELETE /_biller/brownout`: end it (204).

mod arrivals;
mod bills;
mod http;
mod load;
mod problem;
mod push;
mod tls;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::clock::Clock;
use arrivals::ArrivalLog;
pub use arrivals::Arrivals;
use load::{LoadModel, LoadOptions};
pub use push::{BillEvent, PushOptions};
pub use tls::server_config;

/// How many requests [`Biller::recent_requests`] remembers.
const RECENT_CAPACITY: usize = 256;
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after an accept error that is not one connection's own (e.g. out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How the stand-in biller behaves.
#[derive(Debug, Clone)]
pub struct BillerOptions {
    /// Requests per second it can serve; must be > 0 (smaller or NaN is raised to 0.001/s).
    /// Default 400/s.
    pub capacity_per_sec: f64,
    /// Latency when idle; it climbs towards 20 × this as load nears capacity. Default 5 ms.
    pub base_latency: Duration,
    /// Overload sustained longer than this takes it down. Default 3 s.
    pub overload_grace: Duration,
    /// How long it stays down. Default 10 s.
    pub down_for: Duration,
    /// The biller name in bills. Default "City Water & Power".
    pub name: String,
    /// Push bill events (a bill paid, a new bill) to the gateway. With it (or with
    /// `new_bill_every`), payments mark bills paid; without either, bills change only when
    /// issued by hand. Default none.
    pub push: Option<PushOptions>,
    /// Issue a new bill this often, to the accounts it knows in turn. Default never.
    pub new_bill_every: Option<Duration>,
}

impl Default for BillerOptions {
    fn default() -> Self {
        BillerOptions {
            capacity_per_sec: 400.0,
            base_latency: Duration::from_millis(5),
            overload_grace: Duration::from_secs(3),
            down_for: Duration::from_secs(10),
            name: "City Water & Power".to_owned(),
            push: None,
            new_bill_every: None,
        }
    }
}

/// What the biller has done so far, as `stats()` and `GET /_biller/stats` report it.
///
/// Control paths (`/_biller/…`) count nowhere.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BillerStats {
    /// Requests received on any other path, including those answered 400, 404 or 405.
    pub received: u64,
    /// Requests answered with a bill (200) or a receipt (201).
    pub served: u64,
    /// Requests failed with 503 because load was past capacity.
    pub failed_overload: u64,
    /// Requests failed with 503 because the biller was down.
    pub failed_down: u64,
    /// Requests failed with 500 by a brown-out.
    pub failed_brownout: u64,
    /// `GET /v1/bills/{account}` requests received, whatever their outcome.
    pub inquiries: u64,
    /// `POST /v1/payments` requests received, whatever their outcome.
    pub payments: u64,
    /// Whether it is down now.
    pub down: bool,
    /// How many times sustained overload has taken it down.
    pub times_down: u64,
    /// Calls to the bill and payment routes per second, over the last completed second
    /// (measured in 100 ms steps, so a burst shows up to 100 ms late).
    pub current_rate: f64,
    /// Connections accepted, TLS or not, whatever became of them.
    pub connections: u64,
    /// TLS handshakes completed (0 in plain mode): with connections, shows how many clients
    /// reuse theirs and how many handshakes failed.
    pub tls_handshakes: u64,
    /// Bill events pushed to the gateway (answered 2xx).
    pub pushed: u64,
    /// Bill events given up after their tries, or dropped with the queue full.
    pub push_failures: u64,
}

/// One request as the biller received it (before reading its body).
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// The request method.
    pub method: ::http::Method,
    /// The path and query as sent, e.g. `/v1/bills/ACC-1?x=1`.
    pub path_and_query: String,
    /// Every header as received, the `Host` included.
    pub headers: ::http::HeaderMap,
}

/// The stand-in biller. Cheap to clone; every clone is the same biller.
#[derive(Debug, Clone)]
pub struct StandInBiller {
    shared: Arc<Shared>,
}

/// Everything a request handler reads or updates.
#[derive(Debug)]
struct Shared {
    name: String,
    load: LoadModel,
    arrivals: ArrivalLog,
    received: AtomicU64,
    served: AtomicU64,
    inquiries: AtomicU64,
    payments: AtomicU64,
    /// The last receipt number issued.
    receipts: AtomicU64,
    connections: AtomicU64,
    tls_handshakes: AtomicU64,
    recent: Mutex<VecDeque<SeenRequest>>,
    /// The accounts known, their bills, and the bill events pushed.
    ledger: push::Ledger,
    new_bill_every: Option<Duration>,
}

impl StandInBiller {
    /// A biller with `options`. Its load model reads time from `clock` (fake in tests, so
    /// overload is driven by hand); receipts' `paid_at` and the answer delays use real time.
    pub fn new(options: BillerOptions, clock: Clock) -> Self {
        let arrivals = ArrivalLog::new(clock.clone());
        let load = LoadModel::new(
            LoadOptions {
                capacity_per_sec: options.capacity_per_sec,
                base_latency: options.base_latency,
                overload_grace: options.overload_grace,
                down_for: options.down_for,
            },
            clock,
        );
        StandInBiller {
            shared: Arc::new(Shared {
                name: options.name,
                load,
                arrivals,
                received: AtomicU64::new(0),
                served: AtomicU64::new(0),
                inquiries: AtomicU64::new(0),
                payments: AtomicU64::new(0),
                receipts: AtomicU64::new(0),
                connections: AtomicU64::new(0),
                tls_handshakes: AtomicU64::new(0),
                recent: Mutex::new(VecDeque::with_capacity(RECENT_CAPACITY)),
                ledger: push::Ledger::new(options.push, options.new_bill_every.is_some()),
                new_bill_every: options.new_bill_every,
            }),
        }
    }

    /// Serve HTTP/1.1 on the listener until `shutdown` resolves; then stop accepting, ask open
    /// connections to finish their current request and close, and return `Ok` without waiting
    /// for them. Accept errors are logged and retried, never returned.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_with(listener, None, shutdown).await
    }

    /// Like [`StandInBiller::serve`], in TLS under `tls` (see [`server_config`]; a test may
    /// build its own, asking for client certificates). Each connection's handshake runs on its
    /// own task, within the time a request head is given: a client that stalls it holds only
    /// its own connection. A failed handshake is logged at debug and the connection closed.
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        self.serve_with(listener, Some(acceptor), shutdown).await
    }

    async fn serve_with(
        self,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (closing, _) = tokio::sync::watch::channel(());
        if let Some(every) = self.shared.new_bill_every {
            let shared = Arc::clone(&self.shared);
            let mut stopped = closing.subscribe();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => shared.ledger.issue_next(&shared.name),
                        _ = stopped.changed() => return,
                    }
                }
            });
        }
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) if is_per_connection(&error) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "stand-in biller: accept failed; retrying");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            self.shared.connections.fetch_add(1, Ordering::Relaxed);
            let shared = Arc::clone(&self.shared);
            let closing = closing.subscribe();
            let Some(acceptor) = tls.clone() else {
                tokio::spawn(connection(shared, stream, closing));
                continue;
            };
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await;
                match handshake {
                    Ok(Ok(stream)) => {
                        shared.tls_handshakes.fetch_add(1, Ordering::Relaxed);
                        connection(shared, stream, closing).await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "stand-in biller: TLS handshake failed");
                    }
                    Err(_elapsed) => {
                        tracing::debug!("stand-in biller: TLS handshake timed out");
                    }
                }
            });
        }
        // Dropping the sender wakes every connection's `changed()`.
        drop(closing);
        Ok(())
    }

    /// The counters so far, whether it is down now, and the current arrival rate.
    pub fn stats(&self) -> BillerStats {
        self.shared.stats()
    }

    /// Requests received (as [`BillerStats::received`] counts them) per 100 ms on the biller's
    /// clock, over the last 20 minutes at most.
    pub fn arrivals(&self) -> Arrivals {
        self.shared.arrivals.snapshot()
    }

    /// The last ≤ 256 requests as received, oldest first. Control paths are not recorded.
    pub fn recent_requests(&self) -> Vec<SeenRequest> {
        self.shared.recent().iter().cloned().collect()
    }

    /// Start (or change) a brown-out: latency × `latency_factor` (clamped to 1–1000) and
    /// `failure_share` (clamped to 0–1) of the requests within capacity fail with 500.
    pub fn set_brownout(&self, latency_factor: f64, failure_share: f64) {
        self.shared.load.set_brownout(latency_factor, failure_share);
    }

    /// Fail `share` of calls with 500 whatever the load (a broken component); ended by
    /// [`Biller::clear_brownout`].
    pub fn set_failing(&self, share: f64) {
        self.shared.load.set_failing(share);
    }

    /// End a brown-out.
    pub fn clear_brownout(&self) {
        self.shared.load.clear_brownout();
    }
}

impl Shared {
    fn stats(&self) -> BillerStats {
        let load = self.load.stats();
        BillerStats {
            received: self.received.load(Ordering::Relaxed),
            served: self.served.load(Ordering::Relaxed),
            failed_overload: load.failed_overload,
            failed_down: load.failed_down,
            failed_brownout: load.failed_brownout,
            inquiries: self.inquiries.load(Ordering::Relaxed),
            payments: self.payments.load(Ordering::Relaxed),
            down: load.down,
            times_down: load.times_down,
            current_rate: load.current_rate,
            connections: self.connections.load(Ordering::Relaxed),
            tls_handshakes: self.tls_handshakes.load(Ordering::Relaxed),
            pushed: self.ledger.pushed.load(Ordering::Relaxed),
            push_failures: self.ledger.push_failures.load(Ordering::Relaxed),
        }
    }

    /// Count a request and remember it in the bounded ring.
    fn record(&self, seen: SeenRequest) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.arrivals.record();
        let mut recent = self.recent();
        if recent.len() == RECENT_CAPACITY {
            recent.pop_front();
        }
        recent.push_back(seen);
    }

    /// The ring is left consistent by every holder, so a poisoned lock is still good.
    fn recent(&self) -> MutexGuard<'_, VecDeque<SeenRequest>> {
        self.recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Serves HTTP/1.1 on one accepted connection, plain or TLS, until it ends or `closing` asks
/// it to finish its current request.
async fn connection<S>(
    shared: Arc<Shared>,
    stream: S,
    mut closing: tokio::sync::watch::Receiver<()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(http::handle(&shared, request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = closing.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "stand-in biller: connection ended with an error");
    }
}

/// Errors that end one connection attempt, not the listener.
fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(i: usize) -> SeenRequest {
        SeenRequest {
            method: ::http::Method::GET,
            path_and_query: format!("/v1/bills/{i}"),
            headers: ::http::HeaderMap::new(),
        }
    }

    #[test]
    fn the_recent_ring_stays_bounded_and_keeps_the_newest() {
        let biller = StandInBiller::new(BillerOptions::default(), Clock::fake().0);
        for i in 0..1000 {
            biller.shared.record(seen(i));
        }
        let recent = biller.recent_requests();
        assert_eq!(recent.len(), RECENT_CAPACITY);
        assert_eq!(recent[0].path_and_query, "/v1/bills/744");
        assert_eq!(recent[255].path_and_query, "/v1/bills/999");
        assert_eq!(biller.stats().received, 1000);
        assert_eq!(biller.arrivals().counts, vec![1000]);
    }
}
