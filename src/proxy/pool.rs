//! A worker's own pool of HTTP/1.1 connections to the biller, on hyper's connection API.
//!
//! Each worker has one, used only by the tasks of its own runtime, so its lock is never
//! contended. A connection has no task of its own: the request that holds it drives it — the
//! call until the response head arrives, then the response body as the partner's connection
//! reads it — so a forwarded request wakes no other task. A connection goes back to the pool
//! when its response body has been read to the end (a body dropped half-read takes its
//! connection with it); a pooled connection the biller has closed is found out when next
//! driven and skipped, and a request a reused connection could not take is sent on another.
//! Requests go out in origin-form (`/path?query`) with the `Host` the caller set.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::upstream::UpstreamBody;

type Sender = http1::SendRequest<UpstreamBody>;
type Connection = http1::Connection<TokioIo<TcpStream>, UpstreamBody>;

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
    #[error("the exchange with the biller failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the biller closed a new connection before it took the request")]
    Closed,
}

impl PoolError {
    /// The underlying error chain, for telling a partner's oversize body from a broken biller.
    pub fn source_chain(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            PoolError::Http(error) => Some(error),
            _ => None,
        }
    }
}

/// One connection: the handle requests are sent on, and the connection it drives.
struct Link {
    /// The `host:port` it is connected to.
    target: Arc<str>,
    sender: Sender,
    connection: Connection,
    /// The connection future has completed (closed or failed): it is never polled again.
    ended: bool,
    /// When it last went back to the pool.
    since: Instant,
}

impl Link {
    /// Drives the connection's reading and writing; true once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        drive(&mut self.connection, &mut self.ended, cx)
    }

    /// Waits until the connection can take a request, driving it; false when it has closed.
    async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            let ended = self.drive(cx);
            match self.sender.poll_ready(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(true),
                Poll::Ready(Err(_)) => Poll::Ready(false),
                Poll::Pending if ended => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Sends `request` and drives the connection until the response head arrives.
    async fn send(
        &mut self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, http1_error::TrySend> {
        let mut call = std::pin::pin!(self.sender.try_send_request(request));
        let connection = &mut self.connection;
        let ended = &mut self.ended;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(answer) = call.as_mut().poll(cx) {
                return Poll::Ready(answer);
            }
            drive(connection, ended, cx);
            // Driving the connection may have brought the head (or, if it ended, the error).
            call.as_mut().poll(cx)
        })
        .await
    }
}

/// Polls `connection` unless it has `ended`; true once it has.
fn drive(connection: &mut Connection, ended: &mut bool, cx: &mut Context<'_>) -> bool {
    if !*ended {
        if let Poll::Ready(result) = Pin::new(connection).poll(cx) {
            if let Err(error) = result {
                tracing::debug!(%error, "biller connection ended with an error");
            }
            *ended = true;
        }
    }
    *ended
}

mod http1_error {
    use super::UpstreamBody;
    pub type TrySend = hyper::client::conn::TrySendError<http::Request<UpstreamBody>>;
}

/// Where and how to reach the biller: read from the running configuration per request, so a
/// reload that moves the biller takes effect at once (connections to the old address are
/// dropped as they come out of the pool).
pub struct Target<'a> {
    /// `host:port`.
    pub address: &'a Arc<str>,
    pub connect_timeout: Duration,
}

/// Connections to the biller.
pub struct BillerPool {
    idle_timeout: Duration,
    max_idle: usize,
    // Links move in and out of request futures; boxed, they move as one pointer.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Link>>>,
}

impl BillerPool {
    pub fn new(idle_timeout: Duration, max_idle: usize) -> Arc<BillerPool> {
        Arc::new(BillerPool {
            idle_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
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

    /// The most recently used connection to `address` not known to be closed; expired ones,
    /// and ones to an address the biller no longer has, are dropped on the way.
    fn checkout(&self, address: &str) -> Option<Box<Link>> {
        let now = Instant::now();
        let mut idle = self.lock();
        while let Some(link) = idle.pop() {
            if !link.ended
                && now.duration_since(link.since) < self.idle_timeout
                && &*link.target == address
            {
                return Some(link);
            }
        }
        None
    }

    fn checkin(&self, mut link: Box<Link>) {
        if link.ended || link.sender.is_closed() {
            return;
        }
        link.since = Instant::now();
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(link);
        }
    }

    async fn connect(&self, target: &Target<'_>) -> Result<Box<Link>, PoolError> {
        let address = &**target.address;
        let stream =
            match tokio::time::timeout(target.connect_timeout, TcpStream::connect(address)).await {
                Err(_elapsed) => return Err(PoolError::ConnectTimeout(address.to_owned())),
                Ok(Err(source)) => {
                    return Err(PoolError::Connect {
                        target: address.to_owned(),
                        source,
                    })
                }
                Ok(Ok(stream)) => stream,
            };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        // Boxed once per connection, so the futures that hold it stay small.
        Ok(Box::new(Link {
            target: Arc::clone(target.address),
            sender,
            connection,
            ended: false,
            since: Instant::now(),
        }))
    }

    /// Sends `request` on a pooled connection to `target`, or a new one.
    pub async fn send(
        self: &Arc<Self>,
        target: Target<'_>,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        loop {
            let (mut link, reused) = match self.checkout(target.address) {
                Some(link) => (link, true),
                None => (self.connect(&target).await?, false),
            };
            // A connection whose last body was just read may need driving to be ready again;
            // one the biller closed meanwhile is dropped and the next one tried.
            if !link.ready().await {
                if reused {
                    continue;
                }
                return Err(PoolError::Closed);
            }
            match link.send(request).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = PooledBody::new(body, link, Arc::downgrade(self));
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut failed) => match failed.take_message() {
                    // Never written: a reused connection closing under us. Another one may
                    // take it; a fresh one that cannot is a failure.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(failed.into_error().into()),
                },
            }
        }
    }
}

/// The biller's response body. Reading it drives its connection, which returns to the pool
/// when the body has been read to the end.
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
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() {
            // Asking for the body registered the want; now let the connection read it.
            if let Some((link, _)) = &mut this.link {
                link.drive(cx);
                polled = Pin::new(&mut this.inner).poll_frame(cx);
            }
        }
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
