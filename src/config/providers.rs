//! `[providers.*]` and `[models.*]`: the catalog entries, deserialized as they are and checked here.
//!
//! A new provider field is one line in [`Provider`]: `#[serde(default)] pub name: Type,` (or
//! `#[serde(default = "path")]` when its default is not the type's). The catalog and the user's file merge as TOML
//! tables before this, so nothing else needs to know about it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{EnvSource, Secret, expand_vars, units};

/// A provider's API key after `${VAR}` expansion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ApiKey {
    /// The provider needs no key (a local server, say), or the user relies on clients' own keys.
    #[default]
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

impl Default for BaseUrl {
    fn default() -> Self {
        BaseUrl::Missing { var: String::new() }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ProviderKind {
    #[default]
    #[serde(rename = "openai-compatible", alias = "openai")]
    OpenAiCompatible,
    /// Speaks Anthropic's Messages API (`POST {base_url}/v1/messages`): Anthropic clients are passed through
    /// as they are, chat clients translated.
    #[serde(rename = "anthropic")]
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAiCompatible => "openai-compatible",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

// Defaults are generous: a reasoning model may think for minutes before its first byte.
const DEFAULT_CONNECT_MS: u64 = 10_000;
const DEFAULT_FIRST_BYTE_MS: u64 = 300_000;
const DEFAULT_IDLE_MS: u64 = 120_000;
/// How long a request may wait for its provider's budget before the client gets a 429.
const DEFAULT_RATE_LIMIT_MAX_WAIT_MS: u64 = 20_000;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// TCP + TLS connection establishment.
    #[serde(rename = "connect_ms", deserialize_with = "units::ms")]
    pub connect: Duration,
    /// From sending the request to the response headers.
    #[serde(rename = "first_byte_ms", deserialize_with = "units::ms")]
    pub first_byte: Duration,
    /// Longest silence allowed between two body chunks.
    #[serde(rename = "idle_ms", deserialize_with = "units::ms")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_millis(DEFAULT_CONNECT_MS),
            first_byte: Duration::from_millis(DEFAULT_FIRST_BYTE_MS),
            idle: Duration::from_millis(DEFAULT_IDLE_MS),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = never retry).
    pub max_attempts: u32,
    #[serde(rename = "initial_backoff_ms", deserialize_with = "units::ms")]
    pub initial_backoff: Duration,
    #[serde(rename = "max_backoff_ms", deserialize_with = "units::ms")]
    pub max_backoff: Duration,
    /// No retry starts after this much time has passed since the first attempt.
    #[serde(rename = "deadline_ms", deserialize_with = "units::ms")]
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_millis(8_000),
            deadline: Duration::from_millis(30_000),
        }
    }
}

/// A `[providers.<key>]` entry. `Default` is for code that builds a provider (pass-through); the file's defaults
/// are the serde attributes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// The catalog key, from the table's name.
    #[serde(skip)]
    pub key: String,
    #[serde(default, rename = "type")]
    pub kind: ProviderKind,
    /// As written, `${VAR}`s unexpanded; [`Provider::base_url`] is what requests use.
    #[serde(default, rename = "base_url")]
    pub base_url_template: Option<String>,
    #[serde(skip)]
    pub base_url: BaseUrl,
    /// As written (a literal key is a secret too); [`Provider::api_key`] is what requests use.
    #[serde(default, rename = "api_key")]
    pub api_key_template: Option<Secret>,
    #[serde(skip)]
    pub api_key: ApiKey,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Tokens (prompt + completion) per minute the provider allows.
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    /// A request over budget waits up to this long, then gets a 429.
    #[serde(
        default = "default_rate_limit_max_wait",
        rename = "rate_limit_max_wait_ms",
        deserialize_with = "units::ms"
    )]
    pub rate_limit_max_wait: Duration,
    /// The provider understands `stream_options.include_usage`: the proxy asks for the usage chunk on streams
    /// (and hides it from clients that did not ask).
    #[serde(default = "yes")]
    pub stream_usage: bool,
    /// The provider ends every stream with its usage chunk whether asked or not: the proxy then asks for
    /// nothing and removes nothing, so the client receives what the provider sent.
    #[serde(default)]
    pub usage_always: bool,
    /// `type = "anthropic"` only: the `anthropic-beta` features the provider accepts (`None`: every one passes;
    /// the others are removed from the header and counted).
    #[serde(default)]
    pub anthropic_betas: Option<Vec<String>>,
    /// `type = "anthropic"` only: top-level request fields the provider does not take, removed (and counted)
    /// so the request succeeds rather than meeting a 400.
    #[serde(default)]
    pub anthropic_drop_fields: Vec<String>,
    /// `type = "anthropic"` only: the provider answers `POST {base_url}/v1/messages/count_tokens` (Anthropic
    /// does); an Anthropic client's `count_tokens` is then forwarded to it instead of counted locally.
    #[serde(default)]
    pub count_tokens: bool,
    /// The client API the provider speaks besides chat completions (`api`): a client speaking it is passed
    /// through to the provider unchanged instead of being translated to chat.
    #[serde(default)]
    pub api: ProviderApi,
}

/// `api` of a provider entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ProviderApi {
    /// Chat completions only (`{base_url}/chat/completions`).
    #[default]
    #[serde(rename = "chat")]
    Chat,
    /// Also the OpenAI Responses API (`{base_url}/responses`): Responses clients pass through, chat clients
    /// still use chat completions.
    #[serde(rename = "responses")]
    Responses,
}

impl ProviderApi {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderApi::Chat => "chat",
            ProviderApi::Responses => "responses",
        }
    }
}

fn yes() -> bool {
    true
}

