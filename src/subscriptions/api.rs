//! The partners' subscription API on the partner listener: `POST /v1/subscriptions`,
//! `GET /v1/subscriptions?cursor=…&limit=…`, `GET` and `DELETE /v1/subscriptions/{id}`.
//! Identified as every other request (key, client certificate), refused while suspended,
//! limited by the partner's `quota.subscription`; the store answers the rest.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::Subscriptions;
use crate::admission::{account_ok, Reason};
use crate::clock::ceil_secs;
use crate::proxy::{insert_ratelimit, read_body, ProxyBody, Refusal, Snapshot};
use billgate_core::subscriptions::{check_callback, BadCallback};
use billgate_subs::store::{Subscribed, Subscription};

/// The path every route of the API starts with.
pub const PREFIX: &str = "/v1/subscriptions";

/// The most subscriptions one page lists, and the default.
const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 100;

/// The longest subscription request body: an account and a callback.
const MAX_BODY: u64 = 8 * 1024;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// Whether `path` is the API's.
pub fn is_api(path: &str) -> bool {
    path == PREFIX
        || path
            .strip_prefix(PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// What the caller presented.
pub struct Caller<'r> {
    pub key: Option<&'r [u8]>,
    pub certificate: Option<&'r [u8; 32]>,
}

/// Answers one API request.
pub async fn serve(
    subscriptions: &Subscriptions,
    snapshot: &Snapshot,
    caller: Caller<'_>,
    parts: &http::request::Parts,
    body: Incoming,
) -> Response<ProxyBody> {
    let config = &snapshot.config;
    let key_header = config.server.key_header.as_str();
    let partner = match snapshot.gate.identify(caller.key, caller.certificate) {
        Ok(partner) => partner,
        Err(denied) => {
            let id = denied.partner.map(|p| &*snapshot.gate.partners()[p].id);
            let refusal = match (denied.reason, denied.partner) {
                (Reason::Suspended, Some(p)) => snapshot.gate.partners()[p]
                    .cell
                    .get()
                    .map_or(Refusal::Denied(denied), Refusal::Suspended),
                _ => Refusal::Denied(denied),
            };
            subscriptions
                .metrics
                .api(id.unwrap_or(""), refusal.reason());
            return refusal
                .response::<Full<Bytes>>(id, None, key_header)
                .map(Either::Left);
        }
    };
    let id = &*snapshot.gate.partners()[partner].id;
    let Some(webhooks) = config.partners[partner].webhooks.as_ref() else {
        subscriptions.metrics.api(id, "class_closed");
        return problem(
            StatusCode::FORBIDDEN,
            "class_closed",
            "Subscriptions not allowed for this partner",
            format!("{id} has no subscription quota; ask the biller's operators to open it"),
            Some(id),
        );
    };
    let now = snapshot.gate.clock().now();
    let limit = match snapshot
        .subscriptions
        .check(partner, now, snapshot.gate.fleet())
    {
        Ok(limit) => limit,
        Err(denied) => {
            subscriptions.metrics.api(id, "partner_quota");
            let wait = denied.retry_after.map_or(1, |w| ceil_secs(w).max(1));
            let mut answer = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "partner_quota",
                "Subscription quota exceeded",
                format!(
                    "{id} sent more subscription requests than its quota of {}; retry in {wait}s",
                    webhooks.quota
                ),
                Some(id),
            );
            if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
                answer.headers_mut().insert(RETRY_AFTER, value);
            }
            if let Some(limit) = denied.limit {
                insert_ratelimit(answer.headers_mut(), &limit);
            }
            return answer;
        }
    };
    let who = Who {
        subscriptions,
        id,
        max: webhooks.max_subscriptions,
    };
    let rest = parts.uri.path()[PREFIX.len()..].trim_start_matches('/');
    let mut answer = match (&parts.method, rest) {
        (&Method::POST, "") => match read_body(config, &parts.headers, body, MAX_BODY).await {
            Ok(body) => who.subscribe(&body, webhooks).await,
            Err((refusal, _)) => refusal
                .response::<Full<Bytes>>(Some(id), None, key_header)
                .map(Either::Left),
        },
        (&Method::GET, "") => who.list(parts.uri.query()).await,
        (&Method::GET, sub) if !sub.contains('/') => who.show(sub).await,
        (&Method::DELETE, sub) if !sub.contains('/') => who.delete(sub).await,
        (_, "") => not_allowed("GET, POST", id),
        (_, sub) if !sub.contains('/') => not_allowed("GET, DELETE", id),
        _ => problem(
            StatusCode::NOT_FOUND,
            "no_such_subscription",
            "No such subscription",
            "subscriptions live at /v1/subscriptions/{id}".into(),
            Some(id),
        ),
    };
    insert_ratelimit(answer.headers_mut(), &limit);
    subscriptions.metrics.api(id, outcome_of(answer.status()));
    answer
}

