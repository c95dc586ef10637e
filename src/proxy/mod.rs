//! The proxy: its shared state, its routes' handlers, and the request pipeline (`pipeline`) they run.
//!
//! A request flows one way through the pipeline's named phases: read → parse → route → shape → cache → admit →
//! send → respond (see `pipeline`).

pub mod body;
pub mod cache;
pub mod client_app;
pub mod dialect;
pub mod error;
pub mod headers;
pub mod passthrough;
pub mod pipeline;
pub mod ratelimit;
pub mod reasoning;
pub mod request;
pub mod route;
mod shape;
pub mod shared_limit;
pub mod shared_tokens;
pub mod summary;
pub mod toolcalls;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};

use bytes::Bytes;
use http::{HeaderValue, header};
use serde_json::Value;

use crate::accounting::{Accounting, DEFAULT_MESSAGE_CACHE_BYTES, RecordSink};
use crate::alerts::AlertEngine;
use crate::config::{Config, Provider};
use crate::context::ContextEngine;
use crate::net::HttpClient;
use cache::ResponseCache;
use error::ProxyError;
use ratelimit::RateLimiter;
use route::Catalog;

/// Tells the client how long the proxy itself took (microseconds, upstream excluded).
pub const OVERHEAD_HEADER: &str = "x-kimi-proxy-overhead-us";

/// Per request: `on`/`off` overrides the response cache setting; on answers: `hit`.
pub const CACHE_HEADER: &str = "x-kimi-proxy-cache";

/// A provider with its pooled client.
pub struct Upstream {
    pub provider: Arc<Provider>,
    pub client: HttpClient,
    /// The provider's budgets, when it has any (with `[cluster] redis`: its tokens per minute only).
    pub limiter: Option<Arc<RateLimiter>>,
    /// Its requests per minute shared by every instance through Redis (`[cluster] redis`).
    pub shared: Option<Arc<shared_limit::SharedRate>>,
    /// Its tokens per minute shared by every instance through Redis (`[cluster] redis`).
    pub shared_tokens: Option<Arc<shared_tokens::SharedTokens>>,
    /// 429 answers from the provider since start (retried ones included).
    pub throttled: Arc<AtomicU64>,
}

/// Charges each provider's token budget with what its requests really used.
struct BudgetCharger(HashMap<String, Arc<RateLimiter>>);

impl RecordSink for BudgetCharger {
    fn offer(&self, record: &Arc<crate::accounting::RequestRecord>) {
        if let Some(limiter) = self.0.get(&record.provider) {
            limiter.charge(
                record.prompt_tokens + record.completion_tokens,
                tokio::time::Instant::now(),
            );
        }
    }
}

/// Shared, read-only state of the proxy routes.
pub struct ProxyState {
    pub config: Arc<Config>,
    pub catalog: Catalog,
    pub upstreams: HashMap<String, Upstream>,
    pub accounting: Arc<Accounting>,
    pub response_cache: Arc<ResponseCache>,
    /// The client for pass-through targets, when `[passthrough]` allows any.
    passthrough: Option<HttpClient>,
    /// Alert rules, active alerts and their event stream (`subscribe()`) for the API and the dashboard.
    pub alerts: Arc<AlertEngine>,
    /// Masking, observation masking, compaction.
    pub context: Arc<ContextEngine>,
    /// `/v1/models` never changes while the process runs: rendered once.
    models_json: Bytes,
    /// Reasoning seen in answers, for the models that need it back (`reasoning_echo`).
    pub reasoning: Arc<reasoning::ReasoningMemory>,
    /// Responses API state (`store: true`), for `previous_response_id` and `/v1/responses/{id}`.
    pub responses: Arc<dialect::responses::ResponseStore>,
    /// The other instances on the same PostgreSQL database, once joined (`None` on SQLite).
    pub fleet: std::sync::OnceLock<Arc<crate::store::fleet::Fleet>>,
    /// What became of the trace spans, once telemetry started (`[telemetry] otlp_endpoint`).
    pub telemetry: std::sync::OnceLock<Arc<crate::telemetry::TelemetryCounters>>,
}

