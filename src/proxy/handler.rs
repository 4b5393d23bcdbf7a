//! One partner request, start to finish: decide, then answer or forward.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::access::AccessLog;
use super::answer::{insert_ratelimit, Refusal};
use super::body::{Deadline, ProxyBody};
use super::headers;
use super::snapshot::{Snapshot, Upstream};
use super::Shared;
use crate::admission::{Admitted, BillerOutcome, Decision, Limit, Reason, RequestParts, Ticket};
use crate::config::Class;
use crate::metrics::{Outcome, RejectReason, UpstreamError};

/// Serves one request. Never fails: every problem becomes an answer.
pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = tokio::time::Instant::now();
    // The snapshot is held for the whole request: a reload never changes a request midway.
    let snapshot = shared.snapshot.load_full();
    let mut log = AccessLog::default();
    let response = serve(&shared, &snapshot, peer, request, &mut log).await;
    log.emit(&snapshot, response.status(), started.elapsed());
    Ok(response)
}

async fn serve(
    shared: &Shared,
    snapshot: &Snapshot,
    peer: SocketAddr,
    request: Request<Incoming>,
    log: &mut AccessLog,
) -> Response<ProxyBody> {
    let server = &snapshot.config.server;
    let (parts, body) = request.into_parts();
    let decision = snapshot.gate.decide(&RequestParts {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        key: parts.headers.get(&server.key_header).map(|v| v.as_bytes()),
        origin_user: parts
            .headers
            .get(&server.origin_header)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"user")),
    });
    let admitted = match decision {
        Decision::Deny(denied) => {
            *log = AccessLog {
                partner: denied.partner,
                class: denied.class,
                route: denied.route,
                outcome: denied.reason.as_str(),
                upstream: None,
            };
            let partner = denied.partner.and_then(|i| snapshot.partners.get(i));
            let metrics = match (partner, denied.class) {
                (Some(p), Some(class)) => p.metrics.class(class),
                (Some(p), None) => &p.metrics.unrouted,
                (None, _) => &shared.metrics.anonymous,
            };
            metrics.rejected(RejectReason::Admission(denied.reason));
            let gate_partner = denied.partner.and_then(|i| snapshot.gate.partners().get(i));
            let id = gate_partner.map(|p| &*p.id);
            let refusal = match gate_partner.and_then(|p| p.suspension.get()) {
                Some(suspension) if denied.reason == Reason::Suspended => {
                    Refusal::Suspended(suspension)
                }
                _ => Refusal::Denied(denied),
            };
            return refuse(refusal, id, denied.class, snapshot);
        }
        Decision::Admit(admitted) => {
            log.partner = Some(admitted.partner);
            log.class = Some(admitted.class);
            log.route = Some(admitted.route);
            Forwarding::from(admitted)
        }
    };
    forward(shared, snapshot, admitted, peer, parts, body, log).await
}

/// What forwarding needs of an admission, free of the request's borrows.
struct Forwarding {
    partner: usize,
    class: Class,
    limit: Limit,
    shadow: Option<Reason>,
    ticket: Ticket,
}

impl From<Admitted<'_>> for Forwarding {
    fn from(a: Admitted<'_>) -> Self {
        Forwarding {
            partner: a.partner,
            class: a.class,
            limit: a.limit,
            shadow: a.shadow,
            ticket: a.ticket,
        }
    }
}

fn refuse(
    refusal: Refusal,
    partner: Option<&str>,
    class: Option<Class>,
    snapshot: &Snapshot,
) -> Response<ProxyBody> {
    refusal
        .response::<Full<Bytes>>(partner, class, snapshot.config.server.key_header.as_str())
        .map(Either::Left)
}

