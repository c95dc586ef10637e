//! The file format as written by users: every field optional so a user file can override single fields of the
//! built-in catalog; unknown keys are rejected by the parser with their line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::proxy::passthrough::TargetPattern;

use super::{
    ADMIN_TOKEN_ENV, AlertsConfig, ApiKey, BaseUrl, CacheConfig, ClientKey, Config, ConfigError,
    DEFAULT_MAX_BODY_BYTES, EnvSource, MIN_SECRET_CHARS, Model, PassthroughConfig, Prices,
    Provider, ProviderKind, RetryPolicy, Secret, ServerConfig, SessionMode, StoreConfig, Timeouts,
    TokenizerSpec, WebhookConfig, WebhookFormat, expand_vars,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `false` drops the built-in catalog: only the user's providers and models exist.
    pub builtin_catalog: Option<bool>,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub cache: RawCache,
    /// `[context]`: masking, observation masking, compaction.
    pub context: Option<crate::config::context::RawContext>,
    #[serde(default)]
    pub passthrough: RawPassthrough,
    #[serde(default)]
    pub alerts: RawAlerts,
    /// `[ledgers]`: the agents' usage records `serve` follows.
    #[serde(default)]
    pub ledgers: RawLedgers,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    /// `[model_aliases]`: a model name or glob pattern → a catalog key.
    #[serde(default)]
    pub model_aliases: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedgers {
    pub follow: Option<Vec<String>>,
    pub watch: Option<bool>,
    pub poll_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub forward_client_key: Option<bool>,
    pub shutdown_grace_ms: Option<u64>,
    pub token_accounting: Option<bool>,
    pub admin_token: Option<String>,
    pub client_keys: Option<Vec<RawClientKey>>,
    pub cors_allowed_origins: Option<Vec<String>>,
    pub allowed_hosts: Option<Vec<String>>,
    pub header_read_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub body_read_timeout_ms: Option<u64>,
    pub body_idle_timeout_ms: Option<u64>,
    pub write_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub http2_keep_alive_interval_ms: Option<u64>,
    pub http2_keep_alive_timeout_ms: Option<u64>,
    pub max_connections_per_ip: Option<usize>,
    pub max_dashboards: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientKey {
    pub name: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassthrough {
    pub allowed: Option<Vec<String>>,
    pub allow_loopback: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub enabled: Option<bool>,
    pub path: Option<PathBuf>,
    pub url: Option<String>,
    pub preview_chars: Option<usize>,
    pub retention_days: Option<u32>,
    pub queue_capacity: Option<usize>,
    pub batch_rows: Option<usize>,
    pub flush_interval_ms: Option<u64>,
    pub session_mode: Option<String>,
    pub responses_retention_days: Option<u32>,
    pub responses_memory_mb: Option<u64>,
}

impl RawStore {
    fn merge(self, over: RawStore) -> RawStore {
        RawStore {
            enabled: merge_opt(self.enabled, over.enabled),
            path: merge_opt(self.path, over.path),
            url: merge_opt(self.url, over.url),
            preview_chars: merge_opt(self.preview_chars, over.preview_chars),
            retention_days: merge_opt(self.retention_days, over.retention_days),
            queue_capacity: merge_opt(self.queue_capacity, over.queue_capacity),
            batch_rows: merge_opt(self.batch_rows, over.batch_rows),
            flush_interval_ms: merge_opt(self.flush_interval_ms, over.flush_interval_ms),
            session_mode: merge_opt(self.session_mode, over.session_mode),
            responses_retention_days: merge_opt(
                self.responses_retention_days,
                over.responses_retention_days,
            ),
            responses_memory_mb: merge_opt(self.responses_memory_mb, over.responses_memory_mb),
        }
    }

    fn validate(self, errors: &mut Vec<String>) -> StoreConfig {
        let defaults = StoreConfig::default();
        let session_mode = match self.session_mode.as_deref() {
            None | Some("conversation") => SessionMode::Conversation,
            Some("active") => SessionMode::Active,
            Some(other) => {
                errors.push(format!(
                    "store.session_mode: unknown mode `{other}` (use \"conversation\" or \"active\")"
                ));
                SessionMode::Conversation
            }
        };
        let mut at_least_one = |name: &str, value: Option<u64>| {
            if value == Some(0) {
                errors.push(format!("store.{name} must be greater than 0"));
            }
        };
        at_least_one("queue_capacity", self.queue_capacity.map(|v| v as u64));
        at_least_one("batch_rows", self.batch_rows.map(|v| v as u64));
        at_least_one("flush_interval_ms", self.flush_interval_ms);
        at_least_one("retention_days", self.retention_days.map(u64::from));
        at_least_one(
            "responses_retention_days",
            self.responses_retention_days.map(u64::from),
        );
        at_least_one("responses_memory_mb", self.responses_memory_mb);
        if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            errors.push("store.path must not be empty".to_string());
        }
        if let Some(url) = &self.url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            errors.push(
                "store.url must be a PostgreSQL URL (postgres://USER@HOST:PORT/DB)".to_string(),
            );
        }
        StoreConfig {
            enabled: self.enabled.unwrap_or(defaults.enabled),
            path: self.path,
            url: self.url.map(super::Secret::new),
            preview_chars: self.preview_chars.unwrap_or(defaults.preview_chars),
            retention_days: self.retention_days,
            queue_capacity: self
                .queue_capacity
                .unwrap_or(defaults.queue_capacity)
                .max(1),
            batch_rows: self.batch_rows.unwrap_or(defaults.batch_rows).max(1),
            flush_interval: self
                .flush_interval_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.flush_interval)
                .max(Duration::from_millis(1)),
            session_mode,
            responses_retention: self
                .responses_retention_days
                .map(|days| Duration::from_secs(u64::from(days) * 86_400))
                .unwrap_or(defaults.responses_retention),
            responses_memory_bytes: self
                .responses_memory_mb
                .map(|mb| mb.saturating_mul(1024 * 1024))
                .unwrap_or(defaults.responses_memory_bytes),
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub rate_limit_max_wait_ms: Option<u64>,
    pub stream_usage: Option<bool>,
    pub usage_always: Option<bool>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub retry: RawRetry,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect_ms: Option<u64>,
    pub first_byte_ms: Option<u64>,
    pub idle_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_attempts: Option<u32>,
    pub initial_backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
    pub deadline_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub max_context_size: Option<u64>,
    pub tokenizer: Option<RawTokenizer>,
    pub input_price: Option<f64>,
    pub output_price: Option<f64>,
    pub cached_input_price: Option<f64>,
    pub capabilities: Option<Vec<String>>,
    pub cache: Option<bool>,
    pub reasoning_echo: Option<bool>,
    /// Context transforms for this model, over `[context]`.
    pub context: Option<crate::config::context::Toggles>,
}

/// `[cache]`: the response cache, off unless enabled here, per model, or per request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub enabled: Option<bool>,
    pub max_bytes: Option<u64>,
    pub ttl_secs: Option<u64>,
    pub deterministic_only: Option<bool>,
    pub scope: Option<String>,
    pub client_opt_in: Option<bool>,
}

/// `[alerts]`: rules, evaluation interval, webhook. Percentages are written as percents (80 = 80 %).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    pub enabled: Option<bool>,
    pub interval_ms: Option<u64>,
    pub context_thresholds: Option<Vec<f64>>,
    pub context_critical_percent: Option<f64>,
    pub context_hysteresis_percent: Option<f64>,
    pub latency_p95_ms: Option<u64>,
    pub latency_window_secs: Option<u64>,
    pub latency_for_secs: Option<u64>,
    pub error_rate_percent: Option<f64>,
    pub error_rate_clear_percent: Option<f64>,
    pub error_rate_window_secs: Option<u64>,
    pub error_rate_min_requests: Option<u64>,
    pub upstream_429_count: Option<u64>,
    pub upstream_429_window_secs: Option<u64>,
    pub rss_budget_mb: Option<u64>,
    pub store_backlog_percent: Option<f64>,
    pub store_dropped_window_secs: Option<u64>,
    pub webhook_url: Option<String>,
    pub webhook_format: Option<String>,
    pub webhook_timeout_ms: Option<u64>,
    pub webhook_max_attempts: Option<u32>,
    pub webhook_backoff_ms: Option<u64>,
    pub webhook_queue: Option<usize>,
}

