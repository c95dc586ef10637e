//! The messages of docs/ws-protocol.md. Everything here borrows: an event is serialised once, by the hub, and
//! the same bytes go to every client.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::accounting::RequestRecord;
use crate::accounting::in_flight::LiveSnapshot;
use crate::config::{ApiKey, Config, Prices};
use crate::monitor::Summary;
use crate::store::query::Session;

/// `{"type", "seq", "ts", "data"}`.
#[derive(Serialize)]
pub struct Envelope<'a, T: Serialize> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub seq: u64,
    pub ts: i64,
    pub data: T,
}

/// A finished request as the dashboard shows it (no message hashes, no prompt breakdown).
#[derive(Serialize)]
pub struct RequestView<'a> {
    pub id: u64,
    /// The instance that served it (`[cluster] instance_id`): ids are per instance.
    pub instance: Option<&'a str>,
    pub session_id: Option<i64>,
    pub started_at_ms: i64,
    pub model: &'a str,
    pub provider: &'a str,
    pub streaming: bool,
    pub status: u16,
    pub error_kind: Option<&'a str>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub prompt_estimated: u64,
    pub prompt_reported: Option<u64>,
    pub completion_estimated: u64,
    pub completion_reported: Option<u64>,
    pub cached_reported: Option<u64>,
    pub tokens_estimated: bool,
    pub prompt_accuracy: Option<f64>,
    pub completion_accuracy: Option<f64>,
    pub cost_usd: f64,
    pub cache_hit: bool,
    pub latency_us: u64,
    pub ttft_us: Option<u64>,
    pub overhead_us: Option<u64>,
    pub finish_reason: Option<&'a str>,
    pub preview: Option<&'a str>,
    pub client_app: Option<&'a str>,
    pub client_api: &'a str,
    /// Prompt tokens the context transforms removed (billable requests), and their price.
    pub tokens_saved: u64,
    pub cost_saved_usd: f64,
}

impl<'a> RequestView<'a> {
    pub fn of(record: &'a RequestRecord, session_id: Option<i64>) -> RequestView<'a> {
        RequestView {
            id: record.id,
            instance: record.instance.as_deref(),
            session_id,
            started_at_ms: record.started_at_ms,
            model: &record.model,
            provider: &record.provider,
            streaming: record.streaming,
            status: record.status,
            error_kind: record.error_kind.as_deref(),
            prompt_tokens: record.prompt_tokens,
            completion_tokens: record.completion_tokens,
            prompt_estimated: record.prompt_estimated,
            prompt_reported: record.prompt_reported,
            completion_estimated: record.completion_estimated,
            completion_reported: record.completion_reported,
            cached_reported: record.cached_reported,
            tokens_estimated: record.tokens_estimated,
            prompt_accuracy: record.prompt_accuracy,
            completion_accuracy: record.completion_accuracy,
            cost_usd: record.cost_usd,
            cache_hit: record.cache_hit,
            latency_us: record.latency_us,
            ttft_us: record.ttft_us,
            overhead_us: record.overhead_us,
            finish_reason: record.finish_reason.as_deref(),
            preview: record.preview.as_deref(),
            client_app: record.client_app.as_deref(),
            client_api: record.client_api,
            tokens_saved: record.tokens_saved,
            cost_saved_usd: record.cost_saved_usd,
        }
    }
}

/// The `requests` columns a [`RequestView`] shows, by field name where the two differ.
const ROW_FIELDS: &[(&str, &str)] = &[
    ("id", "record_id"),
    ("instance", "instance"),
    ("session_id", "session_id"),
    ("started_at_ms", "started_at"),
    ("model", "model"),
    ("provider", "provider"),
    ("streaming", "streaming"),
    ("status", "status"),
    ("error_kind", "error_kind"),
    ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("prompt_estimated", "prompt_estimated"),
    ("prompt_reported", "prompt_reported"),
    ("completion_estimated", "completion_estimated"),
    ("completion_reported", "completion_reported"),
    ("cached_reported", "cached_reported"),
    ("tokens_estimated", "tokens_estimated"),
    ("prompt_accuracy", "prompt_accuracy"),
    ("completion_accuracy", "completion_accuracy"),
    ("cost_usd", "cost_usd"),
    ("cache_hit", "cache_hit"),
    ("latency_us", "latency_us"),
    ("ttft_us", "ttft_us"),
    ("overhead_us", "overhead_us"),
    ("finish_reason", "finish_reason"),
    ("preview", "preview"),
    ("client_app", "client_app"),
    ("client_api", "client_api"),
    ("tokens_saved", "tokens_saved"),
    ("cost_saved_usd", "cost_saved_usd"),
];

/// Another instance's stored request as the same fields a local [`RequestView`] has (plus `remote` and its
/// `row_id`: record ids are per instance), and whether it failed.
pub fn row_view(row: &Map<String, Value>) -> (Map<String, Value>, bool) {
    let view: Map<String, Value> = ROW_FIELDS
        .iter()
        .map(|(field, column)| {
            (
                (*field).to_string(),
                row.get(*column).cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    let mut view = view;
    view.insert("remote".into(), Value::Bool(true));
    view.insert(
        "row_id".into(),
        row.get("id").cloned().unwrap_or(Value::Null),
    );
    let status = row.get("status").and_then(Value::as_u64).unwrap_or(0);
    let failed =
        status == 0 || status >= 400 || row.get("error_kind").is_some_and(|kind| !kind.is_null());
    (view, failed)
}

/// Whether a record goes out as `request.failed` rather than `request.finished`.
pub fn is_failure(record: &RequestRecord) -> bool {
    record.status == 0 || record.status >= 400 || record.error_kind.is_some()
}

#[derive(Serialize)]
pub struct Started<'a> {
    pub id: u64,
    pub started_at_ms: i64,
    pub model: &'a str,
    pub provider: &'a str,
    pub streaming: bool,
}

#[derive(Serialize)]
pub struct Progress {
    pub requests: Vec<ProgressItem>,
}

#[derive(Serialize)]
pub struct ProgressItem {
    pub id: u64,
    pub completion_tokens: u64,
    pub elapsed_ms: i64,
}

#[derive(Serialize)]
pub struct Stored {
    pub requests: Vec<Assignment>,
}

#[derive(Serialize)]
pub struct Assignment {
    pub id: u64,
    pub session_id: Option<i64>,
}

#[derive(Serialize)]
pub struct SessionData<'a> {
    pub session: &'a Session,
}

#[derive(Serialize)]
pub struct Deleted<'a> {
    pub ids: &'a [i64],
}

#[derive(Serialize)]
pub struct Activated {
    pub session_id: Option<i64>,
}

/// The `stats` tick: the last minute's percentiles, rates, memory, queues. Absent fields are unknown.
#[derive(Serialize)]
pub struct Stats {
    pub uptime_s: u64,
    pub requests_total: u64,
    pub requests_per_s: f64,
    pub error_rate: f64,
    pub open_requests: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    pub dashboard_clients: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_us: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_us: Option<Summary>,
    pub cache: CacheStats,
    pub hub: HubStats,
}

#[derive(Serialize)]
pub struct StoreStats {
    pub queue_depth: usize,
    pub dropped: u64,
    pub healthy: bool,
}

#[derive(Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// The hub's own health: events it could not take, clients it had to cut off.
#[derive(Serialize)]
pub struct HubStats {
    pub lost_events: u64,
    pub slow_clients_cut: u64,
}

/// The `init` snapshot.
#[derive(Serialize)]
pub struct Init<'a> {
    pub server: ServerInfo,
    pub active_session_id: Option<i64>,
    pub sessions: Vec<Session>,
    pub sessions_total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub today: Option<Today>,
    pub totals: Totals,
    /// What the context transforms saved over all stored sessions (without the store: since start).
    pub saved: Saved,
    pub recent: Vec<RequestView<'a>>,
    pub selected_session_id: Option<i64>,
    /// Rows as `GET /api/sessions/{id}/requests` answers them (newest first).
    pub session_requests: Vec<Map<String, Value>>,
    pub live: Vec<LiveSnapshot>,
    pub accuracy: Vec<Accuracy>,
    pub models: Vec<ModelView<'a>>,
    /// Active alerts, newest first.
    pub alerts: Vec<crate::alerts::Alert>,
    pub stats: Stats,
}

