//! `[server]`, `[passthrough]` and `[cache]`: deserialized as they are, checked here.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{ADMIN_TOKEN_ENV, EnvSource, MIN_SECRET_CHARS, Secret, expand_vars, units};
use crate::net::TargetPattern;

/// Default request body limit: agents send long conversations and base64 images.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(deserialize_with = "listen")]
    pub listen: Option<SocketAddr>,
    pub max_body_bytes: usize,
    /// Forward the client's own `Authorization` when the provider has no usable key.
    pub forward_client_key: bool,
    /// How long in-flight requests may run on after SIGINT/SIGTERM.
    #[serde(rename = "shutdown_grace_ms", deserialize_with = "units::ms")]
    pub shutdown_grace: Duration,
    /// Count tokens (prompt and completion) and ask streams for their usage. Off, the proxy only forwards and
    /// times requests (for measuring what accounting costs).
    pub token_accounting: bool,
    /// As written (usually `"${VAR}"`); [`ServerConfig::admin_token`] is the token in force.
    #[serde(rename = "admin_token")]
    pub admin_token_template: Option<Secret>,
    /// Guards the admin surface (dashboard, `/api/*`, `/ws`, `/metrics`); required to listen beyond loopback.
    #[serde(skip)]
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
    #[serde(rename = "header_read_timeout_ms", deserialize_with = "units::ms")]
    pub header_read_timeout: Duration,
    /// Client connections served at once; more are closed on arrival.
    pub max_connections: usize,
    #[serde(rename = "body_read_timeout_ms", deserialize_with = "units::ms")]
    pub body_read_timeout: Duration,
    #[serde(rename = "body_idle_timeout_ms", deserialize_with = "units::ms")]
    pub body_idle_timeout: Duration,
    #[serde(rename = "write_timeout_ms", deserialize_with = "units::ms")]
    pub write_timeout: Duration,
    #[serde(rename = "idle_timeout_ms", deserialize_with = "units::ms")]
    pub idle_timeout: Duration,
    #[serde(
        rename = "http2_keep_alive_interval_ms",
        deserialize_with = "units::ms"
    )]
    pub http2_keep_alive_interval: Duration,
    #[serde(rename = "http2_keep_alive_timeout_ms", deserialize_with = "units::ms")]
    pub http2_keep_alive_timeout: Duration,
    /// Unset: a quarter of `max_connections`.
    pub max_connections_per_ip: Option<usize>,
    pub max_dashboards: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let ms = Duration::from_millis;
        ServerConfig {
            listen: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            forward_client_key: true,
            shutdown_grace: ms(30_000),
            token_accounting: true,
            admin_token_template: None,
            admin_token: None,
            client_keys: Vec::new(),
            cors_allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            // Bounds what slow or silent clients can hold.
            header_read_timeout: ms(30_000),
            // Each open connection holds a socket and a few KiB of buffers; the default leaves room for
            // thousands of streams under the usual 20,000-descriptor limit (a stream also holds an upstream
            // socket).
            max_connections: 8192,
            body_read_timeout: ms(60_000),
            body_idle_timeout: ms(15_000),
            write_timeout: ms(30_000),
            // HTTP/2 and upgraded-protocol negotiation included; HTTP/1 is also bounded by the header timeout.
            idle_timeout: ms(60_000),
            http2_keep_alive_interval: ms(20_000),
            http2_keep_alive_timeout: ms(20_000),
            max_connections_per_ip: None,
            max_dashboards: 32,
        }
    }
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientKey {
    pub name: String,
    /// As written until [`ServerConfig::resolve`] expands its `${VAR}`s.
    pub key: Secret,
}

fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!("server.listen: `{text}` is not an ADDRESS:PORT"))
    })
}

