//! Every answer the gateway gives on its own — denials and upstream failures — in one place:
//! the status, `Retry-After`, the `RateLimit` fields and the RFC 9457 problem body.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, Response, StatusCode};
use serde::Serialize;

use std::sync::Arc;

use super::upstream::CallError;
use crate::admission::{Denied, Limit, Reason, Remaining, Suspension};
use crate::clock::ceil_secs;
use crate::config::Class;

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// Something the gateway answers itself.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The admission decision said no.
    Denied(Denied),
    /// The partner is suspended by the operators; the reason is theirs, passed on verbatim.
    Suspended(Arc<Suspension>),
    /// The request body is larger than `max_body_bytes`.
    BodyTooLarge { limit: u64 },
    /// The request body did not arrive whole within `[biller] timeout`.
    BodyTimeout { timeout: Duration },
    /// The request body broke off before its end.
    BodyIncomplete,
    /// The request could be read two ways (HTTP/1.1 without exactly one `Host`): refused
    /// before anything is decided.
    Malformed(&'static str),
    /// The biller could not be connected to, or broke the exchange.
    BillerUnreachable,
    /// The biller did not answer within `[biller] timeout`.
    BillerTimeout { timeout: Duration },
    /// The gateway had no socket left to call the biller with (file descriptors or local
    /// ports all in use): nothing was sent.
    NoSocket,
}

