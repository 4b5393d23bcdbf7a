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

pin_project_lite::pin_project! {
    /// A body that fails once its deadline passes. The timer lives inside it: no allocation
    /// per answer.
    pub struct Deadline<B> {
        inner: B,
        #[pin]
        sleep: Sleep,
    }
}

impl<B> Deadline<B> {
    pub fn new(inner: B, deadline: Instant) -> Self {
        Deadline {
            inner,
            sleep: tokio::time::sleep_until(deadline),
        }
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
        let this = self.project();
        if let Poll::Ready(frame) = Pin::new(this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.sleep.poll(cx) {
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
