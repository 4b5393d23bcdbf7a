//! The refresher: every subscribed account asked about once per `[subscriptions] refresh`,
//! one biller call per account however many partners subscribed, spread evenly over the
//! period, no faster than `capacity_share` of the biller's capacity, and through the biller's
//! protection as a scheduled poll (it yields to payments and user inquiries, and waits out an
//! open breaker, a pause or shedding).

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
use crate::config::{AccountSource, Class, Config, RouteClass, Segment};
use crate::proxy::{BillerPool, Shared};
use billgate_core::subscriptions::Spread;
use billgate_subs::store::BillState;

/// Accounts read from the store at a time.
const PAGE: u32 = 500;

/// The most of an answer the refresher reads.
const MAX_ANSWER: usize = 64 * 1024;

/// What became of one refresh.
enum Refreshed {
    /// The biller answered with the account's bills (none when it has none due).
    Answered(Vec<BillState>),
    /// No answer, a 5xx, or an answer that was not a bill.
    Failed,
    /// The biller's protection said wait this long.
    Deferred(Duration),
}

/// Refreshes until `shutdown` turns true.
pub async fn run(
    subscriptions: Arc<Subscriptions>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let pool = BillerPool::for_config(&shared.snapshot().config);
    loop {
        let period = subscriptions.settings().refresh;
        let started = Instant::now();
        let count = match subscriptions.store.account_count().await {
            Ok(count) => count,
            Err(error) => {
                tracing::warn!(%error, "the refresher could not count the subscribed accounts");
                0
            }
        };
        let clock = shared.clock();
        let spread = Spread {
            start: clock.now(),
            period,
            count,
        };
        let mut next_allowed = Instant::now();
        // Behind schedule (a stalled machine, a biller that made it wait), the refresher
        // catches up at twice its pace at most: never a burst.
        let catch_up = if count > 0 {
            period / u32::try_from(count).unwrap_or(u32::MAX) / 2
        } else {
            Duration::ZERO
        };
        let mut after: Option<String> = None;
        let mut i = 0u64;
        'period: while i < count {
            let page = match subscriptions.store.accounts(after.as_deref(), PAGE).await {
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
                let due = started + nanos_between(spread.start.as_u64(), spread.due(i).as_u64());
                let at = due.max(next_allowed);
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = shutdown.changed() => return,
                }
                loop {
                    let snapshot = shared.snapshot_full();
                    let min_gap =
                        min_gap(&snapshot.config, subscriptions.settings().capacity_share);
                    next_allowed = Instant::now() + min_gap.max(catch_up);
                    match refresh(&pool, &snapshot, &account).await {
                        Refreshed::Answered(bills) => {
                            subscriptions.metrics.refreshed("answered");
                            if let Err(error) = subscriptions
                                .ingest(&account, &bills, Source::Refresh)
                                .await
                            {
                                tracing::warn!(%error, %account, "a refreshed account's bills could not be stored");
                            }
                            break;
                        }
                        Refreshed::Failed => {
                            subscriptions.metrics.refreshed("failed");
                            break;
                        }
                        Refreshed::Deferred(wait) => {
                            subscriptions.metrics.refreshed("deferred");
                            // Past the period's end the account waits for the next period.
                            if Instant::now() + wait > started + period {
                                break 'period;
                            }
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = shutdown.changed() => return,
                            }
                        }
                    }
                }
                i += 1;
            }
            after = Some(last);
        }
        // The next period starts when this one ends (at once when it overran); with nothing
        // subscribed yet, a first subscription is looked for every few seconds.
        let end = if count == 0 {
            started + period.min(Duration::from_secs(5))
        } else {
            started + period
        };
        tokio::select! {
            _ = tokio::time::sleep_until(end) => {}
            _ = shutdown.changed() => return,
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

/// The biller path an inquiry about `account` takes: the first GET inquiry route that names
/// its account in the path or the query, and no other parameter.
pub fn inquiry_path(config: &Config, account: &str) -> Option<String> {
    config.routes.iter().find_map(|route| {
        if route.method != http::Method::GET || route.class != RouteClass::Inquiry {
            return None;
        }
        let mut path = String::new();
        for segment in &route.path.segments {
            path.push('/');
            match segment {
                Segment::Literal(text) => path.push_str(text),
                Segment::Account => path.push_str(account),
                Segment::Param(_) => return None,
            }
        }
        match &route.account {
            AccountSource::PathSegment => Some(path),
            AccountSource::Query(name) => Some(format!("{path}?{name}={account}")),
            AccountSource::None => None,
        }
    })
}

/// Asks the biller about `account` as a scheduled poll would be.
async fn refresh(
    pool: &Arc<BillerPool>,
    snapshot: &crate::proxy::Snapshot,
    account: &str,
) -> Refreshed {
    let config = &snapshot.config;
    let Some(path) = inquiry_path(config, account) else {
        return Refreshed::Failed;
    };
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
    let timeout = config.biller.timeout;
    let call = async {
        let response = pool.send(upstream.target(), request, sent_at).await.ok()?;
        let status = response.status();
        let rtt = sent_at.elapsed();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .ok()?
            .to_bytes();
        Some((status, rtt, body))
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Some((status, rtt, body))) => {
            ticket.finish(BillerOutcome::Answered {
                status: status.as_u16(),
                rtt,
            });
            match status {
                StatusCode::OK => match bills_of(&body) {
                    Some(bills) => Refreshed::Answered(bills),
                    None => Refreshed::Failed,
                },
                // The biller knows no such account: no bill to tell anyone of.
                StatusCode::NOT_FOUND => Refreshed::Answered(Vec::new()),
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
