//! Partner connections that go too long without a request: a head begun and never finished
//! (the slow-header attack), or a keep-alive connection left idle. Each is cut off, without an
//! answer, once [`HEAD_TIMEOUT`] has passed since it last came to wait for a request head.
//!
//! hyper has this built in (`header_read_timeout`, on tokio's timer), but arms a timer for every
//! request head and, while the timeout is set, polls the connection once more after each head:
//! 12 409 instructions per refusal against 11 033 here, and 5–8% more CPU per refusal end to
//! end in four comparisons of five (`benches/results/hyper-std.txt`), so it stays hand-written.
//! hyper's timer also runs only while hyper waits for a head, so a partner that pipelines
//! requests and stops reading the answers would keep its connection; here it is cut off too.
//! `tests/suite/heads_differential.rs` checks it cuts what hyper's timeout cuts.
//!
//! A request costs three atomic updates of its connection's own line: it counts itself served
//! when its head has arrived, and when its answer is handed over (or its request is dropped,
//! as an HTTP/2 stream reset drops it) it moves the connection's wait forward and counts itself
//! out. An answer streamed from the biller starts the wait from that body's own deadline. A
//! connection serving any request (HTTP/2 serves several at once) is never cut. One sweep per
//! worker, every [`TICK`], cuts off the connections that have waited past the timeout: their
//! next read fails, and hyper closes them.
//!
//! Times are kept in milliseconds on a per-worker clock that the sweep advances, so marking a
//! request reads no clock. A connection is therefore cut off between `HEAD_TIMEOUT - TICK` and
//! `HEAD_TIMEOUT + TICK` after it began to wait. The wait begins when the answer is handed to
//! hyper, not when hyper has finished writing it: answers are small and the socket takes them
//! at once, and a streamed answer starts the wait only at its body's deadline.
//!
//! Connections open and cut off are counted in `billgate_partner_connections` and
//! `billgate_partner_connections_cut_total`, as connections open and close, never per request.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::lengths::LengthScan;
use crate::metrics::ConnectionCounts;

/// How long a connection may wait for a request head: for the rest of a head it has begun,
/// or for a first byte when idle.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head, in bytes (431 beyond; hyper would take any head that fits its
/// buffer).
pub const MAX_HEAD: usize = 64 * 1024;

/// The most a partner connection's read buffer holds: requests a partner pipelines ahead of
/// its answers wait in the kernel's socket buffers, not the gateway's memory, past this.
/// hyper's default is 408 KiB; one read may fill the buffer's spare capacity beyond it.
pub const MAX_BUFFERED: usize = 64 * 1024;

/// How often a worker sweeps its connections.
pub const TICK: Duration = Duration::from_millis(500);

/// The worker's clock, as of its last sweep.
struct Coarse {
    origin: Instant,
    /// Milliseconds since `origin`.
    now: AtomicU64,
}

impl Coarse {
    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }
}

/// One worker's partner connections.
pub struct Heads {
    clock: Arc<Coarse>,
    watched: Mutex<Slab<Arc<Watch>>>,
    counts: ConnectionCounts,
}

/// One connection's state, shared by its I/O, its requests and the sweep.
pub struct Watch {
    clock: Arc<Coarse>,
    /// When the connection last began to wait for a head (the worker's milliseconds): only
    /// ever moves forward.
    since: AtomicU64,
    /// Requests it is serving: one at most on HTTP/1.1, several at once on HTTP/2. A
    /// connection serving any is never cut.
    serving: AtomicU32,
    /// Set by the sweep: the connection has waited too long.
    cut: AtomicBool,
    /// The connection's task, as of its last read that had to wait.
    reader: Mutex<Option<Waker>>,
    /// Some head read on it named both `Content-Length` and `Transfer-Encoding`.
    both_lengths: AtomicBool,
}

