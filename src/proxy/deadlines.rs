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
#[path = "deadlines_tests.rs"]
mod tests;
