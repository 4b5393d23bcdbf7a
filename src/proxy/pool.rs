//! A worker's own pool of HTTP/1.1 connections to the biller, on hyper's connection API.
//!
//! Each worker has one, used only by the tasks of its own runtime, so its lock is never
//! contended. Each connection runs as a task of that runtime (hyper's connection future,
//! spawned once when it is opened), so a forwarded request wakes only tasks of its own thread:
//! the connection's task when the biller answers, which hands the head to the request's task.
//! A connection goes back to the pool when its response body has been read to the end (a body
//! dropped half-read takes its connection with it, and hyper closes it); a pooled connection
//! the biller has closed is found out when next asked to take a request and skipped, and a
//! request a reused connection could not take is sent on another. Requests go out in
//! origin-form (`/path?query`) with the `Host` the caller set.
//!
//! To an https biller a connection is TLS (HTTP/1.1 inside): the handshake is part of opening
//! it, within the connect timeout, and a pooled connection is reused like a plain one, so a
//! handshake is paid once per connection, never per request. The pool holds only the handle
//! requests are sent on, whatever the stream under it.
//!
//! Each connection has a task of its own rather than being driven by the request that uses it:
//! a request driving its connection was polled twice per wake-up and moved the connection's
//! futures with its own, about 3 000 instructions more per forwarded request (40 487 against
//! 37 416; `benches/e2e/results/round7/instructions.txt`). The pool stays hand-written rather than
//! hyper-util's pooled `Client`, which cost 43 907 instructions per forwarded request against
//! 36 505 and 11–13% more CPU per forwarded answer (`benches/results/hyper-std.txt`).
//! `tests/suite/pool_differential.rs` checks it answers as that client does.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::time::Instant;

use super::connect::{open, tls_alert, Chain, Opening};
use super::upstream::UpstreamBody;
use crate::biller_tls::BillerTls;

pub(super) type Sender = http1::SendRequest<UpstreamBody>;

/// Why a request found no answer.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to the biller at {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("connecting to the biller at {0} timed out")]
    ConnectTimeout(String),
    #[error("the TLS handshake with the biller at {target} failed: {source}")]
    Tls {
        target: String,
        source: std::io::Error,
    },
    #[error("the exchange with the biller failed: {}", Chain(.0))]
    Http(#[from] hyper::Error),
    #[error("the biller closed a new connection before it took the request")]
    Closed,
}

/// One connection: the handle requests are sent on (its connection runs as a task).
struct Link {
    /// The `host:port` it is connected to.
    target: Arc<str>,
    /// The [`BillerTls::id`] it was opened with; `None` for plain TCP.
    tls: Option<[u8; 32]>,
    sender: Sender,
    /// When it was last taken for a request: its idle time is counted from there, a little
    /// early, so that going back to the pool reads no clock.
    since: Instant,
}

impl PoolError {
    /// Whether the gateway itself had nothing to connect with — no file descriptor, no local
    /// port, no kernel memory for a socket — rather than the biller failing to answer. Such a
    /// failure says nothing about the biller: it must not count against it.
    pub fn is_gateway_exhausted(&self) -> bool {
        match self {
            PoolError::Connect { source, .. } => is_gateway_exhausted(source),
            _ => false,
        }
    }
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

impl Link {
    /// Waits until the connection can take a request; false when it has closed.
    async fn ready(&mut self) -> bool {
        self.sender.ready().await.is_ok()
    }
}

/// Where and how to reach the biller: read from the running configuration per request, so a
/// reload that moves the biller takes effect at once (connections to the old address are
/// dropped as they come out of the pool).
pub struct Target<'a> {
    /// `host:port`.
    pub address: &'a Arc<str>,
    /// Covers the TCP connect and the TLS handshake together.
    pub connect_timeout: Duration,
    /// TLS for an https biller; `None` for http.
    pub tls: Option<&'a BillerTls>,
}

