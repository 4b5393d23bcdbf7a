//! The store's behaviour, the same on SQLite (a file in a temp directory) and on a real
//! PostgreSQL started by the test.

mod common;

use billgate_subs::store::{BillState, ChangeKind, NewDelivery, Store, Subscribed};
use common::postgres::Postgres;

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("billgate-store-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bill(id: &str, status: &str, amount: &str) -> BillState {
    BillState {
        bill_id: id.into(),
        status: status.into(),
        amount_due: amount.into(),
        due_date: "2026-12-15".into(),
    }
}

fn delivery(id: &str, subscription: &str, account: &str) -> NewDelivery {
    NewDelivery {
        id: id.into(),
        subscription_id: subscription.into(),
        partner: "bank-b".into(),
        account: account.into(),
        callback: "https://hooks.example/x".into(),
        body: format!("{{\"id\":\"{id}\"}}"),
    }
}

/// Everything the gateway asks of a store, against one that starts empty at `url`.
async fn behaves(url: &str) {
    let store = Store::open(url).await.expect("open");

    // Subscriptions: created, idempotent, limited, each partner its own.
    let Subscribed::Created(a) = store
        .subscribe("bank-b", "100234", "https://h/a", 3, 1_000)
        .await
        .expect("subscribe")
    else {
        panic!("not created")
    };
    assert!(
        a.id.starts_with("sub_") && a.id.len() == 4 + 13 + 16,
        "{}",
        a.id
    );
    assert_eq!(
        store
            .subscribe("bank-b", "100234", "https://h/a", 3, 2_000)
            .await
            .expect("again"),
        Subscribed::Existing(a.clone())
    );
    let Subscribed::Created(b) = store
        .subscribe("bank-b", "100235", "https://h/a", 3, 3_000)
        .await
        .expect("b")
    else {
        panic!()
    };
    let Subscribed::Created(c) = store
        .subscribe("bank-b", "100234", "https://h/c", 3, 4_000)
        .await
        .expect("c")
    else {
        panic!()
    };
    assert_eq!(
        store
            .subscribe("bank-b", "100236", "https://h/a", 3, 5_000)
            .await
            .expect("over"),
        Subscribed::LimitReached { max: 3 }
    );
    // At the limit, an existing one is still the same one.
    assert_eq!(
        store
            .subscribe("bank-b", "100235", "https://h/a", 3, 5_000)
            .await
            .expect("existing"),
        Subscribed::Existing(b.clone())
    );
    let Subscribed::Created(w) = store
        .subscribe("wallet-a", "100234", "https://w/", 3, 6_000)
        .await
        .expect("w")
    else {
        panic!()
    };
    assert_eq!(
        store.subscription("bank-b", &w.id).await.expect("read"),
        None
    );
    assert!(!store.unsubscribe("bank-b", &w.id).await.expect("delete"));
    assert_eq!(
        store.subscription("wallet-a", &w.id).await.expect("read"),
        Some(w.clone())
    );

    // Pages by id, each once.
    let first = store.list("bank-b", None, 2).await.expect("list");
    let rest = store
        .list("bank-b", first.last().map(|s| s.id.as_str()), 2)
        .await
        .expect("list");
    let mut seen: Vec<String> = first.iter().chain(&rest).map(|s| s.id.clone()).collect();
    assert_eq!(seen.len(), 3);
    seen.dedup();
    assert_eq!(seen, vec![a.id.clone(), b.id.clone(), c.id.clone()]);

    assert_eq!(
        store
            .subscribers("100234")
            .await
            .expect("subscribers")
            .len(),
        3
    );
    assert_eq!(
        store.accounts(None, 10).await.expect("accounts"),
        ["100234", "100235"]
    );
    assert_eq!(
        store.accounts(Some("100234"), 10).await.expect("accounts"),
        ["100235"]
    );
    assert_eq!(store.account_count().await.expect("count"), 2);
    assert_eq!(
        store.subscriptions_by_partner().await.expect("by partner"),
        vec![("bank-b".to_owned(), 3), ("wallet-a".to_owned(), 1)]
    );

    // Deleting makes room.
    assert!(store.unsubscribe("bank-b", &c.id).await.expect("delete"));
    assert!(matches!(
        store
            .subscribe("bank-b", "100236", "https://h/a", 3, 7_000)
            .await
            .expect("room"),
        Subscribed::Created(_)
    ));

    // Bills: new, changed, paid, unchanged.
    let due = store
        .observe("100234", &[bill("B1", "due", "10.00")], 10_000)
        .await
        .expect("observe");
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].kind, due[0].version), (ChangeKind::Due, 1));
    assert!(store
        .observe("100234", &[bill("B1", "due", "10.00")], 11_000)
        .await
        .expect("same")
        .is_empty());
    let changed = store
        .observe("100234", &[bill("B1", "due", "12.50")], 12_000)
        .await
        .expect("changed");
    assert_eq!(
        (changed[0].kind, changed[0].version),
        (ChangeKind::Changed, 2)
    );
    let paid = store
        .observe(
            "100234",
            &[bill("B1", "paid", "12.50"), bill("B2", "due", "3.00")],
            13_000,
        )
        .await
        .expect("paid");
    assert_eq!(paid.len(), 2);
    assert_eq!((paid[0].kind, paid[0].version), (ChangeKind::Paid, 3));
    assert_eq!((paid[1].kind, paid[1].version), (ChangeKind::Due, 1));
    // Left out of an answer, a bill stays as it was.
    assert!(store
        .observe("100234", &[], 14_000)
        .await
        .expect("none")
        .is_empty());
    assert!(store
        .observe("100234", &[bill("B2", "due", "3.00")], 14_000)
        .await
        .expect("same")
        .is_empty());

    // What is known of an account, as a new subscriber is told it: every bill, its version.
    assert_eq!(
        store.bills("100234").await.expect("bills"),
        vec![
            (bill("B1", "paid", "12.50"), 3),
            (bill("B2", "due", "3.00"), 1)
        ]
    );
    assert!(store.bills("100235").await.expect("none").is_empty());

    // Refresh requests: one per account (the first stands), oldest first, done when closed.
    store.request_refresh("100299", 15_000).await.expect("ask");
    store.request_refresh("100235", 15_500).await.expect("ask");
    store
        .request_refresh("100299", 16_000)
        .await
        .expect("again");
    assert_eq!(
        store.refresh_requests(10).await.expect("requests"),
        ["100299", "100235"]
    );
    assert_eq!(store.refresh_requests(1).await.expect("one"), ["100299"]);
    store.refresh_done("100299").await.expect("done");
    store.refresh_done("100299").await.expect("done twice");
    assert_eq!(
        store.refresh_requests(10).await.expect("requests"),
        ["100235"]
    );

    // The outbox: dedup, per-subscription order, retries, dead letters, replay.
    let batch = [
        delivery("e1", &a.id, "100234"),
        delivery("e2", &a.id, "100234"),
        delivery("f1", &b.id, "100235"),
    ];
    assert_eq!(store.enqueue(&batch, 20_000).await.expect("enqueue"), 3);
    assert_eq!(store.enqueue(&batch[..1], 20_500).await.expect("again"), 0);
    let due: Vec<String> = store
        .due(20_000, 10)
        .await
        .expect("due")
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(due, ["e1", "f1"], "e2 waits for e1");
    assert!(store.due(19_999, 10).await.expect("due").is_empty());
    store
        .retry("e1", 1, 25_000, "HTTP 500")
        .await
        .expect("retry");
    let due: Vec<String> = store
        .due(21_000, 10)
        .await
        .expect("due")
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(due, ["f1"], "e1 waits its retry, e2 waits for it");
    let later = store.due(25_000, 10).await.expect("due");
    let e1 = later.iter().find(|d| d.id == "e1").expect("e1 due again");
    assert_eq!(
        (e1.attempts, e1.last_error.as_deref()),
        (1, Some("HTTP 500"))
    );
    store.delivered("f1", 25_100).await.expect("delivered");
    store.dead("e1", 9, "HTTP 500", 26_000).await.expect("dead");
    let due: Vec<String> = store
        .due(26_000, 10)
        .await
        .expect("due")
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(
        due,
        ["e2"],
        "a dead letter no longer holds its subscription back"
    );
    let counts = store.queue_counts().await.expect("counts");
    assert_eq!((counts.pending, counts.delivered, counts.dead), (1, 1, 1));
    assert_eq!(
        store.oldest_pending_ms().await.expect("oldest"),
        Some(20_000)
    );
    let dead = store.dead_letters(None, 10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id.as_str(), dead[0].state.as_str()),
        ("e1", "dead")
    );
    assert!(store.replay("e1", 30_000).await.expect("replay"));
    assert!(!store.replay("e1", 30_000).await.expect("replay twice"));
    assert!(!store.replay("nope", 30_000).await.expect("replay none"));
    let e1 = store
        .due(30_000, 10)
        .await
        .expect("due")
        .into_iter()
        .find(|d| d.id == "e1")
        .expect("e1 back");
    assert_eq!(e1.attempts, 0);
    // Answers recorded in one batch: each pending one delivered; one settled already (dead
    // here) left as it was.
    store
        .enqueue(&[delivery("g1", &b.id, "100235")], 31_000)
        .await
        .expect("enqueue");
    store.dead("e2", 9, "HTTP 500", 31_500).await.expect("dead");
    store
        .delivered_all(&[
            ("e1".to_owned(), 32_000),
            ("g1".to_owned(), 32_000),
            ("e2".to_owned(), 32_000),
        ])
        .await
        .expect("delivered in a batch");
    let counts = store.queue_counts().await.expect("counts");
    assert_eq!((counts.pending, counts.delivered, counts.dead), (0, 3, 1));
    store.replay("e2", 33_000).await.expect("replay");
    store
        .enqueue(&[delivery("g2", &b.id, "100235")], 33_000)
        .await
        .expect("enqueue");
    drop(store);

    // Reopened, as after a restart: everything is there.
    let again = Store::open(url).await.expect("reopen");
    assert_eq!(again.list("bank-b", None, 10).await.expect("list").len(), 3);
    assert_eq!(again.queue_counts().await.expect("counts").pending, 2);
    assert_eq!(
        again.refresh_requests(10).await.expect("requests"),
        ["100235"]
    );
    assert!(again
        .observe("100234", &[bill("B1", "paid", "12.50")], 40_000)
        .await
        .expect("same")
        .is_empty());

    // Finished deliveries leave the outbox by state and age, oldest first, a batch at a time;
    // pending ones never do.
    assert_eq!(
        again.prune("pending", i64::MAX, 100).await.expect("prune"),
        0
    );
    assert_eq!(
        again.prune("delivered", 26_000, 100).await.expect("prune"),
        1
    );
    assert_eq!(
        again.prune("delivered", i64::MAX, 1).await.expect("prune"),
        1
    );
    assert_eq!(
        again
            .prune("delivered", i64::MAX, 100)
            .await
            .expect("prune"),
        1
    );
    assert_eq!(
        again
            .prune("delivered", i64::MAX, 100)
            .await
            .expect("prune"),
        0
    );
    let counts = again.queue_counts().await.expect("counts");
    assert_eq!((counts.pending, counts.delivered, counts.dead), (2, 0, 0));
}

