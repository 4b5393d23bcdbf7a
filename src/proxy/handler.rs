//! One partner request, start to finish: classify, then answer from memory, refuse, or forward.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::access::AccessLog;
use super::answer::Refusal;
use super::body::{Deadline, ProxyBody};
use super::cached;
use super::headers;
use super::heads::Watch;
use super::snapshot::Snapshot;
use super::upstream::{self, Answered, CallError, Caller, UpstreamBody};
use super::{Shared, Worker};
use crate::admission::{Admitted, Classified, Decision, Denied, Limit, Reason, RequestParts};
use crate::config::{AccountSource, Class, Config, RouteClass};
use crate::ids::PartnerId;
use crate::metrics::{ClassMetrics, Outcome, RejectReason};

/// Serves one request. Never fails: every problem becomes an answer.
///
/// Hyper keeps one place per connection for this future, as large as its largest state, and
/// builds each request's future in it. The forwarding and cache paths are part of it, not
/// boxed: no allocation and no copy per request, for a larger place per connection.
pub async fn handle(
    worker: Arc<Worker>,
    peer: HeaderValue,
    watch: Arc<Watch>,
    certificate: Option<[u8; 32]>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    // Counted out when answered, or when the request is dropped unanswered.
    let serving = watch.serve();
    // The snapshot is held for the whole request: a reload never changes a request midway.
    let current = worker.snapshot();
    let snapshot = &current.snapshot;
    let started = snapshot
        .config
        .server
        .access_log
        .then(tokio::time::Instant::now);
    let mut log = AccessLog::default();
    let connection = Connection {
        peer,
        watch: &watch,
        certificate: certificate.as_ref(),
    };
    let response = serve(&worker, snapshot, connection, request, &mut log).await;
    if let Some(started) = started {
        log.emit(snapshot, response.status(), started.elapsed());
    }
    // The connection waits for its next head once this answer is out: a body streamed from
    // the biller may take until its deadline.
    serving.answered(match response.body() {
        Either::Right(streamed) => Some(streamed.deadline()),
        Either::Left(_) => None,
    });
    Ok(response)
}

/// What a request knows of the connection it came on.
struct Connection<'c> {
    /// `X-Forwarded-For`'s value for the partner's address.
    peer: HeaderValue,
    watch: &'c Watch,
    /// The SHA-256 of the client certificate its TLS handshake verified.
    certificate: Option<&'c [u8; 32]>,
}

