//! Who may use what. One guard sits in front of every route: it applies the browser rules (`Host`, `Origin`,
//! `Sec-Fetch-Site`, CORS) everywhere, virtual keys on the proxy routes, and the admin token (bearer header or
//! login session) on everything else — the dashboard, `/api/*`, `/ws`, `/metrics`. Paths are classified
//! fail-closed: anything that is not a proxy route or the login page is admin surface.

pub mod login;
pub mod origin;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use rand::RngCore;
use ring::hmac;

use crate::config::{ADMIN_TOKEN_ENV, Config};
use crate::http_error::HttpError;
use origin::{Policy, Refusal};
use session::Sessions;

/// The name of the virtual key a proxy request authenticated with; the proxy records it.
#[derive(Debug, Clone)]
pub struct VirtualKey(pub Arc<str>);

/// Everything the guard needs, built once from the configuration.
pub struct Auth {
    /// Per-process key: authenticates session cookies, and makes secret comparisons constant-time.
    key: hmac::Key,
    /// HMAC of the admin token, when one is set.
    admin_tag: Option<Vec<u8>>,
    sessions: Sessions,
    /// `(name, HMAC of the key)`.
    client_keys: Vec<(Arc<str>, Vec<u8>)>,
    policy: Policy,
    /// The proxy surface's paths (virtual keys), from the route table; every other path is admin surface.
    proxy_paths: &'static [String],
}

#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to listen on {addr} without an admin token: anyone on that network could read your usage and use \
     your provider keys. Set a token of at least {min} characters with `[server] admin_token = \"${{{env}}}\"` in \
     the config file or the environment variable {env} (e.g. `export {env}=$(openssl rand -hex 24)`), or listen on \
     127.0.0.1"
)]
pub struct ListenRefused {
    pub addr: SocketAddr,
    pub min: usize,
    pub env: &'static str,
}

/// Listening beyond loopback needs an admin token.
pub fn check_listen(addr: SocketAddr, config: &Config) -> Result<(), ListenRefused> {
    if addr.ip().is_loopback() || config.server.admin_token.is_some() {
        return Ok(());
    }
    Err(ListenRefused {
        addr,
        min: crate::config::MIN_SECRET_CHARS,
        env: ADMIN_TOKEN_ENV,
    })
}

/// Headers every admin response carries unless the route set its own: no framing, no sniffing, no referrer to
/// other origins, and a Content-Security-Policy that only allows the proxy's own scripts, styles and connections.
/// (`no-referrer` would make browsers send `Origin: null` on same-origin form posts and fetches, which the
/// origin check rightly refuses: the login form could not log in.)
const ADMIN_SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "same-origin"),
];

/// Headers a browser on an allowlisted origin may read from answers.
const EXPOSED_HEADERS: &str = "x-kimi-proxy-overhead-us, x-kimi-proxy-error, x-kimi-proxy-cache, x-kimi-proxy-dropped-tools, x-request-id, retry-after";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Proxy,
    Login,
    Admin,
}

/// Everything under `/v1/` is the proxy surface (no admin route lives there): a path no route serves is then
/// refused by the proxy in the client's error format, counted and shown, instead of asking for the admin token.
fn classify(proxy_paths: &[String], path: &str) -> Class {
    if path.starts_with("/v1/") || proxy_paths.iter().any(|p| path_matches(p, path)) {
        Class::Proxy
    } else if path == "/login" || path == "/logout" {
        Class::Login
    } else {
        Class::Admin
    }
}

/// A route pattern against a request path: a `{name}` segment matches one non-empty segment, every other
/// segment itself.
fn path_matches(pattern: &str, path: &str) -> bool {
    if !pattern.contains('{') {
        return pattern == path;
    }
    let mut pattern = pattern.split('/');
    let mut path = path.split('/');
    loop {
        match (pattern.next(), path.next()) {
            (None, None) => return true,
            (Some(p), Some(s)) if p.starts_with('{') && p.ends_with('}') && !s.is_empty() => {}
            (Some(p), Some(s)) if p == s => {}
            _ => return false,
        }
    }
}