#[derive(Serialize)]
pub struct ServerInfo {
    pub version: &'static str,
    pub started_at_ms: i64,
    pub store: bool,
}

#[derive(Serialize, Default)]
pub struct Today {
    pub since_ms: i64,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub cost_usd: f64,
}

#[derive(Serialize)]
pub struct Totals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

#[derive(Serialize, Default, Clone, Copy)]
pub struct Saved {
    pub tokens_saved: u64,
    pub cost_saved_usd: f64,
}

/// How close our estimates come to the provider's figures, per model.
#[derive(Serialize)]
pub struct Accuracy {
    pub model: String,
    /// Requests with both figures, among the recent ones.
    pub samples: u64,
    pub prompt_accuracy: Option<f64>,
    pub completion_accuracy: Option<f64>,
    /// The calibration ratio learnt so far (reported / estimated), with its sample count.
    pub ratio: Option<f64>,
    pub calibration_samples: u64,
}

#[derive(Serialize)]
pub struct ModelView<'a> {
    pub key: &'a str,
    pub provider: &'a str,
    pub upstream_id: &'a str,
    pub context_window: u64,
    pub capabilities: &'a [String],
    pub prices: &'a Prices,
    /// The provider has what it needs to be called (its key variable is set, or it needs none).
    pub key_ready: bool,
}

/// The catalog, grouped by provider then key (the model picker).
pub fn models(config: &Config) -> Vec<ModelView<'_>> {
    let mut all: Vec<ModelView<'_>> = config
        .models
        .values()
        .map(|m| ModelView {
            key: &m.key,
            provider: &m.provider,
            upstream_id: &m.upstream_id,
            context_window: m.max_context_size,
            capabilities: &m.capabilities,
            prices: &m.prices,
            key_ready: config
                .providers
                .get(&m.provider)
                .is_some_and(|p| !matches!(p.api_key, ApiKey::Missing { .. })),
        })
        .collect();
    all.sort_by(|a, b| (a.provider, a.key).cmp(&(b.provider, b.key)));
    all
}
