//! Bodies the gateway sends to partners: its own answers, or the biller's streamed with a
//! deadline so a biller that stalls mid-body cannot hang the partner.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use tokio::time::{Instant, Sleep};

use super::pool::PooledBody;

/// The response body type of the gateway.
pub type ProxyBody = Either<Full<Bytes>, Deadline<PooledBody>>;

/// A body that fails once its deadline passes. The timer is made only if the body ever has
/// to wait: a bill-sized answer is complete when hyper first polls it, so most answers carry
/// just the deadline (a timer inline would make every answer's body, which hyper moves several
/// times, 2.5 times larger, and cost a timer set up and torn down per answer).
pub struct Deadline<B> {
    inner: B,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, deadline: Instant) -> Self {
        Deadline {
            inner,
            deadline,
            sleep: None,
        }
    }

    /// When the body fails if it has not finished.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// The biller's body did not finish in time.
#[derive(Debug, thiserror::Error)]
#[error("the biller's response body did not finish within {0:?}")]
pub struct BodyTimedOut(pub Duration);

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(Duration::ZERO))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
