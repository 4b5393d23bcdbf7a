//! The deliverer: takes due deliveries from the store's outbox, signs each with its partner's
//! secret and POSTs it to its callback; a 2xx is delivered, anything else is tried again with
//! exponential backoff and jitter until `[subscriptions] delivery_horizon`, then dead (listed
//! at `/admin/deliveries`). At least once: a delivery is marked only after its answer.
//!
//! Each delivery runs in a task of its own, under a limit per callback host (`per_host`) and
//! one for the whole gateway, so a partner's slow or dead endpoint holds only its own
//! deliveries; the loop that takes from the outbox never waits for one. A subscription's
//! events go one at a time, in order (the outbox hands out only the oldest pending of each).
//! Deliveries answered 2xx are recorded together, as many as came in while the last batch
//! was being written, in one transaction: one commit per batch, not per webhook. Finished
//! deliveries leave the outbox after `keep_delivered` (delivered) or `keep_dead` (dead).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::Subscriptions;
use billgate_subs::store::{Delivery, Store, StoreError};
use billgate_subs::webhook::next_attempt;

/// Deliveries in flight at once, all callbacks together.
const MAX_IN_FLIGHT: usize = 256;

/// Due deliveries read from the outbox at a time.
const BATCH: u32 = 500;

/// How often the outbox is looked at when nothing wakes the deliverer: the soonest a retry
/// can be late by.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// The longest wait between two tries of one delivery.
const MAX_BACKOFF_MS: i64 = 3_600_000;

/// The most of a receiver's answer read (and dropped).
const MAX_ANSWER: usize = 4096;

/// The most deliveries recorded delivered in one transaction.
const SETTLE_AT_ONCE: usize = 256;

/// How often finished deliveries past `keep_delivered` / `keep_dead` are removed (more often
/// when either is shorter), and how many at a time.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_AT_ONCE: u32 = 1000;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What the deliverer shares with its delivery tasks.
struct Deliverer {
    subscriptions: Arc<Subscriptions>,
    client: HttpsClient,
    /// What is in flight and what was just settled, under one lock.
    state: Mutex<InFlight>,
    /// One limit per callback host (`host:port`).
    hosts: DashMap<String, Arc<Semaphore>>,
    all: Arc<Semaphore>,
    /// To the task that records deliveries answered 2xx.
    delivered: mpsc::Sender<Delivered>,
}

/// A delivery answered 2xx, to be recorded; `recorded` says whether it was.
struct Delivered {
    id: String,
    at_ms: i64,
    recorded: oneshot::Sender<Result<(), String>>,
}

/// The deliveries in flight, and those settled since the outbox was last read: a read that
/// began before one was recorded may still hand it out, and it is not sent again.
#[derive(Default)]
struct InFlight {
    /// Subscriptions with a delivery in flight.
    busy: HashSet<String>,
    settled: HashSet<String>,
}

