//! The running configuration as one immutable snapshot: config, admission gate, bound metric
//! handles and pre-built upstream parts. A reload builds a new one and swaps it in.

use std::sync::{Arc, OnceLock};

use http::header::HeaderValue;
use http::uri::{Authority, Scheme};

use super::answer::{insert_ratelimit, insert_ratelimit_with, policy_header, Prepared};
use super::pool::Target;
use crate::admission::{Denied, Gate, Limit, Policy, Reason, Remaining, Suspensions};
use crate::biller_tls::BillerTls;
use crate::clock::Clock;
use crate::config::{Class, Config};
use crate::fleet::FleetState;
use crate::ids::PerPartner;
use crate::metrics::{Metrics, PartnerMetrics};

/// Per-partner values the proxy needs on every request, built once.
pub struct PartnerRuntime {
    pub metrics: PartnerMetrics,
    /// The partner's id as the trusted header value.
    pub header_value: HeaderValue,
    /// The partner's denials, rendered on first use.
    pub denials: PreparedDenials,
    /// `RateLimit-Policy` for each class quota the partner has.
    pub policies: [Option<HeaderValue>; 3],
}

impl PartnerRuntime {
    /// Sets the `RateLimit` fields of an admitted answer.
    pub fn insert_ratelimit(&self, headers: &mut http::HeaderMap, limit: &Limit) {
        let prepared = match limit.policy {
            Policy::Class(class) => self.policies[class.index()].as_ref(),
            _ => None,
        };
        match prepared {
            Some(policy) => insert_ratelimit_with(headers, limit, policy),
            None => insert_ratelimit(headers, limit),
        }
    }
}

/// Denial answers prepared on first use, one per class (or none) and reason.
pub struct PreparedDenials(
    [OnceLock<Option<Box<Prepared>>>; (Class::ALL.len() + 1) * Reason::ALL.len()],
);

impl Default for PreparedDenials {
    fn default() -> Self {
        PreparedDenials(std::array::from_fn(|_| OnceLock::new()))
    }
}

impl PreparedDenials {
    /// The prepared answer for `denied` (of `partner`, when known); `None` when it cannot be
    /// prepared and must be rendered whole.
    pub fn get(
        &self,
        denied: &Denied,
        partner: Option<&str>,
        key_header: &str,
    ) -> Option<&Prepared> {
        let row = denied.class.map_or(Class::ALL.len(), Class::index);
        let cell = self
            .0
            .get(row * Reason::ALL.len() + denied.reason.index())?;
        cell.get_or_init(|| Prepared::new(denied, partner, denied.class, key_header).map(Box::new))
            .as_deref()
    }
}

/// Everything a request is served under, from start to finish.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub gate: Gate,
    /// The subscription API's quotas.
    pub subscriptions: billgate_core::subscriptions::SubscriptionGate,
    pub partners: PerPartner<PartnerRuntime>,
    pub upstream: Upstream,
    /// Denials of callers not known as a partner (no key, an unknown key).
    pub anonymous: PreparedDenials,
}

/// Pre-built parts of every upstream URI and `Host`.
pub struct Upstream {
    /// `host:port`, where connections go.
    pub address: Arc<str>,
    pub connect_timeout: std::time::Duration,
    pub scheme: Scheme,
    pub authority: Authority,
    pub base_path: String,
    pub host: HeaderValue,
    /// TLS for an https biller, built when this configuration was loaded; `None` for http.
    pub tls: Option<Arc<BillerTls>>,
}

impl Upstream {
    /// Where a pool connects for this configuration: read per request, so a reload that moves
    /// the biller needs no new pool.
    pub fn target(&self) -> Target<'_> {
        Target {
            address: &self.address,
            connect_timeout: self.connect_timeout,
            tls: self.tls.as_deref(),
        }
    }
}

impl Snapshot {
    /// Builds a snapshot, carrying limiter state over from `previous` where quotas are unchanged.
    /// `biller_tls` is what [`crate::biller_tls::load`] made of `config`.
    pub fn build(
        config: Config,
        biller_tls: Option<Arc<BillerTls>>,
        previous: Option<&Snapshot>,
        clock: &Clock,
        metrics: &Metrics,
        suspensions: &Suspensions,
        fleet: Option<&Arc<FleetState>>,
    ) -> Snapshot {
        let previous_gate = previous.map(|s| &s.gate);
        let gate = Gate::build(&config, previous_gate, clock, suspensions);
        // In a fleet, every gate spends leases on the fleet's buckets beside its own quotas.
        let gate = match fleet {
            Some(state) => gate.in_fleet(&config, Arc::clone(state), previous_gate),
            None => gate,
        };
        let partners = config
            .partners
            .iter()
            .map(|p| PartnerRuntime {
                metrics: metrics.bind_partner(&p.id, !p.client_cert_sha256.is_empty()),
                // Partner ids are validated to `[a-z0-9_-]`, always a valid header value.
                header_value: HeaderValue::from_str(&p.id)
                    .unwrap_or(HeaderValue::from_static("invalid")),
                denials: PreparedDenials::default(),
                policies: Class::ALL.map(|class| {
                    let rate = p.quota.get(class)?;
                    policy_header(&Limit {
                        policy: Policy::Class(class),
                        rate,
                        remaining: Remaining {
                            remaining: 0,
                            reset: std::time::Duration::ZERO,
                            wait: std::time::Duration::ZERO,
                        },
                    })
                }),
            })
            .collect();
        let authority = config.biller.url.authority.clone();
        let host =
            HeaderValue::from_str(authority.as_str()).unwrap_or(HeaderValue::from_static("biller"));
        // Made of the same files as the running one: keep the running one, and with it its
        // TLS sessions to resume.
        let running = previous.and_then(|p| p.upstream.tls.as_ref());
        let tls = match (biller_tls, running) {
            (Some(new), Some(running)) if new.id == running.id => Some(Arc::clone(running)),
            (new, _) => new,
        };
        let upstream = Upstream {
            address: Arc::from(config.biller.url.host_port()),
            connect_timeout: config.biller.connect_timeout,
            scheme: if tls.is_some() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            authority,
            base_path: config.biller.url.base_path.clone(),
            host,
            tls,
        };
        metrics.set_config(&config.source_sha256);
        let subscriptions = billgate_core::subscriptions::SubscriptionGate::build(
            &config,
            previous.map(|p| &p.subscriptions),
        );
        Snapshot {
            config: Arc::new(config),
            gate,
            subscriptions,
            partners,
            upstream,
            anonymous: PreparedDenials::default(),
        }
    }
}
