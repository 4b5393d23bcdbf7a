//! The partner-facing HTTP server and the pooled client to the biller: the only place that
//! serves partner traffic. Admission, metrics and answers are used from here, never the reverse.

mod accept;
mod access;
mod answer;
mod body;
mod cached;
mod deadlines;
mod handler;
mod headers;
mod heads;
mod pool;
mod server;
mod snapshot;
mod upstream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::Instant;

pub use accept::Acceptor;
pub use answer::{insert_ratelimit, Refusal};
pub use body::ProxyBody;
pub use pool::{BillerPool, PoolError, PooledBody, Target};
pub use server::{serve, Worker, Workers};
pub use snapshot::{PartnerRuntime, Snapshot, Upstream};

use crate::admission::Suspensions;
use crate::breaker::{outcome_of_status, Admission, BreakerState, CallOutcome};
use crate::cache::{AnswerCache, CacheSettings};
use crate::clock::Clock;
use crate::coalesce::Coalescer;
use crate::config::Config;
use crate::metrics::Metrics;

/// A pool of connections to the biller.
pub type BillerClient = Arc<BillerPool>;

/// State shared by every connection and the admin listener.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    /// The client for the gateway's own calls (breaker probes). Partner requests go out on
    /// their worker's client ([`Shared::biller_client`]).
    pub client: BillerClient,
    pub clock: Clock,
    /// Suspended partners, kept across reloads.
    pub suspensions: Suspensions,
    /// Inquiry answers by (route, scope, account). Its ceilings are read at start.
    pub cache: AnswerCache,
    /// Inquiries in flight to the biller, by cache key.
    pub coalescer: Coalescer<cached::Fetched>,
    /// Whether the biller accepted a connection at the last probe.
    pub biller_reachable: AtomicBool,
}