fn outcome_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "ok",
        201 => "created",
        204 => "deleted",
        400 => "bad_request",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "body_too_large",
        503 => "store_unavailable",
        _ => "other",
    }
}

/// A subscription as the partner sees it.
#[derive(Serialize)]
struct Shown<'s> {
    id: &'s str,
    account: &'s str,
    callback: &'s str,
    created_unix_ms: i64,
}

impl<'s> From<&'s Subscription> for Shown<'s> {
    fn from(s: &'s Subscription) -> Shown<'s> {
        Shown {
            id: &s.id,
            account: &s.account,
            callback: &s.callback,
            created_unix_ms: s.created_ms,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubscription {
    account: String,
    callback: String,
}

/// The partner an API request is for, and what it may do.
struct Who<'a> {
    subscriptions: &'a Subscriptions,
    id: &'a str,
    max: u64,
}

impl Who<'_> {
    async fn subscribe(
        &self,
        body: &[u8],
        webhooks: &crate::config::PartnerWebhooks,
    ) -> Response<ProxyBody> {
        let asked: NewSubscription = match serde_json::from_slice(body) {
            Ok(asked) => asked,
            Err(error) => {
                return self.bad(
                    "invalid_body",
                    format!("the body must be JSON like {{\"account\": \"…\", \"callback\": \"https://…\"}}: {error}"),
                )
            }
        };
        if !account_ok(&asked.account) {
            return self.bad(
                "bad_account",
                format!(
                    "the bill account must be 1 to {} bytes, with no `/`, `..`, `.` or control character",
                    crate::admission::MAX_ACCOUNT_LEN
                ),
            );
        }
        if let Err(why) = check_callback(webhooks, &asked.callback) {
            let reason = match why {
                BadCallback::NotUnderPrefix => "callback_not_allowed",
                BadCallback::TooLong | BadCallback::Malformed => "bad_callback",
            };
            return self.bad(reason, why.detail().into());
        }
        let now = self.subscriptions.now_ms();
        let stored = self
            .subscriptions
            .store
            .subscribe(self.id, &asked.account, &asked.callback, self.max, now)
            .await;
        match stored {
            Ok(Subscribed::Created(s)) => {
                if let Err(error) = self.subscriptions.subscribed(&s).await {
                    // The subscription stands; the refresher reaches its account in its period.
                    tracing::warn!(%error, id = %s.id, "a new subscription's bills could not be looked up");
                }
                self.json(StatusCode::CREATED, &Shown::from(&s))
            }
            Ok(Subscribed::Existing(s)) => self.json(StatusCode::OK, &Shown::from(&s)),
            Ok(Subscribed::LimitReached { max }) => problem(
                StatusCode::FORBIDDEN,
                "max_subscriptions",
                "Subscription limit reached",
                format!(
                    "{} holds its limit of {max} subscriptions; delete one first",
                    self.id
                ),
                Some(self.id),
            ),
            Err(error) => self.unavailable(&error),
        }
    }

    async fn list(&self, query: Option<&str>) -> Response<ProxyBody> {
        let mut cursor = None;
        let mut limit = DEFAULT_PAGE;
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*name {
                "cursor" if !value.is_empty() => cursor = Some(value.into_owned()),
                "cursor" => {}
                "limit" => match value.parse::<u32>() {
                    Ok(n) if (1..=MAX_PAGE).contains(&n) => limit = n,
                    _ => {
                        return self.bad(
                            "bad_limit",
                            format!("limit must be a whole number from 1 to {MAX_PAGE}"),
                        )
                    }
                },
                other => {
                    return self.bad(
                        "bad_query",
                        format!("unknown query parameter `{other}`: cursor and limit are known"),
                    )
                }
            }
        }
        let page = self
            .subscriptions
            .store
            .list(self.id, cursor.as_deref(), limit)
            .await;
        match page {
            Ok(page) => {
                let next = (page.len() == limit as usize)
                    .then(|| page.last().map(|s| s.id.clone()))
                    .flatten();
                #[derive(Serialize)]
                struct Page<'s> {
                    subscriptions: Vec<Shown<'s>>,
                    next_cursor: Option<String>,
                }
                let page = Page {
                    subscriptions: page.iter().map(Shown::from).collect(),
                    next_cursor: next,
                };
                self.json(StatusCode::OK, &page)
            }
            Err(error) => self.unavailable(&error),
        }
    }

    async fn show(&self, sub: &str) -> Response<ProxyBody> {
        match self.subscriptions.store.subscription(self.id, sub).await {
            Ok(Some(s)) => self.json(StatusCode::OK, &Shown::from(&s)),
            Ok(None) => self.missing(sub),
            Err(error) => self.unavailable(&error),
        }
    }

    async fn delete(&self, sub: &str) -> Response<ProxyBody> {
        match self.subscriptions.store.unsubscribe(self.id, sub).await {
            Ok(true) => {
                self.subscriptions.unsubscribed(self.id);
                let mut answer = Response::new(Either::Left(Full::new(Bytes::new())));
                *answer.status_mut() = StatusCode::NO_CONTENT;
                answer
            }
            Ok(false) => self.missing(sub),
            Err(error) => self.unavailable(&error),
        }
    }

    fn json(&self, status: StatusCode, body: &impl Serialize) -> Response<ProxyBody> {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let mut answer = Response::new(Either::Left(Full::new(Bytes::from(bytes))));
        *answer.status_mut() = status;
        answer.headers_mut().insert(CONTENT_TYPE, JSON);
        answer
    }

    fn bad(&self, reason: &'static str, detail: String) -> Response<ProxyBody> {
        problem(
            StatusCode::BAD_REQUEST,
            reason,
            "Subscription request not accepted",
            detail,
            Some(self.id),
        )
    }

    fn missing(&self, sub: &str) -> Response<ProxyBody> {
        problem(
            StatusCode::NOT_FOUND,
            "no_such_subscription",
            "No such subscription",
            format!(
                "{} has no subscription {}",
                self.id,
                sub.escape_debug()
                    .to_string()
                    .chars()
                    .take(80)
                    .collect::<String>()
            ),
            Some(self.id),
        )
    }

    fn unavailable(&self, error: &billgate_subs::store::StoreError) -> Response<ProxyBody> {
        tracing::warn!(partner = %self.id, %error, "the subscription store failed a request");
        let mut answer = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "Subscription store unavailable",
            "the gateway could not reach its subscription store; nothing was changed; retry in 1s"
                .into(),
            Some(self.id),
        );
        answer
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        answer
    }
}

fn not_allowed(allow: &'static str, id: &str) -> Response<ProxyBody> {
    let mut answer = problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
        format!("this path takes {allow}"),
        Some(id),
    );
    answer
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    answer
}

/// An RFC 9457 problem answer, in the shape of every other refusal's.
fn problem(
    status: StatusCode,
    reason: &'static str,
    title: &'static str,
    detail: String,
    partner: Option<&str>,
) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "type": format!("urn:billgate:problem:{reason}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "partner": partner,
        "class": "subscription",
        "reason": reason,
    });
    let mut answer = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    *answer.status_mut() = status;
    answer.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
    answer
}
