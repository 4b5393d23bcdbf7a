//! The Prometheus registry and every metric billgate exports. Handles for each partner × class
//! are bound when a snapshot is built ([`Metrics::bind_partner`]), never looked up per request.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::admission::Reason;
use crate::config::Class;

/// What became of a request, the `outcome` label of `billgate_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded and the biller answered (whatever its status).
    Forwarded,
    /// Refused by the gateway without touching the biller.
    Rejected,
    /// Forwarded, but the biller could not be reached in time (502/504).
    Failed,
    /// Answered from the gateway's memory (a cache hit, or a coalesced inquiry).
    Cached,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Forwarded,
        Outcome::Rejected,
        Outcome::Failed,
        Outcome::Cached,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
            Outcome::Cached => "cached",
        }
    }
}

/// Why the gateway refused a request: an admission reason, or a proxy-level one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Admission(Reason),
    BodyTooLarge,
    BodyTimeout,
    BodyIncomplete,
    Malformed,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Admission(reason) => reason.as_str(),
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::BodyTimeout => "body_timeout",
            RejectReason::BodyIncomplete => "body_incomplete",
            RejectReason::Malformed => "malformed_request",
        }
    }

    fn index(self) -> usize {
        match self {
            RejectReason::Admission(reason) => reason.index(),
            RejectReason::BodyTooLarge => Reason::ALL.len(),
            RejectReason::BodyTimeout => Reason::ALL.len() + 1,
            RejectReason::BodyIncomplete => Reason::ALL.len() + 2,
            RejectReason::Malformed => Reason::ALL.len() + 3,
        }
    }

    fn all() -> impl Iterator<Item = RejectReason> {
        Reason::ALL.into_iter().map(RejectReason::Admission).chain([
            RejectReason::BodyTooLarge,
            RejectReason::BodyTimeout,
            RejectReason::BodyIncomplete,
            RejectReason::Malformed,
        ])
    }
}

/// Why a forwarded request failed, the `kind` label of `billgate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Timeout,
    /// The gateway had no socket to call with: not the biller's failure.
    NoSocket,
}

/// Handles bound for one partner (or for the unidentified) and one class (or none).
#[derive(Clone)]
pub struct ClassMetrics {
    requests: [IntCounter; 4],
    rejections: Vec<IntCounter>,
    shadow: Vec<IntCounter>,
}

impl ClassMetrics {
    #[inline]
    pub fn outcome(&self, outcome: Outcome) {
        self.requests[outcome as usize].inc();
    }

    /// Requests counted with `outcome` so far.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.requests[outcome as usize].get()
    }

    #[inline]
    pub fn rejected(&self, reason: RejectReason) {
        self.requests[Outcome::Rejected as usize].inc();
        self.rejections[reason.index()].inc();
    }

    /// Refusals so far by reason (the `reason` label), those with none left out.
    pub fn refusals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        RejectReason::all()
            .map(|r| (r.as_str(), self.rejections[r.index()].get()))
            .filter(|(_, n)| *n > 0)
    }

    /// A shadow-mode partner's request that enforcement would have refused.
    #[inline]
    pub fn shadow_rejected(&self, reason: Reason) {
        self.shadow[reason.index()].inc();
    }
}

/// One partner's handles: one set per class, plus one for requests matching no route.
#[derive(Clone)]
pub struct PartnerMetrics {
    pub classes: [ClassMetrics; 3],
    pub unrouted: ClassMetrics,
    pub accounts_tracked: IntGauge,
    pub accounts_evicted: IntCounter,
}

impl PartnerMetrics {
    #[inline]
    pub fn class(&self, class: Class) -> &ClassMetrics {
        &self.classes[class.index()]
    }
}

/// The registry and its metric families.
pub struct Metrics {
    registry: Registry,
    families: Families,
    accounts_tracked: IntGaugeVec,
    accounts_evicted: IntCounterVec,
    upstream_duration: [Histogram; 3],
    pub upstream_in_flight: IntGauge,
    upstream_errors: [IntCounter; 3],
    config_info: IntGaugeVec,
    config_reloads: IntCounterVec,
    /// By breaker (`inquiry`, `payment`): 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    /// The adaptive in-flight limit now.
    pub concurrency_limit: IntGauge,
    cache_requests: IntCounterVec,
    cache_evictions: IntCounter,
    cache_entries: IntGauge,
    cache_bytes: IntGauge,
    /// Partner connections: open, and cut off for want of a request head.
    pub connections: ConnectionCounts,
    /// Handles for requests whose partner is unknown.
    pub anonymous: ClassMetrics,
    tls_handshake_failures: IntCounterVec,
    /// Seconds until the partner listener's certificate expires (absent without TLS).
    tls_cert_expiry: IntGaugeVec,
}

