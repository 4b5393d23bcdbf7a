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