impl ServerConfig {
    /// The per-phase deadlines and the connection shares.
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            body_read_timeout: self.body_read_timeout,
            body_idle_timeout: self.body_idle_timeout,
            write_timeout: self.write_timeout,
            idle_timeout: self.idle_timeout,
            http2_keep_alive_interval: self.http2_keep_alive_interval,
            http2_keep_alive_timeout: self.http2_keep_alive_timeout,
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or((self.max_connections / 4).max(1)),
            max_dashboards: self.max_dashboards,
        }
    }

    /// Expands the secrets, normalizes origins and hosts, and checks the values.
    pub fn resolve(&mut self, env: &dyn EnvSource, errors: &mut Vec<String>) {
        if self.max_body_bytes == 0 {
            errors.push("server.max_body_bytes must be greater than 0".to_string());
        }
        for (key, value) in [
            ("header_read_timeout_ms", self.header_read_timeout),
            ("body_read_timeout_ms", self.body_read_timeout),
            ("body_idle_timeout_ms", self.body_idle_timeout),
            ("write_timeout_ms", self.write_timeout),
            ("idle_timeout_ms", self.idle_timeout),
            (
                "http2_keep_alive_interval_ms",
                self.http2_keep_alive_interval,
            ),
            ("http2_keep_alive_timeout_ms", self.http2_keep_alive_timeout),
        ] {
            if value.is_zero() {
                errors.push(format!("server.{key} must be greater than 0"));
            }
        }
        for (key, value) in [
            ("max_connections", self.max_connections),
            (
                "max_connections_per_ip",
                self.limits().max_connections_per_ip,
            ),
            ("max_dashboards", self.max_dashboards),
        ] {
            if value == 0 {
                errors.push(format!("server.{key} must be greater than 0"));
            }
        }
        self.admin_token = admin_token(self.admin_token_template.as_ref(), env, errors);
        self.client_keys = client_keys(std::mem::take(&mut self.client_keys), env, errors);
        self.cors_allowed_origins = std::mem::take(&mut self.cors_allowed_origins)
            .into_iter()
            .filter_map(|origin| {
                let normalized = normalize_origin(&origin);
                if normalized.is_none() {
                    errors.push(format!(
                        "server.cors_allowed_origins: `{origin}` is not an origin (scheme://host[:port], no path)"
                    ));
                }
                normalized
            })
            .collect();
        self.allowed_hosts = std::mem::take(&mut self.allowed_hosts)
            .into_iter()
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
            .collect();
    }
}

/// The admin token from `[server] admin_token` (usually `"${VAR}"`), else from `KIMI_PROXY_ADMIN_TOKEN`.
fn admin_token(
    template: Option<&Secret>,
    env: &dyn EnvSource,
    errors: &mut Vec<String>,
) -> Option<Secret> {
    let value = match template {
        Some(template) => match expand_vars(template.expose(), env) {
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
    written: Vec<ClientKey>,
    env: &dyn EnvSource,
    errors: &mut Vec<String>,
) -> Vec<ClientKey> {
    let mut keys: Vec<ClientKey> = Vec::with_capacity(written.len());
    for (i, k) in written.into_iter().enumerate() {
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
        let value = match expand_vars(k.key.expose(), env) {
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

/// `[passthrough]`: requests to providers outside the catalog (`X-Target-Base-URL`), off unless allowed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PassthroughConfig {
    #[serde(deserialize_with = "target_patterns")]
    pub allowed: Vec<TargetPattern>,
    /// Allow loopback targets (and plain http to them): for tests and local servers.
    pub allow_loopback: bool,
}

impl PassthroughConfig {
    pub fn enabled(&self) -> bool {
        !self.allowed.is_empty()
    }
}

fn target_patterns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TargetPattern>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| {
            TargetPattern::parse(text).map_err(|message| {
                serde::de::Error::custom(format!("passthrough.allowed: {message}"))
            })
        })
        .collect()
}

/// `[cache]`: the response cache, off unless enabled here, per model, or per request.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Cache for every model (a model's `cache` and the `x-kimi-proxy-cache` header override it).
    pub enabled: bool,
    pub max_bytes: u64,
    #[serde(rename = "ttl_secs", deserialize_with = "units::secs")]
    pub ttl: Duration,
    /// Only requests with `temperature: 0` are cached.
    pub deterministic_only: bool,
    /// `scope = "shared"`: every virtual key shares the answers. Otherwise (`"client"`, the default) the key
    /// includes the virtual key: a client only ever gets answers to its own requests.
    #[serde(rename = "scope", deserialize_with = "cache_scope")]
    pub shared: bool,
    /// Clients may turn caching on for a request (`x-kimi-proxy-cache: on`); turning it off is always allowed.
    pub client_opt_in: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            max_bytes: 64 * 1024 * 1024,
            ttl: Duration::from_secs(3600),
            deterministic_only: true,
            shared: false,
            client_opt_in: true,
        }
    }
}

impl CacheConfig {
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.ttl.is_zero() {
            errors.push("cache.ttl_secs must be greater than 0".to_string());
        }
    }
}

fn cache_scope<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match String::deserialize(d)?.as_str() {
        "client" => Ok(false),
        "shared" => Ok(true),
        other => Err(serde::de::Error::custom(format!(
            "cache.scope: `{other}` is not `client` (each virtual key has its own answers) or `shared`"
        ))),
    }
}
