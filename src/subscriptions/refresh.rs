//! The refresher: every subscribed account asked about once per `[subscriptions] refresh`,
//! one biller call per account however many partners subscribed, spread evenly over the
//! period, no faster than `capacity_share` of the biller's capacity, and through the biller's
//! protection as a scheduled poll (it yields to payments and user inquiries, and waits out an
//! open breaker, a pause or shedding).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Source, Subscriptions};
use crate::admission::{BillerOutcome, Pause, Shed};
use crate::cache::{KeyRef, Sharing};
use crate::config::{AccountSource, CacheScope, Class, Config, Route, RouteClass, Segment};
use crate::proxy::{BillerPool, Shared};
use billgate_core::subscriptions::Spread;
use billgate_subs::store::BillState;

/// Accounts read from the store at a time.
const PAGE: u32 = 500;

/// The most of an answer the refresher reads.
const MAX_ANSWER: usize = 64 * 1024;

/// The biller's 200 to a refresh, kept for the inquiry cache.
struct Answer {
    requested_at: governor::nanos::Nanos,
    headers: http::HeaderMap,
    body: Bytes,
}

/// What became of one refresh.
enum Refreshed {
    /// The biller answered with the account's bills (none when it has none due), and its
    /// answer when it was a 200.
    Answered(Vec<BillState>, Option<Answer>),
    /// No answer, a 5xx, or an answer that was not a bill.
    Failed,
    /// The biller's protection said wait this long.
    Deferred(Duration),
}

/// How often the refresher looks for refresh requests it was not woken for: in a fleet a
/// partner subscribes through any instance, and one instance refreshes.
const REQUESTS_EVERY: Duration = Duration::from_secs(1);

/// Refresh requests read at a time; a full page is followed by the next at once.
const REQUESTS_PAGE: u32 = 50;

/// Refreshes until `shutdown` turns true.
pub async fn run(
    subscriptions: Arc<Subscriptions>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let pool = BillerPool::for_config(&shared.snapshot().config);
    let now = Instant::now();
    let mut refresher = Refresher {
        subscriptions,
        shared,
        pool,
        shutdown,
        next_allowed: now,
        next_look: now,
        asked: HashMap::new(),
    };
    while refresher.period().await {}
}

/// The refresher's state across periods.
struct Refresher {
    subscriptions: Arc<Subscriptions>,
    shared: Arc<Shared>,
    pool: Arc<BillerPool>,
    shutdown: watch::Receiver<bool>,
    /// No biller call before this: the pace `capacity_share` allows.
    next_allowed: Instant,
    /// When to look for refresh requests next without being woken.
    next_look: Instant,
    /// Accounts asked about on a new subscription's request, and when: the schedule skips
    /// them for a period, so each account is still asked about once a period.
    asked: HashMap<String, Instant>,
}