impl ProxyState {
    /// Budget usage per provider that has a budget.
    pub fn rate_limits(&self) -> std::collections::BTreeMap<String, ratelimit::Usage> {
        self.upstreams
            .iter()
            .filter_map(|(key, u)| {
                let mut usage = match (&u.limiter, &u.shared) {
                    (Some(limiter), _) => limiter.usage(),
                    (None, Some(shared)) => shared.fallback().usage(),
                    (None, None) => return None,
                };
                if let Some(shared) = &u.shared {
                    let own = shared.fallback().usage();
                    usage.requests_per_minute = own.requests_per_minute;
                    usage.requests_last_minute = shared.admitted_last_minute();
                    usage.shared = Some(shared.usage());
                }
                if let Some(shared) = &u.shared_tokens {
                    usage.shared_tokens = Some(shared.usage());
                }
                Some((key.clone(), usage))
            })
            .collect()
    }

    /// Failed Redis calls since start (shared budgets, shared cache), for the alert engine; `None` without
    /// `[cluster] redis`.
    pub fn redis_failures(self: &Arc<Self>) -> Option<Arc<dyn Fn() -> u64 + Send + Sync>> {
        self.config.cluster.redis.as_ref()?;
        let state = Arc::clone(self);
        Some(Arc::new(move || {
            let budgets: u64 = state
                .upstreams
                .values()
                .map(|u| {
                    u.shared.as_ref().map_or(0, |s| s.usage().redis_failures)
                        + u.shared_tokens
                            .as_ref()
                            .map_or(0, |s| s.usage().redis_failures)
                })
                .sum();
            let cache = state.response_cache.shared_failures();
            budgets + cache
        }))
    }

    /// Each provider's count of upstream 429 answers, for the alert engine.
    pub fn throttle_counters(&self) -> Vec<(String, Arc<AtomicU64>)> {
        self.upstreams
            .iter()
            .map(|(key, u)| (key.clone(), Arc::clone(&u.throttled)))
            .collect()
    }

    pub fn new(config: Arc<Config>) -> Result<ProxyState, crate::net::ClientBuildError> {
        let catalog = Catalog::new(&config);
        let mut upstreams = HashMap::new();
        // The configuration checked the URL already: an error here leaves budgets per instance, said loudly.
        let redis = shared_limit::RedisLink::new(&config.cluster).unwrap_or_else(|error| {
            tracing::error!(%error, "[cluster] redis unusable: budgets are per instance");
            None
        });
        for (key, provider) in &config.providers {
            let shared = match (&redis, provider.requests_per_minute) {
                (Some(link), Some(rpm)) => shared_limit::SharedRate::new(
                    link,
                    key,
                    rpm,
                    config.cluster.local_allowance,
                    provider.rate_limit_max_wait,
                ),
                _ => None,
            };
            let limiter = RateLimiter::new(
                // Shared, the requests per minute are Redis's; the tokens per minute are admitted here, from a
                // bucket that follows the fleet's.
                provider.requests_per_minute.filter(|_| shared.is_none()),
                provider.tokens_per_minute,
                provider.rate_limit_max_wait,
            )
            .map(Arc::new);
            let shared_tokens = match (&redis, &limiter) {
                (Some(link), Some(limiter)) => {
                    shared_tokens::SharedTokens::start(link, key, limiter)
                }
                _ => None,
            };
            upstreams.insert(
                key.clone(),
                Upstream {
                    provider: provider.clone(),
                    client: crate::net::build_https_client(provider.timeouts.connect)?,
                    limiter,
                    shared,
                    shared_tokens,
                    throttled: Arc::new(AtomicU64::new(0)),
                },
            );
        }
        if let Some(link) = &redis {
            tracing::info!(redis = %link.shown(), "provider request and token budgets shared through Redis");
            link.warm_up();
        }
        let models_json = Bytes::from(render_models(&catalog).to_string());
        let accounting = Accounting::for_instance(
            DEFAULT_MESSAGE_CACHE_BYTES,
            config.store.preview_chars,
            config.cluster.instance_id.as_deref().map(Arc::from),
        );
        accounting.preload(&config);
        let limiters: HashMap<String, Arc<RateLimiter>> = upstreams
            .iter()
            .filter_map(|(key, u)| u.limiter.clone().map(|l| (key.clone(), l)))
            .collect();
        if limiters
            .values()
            .any(|l| l.usage().tokens_per_minute.is_some())
        {
            accounting.add_sink(Arc::new(BudgetCharger(limiters)));
        }
        let response_cache = Arc::new(match (&redis, config.cluster.response_cache) {
            (Some(link), true) => {
                tracing::info!(redis = %link.shown(), "response cache shared through Redis");
                ResponseCache::shared(config.cache.max_bytes, config.cache.ttl, Arc::clone(link))
            }
            _ => ResponseCache::new(config.cache.max_bytes, config.cache.ttl),
        });
        let context = Arc::new(ContextEngine::new(&config));
        let passthrough = if config.passthrough.enabled() {
            Some(crate::net::build_passthrough_client(
                config.passthrough.allow_loopback,
                crate::config::Timeouts::default().connect,
            )?)
        } else {
            None
        };
        let alerts = AlertEngine::new(&config.alerts);
        let responses = Arc::new(dialect::responses::ResponseStore::new(
            config.store.responses_memory_bytes,
            config.store.responses_retention,
        ));
        Ok(ProxyState {
            passthrough,
            context,
            config,
            catalog,
            upstreams,
            accounting,
            response_cache,
            alerts,
            models_json,
            reasoning: Arc::new(reasoning::ReasoningMemory::default()),
            responses,
            fleet: std::sync::OnceLock::new(),
            telemetry: std::sync::OnceLock::new(),
        })
    }
}

