//! Push instead of poll: partners subscribe to bill accounts ([`api`]), the gateway learns of
//! bills by asking the biller at a sane cadence ([`refresh`]) or because the biller pushes them
//! (`POST /v1/bill-events` on the admin listener, [`Subscriptions::ingest`]), and each change
//! becomes a signed webhook per subscription, delivered at least once from the store's outbox
//! (`billgate-webhook`'s worker). The store (`billgate-subs`) is SQLite or PostgreSQL.

pub mod api;
mod deliver;
mod metrics;
pub mod refresh;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

use crate::config::{self, Config, SecretSource};
use crate::proxy::Shared;
use billgate_core::subscriptions::event_id;
use billgate_subs::store::{
    is_paid, BillState, Change, ChangeKind, NewDelivery, Store, Subscription,
};
use billgate_subs::webhook::{bill_event, BillEvent, Secret};

pub use metrics::SubscriptionMetrics;

/// Where a bill change was heard of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The refresher asked the biller.
    Refresh,
    /// The biller pushed it.
    Push,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Refresh => "refresh",
            Source::Push => "push",
        }
    }
}

/// The running subscriptions: the store, the partners' signing secrets, the biller's token,
/// and the handle that wakes the deliverer.
pub struct Subscriptions {
    pub store: Store,
    pub metrics: SubscriptionMetrics,
    settings: config::Subscriptions,
    /// Signing secrets by partner id, swapped whole by reloads.
    secrets: ArcSwap<HashMap<String, Arc<Secret>>>,
    /// SHA-256 of the biller's bearer token for `POST /v1/bill-events`; `None`: that endpoint
    /// is off.
    biller_token: ArcSwap<Option<[u8; 32]>>,
    /// Wakes the deliverer when something was enqueued.
    pub wake: Arc<Notify>,
    /// Wakes the refresher when a new subscription asked for an account to be refreshed.
    pub refresh_wake: Arc<Notify>,
    /// The biller's name, for the events' `source`.
    source: String,
}

impl Subscriptions {
    /// Opens the store (creating and migrating it as needed), reads the secrets and the
    /// biller's token, registers the metrics.
    pub async fn open(config: &Config, shared: &Shared) -> anyhow::Result<Arc<Subscriptions>> {
        let Some(settings) = config.subscriptions.clone() else {
            anyhow::bail!("[subscriptions] is not set");
        };
        let store = Store::open(&settings.store)
            .await
            .map_err(|e| anyhow::anyhow!("the subscription store {}: {e}", settings.store))?;
        let secrets = read_secrets(config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let token = read_token(&settings).map_err(|e| anyhow::anyhow!("{e}"))?;
        let metrics = SubscriptionMetrics::register(shared.metrics().registry())?;
        tracing::info!(store = store.kind(), refresh = ?settings.refresh, "subscriptions open");
        Ok(Arc::new(Subscriptions {
            store,
            metrics,
            source: format!("billgate/{}", config.biller.url.authority),
            settings,
            secrets: ArcSwap::from_pointee(secrets),
            biller_token: ArcSwap::from_pointee(token),
            wake: Arc::new(Notify::new()),
            refresh_wake: Arc::new(Notify::new()),
        }))
    }

    /// Re-reads the partners' secrets and the biller's token for a reloaded configuration.
    /// What cannot be read keeps what ran before, and is said.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let secrets = read_secrets(config)?;
        self.secrets.store(Arc::new(secrets));
        if let Some(settings) = &config.subscriptions {
            self.biller_token.store(Arc::new(read_token(settings)?));
        }
        Ok(())
    }

    /// The partner's signing secret.
    pub fn secret(&self, partner: &str) -> Option<Arc<Secret>> {
        self.secrets.load().get(partner).cloned()
    }

