//! A worker's deadlines for its biller calls, kept in one table per worker and watched by one
//! task of that worker, which holds the only tokio timer among them.
//!
//! Each tokio timer is an entry in the runtime's timer wheel: made with a lookup of the
//! runtime's handle, linked in under the wheel's lock on its first poll and unlinked under it
//! again when dropped. Here a deadline is a slot in the worker's table, taken on its first poll
//! and given back when it is dropped; the watcher wakes the ones that are due. Most deadlines
//! are dropped long before they are due (the biller answers in milliseconds), so the watcher
//! rarely has one to fire. Measured on hyper's header-read timer, which used this table until
//! the heads sweep (`heads.rs`) replaced it, a slot cost about 400 instructions less than a
//! tokio timer: 12 525 → 12 104 per refusal (`benches/README.md`, "Round eight").
//!
//! The watcher's timer is never further away than the worker's floor (half the biller
//! timeout, see [`floor_period`]): a new deadline is then almost never due before it, so
//! taking a slot never has to move the watcher's timer. A deadline due sooner than the
//! watcher's timer (a biller timeout under the floor's 50 ms) wakes the watcher, which sets its
//! timer again; nothing is ever fired late.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;
use tokio::time::Instant;

/// One worker's deadlines. Cloning is cheap; clones share the table.
#[derive(Clone, Default)]
pub struct Deadlines {
    table: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    /// Deadlines that have been polled and not dropped.
    slots: Slab<Slot>,
    /// When the watcher's timer is due; `None` before it first runs.
    planned: Option<Instant>,
    /// The watcher, while it waits for its timer.
    watcher: Option<Waker>,
    /// A deadline due before `planned` was taken since the watcher last looked.
    sooner: bool,
}

struct Slot {
    due: Instant,
    /// `None` once the watcher has fired it.
    waker: Option<Waker>,
}

/// A future that completes at its deadline, on a worker's [`Deadlines`].
pub struct Sleep {
    table: Arc<Mutex<Table>>,
    due: Instant,
    key: Option<usize>,
}

pin_project_lite::pin_project! {
    /// [`Deadlines::timeout_at`]'s future: the inner future's output, or [`Elapsed`].
    ///
    /// A named future rather than an `async fn`: an `async fn` keeps its argument, the inner
    /// future, twice (as it was handed over and where it is polled), and every future that
    /// awaits it is as large again. The deadline around a biller call went from 2 080 bytes
    /// to 632: the pool's send once, and the deadline.
    pub struct Timeout<F> {
        #[pin]
        future: F,
        sleep: Sleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        Pin::new(this.sleep).poll(cx).map(|()| Err(Elapsed))
    }
}

/// A future did not finish before its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl Deadlines {
    pub fn new() -> Deadlines {
        Deadlines::default()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    /// A future completing at `due`. It takes no slot until first polled.
    pub fn sleep_until(&self, due: Instant) -> Sleep {
        Sleep {
            table: Arc::clone(&self.table),
            due,
            key: None,
        }
    }

    /// `future`'s output, or [`Elapsed`] if `due` comes first.
    pub fn timeout_at<F: Future>(&self, due: Instant, future: F) -> Timeout<F> {
        Timeout {
            future,
            sleep: self.sleep_until(due),
        }
    }

    /// Deadlines waiting (polled, not yet dropped), fired or not.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.lock().slots.len()
    }

    /// Fires the deadlines that are due, for as long as it runs: spawn it once per worker, on
    /// the worker's runtime. `floor` is how far away its own timer may be at most.
    pub async fn watch(self, floor: impl Fn() -> Duration) {
        let mut due = Vec::new();
        loop {
            let now = Instant::now();
            let planned = {
                let mut table = self.lock();
                let mut next = now + floor();
                for (_, slot) in table.slots.iter_mut() {
                    if slot.waker.is_none() {
                        continue;
                    }
                    if slot.due <= now {
                        due.extend(slot.waker.take());
                    } else if slot.due < next {
                        next = slot.due;
                    }
                }
                table.planned = Some(next);
                table.sooner = false;
                next
            };
            for waker in due.drain(..) {
                waker.wake();
            }
            let mut timer = pin!(tokio::time::sleep_until(planned));
            std::future::poll_fn(|cx| {
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                let mut table = self.lock();
                if table.sooner {
                    return Poll::Ready(());
                }
                table.watcher = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
        }
    }
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    // Nothing panics while holding it; a poisoned table is still a sound table.
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut table = lock(&this.table);
        let Some(key) = this.key else {
            let key = table.slots.insert(Slot {
                due: this.due,
                waker: Some(cx.waker().clone()),
            });
            this.key = Some(key);
            // Due before the watcher looks again: have it look sooner.
            if table.planned.is_none_or(|planned| this.due < planned) {
                table.sooner = true;
                let watcher = table.watcher.take();
                drop(table);
                if let Some(watcher) = watcher {
                    watcher.wake();
                }
            }
            return Poll::Pending;
        };
        match table.slots.get_mut(key) {
            Some(Slot {
                waker: Some(waker), ..
            }) => {
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
                Poll::Pending
            }
            // Fired (a slot is only removed by its own `Sleep`).
            _ => Poll::Ready(()),
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            lock(&self.table).slots.try_remove(key);
        }
    }
}

/// How far away the watcher's timer may be at most: half the biller timeout, between 50 ms and
/// 5 s. Every biller call's deadline is a whole timeout away when it is taken, so it is never
/// due before the watcher's timer.
///
/// That also keeps tokio's timer driver from waking its own thread. The driver writes to an
/// eventfd (and `epoll_wait` returns once more, for nothing) whenever a timer is due before the
/// earliest one it knew of when it last parked; a worker whose only timer were due with the
/// next request's deadline would do that once every few requests. The watcher's timer is
/// always the earliest, and is set again only when it has fired.
pub fn floor_period(timeout: Duration) -> Duration {
    (timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicBool, Ordering};

    /// A worker's deadlines with their watcher running, its floor at `floor`.
    fn watched(floor: Duration) -> (Deadlines, tokio::task::JoinHandle<()>) {
        let deadlines = Deadlines::new();
        let watcher = tokio::spawn(deadlines.clone().watch(move || floor));
        (deadlines, watcher)
    }

    /// Spawns a task that sleeps until `due` and then raises its flag.
    fn sleeper(
        deadlines: &Deadlines,
        due: Instant,
    ) -> (Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
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
}
