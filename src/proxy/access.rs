//! The access log: one structured line per request (target `billgate::access`), JSON with
//! `--log-format json`. Never the API key; the partner is named by its id.

use std::time::Duration;

use http::StatusCode;

use super::snapshot::Snapshot;
use crate::config::Class;
use crate::ids::{PartnerId, RouteId};

/// What one request's line says, filled in as the request is served.
#[derive(Debug, Default, Clone, Copy)]
pub struct AccessLog {
    pub partner: Option<PartnerId>,
    pub class: Option<Class>,
    pub route: Option<RouteId>,
    /// `forwarded`, `failed`, or the reason the gateway refused.
    pub outcome: &'static str,
    /// Time the biller took to answer, when it was asked.
    pub upstream: Option<Duration>,
}

impl AccessLog {
    /// Writes the line, if the configuration asks for access logs.
    pub fn emit(&self, snapshot: &Snapshot, status: StatusCode, total: Duration) {
        if !snapshot.config.server.access_log {
            return;
        }
        let partner = self
            .partner
            .and_then(|i| snapshot.gate.partners().get(i))
            .map_or("unknown", |p| &*p.id);
        let route = self
            .route
            .and_then(|i| snapshot.config.routes.get(i))
            .map_or("-", |r| r.name.as_str());
        tracing::info!(
            target: "billgate::access",
            partner,
            class = self.class.map_or("none", Class::as_str),
            route,
            status = status.as_u16(),
            outcome = self.outcome,
            upstream_ms = self.upstream.map(crate::logging::ms),
            total_ms = crate::logging::ms(total),
        );
    }
}