impl From<CallError> for Refusal {
    /// What the partner is told when its call brought no answer.
    fn from(error: CallError) -> Refusal {
        match error {
            CallError::Timeout(timeout) => Refusal::BillerTimeout { timeout },
            CallError::Unreachable => Refusal::BillerUnreachable,
            CallError::NoSocket => Refusal::NoSocket,
        }
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    partner: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    class: Option<&'a str>,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    /// When a suspension began, seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    suspended_since: Option<u64>,
}

impl Refusal {
    /// The reason label for metrics and the problem body.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Denied(d) => d.reason.as_str(),
            Refusal::Suspended(_) => "suspended",
            Refusal::BodyTooLarge { .. } => "body_too_large",
            Refusal::BodyTimeout { .. } => "body_timeout",
            Refusal::BodyIncomplete => "body_incomplete",
            Refusal::Malformed(_) => "malformed_request",
            Refusal::BillerUnreachable => "biller_unreachable",
            Refusal::BillerTimeout { .. } => "biller_timeout",
            Refusal::NoSocket => "gateway_out_of_sockets",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Denied(d) => match d.reason {
                Reason::MissingKey
                | Reason::UnknownKey
                | Reason::KeyCertificateMismatch
                | Reason::CertificateRequired => StatusCode::UNAUTHORIZED,
                Reason::NoRoute => StatusCode::NOT_FOUND,
                Reason::BadAccount => StatusCode::BAD_REQUEST,
                Reason::ClassClosed | Reason::Suspended => StatusCode::FORBIDDEN,
                Reason::PartnerQuota | Reason::AccountQuota | Reason::AccountTableFull => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                Reason::BillerCapacity
                | Reason::BillerPaused
                | Reason::BreakerOpen
                | Reason::BillerBusy
                | Reason::BillerStrained => StatusCode::SERVICE_UNAVAILABLE,
            },
            Refusal::Suspended(_) => StatusCode::FORBIDDEN,
            Refusal::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Refusal::BodyIncomplete | Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            Refusal::BillerUnreachable => StatusCode::BAD_GATEWAY,
            Refusal::BillerTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Refusal::NoSocket => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Refusal::Denied(d) => match d.reason {
                Reason::MissingKey => "API key required",
                Reason::UnknownKey => "Unknown API key",
                Reason::NoRoute => "No such route",
                Reason::ClassClosed => "Class not allowed for this partner",
                Reason::PartnerQuota => "Partner quota exceeded",
                Reason::AccountQuota => "Bill account asked about too often",
                Reason::AccountTableFull => "Too many distinct bill accounts",
                Reason::BillerCapacity => "Biller at capacity",
                Reason::Suspended => "Partner suspended",
                Reason::BillerPaused => "Biller asked for a pause",
                Reason::BreakerOpen => "Biller failing; requests held back",
                Reason::BillerBusy => "Biller busy",
                Reason::BillerStrained => "Biller struggling; inquiries held back",
                Reason::BadAccount => "Bill account not accepted",
                Reason::KeyCertificateMismatch => "API key and client certificate disagree",
                Reason::CertificateRequired => "Client certificate required",
            },
            Refusal::Suspended(_) => "Partner suspended",
            Refusal::BodyTooLarge { .. } => "Request body too large",
            Refusal::BodyTimeout { .. } => "Request body too slow",
            Refusal::BodyIncomplete => "Request body incomplete",
            Refusal::Malformed(_) => "Malformed request",
            Refusal::BillerUnreachable => "Biller unreachable",
            Refusal::BillerTimeout { .. } => "Biller timed out",
            Refusal::NoSocket => "Gateway out of connections",
        }
    }

    fn detail(&self, partner: Option<&str>, class: Option<Class>, key_header: &str) -> String {
        let who = partner.unwrap_or("the caller");
        let class = class.map(Class::as_str).unwrap_or("this request");
        match self {
            Refusal::Denied(d) => {
                let wait = d.retry_after.map(|w| ceil_secs(w).max(1)).unwrap_or(0);
                let rate = d.limit.map(|l| l.rate.to_string()).unwrap_or_default();
                match d.reason {
                    Reason::MissingKey => format!("send your API key in the `{key_header}` header"),
                    Reason::UnknownKey => format!("the key in `{key_header}` belongs to no partner"),
                    Reason::NoRoute => "no route of the gateway matches this method and path".into(),
                    Reason::ClassClosed => format!("{who} has no quota for {class}; ask the biller's operators to open it"),
                    Reason::PartnerQuota => format!("{who} sent more {class} requests than its quota of {rate}; retry in {wait}s"),
                    Reason::AccountQuota => format!("this bill account may be asked about {rate}; retry in {wait}s"),
                    Reason::AccountTableFull => format!("{who} is asking about more distinct bill accounts than the gateway tracks; retry in {wait}s"),
                    Reason::BillerCapacity => format!("the biller's capacity is spent by all partners together; retry in {wait}s"),
                    Reason::Suspended => format!("{who} is suspended by the biller's operators"),
                    Reason::BillerPaused => format!("the biller asked the gateway to hold {class} requests; retry in {wait}s"),
                    Reason::BreakerOpen => format!("the biller is failing, so the gateway holds {class} requests back instead of adding to its load; retry in {wait}s"),
                    Reason::BillerStrained => format!("the biller is failing or slowing down, so the gateway sends it fewer inquiries until it recovers (payments go first); retry in {wait}s"),
                    Reason::BillerBusy => format!("the biller has as many requests in hand as it can answer quickly; {class} requests wait for payments to go first; retry in {wait}s"),
                    Reason::KeyCertificateMismatch => format!("the key in `{key_header}` does not belong to the partner the connection's client certificate identifies; send that partner's key, or none"),
                    Reason::CertificateRequired => format!("{who} is identified by its client certificate: connect over TLS with one of its certificates (its key alone is not enough)"),
                    Reason::BadAccount => format!("the bill account must be at most {} bytes, with no encoded slash (%2F), no `..` or `.`, and no control character; nothing was sent to the biller", crate::admission::MAX_ACCOUNT_LEN),
                }
            }
            Refusal::Suspended(s) => format!("{who} is suspended by the biller's operators: {}", s.reason),
            Refusal::BodyTooLarge { limit } => format!("request bodies are limited to {limit} bytes"),
            Refusal::BodyTimeout { timeout } => format!("the request body did not arrive within {}ms; nothing was sent to the biller", timeout.as_millis()),
            Refusal::BodyIncomplete => "the request body ended before its declared end; nothing was sent to the biller".into(),
            Refusal::Malformed(why) => format!("{why}; nothing was sent to the biller"),
            Refusal::BillerUnreachable => "the gateway could not reach the biller; nothing was delivered if the connection failed".into(),
            Refusal::BillerTimeout { timeout } => format!("the biller did not answer within {}ms; the outcome is unknown", timeout.as_millis()),
            Refusal::NoSocket => "the gateway has no connection free to reach the biller with; nothing was sent; retry in 1s".into(),
        }
    }

    /// The seconds `Retry-After` says, if waiting helps.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Refusal::Denied(d) => d.retry_after.map(|w| ceil_secs(w).max(1)),
            Refusal::NoSocket => Some(1),
            _ => None,
        }
    }

    /// The RFC 9457 problem body.
    fn problem(&self, partner: Option<&str>, class: Option<Class>, key_header: &str) -> Vec<u8> {
        let suspended_since = match self {
            Refusal::Suspended(s) => Some(s.since_unix),
            _ => None,
        };
        let problem = Problem {
            suspended_since,
            kind: format!("urn:billgate:problem:{}", self.reason()),
            title: self.title(),
            status: self.status().as_u16(),
            detail: self.detail(partner, class, key_header),
            partner,
            class: class.map(Class::as_str),
            reason: self.reason(),
            retry_after: self.retry_after(),
        };
        serde_json::to_vec(&problem).unwrap_or_default()
    }

    /// The full answer: status, headers and problem body.
    pub fn response<B: From<Bytes>>(
        &self,
        partner: Option<&str>,
        class: Option<Class>,
        key_header: &str,
    ) -> Response<B> {
        let status = self.status();
        let retry_after = self.retry_after();
        let body = self.problem(partner, class, key_header);
        let mut response = Response::new(B::from(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, PROBLEM_JSON);
        if let Some(secs) = retry_after {
            headers.insert(RETRY_AFTER, retry_after_value(secs));
        }
        if let Refusal::Denied(Denied {
            limit: Some(limit), ..
        }) = self
        {
            if status == StatusCode::TOO_MANY_REQUESTS {
                insert_ratelimit(headers, limit);
            }
        }
        response
    }
}