/// Delivers until `stop` turns true; deliveries in flight then finish on their own.
pub async fn run(subscriptions: Arc<Subscriptions>, mut stop: watch::Receiver<bool>) {
    // hyper-rustls offers the ALPN protocols itself (HTTP/1.1 only here).
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(crate::biller_tls::system_roots())
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(8)
        .build(connector);
    let (delivered, answered) = mpsc::channel(MAX_IN_FLIGHT);
    tokio::spawn(record_delivered(subscriptions.store.clone(), answered));
    let deliverer = Arc::new(Deliverer {
        subscriptions,
        client,
        state: Mutex::new(InFlight::default()),
        hosts: DashMap::new(),
        all: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        delivered,
    });
    let mut next_prune = tokio::time::Instant::now();
    loop {
        let subscriptions = &deliverer.subscriptions;
        if tokio::time::Instant::now() >= next_prune {
            prune(subscriptions).await;
            let settings = subscriptions.settings();
            next_prune = tokio::time::Instant::now()
                + PRUNE_EVERY
                    .min(settings.keep_delivered)
                    .min(settings.keep_dead)
                    .max(LOOK_EVERY);
        }
        lock(&deliverer.state).settled.clear();
        match subscriptions.store.due(subscriptions.now_ms(), BATCH).await {
            Ok(due) => {
                let mut state = lock(&deliverer.state);
                for delivery in due {
                    if state.settled.contains(&delivery.id) {
                        continue;
                    }
                    if state.busy.insert(delivery.subscription_id.clone()) {
                        tokio::spawn(Arc::clone(&deliverer).deliver(delivery));
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "the deliverer could not read the outbox"),
        }
        tokio::select! {
            _ = subscriptions.wake.notified() => {}
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

impl Deliverer {
    /// One try of one delivery, within the limits, and what it leads to.
    async fn deliver(self: Arc<Self>, delivery: Delivery) {
        let host = host_of(&delivery.callback);
        let per_host = self.subscriptions.settings().per_host as usize;
        let limit = self
            .hosts
            .entry(host)
            .or_insert_with(|| Arc::new(Semaphore::new(per_host.max(1))))
            .clone();
        let outcome = match (
            limit.acquire_owned().await,
            Arc::clone(&self.all).acquire_owned().await,
        ) {
            (Ok(_host), Ok(_all)) => self.attempt(&delivery).await,
            _ => Err("the deliverer is stopping".to_owned()),
        };
        self.settle(&delivery, outcome).await;
        {
            let mut state = lock(&self.state);
            state.settled.insert(delivery.id.clone());
            state.busy.remove(&delivery.subscription_id);
        }
        // The subscription's next event may go now.
        self.subscriptions.wake.notify_one();
    }

    /// Sends the delivery once: `Ok` on a 2xx, else what went wrong (`410` first when the
    /// receiver said the subscription is gone).
    async fn attempt(&self, delivery: &Delivery) -> Result<(), String> {
        let subscriptions = &self.subscriptions;
        let Some(secret) = subscriptions.secret(&delivery.partner) else {
            return Err(format!(
                "no signing secret for partner {}",
                delivery.partner
            ));
        };
        let timestamp = subscriptions.now_ms() / 1000;
        let body = Bytes::from(delivery.body.clone());
        let signature = secret.sign(&delivery.id, timestamp, &body);
        let request = Request::builder()
            .method(Method::POST)
            .uri(&delivery.callback)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("billgate-webhook/", env!("CARGO_PKG_VERSION"))),
            )
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(body))
            .map_err(|e| format!("the callback cannot be called: {e}"))?;
        let timeout = subscriptions.settings().attempt_timeout;
        let sent = async {
            let response = self.client.request(request).await.map_err(|e| {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    text.push_str(": ");
                    text.push_str(&cause.to_string());
                    source = cause.source();
                }
                text
            })?;
            let status = response.status();
            // Read a little of the answer so the connection can be reused; the rest is dropped.
            let _ = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await;
            Ok::<_, String>(status)
        };
        match tokio::time::timeout(timeout, sent).await {
            Ok(Ok(status)) if status.is_success() => Ok(()),
            Ok(Ok(status)) => Err(format!("HTTP {}", status.as_u16())),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        }
    }

    /// Records the try: delivered, tried again later, or dead.
    async fn settle(&self, delivery: &Delivery, outcome: Result<(), String>) {
        let subscriptions = &self.subscriptions;
        let store = &subscriptions.store;
        let now = subscriptions.now_ms();
        let recorded = match outcome {
            Ok(()) => {
                subscriptions
                    .metrics
                    .delivered((now - delivery.created_ms) as f64 / 1000.0);
                let (recorded, outcome) = oneshot::channel();
                let sent = self
                    .delivered
                    .send(Delivered {
                        id: delivery.id.clone(),
                        at_ms: now,
                        recorded,
                    })
                    .await;
                match (sent, outcome.await) {
                    (Ok(()), Ok(result)) => result,
                    _ => Err("the deliverer is stopping".to_owned()),
                }
            }
            Err(error) => {
                let attempts = delivery.attempts.saturating_add(1);
                let settings = subscriptions.settings();
                let horizon =
                    i64::try_from(settings.delivery_horizon.as_millis()).unwrap_or(i64::MAX);
                let base = i64::try_from(settings.first_retry.as_millis()).unwrap_or(1000);
                // A receiver that answers 410 Gone says the subscription is over on its side.
                let next = if error == "HTTP 410" {
                    None
                } else {
                    next_attempt(
                        attempts,
                        delivery.created_ms,
                        now,
                        base,
                        MAX_BACKOFF_MS,
                        horizon,
                        random(),
                    )
                };
                match next {
                    Some(at) => {
                        subscriptions.metrics.retried();
                        tracing::debug!(delivery = %delivery.id, attempts, %error, "webhook delivery failed; tried again later");
                        store
                            .retry(&delivery.id, attempts, at, &error)
                            .await
                            .map_err(|e| e.to_string())
                    }
                    None => {
                        subscriptions.metrics.dead();
                        tracing::warn!(delivery = %delivery.id, partner = %delivery.partner, callback = %delivery.callback, attempts, %error, "webhook delivery given up: a dead letter (GET /admin/deliveries)");
                        store
                            .dead(&delivery.id, attempts, &error, now)
                            .await
                            .map_err(|e| e.to_string())
                    }
                }
            }
        };
        if let Err(error) = recorded {
            // Not recorded: the delivery stays due and is tried again (at least once).
            tracing::warn!(delivery = %delivery.id, %error, "a delivery's outcome could not be recorded");
        }
    }
}

/// Removes finished deliveries past their keeping: delivered ones after `keep_delivered`, dead
/// letters after `keep_dead`, a thousand at a time until none is left.
async fn prune(subscriptions: &Subscriptions) {
    let settings = subscriptions.settings();
    let now = subscriptions.now_ms();
    for (state, keep) in [
        ("delivered", settings.keep_delivered),
        ("dead", settings.keep_dead),
    ] {
        let before = now.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        loop {
            match subscriptions
                .store
                .prune(state, before, PRUNE_AT_ONCE)
                .await
            {
                Ok(n) => {
                    subscriptions.metrics.pruned(state, n);
                    if n < u64::from(PRUNE_AT_ONCE) {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, state, "finished deliveries could not be removed");
                    break;
                }
            }
        }
    }
}

/// Records deliveries answered 2xx, each batch (what arrived while the last was written, up
/// to [`SETTLE_AT_ONCE`]) in one transaction, until every sender is gone.
async fn record_delivered(store: Store, mut answered: mpsc::Receiver<Delivered>) {
    let mut batch = Vec::with_capacity(SETTLE_AT_ONCE);
    while answered.recv_many(&mut batch, SETTLE_AT_ONCE).await > 0 {
        let done: Vec<(String, i64)> = batch.iter().map(|d| (d.id.clone(), d.at_ms)).collect();
        let result: Result<(), StoreError> = store.delivered_all(&done).await;
        let result = result.map_err(|e| e.to_string());
        for delivered in batch.drain(..) {
            let _ = delivered.recorded.send(result.clone());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `host:port` of a callback URL, for its limit.
fn host_of(callback: &str) -> String {
    match callback.parse::<http::Uri>() {
        Ok(uri) => {
            let port = uri
                .port_u16()
                .unwrap_or(if uri.scheme_str() == Some("https") {
                    443
                } else {
                    80
                });
            format!("{}:{port}", uri.host().unwrap_or_default())
        }
        Err(_) => callback.to_owned(),
    }
}

/// A number in [0, 1) for the jitter.
fn random() -> f64 {
    match getrandom::u64() {
        Ok(n) => (n >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}