impl Shared {
    /// Builds the shared state for `config`: metrics, the first snapshot and the biller client.
    pub fn new(
        config: Config,
        clock: Clock,
        suspensions: Suspensions,
    ) -> Result<Shared, prometheus::Error> {
        let metrics = Metrics::new()?;
        let client = biller_client(&config);
        let cache = AnswerCache::new(
            CacheSettings {
                max_entries: config.cache.max_entries,
                max_bytes: config.cache.max_bytes,
                ..CacheSettings::default()
            },
            clock.clone(),
        );
        let coalescer = Coalescer::for_cache(&cache);
        let snapshot = Snapshot::build(config, None, &clock, &metrics, &suspensions);
        Ok(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            client,
            clock,
            suspensions,
            cache,
            coalescer,
            biller_reachable: AtomicBool::new(false),
        })
    }

    /// A new pool of connections to the biller. It connects where the running configuration
    /// says at each request, so a reload that moves the biller needs no new pool.
    pub fn biller_client(&self) -> BillerClient {
        biller_client(&self.snapshot.load().config)
    }

    /// Builds a snapshot for `config` carrying over limiter state, and swaps it in.
    pub fn install(&self, config: Config) {
        let previous = self.snapshot.load_full();
        let next = Snapshot::build(
            config,
            Some(&previous),
            &self.clock,
            &self.metrics,
            &self.suspensions,
        );
        self.snapshot.store(Arc::new(next));
    }

    /// Copies the breaker's and the adaptive limit's state into their metrics.
    pub fn refresh_gauges(&self) {
        let snapshot = self.snapshot.load();
        let protection = snapshot.gate.protection();
        for (name, breaker) in [
            ("inquiry", &protection.breaker),
            ("payment", &protection.payment_breaker),
        ] {
            self.metrics
                .breaker_state
                .with_label_values(&[name])
                .set(breaker.state().as_gauge());
            for from in BreakerState::ALL {
                for to in BreakerState::ALL {
                    let total = if from == to {
                        0
                    } else {
                        breaker.transitions_between(from, to)
                    };
                    if total > 0 {
                        self.metrics
                            .breaker_transitions(name, from.as_str(), to.as_str(), total);
                    }
                }
            }
        }
        self.metrics.cache(&self.cache.stats());
        self.metrics
            .concurrency_limit
            .set(i64::from(protection.concurrency.limit()));
        // Every call at the biller holds an in-flight slot: the count is read, not kept twice.
        self.metrics
            .upstream_in_flight
            .set(i64::from(protection.concurrency.in_flight()));
    }

    /// Evicts idle per-account state and stale cache bookkeeping; refreshes the account gauges.
    pub fn sweep(&self) {
        let snapshot = self.snapshot.load();
        snapshot.gate.sweep_accounts();
        self.cache.sweep();
        for (gate, runtime) in snapshot.gate.partners().iter().zip(&snapshot.partners) {
            if let Some(accounts) = &gate.accounts {
                runtime
                    .metrics
                    .accounts_tracked
                    .set(i64::try_from(accounts.tracked()).unwrap_or(i64::MAX));
                let evicted = accounts.evicted();
                let counted = runtime.metrics.accounts_evicted.get();
                runtime
                    .metrics
                    .accounts_evicted
                    .inc_by(evicted.saturating_sub(counted));
            }
        }
    }

    /// Tries one TCP connection to the biller and records whether it was accepted.
    pub async fn probe_biller(&self) -> bool {
        let (target, timeout) = {
            let snapshot = self.snapshot.load();
            (
                snapshot.config.biller.url.host_port(),
                snapshot.config.biller.connect_timeout,
            )
        };
        let reachable =
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&target)).await {
                Ok(Ok(_)) => true,
                // The gateway had no socket to try with: that says nothing about the biller.
                Ok(Err(error)) if pool::is_gateway_exhausted(&error) => {
                    return self.biller_reachable.load(Ordering::Relaxed);
                }
                _ => false,
            };
        if reachable != self.biller_reachable.swap(reachable, Ordering::Relaxed) {
            tracing::info!(biller = %target, reachable, "biller reachability changed");
        }
        reachable
    }

    /// Sends half-open breakers a probe of the gateway's own (`GET` on the biller's base path):
    /// when only scheduled polls are flowing — which are never probes — a breaker would
    /// otherwise stay half-open for ever. Any answer below 500 counts as success.
    pub async fn probe_breakers(&self) {
        let snapshot = self.snapshot.load_full();
        let protection = snapshot.gate.protection();
        for breaker in [&protection.breaker, &protection.payment_breaker] {
            if breaker.state() != BreakerState::HalfOpen {
                continue;
            }
            let Admission::Probe(probe) = breaker.admit(true) else {
                continue;
            };
            let path = if snapshot.upstream.base_path.is_empty() {
                "/".to_owned()
            } else {
                snapshot.upstream.base_path.clone()
            };
            let Ok(uri) = http::Uri::try_from(path) else {
                continue;
            };
            let mut request = http::Request::new(http_body_util::Full::new(bytes::Bytes::new()));
            *request.uri_mut() = uri;
            request
                .headers_mut()
                .insert(http::header::HOST, snapshot.upstream.host.clone());
            let timeout = snapshot.config.biller.timeout;
            let outcome = match tokio::time::timeout(
                timeout,
                self.client
                    .send(snapshot.upstream.target(), request, Instant::now()),
            )
            .await
            {
                Ok(Ok(response)) => outcome_of_status(response.status().as_u16()),
                _ => CallOutcome::Failure,
            };
            tracing::info!(outcome = ?outcome, "gateway probe of a half-open breaker");
            probe.record(outcome);
        }
    }

    pub fn biller_reachable(&self) -> bool {
        self.biller_reachable.load(Ordering::Relaxed)
    }
}

/// Probes the biller with a TCP connect every `every`, recording whether it answered.
pub async fn probe_biller(
    shared: Arc<Shared>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        shared.probe_biller().await;
        shared.probe_breakers().await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Sweeps idle per-account state every `every`.
pub async fn sweep_accounts(
    shared: Arc<Shared>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => shared.sweep(),
            _ = shutdown.changed() => return,
        }
    }
}

/// A pool of connections to the biller for `config`, driven by the requests that use it.
fn biller_client(config: &Config) -> BillerClient {
    BillerPool::new(
        Duration::from_secs(30),
        usize::try_from(config.biller.max_in_flight).unwrap_or(128),
    )
}
