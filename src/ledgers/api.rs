//! `GET /api/usage`: the report of `kimi-proxy report` for the dashboard — proxied requests and the agents'
//! imported records together, filtered by source and project, grouped by day, week, month, session, project or
//! source (the per-agent totals).
//!
//! Query: `period` (default `daily`), `since`, `until` (days, `YYYY-MM-DD`), `timezone` (IANA; default the
//! server's), `source`, `project`, `breakdown` (per model). Answer: the report JSON
//! (`{"period", "timezone", "rows": [...], "totals": {...}}`); errors as `{"error": {"message", "type"}}`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use super::{LedgerError, Period, ReportOptions, build_report, parse_date};
use crate::store::api::StoreApi;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    period: Option<String>,
    since: Option<String>,
    until: Option<String>,
    timezone: Option<String>,
    source: Option<String>,
    project: Option<String>,
    #[serde(default)]
    breakdown: bool,
}

pub fn router(store: Arc<StoreApi>) -> Router {
    Router::new()
        .route("/api/usage", get(usage))
        .with_state(store)
}

fn options(q: UsageQuery) -> Result<ReportOptions, LedgerError> {
    Ok(ReportOptions {
        period: Period::parse(q.period.as_deref().unwrap_or("daily"))?,
        since: q.since.as_deref().map(parse_date).transpose()?,
        until: q.until.as_deref().map(parse_date).transpose()?,
        timezone: q.timezone.filter(|t| !t.is_empty()),
        source: q.source.filter(|s| !s.is_empty()),
        project: q.project.filter(|p| !p.is_empty()),
        breakdown: q.breakdown,
    })
}

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": kind}})),
    )
        .into_response()
}

async fn usage(
    State(store): State<Arc<StoreApi>>,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                e.body_text(),
            );
        }
    };
    let options = match options(query) {
        Ok(o) => o,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                e.to_string(),
            );
        }
    };
    let joined = tokio::task::spawn_blocking(move || {
        store.readers.with(|conn| {
            build_report(conn, &options).map_err(|e| match e {
                LedgerError::Store(s) => s,
                other => crate::store::StoreError::Other(other.to_string()),
            })
        })
    })
    .await;
    match joined {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            e.to_string(),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        ),
    }
}
