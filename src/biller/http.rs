//! The stand-in biller's request handling: routing, the load verdict applied to each call, and
//! every error turned into an `application/problem+json` answer in one place.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::load::{Verdict, MAX_LATENCY_FACTOR};
use super::{bills, SeenRequest, Shared};
use crate::clock::ceil_secs;

/// Request bodies larger than this are refused with 413.
const MAX_BODY: usize = 64 * 1024;
/// An oversized body is read and discarded up to this size, so the client can finish sending
/// and read the 413 on a healthy connection; beyond it the connection is closed.
const DRAIN_LIMIT: usize = 1024 * 1024;
/// How long a client may take to send a body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

const JSON: &str = "application/json";
const PROBLEM_JSON: &str = "application/problem+json";

/// Why a request was not answered normally; each becomes one HTTP answer in [`Problem::respond`].
#[derive(Debug)]
enum Problem {
    BadRequest(String),
    NotFound,
    MethodNotAllowed(&'static str),
    BodyTooLarge { drained: bool },
    BodyTimeout,
    Overloaded,
    Down { retry_after: Duration },
    Brownout,
}

type Answer = Result<Response<Full<Bytes>>, Problem>;

/// Answer one request. Never panics, whatever the client sent.
pub(super) async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let answer = if let Some(control) = path.strip_prefix("/_biller/") {
        let control = control.to_owned();
        self::control(shared, &control, &request)
    } else {
        shared.record(seen(&request));
        api(shared, request).await
    };
    answer.unwrap_or_else(Problem::respond)
}

fn seen(request: &Request<Incoming>) -> SeenRequest {
    let uri = request.uri();
    SeenRequest {
        method: request.method().clone(),
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers: request.headers().clone(),
    }
}

async fn api(shared: &Shared, request: Request<Incoming>) -> Answer {
    let path = request.uri().path();
    if let Some(account) = path.strip_prefix("/v1/bills/") {
        if account.contains('/') {
            return Err(Problem::NotFound);
        }
        if request.method() != Method::GET {
            return Err(Problem::MethodNotAllowed("GET"));
        }
        shared.inquiries.fetch_add(1, Ordering::Relaxed);
        let account = account.to_owned();
        inquiry(shared, &account).await
    } else if path == "/v1/payments" {
        if request.method() != Method::POST {
            return Err(Problem::MethodNotAllowed("POST"));
        }
        shared.payments.fetch_add(1, Ordering::Relaxed);
        payment(shared, request.into_body()).await
    } else {
        Err(Problem::NotFound)
    }
}

async fn inquiry(shared: &Shared, account: &str) -> Answer {
    let latency = admitted(shared.load.admit()).await?;
    tokio::time::sleep(latency).await;
    if !bills::valid_account(account) {
        return Err(Problem::BadRequest(
            "the account must be 1 to 32 characters of A-Z, a-z, 0-9 and '-'".to_owned(),
        ));
    }
    let bill = bills::bill_for(account, &shared.name);
    shared.served.fetch_add(1, Ordering::Relaxed);
    Ok(json(StatusCode::OK, &bill))
}

async fn payment(shared: &Shared, body: Incoming) -> Answer {
    // Decided on arrival; the body is read either way, so the connection stays usable.
    let verdict = shared.load.admit();
    let body = read_body(body).await;
    let latency = admitted(verdict).await?;
    let body = body?;
    tokio::time::sleep(latency).await;
    let payment = bills::parse_payment(&body).map_err(Problem::BadRequest)?;
    let sequence = shared.receipts.fetch_add(1, Ordering::Relaxed) + 1;
    let receipt = bills::receipt(payment, sequence, SystemTime::now());
    shared.served.fetch_add(1, Ordering::Relaxed);
    Ok(json(StatusCode::CREATED, &receipt))
}

