//! Inquiries on routes with `cache_for`: a fresh answer comes from memory (`x-billgate-cache:
//! hit`), identical inquiries in flight together share one biller call (`coalesced`), and the
//! one that calls (`miss`) does so from a task of its own, so its partner hanging up never
//! strands the others. A hit costs the partner `[cache] hit_cost` of its class quota and nothing
//! of the biller's capacity.

use http::HeaderValue;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};

use super::access::AccessLog;
use super::body::ProxyBody;
use super::handler::{deny, refuse};
use super::headers;
use super::snapshot::Snapshot;
use super::upstream::{self, CallError, Caller};
use super::{Shared, Worker};
use crate::admission::{Classified, Decision, Ticket};
use crate::cache::{CacheKey, CacheStatus, CachedAnswer, KeyRef, Sharing};
use crate::coalesce::Joined;
use crate::config::{CacheScope, Class};
use crate::ids::PartnerId;
use crate::metrics::Outcome;

/// What a flight's waiters share: the biller's answer, or why there was none (a body that
/// broke off or a leader that died counts as the biller unreachable).
pub type Fetched = Result<Arc<CachedAnswer>, CallError>;

/// Answers larger than this are not held in memory for sharing; the leader's partner gets a
/// 502 (a bill answer is a few hundred bytes).
const MAX_SHARED_BODY: usize = 1024 * 1024;

/// A cacheable inquiry, classified.
pub struct Inquiry<'a> {
    pub classified: Classified<'a>,
    pub account: &'a str,
    pub cache_for: Duration,
    pub peer: HeaderValue,
    pub parts: &'a http::request::Parts,
}

pub async fn serve(
    worker: &Arc<Worker>,
    snapshot: &Arc<Snapshot>,
    inquiry: Inquiry<'_>,
    log: &mut AccessLog,
) -> Response<ProxyBody> {
    let shared = worker.shared();
    let c = inquiry.classified;
    let route = &snapshot.config.routes[c.route];
    let partner_id = &snapshot.gate.partners()[c.partner].id;
    let sharing = match route.cache_scope {
        CacheScope::Partner => Sharing::PerPartner,
        CacheScope::Shared => Sharing::Shared,
    };
    let key = KeyRef::new(&route.name, sharing, partner_id, inquiry.account);
    if let Some(answer) = shared.cache().get(key) {
        return from_memory(
            shared,
            snapshot,
            &c,
            &answer,
            CacheStatus::Hit,
            inquiry.parts,
            log,
        );
    }
    let key = key.to_key();
    // A follower whose leader was refused (or vanished) tries once more, most likely as leader.
    for _ in 0..2 {
        match shared.coalescer().join(&key) {
            Joined::Follower(waiter) => match waiter.wait().await {
                Ok(Ok(answer)) => {
                    return from_memory(
                        shared,
                        snapshot,
                        &c,
                        &answer,
                        CacheStatus::Coalesced,
                        inquiry.parts,
                        log,
                    )
                }
                Ok(Err(failure)) => return failed(snapshot, &c, failure, log),
                Err(_leader_gone) => continue,
            },
            Joined::Leader(flight) => {
                let admitted = match snapshot.gate.admit(c) {
                    Decision::Admit(admitted) => admitted,
                    // Dropping the flight tells its followers to try again.
                    Decision::Deny(denied) => return deny(shared, snapshot, denied, log),
                };
                let metrics = snapshot.partners[c.partner].metrics.class(c.class);
                if let Some(reason) = admitted.shadow {
                    metrics.shadow_rejected(reason);
                }
                let limit = admitted.limit;
                let leader = Leader {
                    worker: Arc::clone(worker),
                    snapshot: Arc::clone(snapshot),
                    key: flight.key().clone(),
                    partner: c.partner,
                    class: c.class,
                    ticket: admitted.ticket.into_owned(),
                    peer: inquiry.peer,
                    parts: clone_head(inquiry.parts),
                    cache_for: inquiry.cache_for,
                };
                let task = tokio::spawn(async move {
                    let (fetched, rtt) = leader.fetch().await;
                    flight.complete(fetched.clone());
                    (fetched, rtt)
                });
                let (fetched, rtt) = task.await.unwrap_or((Err(CallError::Unreachable), None));
                log.upstream = rtt;
                return match fetched {
                    Ok(answer) => {
                        metrics.outcome(Outcome::Forwarded);
                        log.outcome = "forwarded";
                        let now = shared.cache().now();
                        let mut response = full(&answer, now, CacheStatus::Miss);
                        snapshot.partners[c.partner]
                            .insert_ratelimit(response.headers_mut(), &limit);
                        response
                    }
                    Err(failure) => failed(snapshot, &c, failure, log),
                };
            }
        }
    }
    failed(snapshot, &c, CallError::Unreachable, log)
}

