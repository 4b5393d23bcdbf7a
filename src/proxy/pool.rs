//! A worker's own pool of HTTP/1.1 connections to the biller, on hyper's connection API.
//!
//! Each worker has one, used only by the tasks of its own runtime, so its lock is never
//! contended and a connection's task runs on the thread that sends on it. A connection goes
//! back to the pool when its response body has been read to the end (a body dropped half-read
//! takes its connection with it); a pooled connection the biller has closed is skipped, and a
//! request a reused connection could not take is sent on another. Requests go out in
//! origin-form (`/path?query`) with the `Host` the caller set.

use std::error::Error as StdError;
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

struct Idle {
    sender: Sender,
    since: Instant,
}

/// Connections to one biller address.
pub struct BillerPool {
    /// `host:port`.
    target: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
}

impl BillerPool {
    pub fn new(
        target: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<BillerPool> {
        Arc::new(BillerPool {
            target,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Connections waiting for a request.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // Nothing panics while holding it; a poisoned list is still a sound list.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used open connection, if any; expired ones are dropped on the way.
    fn checkout(&self) -> Option<Sender> {
        let now = Instant::now();
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            if !entry.sender.is_closed() && now.duration_since(entry.since) < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    fn checkin(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<Sender, PoolError> {
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(&self.target),
        )
        .await
        {
            Err(_elapsed) => return Err(PoolError::ConnectTimeout(self.target.clone())),
            Ok(Err(source)) => {
                return Err(PoolError::Connect {
                    target: self.target.clone(),
                    source,
                })
            }
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "biller connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `request` on a pooled connection, or a new one.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            // A connection whose last body was just read may need a moment to be ready again;
            // one the biller closed meanwhile is dropped and the next one tried.
            if let Err(error) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(error.into());
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = PooledBody::new(body, sender, Arc::downgrade(self));
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

/// The biller's response body; its connection returns to the pool when it has been read to the
/// end.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(Sender, Weak<BillerPool>)>,
}

impl PooledBody {
    fn new(inner: Incoming, sender: Sender, pool: Weak<BillerPool>) -> PooledBody {
        let mut body = PooledBody {
            inner,
            back: Some((sender, pool)),
        };
        // A body known to be empty may never be polled.
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some((sender, pool)) = self.back.take() {
            if let Some(pool) = pool.upgrade() {
                pool.checkin(sender);
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
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // The reader may stop at the last frame without asking for the end: hand the
        // connection back as soon as the body is known to be over.
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
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
