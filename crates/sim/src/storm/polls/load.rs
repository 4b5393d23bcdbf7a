//! The partners' polls, open-loop: a pacer thread deals the k-th request to partner k mod 3 at
//! `start + k / rate`, about a uniformly random account, and hands it to the runtime; latency
//! runs from that scheduled time. Answers are counted by [`super::answers`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::answers::{sort, Latencies, PollRecorder, Sorted};
use super::config::{key, PARTNERS};
use super::report::Counts;
use super::PollsOptions;
use crate::cache::CACHE_STATUS_HEADER;
use crate::storm::traffic::splitmix64;

/// Connections opened before the first poll.
const WARM_CONNECTIONS: usize = 32;

/// What the pacer counted: requests due and unsent per timeline slot and per partner, and the
/// distinct accounts sent.
#[derive(Debug, Default)]
struct Paced {
    due: Vec<u64>,
    unsent: Vec<u64>,
    partner_due: [u64; 3],
    partner_unsent: [u64; 3],
    distinct: u64,
}

/// The generator: where to send, when, and what it saw.
pub(crate) struct Load {
    client: Client<HttpConnector, Empty<Bytes>>,
    base: String,
    keys: [HeaderValue; 3],
    rate: f64,
    requests: u64,
    accounts: u32,
    seed: u64,
    step: Duration,
    permits: Arc<Semaphore>,
    max_outstanding: u32,
    timeout: Duration,
    recorder: Mutex<PollRecorder>,
    fetches: Vec<AtomicU32>,
}

