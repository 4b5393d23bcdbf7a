//! Partner connections served on per-core workers. One acceptor hands each accepted connection
//! to the next worker in turn; a worker is a thread running a current-thread runtime with its
//! own pool of connections to the biller. A request, its biller call and its answer therefore
//! never leave the thread that read it: no cross-thread wake-ups on the request path, and no
//! connection-pool state shared between cores. Slow and idle request heads are cut off by one
//! sweep per worker (`heads.rs`), not by hyper's `header_read_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::accept::Acceptor;
use super::heads::{Heads, HEAD_TIMEOUT, MAX_BUFFERED, MAX_HEAD};
use super::sniff::{sniff, Prefixed};
use super::{handler, headers, BillerPool, Shared, Snapshot};

/// What one worker serves requests with: the shared state, its own biller pool and its own
/// handle on the running snapshot. Each request holds `Arc`s of its worker's, so the reference
/// counts it bumps are the worker's own, never a line another core writes.
pub struct Worker {
    shared: Arc<Shared>,
    pool: Arc<BillerPool>,
    current: ArcSwap<Current>,
}

/// An accepted partner connection, about to be served by its worker.
struct Connection<'w> {
    worker: Arc<Worker>,
    heads: Arc<Heads>,
    graceful: &'w GracefulShutdown,
    peer: SocketAddr,
}

/// HTTP/2 bounds per partner connection: streams at once, and streams the partner resets
/// before they are answered (rapid reset, CVE-2023-44487) or makes the gateway reset — past
/// either, hyper sends GOAWAY and closes the connection.
const H2_MAX_STREAMS: u32 = 100;
const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_LOCAL_RESETS: usize = 100;

impl Connection<'_> {
    /// The TLS handshake, bounded by the head timeout, then the connection served with the
    /// protocol ALPN chose. A failed or slow handshake is counted by reason and dropped.
    fn handshake(self, stream: TcpStream, tls: Arc<crate::tls::ListenerTls>) {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config));
        let Connection {
            worker,
            heads,
            graceful,
            peer,
        } = self;
        let graceful = graceful.watcher();
        tokio::spawn(async move {
            let accepted = tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await;
            let stream = match accepted {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    let reason = crate::tls::failure_reason(&error);
                    worker.shared.metrics().tls_handshake_failed(reason);
                    tracing::debug!(%error, %peer, reason, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    worker.shared.metrics().tls_handshake_failed("timeout");
                    return;
                }
            };
            let (_, session) = stream.get_ref();
            let h2 = session.alpn_protocol() == Some(b"h2");
            let certificate = session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| crate::tls::fingerprint(leaf));
            let (stream, watch) = heads.watch(stream);
            let service = service(&worker, peer, watch, certificate);
            run(TokioIo::new(stream), h2, service, graceful, peer).await;
        });
    }

    /// Serves a plain connection: HTTP/1.1, or HTTP/2 when it opens with the preface (h2c by
    /// prior knowledge). The first bytes are read under the head timeout like any head.
    fn serve(self, stream: TcpStream) {
        let Connection {
            worker,
            heads,
            graceful,
            peer,
        } = self;
        let (mut stream, watch) = heads.watch(stream);
        let graceful = graceful.watcher();
        tokio::spawn(async move {
            let Ok((h2, read)) = sniff(&mut stream).await else {
                return;
            };
            let stream = TokioIo::new(Prefixed::new(read, stream));
            let service = service(&worker, peer, watch, None);
            run(stream, h2, service, graceful, peer).await;
        });
    }
}

/// Serves one connection, HTTP/2 or HTTP/1.1, until it ends or the gateway shuts down.
async fn run<I, S>(stream: I, h2: bool, service: S, graceful: Watcher, peer: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = super::body::ProxyBody>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let ended = if h2 {
        graceful
            .watch(h2_builder().serve_connection(stream, service))
            .await
    } else {
        graceful
            .watch(h1_builder().serve_connection(stream, service))
            .await
    };
    if let Err(error) = ended {
        tracing::debug!(%error, %peer, h2, "connection ended with an error");
    }
}

/// The request service of one connection.
fn service(
    worker: &Arc<Worker>,
    peer: SocketAddr,
    watch: Arc<super::heads::Watch>,
    certificate: Option<[u8; 32]>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<super::body::ProxyBody>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<
        Output = Result<http::Response<super::body::ProxyBody>, std::convert::Infallible>,
    > + Send,
> + Clone {
    let worker = Arc::clone(worker);
    let forwarded = headers::forwarded_for(peer.ip());
    service_fn(move |request| {
        handler::handle(
            Arc::clone(&worker),
            forwarded.clone(),
            Arc::clone(&watch),
            certificate,
            request,
        )
    })
}

fn h1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        // Slow and idle heads are cut off by the worker's sweep (`heads`), for less than
        // hyper's timer per request head costs.
        .header_read_timeout(None::<Duration>)
        // Answers are small (a bill, a receipt, a refusal): copying the body after the head and
        // writing once costs fewer instructions than hyper's queue of buffers for `writev`
        // (−1.2% per forwarded request, −2.8% per refusal).
        .writev(false)
        .max_buf_size(MAX_BUFFERED)
        .max_header_size(MAX_HEAD);
    builder
}

