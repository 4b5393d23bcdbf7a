//! The open-loop load generator: each stream sends on a fixed schedule whatever the answers,
//! latency runs from the scheduled send time, and the number in flight is capped.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::histogram::LatencyHistogram;
use super::scenario::{Accounts, Phase, Stream, SETTLE};
use super::windows::BUCKET_MS;
use crate::config::Class;

/// What became of one request, as its sender saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// 2xx.
    Ok,
    /// 429, or 503 with the gateway's own problem type: refused without touching the biller.
    Rejected,
    /// Any other 5xx (the biller's, or the gateway's 502/504), a broken exchange or no answer
    /// within the request timeout.
    Failed,
    /// Any other status: a mistake in the scenario, counted so that it shows.
    Other,
}

/// `status` and `body` as a [`Reply`]. The gateway's problems carry a `urn:billgate:` type;
/// the stand-in's own 503s (overloaded, down) do not, so those count as failures.
pub(crate) fn classify(status: StatusCode, body: &[u8]) -> Reply {
    if status.is_success() {
        Reply::Ok
    } else if status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::SERVICE_UNAVAILABLE && from_gateway(body))
    {
        Reply::Rejected
    } else if status.is_server_error() {
        Reply::Failed
    } else {
        Reply::Other
    }
}

fn from_gateway(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("type")?
                .as_str()
                .map(|t| t.starts_with("urn:billgate:"))
        })
        .unwrap_or(false)
}

/// Where in the script a request was due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Due {
    pub phase: Phase,
    /// In the phase's first [`SETTLE`], while the gateway is still seeing the biller change.
    pub settling: bool,
}

/// One stream's counts in one phase.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    pub ok: u64,
    pub rejected: u64,
    pub failed: u64,
    pub other: u64,
    /// Due while `max_outstanding` were in flight, so not sent.
    pub unsent: u64,
    /// Of all these, the requests due in the phase's settling time ([`SETTLE`]): due (sent or
    /// not), and answered 2xx.
    pub settling_due: u64,
    pub settling_ok: u64,
    /// Latencies of every answered request (and of timeouts, at the timeout).
    pub latency: LatencyHistogram,
}

/// Everything the generator counts.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// Indexed `[phase × streams + stream]`.
    pub tallies: Vec<Tally>,
    streams: usize,
    /// Per 100 ms since the start, by completion time: answers that came from the biller (or
    /// stood for it: 502, 504, timeouts) and were good, and that were failures.
    pub forwarded_ok: Vec<u64>,
    pub forwarded_failed: Vec<u64>,
}

impl Recorder {
    fn new(streams: usize, buckets: usize) -> Self {
        Recorder {
            tallies: vec![Tally::default(); streams * Phase::ALL.len()],
            streams,
            forwarded_ok: vec![0; buckets],
            forwarded_failed: vec![0; buckets],
        }
    }

    /// The tally of `stream` in `phase`.
    pub fn tally(&self, phase: Phase, stream: usize) -> &Tally {
        &self.tallies[phase.index() * self.streams + stream]
    }

    fn tally_mut(&mut self, phase: Phase, stream: usize) -> &mut Tally {
        &mut self.tallies[phase.index() * self.streams + stream]
    }

    fn record(&mut self, due: Due, stream: usize, outcome: Reply, latency: Duration, at: Duration) {
        let tally = self.tally_mut(due.phase, stream);
        tally.latency.record(latency);
        if due.settling {
            tally.settling_due += 1;
            tally.settling_ok += u64::from(outcome == Reply::Ok);
        }
        match outcome {
            Reply::Ok => tally.ok += 1,
            Reply::Rejected => tally.rejected += 1,
            Reply::Failed => tally.failed += 1,
            Reply::Other => tally.other += 1,
        }
        let last = self.forwarded_ok.len().saturating_sub(1);
        let bucket = usize::try_from(at.as_millis() / u128::from(BUCKET_MS))
            .unwrap_or(usize::MAX)
            .min(last);
        match outcome {
            Reply::Ok => self.forwarded_ok[bucket] += 1,
            Reply::Failed => self.forwarded_failed[bucket] += 1,
            Reply::Rejected | Reply::Other => {}
        }
    }
}

