//! Configuration: the built-in catalog, the user's `config.toml` merged over it, and validation into the
//! [`Config`] the rest of the proxy reads.
//!
//! Loading happens in two stages (raw → validated) so that an unknown key is reported with its line by the TOML
//! parser, and a missing or inconsistent value is reported with the provider or model it belongs to.

mod aliases;
pub mod context;
mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use aliases::ModelAlias;
pub use raw::{RawConfig, default_tokenizer, normalize_origin};

/// The built-in catalog, embedded in the binary.
pub const BUILTIN_CATALOG: &str = include_str!("catalog.toml");

/// Default request body limit: agents send long conversations and base64 images.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// A secret value (an API key). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }
    /// The only way to read the secret; grep for it when auditing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A provider's API key after `${VAR}` expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKey {
    /// The provider needs no key (a local server, say), or the user relies on clients' own keys.
    None,
    Ready(Secret),
    /// The configuration names an environment variable that is not set (or empty).
    Missing {
        var: String,
    },
}

/// A provider's base URL after `${VAR}` expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseUrl {
    Ready(String),
    Missing { var: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAiCompatible,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAiCompatible => "openai-compatible",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// TCP + TLS connection establishment.
    pub connect: Duration,
    /// From sending the request to the response headers.
    pub first_byte: Duration,
    /// Longest silence allowed between two body chunks.
    pub idle: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = never retry).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// No retry starts after this much time has passed since the first attempt.
    pub deadline: Duration,
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub key: String,
    pub kind: ProviderKind,
    pub base_url: BaseUrl,
    pub api_key: ApiKey,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub requests_per_minute: Option<u32>,
    /// Tokens (prompt + completion) per minute the provider allows.
    pub tokens_per_minute: Option<u32>,
    /// A request over budget waits up to this long, then gets a 429.
    pub rate_limit_max_wait: Duration,
    /// The provider understands `stream_options.include_usage`: the proxy asks for the usage chunk on streams
    /// (and hides it from clients that did not ask).
    pub stream_usage: bool,
    /// The provider ends every stream with its usage chunk whether asked or not: the proxy then asks for
    /// nothing and removes nothing, so the client receives what the provider sent.
    pub usage_always: bool,
}

/// Which tokenizer counts a model's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSpec {
    Cl100kBase,
    O200kBase,
    /// A tiktoken-format vocabulary on disk with its pre-tokenizer pattern.
    File {
        path: PathBuf,
        pattern: String,
    },
}

impl fmt::Display for TokenizerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerSpec::Cl100kBase => f.write_str("cl100k_base"),
            TokenizerSpec::O200kBase => f.write_str("o200k_base"),
            TokenizerSpec::File { path, .. } => write!(f, "file:{}", path.display()),
        }
    }
}

/// Prices in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Prices {
    pub input: f64,
    pub output: f64,
    pub cached_input: f64,
}

#[derive(Debug, Clone)]
pub struct Model {
    /// Catalog key, e.g. `nvidia/kimi-k2.5`.
    pub key: String,
    pub provider: String,
    /// The id the provider knows the model by.
    pub upstream_id: String,
    pub max_context_size: u64,
    pub tokenizer: TokenizerSpec,
    pub prices: Prices,
    pub capabilities: Vec<String>,
    /// Response cache for this model: `None` follows `[cache] enabled`.
    pub cache: Option<bool>,
    /// Context transforms for this model (unset ones follow `[context]`).
    pub context: crate::config::context::Toggles,
    /// The provider refuses an assistant tool-call message without the reasoning it came with (Kimi K2
    /// thinking models, DeepSeek's reasoner): the proxy puts back the reasoning it saw when a client dropped it.
    pub reasoning_echo: bool,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Option<SocketAddr>,
    pub max_body_bytes: usize,
    /// Forward the client's own `Authorization` when the provider has no usable key.
    pub forward_client_key: bool,
    /// How long in-flight requests may run on after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// Count tokens (prompt and completion) and ask streams for their usage. Off, the proxy only forwards and
    /// times requests (for measuring what accounting costs).
    pub token_accounting: bool,
    /// Guards the admin surface (dashboard, `/api/*`, `/ws`, `/metrics`); required to listen beyond loopback.
    pub admin_token: Option<Secret>,
    /// Virtual keys: when any is set, the proxy routes require one of them as the bearer token.
    pub client_keys: Vec<ClientKey>,
    /// Browser origins allowed to call the proxy across sites (`scheme://host[:port]`, lowercase). Empty: no
    /// CORS headers at all, and foreign `Origin`s are refused.
    pub cors_allowed_origins: Vec<String>,
    /// Host names (lowercase, no port) the proxy answers to besides IP literals and localhost: any other
    /// `Host` is refused, which defeats DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Time allowed for a request's headers to arrive (also how long an idle keep-alive connection is kept).
    pub header_read_timeout: Duration,
    /// Client connections served at once; more are closed on arrival.
    pub max_connections: usize,
    /// Deadlines for the other phases of a connection, and the shares of the connection slots.
    pub limits: ConnectionLimits,
}