/// A partner's connection, watched: once cut off, its reads fail.
pub struct Watched<T> {
    io: T,
    watch: Arc<Watch>,
    heads: Arc<Heads>,
    /// Its place among the worker's connections, until it closes.
    key: Option<usize>,
    /// The waker last left in `watch.reader`: the connection's task is always the same, so
    /// its reads take the lock only the first time they wait.
    registered: Option<Waker>,
    lengths: LengthScan,
}

impl Heads {
    /// The worker's connections, counted in `counts` (shared by every worker).
    pub fn new(counts: ConnectionCounts) -> Arc<Heads> {
        Arc::new(Heads {
            clock: Arc::new(Coarse {
                origin: Instant::now(),
                now: AtomicU64::new(0),
            }),
            watched: Mutex::new(Slab::new()),
            counts,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slab<Arc<Watch>>> {
        // Nothing panics while holding it; a poisoned table is still a sound table.
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches `io`, a connection just accepted: it begins waiting for its first head now.
    pub fn watch<T>(self: &Arc<Self>, io: T) -> (Watched<T>, Arc<Watch>) {
        let watch = Arc::new(Watch {
            clock: Arc::clone(&self.clock),
            since: AtomicU64::new(self.clock.now.load(Ordering::Relaxed)),
            serving: AtomicU32::new(0),
            cut: AtomicBool::new(false),
            reader: Mutex::new(None),
            both_lengths: AtomicBool::new(false),
        });
        let key = self.lock().insert(Arc::clone(&watch));
        self.counts.open.inc();
        let watched = Watched {
            io,
            watch: Arc::clone(&watch),
            heads: Arc::clone(self),
            key: Some(key),
            registered: None,
            lengths: LengthScan::default(),
        };
        (watched, watch)
    }

    /// Connections watched (open).
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.lock().len()
    }

    /// Advances the worker's clock to `now` and cuts off every connection that has waited for
    /// a head for [`HEAD_TIMEOUT`] or longer. Returns how many are cut off (newly or still
    /// open).
    pub fn sweep(&self, now: Instant) -> usize {
        let now = self.clock.millis(now);
        self.clock.now.fetch_max(now, Ordering::Relaxed);
        let timeout = u64::try_from(HEAD_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
        let mut wake = Vec::new();
        let mut cut = 0;
        {
            let watched = self.lock();
            for (_, watch) in watched.iter() {
                let since = watch.since.load(Ordering::Relaxed);
                if watch.serving.load(Ordering::Relaxed) > 0 || now.saturating_sub(since) < timeout
                {
                    continue;
                }
                if !watch.cut.swap(true, Ordering::Relaxed) {
                    self.counts.cut.inc();
                }
                cut += 1;
                // Woken on every sweep until it has closed: a read that began to wait after
                // this sweep looked would otherwise never hear of it.
                if let Some(reader) = watch.lock_reader().as_ref() {
                    wake.push(reader.clone());
                }
            }
        }
        for reader in wake {
            reader.wake();
        }
        cut
    }

    /// Sweeps every [`TICK`] for as long as it runs: spawn it once per worker, on the worker's
    /// runtime.
    pub async fn run(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // The time now, not the tick's: a busy worker may come to its tick late.
            let cut = self.sweep(Instant::now());
            if cut > 0 {
                tracing::debug!(
                    cut,
                    "connections cut off: no request head within the timeout"
                );
            }
        }
    }
}

/// One request a connection is serving, from its head to its answer: [`Serving::answered`],
/// or when dropped unanswered (a reset stream), as answered now.
pub struct Serving<'w> {
    watch: &'w Watch,
    until: Option<Option<Instant>>,
}

impl Serving<'_> {
    /// The answer has been handed over; its body may stream until `until`.
    pub fn answered(mut self, until: Option<Instant>) {
        self.until = Some(until);
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.watch.answered(self.until.flatten());
    }
}

impl Watch {
    /// A request head has arrived: the connection serves it until the [`Serving`] is done.
    pub fn serve(&self) -> Serving<'_> {
        self.busy();
        Serving {
            watch: self,
            until: None,
        }
    }

    /// A request head has arrived: the connection is serving it.
    pub fn busy(&self) {
        self.serving.fetch_add(1, Ordering::Relaxed);
    }

