//! HTTP routes of the context transforms (mounted with the store's API): masked originals, per-session
//! settings, manual compaction and its preview.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use serde_json::json;

use super::sessions::{ApiResult, Store, StoreApi, json_error, read, session_id};
use crate::config::context::Toggles;
use crate::context::conversation::Counter;
use crate::context::sessions::SessionContext;
use crate::http_error::HttpError;
use crate::proxy::ProxyState;
use crate::store::masks::{self, MaskReadError};
use crate::store::{SessionChange, StoreError, query};

/// `GET /api/mask/{hash}`: a masked original.
pub async fn get_mask(Store(api): Store, Path(hash): Path<String>) -> ApiResult {
    if hash.len() != 32 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(HttpError::bad_request(
            "invalid_parameter",
            format!("`{hash}` is not a mask id (32 hex digits)"),
        ));
    }
    let hash = hash.to_ascii_lowercase();
    let key = api.mask_key.clone();
    let preview_chars = api.context.config.masking.preview_chars;
    let api2 = Arc::clone(&api);
    let found = tokio::task::spawn_blocking(move || {
        let mut outcome = None;
        let result = api2.readers.with_db(|db| {
            outcome = Some(masks::get(db, &hash, key.as_ref(), preview_chars));
            Ok(())
        });
        match (result, outcome) {
            (Err(error), _) => Err(MaskReadError::Store(error)),
            (Ok(()), Some(outcome)) => outcome,
            (Ok(()), None) => Ok(None),
        }
    })
    .await
    .map_err(|e| HttpError::from(StoreError::Other(format!("read task failed: {e}"))))?;
    match found {
        Ok(Some(row)) => Ok(Json(row).into_response()),
        Ok(None) => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "unknown_mask",
            "no masked original with this id",
        )),
        Err(MaskReadError::Store(error)) => Err(error.into()),
        Err(error) => Err(HttpError::new(
            StatusCode::CONFLICT,
            "store_error",
            "mask_encrypted",
            error.to_string(),
        )),
    }
}

fn settings_json(id: i64, context: &SessionContext, api: &StoreApi) -> serde_json::Value {
    let model_free = context.toggles.over(api.context.config.toggles());
    json!({
        "session_id": id,
        "settings": context.toggles,
        "compact_next": context.compact_next,
        "effective_without_model_or_header": model_free.resolve_json(),
    })
}

/// `GET /api/sessions/{id}/context`.
pub async fn get_settings(Store(api): Store, Path(id): Path<String>) -> ApiResult {
    let id = session_id(&id)?;
    if read(&api, move |conn| query::get_session(conn, id))
        .await?
        .is_none()
    {
        return Err(super::sessions::unknown_session(id));
    }
    let context = api.context.sessions.get(id);
    Ok(Json(settings_json(id, &context, &api)).into_response())
}

/// `PUT /api/sessions/{id}/context`: `{"masking": true, "observation": null, "compaction": false}` (a field
/// left out or `null` follows the model and `[context]`).
pub async fn put_settings(
    Store(api): Store,
    Path(id): Path<String>,
    body: Result<Json<Toggles>, JsonRejection>,
) -> ApiResult {
    let id = session_id(&id)?;
    let Json(toggles) = body.map_err(json_error)?;
    let stored = (!toggles.is_empty())
        .then(|| serde_json::to_string(&toggles))
        .transpose()
        .map_err(|e| HttpError::from(StoreError::Other(e.to_string())))?;
    let (client_key, active) = api.sink.set_context_settings(id, stored).await?;
    let sessions = &api.context.sessions;
    let mut context = sessions.get(id);
    context.toggles = toggles;
    sessions.set(id, client_key.as_deref(), context.clone());
    if active {
        sessions.set_active(Some(id));
    }
    // Every open dashboard shows the session's settings.
    if let Some(session) = read(&api, move |conn| query::get_session(conn, id)).await? {
        api.sink.notify(SessionChange::Updated(session));
    }
    Ok(Json(settings_json(id, &context, &api)).into_response())
}

/// `POST /api/sessions/{id}/compact`: the session's next request is compacted whatever its size (once).
pub async fn compact(Store(api): Store, Path(id): Path<String>) -> ApiResult {
    let id = session_id(&id)?;
    let Some(session) = read(&api, move |conn| query::get_session(conn, id)).await? else {
        return Err(super::sessions::unknown_session(id));
    };
    let sessions = &api.context.sessions;
    let mut context = sessions.get(id);
    context.compact_next = true;
    sessions.set(id, session.client_key.as_deref(), context.clone());
    if session.active {
        sessions.set_active(Some(id));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(settings_json(id, &context, &api)),
    )
        .into_response())
}

/// `POST /api/sessions/{id}/compact/preview`: before/after tokens of compacting the session's latest request.
pub async fn compact_preview(
    Store(api): Store,
    State(proxy): State<Arc<ProxyState>>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = session_id(&id)?;
    let latest = read(&api, move |conn| {
        if query::get_session(conn, id)?.is_none() {
            return Ok(None);
        }
        Ok(Some(query::latest_record_id(conn, id)?))
    })
    .await?;
    let Some(latest) = latest else {
        return Err(super::sessions::unknown_session(id));
    };
    let not_kept = || {
        HttpError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "no_recent_request",
            "the session's latest request is no longer in memory (the proxy keeps the last 64 request bodies while a context transform is configured)",
        )
    };
    let record_id = latest.ok_or_else(not_kept)?;
    let recent = proxy
        .context
        .recent_body(record_id as u64)
        .ok_or_else(not_kept)?;
    let preview = tokio::task::spawn_blocking(move || {
        let tokenizer = proxy.accounting.tokenizer_for(&recent.model).tokenizer;
        let counter = Counter {
            tokenizer: &tokenizer,
            cache: proxy.accounting.message_cache(),
        };
        proxy.context.preview(&recent, &counter)
    })
    .await
    .map_err(|e| HttpError::from(StoreError::Other(format!("preview failed: {e}"))))?;
    Ok(Json(json!({"session_id": id, "preview": preview})).into_response())
}
