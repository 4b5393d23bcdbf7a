//! Every way a request can go wrong, turned into an HTTP answer in one place: an
//! `application/problem+json` body (RFC 9457) and the headers that go with it.
//!
//! Plain HTTP errors use the type `about:blank`; the biller's own failures have their own types
//! (`/problems/biller-overloaded`, `/problems/biller-down`, `/problems/biller-brownout`) so a
//! client can tell them apart without parsing the prose.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::http::{BODY_READ_TIMEOUT, MAX_BODY};
use crate::clock::ceil_secs;

const JSON: &str = "application/json";
const PROBLEM_JSON: &str = "application/problem+json";

/// Why a request was not answered normally; each becomes one HTTP answer in [`Problem::respond`].
#[derive(Debug)]
pub(super) enum Problem {
    BadRequest(String),
    NotFound,
    MethodNotAllowed(&'static str),
    BodyTooLarge { drained: bool },
    BodyTimeout,
    Overloaded,
    Down { retry_after: Duration },
    Brownout,
}

/// `value` as an `application/json` answer with `status`.
pub(super) fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    // Serialising these plain structs cannot fail; if it ever did, say so rather than panic.
    let (status, content_type, body) = match serde_json::to_vec(value) {
        Ok(body) => (status, JSON, body),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            PROBLEM_JSON,
            br#"{"type":"about:blank","title":"Internal Server Error","status":500}"#.to_vec(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
}

impl Problem {
    /// The one place a problem becomes an HTTP answer (RFC 9457 body).
    pub(super) fn respond(self) -> Response<Full<Bytes>> {
        let (status, kind, title, detail) = match &self {
            Problem::BadRequest(detail) => (
                StatusCode::BAD_REQUEST,
                "about:blank",
                "Bad Request",
                detail.clone(),
            ),
            Problem::NotFound => (
                StatusCode::NOT_FOUND,
                "about:blank",
                "Not Found",
                "no such resource on this biller".to_owned(),
            ),
            Problem::MethodNotAllowed(allow) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "about:blank",
                "Method Not Allowed",
                format!("this resource allows {allow}"),
            ),
            Problem::BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "about:blank",
                "Content Too Large",
                format!("request bodies are limited to {MAX_BODY} bytes"),
            ),
            Problem::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "about:blank",
                "Request Timeout",
                format!("the body did not arrive within {BODY_READ_TIMEOUT:?}"),
            ),
            Problem::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/biller-overloaded",
                "Biller overloaded",
                "the biller is past its capacity; retry later".to_owned(),
            ),
            Problem::Down { retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/biller-down",
                "Biller down",
                format!(
                    "the biller is down after sustained overload; back in {}s",
                    ceil_secs(*retry_after)
                ),
            ),
            Problem::Brownout => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "/problems/biller-brownout",
                "Biller error",
                "the biller failed to process the request".to_owned(),
            ),
        };
        let body = ProblemBody {
            kind,
            title,
            status: status.as_u16(),
            detail,
        };
        let mut response = json(status, &body);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match self {
            Problem::MethodNotAllowed(allow) => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            Problem::Overloaded => {
                headers.insert(RETRY_AFTER, HeaderValue::from(1u64));
            }
            Problem::Down { retry_after } => {
                headers.insert(
                    RETRY_AFTER,
                    HeaderValue::from(ceil_secs(retry_after).max(1)),
                );
            }
            Problem::BodyTooLarge { drained: false } | Problem::BodyTimeout => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
