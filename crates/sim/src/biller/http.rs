//! The stand-in biller's request handling: routing, the load verdict applied to each call, bodies
//! read within bounds, and the control paths.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::load::{Verdict, MAX_LATENCY_FACTOR};
use super::problem::{json, Problem};
use super::{bills, SeenRequest, Shared};

/// Request bodies larger than this are refused with 413.
pub(super) const MAX_BODY: usize = 64 * 1024;
/// An oversized body is read and discarded up to this size, so the client can finish sending
/// and read the 413 on a healthy connection; beyond it the connection is closed.
const DRAIN_LIMIT: usize = 1024 * 1024;
/// How long a client may take to send a body.
pub(super) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

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
    let bill = shared.ledger.bill(account, &shared.name);
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
    shared
        .ledger
        .paid(&payment.account, payment.bill_id.as_deref(), &shared.name);
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
        _ => match path
            .strip_prefix("bills/")
            .and_then(|rest| rest.strip_suffix("/new"))
        {
            Some(account) if bills::valid_account(account) && method == Method::POST => {
                let bill = shared.ledger.issue(account, &shared.name);
                Ok(json(StatusCode::CREATED, &bill))
            }
            Some(account) if bills::valid_account(account) => {
                Err(Problem::MethodNotAllowed("POST"))
            }
            _ => Err(Problem::NotFound),
        },
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
