use super::*;

use std::sync::atomic::{AtomicBool, Ordering};

/// A worker's deadlines with their watcher running, its floor at `floor`.
fn watched(floor: Duration) -> (Deadlines, tokio::task::JoinHandle<()>) {
    let deadlines = Deadlines::new();
    let watcher = tokio::spawn(deadlines.clone().watch(move || floor));
    (deadlines, watcher)
}

/// Spawns a task that sleeps until `due` and then raises its flag.
fn sleeper(deadlines: &Deadlines, due: Instant) -> (Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    let sleep = deadlines.sleep_until(due);
    let task = tokio::spawn(async move {
        sleep.await;
        flag.store(true, Ordering::SeqCst);
    });
    (done, task)
}

/// Lets every task that can run, run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_fires_when_due_and_not_before() {
    let (deadlines, watcher) = watched(Duration::from_millis(1500));
    let start = Instant::now();
    let (done, task) = sleeper(&deadlines, start + Duration::from_secs(10));
    settle().await;
    assert_eq!(deadlines.waiting(), 1);

    tokio::time::advance(Duration::from_millis(9_999)).await;
    settle().await;
    assert!(!done.load(Ordering::SeqCst), "fired before its deadline");

    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert!(done.load(Ordering::SeqCst), "not fired at its deadline");
    let _ = task.await;
    assert_eq!(
        deadlines.waiting(),
        0,
        "a finished sleep gives its slot back"
    );
    watcher.abort();
}

#[tokio::test(start_paused = true)]
async fn a_deadline_sooner_than_the_floor_is_not_fired_late() {
    // The watcher's timer is 5 s away; a 20 ms deadline must still fire at 20 ms.
    let (deadlines, watcher) = watched(Duration::from_secs(5));
    settle().await;
    let start = Instant::now();
    let (done, task) = sleeper(&deadlines, start + Duration::from_millis(20));
    settle().await;

    tokio::time::advance(Duration::from_millis(19)).await;
    settle().await;
    assert!(!done.load(Ordering::SeqCst));
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert!(done.load(Ordering::SeqCst), "fired late");
    let _ = task.await;
    watcher.abort();
}

#[tokio::test(start_paused = true)]
async fn a_dropped_deadline_gives_its_slot_back_and_never_fires() {
    let (deadlines, watcher) = watched(Duration::from_millis(1500));
    let start = Instant::now();
    let (done, task) = sleeper(&deadlines, start + Duration::from_secs(3));
    let (other, other_task) = sleeper(&deadlines, start + Duration::from_secs(3));
    settle().await;
    assert_eq!(deadlines.waiting(), 2);

    task.abort();
    let _ = task.await;
    assert_eq!(deadlines.waiting(), 1);

    tokio::time::advance(Duration::from_secs(3)).await;
    settle().await;
    assert!(!done.load(Ordering::SeqCst));
    assert!(other.load(Ordering::SeqCst));
    let _ = other_task.await;
    assert_eq!(deadlines.waiting(), 0);
    watcher.abort();
}

#[tokio::test(start_paused = true)]
async fn a_sleep_never_polled_takes_no_slot() {
    let deadlines = Deadlines::new();
    let sleep = deadlines.sleep_until(Instant::now() + Duration::from_secs(1));
    assert_eq!(deadlines.waiting(), 0);
    drop(sleep);
    assert_eq!(deadlines.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn timeout_at_answers_with_the_future_or_elapsed() {
    let (deadlines, watcher) = watched(Duration::from_millis(1500));
    let start = Instant::now();

    let quick = deadlines
        .timeout_at(start + Duration::from_secs(3), async { 7 })
        .await;
    assert_eq!(quick, Ok(7));
    assert_eq!(deadlines.waiting(), 0, "a ready future takes no slot");

    let slow = deadlines.timeout_at(
        start + Duration::from_secs(3),
        tokio::time::sleep(Duration::from_secs(4)),
    );
    assert_eq!(slow.await, Err(Elapsed));
    assert_eq!(Instant::now() - start, Duration::from_secs(3));

    let in_time = deadlines.timeout_at(Instant::now() + Duration::from_secs(3), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        "answered"
    });
    assert_eq!(in_time.await, Ok("answered"));
    assert_eq!(deadlines.waiting(), 0);
    watcher.abort();
}

#[tokio::test(start_paused = true)]
async fn many_deadlines_fire_in_order_of_due() {
    let (deadlines, watcher) = watched(Duration::from_millis(1500));
    let start = Instant::now();
    let sleepers: Vec<_> = [7u64, 1, 4, 2]
        .iter()
        .map(|s| sleeper(&deadlines, start + Duration::from_secs(*s)))
        .collect();
    settle().await;
    let mut fired_at = Vec::new();
    for _ in 1..=7 {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        let fired = sleepers
            .iter()
            .filter(|(done, _)| done.load(Ordering::SeqCst))
            .count();
        fired_at.push(fired);
    }
    // After 1 s one has fired, after 2 s two, after 4 s three, after 7 s all four.
    assert_eq!(fired_at, vec![1, 2, 2, 3, 3, 3, 4]);
    for (_, task) in sleepers {
        let _ = task.await;
    }
    assert_eq!(deadlines.waiting(), 0);
    watcher.abort();
}

#[test]
fn the_floor_is_due_before_any_request_deadline() {
    assert_eq!(
        floor_period(Duration::from_secs(3)),
        Duration::from_millis(1500)
    );
    assert_eq!(
        floor_period(Duration::from_secs(60)),
        Duration::from_secs(5)
    );
    assert_eq!(
        floor_period(Duration::from_millis(20)),
        Duration::from_millis(50)
    );
    assert_eq!(floor_period(Duration::ZERO), Duration::from_millis(50));
}