impl Refresher {
    /// One period: every account subscribed when it starts, asked about at its place in the
    /// spread, new subscriptions' accounts ahead of them. False when shut down.
    async fn period(&mut self) -> bool {
        let period = self.subscriptions.settings().refresh;
        let started = Instant::now();
        self.asked
            .retain(|_, at| started.duration_since(*at) < period);
        let count = match self.subscriptions.store.account_count().await {
            Ok(count) => count,
            Err(error) => {
                tracing::warn!(%error, "the refresher could not count the subscribed accounts");
                0
            }
        };
        let spread = Spread {
            start: self.shared.clock().now(),
            period,
            count,
        };
        // Behind schedule (a stalled machine, a biller that made it wait, new subscriptions
        // served first), the refresher catches up at twice its pace at most: never a burst.
        let catch_up = if count > 0 {
            period / u32::try_from(count).unwrap_or(u32::MAX) / 2
        } else {
            Duration::ZERO
        };
        let mut after: Option<String> = None;
        let mut i = 0u64;
        'period: while i < count {
            let page = match self
                .subscriptions
                .store
                .accounts(after.as_deref(), PAGE)
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "the refresher could not read the subscribed accounts");
                    break;
                }
            };
            let Some(last) = page.last().cloned() else {
                break;
            };
            for account in page {
                if self
                    .asked
                    .get(&account)
                    .is_some_and(|at| at.elapsed() < period)
                {
                    i += 1;
                    continue;
                }
                let due = started + nanos_between(spread.start.as_u64(), spread.due(i).as_u64());
                if !self.wait_until(due).await {
                    return false;
                }
                while let Some(wait) = self.once(&account, catch_up).await {
                    // Past the period's end the account waits for the next period.
                    if Instant::now() + wait > started + period {
                        break 'period;
                    }
                    if !self.wait_until(Instant::now() + wait).await {
                        return false;
                    }
                }
                i += 1;
            }
            after = Some(last);
        }
        // The next period starts when this one ends (at once when it overran); with nothing
        // subscribed yet, a first subscription is looked for every second.
        let end = if count == 0 {
            started + period.min(Duration::from_secs(1))
        } else {
            started + period
        };
        self.wait_until(end).await
    }

    /// Waits until `at` (and the pace allows a call), refreshing requested accounts meanwhile.
    /// False when shut down.
    async fn wait_until(&mut self, at: Instant) -> bool {
        let wake = Arc::clone(&self.subscriptions.refresh_wake);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => return false,
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(self.next_look) => {}
                _ = tokio::time::sleep_until(at.max(self.next_allowed)) => return true,
            }
            self.next_look = Instant::now() + REQUESTS_EVERY;
            if !self.serve_requests().await {
                return false;
            }
        }
    }

    /// Refreshes a page of the accounts new subscriptions asked about, oldest request first,
    /// each at the refresher's pace. A request is done once the biller answered (or failed);
    /// one the biller's protection defers waits with the schedule. False when shut down.
    async fn serve_requests(&mut self) -> bool {
        let accounts = match self
            .subscriptions
            .store
            .refresh_requests(REQUESTS_PAGE)
            .await
        {
            Ok(accounts) => accounts,
            Err(error) => {
                tracing::warn!(%error, "the refresher could not read the refresh requests");
                return true;
            }
        };
        if accounts.len() == usize::try_from(REQUESTS_PAGE).unwrap_or(usize::MAX) {
            self.next_look = Instant::now();
        }
        let period = self.subscriptions.settings().refresh;
        for account in accounts {
            // Asked about on request within the period (a partner that subscribes, deletes and
            // subscribes again): what it said then stands, as for the schedule.
            if self
                .asked
                .get(&account)
                .is_some_and(|at| at.elapsed() < period)
            {
                self.subscriptions.metrics.refreshed("recent");
                self.close_request(&account).await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(self.next_allowed) => {}
                _ = self.shutdown.changed() => return false,
            }
            if self.once(&account, Duration::ZERO).await.is_some() {
                return true;
            }
            self.asked.insert(account.clone(), Instant::now());
            self.close_request(&account).await;
        }
        true
    }

    /// The request for `account` is done (a failure to record it costs one call more, later).
    async fn close_request(&self, account: &str) {
        if let Err(error) = self.subscriptions.store.refresh_done(account).await {
            tracing::warn!(%error, %account, "a refresh request could not be closed");
        }
    }

    /// Asks the biller about `account` once; the answer fills the inquiry cache and its
    /// changes become events. The next call waits the pace `capacity_share` allows, and at
    /// least `floor`. `Some(wait)`: the biller's protection said wait this long.
    async fn once(&mut self, account: &str, floor: Duration) -> Option<Duration> {
        let snapshot = self.shared.snapshot_full();
        let gap = min_gap(
            &snapshot.config,
            self.subscriptions.settings().capacity_share,
        );
        self.next_allowed = Instant::now() + gap.max(floor);
        match refresh(&self.pool, &self.shared, &snapshot, account).await {
            Refreshed::Answered(bills, answer) => {
                self.subscriptions.metrics.refreshed("answered");
                // Cached first: a subscriber told of a change finds the answer in memory if it
                // asks.
                if let Some(answer) = answer {
                    fill_cache(
                        &self.subscriptions,
                        &self.shared,
                        &snapshot,
                        account,
                        answer,
                    )
                    .await;
                }
                if let Err(error) = self
                    .subscriptions
                    .ingest(account, &bills, Source::Refresh)
                    .await
                {
                    tracing::warn!(%error, %account, "a refreshed account's bills could not be stored");
                }
                None
            }
            Refreshed::Failed => {
                self.subscriptions.metrics.refreshed("failed");
                None
            }
            Refreshed::Deferred(wait) => {
                self.subscriptions.metrics.refreshed("deferred");
                Some(wait)
            }
        }
    }
}