async fn serve(
    worker: &Arc<Worker>,
    snapshot: &Arc<Snapshot>,
    connection: Connection<'_>,
    request: Request<Incoming>,
    log: &mut AccessLog,
) -> Response<ProxyBody> {
    let Connection {
        peer,
        watch,
        certificate,
    } = connection;
    let shared = worker.shared();
    let server = &snapshot.config.server;
    let (parts, body) = request.into_parts();
    if let Err(why) = unambiguous(&parts, watch) {
        shared.metrics().anonymous.rejected(RejectReason::Malformed);
        *log = AccessLog {
            outcome: "malformed_request",
            ..AccessLog::default()
        };
        return refuse(Refusal::Malformed(why), None, None, snapshot);
    }
    let key = match one_key(&parts.headers, &server.key_header) {
        Ok(key) => key,
        Err(denied) => return deny(shared, snapshot, denied, log),
    };
    if let Some(subscriptions) = shared.subscriptions() {
        if crate::subscriptions::api::is_api(parts.uri.path()) {
            *log = AccessLog {
                outcome: "subscription_api",
                ..AccessLog::default()
            };
            let caller = crate::subscriptions::api::Caller { key, certificate };
            return crate::subscriptions::api::serve(subscriptions, snapshot, caller, &parts, body)
                .await;
        }
    }
    let classified = snapshot.gate.classify(&RequestParts {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        key,
        origin_user: parts
            .headers
            .get(&server.origin_header)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"user")),
        certificate,
    });
    let classified = match classified {
        Ok(classified) => classified,
        Err(denied) => return deny(shared, snapshot, denied, log),
    };
    log.partner = Some(classified.partner);
    log.class = Some(classified.class);
    log.route = Some(classified.route);
    if let Some(cache_for) = cacheable(snapshot, &classified, &parts) {
        let request = cached::Inquiry {
            account: classified.account.unwrap_or_default(),
            classified,
            cache_for,
            peer,
            parts: &parts,
        };
        return cached::serve(worker, snapshot, request, log).await;
    }
    // Only a payment needs its account after the request has moved on: to invalidate answers.
    let account = classified
        .account
        .filter(|_| classified.class == Class::Payment)
        .map(str::to_owned);
    // The body is read whole before anything of the biller's is taken (the in-flight slot, a
    // breaker probe, a capacity token): a partner sending it slowly holds its own connection
    // and nothing the other partners need.
    let body = match read_body(&snapshot.config, &parts.headers, body, u64::MAX).await {
        Ok(body) => body,
        Err((refusal, reason)) => {
            let partner = &snapshot.partners[classified.partner];
            partner.metrics.class(classified.class).rejected(reason);
            log.outcome = reason.as_str();
            let id = &*snapshot.gate.partners()[classified.partner].id;
            return refuse(refusal, Some(id), Some(classified.class), snapshot);
        }
    };
    match snapshot.gate.admit(classified) {
        Decision::Deny(denied) => deny(shared, snapshot, denied, log),
        Decision::Admit(admitted) => {
            let forwarding = Forwarding::new(admitted, account);
            forward(worker, snapshot, forwarding, peer, parts, body, log).await
        }
    }
}

/// `Some(cache_for)` when the answer may come from memory: a GET on an inquiry route with
/// `cache_for`, naming its account, and no query but the account's (the cache key holds nothing
/// else).
fn cacheable(
    snapshot: &Snapshot,
    c: &Classified<'_>,
    parts: &http::request::Parts,
) -> Option<Duration> {
    let route = snapshot.config.routes.get(c.route)?;
    let cache_for = route.cache_for?;
    if parts.method != Method::GET || c.route_class != RouteClass::Inquiry || c.account.is_none() {
        return None;
    }
    let query = parts.uri.query().filter(|q| !q.is_empty());
    let only_account = match (&route.account, query) {
        (_, None) => true,
        (AccountSource::Query(name), Some(q)) => {
            !q.contains('&') && q.split_once('=').is_some_and(|(k, _)| k == name)
        }
        _ => false,
    };
    only_account.then_some(cache_for)
}

/// Answers a refusal, counting it.
pub(super) fn deny(
    shared: &Shared,
    snapshot: &Snapshot,
    denied: Denied,
    log: &mut AccessLog,
) -> Response<ProxyBody> {
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
        (None, _) => &shared.metrics().anonymous,
    };
    metrics.rejected(RejectReason::Admission(denied.reason));
    let gate_partner = denied.partner.and_then(|i| snapshot.gate.partners().get(i));
    let id = gate_partner.map(|p| &*p.id);
    // Only a suspension's refusal reads its detail (a reference count taken and dropped).
    if denied.reason == Reason::Suspended {
        if let Some(suspension) = gate_partner.and_then(|p| p.cell.get()) {
            return refuse(Refusal::Suspended(suspension), id, denied.class, snapshot);
        }
    }
    let prepared = partner.map_or(&snapshot.anonymous, |p| &p.denials);
    match prepared.get(&denied, id, snapshot.config.server.key_header.as_str()) {
        Some(prepared) => prepared.response(&denied).map(Either::Left),
        None => refuse(Refusal::Denied(denied), id, denied.class, snapshot),
    }
}

/// What forwarding needs of an admission, free of the request's borrows.
struct Forwarding<'g> {
    admitted: Admitted<'static, 'g>,
    /// The bill account named in the path or query, if any.
    account: Option<String>,
}

