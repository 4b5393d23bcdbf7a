//! Bills that change: new bills issued (by hand through `POST /_biller/bills/{account}/new`,
//! or every `new_bill_every` to the accounts the biller knows, in turn), bills paid by a
//! payment, and each change pushed as a bill event to the gateway's `POST /v1/bill-events`
//! with the biller's token.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::mpsc;

use super::bills::{self, Bill};

/// Accounts whose bills the biller keeps track of; past it, new accounts keep their first bill.
const MAX_ACCOUNTS: usize = 100_000;
/// Events waiting to be pushed; past it, events are counted as failed and dropped.
const QUEUE: usize = 10_000;
/// Tries per event.
const TRIES: u32 = 4;

/// Where and how the biller pushes its bill events.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// The gateway's `POST /v1/bill-events` URL (http://).
    pub url: String,
    /// The bearer token the gateway knows the biller by.
    pub token: String,
}

/// One account's bills as the biller keeps them.
#[derive(Debug, Clone, Copy, Default)]
struct Account {
    /// Bills issued after the first.
    issue: u32,
    paid: bool,
}

/// A bill event as pushed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BillEvent {
    pub account: String,
    pub bill_id: String,
    pub status: String,
    pub amount_due: String,
    pub due_date: String,
}

/// The accounts the biller knows, their bills, and the pusher's queue.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Bills change on their own (pushed, or issued on a clock): payments mark them paid and
    /// every account asked about is known. Otherwise bills stay as they are unless issued by
    /// hand, so answers do not depend on what was paid before.
    live: bool,
    accounts: Mutex<Known>,
    queue: Option<mpsc::Sender<BillEvent>>,
    pub pushed: Arc<AtomicU64>,
    pub push_failures: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Known {
    by_account: HashMap<String, Account>,
    /// In the order first seen, for issuing new bills in turn.
    order: VecDeque<String>,
}

impl Ledger {
    /// A ledger that pushes to `push` (from a task started here: call within a runtime).
    pub(super) fn new(push: Option<PushOptions>, live: bool) -> Ledger {
        let live = live || push.is_some();
        let pushed = Arc::new(AtomicU64::new(0));
        let push_failures = Arc::new(AtomicU64::new(0));
        let queue = push.map(|options| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(send(
                options,
                rx,
                Arc::clone(&pushed),
                Arc::clone(&push_failures),
            ));
            tx
        });
        Ledger {
            live,
            accounts: Mutex::new(Known::default()),
            queue,
            pushed,
            push_failures,
        }
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bill `account` (valid) has now; the account becomes known.
    pub(super) fn bill(&self, account: &str, biller: &str) -> Bill {
        let state = {
            let mut known = self.known();
            if !known.by_account.contains_key(account) && known.by_account.len() < MAX_ACCOUNTS {
                known
                    .by_account
                    .insert(account.to_owned(), Account::default());
                known.order.push_back(account.to_owned());
            }
            known.by_account.get(account).copied().unwrap_or_default()
        };
        bills::bill_issued(account, biller, state.issue, state.paid)
    }

    /// A payment for `account` (and `bill_id`, when it names one): its due bill is paid, and
    /// that is pushed.
    pub(super) fn paid(&self, account: &str, bill_id: Option<&str>, biller: &str) {
        if !self.live {
            return;
        }
        let current = self.bill(account, biller);
        let Bill::Due {
            bill_id: ref id,
            status: "due",
            ..
        } = current
        else {
            return;
        };
        if bill_id.is_some_and(|named| named != id) {
            return;
        }
        {
            let mut known = self.known();
            if let Some(state) = known.by_account.get_mut(account) {
                state.paid = true;
            } else {
                return;
            }
        }
        self.push(self.bill(account, biller));
    }

    /// Issues `account` a new bill (due) and pushes it.
    pub(super) fn issue(&self, account: &str, biller: &str) -> Bill {
        {
            let mut known = self.known();
            known.learn(account);
            if let Some(state) = known.by_account.get_mut(account) {
                state.issue = state.issue.saturating_add(1);
                state.paid = false;
            }
        }
        let bill = self.bill(account, biller);
        self.push(bill.clone());
        bill
    }

    /// Issues the next known account, in turn, a new bill.
    pub(super) fn issue_next(&self, biller: &str) {
        let next = {
            let mut known = self.known();
            let next = known.order.pop_front();
            if let Some(account) = &next {
                known.order.push_back(account.clone());
            }
            next
        };
        if let Some(account) = next {
            self.issue(&account, biller);
        }
    }

    fn push(&self, bill: Bill) {
        let (Some(queue), Some(event)) = (&self.queue, event_of(&bill)) else {
            return;
        };
        if queue.try_send(event).is_err() {
            self.push_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Known {
    /// Knows `account` from now on (while there is room).
    fn learn(&mut self, account: &str) {
        if !self.by_account.contains_key(account) && self.by_account.len() < MAX_ACCOUNTS {
            self.by_account
                .insert(account.to_owned(), Account::default());
            self.order.push_back(account.to_owned());
        }
    }
}

fn event_of(bill: &Bill) -> Option<BillEvent> {
    match bill {
        Bill::Due {
            account,
            bill_id,
            amount_due,
            due_date,
            status,
            ..
        } => Some(BillEvent {
            account: account.clone(),
            bill_id: bill_id.clone(),
            status: (*status).to_owned(),
            amount_due: amount_due.value.clone(),
            due_date: (*due_date).to_owned(),
        }),
        Bill::NoBillDue { .. } => None,
    }
}

/// Pushes events one after another, each tried up to [`TRIES`] times (100 ms, 200 ms, 400 ms
/// apart), until the ledger is dropped.
async fn send(
    options: PushOptions,
    mut events: mpsc::Receiver<BillEvent>,
    pushed: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let authorization = format!("Bearer {}", options.token);
    while let Some(event) = events.recv().await {
        let body = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
        let mut delivered = false;
        for attempt in 0..TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << (attempt - 1))).await;
            }
            let request = Request::builder()
                .method(Method::POST)
                .uri(&options.url)
                .header("content-type", "application/json")
                .header("authorization", &authorization)
                .body(Full::new(body.clone()));
            let Ok(request) = request else { break };
            let answered =
                tokio::time::timeout(Duration::from_secs(5), client.request(request)).await;
            if let Ok(Ok(response)) = answered {
                if response.status().is_success() {
                    delivered = true;
                    break;
                }
            }
        }
        if delivered {
            pushed.fetch_add(1, Ordering::Relaxed);
        } else {
            failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(account = %event.account, bill = %event.bill_id, "stand-in biller: a bill event could not be pushed");
        }
    }
}
