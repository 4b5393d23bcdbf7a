//! The admin listener. Open: `/metrics` (Prometheus text), `/healthz` (alive), `/readyz` (a
//! snapshot is loaded and the biller accepted a connection at the last probe). Behind the bearer
//! token: `/admin/config`, `/admin/partners`, `/admin/partners/{id}`, `/admin/reload`,
//! `/admin/partners/{id}/suspend` and `…/resume`. Without a token the reads stay open and the mutations are off.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::ceil_secs;
use crate::config::Class;
use crate::control::{Control, ControlError, ReloadError, TOKEN_ENV};
use crate::metrics::Outcome;
use crate::proxy::Acceptor;
use crate::recent::{self, Counts};

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const PROMETHEUS: HeaderValue =
    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const PROBLEM: HeaderValue = HeaderValue::from_static("application/problem+json");

type Answer = Response<Full<Bytes>>;

/// Serves the admin endpoints until `shutdown` turns true.
pub async fn serve(
    control: Arc<Control>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut acceptor = Acceptor::new(listener, "admin");
    let mut sample = tokio::time::interval(recent::EVERY);
    loop {
        tokio::select! {
            _ = sample.tick() => control.recent.record(control.shared.clock().elapsed(), partner_counts(&control)),
            (stream, _) = acceptor.accept() => {
                let control = Arc::clone(&control);
                let service = service_fn(move |request| answer(Arc::clone(&control), request));
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn answer(control: Arc<Control>, request: Request<Incoming>) -> Result<Answer, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let response = match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => plain(StatusCode::OK, TEXT, "ok\n".into()),
        (&Method::GET, ["readyz"]) => readyz(&control),
        (&Method::GET, ["metrics"]) => match render_metrics(&control) {
            Ok(text) => plain(StatusCode::OK, PROMETHEUS, text),
            Err(error) => problem(StatusCode::INTERNAL_SERVER_ERROR, "Metrics unavailable", &error.to_string()),
        },
        (&Method::GET, ["admin", "config"]) => guarded(&control, &request, false, || config(&control)),
        (&Method::GET, ["admin", "fleet"]) => guarded(&control, &request, false, || fleet(&control)),
        (&Method::GET, ["admin", "partners"]) => guarded(&control, &request, false, || partners(&control)),
        (&Method::GET, ["admin", "partners", id]) => guarded(&control, &request, false, || partner_view(&control, id)),
        (&Method::POST, ["admin", "reload"]) => match authorize(&control, &request, true) {
            Err(refused) => refused,
            Ok(()) => {
                let force = request
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|p| p == "force=true" || p == "force=1"));
                reload(&control, force).await
            }
        },
        (&Method::POST, ["admin", "partners", id, action @ ("suspend" | "resume")]) => {
            let (id, action) = ((*id).to_owned(), *action);
            match authorize(&control, &request, true) {
                Err(refused) => refused,
                Ok(()) if action == "resume" => resume(&control, &id).await,
                Ok(()) => suspend(&control, &id, request).await,
            }
        }
        (_, ["healthz" | "readyz" | "metrics"] | ["admin", "config" | "fleet" | "partners"] | ["admin", "partners", _]) => not_allowed("GET"),
        (_, ["admin", "reload"] | ["admin", "partners", _, "suspend" | "resume"]) => not_allowed("POST"),
        _ => problem(
            StatusCode::NOT_FOUND,
            "Not found",
            "the admin listener serves /metrics, /healthz, /readyz and /admin/{config,fleet,partners,reload}",
        ),
    };
    Ok(response)
}

fn render_metrics(control: &Control) -> Result<String, prometheus::Error> {
    crate::gateway::refresh_gauges(&control.shared);
    control.shared.metrics().render()
}