impl Auth {
    pub fn new(config: &Config, proxy_paths: &'static [String]) -> Auth {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &seed);
        let tag = |secret: &str| hmac::sign(&key, secret.as_bytes()).as_ref().to_vec();
        let server = &config.server;
        Auth {
            admin_tag: server.admin_token.as_ref().map(|t| tag(t.expose())),
            sessions: Sessions::new(hmac::Key::new(hmac::HMAC_SHA256, &seed)),
            client_keys: server
                .client_keys
                .iter()
                .map(|k| (Arc::from(k.name.as_str()), tag(k.key.expose())))
                .collect(),
            policy: Policy::new(
                server.cors_allowed_origins.clone(),
                server.allowed_hosts.clone(),
            ),
            key,
            proxy_paths,
        }
    }

    pub fn admin_token_set(&self) -> bool {
        self.admin_tag.is_some()
    }

    /// Constant-time check of a presented admin token.
    fn is_admin_token(&self, presented: &str) -> bool {
        self.admin_tag
            .as_ref()
            .is_some_and(|tag| hmac::verify(&self.key, presented.as_bytes(), tag).is_ok())
    }

    fn admin_authenticated(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|t| self.is_admin_token(t))
            || session::cookie_value(headers).is_some_and(|v| self.sessions.is_valid(v))
    }

    /// The name of the virtual key presented (`Authorization: Bearer`, or `x-api-key` as Anthropic clients send
    /// it), checked against every key in constant time.
    fn virtual_key(&self, headers: &HeaderMap) -> Option<Arc<str>> {
        let presented = bearer(headers).or_else(|| {
            headers
                .get(API_KEY_HEADER)?
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty())
        })?;
        let mut found = None;
        for (name, tag) in &self.client_keys {
            if hmac::verify(&self.key, presented.as_bytes(), tag).is_ok() {
                found = Some(Arc::clone(name));
            }
        }
        found
    }
}

/// Anthropic clients' key header (<https://docs.anthropic.com/en/api/overview>: "x-api-key: Your API key").
const API_KEY_HEADER: &str = "x-api-key";

/// The bearer token of `Authorization`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The guard in front of every route (see the module comment).
pub async fn guard(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let class = classify(auth.proxy_paths, request.uri().path());
    let dialect = kimi_dialects::Dialect::of_path(request.uri().path());
    let cors_origin = match auth
        .policy
        .check(request.headers(), request.method(), request.uri())
    {
        Ok(origin) => origin,
        Err(refusal) => {
            if !matches!(refusal, Refusal::Origin(_)) {
                tracing::info!(
                    path = request.uri().path(),
                    "refused: {}",
                    refusal.message()
                );
            }
            return HttpError::forbidden(refusal.message()).into_response_for(dialect);
        }
    };
    // Claude Code probes its base URL with `HEAD /` before it starts (headroomlabs-ai/headroom#2032: a 405 there
    // reads as "endpoint down"): the answer says only that something listens, so it needs no token.
    if request.method() == Method::HEAD && request.uri().path() == "/" {
        return StatusCode::OK.into_response();
    }
    if let Some(origin) = &cors_origin
        && request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return preflight(origin, request.headers());
    }

    let mut response = match class {
        Class::Proxy => {
            let headers = request.headers_mut();
            strip_session_cookie(headers);
            if !auth.client_keys.is_empty() {
                let Some(name) = auth.virtual_key(headers) else {
                    return with_cors(
                        HttpError::unauthorized(
                            "a virtual key is required: send `Authorization: Bearer <key>` (or \
                             `x-api-key: <key>`) with a key from [[server.client_keys]]",
                        )
                        .into_response_for(dialect),
                        cors_origin,
                    );
                };
                // The virtual key is ours: it never goes upstream (the provider's key is used there).
                headers.remove(header::AUTHORIZATION);
                headers.remove(API_KEY_HEADER);
                request.extensions_mut().insert(VirtualKey(name));
            }
            let mut response = next.run(request).await;
            // Every proxy answer (model lists, cache hits, errors) is data, never to be sniffed into a page.
            response.headers_mut().insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            response
        }
        Class::Login => next.run(request).await,
        Class::Admin => {
            if auth.admin_token_set() && !auth.admin_authenticated(request.headers()) {
                unauthenticated(&request)
            } else {
                let mut response = next.run(request).await;
                let headers = response.headers_mut();
                for (name, value) in ADMIN_SECURITY_HEADERS {
                    if !headers.contains_key(name) {
                        headers.insert(
                            HeaderName::from_static(name),
                            HeaderValue::from_static(value),
                        );
                    }
                }
                response
            }
        }
    };
    response = with_cors(response, cors_origin);
    response
}

