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