impl Load {
    /// A generator polling the gateway at `target` as `options` say.
    ///
    /// # Errors
    /// A partner key that is not a valid header value (never, for the generated keys).
    pub(crate) fn new(
        target: std::net::SocketAddr,
        options: &PollsOptions,
    ) -> anyhow::Result<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(1024)
            .timer(TokioTimer::new())
            .build(connector);
        let [Ok(a), Ok(b), Ok(c)] = PARTNERS.map(|p| HeaderValue::from_str(&key(p))) else {
            anyhow::bail!("polls: a partner key is not a valid header value");
        };
        let slots = (options.duration.as_secs_f64() / options.step.as_secs_f64()).ceil() as usize;
        let recorder = PollRecorder {
            intervals: vec![Counts::default(); slots.max(1)],
            ..PollRecorder::default()
        };
        Ok(Load {
            client,
            base: format!("http://{target}"),
            keys: [a, b, c],
            rate: options.rate_per_sec(),
            requests: options.requests(),
            accounts: options.accounts.max(1),
            seed: options.seed,
            step: options.step,
            permits: Arc::new(Semaphore::new(options.max_outstanding as usize)),
            max_outstanding: options.max_outstanding,
            timeout: options.request_timeout,
            recorder: Mutex::new(recorder),
            fetches: (0..options.accounts).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    /// Opens [`WARM_CONNECTIONS`] connections to the gateway, so the first second of polls
    /// does not pay for a burst of connection set-ups: keyless requests, refused 401 before
    /// any quota, cache or biller is touched. Waits at most a second.
    pub(crate) async fn warm_up(&self) {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..WARM_CONNECTIONS {
            let client = self.client.clone();
            let request =
                Request::get(format!("{}/v1/bills/warm-up", self.base)).body(Empty::new());
            set.spawn(async move {
                let response = client.request(request.ok()?).await.ok()?;
                response.into_body().collect().await.ok()
            });
        }
        let all = async { while set.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(1), all).await;
    }

    /// Play the schedule from `start` to its end, then wait (up to one request timeout and a
    /// second) for the answers still due; returns what was seen.
    pub(crate) async fn run(self: Arc<Self>, start: Instant) -> PollRecorder {
        let handle = Handle::current();
        let pacer = Arc::clone(&self);
        let paced = tokio::task::spawn_blocking(move || pacer.pace(&handle, start)).await;
        if let Err(error) = &paced {
            tracing::warn!(%error, "polls: the pacer ended abnormally");
        }
        let drain = self.timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(drain, self.permits.acquire_many(self.max_outstanding)).await;
        let mut recorder = std::mem::take(&mut *self.lock());
        recorder.fetches = self
            .fetches
            .iter()
            .map(|f| f.load(Ordering::Relaxed))
            .collect();
        if let Ok(paced) = paced {
            for (i, counts) in recorder.intervals.iter_mut().enumerate() {
                counts.sent = paced.due.get(i).copied().unwrap_or(0);
                counts.unsent = paced.unsent.get(i).copied().unwrap_or(0);
            }
            for (partner, counts) in recorder.partners.iter_mut().enumerate() {
                counts.sent = paced.partner_due[partner];
                counts.unsent = paced.partner_unsent[partner];
            }
            recorder.distinct_accounts = paced.distinct;
        }
        recorder
    }

    /// The schedule, on a thread of its own: sleeps to each request's time, then spawns its
    /// exchange (or counts it unsent when `max_outstanding` are in flight).
    fn pace(self: Arc<Self>, handle: &Handle, start: Instant) -> Paced {
        let slots = self.lock().intervals.len().max(1);
        let mut paced = Paced {
            due: vec![0; slots],
            unsent: vec![0; slots],
            ..Paced::default()
        };
        let mut asked = vec![false; self.accounts as usize];
        for k in 0..self.requests {
            let offset = Duration::from_secs_f64(k as f64 / self.rate);
            let due = start + offset;
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            let partner = (k % 3) as usize;
            let account = (splitmix64(self.seed ^ k) % u64::from(self.accounts)) as u32;
            let slot = ((offset.as_secs_f64() / self.step.as_secs_f64()) as usize).min(slots - 1);
            paced.due[slot] += 1;
            paced.partner_due[partner] += 1;
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => {
                    if let Some(seen) = asked.get_mut(account as usize) {
                        paced.distinct += u64::from(!*seen);
                        *seen = true;
                    }
                    let exchange = Arc::clone(&self).send(partner, account, slot, due, permit);
                    handle.spawn(exchange);
                }
                Err(_) => {
                    paced.unsent[slot] += 1;
                    paced.partner_unsent[partner] += 1;
                }
            }
        }
        paced
    }

    async fn send(
        self: Arc<Self>,
        partner: usize,
        account: u32,
        slot: usize,
        due: Instant,
        _permit: OwnedSemaphorePermit,
    ) {
        let sent_at = Instant::now();
        let request = Request::get(format!("{}/v1/bills/ACC-{account}", self.base))
            .header("x-api-key", self.keys[partner].clone())
            .body(Empty::new());
        let exchange = async {
            let response = self.client.request(request.ok()?).await.ok()?;
            let status = response.status();
            let cache = response.headers().get(CACHE_STATUS_HEADER).cloned();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((status, cache, body))
        };
        let answer = tokio::time::timeout(self.timeout, exchange)
            .await
            .ok()
            .flatten();
        let done = Instant::now();
        let sorted = match &answer {
            Some((status, cache, body)) => {
                sort(*status, cache.as_ref().map(HeaderValue::as_bytes), body)
            }
            None => Sorted::Failed,
        };
        if sorted == Sorted::Miss {
            if let Some(f) = self.fetches.get(account as usize) {
                f.fetch_add(1, Ordering::Relaxed);
            }
        }
        let latency = Latencies {
            scheduled: done.saturating_duration_since(due),
            service: done.saturating_duration_since(sent_at),
            dispatch: sent_at.saturating_duration_since(due),
        };
        self.lock().record(partner, slot, sorted, latency);
    }

    /// Only ever left consistent, so a poisoned lock is still good.
    fn lock(&self) -> MutexGuard<'_, PollRecorder> {
        self.recorder
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