/// A denial's answer rendered once per partner, class and reason: the problem body cut where
/// the wait goes, and the `RateLimit-Policy` value. Only the wait and the `RateLimit` state
/// are written per request, so a storm of refusals costs no JSON encoding and no formatting;
/// the usual answer (see [`Usual`]) is not even written, only cloned.
pub struct Prepared {
    template: Template,
    usual: Usual,
}

/// What any answer of one prepared denial is written from.
struct Template {
    status: StatusCode,
    /// The body's pieces; the wait in seconds goes between each two.
    pieces: Box<[Bytes]>,
    /// `RateLimit-Policy`, on a 429 that names its quota.
    policy: Option<HeaderValue>,
}

/// The answer most refusals of one prepared denial get, whole: for a quota, a one-second wait
/// with nothing remaining (a per-second quota's storm); for a denial that names no wait, its
/// only answer. Handing it out clones a header map and a shared body; writing it took four
/// header insertions and two allocations.
struct Usual {
    shape: Shape,
    headers: HeaderMap,
    body: Bytes,
}

/// What differs between two answers of one prepared denial: the wait in `Retry-After` and
/// the body, and the `RateLimit` state (remaining, seconds to reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    wait: Option<u64>,
    state: Option<(u32, u64)>,
}

impl Shape {
    fn of(denied: &Denied) -> Shape {
        Shape {
            wait: denied.retry_after.map(|w| ceil_secs(w).max(1)),
            state: denied
                .limit
                .map(|l| (l.remaining.remaining, ceil_secs(l.remaining.reset))),
        }
    }
}

/// The wait the template is rendered with: longer than any real one, and written with more
/// digits than a rate or a partner id can hold.
const PLACEHOLDER_SECS: u64 = 8_796_093_022_207;