/// What one client may hold, and for how long (`[server]`; docs/security.md says what each guards against).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A request body must be complete this long after its headers arrived.
    pub body_read_timeout: Duration,
    /// Longest pause between two pieces of a request body.
    pub body_idle_timeout: Duration,
    /// Longest a write to the client may wait because the client does not read; then the connection (and the
    /// upstream request it was streaming) is cut.
    pub write_timeout: Duration,
    /// A connection with no request in flight is closed after this long (HTTP/2 included).
    pub idle_timeout: Duration,
    /// HTTP/2: a PING this often; no answer within the timeout closes the connection.
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
    /// Connections one client address (an IPv6 /64) may hold at once; loopback clients are exempt (they are all
    /// the same machine).
    pub max_connections_per_ip: usize,
    /// Dashboards (WebSockets) connected at once.
    pub max_dashboards: usize,
}

/// A virtual key a client presents instead of a provider key; its name is recorded on its requests.
#[derive(Debug, Clone)]
pub struct ClientKey {
    pub name: String,
    pub key: Secret,
}

/// Environment variable read for the admin token when the file sets none.
pub const ADMIN_TOKEN_ENV: &str = "KIMI_PROXY_ADMIN_TOKEN";

/// Shortest admin token or virtual key accepted: anything shorter can be guessed over the network.
pub const MIN_SECRET_CHARS: usize = 16;

/// How requests without a client-given session id are grouped into sessions (`[store] session_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMode {
    /// Recognise the conversation a request continues (by its message prefix); a new one starts a session.
    Conversation,
    /// Everything goes to the active session (one is created when none is active).
    Active,
}

impl SessionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionMode::Conversation => "conversation",
            SessionMode::Active => "active",
        }
    }
}

/// The embedded request store (`[store]`).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub enabled: bool,
    /// The database file as configured (a relative path is relative to the data directory); `None`: the
    /// default `<data-dir>/kimi-proxy.db`. The command line resolves the final path.
    pub path: Option<PathBuf>,
    /// A PostgreSQL store (`postgres://USER@HOST:PORT/DB`) instead of the SQLite file; `--db` overrides it. A
    /// secret: the URL may carry a password.
    pub url: Option<Secret>,
    /// Characters of the last user message kept as a preview (0: none).
    pub preview_chars: usize,
    /// Requests older than this many days are deleted at start and daily.
    pub retention_days: Option<u32>,
    /// Records waiting for the writer; more are dropped (and counted).
    pub queue_capacity: usize,
    /// Largest transaction, in rows.
    pub batch_rows: usize,
    /// Longest time a record waits for its transaction.
    pub flush_interval: Duration,
    pub session_mode: SessionMode,
    /// Responses API state (`store: true`) is kept this long, then a `previous_response_id` naming it gets the
    /// API's 404 (OpenAI keeps stored responses 30 days).
    pub responses_retention: Duration,
    /// The in-memory index of stored responses in front of the database, in bytes.
    pub responses_memory_bytes: u64,
}

pub const DEFAULT_RESPONSES_RETENTION_DAYS: u32 = 30;
pub const DEFAULT_RESPONSES_MEMORY_MB: u64 = 64;

pub const DEFAULT_STORE_PREVIEW_CHARS: usize = 60;
pub const DEFAULT_STORE_QUEUE_CAPACITY: usize = 10_000;
pub const DEFAULT_STORE_BATCH_ROWS: usize = 512;
pub const DEFAULT_STORE_FLUSH_INTERVAL_MS: u64 = 100;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            enabled: true,
            path: None,
            url: None,
            preview_chars: DEFAULT_STORE_PREVIEW_CHARS,
            retention_days: None,
            queue_capacity: DEFAULT_STORE_QUEUE_CAPACITY,
            batch_rows: DEFAULT_STORE_BATCH_ROWS,
            flush_interval: Duration::from_millis(DEFAULT_STORE_FLUSH_INTERVAL_MS),
            session_mode: SessionMode::Conversation,
            responses_retention: Duration::from_secs(
                u64::from(DEFAULT_RESPONSES_RETENTION_DAYS) * 86_400,
            ),
            responses_memory_bytes: DEFAULT_RESPONSES_MEMORY_MB * 1024 * 1024,
        }
    }
}

