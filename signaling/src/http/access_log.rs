//! One log line per HTTP request, for operators: method, route template, status,
//! duration, request id and the account or guest id of the session, if any.
//!
//! Never in the line: the concrete path (it can carry ids a template hides, and for
//! unmatched paths anything a client typed), query strings, names, usernames, tokens,
//! source addresses (the audit trail records those, under its own retention) or bodies.
//! The request id is the one the audit entries of the request carry and the
//! `x-request-id` response header returns, so one failed call can be followed from the
//! client to the log and the audit trail.
//!
//! Refusals (401, 403, 429) log at `warn`, server errors at `error`, the rest at `info`;
//! static files that were served log at `debug` (a page load is a dozen of them).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::model::Principal;

/// The response header naming the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Put in each request's extensions by [`log_request`]: the id [`super::Ctx`] takes
/// for its audit entries, and where the session extractors note whose session it was.
#[derive(Clone, Debug)]
pub struct RequestLog {
    pub id: String,
    principal: Arc<OnceLock<String>>,
}

impl RequestLog {
    fn new() -> Self {
        RequestLog {
            id: super::request_id(),
            principal: Arc::new(OnceLock::new()),
        }
    }

    /// Whose session the request carried (`account:N`, `guest:N`): a pseudonymous id,
    /// never a name.
    pub fn set_principal(&self, p: &Principal) {
        let _ = self.principal.set(p.to_string());
    }
}

pub async fn log_request(mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let log = RequestLog::new();
    req.extensions_mut().insert(log.clone());
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&log.id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let status = resp.status().as_u16();
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let duration_ms = (ms * 10.0).round() / 10.0;
    let account = log.principal.get().map(String::as_str).unwrap_or("-");
    let request_id = log.id.as_str();
    match (status, route.as_deref()) {
        (500.., route) => tracing::error!(
            target: "confide::http",
            %method, route = route.unwrap_or("(unmatched)"), status, duration_ms, request_id, account,
            "request failed"
        ),
        (401 | 403 | 429, route) => tracing::warn!(
            target: "confide::http",
            %method, route = route.unwrap_or("(unmatched)"), status, duration_ms, request_id, account,
            "request refused"
        ),
        (_, Some(route)) => tracing::info!(
            target: "confide::http",
            %method, route, status, duration_ms, request_id, account,
            "request"
        ),
        (_, None) => tracing::debug!(
            target: "confide::http",
            %method, route = "(static)", status, duration_ms, request_id, account,
            "request"
        ),
    }
    resp
}