impl Prepared {
    /// Renders `denied`'s answer with the wait left open. `None` when the body cannot be cut
    /// cleanly (then the answer is rendered whole per request).
    pub fn new(
        denied: &Denied,
        partner: Option<&str>,
        class: Option<Class>,
        key_header: &str,
    ) -> Option<Prepared> {
        let mut template = *denied;
        let waits = template.retry_after.is_some();
        if waits {
            template.retry_after = Some(Duration::from_secs(PLACEHOLDER_SECS));
        }
        let refusal = Refusal::Denied(template);
        let body = refusal.problem(partner, class, key_header);
        let placeholder = PLACEHOLDER_SECS.to_string();
        let pieces: Vec<Bytes> = split(&body, placeholder.as_bytes())
            .into_iter()
            .map(Bytes::copy_from_slice)
            .collect();
        // The wait is in the detail and in `retry_after`, or nowhere.
        let expected = if waits { 3 } else { 1 };
        if pieces.len() != expected {
            return None;
        }
        let status = refusal.status();
        let policy = denied
            .limit
            .filter(|_| status == StatusCode::TOO_MANY_REQUESTS)
            .and_then(|limit| HeaderValue::from_str(&policy_value(&limit)).ok());
        let template = Template {
            status,
            pieces: pieces.into_boxed_slice(),
            policy,
        };
        let mut usual = *denied;
        let second = Duration::from_secs(1);
        usual.retry_after = usual.retry_after.map(|_| second);
        if let Some(limit) = &mut usual.limit {
            limit.remaining = Remaining {
                remaining: 0,
                reset: second,
                wait: second,
            };
        }
        let (parts, body) = template.render::<Bytes>(&usual).into_parts();
        Some(Prepared {
            template,
            usual: Usual {
                shape: Shape::of(&usual),
                headers: parts.headers,
                body,
            },
        })
    }

    /// The answer to `denied`, which must be of the partner, class and reason this was
    /// prepared for: the same bytes [`Refusal::response`] gives.
    pub fn response<B: From<Bytes>>(&self, denied: &Denied) -> Response<B> {
        let usual = &self.usual;
        if usual.shape != Shape::of(denied) {
            return self.template.render(denied);
        }
        let mut response = Response::new(B::from(usual.body.clone()));
        *response.status_mut() = self.template.status;
        *response.headers_mut() = usual.headers.clone();
        response
    }
}

impl Template {
    /// Writes the answer to `denied` from the pieces.
    fn render<B: From<Bytes>>(&self, denied: &Denied) -> Response<B> {
        let wait = denied.retry_after.map(|w| ceil_secs(w).max(1));
        let mut digits = itoa::Buffer::new();
        let wait_text = wait.map_or("", |w| digits.format(w)).as_bytes();
        let length = self.pieces.iter().map(Bytes::len).sum::<usize>()
            + wait_text.len() * (self.pieces.len() - 1);
        let body = match &self.pieces[..] {
            [whole] => whole.clone(),
            pieces => {
                let mut body = BytesMut::with_capacity(length);
                for (i, piece) in pieces.iter().enumerate() {
                    if i > 0 {
                        body.extend_from_slice(wait_text);
                    }
                    body.extend_from_slice(piece);
                }
                body.freeze()
            }
        };
        let mut response = Response::new(B::from(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, PROBLEM_JSON);
        if let Some(secs) = wait {
            headers.insert(RETRY_AFTER, retry_after_value(secs));
        }
        if let (Some(policy), Some(limit)) = (&self.policy, &denied.limit) {
            headers.insert(RATELIMIT_POLICY.clone(), policy.clone());
            if let Some(state) = state_value(limit) {
                headers.insert(RATELIMIT.clone(), state);
            }
        }
        response
    }
}

/// `haystack` cut at every `needle`.
fn split<'a>(haystack: &'a [u8], needle: &[u8]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        pieces.push(&rest[..at]);
        rest = &rest[at + needle.len()..];
    }
    pieces.push(rest);
    pieces
}

/// `Retry-After` values up to this many seconds are made once.
const STATIC_WAITS: usize = 60;