impl RawAlerts {
    fn merge(self, over: RawAlerts) -> RawAlerts {
        RawAlerts {
            enabled: merge_opt(self.enabled, over.enabled),
            interval_ms: merge_opt(self.interval_ms, over.interval_ms),
            context_thresholds: merge_opt(self.context_thresholds, over.context_thresholds),
            context_critical_percent: merge_opt(
                self.context_critical_percent,
                over.context_critical_percent,
            ),
            context_hysteresis_percent: merge_opt(
                self.context_hysteresis_percent,
                over.context_hysteresis_percent,
            ),
            latency_p95_ms: merge_opt(self.latency_p95_ms, over.latency_p95_ms),
            latency_window_secs: merge_opt(self.latency_window_secs, over.latency_window_secs),
            latency_for_secs: merge_opt(self.latency_for_secs, over.latency_for_secs),
            error_rate_percent: merge_opt(self.error_rate_percent, over.error_rate_percent),
            error_rate_clear_percent: merge_opt(
                self.error_rate_clear_percent,
                over.error_rate_clear_percent,
            ),
            error_rate_window_secs: merge_opt(
                self.error_rate_window_secs,
                over.error_rate_window_secs,
            ),
            error_rate_min_requests: merge_opt(
                self.error_rate_min_requests,
                over.error_rate_min_requests,
            ),
            upstream_429_count: merge_opt(self.upstream_429_count, over.upstream_429_count),
            upstream_429_window_secs: merge_opt(
                self.upstream_429_window_secs,
                over.upstream_429_window_secs,
            ),
            rss_budget_mb: merge_opt(self.rss_budget_mb, over.rss_budget_mb),
            store_backlog_percent: merge_opt(
                self.store_backlog_percent,
                over.store_backlog_percent,
            ),
            store_dropped_window_secs: merge_opt(
                self.store_dropped_window_secs,
                over.store_dropped_window_secs,
            ),
            webhook_url: merge_opt(self.webhook_url, over.webhook_url),
            webhook_format: merge_opt(self.webhook_format, over.webhook_format),
            webhook_timeout_ms: merge_opt(self.webhook_timeout_ms, over.webhook_timeout_ms),
            webhook_max_attempts: merge_opt(self.webhook_max_attempts, over.webhook_max_attempts),
            webhook_backoff_ms: merge_opt(self.webhook_backoff_ms, over.webhook_backoff_ms),
            webhook_queue: merge_opt(self.webhook_queue, over.webhook_queue),
        }
    }

