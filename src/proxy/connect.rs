//! Opening one connection to the biller for the pool: TCP, then TLS for an https biller, then
//! HTTP/1.1 on it, all within the connect timeout; and reading a TLS failure out of an error.

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::pool::{Sender, Target};

/// Opens a connection to `target` and starts HTTP/1.1 on it; the TCP connect and the TLS
/// handshake count together against `target.connect_timeout`.
pub(super) async fn open(target: &Target<'_>) -> Result<Sender, Opening> {
    let address = &**target.address;
    let connecting = async {
        let stream = TcpStream::connect(address).await.map_err(Opening::Tcp)?;
        let _ = stream.set_nodelay(true);
        match target.tls {
            None => start(stream).await.map_err(Opening::Http),
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map_err(Opening::Tls)?;
                start(stream).await.map_err(Opening::Http)
            }
        }
    };
    tokio::time::timeout(target.connect_timeout, connecting)
        .await
        .unwrap_or(Err(Opening::TimedOut))
}

/// What went wrong opening a connection, before the pool tells it as a `PoolError`.
pub(super) enum Opening {
    /// Not open within the connect timeout.
    TimedOut,
    Tcp(std::io::Error),
    Tls(std::io::Error),
    Http(hyper::Error),
}

/// Starts HTTP/1.1 on a freshly opened stream, plain or TLS: the connection runs as a task of
/// the caller's runtime (a worker's pool is used only by its own worker), and the handle
/// requests are sent on is all the pool keeps.
async fn start<S>(stream: S) -> Result<Sender, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
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

/// The TLS error (an alert from the biller) among `error`'s causes, as an I/O error.
pub(super) fn tls_alert(error: &hyper::Error) -> Option<std::io::Error> {
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        let tls = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(tls) = tls {
            return Some(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                tls.clone(),
            ));
        }
        cause = error.source();
    }
    None
}

/// An error and its sources, `: `-separated: hyper's own message ("connection error") leaves
/// out the cause, such as the alert of a biller that refused the gateway's TLS client
/// certificate.
pub(super) struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
