//! The admin listener: `/metrics` (Prometheus text), `/healthz` (alive) and `/readyz` (a
//! snapshot is loaded and the biller accepted a connection at the last probe).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::Shared;

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const PROMETHEUS: HeaderValue =
    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const PROBLEM: HeaderValue = HeaderValue::from_static("application/problem+json");

/// Serves the admin endpoints until `shutdown` turns true.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                let service = service_fn(move |request| answer(Arc::clone(&shared), request));
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

async fn answer(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => plain(StatusCode::OK, TEXT, "ok\n".into()),
        (&Method::GET, "/readyz") => {
            let snapshot = shared.snapshot.load();
            let reachable = shared.biller_reachable();
            let body = serde_json::json!({
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
        (&Method::GET, "/metrics") => match shared.metrics.render() {
            Ok(text) => plain(StatusCode::OK, PROMETHEUS, text),
            Err(error) => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Metrics unavailable",
                &error.to_string(),
            ),
        },
        (_, "/healthz" | "/readyz" | "/metrics") => {
            let mut r = problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "use GET",
            );
            r.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET"));
            r
        }
        _ => problem(
            StatusCode::NOT_FOUND,
            "Not found",
            "the admin listener serves /metrics, /healthz and /readyz",
        ),
    };
    Ok(response)
}

fn plain(status: StatusCode, content_type: HeaderValue, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    plain(status, PROBLEM, body.to_string())
}