impl<'g> Forwarding<'g> {
    fn new(admitted: Admitted<'_, 'g>, account: Option<String>) -> Self {
        let Admitted {
            partner,
            class,
            route,
            limit,
            shadow,
            ticket,
            ..
        } = admitted;
        Forwarding {
            admitted: Admitted {
                partner,
                class,
                route,
                account: None,
                limit,
                shadow,
                ticket,
            },
            account,
        }
    }
}

/// Refuses what a cache, a biller or another proxy could read two ways: an HTTP/1.1 request
/// without exactly one `Host` (RFC 9112 §3.2), and a head with both `Content-Length` and
/// `Transfer-Encoding` (RFC 9112 §6.1). Either way the biller would only ever be sent
/// billgate's own framing of the body it read (`headers::to_biller`).
fn unambiguous(parts: &http::request::Parts, watch: &Watch) -> Result<(), &'static str> {
    // hyper keeps `Transfer-Encoding` and drops a `Content-Length` sent beside it: only the
    // connection's raw bytes tell whether there was one.
    if parts.headers.contains_key(http::header::TRANSFER_ENCODING) && watch.both_lengths() {
        return Err("a request may carry Content-Length or Transfer-Encoding, not both");
    }
    if parts.version == http::Version::HTTP_11 {
        match parts.headers.get_all(http::header::HOST).iter().count() {
            1 => {}
            0 => return Err("an HTTP/1.1 request needs a Host header"),
            _ => return Err("an HTTP/1.1 request may carry one Host header, not several"),
        }
    }
    Ok(())
}

/// The partner's key: absent, or one value however often it is repeated. Two different values
/// name no one partner, so the request is refused as an unknown key, never decided by the first.
fn one_key<'h>(
    headers: &'h http::HeaderMap,
    name: &http::HeaderName,
) -> Result<Option<&'h [u8]>, Denied> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.any(|other| other != first) {
        return Err(Denied {
            reason: Reason::UnknownKey,
            partner: None,
            class: None,
            route: None,
            limit: None,
            retry_after: None,
        });
    }
    Ok(Some(first.as_bytes()))
}

pub(super) fn refuse(
    refusal: Refusal,
    partner: Option<&str>,
    class: Option<Class>,
    snapshot: &Snapshot,
) -> Response<ProxyBody> {
    refusal
        .response::<Full<Bytes>>(partner, class, snapshot.config.server.key_header.as_str())
        .map(Either::Left)
}

/// Forwards an admitted request, its body already read, and answers with the biller's
/// response: call the biller, finish (record the outcome, build the answer).
async fn forward(
    worker: &Worker,
    snapshot: &Snapshot,
    forwarding: Forwarding<'_>,
    peer: HeaderValue,
    parts: http::request::Parts,
    body: Bytes,
    log: &mut AccessLog,
) -> Response<ProxyBody> {
    let Forwarding { admitted, account } = forwarding;
    let to = Answering::new(snapshot, &admitted);
    if let Some(reason) = admitted.shadow {
        to.metrics.shadow_rejected(reason);
    }
    let account = payment_account(&snapshot.config, &admitted, &body, account);
    let caller = Caller {
        partner: admitted.partner,
        class: admitted.class,
        ticket: admitted.ticket,
        peer,
    };
    let result = call_biller(worker, snapshot, caller, parts, body, account).await;
    finish(&to, &admitted.limit, result, log)
}

/// Who an admitted request's answer is for, and where it is counted.
struct Answering<'a> {
    snapshot: &'a Snapshot,
    partner: PartnerId,
    partner_id: &'a str,
    class: Class,
    metrics: &'a ClassMetrics,
}