fn default_rate_limit_max_wait() -> Duration {
    Duration::from_millis(DEFAULT_RATE_LIMIT_MAX_WAIT_MS)
}

impl Provider {
    /// Expands `${VAR}`s and checks the values; problems go to `errors`. `false` when the entry is unusable.
    pub fn resolve(&mut self, key: &str, env: &dyn EnvSource, errors: &mut Vec<String>) -> bool {
        let start = errors.len();
        self.key = key.to_string();
        self.base_url = match self.base_url_template.as_deref() {
            None => {
                errors.push(format!("providers.{key}.base_url is required"));
                BaseUrl::default()
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
                            BaseUrl::default()
                        }
                    }
                }
                Err(var) => BaseUrl::Missing { var },
            },
        };
        self.api_key = match self.api_key_template.as_ref().map(Secret::expose) {
            None | Some("") => ApiKey::None,
            Some(template) => match expand_vars(template, env) {
                Ok(value) => ApiKey::Ready(Secret::new(value)),
                Err(var) => ApiKey::Missing { var },
            },
        };
        for (name, value) in [
            ("connect_ms", self.timeouts.connect),
            ("first_byte_ms", self.timeouts.first_byte),
            ("idle_ms", self.timeouts.idle),
        ] {
            if value.is_zero() {
                errors.push(format!(
                    "providers.{key}.timeouts.{name} must be greater than 0"
                ));
            }
        }
        if self.retry.max_attempts == 0 {
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
        errors.len() == start
    }
}

/// Which tokenizer counts a model's tokens: `"cl100k_base"`, `"o200k_base"` or `{ file = "…", pattern = "…" }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TokenizerSpec {
    #[default]
    Cl100kBase,
    O200kBase,
    /// A tiktoken-format vocabulary on disk with its pre-tokenizer pattern.
    File {
        path: PathBuf,
        pattern: String,
    },
}

impl<'de> Deserialize<'de> for TokenizerSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Name(String),
            File(FileForm),
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileForm {
            file: PathBuf,
            pattern: String,
        }
        match Written::deserialize(d)? {
            Written::Name(name) => match name.as_str() {
                "cl100k_base" | "cl100k" => Ok(TokenizerSpec::Cl100kBase),
                "o200k_base" | "o200k" => Ok(TokenizerSpec::O200kBase),
                other => Err(serde::de::Error::custom(format!(
                    "unknown encoding `{other}` (use cl100k_base, o200k_base or {{ file = \"…\", pattern = \"…\" }})"
                ))),
            },
            Written::File(f) => Ok(TokenizerSpec::File {
                path: f.file,
                pattern: f.pattern,
            }),
        }
    }
}

impl std::fmt::Display for TokenizerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
    /// Prompt tokens written to the provider's cache (Anthropic's `cache_creation_input_tokens`).
    pub cache_write: f64,
}

/// A `[models."<key>"]` entry. `Default` is for code that builds a model (pass-through).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Model {
    /// Catalog key, e.g. `nvidia/kimi-k2.5`, from the table's name.
    #[serde(skip)]
    pub key: String,
    pub provider: String,
    /// The id the provider knows the model by (`model`; the key without its provider prefix when unset).
    #[serde(rename = "model")]
    pub upstream_id: String,
    pub max_context_size: u64,
    /// As written; [`Model::tokenizer`] falls back to [`default_tokenizer`] when unset.
    #[serde(rename = "tokenizer")]
    pub tokenizer_given: Option<TokenizerSpec>,
    #[serde(skip)]
    pub tokenizer: TokenizerSpec,
    /// The file's flat `*_price` keys; [`Model::prices`] is what accounting reads.
    pub input_price: f64,
    pub output_price: f64,
    pub cached_input_price: Option<f64>,
    /// Price of prompt tokens written to the provider's cache (Anthropic); the input price when absent.
    pub cache_write_price: Option<f64>,
    #[serde(skip)]
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

impl Model {
    /// Fills the derived fields and checks the entry against `providers`. `false` when it is unusable.
    pub fn resolve(
        &mut self,
        key: &str,
        providers: &BTreeMap<String, Arc<Provider>>,
        errors: &mut Vec<String>,
    ) -> bool {
        let start = errors.len();
        self.key = key.to_string();
        if self.provider.is_empty() {
            errors.push(format!("models.\"{key}\".provider is required"));
            return false;
        }
        if !providers.contains_key(&self.provider) {
            errors.push(format!(
                "models.\"{key}\".provider: no provider named `{}`",
                self.provider
            ));
            return false;
        }
        if self.upstream_id.is_empty() {
            self.upstream_id = key
                .strip_prefix(&format!("{}/", self.provider))
                .unwrap_or(key)
                .to_string();
        }
        if self.max_context_size == 0 {
            errors.push(format!(
                "models.\"{key}\".max_context_size is required and must be greater than 0"
            ));
        }
        self.tokenizer = self
            .tokenizer_given
            .clone()
            .unwrap_or_else(|| default_tokenizer(&self.upstream_id));
        self.prices = Prices {
            input: self.input_price,
            output: self.output_price,
            cached_input: self.cached_input_price.unwrap_or(self.input_price),
            cache_write: self.cache_write_price.unwrap_or(self.input_price),
        };
        for (name, value) in [
            ("input_price", self.prices.input),
            ("output_price", self.prices.output),
            ("cached_input_price", self.prices.cached_input),
            ("cache_write_price", self.prices.cache_write),
        ] {
            if !value.is_finite() || value < 0.0 {
                errors.push(format!(
                    "models.\"{key}\".{name} must be a non-negative number"
                ));
            }
        }
        errors.len() == start
    }
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