/// Answers for paths and methods no route serves, in the OpenAI error format. A refusal on a path that looks
/// like an API call (a client pointed at the proxy speaking an API it does not serve) is counted and shown.
pub async fn not_found(state: Arc<ProxyState>, request: Request) -> Response {
    let error = ProxyError::NotFound {
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
    };
    refuse(&state, &request, error)
}

pub async fn method_not_allowed(state: Arc<ProxyState>, request: Request) -> Response {
    let error = ProxyError::MethodNotAllowed(request.method().to_string());
    refuse(&state, &request, error)
}

fn refuse(state: &ProxyState, request: &Request, error: ProxyError) -> Response {
    let path = request.uri().path();
    if looks_like_api_call(path) {
        state.accounting.refused(crate::accounting::Refusal {
            at_ms: unix_ms(),
            method: request.method().to_string(),
            path: path.chars().take(256).collect(),
            status: error.status().as_u16(),
            code: error.code(),
            message: error.to_string().chars().take(512).collect(),
            client_app: client_app::client_app(request.headers()),
        });
    }
    dialect::error_response(kimi_dialects::Dialect::of_path(path), error)
}

/// Paths an LLM client calls: under `/v1/`, or one of the APIs' own paths without it.
fn looks_like_api_call(path: &str) -> bool {
    const API_PATHS: [&str; 7] = [
        "/chat/completions",
        "/completions",
        "/messages",
        "/responses",
        "/embeddings",
        "/models",
        "/messages/count_tokens",
    ];
    path.starts_with("/v1/")
        || path == "/v1"
        || API_PATHS
            .iter()
            .any(|api| path == *api || path.starts_with(&format!("{api}/")))
}

pub(crate) async fn list_models(State(state): State<Arc<ProxyState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        state.models_json.clone(),
    )
        .into_response()
}

fn render_models(catalog: &Catalog) -> Value {
    let data: Vec<Value> = catalog
        .models()
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.key,
                "object": "model",
                "created": 0,
                "owned_by": m.provider,
                "upstream_id": m.upstream_id,
                "context_length": m.max_context_size,
                "capabilities": m.capabilities,
            })
        })
        .collect();
    serde_json::json!({ "object": "list", "data": data })
}

pub(crate) async fn chat_completions(
    State(state): State<Arc<ProxyState>>,
    request: Request,
) -> Response {
    pipeline::chat_completions(&state, request).await
}

pub(crate) async fn create_response(
    State(state): State<Arc<ProxyState>>,
    request: Request,
) -> Response {
    pipeline::serve(&state, kimi_dialects::Dialect::Responses, request).await
}

pub(crate) async fn messages(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    dialect::messages::messages(&state, request).await
}

pub(crate) async fn count_tokens(
    State(state): State<Arc<ProxyState>>,
    request: Request,
) -> Response {
    dialect::messages::count_tokens(&state, request).await
}

use crate::util::unix_ms;
