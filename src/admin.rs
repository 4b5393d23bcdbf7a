//! The admin listener. Open: `/metrics` (Prometheus text), `/healthz` (alive), `/readyz` (a
//! snapshot is loaded and the biller accepted a connection at the last probe). Behind the bearer
//! token: `/admin/config`, `/admin/partners`, `/admin/partners/{id}`, `/admin/reload`,
//! `/admin/partners/{id}/suspend` and `…/resume`, `/admin/deliveries` and
//! `/admin/deliveries/{id}/replay`. Without a token the reads stay open and the mutations are
//! off. `POST /v1/bill-events` is the biller's, behind its own token.

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
        (&Method::POST, ["v1", "bill-events"]) => bill_events(&control, request).await,
        (&Method::GET, ["admin", "deliveries"]) => {
            let query = request.uri().query().map(str::to_owned);
            match authorize(&control, &request, false) {
                Err(refused) => refused,
                Ok(()) => deliveries(&control, query.as_deref()).await,
            }
        }
        (&Method::POST, ["admin", "deliveries", id, "replay"]) => {
            let id = (*id).to_owned();
            match authorize(&control, &request, true) {
                Err(refused) => refused,
                Ok(()) => replay(&control, &id).await,
            }
        }
        (_, ["v1", "bill-events"] | ["admin", "deliveries", _, "replay"]) => not_allowed("POST"),
        (_, ["healthz" | "readyz" | "metrics"] | ["admin", "config" | "fleet" | "partners" | "deliveries"] | ["admin", "partners", _]) => not_allowed("GET"),
        (_, ["admin", "reload"] | ["admin", "partners", _, "suspend" | "resume"]) => not_allowed("POST"),
        _ => problem(
            StatusCode::NOT_FOUND,
            "Not found",
            "the admin listener serves /metrics, /healthz, /readyz, /admin/{config,fleet,partners,reload,deliveries} and POST /v1/bill-events",
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

/// One bill event the biller pushes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BillEvent {
    account: String,
    bill_id: String,
    status: String,
    #[serde(default)]
    amount_due: Option<serde_json::Value>,
    #[serde(default)]
    due_date: Option<String>,
}