    fn validate(self, env: &dyn EnvSource, errors: &mut Vec<String>) -> AlertsConfig {
        let d = AlertsConfig::default();
        let secs =
            |v: Option<u64>, default: Duration| v.map(Duration::from_secs).unwrap_or(default);
        let bad_percents = std::cell::RefCell::new(Vec::new());
        let percent = |name: &str, value: Option<f64>, default: f64| match value {
            None => default,
            Some(v) if v.is_finite() && (0.0..=100.0).contains(&v) => v / 100.0,
            Some(v) => {
                bad_percents.borrow_mut().push(format!(
                    "alerts.{name}: {v} is not a percentage between 0 and 100"
                ));
                default
            }
        };
        let mut context_thresholds = match self.context_thresholds {
            None => d.context_thresholds.clone(),
            Some(list) => list
                .iter()
                .map(|&v| percent("context_thresholds", Some(v), 0.0))
                .filter(|v| *v > 0.0)
                .collect(),
        };
        context_thresholds.sort_by(f64::total_cmp);
        context_thresholds.dedup();
        let context_critical = percent(
            "context_critical_percent",
            self.context_critical_percent,
            d.context_critical,
        );
        let context_hysteresis = percent(
            "context_hysteresis_percent",
            self.context_hysteresis_percent,
            d.context_hysteresis,
        );
        let error_rate = percent("error_rate_percent", self.error_rate_percent, d.error_rate);
        let error_rate_clear = match self.error_rate_clear_percent {
            None => error_rate / 2.0,
            given => percent("error_rate_clear_percent", given, d.error_rate_clear),
        };
        if error_rate > 0.0 && error_rate_clear > error_rate {
            errors.push(
                "alerts.error_rate_clear_percent must not exceed alerts.error_rate_percent"
                    .to_string(),
            );
        }
        let store_backlog = percent(
            "store_backlog_percent",
            self.store_backlog_percent,
            d.store_backlog,
        );
        errors.extend(bad_percents.into_inner());
        let interval = self
            .interval_ms
            .map(Duration::from_millis)
            .unwrap_or(d.interval);
        let mut positive = |name: &str, value: Option<u64>| {
            if value == Some(0) {
                errors.push(format!("alerts.{name} must be greater than 0"));
            }
        };
        positive("interval_ms", self.interval_ms);
        positive("latency_window_secs", self.latency_window_secs);
        positive("error_rate_window_secs", self.error_rate_window_secs);
        positive("upstream_429_window_secs", self.upstream_429_window_secs);
        positive("store_dropped_window_secs", self.store_dropped_window_secs);
        positive("webhook_timeout_ms", self.webhook_timeout_ms);
        positive(
            "webhook_max_attempts",
            self.webhook_max_attempts.map(u64::from),
        );
        positive("webhook_queue", self.webhook_queue.map(|v| v as u64));
        let webhook = match self.webhook_url.as_deref() {
            None | Some("") => None,
            Some(template) => {
                let format = match self.webhook_format.as_deref() {
                    None | Some("generic") => WebhookFormat::Generic,
                    Some("slack") => WebhookFormat::Slack,
                    Some("discord") => WebhookFormat::Discord,
                    Some(other) => {
                        errors.push(format!(
                            "alerts.webhook_format: unknown format `{other}` (use \"generic\", \"slack\" or \"discord\")"
                        ));
                        WebhookFormat::Generic
                    }
                };
                match expand_vars(template, env) {
                    Ok(url) => {
                        // The URL is a secret: errors name the problem, never the URL.
                        let usable = url.parse::<http::Uri>().is_ok_and(|uri| {
                            matches!(uri.scheme_str(), Some("http" | "https"))
                                && uri.host().is_some()
                        });
                        if usable {
                            Some(WebhookConfig {
                                url: Secret::new(url),
                                format,
                                timeout: Duration::from_millis(
                                    self.webhook_timeout_ms
                                        .unwrap_or(DEFAULT_WEBHOOK_TIMEOUT_MS),
                                ),
                                max_attempts: self
                                    .webhook_max_attempts
                                    .unwrap_or(DEFAULT_WEBHOOK_ATTEMPTS)
                                    .max(1),
                                initial_backoff: Duration::from_millis(
                                    self.webhook_backoff_ms
                                        .unwrap_or(DEFAULT_WEBHOOK_BACKOFF_MS),
                                ),
                                queue: self.webhook_queue.unwrap_or(DEFAULT_WEBHOOK_QUEUE).max(1),
                            })
                        } else {
                            errors.push(
                                "alerts.webhook_url is not an http:// or https:// URL".to_string(),
                            );
                            None
                        }
                    }
                    Err(var) => {
                        tracing::warn!(var = %var, "alerts.webhook_url names an unset variable; no webhook");
                        None
                    }
                }
            }
        };
        AlertsConfig {
            enabled: self.enabled.unwrap_or(d.enabled),
            interval: interval.max(Duration::from_millis(10)),
            context_thresholds,
            context_critical,
            context_hysteresis,
            latency_p95_ms: self.latency_p95_ms.unwrap_or(d.latency_p95_ms),
            latency_window: secs(self.latency_window_secs, d.latency_window),
            latency_for: secs(self.latency_for_secs, d.latency_for),
            error_rate,
            error_rate_clear,
            error_rate_window: secs(self.error_rate_window_secs, d.error_rate_window),
            error_rate_min_requests: self
                .error_rate_min_requests
                .unwrap_or(d.error_rate_min_requests)
                .max(1),
            upstream_429_count: self.upstream_429_count.unwrap_or(d.upstream_429_count),
            upstream_429_window: secs(self.upstream_429_window_secs, d.upstream_429_window),
            rss_budget_bytes: self
                .rss_budget_mb
                .map(|mb| mb.saturating_mul(1024 * 1024))
                .unwrap_or(d.rss_budget_bytes),
            store_backlog,
            store_dropped_window: secs(self.store_dropped_window_secs, d.store_dropped_window),
            webhook,
        }
    }
}