/// `Retry-After: secs`, without an allocation for the usual waits.
fn retry_after_value(secs: u64) -> HeaderValue {
    static WAITS: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..=STATIC_WAITS as u64).map(HeaderValue::from).collect());
    usize::try_from(secs)
        .ok()
        .and_then(|i| WAITS.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

/// Sets `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10) for `limit`.
pub fn insert_ratelimit(headers: &mut HeaderMap, limit: &Limit) {
    if let Ok(value) = HeaderValue::from_str(&policy_value(limit)) {
        headers.insert(RATELIMIT_POLICY.clone(), value);
    }
    if let Some(value) = state_value(limit) {
        headers.insert(RATELIMIT.clone(), value);
    }
}

/// Sets the `RateLimit` fields for `limit`, with `policy` as the `RateLimit-Policy` value
/// prepared for it.
pub fn insert_ratelimit_with(headers: &mut HeaderMap, limit: &Limit, policy: &HeaderValue) {
    headers.insert(RATELIMIT_POLICY.clone(), policy.clone());
    if let Some(value) = state_value(limit) {
        headers.insert(RATELIMIT.clone(), value);
    }
}

/// The `RateLimit-Policy` value of `limit`, made once per partner and class.
pub fn policy_header(limit: &Limit) -> Option<HeaderValue> {
    HeaderValue::from_str(&policy_value(limit)).ok()
}

/// `"name";q=…;w=…`
fn policy_value(limit: &Limit) -> String {
    format!(
        "\"{}\";q={};w={}",
        limit.policy.name(),
        limit.rate.count,
        limit.rate.period.seconds()
    )
}

/// `"name";r=…;t=…`, written without the formatting machinery: it goes on every answer.
fn state_value(limit: &Limit) -> Option<HeaderValue> {
    let name = limit.policy.name();
    let mut remaining = itoa::Buffer::new();
    let mut reset = itoa::Buffer::new();
    let remaining = remaining.format(limit.remaining.remaining);
    let reset = reset.format(ceil_secs(limit.remaining.reset));
    let mut value = BytesMut::with_capacity(name.len() + remaining.len() + reset.len() + 8);
    for part in ["\"", name, "\";r=", remaining, ";t=", reset] {
        value.extend_from_slice(part.as_bytes());
    }
    HeaderValue::from_maybe_shared(value.freeze()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{Policy, Remaining};
    use crate::config::parse_rate;
    use crate::ids::{PartnerId, RouteId};

    fn denied(reason: Reason, wait_ms: u64) -> Denied {
        Denied {
            reason,
            partner: Some(PartnerId::new(0)),
            class: Some(Class::InquiryScheduled),
            route: Some(RouteId::new(0)),
            limit: Some(Limit {
                policy: Policy::Class(Class::InquiryScheduled),
                rate: parse_rate("20/s burst 40").unwrap(),
                remaining: Remaining {
                    remaining: 0,
                    reset: Duration::from_millis(wait_ms),
                    wait: Duration::ZERO,
                },
            }),
            retry_after: Some(Duration::from_millis(wait_ms)),
        }
    }

    #[test]
    fn a_quota_denial_carries_retry_after_and_ratelimit_fields() {
        let r: Response<Bytes> = Refusal::Denied(denied(Reason::PartnerQuota, 1200)).response(
            Some("wallet-a"),
            Some(Class::InquiryScheduled),
            "x-api-key",
        );
        assert_eq!(r.status(), 429);
        let h = r.headers();
        assert_eq!(h["content-type"], "application/problem+json");
        assert_eq!(h["retry-after"], "2");
        assert_eq!(h["ratelimit-policy"], "\"inquiry_scheduled\";q=20;w=1");
        assert_eq!(h["ratelimit"], "\"inquiry_scheduled\";r=0;t=2");
        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(body["type"], "urn:billgate:problem:partner_quota");
        assert_eq!(body["status"], 429);
        assert_eq!(body["partner"], "wallet-a");
        assert_eq!(body["class"], "inquiry_scheduled");
        assert_eq!(body["retry_after"], 2);
    }

    #[test]
    fn a_sub_second_wait_still_says_one_second() {
        let r: Response<Bytes> = Refusal::Denied(denied(Reason::PartnerQuota, 10)).response(
            Some("a"),
            None,
            "x-api-key",
        );
        assert_eq!(r.headers()["retry-after"], "1");
    }

    #[test]
    fn statuses_by_refusal() {
        let s = |reason| Refusal::Denied(denied(reason, 1)).status().as_u16();
        assert_eq!(s(Reason::MissingKey), 401);
        assert_eq!(s(Reason::UnknownKey), 401);
        assert_eq!(s(Reason::NoRoute), 404);
        assert_eq!(s(Reason::ClassClosed), 403);
        assert_eq!(s(Reason::AccountQuota), 429);
        assert_eq!(s(Reason::BillerCapacity), 503);
        assert_eq!(Refusal::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(Refusal::BillerUnreachable.status(), 502);
        assert_eq!(Refusal::NoSocket.status(), 503);
        assert_eq!(
            Refusal::BillerTimeout {
                timeout: Duration::from_secs(1)
            }
            .status(),
            504
        );
    }

    fn parts(r: Response<Bytes>) -> (u16, Vec<(String, String)>, Bytes) {
        let mut headers: Vec<(String, String)> = r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        (r.status().as_u16(), headers, r.into_body())
    }

    #[test]
    fn a_prepared_denial_answers_exactly_what_a_rendered_one_does() {
        for reason in Reason::ALL {
            for (partner, class) in [
                (Some("wallet-a"), Some(Class::InquiryScheduled)),
                (Some("bank-b"), None),
                (None, None),
            ] {
                let mut template = denied(reason, 1500);
                template.class = class;
                if matches!(
                    reason,
                    Reason::MissingKey
                        | Reason::UnknownKey
                        | Reason::NoRoute
                        | Reason::ClassClosed
                        | Reason::Suspended
                        | Reason::BadAccount
                        | Reason::KeyCertificateMismatch
                        | Reason::CertificateRequired
                ) {
                    template.retry_after = None;
                    template.limit = None;
                }
                let prepared = Prepared::new(&template, partner, class, "x-api-key")
                    .unwrap_or_else(|| panic!("{reason:?} could not be prepared"));
                for wait_ms in [1, 999, 1000, 1001, 59_000, 61_000, 3_600_000] {
                    let mut asked = template;
                    if asked.retry_after.is_some() {
                        asked.retry_after = Some(Duration::from_millis(wait_ms));
                        if let Some(limit) = &mut asked.limit {
                            limit.remaining.reset = Duration::from_millis(wait_ms);
                        }
                    }
                    let whole =
                        Refusal::Denied(asked).response::<Bytes>(partner, class, "x-api-key");
                    let fast = prepared.response::<Bytes>(&asked);
                    assert_eq!(parts(fast), parts(whole), "{reason:?} after {wait_ms}ms");
                }
            }
        }
    }

    #[test]
    fn the_usual_answer_is_handed_out_only_for_its_own_wait_and_state() {
        let template = denied(Reason::PartnerQuota, 1000);
        let partner = Some("wallet-a");
        let class = template.class;
        let prepared = Prepared::new(&template, partner, class, "x-api-key").unwrap();
        assert_eq!(
            prepared.usual.shape,
            Shape {
                wait: Some(1),
                state: Some((0, 1))
            }
        );
        // The same one-second wait with another `RateLimit` state, and another wait with the
        // usual state: neither may get the usual answer's bytes.
        let mut other_state = template;
        if let Some(limit) = &mut other_state.limit {
            limit.remaining = Remaining {
                remaining: 3,
                reset: Duration::from_secs(5),
                wait: Duration::ZERO,
            };
        }
        let mut other_wait = template;
        other_wait.retry_after = Some(Duration::from_secs(7));
        for (asked, reset) in [(template, "t=1"), (other_state, "t=5"), (other_wait, "t=1")] {
            let whole = Refusal::Denied(asked).response::<Bytes>(partner, class, "x-api-key");
            let fast = prepared.response::<Bytes>(&asked);
            let (fast, whole) = (parts(fast), parts(whole));
            assert_eq!(fast, whole);
            let state = fast.1.iter().find(|(k, _)| k == "ratelimit").unwrap();
            assert!(state.1.ends_with(reset), "{state:?}");
        }
    }

    #[test]
    fn a_partner_id_holding_the_placeholder_is_rendered_whole() {
        let d = denied(Reason::PartnerQuota, 1000);
        let id = format!("p{PLACEHOLDER_SECS}");
        assert!(Prepared::new(&d, Some(&id), d.class, "x-api-key").is_none());
    }
}
