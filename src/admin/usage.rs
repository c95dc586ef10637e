//! `GET /api/usage`: the report of `kimi-proxy report` for the dashboard — proxied requests and the agents'
//! imported records together, filtered by source and project, grouped by day, week, month, session, project or
//! source (the per-agent totals).
//!
//! Query: `period` (default `daily`), `since`, `until` (days, `YYYY-MM-DD`), `timezone` (IANA; default the
//! server's), `source`, `project`, `breakdown` (per model). Answer: the report JSON
//! (`{"period", "timezone", "rows": [...], "totals": {...}}`); errors in the OpenAI format (`crate::http_error`).

use axum::extract::Query;
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;

use crate::http_error::HttpError;
use crate::ledgers::{LedgerError, Period, ReportOptions, build_report, parse_date};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageQuery {
    period: Option<String>,
    since: Option<String>,
    until: Option<String>,
    timezone: Option<String>,
    source: Option<String>,
    project: Option<String>,
    #[serde(default)]
    breakdown: bool,
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

pub(crate) async fn usage(
    super::Store(store): super::Store,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return HttpError::bad_request("invalid_parameter", e.body_text()).into_response();
        }
    };
    let options = match options(query) {
        Ok(o) => o,
        Err(e) => {
            return HttpError::bad_request("invalid_parameter", e.to_string()).into_response();
        }
    };
    let joined = tokio::task::spawn_blocking(move || {
        store.readers.with_db(|db| {
            build_report(db, &options).map_err(|e| match e {
                LedgerError::Store(s) => s,
                other => crate::store::StoreError::Other(other.to_string()),
            })
        })
    })
    .await;
    match joined {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => HttpError::from(e).into_response(),
        Err(e) => HttpError::from(crate::store::StoreError::Other(e.to_string())).into_response(),
    }
}