const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_WEBHOOK_ATTEMPTS: u32 = 5;
const DEFAULT_WEBHOOK_BACKOFF_MS: u64 = 500;
const DEFAULT_WEBHOOK_QUEUE: usize = 256;

const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;
const DEFAULT_CACHE_TTL_SECS: u64 = 3600;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawTokenizer {
    Name(String),
    File(RawTokenizerFile),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokenizerFile {
    pub file: PathBuf,
    pub pattern: String,
}

// Defaults are generous: a reasoning model may think for minutes before its first byte.
const DEFAULT_CONNECT_MS: u64 = 10_000;
const DEFAULT_FIRST_BYTE_MS: u64 = 300_000;
const DEFAULT_IDLE_MS: u64 = 120_000;
const DEFAULT_MAX_ATTEMPTS: u32 = 3;
const DEFAULT_INITIAL_BACKOFF_MS: u64 = 250;
const DEFAULT_MAX_BACKOFF_MS: u64 = 8_000;
const DEFAULT_RETRY_DEADLINE_MS: u64 = 30_000;
const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 30_000;
/// How long a client may take to send a request's headers, and how long an idle keep-alive connection stays
/// open: bounds what slow or silent clients can hold.
const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 30_000;
/// Client connections served at once; beyond it new connections are closed at once. Each open connection holds
/// a socket and a few KiB of buffers; the default leaves room for thousands of streams under the usual
/// 20,000-descriptor limit (a stream also holds an upstream socket).
const DEFAULT_MAX_CONNECTIONS: usize = 8192;

/// A request body must have arrived in full this long after its headers (`body_read_timeout_ms`).
const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 60_000;
/// Longest pause between two pieces of a request body (`body_idle_timeout_ms`).
const DEFAULT_BODY_IDLE_TIMEOUT_MS: u64 = 15_000;
/// Longest a write to a client may wait because the client does not read (`write_timeout_ms`).
const DEFAULT_WRITE_TIMEOUT_MS: u64 = 30_000;
/// A connection with no request in flight is closed after this long (`idle_timeout_ms`; HTTP/2 and
/// upgraded-protocol negotiation included; HTTP/1 is also bounded by `header_read_timeout_ms`).
const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// HTTP/2 keep-alive: a PING this often, and the connection closed when it is not answered in time.
const DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL_MS: u64 = 20_000;
const DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT_MS: u64 = 20_000;
/// Dashboards (WebSockets on `/ws`) connected at once.
const DEFAULT_MAX_DASHBOARDS: usize = 32;

impl RawServer {
    /// The per-phase deadlines and the connection shares (`[server]`), checked.
    fn limits(&self, errors: &mut Vec<String>) -> crate::config::ConnectionLimits {
        let millis = |value: Option<u64>, default: u64, key: &str, errors: &mut Vec<String>| {
            let value = value.unwrap_or(default);
            if value == 0 {
                errors.push(format!("server.{key} must be greater than 0"));
            }
            Duration::from_millis(value)
        };
        let max_connections = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let per_ip = self
            .max_connections_per_ip
            .unwrap_or((max_connections / 4).max(1));
        if per_ip == 0 {
            errors.push("server.max_connections_per_ip must be greater than 0".to_string());
        }
        let max_dashboards = self.max_dashboards.unwrap_or(DEFAULT_MAX_DASHBOARDS);
        if max_dashboards == 0 {
            errors.push("server.max_dashboards must be greater than 0".to_string());
        }
        crate::config::ConnectionLimits {
            body_read_timeout: millis(
                self.body_read_timeout_ms,
                DEFAULT_BODY_READ_TIMEOUT_MS,
                "body_read_timeout_ms",
                errors,
            ),
            body_idle_timeout: millis(
                self.body_idle_timeout_ms,
                DEFAULT_BODY_IDLE_TIMEOUT_MS,
                "body_idle_timeout_ms",
                errors,
            ),
            write_timeout: millis(
                self.write_timeout_ms,
                DEFAULT_WRITE_TIMEOUT_MS,
                "write_timeout_ms",
                errors,
            ),
            idle_timeout: millis(
                self.idle_timeout_ms,
                DEFAULT_IDLE_TIMEOUT_MS,
                "idle_timeout_ms",
                errors,
            ),
            http2_keep_alive_interval: millis(
                self.http2_keep_alive_interval_ms,
                DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL_MS,
                "http2_keep_alive_interval_ms",
                errors,
            ),
            http2_keep_alive_timeout: millis(
                self.http2_keep_alive_timeout_ms,
                DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT_MS,
                "http2_keep_alive_timeout_ms",
                errors,
            ),
            max_connections_per_ip: per_ip,
            max_dashboards,
        }
    }
}

/// How long a request may wait for its provider's budget before the client gets a 429.
const DEFAULT_RATE_LIMIT_MAX_WAIT_MS: u64 = 20_000;

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_millis(DEFAULT_CONNECT_MS),
            first_byte: Duration::from_millis(DEFAULT_FIRST_BYTE_MS),
            idle: Duration::from_millis(DEFAULT_IDLE_MS),
        }
    }
}

fn merge_opt<T>(base: Option<T>, over: Option<T>) -> Option<T> {
    over.or(base)
}

