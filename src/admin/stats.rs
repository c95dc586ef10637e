//! The JSON API the dashboard and scripts read. Read-only views of in-memory state for now.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;

use crate::proxy::ProxyState;

#[derive(Deserialize)]
pub(crate) struct RecentQuery {
    limit: Option<usize>,
}

pub(crate) async fn recent_requests(
    State(state): State<Arc<ProxyState>>,
    Query(query): Query<RecentQuery>,
) -> Response {
    let accounting = &state.accounting;
    let limit = query.limit.unwrap_or(50).min(256);
    let records = accounting.recent(limit);
    let records: Vec<&crate::accounting::RequestRecord> =
        records.iter().map(AsRef::as_ref).collect();
    Json(records).into_response()
}

pub(crate) async fn live_requests(State(state): State<Arc<ProxyState>>) -> Response {
    let accounting = &state.accounting;
    Json(accounting.in_flight.snapshot()).into_response()
}

#[derive(Deserialize)]
pub(crate) struct StatsQuery {
    /// `1` or `true`: add the fleet view.
    fleet: Option<String>,
}

/// The figures an instance publishes to its fleet (and shows for itself in the fleet view): small, summable.
pub fn instance_snapshot(state: &ProxyState) -> serde_json::Value {
    let accounting = &state.accounting;
    let monitor = accounting.monitor.snapshot();
    let totals = &accounting.totals;
    serde_json::json!({
        "instance": state.config.cluster.instance_id.as_deref(),
        "leader": state.alerts.is_leader(),
        "at_ms": crate::util::unix_ms(),
        "uptime_s": monitor.uptime_s,
        "requests_total": monitor.requests_total,
        "errors_total": monitor.errors_total.values().sum::<u64>(),
        "requests_per_s": monitor.requests_per_s,
        "open_requests": accounting.in_flight.len(),
        "prompt_tokens": totals.prompt_tokens.load(Ordering::Relaxed),
        "completion_tokens": totals.completion_tokens.load(Ordering::Relaxed),
        "cost_usd": totals.cost_micro_usd.load(Ordering::Relaxed) as f64 / 1e6,
        "dashboard_clients": accounting.monitor.dashboard_clients.load(Ordering::Relaxed),
    })
}

/// The fields of [`instance_snapshot`] the fleet's total adds up.
const SUMMED: &[&str] = &[
    "requests_total",
    "errors_total",
    "requests_per_s",
    "open_requests",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "dashboard_clients",
];

/// Every instance heard of recently (this one first, fresh), and their total. Peers' figures are as of their
/// last snapshot (`age_ms` old, published every 2 s).
fn fleet_view(state: &ProxyState) -> serde_json::Value {
    let mut own = instance_snapshot(state);
    if let Some(object) = own.as_object_mut() {
        object.insert("age_ms".into(), 0.into());
        object.insert("this".into(), true.into());
    }
    let mut instances = vec![own];
    if let Some(fleet) = state.fleet.get() {
        for (mut peer, age) in fleet.peers() {
            if let Some(object) = peer.as_object_mut() {
                object.insert("age_ms".into(), age.into());
                object.insert("this".into(), false.into());
            }
            instances.push(peer);
        }
    }
    let mut total = serde_json::Map::new();
    for key in SUMMED {
        let values = instances.iter().filter_map(|i| i.get(*key));
        let value = if *key == "requests_per_s" || *key == "cost_usd" {
            serde_json::Value::from(values.filter_map(serde_json::Value::as_f64).sum::<f64>())
        } else {
            serde_json::Value::from(values.filter_map(serde_json::Value::as_u64).sum::<u64>())
        };
        total.insert((*key).to_string(), value);
    }
    total.insert("instances".into(), instances.len().into());
    serde_json::json!({
        "instances": instances,
        "total": total,
        "connection": state.fleet.get().map(|f| f.status()),
    })
}