impl<'a> Answering<'a> {
    fn new(snapshot: &'a Snapshot, admitted: &Admitted<'_, '_>) -> Answering<'a> {
        Answering {
            snapshot,
            partner: admitted.partner,
            partner_id: &snapshot.gate.partners()[admitted.partner].id,
            class: admitted.class,
            metrics: snapshot.partners[admitted.partner]
                .metrics
                .class(admitted.class),
        }
    }
}

/// Reads the partner's body whole, capped at `max_body_bytes` and within the biller timeout,
/// before the biller is called: a partner sending it slowly holds neither the biller nor its
/// call's timeout, and a slow body is the partner's 408, never a biller timeout counted against
/// the breaker. Reading a body, which inquiries do not have, is boxed: the request's future
/// stays no larger than an inquiry needs.
pub async fn read_body(
    config: &Config,
    headers: &http::HeaderMap,
    body: Incoming,
    most: u64,
) -> Result<Bytes, (Refusal, RejectReason)> {
    let limit = config.server.max_body_bytes.min(most);
    let too_large = || (Refusal::BodyTooLarge { limit }, RejectReason::BodyTooLarge);
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let timeout = config.biller.timeout;
    let capped = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match Box::pin(tokio::time::timeout(timeout, capped.collect())).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err((Refusal::BodyIncomplete, RejectReason::BodyIncomplete)),
        Err(_elapsed) => Err((Refusal::BodyTimeout { timeout }, RejectReason::BodyTimeout)),
    }
}

/// The bill account a payment is for: the one named in its JSON body (the route's
/// `account_field`), else the one in its path or query. Only a payment's is kept: its account's
/// cached inquiry answers are dropped once the biller has it.
fn payment_account(
    config: &Config,
    admitted: &Admitted<'_, '_>,
    body: &Bytes,
    named: Option<String>,
) -> Option<String> {
    let route = &config.routes[admitted.route];
    match &route.account_field {
        Some(field) if route.class == RouteClass::Payment => {
            serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| {
                    v.get(field.as_str())
                        .and_then(|a| a.as_str())
                        .map(str::to_owned)
                })
                .or(named)
        }
        _ => named,
    }
}

/// Calls the biller with the partner's request and body. Answered or not, a payment may have
/// reached the biller: its account's cached answers are dropped.
async fn call_biller(
    worker: &Worker,
    snapshot: &Snapshot,
    caller: Caller<'_>,
    parts: http::request::Parts,
    body: Bytes,
    account: Option<String>,
) -> Result<Answered, CallError> {
    let payment = caller.class == Class::Payment;
    let body: UpstreamBody = Full::new(body);
    let result = upstream::call(worker, snapshot, caller, parts, body).await;
    if payment {
        if let Some(account) = &account {
            worker.shared().cache().invalidate_account(account);
        }
    }
    result
}

/// Records the call's outcome and builds the partner's answer: the biller's, streamed with a
/// deadline and the `RateLimit` fields, or the gateway's own for a call that brought none.
fn finish(
    to: &Answering<'_>,
    limit: &Limit,
    result: Result<Answered, CallError>,
    log: &mut AccessLog,
) -> Response<ProxyBody> {
    let answered = match result {
        Ok(answered) => answered,
        Err(error) => {
            to.metrics.outcome(Outcome::Failed);
            log.outcome = "failed";
            return refuse(
                error.into(),
                Some(to.partner_id),
                Some(to.class),
                to.snapshot,
            );
        }
    };
    log.upstream = Some(answered.rtt);
    to.metrics.outcome(Outcome::Forwarded);
    log.outcome = "forwarded";

    let (mut parts, body) = answered.response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    to.snapshot.partners[to.partner].insert_ratelimit(&mut parts.headers, limit);
    // The body gets as long again as the head was allowed.
    let timeout = to
        .snapshot
        .config
        .biller
        .timeout
        .max(Duration::from_millis(1));
    let deadline = answered.at + timeout;
    Response::from_parts(parts, Either::Right(Deadline::new(body, deadline)))
}