    /// The answer has been handed over: once it serves no other request, the connection waits
    /// for its next head from now, or, if the answer's body may stream until `until`, from then.
    pub fn answered(&self, until: Option<Instant>) {
        let now = self.clock.now.load(Ordering::Relaxed);
        let since = until.map_or(now, |until| self.clock.millis(until).max(now));
        // Before the count drops: a sweep that sees none served sees this wait too.
        self.since.fetch_max(since, Ordering::Relaxed);
        self.serving.fetch_sub(1, Ordering::Relaxed);
    }

    fn lock_reader(&self) -> MutexGuard<'_, Option<Waker>> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }

    /// Whether some head read on the connection so far named both `Content-Length` and
    /// `Transfer-Encoding` (`lengths.rs`).
    pub fn both_lengths(&self) -> bool {
        self.both_lengths.load(Ordering::Relaxed)
    }
}

impl<T> Watched<T> {
    /// The connection is closing: no longer watched, nor counted open. Done before its end is
    /// sent (a shutdown, or the socket closed when dropped), so whoever sees it closed sees it
    /// counted.
    fn release(&mut self) {
        if let Some(key) = self.key.take() {
            if self.heads.lock().try_remove(key).is_some() {
                self.heads.counts.open.dec();
            }
        }
    }
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        // Before the fields drop, the socket among them.
        self.release();
    }
}