/// Checks the bearer token. Reads are open when no token is set; mutations are off then.
// The error is the admin answer itself, built once per admin request: boxing buys nothing.
#[allow(clippy::result_large_err)]
fn authorize(control: &Control, request: &Request<Incoming>, mutating: bool) -> Result<(), Answer> {
    if !control.has_token() {
        if !mutating {
            return Ok(());
        }
        let detail = format!(
            "no admin token is set, so the admin API's mutating endpoints are off; set {TOKEN_ENV} or [server] admin_token_file and restart"
        );
        return Err(problem(
            StatusCode::FORBIDDEN,
            "Admin mutations are off",
            &detail,
        ));
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match presented {
        Some(token) if control.token_matches(token.as_bytes()) => Ok(()),
        Some(_) => Err(unauthorized("the bearer token is not the admin token")),
        None => Err(unauthorized(
            "send the admin token as `Authorization: Bearer <token>`",
        )),
    }
}

/// The token of `Bearer <token>`. The scheme is case-insensitive (RFC 9110 §11.1: `bearer`
/// and `BEARER` are `Bearer`), and one or more spaces follow it.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

fn guarded(
    control: &Control,
    request: &Request<Incoming>,
    mutating: bool,
    then: impl FnOnce() -> Answer,
) -> Answer {
    match authorize(control, request, mutating) {
        Ok(()) => then(),
        Err(refused) => refused,
    }
}

fn readyz(control: &Control) -> Answer {
    let snapshot = control.shared.snapshot();
    let reachable = control.shared.biller_reachable();
    let body = json!({
        "ready": reachable,
        "snapshot_sha256": snapshot.config.source_sha256,
        "biller_reachable": reachable,
    });
    let status = if reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    plain(status, JSON, body.to_string())
}

fn config(control: &Control) -> Answer {
    let snapshot = control.shared.snapshot();
    let c = &snapshot.config;
    let body = json!({
        "sha256": c.source_sha256,
        "partners": c.partners.len(),
        "routes": c.routes.iter().map(|r| &r.name).collect::<Vec<_>>(),
        "biller": { "url": c.biller.url.to_string(), "capacity": c.biller.capacity.to_string() },
        "admin_mutations": control.has_token(),
    });
    plain(StatusCode::OK, JSON, body.to_string())
}

/// The fleet as this instance last saw it: each live instance, its last heartbeat, its share
/// of the tokens lately granted and its configuration's hash.
fn fleet(control: &Control) -> Answer {
    match control.shared.fleet() {
        Some(fleet) => match serde_json::to_string(&fleet.view()) {
            Ok(body) => plain(StatusCode::OK, JSON, body),
            Err(error) => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Fleet view unavailable",
                &error.to_string(),
            ),
        },
        None => problem(
            StatusCode::NOT_FOUND,
            "Not in a fleet",
            "this gateway runs alone: its configuration has no [fleet] table",
        ),
    }
}

fn partners(control: &Control) -> Answer {
    let snapshot = control.shared.snapshot();
    let list: Vec<_> = snapshot
        .config
        .partners
        .iter()
        .zip(&snapshot.partners)
        .map(|(p, runtime)| {
            let quota: serde_json::Map<_, _> = Class::ALL
                .iter()
                .map(|c| (c.as_str().to_owned(), p.quota.get(*c).map_or(json!("closed"), |r| json!(r.to_string()))))
                .collect();
            let total = |o: Outcome| -> u64 {
                runtime.metrics.classes.iter().chain([&runtime.metrics.unrouted]).map(|m| m.count(o)).sum()
            };
            let suspension = control.shared.suspensions().get(&p.id);
            json!({
                "id": p.id,
                "mode": p.mode.as_str(),
                "quota": quota,
                "per_account": p.per_account.map(|r| r.to_string()),
                "keys": p.keys_sha256.len(),
                "suspended": suspension.as_deref().map(|s| json!({"reason": s.reason, "since_unix": s.since_unix})),
                "requests_since_start": {
                    "forwarded": total(Outcome::Forwarded),
                    "cached": total(Outcome::Cached),
                    "rejected": total(Outcome::Rejected),
                    "failed": total(Outcome::Failed),
                },
            })
        })
        .collect();
    plain(
        StatusCode::OK,
        JSON,
        json!({ "partners": list }).to_string(),
    )
}

/// Every partner's counters by class now, for the last-minute rates.
fn partner_counts(control: &Control) -> HashMap<String, [Counts; 3]> {
    let snapshot = control.shared.snapshot();
    snapshot
        .config
        .partners
        .iter()
        .zip(snapshot.partners.iter())
        .map(|(p, runtime)| {
            let counts = Class::ALL.map(|c| Counts::of(runtime.metrics.class(c)));
            (p.id.clone(), counts)
        })
        .collect()
}