/// A browser navigating to a page goes to the login page; anything else gets a 401.
fn unauthenticated(request: &Request) -> Response {
    let path = request.uri().path();
    let page = matches!(*request.method(), Method::GET | Method::HEAD)
        && !path.starts_with("/api/")
        && path != "/metrics"
        && path != "/ws"
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
    if page {
        let target = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        return login::redirect_to_login(target);
    }
    let mut response = HttpError::unauthorized(
        "the admin token is required: send `Authorization: Bearer <token>` or log in at /login",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"kimi-proxy\""),
    );
    response
}

fn strip_session_cookie(headers: &mut HeaderMap) {
    let Some(value) = headers.get(header::COOKIE).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if !value.contains(session::COOKIE_NAME) {
        return;
    }
    match session::without_session_cookie(value).and_then(|v| HeaderValue::from_str(&v).ok()) {
        Some(kept) => {
            headers.insert(header::COOKIE, kept);
        }
        None => {
            headers.remove(header::COOKIE);
        }
    }
}

fn preflight(origin: &HeaderValue, headers: &HeaderMap) -> Response {
    let allow_headers = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| {
            v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(b))
        })
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("authorization, content-type"));
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(
        header::VARY,
        HeaderValue::from_static(
            "origin, access-control-request-method, access-control-request-headers",
        ),
    );
    response
}

fn with_cors(mut response: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(origin) = origin {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn classification_is_fail_closed() {
        let paths = crate::routes::proxy_paths();
        assert_eq!(classify(paths, "/v1/chat/completions"), Class::Proxy);
        assert_eq!(classify(paths, "/models"), Class::Proxy);
        assert_eq!(classify(paths, "/login"), Class::Login);
        // An API client's unknown path (Claude Code's `/v1/messages` before it was served) is the proxy's.
        assert_eq!(classify(paths, "/v1/messages"), Class::Proxy);
        assert_eq!(classify(paths, "/v1/models/"), Class::Proxy);
        assert_eq!(classify(paths, "/v1/responses/resp_1"), Class::Proxy);
        assert_eq!(
            classify(paths, "/v1/responses/resp_1/input_items"),
            Class::Proxy
        );
        assert_eq!(classify(paths, "/responses/resp_1"), Class::Proxy);
        for admin in [
            "/",
            "/api/stats",
            "/ws",
            "/metrics",
            "/anything",
            "/v1",
            "/responses/",
            "/responses/resp_1/other",
        ] {
            assert_eq!(classify(paths, admin), Class::Admin, "{admin}");
        }
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn listening_beyond_loopback_needs_a_token() {
        let none = |_: &str| None;
        let config = Config::from_sources(Some(("t", "builtin_catalog = false")), &none).unwrap();
        assert!(check_listen("127.0.0.1:8000".parse().unwrap(), &config).is_ok());
        assert!(check_listen("[::1]:8000".parse().unwrap(), &config).is_ok());
        let refused = check_listen("0.0.0.0:8000".parse().unwrap(), &config).unwrap_err();
        assert!(refused.to_string().contains(ADMIN_TOKEN_ENV));
        let token =
            |name: &str| (name == ADMIN_TOKEN_ENV).then(|| "0123456789abcdef01".to_string());
        let config = Config::from_sources(Some(("t", "builtin_catalog = false")), &token).unwrap();
        assert!(check_listen("0.0.0.0:8000".parse().unwrap(), &config).is_ok());
    }
}
