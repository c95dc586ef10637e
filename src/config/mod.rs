//! Configuration: the built-in catalog, the user's `config.toml` merged over it, and validation into the
//! [`Config`] the rest of the proxy reads.
//!
//! The catalog and the user's file are merged as TOML tables, then deserialized once into the typed sections
//! below (each with its serde defaults), and each section checks its own values (`resolve`). An unknown key or a
//! value of the wrong type is reported by the TOML parser with its file and line (see `raw.rs`); an inconsistent
//! value with the section, provider or model it belongs to, all at once.

mod alerts;
mod aliases;
mod cluster;
pub mod context;
mod providers;
mod raw;
mod server;
mod store;
mod telemetry;
mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use alerts::{AlertsConfig, WebhookConfig, WebhookFormat};
pub use aliases::ModelAlias;
pub use cluster::{
    ClusterConfig, DEFAULT_CLUSTER_KEY_PREFIX, DEFAULT_REDIS_TIMEOUT_MS, MAX_INSTANCE_ID,
    RedisFailure, valid_instance_id,
};
pub use providers::{
    ApiKey, BaseUrl, Model, Prices, Provider, ProviderApi, ProviderKind, RetryPolicy, Timeouts,
    TokenizerSpec, default_tokenizer,
};
pub use server::{
    CacheConfig, ClientKey, ConnectionLimits, DEFAULT_MAX_BODY_BYTES, PassthroughConfig,
    ServerConfig, normalize_origin,
};
pub use store::{
    DEFAULT_RESPONSES_MEMORY_MB, DEFAULT_RESPONSES_RETENTION_DAYS, DEFAULT_STORE_BATCH_ROWS,
    DEFAULT_STORE_FLUSH_INTERVAL_MS, DEFAULT_STORE_PREVIEW_CHARS, DEFAULT_STORE_QUEUE_CAPACITY,
    LedgersConfig, SessionMode, StoreConfig,
};
pub use telemetry::{DEFAULT_SERVICE_NAME, TelemetryConfig};

/// The built-in catalog, embedded in the binary.
pub const BUILTIN_CATALOG: &str = include_str!("catalog.toml");

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
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
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

/// Environment variable read for the admin token when the file sets none.
pub const ADMIN_TOKEN_ENV: &str = "KIMI_PROXY_ADMIN_TOKEN";

/// Shortest admin token or virtual key accepted: anything shorter can be guessed over the network.
pub const MIN_SECRET_CHARS: usize = 16;

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub passthrough: PassthroughConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub alerts: AlertsConfig,
    pub ledgers: LedgersConfig,
    /// `[cluster]`: budgets shared by several instances through Redis.
    pub cluster: ClusterConfig,
    /// `[telemetry]`: OpenTelemetry traces over OTLP/HTTP.
    pub telemetry: TelemetryConfig,
    pub context: crate::config::context::ContextConfig,
    pub providers: BTreeMap<String, Arc<Provider>>,
    pub models: BTreeMap<String, Arc<Model>>,
    /// `[model_aliases]`, most specific first.
    pub model_aliases: Vec<ModelAlias>,
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
        raw::load(user, env)
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
