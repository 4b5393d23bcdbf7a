//! Plain partner connections speak HTTP/1.1, or HTTP/2 by prior knowledge (h2c): a connection
//! that opens with the HTTP/2 preface is served as HTTP/2. The first bytes are read here to
//! tell, and handed back to hyper ahead of the rest of the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads from `io` until its first bytes tell the protocol: `true` for the HTTP/2 preface,
/// `false` as soon as they differ from it (or at the end of the stream). Returns the bytes
/// read. Each read waits for at least one more byte, so there are at most 24 of them; the
/// caller bounds the wait.
pub async fn sniff<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<(bool, Vec<u8>)> {
    let mut read = Vec::with_capacity(4096);
    loop {
        if io.read_buf(&mut read).await? == 0 {
            return Ok((false, read));
        }
        let seen = read.len().min(PREFACE.len());
        if read[..seen] != PREFACE[..seen] {
            return Ok((false, read));
        }
        if seen == PREFACE.len() {
            return Ok((true, read));
        }
    }
}

/// A stream whose first bytes were already read: they are read again first.
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    at: usize,
    io: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Vec<u8>, io: T) -> Prefixed<T> {
        Prefixed { prefix, at: 0, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.prefix.get(this.at..).filter(|rest| !rest.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            if this.at == this.prefix.len() {
                // Given back whole: its memory is not kept for the connection's life.
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_preface_is_told_from_http1_however_it_is_split() {
        for (sent, h2) in [
            (&PREFACE[..], true),
            (&b"GET /v1/bills/1 HTTP/1.1\r\nhost: a\r\n\r\n"[..], false),
            (&b"PRI * HTTP/1.1\r\n\r\n"[..], false),
            (&b"P"[..], false),
        ] {
            for cut in 1..sent.len().max(2) {
                let (mut client, mut server) = tokio::io::duplex(64);
                let first = sent[..cut.min(sent.len())].to_vec();
                let rest = sent[cut.min(sent.len())..].to_vec();
                let writer = tokio::spawn(async move {
                    client.write_all(&first).await.unwrap();
                    tokio::task::yield_now().await;
                    client.write_all(&rest).await.unwrap();
                    client.shutdown().await.unwrap();
                    client
                });
                let (is_h2, read) = sniff(&mut server).await.unwrap();
                assert_eq!(is_h2, h2, "{sent:?} cut at {cut}");
                // Whatever was read is read again first, then the rest of the stream.
                let mut again = Prefixed::new(read, server);
                let mut all = Vec::new();
                again.read_to_end(&mut all).await.unwrap();
                assert_eq!(all, sent, "cut at {cut}");
                drop(writer.await);
            }
        }
    }
}