/// Connections to the biller.
pub struct BillerPool {
    idle_timeout: Duration,
    max_idle: usize,
    // Links move in and out of request futures; boxed, they move as one pointer.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Link>>>,
    /// Whether the last attempt to connect failed for want of a socket of the gateway's: a
    /// run of such failures is warned of once, and its end told.
    out_of_sockets: AtomicBool,
    /// Whether the last TLS handshake failed: likewise warned of once per run.
    tls_failing: AtomicBool,
}

impl BillerPool {
    /// A pool for `config`: up to `max_in_flight` idle connections, each kept for 30 s unused.
    /// It connects where the running configuration says at each request, so a reload that
    /// moves the biller needs no new pool.
    pub fn for_config(config: &crate::config::Config) -> Arc<BillerPool> {
        BillerPool::new(
            Duration::from_secs(30),
            usize::try_from(config.biller.max_in_flight).unwrap_or(128),
        )
    }

    pub fn new(idle_timeout: Duration, max_idle: usize) -> Arc<BillerPool> {
        Arc::new(BillerPool {
            idle_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
            out_of_sockets: AtomicBool::new(false),
            tls_failing: AtomicBool::new(false),
        })
    }

    /// Connections waiting for a request.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    #[allow(clippy::vec_box)]
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Box<Link>>> {
        // Nothing panics while holding it; a poisoned list is still a sound list.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used connection to `target` not known to be closed; expired ones,
    /// and ones to an address or under a TLS setup the biller no longer has, are dropped on
    /// the way.
    fn checkout(&self, target: &Target<'_>, now: Instant) -> Option<Box<Link>> {
        let tls = target.tls.map(|tls| tls.id);
        let mut idle = self.lock();
        while let Some(mut link) = idle.pop() {
            if !link.sender.is_closed()
                && now.saturating_duration_since(link.since) < self.idle_timeout
                && link.target == *target.address
                && link.tls == tls
            {
                link.since = now;
                return Some(link);
            }
        }
        None
    }

    fn checkin(&self, link: Box<Link>) {
        if link.sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(link);
        }
    }