fn cut_off() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no request head within {HEAD_TIMEOUT:?}"),
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.watch.is_cut() {
            return Poll::Ready(Err(cut_off()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        match polled {
            // The sweep only clones the waker it finds, so what is left there stays current.
            Poll::Pending => this.register(cx),
            Poll::Ready(Ok(())) => {
                let read = buf.filled().get(before..).unwrap_or_default();
                if this.lengths.feed(read) {
                    this.watch.both_lengths.store(true, Ordering::Relaxed);
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        polled
    }
}

impl<T> Watched<T> {
    /// Leaves the task's waker where the sweep finds it, so that a cut wakes the task whether it
    /// waits to read a head or to write an answer the partner is not reading.
    fn register(&mut self, cx: &Context<'_>) {
        let known = self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        if !known {
            let waker = cx.waker().clone();
            *self.watch.lock_reader() = Some(waker.clone());
            self.registered = Some(waker);
        }
    }
}

// Writes fail once the connection is cut too: a partner that pipelines requests and never
// reads the answers leaves hyper waiting to write, not to read, and is cut off all the same.
impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.watch.is_cut() {
            return Poll::Ready(Err(cut_off()));
        }
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if polled.is_pending() {
            this.register(cx);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.watch.is_cut() {
            return Poll::Ready(Err(cut_off()));
        }
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if polled.is_pending() {
            this.register(cx);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.watch.is_cut() {
            return Poll::Ready(Err(cut_off()));
        }
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        if polled.is_pending() {
            this.register(cx);
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.release();
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    /// A worker's heads, with the counts it keeps.
    fn heads() -> (Arc<Heads>, ConnectionCounts) {
        let counts = ConnectionCounts {
            open: prometheus::IntGauge::new("open", "open").expect("gauge"),
            cut: prometheus::IntCounter::new("cut", "cut").expect("counter"),
        };
        (Heads::new(counts.clone()), counts)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_cut_off_at_the_timeout_and_not_before() {
        let (heads, counts) = heads();
        let start = Instant::now();
        let (_io, watch) = heads.watch(());
        assert_eq!(heads.sweep(at(start, 9_999)), 0);
        assert!(!watch.is_cut());
        assert_eq!(heads.sweep(at(start, 10_000)), 1);
        assert!(watch.is_cut());
        // Swept again while still open, it is woken again but counted once.
        assert_eq!(heads.sweep(at(start, 10_500)), 1);
        assert_eq!(counts.cut.get(), 1);
        assert_eq!(counts.open.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_serving_a_request_is_never_cut_off() {
        let (heads, _) = heads();
        let start = Instant::now();
        let (_io, watch) = heads.watch(());
        watch.busy();
        assert_eq!(heads.sweep(at(start, 60_000)), 0);
        assert!(!watch.is_cut());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_restarts_the_wait_for_the_next_head() {
        let (heads, _) = heads();
        let start = Instant::now();
        let (_io, watch) = heads.watch(());
        watch.busy();
        assert_eq!(heads.sweep(at(start, 5_000)), 0);
        watch.answered(None);
        assert_eq!(heads.sweep(at(start, 14_999)), 0);
        assert_eq!(heads.sweep(at(start, 15_000)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_answer_starts_the_wait_when_its_body_may_last_no_longer() {
        let (heads, _) = heads();
        let start = Instant::now();
        let (_io, watch) = heads.watch(());
        watch.busy();
        watch.answered(Some(at(start, 20_000)));
        assert_eq!(heads.sweep(at(start, 29_999)), 0);
        assert_eq!(heads.sweep(at(start, 30_000)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_is_cut_only_once_it_serves_no_stream() {
        let (heads, _) = heads();
        let start = Instant::now();
        let (_io, watch) = heads.watch(());
        // Two streams; the first answered at once, the second still in hand at 60 s.
        watch.busy();
        watch.busy();
        watch.answered(None);
        assert_eq!(heads.sweep(at(start, 60_000)), 0);
        watch.answered(None);
        assert_eq!(heads.sweep(at(start, 69_999)), 0);
        assert_eq!(heads.sweep(at(start, 70_000)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_dropped_unanswered_is_counted_out() {
        let (heads, _) = heads();
        let start = Instant::now();
        let (_io, watch) = heads.watch(());
        let reset = watch.serve();
        assert_eq!(heads.sweep(at(start, 30_000)), 0);
        drop(reset);
        assert_eq!(heads.sweep(at(start, 39_999)), 0);
        assert_eq!(heads.sweep(at(start, 40_000)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_is_no_longer_watched() {
        let (heads, counts) = heads();
        let start = Instant::now();
        let (first, _) = heads.watch(());
        let (second, _) = heads.watch(());
        assert_eq!(heads.open(), 2);
        assert_eq!(counts.open.get(), 2);
        drop(first);
        assert_eq!(heads.open(), 1);
        assert_eq!(counts.open.get(), 1);
        assert_eq!(heads.sweep(at(start, 10_000)), 1);
        drop(second);
        assert_eq!(heads.open(), 0);
        assert_eq!(counts.open.get(), 0);
        assert_eq!(heads.sweep(at(start, 20_000)), 0);
        assert_eq!(counts.cut.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_pass_through_until_the_cut_then_a_waiting_read_fails() {
        let (heads, counts) = heads();
        let start = Instant::now();
        let (mut partner, gateway) = tokio::io::duplex(64);
        let (mut watched, _watch) = heads.watch(gateway);

        partner.write_all(b"GET /v1/bi").await.expect("write");
        let mut buf = [0u8; 64];
        let n = watched.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"GET /v1/bi");

        // The rest of the head never comes: the read waits until the sweep cuts it off.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            watched.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        assert!(!reader.is_finished());
        assert_eq!(heads.sweep(at(start, 10_000)), 1);
        let error = reader
            .await
            .expect("the reader task")
            .expect_err("a read after the cut fails");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(heads.open(), 0, "the cut connection was dropped");
        assert_eq!((counts.open.get(), counts.cut.get()), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_shutting_down_is_no_longer_counted_open() {
        let (heads, counts) = heads();
        let (_partner, gateway) = tokio::io::duplex(64);
        let (mut watched, _watch) = heads.watch(gateway);
        assert_eq!((heads.open(), counts.open.get()), (1, 1));
        // hyper shuts a connection down before dropping it; the partner may see its end first.
        watched.shutdown().await.expect("shutdown");
        assert_eq!((heads.open(), counts.open.get()), (0, 0));
        drop(watched);
        assert_eq!(counts.open.get(), 0, "counted closed once");
    }
}
