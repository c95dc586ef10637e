//! The JSON API the dashboard and scripts read. Read-only views of in-memory state for now.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::accounting::Accounting;

pub fn router(accounting: Arc<Accounting>) -> Router {
    Router::new()
        .route("/api/requests/recent", get(recent_requests))
        .route("/api/requests/live", get(live_requests))
        .route("/api/tokens", get(token_stats))
        .with_state(accounting)
}

#[derive(Deserialize)]
struct RecentQuery {
    limit: Option<usize>,
}

async fn recent_requests(
    State(accounting): State<Arc<Accounting>>,
    Query(query): Query<RecentQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(50).min(256);
    let records = accounting.recent(limit);
    let records: Vec<&crate::accounting::RequestRecord> =
        records.iter().map(AsRef::as_ref).collect();
    Json(records).into_response()
}

async fn live_requests(State(accounting): State<Arc<Accounting>>) -> Response {
    Json(accounting.live.snapshot()).into_response()
}

async fn token_stats(State(accounting): State<Arc<Accounting>>) -> Response {
    let calibration: Vec<serde_json::Value> = accounting
        .calibration_snapshot()
        .into_iter()
        .map(|(model, c)| serde_json::json!({"model": model, "ratio": c.ratio(), "samples": c.samples}))
        .collect();
    let totals = &accounting.totals;
    Json(serde_json::json!({
        "message_cache": accounting.cache_stats(),
        "calibration": calibration,
        "totals": {
            "requests": totals.requests.load(Ordering::Relaxed),
            "prompt_tokens": totals.prompt_tokens.load(Ordering::Relaxed),
            "completion_tokens": totals.completion_tokens.load(Ordering::Relaxed),
            "cost_usd": totals.cost_micro_usd.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }))
    .into_response()
}