impl RawConfig {
    pub fn parse(origin: &str, text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// `over`'s fields win; tables merge key by key.
    pub fn merge(self, over: RawConfig) -> RawConfig {
        let mut providers = self.providers;
        for (key, p) in over.providers {
            let merged = match providers.remove(&key) {
                Some(base) => base.merge(p),
                None => p,
            };
            providers.insert(key, merged);
        }
        let mut models = self.models;
        for (key, m) in over.models {
            let merged = match models.remove(&key) {
                Some(base) => base.merge(m),
                None => m,
            };
            models.insert(key, merged);
        }
        let mut model_aliases = self.model_aliases;
        model_aliases.extend(over.model_aliases);
        RawConfig {
            model_aliases,
            builtin_catalog: merge_opt(self.builtin_catalog, over.builtin_catalog),
            store: self.store.merge(over.store),
            passthrough: RawPassthrough {
                allowed: merge_opt(self.passthrough.allowed, over.passthrough.allowed),
                allow_loopback: merge_opt(
                    self.passthrough.allow_loopback,
                    over.passthrough.allow_loopback,
                ),
            },
            alerts: self.alerts.merge(over.alerts),
            ledgers: RawLedgers {
                follow: merge_opt(self.ledgers.follow, over.ledgers.follow),
                watch: merge_opt(self.ledgers.watch, over.ledgers.watch),
                poll_ms: merge_opt(self.ledgers.poll_ms, over.ledgers.poll_ms),
            },
            context: merge_opt(self.context, over.context),
            cache: RawCache {
                enabled: merge_opt(self.cache.enabled, over.cache.enabled),
                max_bytes: merge_opt(self.cache.max_bytes, over.cache.max_bytes),
                ttl_secs: merge_opt(self.cache.ttl_secs, over.cache.ttl_secs),
                deterministic_only: merge_opt(
                    self.cache.deterministic_only,
                    over.cache.deterministic_only,
                ),
                scope: merge_opt(self.cache.scope, over.cache.scope),
                client_opt_in: merge_opt(self.cache.client_opt_in, over.cache.client_opt_in),
            },
            server: RawServer {
                listen: merge_opt(self.server.listen, over.server.listen),
                max_body_bytes: merge_opt(self.server.max_body_bytes, over.server.max_body_bytes),
                forward_client_key: merge_opt(
                    self.server.forward_client_key,
                    over.server.forward_client_key,
                ),
                shutdown_grace_ms: merge_opt(
                    self.server.shutdown_grace_ms,
                    over.server.shutdown_grace_ms,
                ),
                token_accounting: merge_opt(
                    self.server.token_accounting,
                    over.server.token_accounting,
                ),
                admin_token: merge_opt(self.server.admin_token, over.server.admin_token),
                client_keys: merge_opt(self.server.client_keys, over.server.client_keys),
                cors_allowed_origins: merge_opt(
                    self.server.cors_allowed_origins,
                    over.server.cors_allowed_origins,
                ),
                allowed_hosts: merge_opt(self.server.allowed_hosts, over.server.allowed_hosts),
                header_read_timeout_ms: merge_opt(
                    self.server.header_read_timeout_ms,
                    over.server.header_read_timeout_ms,
                ),
                max_connections: merge_opt(
                    self.server.max_connections,
                    over.server.max_connections,
                ),
                body_read_timeout_ms: merge_opt(
                    self.server.body_read_timeout_ms,
                    over.server.body_read_timeout_ms,
                ),
                body_idle_timeout_ms: merge_opt(
                    self.server.body_idle_timeout_ms,
                    over.server.body_idle_timeout_ms,
                ),
                write_timeout_ms: merge_opt(
                    self.server.write_timeout_ms,
                    over.server.write_timeout_ms,
                ),
                idle_timeout_ms: merge_opt(
                    self.server.idle_timeout_ms,
                    over.server.idle_timeout_ms,
                ),
                http2_keep_alive_interval_ms: merge_opt(
                    self.server.http2_keep_alive_interval_ms,
                    over.server.http2_keep_alive_interval_ms,
                ),
                http2_keep_alive_timeout_ms: merge_opt(
                    self.server.http2_keep_alive_timeout_ms,
                    over.server.http2_keep_alive_timeout_ms,
                ),
                max_connections_per_ip: merge_opt(
                    self.server.max_connections_per_ip,
                    over.server.max_connections_per_ip,
                ),
                max_dashboards: merge_opt(self.server.max_dashboards, over.server.max_dashboards),
            },
            providers,
            models,
        }
    }

    pub fn validate(self, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();

        let listen = match &self.server.listen {
            Some(text) => match text.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    errors.push(format!("server.listen: `{text}` is not an ADDRESS:PORT"));
                    None
                }
            },
            None => None,
        };
        let max_body_bytes = self.server.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            errors.push("server.max_body_bytes must be greater than 0".to_string());
        }
        let limits = self.server.limits(&mut errors);
        let server = ServerConfig {
            listen,
            max_body_bytes,
            forward_client_key: self.server.forward_client_key.unwrap_or(true),
            shutdown_grace: Duration::from_millis(
                self.server
                    .shutdown_grace_ms
                    .unwrap_or(DEFAULT_SHUTDOWN_GRACE_MS),
            ),
            token_accounting: self.server.token_accounting.unwrap_or(true),
            admin_token: admin_token(self.server.admin_token.as_deref(), env, &mut errors),
            client_keys: client_keys(self.server.client_keys.unwrap_or_default(), env, &mut errors),
            cors_allowed_origins: self
                .server
                .cors_allowed_origins
                .unwrap_or_default()
                .iter()
                .filter_map(|origin| match normalize_origin(origin) {
                    Some(origin) => Some(origin),
                    None => {
                        errors.push(format!(
                            "server.cors_allowed_origins: `{origin}` is not an origin (scheme://host[:port], no path)"
                        ));
                        None
                    }
                })
                .collect(),
            allowed_hosts: self
                .server
                .allowed_hosts
                .unwrap_or_default()
                .iter()
                .filter_map(|host| {
                    let name = host.trim().trim_end_matches('.').to_ascii_lowercase();
                    let valid = !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                    if !valid {
                        errors.push(format!(
                            "server.allowed_hosts: `{host}` is not a host name (no scheme, no port)"
                        ));
                    }
                    valid.then_some(name)
                })
                .collect(),
            header_read_timeout: Duration::from_millis(
                self.server
                    .header_read_timeout_ms
                    .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT_MS),
            ),
            max_connections: self
                .server
                .max_connections
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            limits,
        };
        if server.header_read_timeout.is_zero() {
            errors.push("server.header_read_timeout_ms must be greater than 0".to_string());
        }
        if server.max_connections == 0 {
            errors.push("server.max_connections must be greater than 0".to_string());
        }

        let store = self.store.validate(&mut errors);
        let passthrough = PassthroughConfig {
            allowed: self
                .passthrough
                .allowed
                .unwrap_or_default()
                .iter()
                .filter_map(|text| match TargetPattern::parse(text) {
                    Ok(pattern) => Some(pattern),
                    Err(message) => {
                        errors.push(format!("passthrough.allowed: {message}"));
                        None
                    }
                })
                .collect(),
            allow_loopback: self.passthrough.allow_loopback.unwrap_or(false),
        };
        let cache = CacheConfig {
            enabled: self.cache.enabled.unwrap_or(false),
            max_bytes: self.cache.max_bytes.unwrap_or(DEFAULT_CACHE_BYTES),
            ttl: Duration::from_secs(self.cache.ttl_secs.unwrap_or(DEFAULT_CACHE_TTL_SECS)),
            deterministic_only: self.cache.deterministic_only.unwrap_or(true),
            shared: match self.cache.scope.as_deref() {
                None | Some("client") => false,
                Some("shared") => true,
                Some(other) => {
                    errors.push(format!(
                        "cache.scope: `{other}` is not `client` (each virtual key has its own answers) or `shared`"
                    ));
                    false
                }
            },
            client_opt_in: self.cache.client_opt_in.unwrap_or(true),
        };
        if cache.ttl.is_zero() {
            errors.push("cache.ttl_secs must be greater than 0".to_string());
        }

        let alerts = self.alerts.validate(env, &mut errors);
        let ledgers = super::LedgersConfig {
            follow: self.ledgers.follow.unwrap_or_default(),
            watch: self.ledgers.watch.unwrap_or(true),
            poll: std::time::Duration::from_millis(self.ledgers.poll_ms.unwrap_or(500).max(50)),
        };
        for name in &ledgers.follow {
            if kimi_ledgers::Agent::from_name(name).is_none() {
                errors.push(format!(
                    "ledgers.follow: unknown agent `{name}` (claude-code, codex, cline, continue, kimi-cli)"
                ));
            }
        }

        let mut providers = BTreeMap::new();
        for (key, raw) in self.providers {
            if let Some(p) = raw.validate(&key, env, &mut errors) {
                providers.insert(key, Arc::new(p));
            }
        }

        let mut models = BTreeMap::new();
        for (key, raw) in self.models {
            if let Some(m) = raw.validate(&key, &providers, &mut errors) {
                models.insert(key, Arc::new(m));
            }
        }

        let context = self.context.unwrap_or_default().validate(env, &mut errors);
        if let crate::config::context::SummaryMode::Model(name) = &context.compaction.summary
            && !models.contains_key(name)
        {
            errors.push(format!(
                "context.compaction.summary.model: no model named `{name}` in the catalog"
            ));
        }

        let model_aliases = super::aliases::by_specificity(
            self.model_aliases
                .into_iter()
                .filter_map(|(pattern, target)| {
                    if pattern.trim().is_empty() {
                        errors.push("model_aliases: an empty name".to_string());
                        return None;
                    }
                    if !models.contains_key(&target) {
                        errors.push(format!(
                            "model_aliases.\"{pattern}\": no model named `{target}` in the catalog"
                        ));
                        return None;
                    }
                    Some(super::ModelAlias { pattern, target })
                })
                .collect(),
        );

        if errors.is_empty() {
            Ok(Config {
                model_aliases,
                server,
                passthrough,
                store,
                cache,
                alerts,
                ledgers,
                context,
                providers,
                models,
            })
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}