/// The proxy's own performance: percentiles per histogram and window, rates, memory, open streams, cache;
/// with `?fleet=1`, every instance on the same database and their total.
pub(crate) async fn stats(
    State(state): State<Arc<ProxyState>>,
    Query(query): Query<StatsQuery>,
) -> Response {
    let accounting = &state.accounting;
    let monitor = accounting.monitor.snapshot();
    let fleet = matches!(query.fleet.as_deref(), Some("1" | "true")).then(|| fleet_view(&state));
    Json(serde_json::json!({
        "instance": state.config.cluster.instance_id.as_deref(),
        "fleet": fleet,
        "uptime_s": monitor.uptime_s,
        "requests_total": monitor.requests_total,
        "requests_per_s": monitor.requests_per_s,
        "error_rate": monitor.error_rate,
        "errors_last_minute": monitor.errors_last_minute,
        "errors_total": monitor.errors_total,
        "open_requests": accounting.in_flight.len(),
        "dashboard_clients": accounting.monitor.dashboard_clients.load(std::sync::atomic::Ordering::Relaxed),
        "rss_bytes": monitor.rss_bytes,
        "message_cache": accounting.cache_stats(),
        "rate_limits": state.rate_limits(),
        "response_cache": state.response_cache.stats(),
        "alerts": state.alerts.stats(),
        "context": context_totals(&state),
        "telemetry": state.telemetry.get().map(|counters| counters.snapshot()),
        "histograms_us": monitor.histograms,
        "by_model_us": monitor.by_label,
    }))
    .into_response()
}

/// Prometheus text exposition.
pub(crate) async fn metrics(State(state): State<Arc<ProxyState>>) -> Response {
    let accounting = &state.accounting;
    let cache = accounting.cache_stats();
    let rss = accounting.monitor.rss_bytes().unwrap_or(0) as f64;
    let gauges = [
        (
            "kimi_proxy_open_requests",
            "Requests in flight.",
            accounting.in_flight.len() as f64,
        ),
        (
            "kimi_proxy_dashboard_clients",
            "Dashboards connected to /ws.",
            accounting
                .monitor
                .dashboard_clients
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        ),
        (
            "kimi_proxy_resident_memory_bytes",
            "Resident memory of the process.",
            rss,
        ),
        (
            "kimi_proxy_message_cache_hit_ratio",
            "Hit ratio of the per-message token cache.",
            cache.hit_rate,
        ),
        (
            "kimi_proxy_message_cache_entries",
            "Entries in the per-message token cache.",
            cache.entries as f64,
        ),
    ];
    let mut text = crate::monitor::prometheus::render(&accounting.monitor, &gauges);
    crate::monitor::prometheus::instance_info(
        &mut text,
        state
            .config
            .cluster
            .instance_id
            .as_deref()
            .unwrap_or_default(),
        state.alerts.is_leader(),
    );
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub(crate) async fn token_stats(State(state): State<Arc<ProxyState>>) -> Response {
    let accounting = &state.accounting;
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
            "tokens_saved": totals.tokens_saved.load(Ordering::Relaxed),
            "cost_saved_usd": totals.cost_saved_micro_usd.load(Ordering::Relaxed) as f64 / 1e6,
        },
        "context": context_totals(&state),
    }))
    .into_response()
}

/// What the context transforms did since start (`tokens_saved`: as counted by the transforms, requests that
/// failed included; the billed savings are in the records and `totals`).
fn context_totals(state: &ProxyState) -> serde_json::Value {
    let engine = &state.context;
    serde_json::json!({
        "totals": engine.totals.snapshot(),
        "originals_kept": engine.masks.originals_kept.load(Ordering::Relaxed),
        "originals_dropped": engine.masks.originals_dropped.load(Ordering::Relaxed),
        "masking": engine.config.masking.enabled,
        "observation": engine.config.observation.enabled,
        "compaction": engine.config.compaction.enabled,
    })
}