/// Why a partner's TLS handshake failed, as `billgate_tls_handshake_failures_total` labels it.
pub const TLS_FAILURE_REASONS: [&str; 8] = [
    "no_certificate",
    "bad_certificate",
    "no_shared_protocol",
    "incompatible",
    "malformed",
    "closed",
    "timeout",
    "other",
];

/// Partner connections, counted as they open and close (never per request).
#[derive(Clone)]
pub struct ConnectionCounts {
    /// Open now.
    pub open: IntGauge,
    /// Closed without an answer for sending no complete request head within the head timeout.
    pub cut: IntCounter,
}

/// The families every [`ClassMetrics`] binds from.
struct Families {
    requests: IntCounterVec,
    rejections: IntCounterVec,
    shadow: IntCounterVec,
    /// The handle for every label combination no request can produce (a named partner refused
    /// for an unknown key, a request without a class forwarded): it is never registered, so
    /// `/metrics` exports only series that can move, while the request path still indexes its
    /// handles without a branch.
    unexported: IntCounter,
}

/// Where in a request's path a refusal happens, and so which labels it can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the partner is known: `partner="unknown"`, `class="none"`.
    Anonymous,
    /// The partner is known, no route matched yet: `class="none"`.
    Unrouted,
    /// Within one of the partner's classes.
    InClass,
}

impl Stage {
    fn of(reason: RejectReason) -> Stage {
        match reason {
            RejectReason::Admission(Reason::MissingKey | Reason::UnknownKey)
            | RejectReason::Malformed => Stage::Anonymous,
            RejectReason::Admission(
                Reason::Suspended
                | Reason::NoRoute
                | Reason::KeyCertificateMismatch
                | Reason::CertificateRequired,
            ) => Stage::Unrouted,
            _ => Stage::InClass,
        }
    }
}

impl Families {
    /// `certificates`: the partner lists client certificates, so it can be refused for a
    /// certificate's sake.
    fn bind_class(
        &self,
        partner: &str,
        class: &str,
        stage: Stage,
        certificates: bool,
    ) -> ClassMetrics {
        let bind = |family: &IntCounterVec, label: &str, possible: bool| {
            if possible {
                family.with_label_values(&[partner, class, label])
            } else {
                self.unexported.clone()
            }
        };
        ClassMetrics {
            // Outside a class a request can only be refused.
            requests: Outcome::ALL.map(|o| {
                bind(
                    &self.requests,
                    o.as_str(),
                    stage == Stage::InClass || o == Outcome::Rejected,
                )
            }),
            rejections: RejectReason::all()
                .map(|r| {
                    let by_certificate = matches!(
                        r,
                        RejectReason::Admission(
                            Reason::KeyCertificateMismatch | Reason::CertificateRequired
                        )
                    );
                    let possible = Stage::of(r) == stage && (certificates || !by_certificate);
                    bind(&self.rejections, r.as_str(), possible)
                })
                .collect(),
            // Shadow mode only ever lets through what a class's checks would have refused.
            shadow: Reason::ALL
                .map(|r| {
                    let possible =
                        stage == Stage::InClass && Stage::of(RejectReason::Admission(r)) == stage;
                    bind(&self.shadow, r.as_str(), possible)
                })
                .to_vec(),
        }
    }
}

/// Latency buckets from 1 ms to ~16 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0,
];

