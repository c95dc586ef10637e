//! `GET /api/alerts` and `POST /api/alerts/{id}/ack`. Active alerts come from memory; history from the store
//! (merged with what memory holds, which is newer while the writer catches up).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::json;

use crate::alerts::{Alert, AlertEngine};
use crate::http_error::HttpError;
use crate::store::{StoreError, alerts as table};
use crate::util::unix_ms;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

fn bad_request(message: impl Into<String>) -> Response {
    HttpError::bad_request("invalid_parameter", message).into_response()
}

fn store_error(e: StoreError) -> Response {
    HttpError::from(e).into_response()
}

fn not_found(id: i64) -> Response {
    HttpError::not_found("unknown_alert", format!("no alert {id}")).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    active: Option<bool>,
    limit: Option<u32>,
}

pub(crate) async fn list(
    State(engine): State<Arc<AlertEngine>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(rejection) => return bad_request(rejection.body_text()),
    };
    let limit = match q.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(n) => return bad_request(format!("limit must be between 1 and {MAX_LIMIT}, not {n}")),
    };
    let active = engine.active();
    let active_count = active.len();
    // By id, memory over the database (it is never older).
    let mut merged: BTreeMap<i64, Alert> = BTreeMap::new();
    if q.active != Some(true)
        && let Some(link) = engine.store_link()
    {
        let filter = q.active;
        let readers = Arc::clone(&link.readers);
        let rows = tokio::task::spawn_blocking(move || {
            readers.with_db(|db| table::list_alerts(db, filter, limit))
        })
        .await;
        match rows {
            Ok(Ok(rows)) => merged.extend(rows.into_iter().map(|a| (a.id, a))),
            Ok(Err(e)) => return store_error(e),
            Err(e) => return store_error(StoreError::Other(format!("read task failed: {e}"))),
        }
    }
    if q.active != Some(false) {
        merged.extend(active.into_iter().map(|a| (a.id, a)));
    }
    if q.active != Some(true) {
        merged.extend(engine.recent_resolved().into_iter().map(|a| (a.id, a)));
    }
    let mut data: Vec<Alert> = merged
        .into_values()
        .filter(|a| match q.active {
            Some(true) => a.resolved_at_ms.is_none(),
            Some(false) => a.resolved_at_ms.is_some(),
            None => true,
        })
        .collect();
    data.sort_by_key(|a| std::cmp::Reverse((a.fired_at_ms, a.id)));
    data.truncate(limit as usize);
    Json(json!({
        "object": "list",
        "data": data,
        "active": active_count,
        "enabled": engine.enabled(),
    }))
    .into_response()
}

pub(crate) async fn ack(
    State(engine): State<Arc<AlertEngine>>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return bad_request(format!("`{id}` is not an alert id (an integer)"));
    };
    if let Some(alert) = engine.ack_active(id) {
        return Json(alert).into_response();
    }
    let Some(link) = engine.store_link() else {
        return not_found(id);
    };
    let now = unix_ms();
    let acked = link.sink.ack_alert(id, now).await;
    match acked {
        Ok(true) => {}
        Ok(false) => return not_found(id),
        Err(e) => return store_error(e),
    }
    let readers = Arc::clone(&link.readers);
    let found =
        tokio::task::spawn_blocking(move || readers.with_db(|db| table::get_alert(db, id))).await;
    match found {
        Ok(Ok(Some(alert))) => Json(alert).into_response(),
        Ok(Ok(None)) => not_found(id),
        Ok(Err(e)) => store_error(e),
        Err(e) => store_error(StoreError::Other(format!("read task failed: {e}"))),
    }
}