/// The generator: where to send, when the phases run, and what it saw.
pub(crate) struct Traffic {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port` of each gateway instance, or of the biller when bypassing them.
    bases: Vec<String>,
    start: Instant,
    /// When each phase ends, from `start`.
    ends: [Duration; 4],
    permits: Arc<Semaphore>,
    max_outstanding: u32,
    timeout: Duration,
    seed: u64,
    recorder: Mutex<Recorder>,
}

impl Traffic {
    /// A generator sending to `targets`, each stream's requests dealt to them in turn (the k-th
    /// to `targets[k mod n]`), its phases starting at `start` and lasting `lengths`.
    pub(crate) fn new(
        targets: &[std::net::SocketAddr],
        start: Instant,
        lengths: [Duration; 4],
        streams: usize,
        options: &super::StormOptions,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .timer(TokioTimer::new())
            .build(connector);
        let mut ends = [Duration::ZERO; 4];
        let mut at = Duration::ZERO;
        for (end, length) in ends.iter_mut().zip(lengths) {
            at += length;
            *end = at;
        }
        // Room for answers arriving up to one timeout after the last send, and a little more.
        let tail = options.request_timeout + Duration::from_secs(2);
        let buckets = usize::try_from((at + tail).as_millis() / u128::from(BUCKET_MS))
            .unwrap_or(0)
            .max(1);
        Traffic {
            client,
            bases: targets.iter().map(|t| format!("http://{t}")).collect(),
            start,
            ends,
            permits: Arc::new(Semaphore::new(options.max_outstanding as usize)),
            max_outstanding: options.max_outstanding,
            timeout: options.request_timeout,
            seed: options.seed,
            recorder: Mutex::new(Recorder::new(streams, buckets)),
        }
    }

    /// Play every stream to the end of the last phase, then wait (up to one request timeout and
    /// a second) for the answers still due; returns what was seen.
    pub(crate) async fn run(self: Arc<Self>, streams: Vec<Stream>) -> Recorder {
        let drivers: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(index, stream)| tokio::spawn(Arc::clone(&self).drive(index, stream)))
            .collect();
        for driver in drivers {
            if let Err(error) = driver.await {
                tracing::warn!(%error, "storm: a stream's driver ended abnormally");
            }
        }
        let drain = self.timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(drain, self.permits.acquire_many(self.max_outstanding)).await;
        let streams = self.lock().streams;
        std::mem::replace(&mut *self.lock(), Recorder::new(streams, 1))
    }

    /// One stream: the k-th request is due at `start of its first phase + k / rate`.
    async fn drive(self: Arc<Self>, index: usize, stream: Stream) {
        if stream.per_sec.is_nan() || stream.per_sec <= 0.0 {
            return;
        }
        let begin = if stream.from == Phase::Calm {
            Duration::ZERO
        } else {
            self.ends[stream.from.index() - 1]
        };
        let end = self.ends[3];
        let count = ((end - begin).as_secs_f64() * stream.per_sec).ceil() as u64;
        for k in 0..count {
            let offset = begin + Duration::from_secs_f64(k as f64 / stream.per_sec);
            if offset >= end {
                break;
            }
            let at = self.start + offset;
            tokio::time::sleep_until(at).await;
            let due = self.due(offset);
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => {
                    let request = self.request(&stream, index, k);
                    tokio::spawn(Arc::clone(&self).send(index, due, at, request, permit));
                }
                Err(_) => {
                    let mut recorder = self.lock();
                    let tally = recorder.tally_mut(due.phase, index);
                    tally.unsent += 1;
                    tally.settling_due += u64::from(due.settling);
                }
            }
        }
    }

    /// The phase a request due at `offset` belongs to, and whether it falls in the phase's
    /// settling time.
    fn due(&self, offset: Duration) -> Due {
        let mut begin = Duration::ZERO;
        for (phase, end) in Phase::ALL.into_iter().zip(self.ends) {
            if offset < end {
                let settling = phase.settles() && offset - begin < SETTLE;
                return Due { phase, settling };
            }
            begin = end;
        }
        Due {
            phase: Phase::Recovery,
            settling: false,
        }
    }

    /// The k-th request of stream number `index`.
    fn request(&self, stream: &Stream, index: usize, k: u64) -> Option<Request<Full<Bytes>>> {
        let account = match stream.accounts {
            Accounts::Sequential { prefix } => format!("{prefix}{k:07}"),
            Accounts::Random { pool } => {
                let draw = splitmix64(self.seed ^ ((index as u64) << 48) ^ k);
                format!("ACC-{}", draw % u64::from(pool.max(1)))
            }
        };
        // Round-robin per request, as a load balancer in front of a fleet deals them.
        let base = match self.bases.len() {
            0 => return None,
            n => &self.bases[usize::try_from(k % n as u64).unwrap_or(0)],
        };
        let builder = Request::builder().header("x-api-key", stream.key.as_str());
        let request = match stream.class {
            Class::Payment => builder
                .method(Method::POST)
                .uri(format!("{base}/v1/payments"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!(
                    r#"{{"account":"{account}","amount":"12.34"}}"#
                )))),
            Class::InquiryUser | Class::InquiryScheduled => {
                let builder = builder
                    .method(Method::GET)
                    .uri(format!("{base}/v1/bills/{account}"));
                let builder = if stream.class == Class::InquiryUser {
                    builder.header("x-request-origin", "user")
                } else {
                    builder
                };
                builder.body(Full::new(Bytes::new()))
            }
        };
        request.ok()
    }

    async fn send(
        self: Arc<Self>,
        stream: usize,
        due: Due,
        at: Instant,
        request: Option<Request<Full<Bytes>>>,
        _permit: OwnedSemaphorePermit,
    ) {
        let exchange = async {
            let response = self.client.request(request?).await.ok()?;
            let status = response.status();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some(classify(status, &body))
        };
        let outcome = tokio::time::timeout(self.timeout, exchange)
            .await
            .ok()
            .flatten()
            .unwrap_or(Reply::Failed);
        let done = Instant::now();
        self.lock().record(
            due,
            stream,
            outcome,
            done.saturating_duration_since(at),
            done.saturating_duration_since(self.start),
        );
    }

    /// Only ever left consistent, so a poisoned lock is still good.
    fn lock(&self) -> MutexGuard<'_, Recorder> {
        self.recorder
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// SplitMix64: a fast, well-mixed, seedable sequence (no dependency needed for account picks).
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_told_apart_by_status_and_problem_type() {
        let gateway = br#"{"type":"urn:billgate:problem:biller_capacity","status":503}"#;
        let biller = br#"{"type":"/problems/biller-down","status":503}"#;
        assert_eq!(classify(StatusCode::OK, b"{}"), Reply::Ok);
        assert_eq!(classify(StatusCode::CREATED, b"{}"), Reply::Ok);
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, b""),
            Reply::Rejected
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, gateway),
            Reply::Rejected
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, biller),
            Reply::Failed
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, b"not json"),
            Reply::Failed
        );
        assert_eq!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, b""),
            Reply::Failed
        );
        assert_eq!(classify(StatusCode::BAD_GATEWAY, gateway), Reply::Failed);
        assert_eq!(classify(StatusCode::GATEWAY_TIMEOUT, b""), Reply::Failed);
        assert_eq!(classify(StatusCode::NOT_FOUND, b""), Reply::Other);
    }

    #[test]
    fn the_recorder_counts_by_phase_and_keeps_its_time_series_bounded() {
        let mut r = Recorder::new(2, 10);
        let ms = Duration::from_millis;
        let due = |phase, settling| Due { phase, settling };
        r.record(due(Phase::Storm, false), 1, Reply::Ok, ms(5), ms(250));
        r.record(due(Phase::Storm, false), 1, Reply::Failed, ms(7), ms(260));
        r.record(due(Phase::Storm, false), 1, Reply::Rejected, ms(1), ms(270));
        r.record(
            due(Phase::Calm, false),
            0,
            Reply::Ok,
            ms(5),
            Duration::from_secs(3600),
        );
        r.record(due(Phase::Recovery, true), 0, Reply::Ok, ms(5), ms(300));
        r.record(
            due(Phase::Recovery, true),
            0,
            Reply::Rejected,
            ms(1),
            ms(300),
        );
        r.record(due(Phase::Recovery, false), 0, Reply::Ok, ms(5), ms(300));
        let t = r.tally(Phase::Storm, 1);
        assert_eq!((t.ok, t.failed, t.rejected, t.latency.len()), (1, 1, 1, 3));
        assert_eq!((t.settling_due, t.settling_ok), (0, 0));
        let t = r.tally(Phase::Recovery, 0);
        assert_eq!(
            (t.ok, t.rejected, t.settling_due, t.settling_ok),
            (2, 1, 2, 1)
        );
        assert_eq!(r.tally(Phase::Storm, 0).latency.len(), 0);
        assert_eq!(r.forwarded_ok[2], 1);
        assert_eq!(r.forwarded_ok[3], 2);
        assert_eq!(r.forwarded_failed[2], 1);
        assert_eq!(r.forwarded_ok[9], 1, "late answers land in the last bucket");
        assert_eq!(r.forwarded_ok.len(), 10);
    }

    #[test]
    fn account_picks_are_spread_and_repeatable() {
        let picks: std::collections::HashSet<u64> =
            (0..10_000).map(|k| splitmix64(2014 ^ k) % 10_000).collect();
        assert!(picks.len() > 6_000, "{} distinct of 10000", picks.len());
        assert_eq!(splitmix64(7), splitmix64(7));
    }
}