impl RawProvider {
    fn merge(self, over: RawProvider) -> RawProvider {
        RawProvider {
            kind: merge_opt(self.kind, over.kind),
            base_url: merge_opt(self.base_url, over.base_url),
            api_key: merge_opt(self.api_key, over.api_key),
            requests_per_minute: merge_opt(self.requests_per_minute, over.requests_per_minute),
            tokens_per_minute: merge_opt(self.tokens_per_minute, over.tokens_per_minute),
            rate_limit_max_wait_ms: merge_opt(
                self.rate_limit_max_wait_ms,
                over.rate_limit_max_wait_ms,
            ),
            stream_usage: merge_opt(self.stream_usage, over.stream_usage),
            usage_always: merge_opt(self.usage_always, over.usage_always),
            timeouts: RawTimeouts {
                connect_ms: merge_opt(self.timeouts.connect_ms, over.timeouts.connect_ms),
                first_byte_ms: merge_opt(self.timeouts.first_byte_ms, over.timeouts.first_byte_ms),
                idle_ms: merge_opt(self.timeouts.idle_ms, over.timeouts.idle_ms),
            },
            retry: RawRetry {
                max_attempts: merge_opt(self.retry.max_attempts, over.retry.max_attempts),
                initial_backoff_ms: merge_opt(
                    self.retry.initial_backoff_ms,
                    over.retry.initial_backoff_ms,
                ),
                max_backoff_ms: merge_opt(self.retry.max_backoff_ms, over.retry.max_backoff_ms),
                deadline_ms: merge_opt(self.retry.deadline_ms, over.retry.deadline_ms),
            },
        }
    }