    /// Whether `token` is the biller's (compared as digests, in constant time over them).
    pub fn biller_token_matches(&self, token: &[u8]) -> Option<bool> {
        use sha2::{Digest, Sha256};
        let expected = (**self.biller_token.load())?;
        let presented: [u8; 32] = Sha256::digest(token).into();
        Some(
            expected
                .iter()
                .zip(presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0,
        )
    }

    pub fn settings(&self) -> &config::Subscriptions {
        &self.settings
    }

    /// Wall-clock milliseconds since the Unix epoch: what the store keeps times in.
    pub fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// A subscription was made, and is told what is due now without waiting out a refresh
    /// period: when the store knows the account's bills, a `bill.due` for each one not paid,
    /// as it stands (with the id a change to that version would have, so the two are one
    /// delivery); when it knows none, the refresher is asked to get to the account ahead of
    /// its schedule, within its share of the biller's capacity.
    pub async fn subscribed(
        &self,
        subscription: &Subscription,
    ) -> Result<(), billgate_subs::store::StoreError> {
        let now = self.now_ms();
        let known = self.store.bills(&subscription.account).await?;
        if known.is_empty() {
            self.store
                .request_refresh(&subscription.account, now)
                .await?;
            self.refresh_wake.notify_one();
            return Ok(());
        }
        let deliveries: Vec<NewDelivery> = known
            .iter()
            .filter(|(bill, _)| !is_paid(&bill.status))
            .map(|(bill, version)| self.delivery(subscription, "bill.due", bill, *version, now))
            .collect();
        if self.store.enqueue(&deliveries, now).await? > 0 {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// A subscription was deleted.
    pub fn unsubscribed(&self, partner: &str) {
        tracing::debug!(%partner, "unsubscribed");
    }

    /// What the biller says `account`'s bills are now: each change against what the store
    /// knew becomes one delivery per subscription (deduplicated by event id, so the same change
    /// heard twice is delivered once), and the deliverer is woken. The number enqueued.
    pub async fn ingest(
        &self,
        account: &str,
        bills: &[BillState],
        source: Source,
    ) -> Result<u64, billgate_subs::store::StoreError> {
        let now = self.now_ms();
        let changes = self.store.observe(account, bills, now).await?;
        if changes.is_empty() {
            return Ok(0);
        }
        let subscribers = self.store.subscribers(account).await?;
        let mut deliveries = Vec::with_capacity(changes.len() * subscribers.len());
        for change in &changes {
            let kind = event_type(change);
            self.metrics.event(kind, source.as_str());
            for subscription in &subscribers {
                deliveries.push(self.delivery(
                    subscription,
                    kind,
                    &change.bill,
                    change.version,
                    now,
                ));
            }
        }
        let enqueued = self.store.enqueue(&deliveries, now).await?;
        if enqueued > 0 {
            self.wake.notify_one();
        }
        Ok(enqueued)
    }

    /// The delivery of `bill` at `version` to `subscription`, as an event of type `kind`.
    fn delivery(
        &self,
        subscription: &Subscription,
        kind: &str,
        bill: &BillState,
        version: i64,
        now_ms: i64,
    ) -> NewDelivery {
        let id = event_id(&subscription.id, &bill.bill_id, version);
        let body = bill_event(&BillEvent {
            id: &id,
            source: &self.source,
            kind,
            account: &subscription.account,
            subscription_id: &subscription.id,
            bill_id: &bill.bill_id,
            status: &bill.status,
            amount_due: &bill.amount_due,
            due_date: &bill.due_date,
            time_ms: now_ms,
        });
        NewDelivery {
            id,
            subscription_id: subscription.id.clone(),
            partner: subscription.partner.clone(),
            account: subscription.account.clone(),
            callback: subscription.callback.clone(),
            body,
        }
    }

    /// Reads the store's counts into the metrics every few seconds until `shutdown`.
    pub async fn count(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let counts = async {
                let by_partner = self.store.subscriptions_by_partner().await?;
                let queue = self.store.queue_counts().await?;
                let oldest = self.store.oldest_pending_ms().await?;
                Ok::<_, billgate_subs::store::StoreError>((by_partner, queue, oldest))
            };
            match counts.await {
                Ok((by_partner, queue, oldest)) => {
                    let age = oldest.map_or(0, |at| (self.now_ms() - at) / 1000);
                    self.metrics
                        .set_counts(&by_partner, queue.pending, queue.dead, age);
                }
                Err(error) => {
                    tracing::warn!(%error, "could not count subscriptions and deliveries")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The CloudEvents `type` of a change.
fn event_type(change: &Change) -> &'static str {
    match change.kind {
        ChangeKind::Due => "bill.due",
        ChangeKind::Changed => "bill.changed",
        ChangeKind::Paid => "bill.paid",
    }
}

/// Every partner's signing secret, read from its file or the environment.
fn read_secrets(config: &Config) -> Result<HashMap<String, Arc<Secret>>, String> {
    let mut secrets = HashMap::new();
    for partner in config.partners.iter() {
        let Some(webhooks) = &partner.webhooks else {
            continue;
        };
        let secret = match &webhooks.secret {
            SecretSource::File(file) => {
                Secret::from_file(&file.path).map_err(|e| file.error(e).to_string())?
            }
            SecretSource::Env(name) => Secret::from_env(name)
                .map_err(|e| format!("partner {}: webhook_secret_env {name}: {e}", partner.id))?,
        };
        secrets.insert(partner.id.clone(), Arc::new(secret));
    }
    Ok(secrets)
}

/// The digest of the biller's bearer token, read from `biller_token_file`.
fn read_token(settings: &config::Subscriptions) -> Result<Option<[u8; 32]>, String> {
    use sha2::{Digest, Sha256};
    let Some(file) = &settings.biller_token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&file.path).map_err(|e| file.error(e).to_string())?;
    let token = text.trim();
    if token.is_empty() {
        return Err(file
            .error("the file is empty: it must hold the biller's bearer token")
            .to_string());
    }
    Ok(Some(Sha256::digest(token.as_bytes()).into()))
}

/// Starts the subscriptions' background work: the refresher and the deliverer (while this
/// instance leads them: always alone, one instance at a time in a fleet) and the counts.
pub fn start(
    subscriptions: Arc<Subscriptions>,
    shared: &Arc<Shared>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (leading, led) = watch::channel(shared.fleet().is_none());
    let mut tasks = Vec::new();
    if let Some(fleet) = shared.fleet() {
        tasks.push(tokio::spawn(Arc::clone(fleet).lead(
            "subscriptions",
            leading,
            shutdown.clone(),
        )));
    } else {
        // Alone, this instance always leads: the sender lives until the shutdown.
        let mut shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let _leading = leading;
            let _ = shutdown.changed().await;
        }));
    }
    {
        let subscriptions = Arc::clone(&subscriptions);
        let shared = Arc::clone(shared);
        tasks.push(tokio::spawn(while_leading(
            led.clone(),
            shutdown.clone(),
            move |stop| refresh::run(Arc::clone(&subscriptions), Arc::clone(&shared), stop),
        )));
    }
    {
        let subscriptions = Arc::clone(&subscriptions);
        tasks.push(tokio::spawn(while_leading(
            led.clone(),
            shutdown.clone(),
            move |stop| deliver::run(Arc::clone(&subscriptions), stop),
        )));
    }
    tasks.push(tokio::spawn(subscriptions.count(shutdown.clone())));
    tasks
}

/// Runs `work` for as long as `leading` says this instance leads, again each time it comes to
/// lead, until `shutdown`. `work` stops when the receiver it is given turns true.
async fn while_leading<F, Fut>(
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
    work: F,
) where
    F: Fn(watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        while !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
        let (stop, stopped) = watch::channel(false);
        let term = work(stopped);
        tokio::pin!(term);
        loop {
            tokio::select! {
                () = &mut term => break,
                changed = leading.changed() => {
                    if changed.is_err() || !*leading.borrow() {
                        stop.send_replace(true);
                        term.as_mut().await;
                        break;
                    }
                }
                _ = shutdown.changed() => {
                    stop.send_replace(true);
                    term.as_mut().await;
                    return;
                }
            }
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