/// `POST /v1/bill-events`: the biller tells of a bill that appeared, changed or was paid,
/// with its own bearer token (`[subscriptions] biller_token_file`); every subscriber of the
/// account is told at once. One event, or `{"events": [...]}` (at most 1 000).
async fn bill_events(control: &Control, request: Request<Incoming>) -> Answer {
    let Some(subscriptions) = control.shared.subscriptions() else {
        return problem(
            StatusCode::NOT_FOUND,
            "Subscriptions are off",
            "this gateway has no [subscriptions]: there is no one to tell of bill events",
        );
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match (
        presented,
        subscriptions.biller_token_matches(presented.unwrap_or_default().as_bytes()),
    ) {
        (_, None) => return problem(
            StatusCode::FORBIDDEN,
            "Bill events are off",
            "[subscriptions] biller_token_file is not set, so the biller cannot push bill events",
        ),
        (Some(_), Some(true)) => {}
        (Some(_), Some(false)) => return unauthorized("the bearer token is not the biller's"),
        (None, Some(_)) => {
            return unauthorized("send the biller's token as `Authorization: Bearer <token>`")
        }
    }
    let body = match Limited::new(request.into_body(), 1024 * 1024)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Body too large",
                "send at most 1 MiB",
            )
        }
    };
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Events {
        Many { events: Vec<BillEvent> },
        One(BillEvent),
    }
    let events = match serde_json::from_slice::<Events>(&body) {
        Ok(Events::One(event)) => vec![event],
        Ok(Events::Many { events }) if events.len() <= 1000 => events,
        Ok(Events::Many { .. }) => {
            return problem(StatusCode::BAD_REQUEST, "Too many events", "send at most 1 000 events at once")
        }
        Err(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Not a bill event",
                "send JSON like {\"account\": \"…\", \"bill_id\": \"…\", \"status\": \"due\", \"amount_due\": \"12.30\", \"due_date\": \"2026-12-15\"}, or {\"events\": [...]}",
            )
        }
    };
    let fits = |text: &str, most: usize| {
        !text.is_empty() && text.len() <= most && !text.chars().any(char::is_control)
    };
    let mut enqueued = 0;
    for event in events {
        let amount_due = match &event.amount_due {
            None => String::new(),
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::Object(money)) => money
                .get("value")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            Some(_) => String::new(),
        };
        let due_date = event.due_date.unwrap_or_default();
        if !crate::admission::account_ok(&event.account)
            || !fits(&event.bill_id, 64)
            || !fits(&event.status, 32)
            || amount_due.len() > 32
            || due_date.len() > 32
        {
            return problem(
                StatusCode::BAD_REQUEST,
                "Bill event not accepted",
                "account as partners send it, bill_id (1–64 characters), status (1–32), amount_due and due_date (at most 32 each), no control characters",
            );
        }
        let bill = billgate_subs::store::BillState {
            bill_id: event.bill_id,
            status: event.status,
            amount_due,
            due_date,
        };
        match subscriptions
            .ingest(&event.account, &[bill], crate::subscriptions::Source::Push)
            .await
        {
            Ok(n) => enqueued += n,
            Err(error) => {
                tracing::warn!(%error, "a pushed bill event could not be stored");
                return problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Subscription store unavailable",
                    "the event was not stored; send it again",
                );
            }
        }
    }
    plain(
        StatusCode::ACCEPTED,
        JSON,
        json!({ "enqueued": enqueued }).to_string(),
    )
}

/// `GET /admin/deliveries?cursor=…`: the dead letters (deliveries given up past the horizon),
/// a page at a time, and the queue's counts.
async fn deliveries(control: &Control, query: Option<&str>) -> Answer {
    let Some(subscriptions) = control.shared.subscriptions() else {
        return problem(
            StatusCode::NOT_FOUND,
            "Subscriptions are off",
            "this gateway has no [subscriptions]",
        );
    };
    let cursor = query.and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("cursor="))
            .filter(|c| !c.is_empty())
    });
    let store = &subscriptions.store;
    let read = async {
        let dead = store.dead_letters(cursor, 100).await?;
        let counts = store.queue_counts().await?;
        Ok::<_, billgate_subs::store::StoreError>((dead, counts))
    };
    match read.await {
        Ok((dead, counts)) => {
            let next = (dead.len() == 100)
                .then(|| dead.last().map(|d| d.id.clone()))
                .flatten();
            let body = json!({
                "pending": counts.pending,
                "delivered": counts.delivered,
                "dead": counts.dead,
                "dead_letters": dead,
                "next_cursor": next,
            });
            plain(StatusCode::OK, JSON, body.to_string())
        }
        Err(error) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Subscription store unavailable",
            &error.to_string(),
        ),
    }
}

/// `POST /admin/deliveries/{id}/replay`: a dead letter goes back to the queue, due now.
async fn replay(control: &Control, id: &str) -> Answer {
    let Some(subscriptions) = control.shared.subscriptions() else {
        return problem(
            StatusCode::NOT_FOUND,
            "Subscriptions are off",
            "this gateway has no [subscriptions]",
        );
    };
    match subscriptions.store.replay(id, subscriptions.now_ms()).await {
        Ok(true) => {
            subscriptions.wake.notify_one();
            tracing::info!(delivery = %id, "dead letter replayed by the operators");
            plain(StatusCode::OK, JSON, json!({ "replayed": id }).to_string())
        }
        Ok(false) => problem(
            StatusCode::NOT_FOUND,
            "No such dead letter",
            "no dead delivery has that id",
        ),
        Err(error) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Subscription store unavailable",
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