/// `[passthrough]`: requests to providers outside the catalog (`X-Target-Base-URL`), off unless allowed.
#[derive(Debug, Clone, Default)]
pub struct PassthroughConfig {
    pub allowed: Vec<crate::proxy::passthrough::TargetPattern>,
    /// Allow loopback targets (and plain http to them): for tests and local servers.
    pub allow_loopback: bool,
}

impl PassthroughConfig {
    pub fn enabled(&self) -> bool {
        !self.allowed.is_empty()
    }
}

/// Alert rules (`[alerts]`). A rule whose threshold is 0 (or, for context, whose list is empty) is off.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub enabled: bool,
    /// How often rules are evaluated (on a background task, never on the request path).
    pub interval: Duration,
    /// Shares of the context window, ascending; each fires once per session when crossed upward.
    pub context_thresholds: Vec<f64>,
    /// Context thresholds from this share up are `critical`, those below `warning`.
    pub context_critical: f64,
    /// A context alert resolves when the session drops this share below its threshold (or is deleted).
    pub context_hysteresis: f64,
    /// p95 end-to-end latency over `latency_window` above this, for `latency_for`, fires (0: off).
    pub latency_p95_ms: u64,
    pub latency_window: Duration,
    pub latency_for: Duration,
    /// Error share over `error_rate_window` (with at least `error_rate_min_requests` requests) that fires, and
    /// the share below which it resolves.
    pub error_rate: f64,
    pub error_rate_clear: f64,
    pub error_rate_window: Duration,
    pub error_rate_min_requests: u64,
    /// This many upstream 429 answers from one provider within the window fire (0: off).
    pub upstream_429_count: u64,
    pub upstream_429_window: Duration,
    /// Resident memory budget in bytes (0: off); resolves below 90 % of it.
    pub rss_budget_bytes: u64,
    /// Store queue depth, as a share of its capacity, that fires (0: off); resolves below half of it.
    pub store_backlog: f64,
    /// Records dropped by the store within this window fire (resolves once a window passes without drops).
    pub store_dropped_window: Duration,
    pub webhook: Option<WebhookConfig>,
}

/// Where fired and resolved alerts are POSTed.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// A secret: Slack and Discord webhook URLs carry their token.
    pub url: Secret,
    pub format: WebhookFormat,
    /// Per attempt.
    pub timeout: Duration,
    pub max_attempts: u32,
    /// First wait between attempts; doubles each time.
    pub initial_backoff: Duration,
    /// Events waiting for delivery; more are dropped (and counted).
    pub queue: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// `{"event": "fired"|"resolved", "alert": {…}}`.
    Generic,
    /// `{"text": "…"}` (Slack incoming webhooks).
    Slack,
    /// `{"content": "…"}` (Discord webhooks).
    Discord,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            interval: Duration::from_secs(1),
            context_thresholds: vec![0.80, 0.90, 0.95],
            context_critical: 0.95,
            context_hysteresis: 0.05,
            latency_p95_ms: 5000,
            latency_window: Duration::from_secs(60),
            latency_for: Duration::from_secs(300),
            error_rate: 0.10,
            error_rate_clear: 0.05,
            error_rate_window: Duration::from_secs(60),
            error_rate_min_requests: 20,
            upstream_429_count: 5,
            upstream_429_window: Duration::from_secs(60),
            rss_budget_bytes: 1024 * 1024 * 1024,
            store_backlog: 0.5,
            store_dropped_window: Duration::from_secs(60),
            webhook: None,
        }
    }
}

/// `[ledgers]`: the agents whose usage records `serve` follows (`kimi-proxy import` reads them on demand).
#[derive(Debug, Clone, Default)]
pub struct LedgersConfig {
    /// Agent names (`claude-code`, `codex`, …).
    pub follow: Vec<String>,
    /// Watch the directories (inotify); off, or when the watcher cannot start, they are looked at every `poll`.
    pub watch: bool,
    /// How often the followed directories are looked at for new or grown files when not watched.
    pub poll: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub passthrough: PassthroughConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub alerts: AlertsConfig,
    pub ledgers: LedgersConfig,
    pub context: crate::config::context::ContextConfig,
    pub providers: BTreeMap<String, Arc<Provider>>,
    pub models: BTreeMap<String, Arc<Model>>,
    /// `[model_aliases]`, most specific first.
    pub model_aliases: Vec<ModelAlias>,
}

