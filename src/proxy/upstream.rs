//! One call to the biller: the request made fit to send (URI, header hygiene), sent on the
//! worker's pool within the timeout, and its outcome fed to the breaker, the adaptive limit, the
//! pauses and the metrics. Used by forwarding and by the cache's leader alike. The timeout is
//! tokio's: a per-worker table of deadlines, and forwarding written out as one future, saved
//! 1 100 instructions of 34 900 per forwarded request, within the noise end to end
//! (`benches/results/hyper-std.txt`).

use http::HeaderValue;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body_util::Full;
use tokio::time::Instant;

use super::headers;
use super::pool::PooledBody;
use super::snapshot::{Snapshot, Upstream};
use super::Worker;
use crate::admission::{BillerOutcome, Ticket};
use crate::config::Class;
use crate::ids::PartnerId;
use crate::metrics::UpstreamError;

/// What the gateway sends the biller: a body it holds whole (the partner's, read before the
/// call, or its own).
pub type UpstreamBody = Full<Bytes>;

/// Why a call brought no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// No answer within `[biller] timeout`.
    Timeout(Duration),
    /// No connection (refused, or not within `[biller] connect_timeout`), or the exchange broke.
    Unreachable,
    /// The gateway had no socket to call with (out of file descriptors or local ports):
    /// nothing was sent, and the biller is not blamed.
    NoSocket,
}

/// An answered call.
pub struct Answered {
    pub response: Response<PooledBody>,
    /// Time to the response head.
    pub rtt: Duration,
    /// When the response head came.
    pub at: Instant,
}

/// Who a call is for, and its right to reach the biller.
pub struct Caller<'g> {
    pub partner: PartnerId,
    pub class: Class,
    pub ticket: Ticket<'g>,
    /// The partner's address as an `x-forwarded-for` value.
    pub peer: HeaderValue,
}

/// Sends `parts` + `body` to the biller for `caller`, on `worker`'s pool.
pub async fn call(
    worker: &Worker,
    snapshot: &Snapshot,
    caller: Caller<'_>,
    mut parts: http::request::Parts,
    body: UpstreamBody,
) -> Result<Answered, CallError> {
    let Caller {
        partner,
        class,
        ticket,
        peer,
    } = caller;
    let shared = worker.shared();
    let config = &snapshot.config;
    if !to_upstream_uri(&snapshot.upstream, &mut parts.uri) {
        ticket.finish(BillerOutcome::NotSent);
        return Err(CallError::Unreachable);
    }
    headers::to_biller(
        &mut parts.headers,
        &config.server.key_header,
        &config.server.partner_header,
        &snapshot.partners[partner].header_value,
        &snapshot.upstream.host,
        &peer,
    );
    parts.version = Version::HTTP_11;
    let request = Request::from_parts(parts, body);

    // The call reads the clock twice: here, for its deadline, the pool and the round trip; and
    // at the answer, for the round trip and the body's deadline.
    let timeout = config.biller.timeout;
    let started = Instant::now();
    let sent = worker
        .pool()
        .send(snapshot.upstream.target(), request, started);
    let result = tokio::time::timeout_at(started + timeout, sent).await;
    let at = Instant::now();
    let rtt = at.saturating_duration_since(started);
    match result {
        Err(_elapsed) => {
            ticket.finish(BillerOutcome::TimedOut);
            shared.metrics().upstream_error(UpstreamError::Timeout);
            Err(CallError::Timeout(timeout))
        }
        Ok(Err(error)) if error.is_gateway_exhausted() => {
            ticket.finish(BillerOutcome::NotSent);
            // Counted (`billgate_upstream_errors_total{kind="no_socket"}`); the pool warns once
            // per run of such failures, not per call.
            tracing::debug!(error = %error, "no socket for a call to the biller");
            shared.metrics().upstream_error(UpstreamError::NoSocket);
            Err(CallError::NoSocket)
        }
        Ok(Err(error)) => {
            ticket.finish(BillerOutcome::Unreachable);
            tracing::debug!(error = %error, "biller unreachable");
            shared.metrics().upstream_error(UpstreamError::Connect);
            Err(CallError::Unreachable)
        }
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            ticket.finish(BillerOutcome::Answered { status, rtt });
            if status == 429 || status == 503 {
                honour_pause(snapshot, class, response.headers());
            }
            shared
                .metrics()
                .upstream_duration(class)
                .observe(rtt.as_secs_f64());
            Ok(Answered { response, rtt, at })
        }
    }
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
                .entries()
                .find_map(|(n, p)| (&*p.id == id.trim()).then_some(n))
        });
    tracing::warn!(
        class = class.as_str(),
        partner = named.map(|i| &*snapshot.gate.partners()[i].id),
        wait_ms = crate::logging::ms(wait),
        "the biller asked for a pause"
    );
    snapshot.gate.pause(class, named, wait);
}

/// Turns the request's target into its path and query in origin-form, under the biller's base
/// path; false when that is not a valid target. The partner's own origin-form target is left
/// as it is: no copy, no reference count touched.
fn to_upstream_uri(upstream: &Upstream, uri: &mut Uri) -> bool {
    let pq = uri.path_and_query();
    if upstream.base_path.is_empty() {
        if uri.scheme().is_none() && uri.authority().is_none() {
            return true;
        }
        let pq = pq
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *uri = Uri::from(pq);
        return true;
    }
    let pq = pq.map(PathAndQuery::as_str).unwrap_or("/");
    let joined =
        PathAndQuery::from_maybe_shared(Bytes::from(format!("{}{pq}", upstream.base_path)));
    match joined {
        Ok(joined) => {
            *uri = Uri::from(joined);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::uri::{Authority, Scheme};

    fn upstream(base_path: &str) -> Upstream {
        Upstream {
            address: "127.0.0.1:9".into(),
            connect_timeout: Duration::from_secs(1),
            scheme: Scheme::HTTP,
            authority: Authority::from_static("127.0.0.1:9"),
            base_path: base_path.to_owned(),
            host: HeaderValue::from_static("127.0.0.1:9"),
            tls: None,
        }
    }

    fn sent(base_path: &str, target: &str) -> Option<String> {
        let mut uri: Uri = target.parse().ok()?;
        to_upstream_uri(&upstream(base_path), &mut uri).then(|| uri.to_string())
    }

    #[test]
    fn the_target_goes_in_origin_form_under_the_base_path() {
        // (base path, the partner's target, what the biller gets). An absolute-form target
        // loses its scheme and authority: the biller gets the path.
        let cases = [
            ("", "/v1/bills/7?x=1", "/v1/bills/7?x=1"),
            ("/ebpp/v2", "/v1/bills/7?x=1", "/ebpp/v2/v1/bills/7?x=1"),
            ("", "http://gateway.example/v1/bills/7", "/v1/bills/7"),
            (
                "/ebpp",
                "http://gateway.example/v1/payments",
                "/ebpp/v1/payments",
            ),
        ];
        for (base, target, expected) in cases {
            assert_eq!(
                sent(base, target).as_deref(),
                Some(expected),
                "{base} {target}"
            );
        }
    }

    #[test]
    fn an_origin_form_target_is_sent_as_it_came() {
        let mut uri: Uri = "/v1/bills/7".parse().unwrap();
        let before = uri.path().as_ptr();
        assert!(to_upstream_uri(&upstream(""), &mut uri));
        // The same bytes: neither copied nor rebuilt.
        assert_eq!(uri.path().as_ptr(), before);
    }
}
