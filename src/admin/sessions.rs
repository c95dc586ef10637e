//! The store's HTTP API: sessions, their requests, exports, statistics, maintenance. Reads run on read-only
//! connections on the blocking pool; changes go through the writer thread (one writer, in order with the
//! records). Errors are JSON: `{"error": {"message", "type", "code"}}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRef, FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::context::ContextEngine;
use crate::http_error::HttpError;
use crate::store::db::Db;
use crate::store::export::{self, Format};
use crate::store::masks::MaskKey;
use crate::store::query::{self, Order, RequestFilter, SessionSort, StatusFilter};
use crate::store::{Readers, SessionChange, StoreError, StoreSink};

/// Shared by the store routes.
pub struct StoreApi {
    pub sink: Arc<StoreSink>,
    pub readers: Readers,
    /// The context transforms: their per-session settings mirror the store's sessions.
    pub context: Arc<ContextEngine>,
    pub mask_key: Option<MaskKey>,
}

impl StoreApi {
    pub fn new(
        sink: Arc<StoreSink>,
        context: Arc<ContextEngine>,
        mask_key: Option<MaskKey>,
    ) -> Arc<StoreApi> {
        let readers = Readers::at(sink.location());
        Arc::new(StoreApi {
            sink,
            readers,
            context,
            mask_key,
        })
    }

    /// Mirrors the active session for the context settings of requests without a client session id.
    fn note_active(&self, id: i64, active: bool) {
        let sessions = &self.context.sessions;
        if active {
            sessions.set_active(Some(id));
        } else if sessions.active() == Some(id) {
            sessions.set_active(None);
        }
    }
}

/// The store's API, for a handler that needs it: refused with a 404 when this instance runs without a store
/// (`[store] enabled = false`).
pub struct Store(pub Arc<StoreApi>);

impl<S> FromRequestParts<S> for Store
where
    Option<Arc<StoreApi>>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request_parts(_parts: &mut Parts, state: &S) -> Result<Store, HttpError> {
        Option::<Arc<StoreApi>>::from_ref(state)
            .map(Store)
            .ok_or_else(|| {
                HttpError::not_found(
                    "store_disabled",
                    "this kimi-proxy runs without a store ([store] enabled = false)",
                )
            })
    }
}

/// A session id that names no session.
pub fn unknown_session(id: i64) -> HttpError {
    HttpError::not_found("unknown_session", format!("no session {id}"))
}

impl From<StoreError> for HttpError {
    fn from(error: StoreError) -> HttpError {
        let code = match &error {
            StoreError::UnknownSession(id) => return unknown_session(*id),
            StoreError::NotOnPostgres(_) => {
                return HttpError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "store_error",
                    "not_on_postgres",
                    error.to_string(),
                );
            }
            StoreError::Closed => "store_closed",
            _ => "store_unavailable",
        };
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_error",
            code,
            error.to_string(),
        )
    }
}

pub type ApiResult = Result<Response, HttpError>;

fn query_error(rejection: QueryRejection) -> HttpError {
    HttpError::bad_request("invalid_parameter", rejection.body_text())
}

pub fn json_error(rejection: JsonRejection) -> HttpError {
    HttpError::bad_request("invalid_body", rejection.body_text())
}

pub fn session_id(text: &str) -> Result<i64, HttpError> {
    text.parse::<i64>().map_err(|_| {
        HttpError::bad_request(
            "invalid_parameter",
            format!("`{text}` is not a session id (an integer)"),
        )
    })
}

/// Runs a read on the blocking pool.
pub async fn read<T: Send + 'static>(
    api: &Arc<StoreApi>,
    f: impl FnOnce(&dyn Db) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, HttpError> {
    let api = Arc::clone(api);
    tokio::task::spawn_blocking(move || api.readers.with_db(f))
        .await
        .map_err(|e| HttpError::from(StoreError::Other(format!("read task failed: {e}"))))?
        .map_err(HttpError::from)
}