/// `GET /admin/partners/{id}`: one partner as its operators need it now — each class's quota,
/// what remains of it, its rate over the last minute, refusals by reason since start, and any
/// suspension.
fn partner_view(control: &Control, id: &str) -> Answer {
    let snapshot = control.shared.snapshot();
    let Some((n, p)) = snapshot.config.partners.entries().find(|(_, p)| p.id == id) else {
        return problem(
            StatusCode::NOT_FOUND,
            "No such partner",
            &format!("no partner \"{id}\" in the running configuration"),
        );
    };
    let Some(runtime) = snapshot.partners.get(n) else {
        return problem(StatusCode::NOT_FOUND, "No such partner", id);
    };
    let current = Class::ALL.map(|c| Counts::of(runtime.metrics.class(c)));
    let (rates, span) = control
        .recent
        .rates(control.shared.clock().elapsed(), &p.id, current);
    let classes: serde_json::Map<_, _> = Class::ALL
        .iter()
        .map(|&class| {
            let quota = p.quota.get(class);
            let now = snapshot.gate.quota_now(n, class);
            let mut refusals = serde_json::Map::new();
            for (reason, count) in runtime.metrics.class(class).refusals() {
                refusals.insert(reason.to_owned(), json!(count));
            }
            let view = json!({
                "quota": quota.map_or(json!("closed"), |r| json!(r.to_string())),
                "remaining": now.map(|r| r.remaining),
                "full_in_secs": now.map(|r| ceil_secs(r.reset)),
                "last_minute": rates[class.index()],
                "refusals_since_start": refusals,
            });
            (class.as_str().to_owned(), view)
        })
        .collect();
    let mut unrouted = serde_json::Map::new();
    for (reason, count) in runtime.metrics.unrouted.refusals() {
        unrouted.insert(reason.to_owned(), json!(count));
    }
    let suspension = control.shared.suspensions().get(&p.id);
    let body = json!({
        "id": p.id,
        "mode": p.mode.as_str(),
        "suspended": suspension.as_deref().map(|s| json!({"reason": s.reason, "since_unix": s.since_unix})),
        "per_account": p.per_account.map(|r| r.to_string()),
        "last_minute_secs": span.as_secs_f64(),
        "classes": classes,
        "refused_before_a_class": unrouted,
    });
    plain(StatusCode::OK, JSON, body.to_string())
}

async fn reload(control: &Control, force: bool) -> Answer {
    match control.reload(force).await {
        Ok(done) => plain(StatusCode::OK, JSON, json!(done).to_string()),
        Err(ReloadError::Invalid(errors)) => {
            let mut r = problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Configuration invalid; nothing was applied",
                &errors.to_string(),
            );
            r.headers_mut()
                .insert("x-billgate-reload", HeaderValue::from_static("invalid"));
            r
        }
        Err(error @ ReloadError::Refused(_)) => problem(
            StatusCode::CONFLICT,
            "Reload refused by guardrails; nothing was applied",
            &error.to_string(),
        ),
        Err(error @ ReloadError::NoFile) => problem(
            StatusCode::CONFLICT,
            "Nothing to reload",
            &error.to_string(),
        ),
        Err(error @ (ReloadError::TimedOut { .. } | ReloadError::StillReading(_))) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Configuration file not read in time; nothing was applied",
            &error.to_string(),
        ),
    }
}

async fn suspend(control: &Control, id: &str, request: Request<Incoming>) -> Answer {
    let body = match Limited::new(request.into_body(), 16 * 1024).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Body too large",
                "send at most 16 KiB",
            )
        }
    };
    let reason = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("reason")
                .and_then(|r| r.as_str())
                .map(str::trim)
                .map(str::to_owned)
        })
        .filter(|r| !r.is_empty() && r.chars().count() <= 500);
    let Some(reason) = reason else {
        return problem(
            StatusCode::BAD_REQUEST,
            "A reason is required",
            "send JSON like {\"reason\": \"polling storm, see incident 4711\"} (1 to 500 characters); partners are told it",
        );
    };
    match control.suspend(id, &reason).await {
        Ok(s) => plain(
            StatusCode::OK,
            JSON,
            json!({"partner": id, "suspended": {"reason": s.reason, "since_unix": s.since_unix}})
                .to_string(),
        ),
        Err(error) => control_error(error),
    }
}

async fn resume(control: &Control, id: &str) -> Answer {
    match control.resume(id).await {
        Ok(lifted) => plain(
            StatusCode::OK,
            JSON,
            json!({"partner": id, "resumed": lifted}).to_string(),
        ),
        Err(error) => control_error(error),
    }
}

fn control_error(error: ControlError) -> Answer {
    match error {
        ControlError::UnknownPartner(_) => {
            problem(StatusCode::NOT_FOUND, "No such partner", &error.to_string())
        }
        ControlError::State { .. } => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "State not saved",
            &error.to_string(),
        ),
    }
}

fn unauthorized(detail: &str) -> Answer {
    let mut r = problem(StatusCode::UNAUTHORIZED, "Admin token required", detail);
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"billgate-admin\""),
    );
    r
}

fn not_allowed(allow: &'static str) -> Answer {
    let mut r = problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        &format!("use {allow}"),
    );
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn plain(status: StatusCode, content_type: HeaderValue, body: String) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Answer {
    let body = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    plain(status, PROBLEM, body.to_string())
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in [
            "Bearer t0k",
            "bearer t0k",
            "BEARER t0k",
            "bEaReR   t0k",
            " Bearer t0k ",
        ] {
            assert_eq!(bearer_token(value), Some("t0k"), "{value:?}");
        }
        for value in [
            "Basic dXNlcjpwYXNz",
            "Bearert0k",
            "Bearer",
            "t0k",
            "Bearer\tt0k",
        ] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
