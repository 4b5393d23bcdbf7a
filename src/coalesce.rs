//! Request coalescing: identical inquiries in flight together become one biller call.
//!
//! The first request for a key leads a [`Flight`]; the proxy moves it into a task of its own that
//! calls the biller, so the leader's partner disconnecting never cancels the call. Requests for
//! the same key meanwhile follow it with a [`Waiter`]. The flight's outcome — an answer or a
//! failure — reaches every waiter at once; a flight dropped without one (its task panicked or
//! was cancelled) reaches them at once as [`LeaderGone`]. Either way the key leaves the in-flight
//! map, so the next request starts a new flight: no stuck waiters, no thundering herd.

use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::cache::{AnswerCache, CacheKey, CoalescedCounter};

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
    coalesced: CoalescedCounter,
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
    /// A coalescer counting its followers on its own (see also [`Coalescer::for_cache`]).
    pub fn new() -> Self {
        Coalescer::counting_into(CoalescedCounter::default())
    }

    /// A coalescer whose followers count into `cache`'s
    /// [`CacheStats::coalesced`](crate::cache::CacheStats::coalesced).
    pub fn for_cache(cache: &AnswerCache) -> Self {
        Coalescer::counting_into(cache.coalesced_counter())
    }

    fn counting_into(coalesced: CoalescedCounter) -> Self {
        Coalescer {
            inner: Arc::new(Inner {
                flights: DashMap::new(),
                coalesced,
            }),
        }
    }

    /// Leads a new flight for `key`, or follows the one under way. Never waits: takes one
    /// dashmap shard lock, and allocates only when it starts a flight.
    pub fn join(&self, key: &CacheKey) -> Joined<T> {
        let follow = |rx: &watch::Receiver<Option<T>>| {
            self.inner.coalesced.add_one();
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
mod tests {
    //! Coalescing: one leader per key, every waiter gets the outcome or `LeaderGone`, and the
    //! in-flight map always empties.

    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::Duration;

    use tokio::sync::{oneshot, Barrier};
    use tokio::task::JoinSet;

    use super::*;
    use crate::cache::{KeyRef, Sharing};

    type Outcome = Result<u32, String>;

    /// A waker for polling by hand (`Waker::noop` is newer than the crate's `rust-version`).
    struct NoWake;

    impl Wake for NoWake {
        fn wake(self: Arc<Self>) {}
    }

    fn key(account: &str) -> CacheKey {
        KeyRef::new("bill-inquiry", Sharing::PerPartner, "wallet-a", account).to_key()
    }

    /// `n` tasks join `key` at once (across worker threads); returns the leader and the waiters.
    async fn join_together(
        coalescer: &Coalescer<Outcome>,
        n: usize,
    ) -> (Vec<Flight<Outcome>>, Vec<Waiter<Outcome>>) {
        let barrier = Arc::new(Barrier::new(n));
        let mut tasks = JoinSet::new();
        for _ in 0..n {
            let (coalescer, barrier) = (coalescer.clone(), Arc::clone(&barrier));
            tasks.spawn(async move {
                barrier.wait().await;
                coalescer.join(&key("ACC-1"))
            });
        }
        let (mut leaders, mut followers) = (Vec::new(), Vec::new());
        while let Some(joined) = tasks.join_next().await {
            match joined.expect("join task panicked") {
                Joined::Leader(flight) => leaders.push(flight),
                Joined::Follower(waiter) => followers.push(waiter),
            }
        }
        (leaders, followers)
    }

    /// Every waiter's result. The timeout only turns a hang (a bug) into a failure; a correct run
    /// never comes near it.
    async fn wait_all(waiters: Vec<Waiter<Outcome>>) -> Vec<Result<Outcome, LeaderGone>> {
        let mut tasks = JoinSet::new();
        for waiter in waiters {
            tasks.spawn(tokio::time::timeout(Duration::from_secs(5), waiter.wait()));
        }
        let mut results = Vec::new();
        while let Some(done) = tasks.join_next().await {
            results.push(done.expect("waiter panicked").expect("waiter hung"));
        }
        results
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fifty_concurrent_joins_make_one_biller_call() {
        let coalescer = Coalescer::new();
        let (mut leaders, followers) = join_together(&coalescer, 50).await;
        assert_eq!((leaders.len(), followers.len()), (1, 49));
        assert_eq!(coalescer.in_flight(), 1);
        let waiting = tokio::spawn(wait_all(followers));
        leaders.remove(0).complete(Ok(42));
        let results = waiting.await.expect("waiters task");
        assert_eq!(results.len(), 49);
        assert!(results.iter().all(|r| *r == Ok(Ok(42))), "{results:?}");
        assert_eq!(coalescer.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failure_reaches_every_waiter_and_the_next_request_tries_again() {
        let coalescer = Coalescer::new();
        let (mut leaders, followers) = join_together(&coalescer, 50).await;
        assert_eq!((leaders.len(), followers.len()), (1, 49));
        leaders
            .remove(0)
            .complete(Err("biller timed out".to_owned()));
        let results = wait_all(followers).await;
        assert!(
            results
                .iter()
                .all(|r| *r == Ok(Err("biller timed out".to_owned()))),
            "{results:?}"
        );
        assert_eq!(coalescer.in_flight(), 0);
        assert!(matches!(coalescer.join(&key("ACC-1")), Joined::Leader(_)));
        // That leader was dropped at the end of the statement: the map is empty again.
        assert_eq!(coalescer.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_every_waiter_at_once() {
        let coalescer: Coalescer<Outcome> = Coalescer::new();
        let Joined::Leader(flight) = coalescer.join(&key("ACC-1")) else {
            panic!("first join must lead");
        };
        let mut waiters: Vec<_> = (0..49)
            .map(|_| match coalescer.join(&key("ACC-1")) {
                Joined::Follower(w) => w,
                Joined::Leader(_) => panic!("second leader"),
            })
            .collect();
        // One waiter polled by hand: parked before the drop, ready on the very next poll after it.
        let waker = Waker::from(Arc::new(NoWake));
        let mut cx = Context::from_waker(&waker);
        let mut watched = pin!(waiters.pop().expect("49 waiters").wait());
        assert!(watched.as_mut().poll(&mut cx).is_pending());
        let waiting = tokio::spawn(wait_all(waiters));
        tokio::task::yield_now().await;
        drop(flight);
        assert_eq!(watched.as_mut().poll(&mut cx), Poll::Ready(Err(LeaderGone)));
        let results = waiting.await.expect("waiters task");
        assert_eq!(results, vec![Err(LeaderGone); 48]);
        assert_eq!(coalescer.in_flight(), 0);
    }

    #[tokio::test]
    async fn the_call_outlives_the_leading_partner() {
        let coalescer: Coalescer<Outcome> = Coalescer::new();
        let (answer_tx, answer_rx) = oneshot::channel::<u32>();
        let Joined::Leader(flight) = coalescer.join(&key("ACC-1")) else {
            panic!("first join must lead");
        };
        // The proxy's pattern: the biller call runs in its own task, owning the flight; the
        // partner's request only awaits it.
        let call = tokio::spawn(async move {
            match answer_rx.await {
                Ok(bill) => flight.complete(Ok(bill)),
                Err(_) => drop(flight),
            }
        });
        let partner = tokio::spawn(async move {
            let _ = call.await;
        });
        let Joined::Follower(waiter) = coalescer.join(&key("ACC-1")) else {
            panic!("second join must follow");
        };
        partner.abort(); // the leading partner disconnects
        tokio::task::yield_now().await;
        assert_eq!(coalescer.in_flight(), 1, "the call goes on");
        answer_tx.send(7).expect("call still listening");
        assert_eq!(wait_all(vec![waiter]).await, vec![Ok(Ok(7))]);
        assert_eq!(coalescer.in_flight(), 0);
    }

    #[tokio::test]
    async fn late_and_departed_waiters() {
        let coalescer: Coalescer<Outcome> = Coalescer::new();
        let Joined::Leader(flight) = coalescer.join(&key("ACC-1")) else {
            panic!("first join must lead");
        };
        let (Joined::Follower(gone), Joined::Follower(late)) =
            (coalescer.join(&key("ACC-1")), coalescer.join(&key("ACC-1")))
        else {
            panic!("later joins must follow");
        };
        drop(gone); // a follower's partner disconnected: nothing else changes
        flight.complete(Ok(1));
        // Polled only after completion, and after the sender is gone: still gets the outcome.
        assert_eq!(late.wait().await, Ok(Ok(1)));
        assert_eq!(coalescer.in_flight(), 0);
    }

    #[tokio::test]
    async fn keys_fly_separately_and_stale_flights_never_remove_new_ones() {
        let coalescer: Coalescer<Outcome> = Coalescer::new();
        let (Joined::Leader(a), Joined::Leader(b)) =
            (coalescer.join(&key("ACC-1")), coalescer.join(&key("ACC-2")))
        else {
            panic!("different accounts each lead");
        };
        let other_partner = KeyRef::new("bill-inquiry", Sharing::PerPartner, "bank-b", "ACC-1");
        assert!(matches!(
            coalescer.join(&other_partner.to_key()),
            Joined::Leader(_)
        ));
        assert_eq!(coalescer.in_flight(), 2);
        a.complete(Ok(1));
        let Joined::Leader(next) = coalescer.join(&key("ACC-1")) else {
            panic!("a completed key starts a new flight");
        };
        drop(b);
        assert_eq!(
            coalescer.in_flight(),
            1,
            "dropping ACC-2 left ACC-1's new flight"
        );
        drop(next);
        assert_eq!(coalescer.in_flight(), 0);
    }

    #[test]
    fn followers_count_as_coalesced() {
        let (clock, _hand) = crate::clock::Clock::fake();
        let c = AnswerCache::new(crate::cache::CacheSettings::default(), clock);
        let coalescer = Coalescer::<Outcome>::for_cache(&c);
        let k = key("ACC-1");
        let leader = coalescer.join(&k);
        let followers: Vec<_> = (0..3).map(|_| coalescer.join(&k)).collect();
        assert!(matches!(leader, Joined::Leader(_)));
        assert!(followers.iter().all(|f| matches!(f, Joined::Follower(_))));
        assert_eq!(c.stats().coalesced, 3);
    }
}
