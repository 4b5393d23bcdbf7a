//! The partner-facing HTTP server and the pooled connections to the biller: the only place that
//! serves partner traffic. Admission, metrics and answers are used from here, never the reverse.
//! The background work beside it (gauges, sweeps, probes) is the gateway's (`gateway.rs`).

mod accept;
mod access;
mod answer;
mod body;
mod cached;
mod connect;
mod handler;
mod headers;
mod heads;
mod lengths;
mod pool;
mod server;
mod snapshot;
mod sniff;
mod upstream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

pub use accept::Acceptor;
pub use answer::{insert_ratelimit, Refusal};
pub use body::ProxyBody;
pub use handler::read_body;
pub use headers::strip_hop_by_hop;
pub use pool::{is_gateway_exhausted, BillerPool, PoolError, PooledBody, Target};
pub use server::{serve, Worker, Workers};
pub use snapshot::{PartnerRuntime, Snapshot, Upstream};

use crate::admission::Suspensions;
use crate::biller_tls::BillerTls;
use crate::cache::{AnswerCache, CacheSettings};
use crate::clock::Clock;
use crate::coalesce::Coalescer;
use crate::config::Config;
use crate::fleet::Fleet;
use crate::metrics::Metrics;

/// State shared by every connection and the admin listener.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    metrics: Metrics,
    clock: Clock,
    /// Suspended partners, kept across reloads.
    suspensions: Suspensions,
    /// Inquiry answers by (route, scope, account). Its ceilings are read at start.
    cache: AnswerCache,
    /// Inquiries in flight to the biller, by cache key.
    coalescer: Coalescer<cached::Fetched>,
    /// Whether the biller accepted a connection at the last probe.
    biller_reachable: AtomicBool,
    /// The partner listener's TLS, swapped by reloads: each handshake reads it once.
    tls: arc_swap::ArcSwapOption<crate::tls::ListenerTls>,
    /// This instance's part in a fleet, when `[fleet]` was set at start.
    fleet: Option<Arc<Fleet>>,
    /// The subscriptions' store and workers, once started (`[subscriptions]` set at start).
    subscriptions: std::sync::OnceLock<Arc<crate::subscriptions::Subscriptions>>,
}

impl Shared {
    /// Builds the shared state for `config` (and the TLS to the biller loaded for it): metrics,
    /// the cache and the first snapshot.
    pub fn new(
        config: Config,
        biller_tls: Option<Arc<BillerTls>>,
        clock: Clock,
        suspensions: Suspensions,
    ) -> anyhow::Result<Shared> {
        let metrics = Metrics::new()?;
        let fleet = match &config.fleet {
            Some(settings) => Some(Arc::new(Fleet::new(
                settings,
                metrics.registry(),
                &config.fleet_sha256,
            )?)),
            None => None,
        };
        let cache = AnswerCache::new(
            CacheSettings {
                max_entries: config.cache.max_entries,
                max_bytes: config.cache.max_bytes,
                ..CacheSettings::default()
            },
            clock.clone(),
        );
        let coalescer = Coalescer::for_cache(&cache);
        let snapshot = Snapshot::build(
            config,
            biller_tls,
            None,
            &clock,
            &metrics,
            &suspensions,
            fleet.as_ref().map(|f| f.state()),
        );
        Ok(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            clock,
            suspensions,
            cache,
            coalescer,
            biller_reachable: AtomicBool::new(false),
            tls: arc_swap::ArcSwapOption::empty(),
            fleet,
            subscriptions: std::sync::OnceLock::new(),
        })
    }

    /// This instance's part in a fleet: `None` for a gateway that runs alone.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// The subscriptions' store and workers: `None` without `[subscriptions]`, or before
    /// they started.
    pub fn subscriptions(&self) -> Option<&Arc<crate::subscriptions::Subscriptions>> {
        self.subscriptions.get()
    }

    /// Hands the started subscriptions to every request from now on (once).
    pub fn set_subscriptions(&self, subscriptions: Arc<crate::subscriptions::Subscriptions>) {
        let _ = self.subscriptions.set(subscriptions);
    }

    /// The gateway's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The running snapshot, for a look (a reload may swap it meanwhile).
    pub fn snapshot(&self) -> Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The running snapshot, to hold for as long as a piece of work needs it whole.
    pub fn snapshot_full(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Builds a snapshot for `config` (and the TLS to the biller loaded for it) carrying over
    /// limiter state, and swaps it in.
    pub fn install(&self, config: Config, biller_tls: Option<Arc<BillerTls>>) {
        let previous = self.snapshot.load_full();
        let next = Snapshot::build(
            config,
            biller_tls,
            Some(&previous),
            &self.clock,
            &self.metrics,
            &self.suspensions,
            self.fleet.as_ref().map(|f| f.state()),
        );
        self.snapshot.store(Arc::new(next));
    }

    /// Builds the running configuration's snapshot again, carrying every state over as a
    /// reload of the same file does: what it is built for outside the file (the fleet's
    /// instances alive) has changed.
    pub fn rebuild(&self) {
        let running = self.snapshot.load_full();
        self.install(Config::clone(&running.config), running.upstream.tls.clone());
    }

    /// The partner listener's TLS now: `None` for plain HTTP.
    pub fn tls(&self) -> Option<Arc<crate::tls::ListenerTls>> {
        self.tls.load_full()
    }

    /// Puts `tls` in place for the handshakes from now on.
    pub fn set_tls(&self, tls: Option<crate::tls::ListenerTls>) {
        self.tls.store(tls.map(Arc::new));
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn suspensions(&self) -> &Suspensions {
        &self.suspensions
    }

    pub fn cache(&self) -> &AnswerCache {
        &self.cache
    }

    fn coalescer(&self) -> &Coalescer<cached::Fetched> {
        &self.coalescer
    }

    /// Whether the biller accepted a connection at the last probe.
    pub fn biller_reachable(&self) -> bool {
        self.biller_reachable.load(Ordering::Relaxed)
    }

    /// Records a probe's finding; returns the one before.
    pub fn set_biller_reachable(&self, reachable: bool) -> bool {
        self.biller_reachable.swap(reachable, Ordering::Relaxed)
    }
}