const MAX_PAGE: u32 = 1000;

fn page(limit: Option<u32>, default: u32) -> Result<u32, HttpError> {
    match limit {
        Some(0) => Err(HttpError::bad_request(
            "invalid_parameter",
            "limit must be at least 1",
        )),
        Some(n) if n > MAX_PAGE => Err(HttpError::bad_request(
            "invalid_parameter",
            format!("limit must be at most {MAX_PAGE}"),
        )),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionsQuery {
    limit: Option<u32>,
    offset: Option<u64>,
    sort: Option<SessionSort>,
    order: Option<Order>,
}

pub(crate) async fn list_sessions(
    Store(api): Store,
    query: Result<Query<SessionsQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(query_error)?;
    let limit = page(q.limit, 50)?;
    let offset = q.offset.unwrap_or(0);
    let sort = q.sort.unwrap_or(SessionSort::LastActivity);
    let order = q.order.unwrap_or(Order::Desc);
    let (sessions, total) = read(&api, move |conn| {
        Ok((
            query::list_sessions(conn, sort, order, limit, offset)?,
            query::count_sessions(conn)?,
        ))
    })
    .await?;
    Ok(Json(json!({
        "object": "list",
        "data": sessions,
        "total": total,
        "limit": limit,
        "offset": offset,
    }))
    .into_response())
}

pub(crate) async fn get_session(Store(api): Store, Path(id): Path<String>) -> ApiResult {
    let id = session_id(&id)?;
    match read(&api, move |conn| query::get_session(conn, id)).await? {
        Some(session) => Ok(Json(session).into_response()),
        None => Err(unknown_session(id)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSession {
    name: String,
    model: Option<String>,
    /// Make it the active session (default true).
    activate: Option<bool>,
}

pub(crate) async fn create_session(
    Store(api): Store,
    body: Result<Json<CreateSession>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(json_error)?;
    let name = clean_name(&body.name)?;
    let model = clean_model(body.model)?;
    let activate = body.activate.unwrap_or(true);
    let id = api.sink.create_session(name, model, activate).await?;
    if activate {
        api.note_active(id, true);
    }
    let session = read(&api, move |conn| query::get_session(conn, id)).await?;
    if let Some(session) = &session {
        api.sink.notify(SessionChange::Created(session.clone()));
        if activate {
            api.sink.notify(SessionChange::Activated(Some(id)));
        }
    }
    Ok((StatusCode::CREATED, Json(session)).into_response())
}

/// Longest model id a session may name (catalog keys are far shorter).
const MAX_MODEL_CHARS: usize = 256;

/// A session's model: trimmed, none when blank, bounded and printable.
fn clean_model(model: Option<String>) -> Result<Option<String>, HttpError> {
    let Some(model) = model else {
        return Ok(None);
    };
    let model = model.trim();
    if model.is_empty() {
        return Ok(None);
    }
    if model.chars().count() > MAX_MODEL_CHARS || model.chars().any(char::is_control) {
        return Err(HttpError::bad_request(
            "invalid_parameter",
            format!("model must be at most {MAX_MODEL_CHARS} printable characters"),
        ));
    }
    Ok(Some(model.to_string()))
}

fn clean_name(name: &str) -> Result<String, HttpError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(HttpError::bad_request(
            "invalid_parameter",
            "name must be 1 to 200 printable characters",
        ));
    }
    Ok(name.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenameSession {
    name: String,
}

pub(crate) async fn rename_session(
    Store(api): Store,
    Path(id): Path<String>,
    body: Result<Json<RenameSession>, JsonRejection>,
) -> ApiResult {
    let id = session_id(&id)?;
    let Json(body) = body.map_err(json_error)?;
    let name = clean_name(&body.name)?;
    api.sink.rename_session(id, name).await?;
    changed_session_response(&api, id, false).await
}

/// Answers the session after a change and tells the store's listener (the live dashboard); `activation`: the
/// change was an activation or deactivation.
async fn changed_session_response(api: &Arc<StoreApi>, id: i64, activation: bool) -> ApiResult {
    let (session, active) = read(api, move |conn| {
        Ok((query::get_session(conn, id)?, query::active_session(conn)?))
    })
    .await?;
    let Some(session) = session else {
        return Err(unknown_session(id));
    };
    api.sink.notify(SessionChange::Updated(session.clone()));
    if activation {
        api.sink
            .notify(SessionChange::Activated(active.map(|s| s.id)));
    }
    Ok(Json(session).into_response())
}

pub(crate) async fn activate(Store(api): Store, Path(id): Path<String>) -> ApiResult {
    let id = session_id(&id)?;
    api.sink.set_active(id, true).await?;
    api.note_active(id, true);
    changed_session_response(&api, id, true).await
}

pub(crate) async fn deactivate(Store(api): Store, Path(id): Path<String>) -> ApiResult {
    let id = session_id(&id)?;
    api.sink.set_active(id, false).await?;
    api.note_active(id, false);
    changed_session_response(&api, id, true).await
}

pub(crate) async fn delete_session(Store(api): Store, Path(id): Path<String>) -> ApiResult {
    let id = session_id(&id)?;
    let deleted = api.sink.delete_sessions(vec![id]).await?;
    if deleted == 0 {
        return Err(unknown_session(id));
    }
    api.context.sessions.forget(id);
    api.note_active(id, false);
    api.sink.notify(SessionChange::Deleted(vec![id]));
    Ok(Json(json!({"deleted": [id]})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteSessions {
    ids: Vec<i64>,
}

pub(crate) async fn delete_sessions(
    Store(api): Store,
    body: Result<Json<DeleteSessions>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(json_error)?;
    if body.ids.is_empty() {
        return Err(HttpError::bad_request(
            "invalid_parameter",
            "ids must name at least one session",
        ));
    }
    let ids = body.ids;
    for id in &ids {
        api.context.sessions.forget(*id);
        api.note_active(*id, false);
    }
    let count = ids.len();
    let gone = ids.clone();
    let deleted = api.sink.delete_sessions(ids).await?;
    if deleted > 0 {
        api.sink.notify(SessionChange::Deleted(gone));
    }
    Ok(Json(json!({"requested": count, "deleted": deleted})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestsQuery {
    limit: Option<u32>,
    offset: Option<u64>,
    status: Option<String>,
    model: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
}

pub(crate) async fn session_requests(
    Store(api): Store,
    Path(id): Path<String>,
    query: Result<Query<RequestsQuery>, QueryRejection>,
) -> ApiResult {
    let id = session_id(&id)?;
    let Query(q) = query.map_err(query_error)?;
    let limit = page(q.limit, 100)?;
    let offset = q.offset.unwrap_or(0);
    let status = match q.status.as_deref() {
        None => None,
        Some(text) => Some(StatusFilter::parse(text).ok_or_else(|| {
            HttpError::bad_request(
                "invalid_parameter",
                format!("status must be a status code, `ok` or `error`, not `{text}`"),
            )
        })?),
    };
    let filter = RequestFilter {
        session: Some(id),
        since: q.since,
        until: q.until,
        status,
        model: q.model,
    };
    let found = read(&api, move |conn| {
        if query::get_session(conn, id)?.is_none() {
            return Ok(None);
        }
        Ok(Some(query::list_requests(conn, &filter, limit, offset)?))
    })
    .await?;
    match found {
        Some(requests) => Ok(Json(json!({
            "object": "list",
            "session_id": id,
            "data": requests,
            "limit": limit,
            "offset": offset,
        }))
        .into_response()),
        None => Err(unknown_session(id)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportQuery {
    format: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
}

fn export_format(text: Option<&str>) -> Result<Format, HttpError> {
    match text {
        None => Ok(Format::Json),
        Some(text) => Format::parse(text).ok_or_else(|| {
            HttpError::bad_request(
                "invalid_parameter",
                format!("format must be `csv` or `json`, not `{text}`"),
            )
        }),
    }
}

pub(crate) async fn export_session(
    Store(api): Store,
    Path(id): Path<String>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> ApiResult {
    let id = session_id(&id)?;
    let Query(q) = query.map_err(query_error)?;
    let format = export_format(q.format.as_deref())?;
    if read(&api, move |conn| query::get_session(conn, id))
        .await?
        .is_none()
    {
        return Err(unknown_session(id));
    }
    let filter = RequestFilter {
        session: Some(id),
        since: q.since,
        until: q.until,
        ..RequestFilter::default()
    };
    Ok(stream_export(
        &api,
        filter,
        format,
        &format!("session-{id}-requests"),
    ))
}

pub(crate) async fn export_all(
    Store(api): Store,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(query_error)?;
    let format = export_format(q.format.as_deref())?;
    let filter = RequestFilter {
        since: q.since,
        until: q.until,
        ..RequestFilter::default()
    };
    Ok(stream_export(&api, filter, format, "requests"))
}

/// Chunks in flight between the reader thread and the client.
const EXPORT_CHANNEL: usize = 4;

/// The export as a streamed body: a blocking reader pages through the rows and sends chunks over a bounded
/// channel; a slow client slows the reader down, a client that leaves stops it.
fn stream_export(
    api: &Arc<StoreApi>,
    filter: RequestFilter,
    format: Format,
    stem: &str,
) -> Response {
    let (sender, receiver) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(EXPORT_CHANNEL);
    let api = Arc::clone(api);
    tokio::task::spawn_blocking(move || {
        let result = api.readers.with_db(|db| {
            export::export_requests(db, &filter, format, export::PAGE_ROWS, |chunk| {
                sender.blocking_send(Ok(Bytes::from(chunk))).is_ok()
            })
        });
        if let Err(error) = result {
            tracing::warn!(%error, "export failed");
            let _ = sender.blocking_send(Err(std::io::Error::other(error.to_string())));
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(value) = HeaderValue::from_str(&format!(
        "attachment; filename=\"kimi-proxy-{stem}.{}\"",
        format.extension()
    )) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

pub(crate) async fn store_stats(Store(api): Store) -> ApiResult {
    let writer = api.sink.stats();
    let path = api.sink.sqlite_path().map(std::path::Path::to_path_buf);
    let shown = api.sink.location().to_string();
    let counts = read(&api, move |conn| query::store_counts(conn, path.as_deref())).await;
    let (database, error) = match counts {
        Ok(counts) => (serde_json::to_value(counts).unwrap_or_default(), None),
        Err(error) => (serde_json::Value::Null, Some(error.message)),
    };
    Ok(Json(json!({
        "path": shown,
        "database": database,
        "database_error": error,
        "writer": writer,
        "options": {
            "session_mode": api.sink.options().session_mode.as_str(),
            "queue_capacity": api.sink.options().queue_capacity,
            "batch_rows": api.sink.options().batch_rows,
            "flush_interval_ms": api.sink.options().flush_interval.as_millis() as u64,
            "preview_chars": api.sink.options().preview_chars,
            "retention_days": api.sink.options().retention_days,
        }
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetentionBody {
    days: u32,
    /// Give the space back to the file system (default true).
    vacuum: Option<bool>,
}

pub(crate) async fn retention(
    Store(api): Store,
    body: Result<Json<RetentionBody>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(json_error)?;
    if body.days == 0 {
        return Err(HttpError::bad_request(
            "invalid_parameter",
            "days must be at least 1",
        ));
    }
    let vacuum = body.vacuum.unwrap_or(true);
    let days = body.days;
    let outcome = api.sink.apply_retention(days, vacuum).await?;
    Ok(Json(outcome).into_response())
}