fn nanos_between(from: u64, to: u64) -> Duration {
    Duration::from_nanos(to.saturating_sub(from))
}

/// The least time between two refreshes: one call per `capacity_share` of the biller's
/// capacity interval.
fn min_gap(config: &Config, share: f64) -> Duration {
    let capacity = &config.biller.capacity;
    let per_second =
        f64::from(capacity.count.get()) / capacity.period.duration().as_secs_f64() * share;
    if per_second > 0.0 && per_second.is_finite() {
        Duration::from_secs_f64(1.0 / per_second)
    } else {
        Duration::from_secs(1)
    }
}

/// The route the refresher asks the biller by: the first GET inquiry route that names its
/// account in the path or the query, and no other parameter.
pub fn inquiry_route(config: &Config) -> Option<&Route> {
    config.routes.iter().find(|route| {
        route.method == http::Method::GET
            && route.class == RouteClass::Inquiry
            && route.account != AccountSource::None
            && !route
                .path
                .segments
                .iter()
                .any(|s| matches!(s, Segment::Param(_)))
    })
}

/// The path and query `route` asks about `account` with.
pub fn inquiry_path(route: &Route, account: &str) -> String {
    let mut path = String::new();
    for segment in &route.path.segments {
        path.push('/');
        match segment {
            Segment::Literal(text) | Segment::Param(text) => path.push_str(text),
            Segment::Account => path.push_str(account),
        }
    }
    match &route.account {
        AccountSource::Query(name) => format!("{path}?{name}={account}"),
        AccountSource::PathSegment | AccountSource::None => path,
    }
}

/// Keeps a refreshed answer in the inquiry cache, as the route caches a partner's own inquiry
/// (shared, or once for each partner subscribed to the account), so a partner that still polls
/// an account it subscribed to is answered from memory.
async fn fill_cache(
    subscriptions: &Subscriptions,
    shared: &Shared,
    snapshot: &crate::proxy::Snapshot,
    account: &str,
    answer: Answer,
) {
    let Some(route) = inquiry_route(&snapshot.config) else {
        return;
    };
    let Some(cache_for) = route.cache_for else {
        return;
    };
    let partners: Vec<String> = match route.cache_scope {
        CacheScope::Shared => vec![String::new()],
        CacheScope::Partner => match subscriptions.store.subscribers(account).await {
            Ok(subscribers) => {
                let mut partners: Vec<String> =
                    subscribers.into_iter().map(|s| s.partner).collect();
                partners.sort();
                partners.dedup();
                partners
            }
            Err(_) => return,
        },
    };
    let sharing = match route.cache_scope {
        CacheScope::Partner => Sharing::PerPartner,
        CacheScope::Shared => Sharing::Shared,
    };
    for partner in &partners {
        let key = KeyRef::new(&route.name, sharing, partner, account).to_key();
        let _ = shared.cache().store(
            key,
            answer.requested_at,
            StatusCode::OK,
            &answer.headers,
            answer.body.clone(),
            cache_for,
        );
    }
}