    async fn connect(&self, target: &Target<'_>, now: Instant) -> Result<Box<Link>, PoolError> {
        let address = &**target.address;
        let opened = open(target).await;
        let sender = match opened {
            Err(Opening::TimedOut) => return Err(PoolError::ConnectTimeout(address.to_owned())),
            Err(Opening::Tcp(source)) => {
                if is_gateway_exhausted(&source)
                    && !self.out_of_sockets.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        biller = address,
                        error = %source,
                        "no socket for a connection to the biller: calls that need one are answered 503 gateway_out_of_sockets until one opens"
                    );
                }
                return Err(PoolError::Connect {
                    target: address.to_owned(),
                    source,
                });
            }
            Err(Opening::Tls(source)) => {
                self.out_of_sockets.store(false, Ordering::Relaxed);
                return Err(self.tls_failed(address, source));
            }
            Err(Opening::Http(error)) => return Err(error.into()),
            Ok(sender) => sender,
        };
        if self.out_of_sockets.swap(false, Ordering::Relaxed) {
            tracing::info!(biller = address, "connections to the biller open again");
        }
        // Boxed once per connection, so the futures that hold it stay small.
        Ok(Box::new(Link {
            target: Arc::clone(target.address),
            tls: target.tls.map(|tls| tls.id),
            sender,
            since: now,
        }))
    }

    /// A failed TLS handshake, told: every call fails alike until the certificates are fixed,
    /// so the first of a run is warned of with its reason and the rest told at debug.
    fn tls_failed(&self, address: &str, source: std::io::Error) -> PoolError {
        if self.tls_failing.swap(true, Ordering::Relaxed) {
            tracing::debug!(biller = address, error = %source, "TLS handshake with the biller failed");
        } else {
            tracing::warn!(
                biller = address,
                error = %source,
                "TLS handshake with the biller failed: calls are answered 502 biller_unreachable until one is taken"
            );
        }
        PoolError::Tls {
            target: address.to_owned(),
            source,
        }
    }

    /// Sends `request` on a pooled connection to `target`, or a new one. `now` is the time
    /// the caller read as it started the call.
    ///
    /// Connecting, rare, is boxed: this future is part of every forwarded request's.
    // Written out: an `async fn` keeps each argument twice in its future.
    #[allow(clippy::manual_async_fn)]
    pub fn send<'a>(
        self: &'a Arc<Self>,
        target: Target<'a>,
        mut request: Request<UpstreamBody>,
        now: Instant,
    ) -> impl Future<Output = Result<Response<PooledBody>, PoolError>> + Send + 'a {
        async move {
            loop {
                let (mut link, reused) = match self.checkout(&target, now) {
                    Some(link) => (link, true),
                    None => (Box::pin(self.connect(&target, now)).await?, false),
                };
                // A connection whose last body was just read may still be finishing that
                // exchange; one the biller closed meanwhile is dropped and the next one tried.
                if !link.ready().await {
                    if reused {
                        continue;
                    }
                    return Err(PoolError::Closed);
                }
                match link.sender.try_send_request(request).await {
                    Ok(response) => {
                        // The first answer on a new TLS connection, not its handshake, shows
                        // the biller took it: under TLS 1.3 a refused client certificate is
                        // told only after the gateway's side of the handshake is done.
                        if !reused
                            && target.tls.is_some()
                            && self.tls_failing.swap(false, Ordering::Relaxed)
                        {
                            tracing::info!(
                                biller = &**target.address,
                                "TLS connections to the biller are taken again"
                            );
                        }
                        let (parts, body) = response.into_parts();
                        let body = PooledBody::new(body, link, Arc::downgrade(self));
                        return Ok(Response::from_parts(parts, body));
                    }
                    Err(mut failed) => match failed.take_message() {
                        // Never written: a reused connection closing under us. Another one
                        // may take it; a fresh one that cannot is a failure.
                        Some(unsent) if reused => request = unsent,
                        _ => {
                            let error = failed.into_error();
                            // A new TLS connection the biller ended with an alert (a client
                            // certificate refused) failed its handshake, whenever it showed.
                            let refused = target.tls.and_then(|_| tls_alert(&error));
                            return Err(match refused {
                                Some(source) => self.tls_failed(target.address, source),
                                None => error.into(),
                            });
                        }
                    },
                }
            }
        }
    }
}

/// The biller's response body. Its connection returns to the pool when the body has been read
/// to the end.
pub struct PooledBody {
    inner: Incoming,
    link: Option<(Box<Link>, Weak<BillerPool>)>,
}

impl PooledBody {
    fn new(inner: Incoming, link: Box<Link>, pool: Weak<BillerPool>) -> PooledBody {
        let mut body = PooledBody {
            inner,
            link: Some((link, pool)),
        };
        // A body known to be empty may never be polled.
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some((link, pool)) = self.link.take() {
            if let Some(pool) = pool.upgrade() {
                pool.checkin(link);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        // The reader may stop at the last frame without asking for the end: hand the
        // connection back as soon as the body is known to be over.
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn connect_failed(errno: i32) -> PoolError {
        PoolError::Connect {
            target: "127.0.0.1:9".to_owned(),
            source: std::io::Error::from_raw_os_error(errno),
        }
    }

    #[test]
    fn only_the_gateways_own_want_of_a_socket_spares_the_biller() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(
                connect_failed(errno).is_gateway_exhausted(),
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
                !connect_failed(errno).is_gateway_exhausted(),
                "errno {errno}"
            );
        }
        assert!(!PoolError::Closed.is_gateway_exhausted());
        assert!(!PoolError::ConnectTimeout("127.0.0.1:9".to_owned()).is_gateway_exhausted());
    }
}