async fn forward(
    shared: &Shared,
    snapshot: &Snapshot,
    admitted: Forwarding,
    peer: SocketAddr,
    mut parts: http::request::Parts,
    body: Incoming,
    log: &mut AccessLog,
) -> Response<ProxyBody> {
    let config = &snapshot.config;
    let partner = &snapshot.partners[admitted.partner];
    let partner_id = &*snapshot.gate.partners()[admitted.partner].id;
    let class = admitted.class;
    let metrics = partner.metrics.class(class);
    if let Some(reason) = admitted.shadow {
        metrics.shadow_rejected(reason);
    }

    let max_body = config.server.max_body_bytes;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body) {
        metrics.rejected(RejectReason::BodyTooLarge);
        log.outcome = "body_too_large";
        return refuse(
            Refusal::BodyTooLarge { limit: max_body },
            Some(partner_id),
            Some(class),
            snapshot,
        );
    }

    let Some(uri) = upstream_uri(&snapshot.upstream, parts.uri.path_and_query()) else {
        // Only reachable if the request target cannot be re-encoded; treat as no route.
        metrics.outcome(Outcome::Failed);
        log.outcome = "failed";
        return refuse(
            Refusal::BillerUnreachable,
            Some(partner_id),
            Some(class),
            snapshot,
        );
    };
    headers::to_biller(
        &mut parts.headers,
        &config.server.key_header,
        &config.server.partner_header,
        &partner.header_value,
        &snapshot.upstream.host,
        peer.ip(),
    );
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let upstream_request = Request::from_parts(parts, Limited::new(body, limit));

    let timeout = config.biller.timeout;
    let started = tokio::time::Instant::now();
    shared.metrics.upstream_in_flight.inc();
    let result = tokio::time::timeout(timeout, shared.client.request(upstream_request)).await;
    shared.metrics.upstream_in_flight.dec();
    let rtt = started.elapsed();
    log.upstream = Some(rtt);
    log.outcome = "failed";
    let ticket = admitted.ticket;
    let response = match result {
        Err(_elapsed) => {
            ticket.finish(BillerOutcome::TimedOut);
            shared.metrics.upstream_error(UpstreamError::Timeout);
            metrics.outcome(Outcome::Failed);
            return refuse(
                Refusal::BillerTimeout { timeout },
                Some(partner_id),
                Some(class),
                snapshot,
            );
        }
        Ok(Err(error)) => {
            if is_body_too_large(&error) {
                ticket.finish(BillerOutcome::NotSent);
                metrics.rejected(RejectReason::BodyTooLarge);
                log.outcome = "body_too_large";
                return refuse(
                    Refusal::BodyTooLarge { limit: max_body },
                    Some(partner_id),
                    Some(class),
                    snapshot,
                );
            }
            ticket.finish(BillerOutcome::Unreachable);
            tracing::debug!(partner = partner_id, error = %error, "biller unreachable");
            shared.metrics.upstream_error(UpstreamError::Connect);
            metrics.outcome(Outcome::Failed);
            return refuse(
                Refusal::BillerUnreachable,
                Some(partner_id),
                Some(class),
                snapshot,
            );
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status().as_u16();
    ticket.finish(BillerOutcome::Answered { status, rtt });
    if status == 429 || status == 503 {
        honour_pause(snapshot, class, response.headers());
    }
    shared
        .metrics
        .upstream_duration(class)
        .observe(started.elapsed().as_secs_f64());
    metrics.outcome(Outcome::Forwarded);
    log.outcome = "forwarded";

    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    insert_ratelimit(&mut parts.headers, &admitted.limit);
    // The body gets as long again as the head was allowed.
    let deadline = tokio::time::Instant::now() + timeout.max(Duration::from_millis(1));
    Response::from_parts(parts, Either::Right(Deadline::new(body, deadline)))
}

/// The longest pause the gateway takes on the biller's word.
const MAX_PAUSE: Duration = Duration::from_secs(300);

/// A 429/503 from the biller with `Retry-After: N` pauses the partner it names (by the
/// configured header) or else the whole class, for N seconds, instead of hammering it.
fn honour_pause(snapshot: &Snapshot, class: Class, headers: &http::HeaderMap) {
    let Some(wait) = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(MAX_PAUSE))
        .filter(|wait| !wait.is_zero())
    else {
        return;
    };
    let named = snapshot
        .config
        .biller
        .pause_partner_header
        .as_ref()
        .and_then(|h| headers.get(h))
        .and_then(|v| v.to_str().ok())
        .and_then(|id| {
            snapshot
                .gate
                .partners()
                .iter()
                .position(|p| &*p.id == id.trim())
        });
    tracing::warn!(
        class = class.as_str(),
        partner = named.map(|i| &*snapshot.gate.partners()[i].id),
        seconds = wait.as_secs(),
        "the biller asked for a pause"
    );
    snapshot.gate.pause(class, named, wait);
}

/// `http://biller[/base]` + the request's path and query.
fn upstream_uri(upstream: &Upstream, path_and_query: Option<&PathAndQuery>) -> Option<Uri> {
    let pq = path_and_query.map(PathAndQuery::as_str).unwrap_or("/");
    let pq = if upstream.base_path.is_empty() {
        PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(pq.as_bytes())).ok()?
    } else {
        PathAndQuery::from_maybe_shared(Bytes::from(format!("{}{pq}", upstream.base_path))).ok()?
    };
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(pq)
        .build()
        .ok()
}

/// Whether a client error was caused by the request body passing its limit.
fn is_body_too_large(error: &(dyn StdError + 'static)) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}