    fn validate(
        self,
        key: &str,
        env: &dyn EnvSource,
        errors: &mut Vec<String>,
    ) -> Option<Provider> {
        let start = errors.len();
        let kind = match self.kind.as_deref() {
            None | Some("openai-compatible") | Some("openai") => ProviderKind::OpenAiCompatible,
            Some(other) => {
                errors.push(format!(
                    "providers.{key}.type: unknown provider type `{other}` (supported: openai-compatible)"
                ));
                ProviderKind::OpenAiCompatible
            }
        };
        let base_url = match self.base_url.as_deref() {
            None => {
                errors.push(format!("providers.{key}.base_url is required"));
                BaseUrl::Missing { var: String::new() }
            }
            Some(template) => match expand_vars(template, env) {
                Ok(url) => {
                    let trimmed = url.trim_end_matches('/').to_string();
                    match trimmed.parse::<http::Uri>() {
                        Ok(uri)
                            if matches!(uri.scheme_str(), Some("http" | "https"))
                                && uri.host().is_some() =>
                        {
                            BaseUrl::Ready(trimmed)
                        }
                        _ => {
                            errors.push(format!(
                                "providers.{key}.base_url: `{trimmed}` is not an http:// or https:// URL"
                            ));
                            BaseUrl::Missing { var: String::new() }
                        }
                    }
                }
                Err(var) => BaseUrl::Missing { var },
            },
        };
        let api_key = match self.api_key.as_deref() {
            None | Some("") => ApiKey::None,
            Some(template) => match expand_vars(template, env) {
                Ok(value) => ApiKey::Ready(super::Secret::new(value)),
                Err(var) => ApiKey::Missing { var },
            },
        };
        let ms = |v: Option<u64>, d: u64| Duration::from_millis(v.unwrap_or(d));
        let timeouts = Timeouts {
            connect: ms(self.timeouts.connect_ms, DEFAULT_CONNECT_MS),
            first_byte: ms(self.timeouts.first_byte_ms, DEFAULT_FIRST_BYTE_MS),
            idle: ms(self.timeouts.idle_ms, DEFAULT_IDLE_MS),
        };
        for (name, value) in [
            ("connect_ms", timeouts.connect),
            ("first_byte_ms", timeouts.first_byte),
            ("idle_ms", timeouts.idle),
        ] {
            if value.is_zero() {
                errors.push(format!(
                    "providers.{key}.timeouts.{name} must be greater than 0"
                ));
            }
        }
        let retry = RetryPolicy {
            max_attempts: self.retry.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            initial_backoff: ms(self.retry.initial_backoff_ms, DEFAULT_INITIAL_BACKOFF_MS),
            max_backoff: ms(self.retry.max_backoff_ms, DEFAULT_MAX_BACKOFF_MS),
            deadline: ms(self.retry.deadline_ms, DEFAULT_RETRY_DEADLINE_MS),
        };
        if retry.max_attempts == 0 {
            errors.push(format!(
                "providers.{key}.retry.max_attempts must be at least 1"
            ));
        }
        if self.tokens_per_minute == Some(0) {
            errors.push(format!(
                "providers.{key}.tokens_per_minute must be at least 1"
            ));
        }
        if self.requests_per_minute == Some(0) {
            errors.push(format!(
                "providers.{key}.requests_per_minute must be at least 1"
            ));
        }
        if errors.len() > start {
            return None;
        }
        Some(Provider {
            key: key.to_string(),
            kind,
            base_url,
            api_key,
            timeouts,
            retry,
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
            rate_limit_max_wait: Duration::from_millis(
                self.rate_limit_max_wait_ms
                    .unwrap_or(DEFAULT_RATE_LIMIT_MAX_WAIT_MS),
            ),
            stream_usage: self.stream_usage.unwrap_or(true),
            usage_always: self.usage_always.unwrap_or(false),
        })
    }
}

impl RawModel {
    fn merge(self, over: RawModel) -> RawModel {
        RawModel {
            provider: merge_opt(self.provider, over.provider),
            model: merge_opt(self.model, over.model),
            max_context_size: merge_opt(self.max_context_size, over.max_context_size),
            tokenizer: merge_opt(self.tokenizer, over.tokenizer),
            input_price: merge_opt(self.input_price, over.input_price),
            output_price: merge_opt(self.output_price, over.output_price),
            cached_input_price: merge_opt(self.cached_input_price, over.cached_input_price),
            capabilities: merge_opt(self.capabilities, over.capabilities),
            cache: merge_opt(self.cache, over.cache),
            reasoning_echo: merge_opt(self.reasoning_echo, over.reasoning_echo),
            context: merge_opt(self.context, over.context),
        }
    }