/// The latency to serve with, or the failure the load model chose. A brown-out failure is slow
/// (it waits out its latency here); overload and down are shed at once.
async fn admitted(verdict: Verdict) -> Result<Duration, Problem> {
    match verdict {
        Verdict::Serve { latency } => Ok(latency),
        Verdict::FailOverload => Err(Problem::Overloaded),
        Verdict::FailDown { retry_after } => Err(Problem::Down { retry_after }),
        Verdict::FailBrownout { latency } => {
            tokio::time::sleep(latency).await;
            Err(Problem::Brownout)
        }
    }
}

/// Read a body of at most [`MAX_BODY`] bytes.
async fn read_body(mut body: Incoming) -> Result<Bytes, Problem> {
    let declared = body.size_hint().exact().unwrap_or(0);
    if declared > DRAIN_LIMIT as u64 {
        return Err(Problem::BodyTooLarge { drained: false });
    }
    let read = async {
        let mut kept = BytesMut::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(Problem::BadRequest(
                    "the request body was cut short".to_owned(),
                ));
            };
            if let Ok(data) = frame.into_data() {
                total = total.saturating_add(data.len());
                if total > DRAIN_LIMIT {
                    return Err(Problem::BodyTooLarge { drained: false });
                }
                if total <= MAX_BODY {
                    kept.extend_from_slice(&data);
                }
            }
        }
        if total > MAX_BODY {
            return Err(Problem::BodyTooLarge { drained: true });
        }
        Ok(kept.freeze())
    };
    tokio::time::timeout(BODY_READ_TIMEOUT, read)
        .await
        .unwrap_or(Err(Problem::BodyTimeout))
}

fn control(shared: &Shared, path: &str, request: &Request<Incoming>) -> Answer {
    let method = request.method();
    match path {
        "stats" if method == Method::GET => Ok(json(StatusCode::OK, &shared.stats())),
        "stats" => Err(Problem::MethodNotAllowed("GET")),
        "brownout" if method == Method::POST => {
            let brownout = parse_brownout(request.uri().query().unwrap_or(""))?;
            shared
                .load
                .set_brownout(brownout.latency_factor, brownout.failure_share);
            Ok(json(StatusCode::OK, &brownout))
        }
        "brownout" if method == Method::DELETE => {
            shared.load.clear_brownout();
            let mut response = Response::new(Full::default());
            *response.status_mut() = StatusCode::NO_CONTENT;
            Ok(response)
        }
        "brownout" => Err(Problem::MethodNotAllowed("POST, DELETE")),
        _ => Err(Problem::NotFound),
    }
}

#[derive(Debug, Serialize)]
struct BrownoutParams {
    latency_factor: f64,
    failure_share: f64,
}

/// `latency_factor` (1–1000, default 1) and `failure_share` (0–1, default 0); anything else is
/// refused rather than silently ignored, so a typo cannot pass for a brown-out.
fn parse_brownout(query: &str) -> Result<BrownoutParams, Problem> {
    let mut params = BrownoutParams {
        latency_factor: 1.0,
        failure_share: 0.0,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = value.parse::<f64>().ok();
        match (name, number) {
            ("latency_factor", Some(f)) if (1.0..=MAX_LATENCY_FACTOR).contains(&f) => {
                params.latency_factor = f;
            }
            ("failure_share", Some(s)) if (0.0..=1.0).contains(&s) => params.failure_share = s,
            ("latency_factor", _) => {
                return Err(Problem::BadRequest(format!(
                    "latency_factor must be a number from 1 to {MAX_LATENCY_FACTOR}"
                )))
            }
            ("failure_share", _) => {
                return Err(Problem::BadRequest(
                    "failure_share must be a number from 0 to 1".to_owned(),
                ))
            }
            _ => {
                return Err(Problem::BadRequest(format!(
                    "unknown parameter {name:?}; expected latency_factor and failure_share"
                )))
            }
        }
    }
    Ok(params)
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
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
    fn respond(self) -> Response<Full<Bytes>> {
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