impl Metrics {
    /// Builds and registers every family. Fails only on a programming error (a bad name).
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "billgate_requests_total",
                "Requests by partner, class and outcome.",
            ),
            &["partner", "class", "outcome"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "billgate_rejections_total",
                "Requests refused by the gateway, by reason.",
            ),
            &["partner", "class", "reason"],
        )?;
        let shadow = IntCounterVec::new(
            Opts::new(
                "billgate_shadow_rejections_total",
                "Requests of shadow-mode partners that enforcement would have refused (forwarded).",
            ),
            &["partner", "class", "reason"],
        )?;
        let accounts_tracked = IntGaugeVec::new(
            Opts::new(
                "billgate_account_keys_tracked",
                "Bill accounts tracked for per-account quotas.",
            ),
            &["partner"],
        )?;
        let accounts_evicted = IntCounterVec::new(
            Opts::new(
                "billgate_account_keys_evicted_total",
                "Idle bill accounts evicted.",
            ),
            &["partner"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "billgate_upstream_duration_seconds",
                "Time from forwarding a request to the biller's response head, by class.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["class"],
        )?;
        let upstream_in_flight = IntGauge::new(
            "billgate_upstream_in_flight",
            "Requests at the biller now (in-flight slots held).",
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "billgate_upstream_errors_total",
                "Forwarded requests the biller did not answer, by kind (no_socket: the gateway had no socket to call with, nothing was sent).",
            ),
            &["kind"],
        )?;
        let config_info = IntGaugeVec::new(
            Opts::new(
                "billgate_config_info",
                "The running configuration (1), by file hash.",
            ),
            &["sha256"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(shadow.clone()))?;
        registry.register(Box::new(accounts_tracked.clone()))?;
        registry.register(Box::new(accounts_evicted.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(upstream_in_flight.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(config_info.clone()))?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "billgate_config_reloads_total",
                "Configuration reloads, by result (ok, error, refused).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(config_reloads.clone()))?;
        for result in ["ok", "error", "refused"] {
            config_reloads.with_label_values(&[result]);
        }
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "billgate_breaker_state",
                "The circuit breakers in front of the biller (inquiry: fed by every call, holds back inquiries; payment: fed by payments, holds them back): 0 closed, 1 open, 2 half-open.",
            ),
            &["breaker"],
        )?;
        let breaker_transitions = IntCounterVec::new(
            Opts::new(
                "billgate_breaker_transitions_total",
                "Circuit breaker transitions, by breaker, from and to state.",
            ),
            &["breaker", "from", "to"],
        )?;
        for breaker in ["inquiry", "payment"] {
            breaker_state.with_label_values(&[breaker]);
            for (from, to) in [
                ("closed", "open"),
                ("open", "half_open"),
                ("half_open", "open"),
                ("half_open", "closed"),
            ] {
                breaker_transitions.with_label_values(&[breaker, from, to]);
            }
        }
        let concurrency_limit = IntGauge::new(
            "billgate_upstream_concurrency_limit",
            "The adaptive limit on requests at the biller at once (at most max_in_flight).",
        )?;
        registry.register(Box::new(breaker_state.clone()))?;
        registry.register(Box::new(breaker_transitions.clone()))?;
        registry.register(Box::new(concurrency_limit.clone()))?;
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "billgate_cache_requests_total",
                "Cacheable inquiries by result: hit (from memory), miss (sent to the biller), coalesced (shared another's biller call).",
            ),
            &["result"],
        )?;
        for result in ["hit", "miss", "coalesced"] {
            cache_requests.with_label_values(&[result]);
        }
        let cache_evictions = IntCounter::new(
            "billgate_cache_evictions_total",
            "Cached answers evicted to stay under the entry and byte ceilings.",
        )?;
        let cache_entries = IntGauge::new("billgate_cache_entries", "Answers held in the cache.")?;
        let cache_bytes = IntGauge::new(
            "billgate_cache_bytes",
            "Bytes held by the cache (estimated).",
        )?;
        registry.register(Box::new(cache_requests.clone()))?;
        registry.register(Box::new(cache_evictions.clone()))?;
        registry.register(Box::new(cache_entries.clone()))?;
        registry.register(Box::new(cache_bytes.clone()))?;
        let connections = ConnectionCounts {
            open: IntGauge::new(
                "billgate_partner_connections",
                "Partner connections open now.",
            )?,
            cut: IntCounter::new(
                "billgate_partner_connections_cut_total",
                "Partner connections closed without an answer for sending no complete request head within 10 s (a head left unfinished, or idle between requests).",
            )?,
        };
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "billgate_tls_handshake_failures_total",
                "Partner TLS handshakes that failed, by reason: no_certificate (client_auth = required), bad_certificate (not from client_ca, expired), no_shared_protocol, incompatible (no common version or cipher), malformed, closed (the partner hung up), timeout (10 s), other.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        for reason in TLS_FAILURE_REASONS {
            tls_handshake_failures.with_label_values(&[reason]);
        }
        let tls_cert_expiry = IntGaugeVec::new(
            Opts::new(
                "billgate_tls_cert_expiry_seconds",
                "Seconds until the certificate the partner listener serves expires (negative once expired).",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(tls_cert_expiry.clone()))?;
        registry.register(Box::new(connections.open.clone()))?;
        registry.register(Box::new(connections.cut.clone()))?;
        let upstream_duration = Class::ALL.map(|c| duration.with_label_values(&[c.as_str()]));
        let upstream_errors =
            ["connect", "timeout", "no_socket"].map(|k| errors.with_label_values(&[k]));
        let families = Families {
            requests,
            rejections,
            shadow,
            unexported: IntCounter::new(
                "billgate_unexported",
                "a label combination no request can produce",
            )?,
        };
        Ok(Metrics {
            registry,
            anonymous: families.bind_class("unknown", "none", Stage::Anonymous, false),
            families,
            accounts_tracked,
            accounts_evicted,
            upstream_duration,
            upstream_in_flight,
            upstream_errors,
            config_info,
            config_reloads,
            breaker_state,
            breaker_transitions,
            concurrency_limit,
            cache_requests,
            cache_evictions,
            cache_entries,
            cache_bytes,
            connections,
            tls_handshake_failures,
            tls_cert_expiry,
        })
    }

    /// Counts a failed partner TLS handshake (`reason` one of [`TLS_FAILURE_REASONS`]).
    /// The registry, for families registered later (the fleet's, when there is one).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn tls_handshake_failed(&self, reason: &str) {
        self.tls_handshake_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// Sets the seconds until the partner listener's certificate expires; `None` without TLS.
    pub fn set_tls_cert_expiry(&self, seconds: Option<i64>) {
        match seconds {
            Some(seconds) => self
                .tls_cert_expiry
                .with_label_values(&["partner"])
                .set(seconds),
            None => {
                let _ = self.tls_cert_expiry.remove_label_values(&["partner"]);
            }
        }
    }

    /// Binds every handle a partner's requests touch.
    pub fn bind_partner(&self, partner: &str, certificates: bool) -> PartnerMetrics {
        PartnerMetrics {
            classes: Class::ALL.map(|c| {
                self.families
                    .bind_class(partner, c.as_str(), Stage::InClass, certificates)
            }),
            unrouted: self
                .families
                .bind_class(partner, "none", Stage::Unrouted, certificates),
            accounts_tracked: self.accounts_tracked.with_label_values(&[partner]),
            accounts_evicted: self.accounts_evicted.with_label_values(&[partner]),
        }
    }

    #[inline]
    pub fn upstream_duration(&self, class: Class) -> &Histogram {
        &self.upstream_duration[class.index()]
    }

    #[inline]
    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].inc();
    }

    /// Brings `breaker`'s transition counter for `from → to` up to `total`.
    pub fn breaker_transitions(&self, breaker: &str, from: &str, to: &str, total: u64) {
        let counter = self
            .breaker_transitions
            .with_label_values(&[breaker, from, to]);
        counter.inc_by(total.saturating_sub(counter.get()));
    }

    /// Copies the cache's own counters into its metrics.
    pub fn cache(&self, stats: &crate::cache::CacheStats) {
        let bring =
            |counter: IntCounter, total: u64| counter.inc_by(total.saturating_sub(counter.get()));
        bring(self.cache_requests.with_label_values(&["hit"]), stats.hits);
        bring(
            self.cache_requests.with_label_values(&["miss"]),
            stats.misses,
        );
        bring(
            self.cache_requests.with_label_values(&["coalesced"]),
            stats.coalesced,
        );
        bring(self.cache_evictions.clone(), stats.evictions);
        self.cache_entries
            .set(i64::try_from(stats.entries).unwrap_or(i64::MAX));
        self.cache_bytes
            .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
    }

    /// Counts one reload with its result: `ok`, `error` or `refused`.
    pub fn reload(&self, result: &str) {
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// Marks `sha256` as the running configuration.
    pub fn set_config(&self, sha256: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[sha256]).set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
