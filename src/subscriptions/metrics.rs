//! The subscriptions' metrics, registered on the gateway's registry when they start.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every subscription and webhook metric.
pub struct SubscriptionMetrics {
    subscriptions: IntGaugeVec,
    api: IntCounterVec,
    refreshes: IntCounterVec,
    events: IntCounterVec,
    deliveries: IntCounterVec,
    latency: Histogram,
    queue: IntGaugeVec,
    oldest: IntGauge,
    pruned: IntCounterVec,
}

impl SubscriptionMetrics {
    pub fn register(registry: &Registry) -> Result<SubscriptionMetrics, prometheus::Error> {
        let subscriptions = IntGaugeVec::new(
            Opts::new(
                "billgate_subscriptions",
                "Subscriptions held, by partner (read from the store every few seconds).",
            ),
            &["partner"],
        )?;
        let api = IntCounterVec::new(
            Opts::new(
                "billgate_subscription_api_requests_total",
                "Requests to /v1/subscriptions, by partner and outcome (created, ok, deleted, \
                 partner_quota, bad_request, not_found, store_unavailable, …).",
            ),
            &["partner", "outcome"],
        )?;
        let refreshes = IntCounterVec::new(
            Opts::new(
                "billgate_subscription_refreshes_total",
                "Subscribed accounts asked about at the biller, by result: answered, failed \
                 (no answer or 5xx), deferred (the biller's protection or the refresher's share \
                 said wait), recent (a new subscription's account asked about on request within \
                 the period: not asked again).",
            ),
            &["result"],
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "billgate_subscription_events_total",
                "Bill changes seen, by type (bill.due, bill.changed, bill.paid) and source \
                 (refresh, push).",
            ),
            &["type", "source"],
        )?;
        let deliveries = IntCounterVec::new(
            Opts::new(
                "billgate_webhook_deliveries_total",
                "Webhook delivery attempts, by result: delivered, retried, dead.",
            ),
            &["result"],
        )?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "billgate_webhook_delivery_seconds",
                "From a bill change's event to its webhook's 2xx.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                3600.0,
            ]),
        )?;
        let queue = IntGaugeVec::new(
            Opts::new(
                "billgate_webhook_queue",
                "Deliveries in the store by state: pending (to send or retry), dead (past the \
                 horizon, listed at /admin/deliveries).",
            ),
            &["state"],
        )?;
        let pruned = IntCounterVec::new(
            Opts::new(
                "billgate_webhook_pruned_total",
                "Finished deliveries removed from the store, by state: delivered (after \
                 keep_delivered), dead (after keep_dead).",
            ),
            &["state"],
        )?;
        let oldest = IntGauge::new(
            "billgate_webhook_oldest_pending_seconds",
            "Age of the oldest pending delivery (0 when none).",
        )?;
        registry.register(Box::new(subscriptions.clone()))?;
        registry.register(Box::new(api.clone()))?;
        registry.register(Box::new(refreshes.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(queue.clone()))?;
        registry.register(Box::new(oldest.clone()))?;
        registry.register(Box::new(pruned.clone()))?;
        for state in ["delivered", "dead"] {
            pruned.with_label_values(&[state]);
        }
        Ok(SubscriptionMetrics {
            subscriptions,
            api,
            refreshes,
            events,
            deliveries,
            latency,
            queue,
            oldest,
            pruned,
        })
    }

    pub fn api(&self, partner: &str, outcome: &str) {
        self.api.with_label_values(&[partner, outcome]).inc();
    }

    pub fn refreshed(&self, result: &str) {
        self.refreshes.with_label_values(&[result]).inc();
    }

    pub fn event(&self, kind: &str, source: &str) {
        self.events.with_label_values(&[kind, source]).inc();
    }

    pub fn delivered(&self, seconds: f64) {
        self.deliveries.with_label_values(&["delivered"]).inc();
        self.latency.observe(seconds.max(0.0));
    }

    pub fn retried(&self) {
        self.deliveries.with_label_values(&["retried"]).inc();
    }

    pub fn dead(&self) {
        self.deliveries.with_label_values(&["dead"]).inc();
    }

    pub fn pruned(&self, state: &str, n: u64) {
        self.pruned.with_label_values(&[state]).inc_by(n);
    }

    /// The store's counts, as last read.
    pub fn set_counts(&self, by_partner: &[(String, u64)], pending: u64, dead: u64, oldest_s: i64) {
        self.subscriptions.reset();
        for (partner, n) in by_partner {
            self.subscriptions
                .with_label_values(&[partner.as_str()])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        self.queue
            .with_label_values(&["pending"])
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.queue
            .with_label_values(&["dead"])
            .set(i64::try_from(dead).unwrap_or(i64::MAX));
        self.oldest.set(oldest_s.max(0));
    }
}