/// The response cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Cache for every model (a model's `cache` and the `x-kimi-proxy-cache` header override it).
    pub enabled: bool,
    pub max_bytes: u64,
    pub ttl: Duration,
    /// Only requests with `temperature: 0` are cached.
    pub deterministic_only: bool,
    /// `scope = "shared"`: every virtual key shares the answers. Otherwise (`"client"`, the default) the key
    /// includes the virtual key: a client only ever gets answers to its own requests.
    pub shared: bool,
    /// Clients may turn caching on for a request (`x-kimi-proxy-cache: on`); turning it off is always allowed.
    pub client_opt_in: bool,
}

/// Where `${VAR}` values come from; injectable so tests never touch the process environment.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> EnvSource for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

impl Config {
    /// Loads the built-in catalog, merges `path` over it when given, and validates the result.
    pub fn load(path: Option<&Path>, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let user = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Some((path.display().to_string(), text))
            }
            None => None,
        };
        let user_ref = user
            .as_ref()
            .map(|(origin, text)| (origin.as_str(), text.as_str()));
        Self::from_sources(user_ref, env)
    }

    /// Like [`Config::load`], from text: `user` is `(origin for messages, TOML text)`.
    pub fn from_sources(
        user: Option<(&str, &str)>,
        env: &dyn EnvSource,
    ) -> Result<Config, ConfigError> {
        let builtin = RawConfig::parse("built-in catalog", BUILTIN_CATALOG)?;
        let merged = match user {
            Some((origin, text)) => {
                let user = RawConfig::parse(origin, text)?;
                if user.builtin_catalog == Some(false) {
                    user
                } else {
                    builtin.merge(user)
                }
            }
            None => builtin,
        };
        merged.validate(env)
    }

    /// Providers whose key or base URL names an unset environment variable: `(provider, variable)`.
    pub fn missing_variables(&self) -> Vec<(String, String)> {
        let mut missing = Vec::new();
        for provider in self.providers.values() {
            if let BaseUrl::Missing { var } = &provider.base_url {
                missing.push((provider.key.clone(), var.clone()));
            }
            if let ApiKey::Missing { var } = &provider.api_key {
                missing.push((provider.key.clone(), var.clone()));
            }
        }
        missing
    }
}

/// Expands every `${VAR}` in `value`. Returns the first unset (or empty) variable's name on failure.
pub fn expand_vars(value: &str, env: &dyn EnvSource) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            // An unterminated `${` is literal text.
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        match env.var(name) {
            Some(v) if !v.is_empty() => out.push_str(&v),
            _ => return Err(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Renders the resolved catalog for `check-config`, secrets replaced by their status.
pub fn describe(config: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "providers ({}):", config.providers.len());
    for p in config.providers.values() {
        let url = match &p.base_url {
            BaseUrl::Ready(url) => url.clone(),
            BaseUrl::Missing { var } => format!("<unset: ${{{var}}}>"),
        };
        let key = match &p.api_key {
            ApiKey::None => "none".to_string(),
            ApiKey::Ready(_) => "set".to_string(),
            ApiKey::Missing { var } => format!("MISSING (${{{var}}} is not set)"),
        };
        let rpm = p
            .requests_per_minute
            .map(|r| format!(", {r} req/min"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<12} {} {}  key: {key}; timeouts connect {:?} / first byte {:?} / idle {:?}; {} attempts{rpm}",
            p.key,
            p.kind.as_str(),
            url,
            p.timeouts.connect,
            p.timeouts.first_byte,
            p.timeouts.idle,
            p.retry.max_attempts,
        );
    }
    let store = &config.store;
    let _ = writeln!(
        out,
        "store: {}{}; session mode {}; preview {} chars; retention {}",
        if store.enabled { "enabled" } else { "disabled" },
        store
            .path
            .as_ref()
            .map(|p| format!(", path {}", p.display()))
            .unwrap_or_default(),
        store.session_mode.as_str(),
        store.preview_chars,
        store
            .retention_days
            .map(|d| format!("{d} days"))
            .unwrap_or_else(|| "none".to_string()),
    );
    let _ = writeln!(out, "models ({}):", config.models.len());
    for m in config.models.values() {
        let _ = writeln!(
            out,
            "  {:<36} -> {:<11} {:<44} ctx {:>8}  {:<11}  ${}/{}/{} per Mtok in/out/cached  [{}]",
            m.key,
            m.provider,
            m.upstream_id,
            m.max_context_size,
            m.tokenizer.to_string(),
            m.prices.input,
            m.prices.output,
            m.prices.cached_input,
            m.capabilities.join(", ")
        );
    }
    if !config.model_aliases.is_empty() {
        let _ = writeln!(
            out,
            "model aliases ({}, most specific first):",
            config.model_aliases.len()
        );
        for alias in &config.model_aliases {
            let _ = writeln!(out, "  {:<36} -> {}", alias.pattern, alias.target);
        }
    }
    out
}

#[cfg(test)]
mod tests;
