//! Request coalescing: identical inquiries in flight together become one biller call.
//!
//! The first request for a key leads a [`Flight`]; the proxy moves it into a task of its own that
//! calls the biller, so the leader's partner disconnecting never cancels the call. Requests for
//! the same key meanwhile follow it with a [`Waiter`]. The flight's outcome — an answer or a
//! failure — reaches every waiter at once; a flight dropped without one (its task panicked or
//! was cancelled) reaches them at once as [`LeaderGone`]. Either way the key leaves the in-flight
//! map, so the next request starts a new flight: no stuck waiters, no thundering herd.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

use super::key::CacheKey;
use super::store::Counters;

/// The flight a waiter followed ended without an outcome: the leading task was dropped or
/// panicked before calling [`Flight::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the biller call this request was waiting on ended without an answer")]
pub struct LeaderGone;

/// One flight per key at a time, sharing an outcome of type `T` (for the proxy, something like
/// `Result<Arc<CachedAnswer>, Failure>`). Cloning shares the same flights.
pub struct Coalescer<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    flights: DashMap<CacheKey, watch::Receiver<Option<T>>>,
    counters: Arc<Counters>,
}

/// What [`Coalescer::join`] made of a request.
#[derive(Debug)]
pub enum Joined<T> {
    /// No flight was under way: this request calls the biller and must complete the flight.
    Leader(Flight<T>),
    /// A flight was under way: wait for its outcome.
    Follower(Waiter<T>),
}

impl<T> Coalescer<T> {
    /// A coalescer counting its followers on its own (see also
    /// [`AnswerCache::coalescer`](super::AnswerCache::coalescer)).
    pub fn new() -> Self {
        Coalescer::counting_into(Arc::default())
    }

    pub(super) fn counting_into(counters: Arc<Counters>) -> Self {
        Coalescer {
            inner: Arc::new(Inner {
                flights: DashMap::new(),
                counters,
            }),
        }
    }

    /// Leads a new flight for `key`, or follows the one under way. Never waits: takes one
    /// dashmap shard lock, and allocates only when it starts a flight.
    pub fn join(&self, key: &CacheKey) -> Joined<T> {
        let follow = |rx: &watch::Receiver<Option<T>>| {
            self.inner
                .counters
                .coalesced
                .fetch_add(1, Ordering::Relaxed);
            Joined::Follower(Waiter { rx: rx.clone() })
        };
        if let Some(rx) = self.inner.flights.get(key) {
            return follow(&rx);
        }
        match self.inner.flights.entry(key.clone()) {
            Entry::Occupied(flight) => follow(flight.get()),
            Entry::Vacant(slot) => {
                let (tx, rx) = watch::channel(None);
                slot.insert(rx.clone());
                Joined::Leader(Flight {
                    inner: Arc::clone(&self.inner),
                    key: key.clone(),
                    tx,
                    rx,
                    open: true,
                })
            }
        }
    }

    /// Flights under way now (zero once every flight has completed or been dropped).
    pub fn in_flight(&self) -> usize {
        self.inner.flights.len()
    }
}

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer::new()
    }
}

impl<T> Clone for Coalescer<T> {
    fn clone(&self) -> Self {
        Coalescer {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> std::fmt::Debug for Coalescer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// The lead of one flight. Complete it with the outcome; dropping it without completing tells
/// every waiter [`LeaderGone`] at once. Either way its key leaves the in-flight map.
pub struct Flight<T> {
    inner: Arc<Inner<T>>,
    key: CacheKey,
    tx: watch::Sender<Option<T>>,
    /// Names this flight's channel, so it only ever removes its own entry.
    rx: watch::Receiver<Option<T>>,
    open: bool,
}

impl<T> Flight<T> {
    /// The key this flight is for.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Hands `outcome` to every waiter, now and any still to poll. The key is removed first,
    /// so a request arriving after this starts a new flight (it should find the answer cached).
    pub fn complete(mut self, outcome: T) {
        self.land();
        self.tx.send_replace(Some(outcome));
    }

    fn land(&mut self) {
        if std::mem::take(&mut self.open) {
            let own = &self.rx;
            self.inner
                .flights
                .remove_if(&self.key, |_, rx| rx.same_channel(own));
        }
    }
}

impl<T> Drop for Flight<T> {
    /// Without an outcome, the sender closes with the flight and every waiter wakes with
    /// [`LeaderGone`].
    fn drop(&mut self) {
        self.land();
    }
}

impl<T> std::fmt::Debug for Flight<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A request following a flight.
pub struct Waiter<T> {
    rx: watch::Receiver<Option<T>>,
}

impl<T: Clone> Waiter<T> {
    /// The flight's outcome, or [`LeaderGone`] as soon as the flight is dropped without one.
    /// Waits as long as the leader's biller call takes (bounded by its own timeout); cancel-safe.
    pub async fn wait(mut self) -> Result<T, LeaderGone> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(outcome) => (*outcome).clone().ok_or(LeaderGone),
            Err(_closed) => Err(LeaderGone),
        }
    }
}

impl<T> std::fmt::Debug for Waiter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter").finish_non_exhaustive()
    }
}

#[cfg(test)]
#[path = "coalesce_tests.rs"]
mod tests;