/// Ten subscribes racing for the last five places: exactly five get one.
async fn races(url: &str) {
    let store = Store::open(url).await.expect("open");
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .subscribe("racer", &format!("acct-{i}"), "https://h/", 5, 1_000 + i)
                    .await
            })
        })
        .collect();
    let mut created = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.expect("task").expect("subscribe") {
            Subscribed::Created(_) => created += 1,
            Subscribed::LimitReached { max: 5 } => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((created, refused), (5, 5));
    assert_eq!(store.list("racer", None, 100).await.expect("list").len(), 5);

    // Two observers of one change: one change between them.
    let due = [bill("R1", "due", "1.00")];
    let (x, y) = tokio::join!(
        store.observe("race-acct", &due, 2_000),
        store.observe("race-acct", &due, 2_000)
    );
    assert_eq!(x.expect("x").len() + y.expect("y").len(), 1);
    let paid = [bill("R1", "paid", "1.00")];
    let (x, y) = tokio::join!(
        store.observe("race-acct", &paid, 3_000),
        store.observe("race-acct", &paid, 3_000)
    );
    assert_eq!(x.expect("x").len() + y.expect("y").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_behaves() {
    let dir = TempDir::new("sqlite");
    // The file's directory exists; the file does not, and is made.
    behaves(&format!("sqlite://{}", dir.0.join("billgate.db").display())).await;
    races(&format!("sqlite://{}", dir.0.join("races.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_behaves() {
    let server = Postgres::start("store");
    behaves(&server.url()).await;
    races(&server.url()).await;
}

#[tokio::test]
async fn a_bad_url_is_said() {
    let error = Store::open("mysql://x/y").await.expect_err("refused");
    assert!(
        error.to_string().contains("sqlite:// or postgres://"),
        "{error}"
    );
}
