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

use super::answer::{insert_ratelimit, Refusal};
use super::body::{Deadline, ProxyBody};
use super::headers;
use super::snapshot::{Snapshot, Upstream};
use super::Shared;
use crate::admission::{Admitted, Decision, Limit, Reason, RequestParts};
use crate::config::Class;
use crate::metrics::{Outcome, RejectReason, UpstreamError};

/// Serves one request. Never fails: every problem becomes an answer.
pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    // The snapshot is held for the whole request: a reload never changes a request midway.
    let snapshot = shared.snapshot.load_full();
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
            let partner = denied.partner.and_then(|i| snapshot.partners.get(i));
            let metrics = match (partner, denied.class) {
                (Some(p), Some(class)) => p.metrics.class(class),
                (Some(p), None) => &p.metrics.unrouted,
                (None, _) => &shared.metrics.anonymous,
            };
            metrics.rejected(RejectReason::Admission(denied.reason));
            let id = denied.partner.map(|i| &*snapshot.gate.partners()[i].id);
            return Ok(refuse(Refusal::Denied(denied), id, denied.class, &snapshot));
        }
        Decision::Admit(admitted) => Forwarding::from(admitted),
    };
    forward(&shared, &snapshot, admitted, peer, parts, body).await
}

/// What forwarding needs of an admission, free of the request's borrows.
struct Forwarding {
    partner: usize,
    class: Class,
    limit: Limit,
    shadow: Option<Reason>,
}

impl From<Admitted<'_>> for Forwarding {
    fn from(a: Admitted<'_>) -> Self {
        Forwarding {
            partner: a.partner,
            class: a.class,
            limit: a.limit,
            shadow: a.shadow,
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
) -> Result<Response<ProxyBody>, Infallible> {
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
        return Ok(refuse(
            Refusal::BodyTooLarge { limit: max_body },
            Some(partner_id),
            Some(class),
            snapshot,
        ));
    }

    let Some(uri) = upstream_uri(&snapshot.upstream, parts.uri.path_and_query()) else {
        // Only reachable if the request target cannot be re-encoded; treat as no route.
        metrics.outcome(Outcome::Failed);
        return Ok(refuse(
            Refusal::BillerUnreachable,
            Some(partner_id),
            Some(class),
            snapshot,
        ));
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
    let response = match result {
        Err(_elapsed) => {
            shared.metrics.upstream_error(UpstreamError::Timeout);
            metrics.outcome(Outcome::Failed);
            return Ok(refuse(
                Refusal::BillerTimeout { timeout },
                Some(partner_id),
                Some(class),
                snapshot,
            ));
        }
        Ok(Err(error)) => {
            if is_body_too_large(&error) {
                metrics.rejected(RejectReason::BodyTooLarge);
                return Ok(refuse(
                    Refusal::BodyTooLarge { limit: max_body },
                    Some(partner_id),
                    Some(class),
                    snapshot,
                ));
            }
            tracing::debug!(partner = partner_id, error = %error, "biller unreachable");
            shared.metrics.upstream_error(UpstreamError::Connect);
            metrics.outcome(Outcome::Failed);
            return Ok(refuse(
                Refusal::BillerUnreachable,
                Some(partner_id),
                Some(class),
                snapshot,
            ));
        }
        Ok(Ok(response)) => response,
    };
    shared
        .metrics
        .upstream_duration(class)
        .observe(started.elapsed().as_secs_f64());
    metrics.outcome(Outcome::Forwarded);

    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    insert_ratelimit(&mut parts.headers, &admitted.limit);
    // The body gets as long again as the head was allowed.
    let deadline = tokio::time::Instant::now() + timeout.max(Duration::from_millis(1));
    Ok(Response::from_parts(
        parts,
        Either::Right(Deadline::new(body, deadline)),
    ))
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