/// Asks the biller about `account` as a scheduled poll would be.
async fn refresh(
    pool: &Arc<BillerPool>,
    shared: &Shared,
    snapshot: &crate::proxy::Snapshot,
    account: &str,
) -> Refreshed {
    let config = &snapshot.config;
    let Some(route) = inquiry_route(config) else {
        return Refreshed::Failed;
    };
    let path = inquiry_path(route, account);
    let protection = snapshot.gate.protection();
    let now = snapshot.gate.clock().now();
    let ticket = match protection.admit(Class::InquiryScheduled, &Pause::default(), now) {
        Ok(ticket) => ticket,
        Err(shed) => {
            return Refreshed::Deferred(match shed {
                Shed::Paused(wait) | Shed::BreakerOpen(wait) | Shed::Capacity(wait) => {
                    wait.max(Duration::from_millis(10))
                }
                Shed::Busy | Shed::Strained => Duration::from_secs(1),
            })
        }
    };
    let upstream = &snapshot.upstream;
    let uri = format!("{}{path}", upstream.base_path);
    let Ok(uri) = http::Uri::try_from(uri) else {
        ticket.finish(BillerOutcome::NotSent);
        return Refreshed::Failed;
    };
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(http::header::HOST, upstream.host.clone());
    headers.insert(
        config.server.partner_header.clone(),
        http::HeaderValue::from_static("billgate-subscriptions"),
    );
    headers.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    let sent_at = Instant::now();
    let requested_at = shared.cache().now();
    let timeout = config.biller.timeout;
    let call = async {
        let response = pool.send(upstream.target(), request, sent_at).await.ok()?;
        let status = response.status();
        let rtt = sent_at.elapsed();
        let (mut head, body) = response.into_parts();
        let body = Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .ok()?
            .to_bytes();
        crate::proxy::strip_hop_by_hop(&mut head.headers);
        Some((status, rtt, head.headers, body))
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Some((status, rtt, headers, body))) => {
            ticket.finish(BillerOutcome::Answered {
                status: status.as_u16(),
                rtt,
            });
            match status {
                StatusCode::OK => match bills_of(&body) {
                    Some(bills) => Refreshed::Answered(
                        bills,
                        Some(Answer {
                            requested_at,
                            headers,
                            body,
                        }),
                    ),
                    None => Refreshed::Failed,
                },
                // The biller knows no such account: no bill to tell anyone of.
                StatusCode::NOT_FOUND => Refreshed::Answered(Vec::new(), None),
                _ => Refreshed::Failed,
            }
        }
        Ok(None) => {
            ticket.finish(BillerOutcome::Unreachable);
            Refreshed::Failed
        }
        Err(_) => {
            ticket.finish(BillerOutcome::TimedOut);
            Refreshed::Failed
        }
    }
}

/// The bills in an inquiry answer: one bill object (`bill_id`, `status`, `amount_due` as a
/// decimal string or `{"value": …}`, `due_date`), or `{"bills": [...]}`; an answer whose
/// status is `no_bill_due` has none. `None`: not JSON, or not shaped like a bill.
pub fn bills_of(body: &[u8]) -> Option<Vec<BillState>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let one = |bill: &Value| -> Option<Option<BillState>> {
        let object = bill.as_object()?;
        let status = object.get("status")?.as_str()?.to_owned();
        if status == "no_bill_due" {
            return Some(None);
        }
        let bill_id = object.get("bill_id")?.as_str()?.to_owned();
        let amount_due = match object.get("amount_due") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Object(money)) => money.get("value")?.as_str()?.to_owned(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let due_date = object
            .get("due_date")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Some(Some(BillState {
            bill_id,
            status,
            amount_due,
            due_date,
        }))
    };
    match value.get("bills") {
        Some(Value::Array(bills)) => bills
            .iter()
            .map(one)
            .collect::<Option<Vec<_>>>()
            .map(|bills| bills.into_iter().flatten().collect()),
        _ => one(&value).map(|bill| bill.into_iter().collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stand_in_billers_answers() {
        let due = br#"{"account":"A-1","biller":"x","bill_id":"BILL-1","period":"2026-10","amount_due":{"value":"12.30","currency":"CNY"},"due_date":"2026-12-15","status":"due"}"#;
        let bills = bills_of(due).unwrap_or_default();
        assert_eq!(bills.len(), 1);
        assert_eq!(
            (
                bills[0].bill_id.as_str(),
                bills[0].amount_due.as_str(),
                bills[0].status.as_str()
            ),
            ("BILL-1", "12.30", "due")
        );
        assert_eq!(
            bills_of(br#"{"account":"A","status":"no_bill_due"}"#),
            Some(Vec::new())
        );
        let two = br#"{"bills":[{"bill_id":"a","status":"due","amount_due":"1.00"},{"bill_id":"b","status":"paid","amount_due":"2.00","due_date":"2026-12-01"}]}"#;
        assert_eq!(bills_of(two).map(|b| b.len()), Some(2));
        assert_eq!(bills_of(b"<html>"), None);
        assert_eq!(bills_of(br#"{"status":"due"}"#), None);
    }
}