fn h2_builder() -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(u32::try_from(MAX_HEAD).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS);
    builder
}

/// The worker's handle on one snapshot.
pub struct Current {
    pub snapshot: Arc<Snapshot>,
}

impl Worker {
    pub fn new(shared: Arc<Shared>) -> Worker {
        Worker {
            pool: BillerPool::for_config(&shared.snapshot().config),
            current: ArcSwap::from_pointee(Current {
                snapshot: shared.snapshot_full(),
            }),
            shared,
        }
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The worker's connections to the biller.
    pub fn pool(&self) -> &Arc<BillerPool> {
        &self.pool
    }

    /// The running snapshot, through this worker's handle (renewed after a reload).
    pub fn snapshot(&self) -> Arc<Current> {
        let current = self.current.load_full();
        if Arc::ptr_eq(&current.snapshot, &*self.shared.snapshot()) {
            return current;
        }
        let renewed = Arc::new(Current {
            snapshot: self.shared.snapshot_full(),
        });
        self.current.store(Arc::clone(&renewed));
        renewed
    }
}

/// A connection accepted for a worker.
type Accepted = (std::net::TcpStream, SocketAddr);

/// The worker threads, started and not yet handed their listener.
pub struct Workers {
    inboxes: Vec<mpsc::UnboundedSender<Accepted>>,
    finished: Vec<oneshot::Receiver<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` worker threads (at least one). They serve what [`serve`] hands them until
    /// `shutdown` turns true, then let open connections finish for up to `drain`.
    pub fn start(
        shared: &Arc<Shared>,
        count: usize,
        shutdown: &watch::Receiver<bool>,
        drain: Duration,
    ) -> std::io::Result<Workers> {
        let count = count.max(1);
        let mut workers = Workers {
            inboxes: Vec::with_capacity(count),
            finished: Vec::with_capacity(count),
            threads: Vec::with_capacity(count),
        };
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (inbox, incoming) = mpsc::unbounded_channel();
            let (done, finished) = oneshot::channel();
            let shared = Arc::clone(shared);
            let shutdown = shutdown.clone();
            let thread = std::thread::Builder::new()
                .name(format!("billgate-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(work(shared, incoming, shutdown, drain));
                    // Tasks still running after the drain are dropped with the runtime.
                    drop(runtime);
                    let _ = done.send(());
                })?;
            workers.inboxes.push(inbox);
            workers.finished.push(finished);
            workers.threads.push(thread);
        }
        Ok(workers)
    }
}

/// Accepts partner connections on `listener` and deals them out to the workers in turn until
/// `shutdown` turns true; then closes the listener and returns once every worker has drained.
pub async fn serve(workers: Workers, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let Workers {
        inboxes,
        finished,
        threads,
    } = workers;
    let mut next = 0usize;
    let mut acceptor = Acceptor::new(listener, "partner");
    loop {
        tokio::select! {
            (stream, peer) = acceptor.accept() => {
                let stream = match stream.into_std() {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::warn!(%error, %peer, "cannot hand a connection to a worker");
                        continue;
                    }
                };
                if !hand_over(&inboxes, &mut next, (stream, peer)) {
                    tracing::error!("every worker has stopped; no longer accepting");
                    break;
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(acceptor);
    drop(inboxes);
    for worker in finished {
        let _ = worker.await;
    }
    for thread in threads {
        // Each thread has signalled it is done; joining only reaps it.
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Gives `accepted` to the next worker that still runs; false when none does.
fn hand_over(
    inboxes: &[mpsc::UnboundedSender<Accepted>],
    next: &mut usize,
    mut accepted: Accepted,
) -> bool {
    for _ in 0..inboxes.len() {
        let inbox = &inboxes[*next % inboxes.len()];
        *next = next.wrapping_add(1);
        match inbox.send(accepted) {
            Ok(()) => return true,
            Err(mpsc::error::SendError(back)) => accepted = back,
        }
    }
    false
}

/// One worker: serves the connections it is handed, each on a task of its own.
async fn work(
    shared: Arc<Shared>,
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let worker = Arc::new(Worker::new(shared));
    let graceful = GracefulShutdown::new();
    let heads = Heads::new(worker.shared.metrics().connections.clone());
    let sweeper = tokio::spawn(Arc::clone(&heads).run());
    loop {
        tokio::select! {
            next = incoming.recv() => {
                let Some((stream, peer)) = next else { break };
                let stream = match TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::warn!(%error, %peer, "cannot serve a handed-over connection");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = Connection {
                    worker: Arc::clone(&worker),
                    heads: Arc::clone(&heads),
                    graceful: &graceful,
                    peer,
                };
                match worker.shared.tls() {
                    None => connection.serve(stream),
                    Some(tls) => connection.handshake(stream, tls),
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(incoming);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!("connections still open after {drain:?}; closing them");
        }
    }
    sweeper.abort();
}