    fn validate(
        self,
        key: &str,
        providers: &BTreeMap<String, Arc<Provider>>,
        errors: &mut Vec<String>,
    ) -> Option<Model> {
        let start = errors.len();
        let provider = match self.provider {
            Some(p) if providers.contains_key(&p) => p,
            Some(p) => {
                errors.push(format!(
                    "models.\"{key}\".provider: no provider named `{p}`"
                ));
                return None;
            }
            None => {
                errors.push(format!("models.\"{key}\".provider is required"));
                return None;
            }
        };
        // The upstream id defaults to the key without its provider prefix.
        let upstream_id = self.model.unwrap_or_else(|| {
            key.strip_prefix(&format!("{provider}/"))
                .unwrap_or(key)
                .to_string()
        });
        let max_context_size = match self.max_context_size {
            Some(0) | None => {
                errors.push(format!(
                    "models.\"{key}\".max_context_size is required and must be greater than 0"
                ));
                0
            }
            Some(n) => n,
        };
        let tokenizer = match self.tokenizer {
            None => default_tokenizer(&upstream_id),
            Some(RawTokenizer::Name(name)) => match name.as_str() {
                "cl100k_base" | "cl100k" => TokenizerSpec::Cl100kBase,
                "o200k_base" | "o200k" => TokenizerSpec::O200kBase,
                other => {
                    errors.push(format!(
                        "models.\"{key}\".tokenizer: unknown encoding `{other}` (use cl100k_base, o200k_base or {{ file = \"…\", pattern = \"…\" }})"
                    ));
                    TokenizerSpec::Cl100kBase
                }
            },
            Some(RawTokenizer::File(f)) => TokenizerSpec::File {
                path: f.file,
                pattern: f.pattern,
            },
        };
        let prices = Prices {
            input: self.input_price.unwrap_or(0.0),
            output: self.output_price.unwrap_or(0.0),
            cached_input: self.cached_input_price.or(self.input_price).unwrap_or(0.0),
        };
        for (name, value) in [
            ("input_price", prices.input),
            ("output_price", prices.output),
            ("cached_input_price", prices.cached_input),
        ] {
            if !value.is_finite() || value < 0.0 {
                errors.push(format!(
                    "models.\"{key}\".{name} must be a non-negative number"
                ));
            }
        }
        if errors.len() > start {
            return None;
        }
        Some(Model {
            key: key.to_string(),
            provider,
            upstream_id,
            max_context_size,
            tokenizer,
            prices,
            capabilities: self.capabilities.unwrap_or_default(),
            cache: self.cache,
            reasoning_echo: self.reasoning_echo.unwrap_or(false),
            context: self.context.unwrap_or_default(),
        })
    }
}

/// The admin token from `[server] admin_token` (usually `"${VAR}"`), else from `KIMI_PROXY_ADMIN_TOKEN`.
fn admin_token(
    template: Option<&str>,
    env: &dyn EnvSource,
    errors: &mut Vec<String>,
) -> Option<Secret> {
    let value = match template {
        Some(template) => match expand_vars(template, env) {
            Ok(value) => value,
            Err(var) => {
                errors.push(format!(
                    "server.admin_token: environment variable {var} is not set"
                ));
                return None;
            }
        },
        None => env.var(ADMIN_TOKEN_ENV).filter(|v| !v.is_empty())?,
    };
    if value.chars().count() < MIN_SECRET_CHARS || value.trim() != value {
        errors.push(format!(
            "server.admin_token must be at least {MIN_SECRET_CHARS} characters without surrounding spaces (e.g. `openssl rand -hex 24`)"
        ));
        return None;
    }
    Some(Secret::new(value))
}

fn client_keys(
    raw: Vec<RawClientKey>,
    env: &dyn EnvSource,
    errors: &mut Vec<String>,
) -> Vec<ClientKey> {
    let mut keys: Vec<ClientKey> = Vec::with_capacity(raw.len());
    for (i, k) in raw.into_iter().enumerate() {
        let at = format!("server.client_keys[{i}]");
        let name = k.name.trim().to_string();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            errors.push(format!("{at}.name must be 1 to 64 printable characters"));
            continue;
        }
        if keys.iter().any(|other| other.name == name) {
            errors.push(format!("{at}: the name `{name}` is used twice"));
            continue;
        }
        let value = match expand_vars(&k.key, env) {
            Ok(value) => value,
            Err(var) => {
                errors.push(format!(
                    "{at} (`{name}`): environment variable {var} is not set"
                ));
                continue;
            }
        };
        if value.chars().count() < MIN_SECRET_CHARS
            || value.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            errors.push(format!(
                "{at} (`{name}`): the key must be at least {MIN_SECRET_CHARS} characters, without spaces"
            ));
            continue;
        }
        if keys.iter().any(|other| other.key.expose() == value) {
            errors.push(format!("{at} (`{name}`): the same key is configured twice"));
            continue;
        }
        keys.push(ClientKey {
            name,
            key: Secret::new(value),
        });
    }
    keys
}

/// `scheme://host[:port]` lowercased without a trailing slash, or `None` when `text` is not an origin.
pub fn normalize_origin(text: &str) -> Option<String> {
    let text = text.trim().trim_end_matches('/').to_ascii_lowercase();
    let uri = text.parse::<http::Uri>().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?;
    let plain = uri.path().is_empty() || uri.path() == "/";
    (plain && uri.query().is_none() && !authority.as_str().contains('@'))
        .then(|| format!("{scheme}://{authority}"))
}

/// OpenAI's newer models use o200k; everything else is counted with cl100k unless configured otherwise.
pub fn default_tokenizer(upstream_id: &str) -> TokenizerSpec {
    let id = upstream_id
        .rsplit('/')
        .next()
        .unwrap_or(upstream_id)
        .to_ascii_lowercase();
    let o200k = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "gpt-oss",
        "chatgpt-4o",
        "o1",
        "o3",
        "o4",
    ];
    if o200k.iter().any(|prefix| id.starts_with(prefix)) {
        TokenizerSpec::O200kBase
    } else {
        TokenizerSpec::Cl100kBase
    }
}