/// A hit or a coalesced answer: spends the hit's cost of the class quota, then serves the
/// answer (or a 304 when the partner's `If-None-Match` matches it).
fn from_memory(
    shared: &Shared,
    snapshot: &Snapshot,
    c: &Classified<'_>,
    answer: &CachedAnswer,
    status: CacheStatus,
    parts: &http::request::Parts,
    log: &mut AccessLog,
) -> Response<ProxyBody> {
    let admission = match snapshot
        .gate
        .admit_cached(c, snapshot.config.cache.hit_cost)
    {
        Ok(admission) => admission,
        Err(denied) => return deny(shared, snapshot, denied, log),
    };
    let metrics = snapshot.partners[c.partner].metrics.class(c.class);
    if let Some(reason) = admission.shadow {
        metrics.shadow_rejected(reason);
    }
    metrics.outcome(Outcome::Cached);
    log.outcome = match status {
        CacheStatus::Coalesced => "coalesced",
        _ => "cache_hit",
    };
    let now = shared.cache().now();
    let mut response = if answer.is_not_modified(&parts.headers) {
        let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.headers_mut() = answer.not_modified_headers(now, status);
        response
    } else {
        full(answer, now, status)
    };
    if let (Some(limit), Some(partner)) = (admission.limit, snapshot.partners.get(c.partner)) {
        partner.insert_ratelimit(response.headers_mut(), &limit);
    }
    response
}

fn full(
    answer: &CachedAnswer,
    now: governor::nanos::Nanos,
    status: CacheStatus,
) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Left(Full::new(answer.body.clone())));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers_for(now, status);
    response
}

fn failed(
    snapshot: &Snapshot,
    c: &Classified<'_>,
    failure: CallError,
    log: &mut AccessLog,
) -> Response<ProxyBody> {
    snapshot.partners[c.partner]
        .metrics
        .class(c.class)
        .outcome(Outcome::Failed);
    log.outcome = "failed";
    let partner = &*snapshot.gate.partners()[c.partner].id;
    refuse(failure.into(), Some(partner), Some(c.class), snapshot)
}

/// The request head, for the leader's own task.
/// `uri` without the one trailing slash a route match allows, when it has one.
fn without_trailing_slash(uri: &http::Uri) -> Option<http::Uri> {
    let path = uri.path();
    let trimmed = path.strip_suffix('/').filter(|p| !p.is_empty())?;
    let target = match uri.query() {
        Some(query) => format!("{trimmed}?{query}"),
        None => trimmed.to_owned(),
    };
    http::Uri::try_from(target).ok()
}

fn clone_head(parts: &http::request::Parts) -> http::request::Parts {
    let mut head = http::Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = parts.uri.clone();
    *head.version_mut() = parts.version;
    *head.headers_mut() = parts.headers.clone();
    head.into_parts().0
}

/// The biller call made for every waiter on one key.
struct Leader {
    worker: Arc<Worker>,
    snapshot: Arc<Snapshot>,
    key: CacheKey,
    partner: PartnerId,
    class: Class,
    ticket: Ticket<'static>,
    peer: HeaderValue,
    parts: http::request::Parts,
    cache_for: Duration,
}

impl Leader {
    async fn fetch(self) -> (Fetched, Option<Duration>) {
        let Leader {
            worker,
            snapshot,
            key,
            partner,
            class,
            ticket,
            peer,
            mut parts,
            cache_for,
        } = self;
        let shared = worker.shared();
        // Another flight may have stored it between the miss and this flight.
        if let Some(answer) = shared.cache().peek(&key) {
            drop(ticket);
            return (Ok(answer), None);
        }
        let requested_at = shared.cache().now();
        // The gateway answers conditional requests itself; a 304 from the biller could not be
        // shared or stored.
        parts.headers.remove(IF_NONE_MATCH);
        parts.headers.remove(IF_MODIFIED_SINCE);
        // `/v1/bills/42/` and `/v1/bills/42` share one answer in the cache, so the biller is
        // asked the one way the answer is kept under.
        if let Some(canonical) = without_trailing_slash(&parts.uri) {
            parts.uri = canonical;
        }
        let body = Full::new(Bytes::new());
        let caller = Caller {
            partner,
            class,
            ticket,
            peer,
        };
        let answered = match upstream::call(&worker, &snapshot, caller, parts, body).await {
            Ok(answered) => answered,
            Err(error) => return (Err(error), None),
        };
        let rtt = Some(answered.rtt);
        let (mut head, body) = answered.response.into_parts();
        headers::strip_hop_by_hop(&mut head.headers);
        let timeout = snapshot.config.biller.timeout;
        let read =
            tokio::time::timeout(timeout, Limited::new(body, MAX_SHARED_BODY).collect()).await;
        let Ok(Ok(collected)) = read else {
            return (Err(CallError::Unreachable), rtt);
        };
        let body = collected.to_bytes();
        let answer = match shared.cache().store(
            key,
            requested_at,
            head.status,
            &head.headers,
            body.clone(),
            cache_for,
        ) {
            Ok(answer) => answer,
            Err(not_stored) => {
                tracing::trace!(reason = not_stored.as_str(), "inquiry answer not cached");
                Arc::new(CachedAnswer::build(
                    requested_at,
                    head.status,
                    &head.headers,
                    &body,
                    Duration::ZERO,
                ))
            }
        };
        (Ok(answer), rtt)
    }
}
