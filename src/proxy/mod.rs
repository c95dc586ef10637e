//! The OpenAI-compatible proxy: routes, request normalisation, forwarding.
//!
//! A request flows one way: read (bounded) → parse → resolve the model → mend tool calls → forward → stream the
//! answer back frame by frame.

pub mod body;
pub mod cache;
pub mod error;
pub mod headers;
pub mod passthrough;
pub mod ratelimit;
pub mod request;
pub mod route;
pub mod summary;
pub mod toolcalls;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderValue, Uri, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;

use crate::accounting::tracker::{self, RequestContext, Tracker};
use crate::accounting::{Accounting, DEFAULT_MESSAGE_CACHE_BYTES, PromptCounting, RecordSink};
use crate::alerts::AlertEngine;
use crate::config::{ApiKey, BaseUrl, Config, Model, Provider};
use crate::context::{self, CONTEXT_HEADER, ContextEngine, Outcome as ContextOutcome};
use body::ForwardBody;
use cache::ResponseCache;
use error::ProxyError;
use ratelimit::RateLimiter;
use route::Catalog;
use toolcalls::ToolCallFixes;
use upstream::{HttpClient, OutgoingRequest};

/// Tells the client how long the proxy itself took (microseconds, upstream excluded).
pub const OVERHEAD_HEADER: &str = "x-kimi-proxy-overhead-us";

/// Per request: `on`/`off` overrides the response cache setting; on answers: `hit`.
pub const CACHE_HEADER: &str = "x-kimi-proxy-cache";

/// A provider with its pooled client.
pub struct Upstream {
    pub provider: Arc<Provider>,
    pub client: HttpClient,
    /// The provider's budgets, when it has any.
    pub limiter: Option<Arc<RateLimiter>>,
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
}

impl ProxyState {
    /// Budget usage per provider that has a budget.
    pub fn rate_limits(&self) -> std::collections::BTreeMap<String, ratelimit::Usage> {
        self.upstreams
            .iter()
            .filter_map(|(key, u)| u.limiter.as_ref().map(|l| (key.clone(), l.usage())))
            .collect()
    }

    /// Each provider's count of upstream 429 answers, for the alert engine.
    pub fn throttle_counters(&self) -> Vec<(String, Arc<AtomicU64>)> {
        self.upstreams
            .iter()
            .map(|(key, u)| (key.clone(), Arc::clone(&u.throttled)))
            .collect()
    }

    pub fn new(config: Arc<Config>) -> Result<ProxyState, upstream::ClientBuildError> {
        let catalog = Catalog::new(&config);
        let mut upstreams = HashMap::new();
        for (key, provider) in &config.providers {
            let limiter = RateLimiter::new(
                provider.requests_per_minute,
                provider.tokens_per_minute,
                provider.rate_limit_max_wait,
            )
            .map(Arc::new);
            upstreams.insert(
                key.clone(),
                Upstream {
                    provider: provider.clone(),
                    client: upstream::build_client(provider)?,
                    limiter,
                    throttled: Arc::new(AtomicU64::new(0)),
                },
            );
        }
        let models_json = Bytes::from(render_models(&catalog).to_string());
        let accounting = Accounting::new(DEFAULT_MESSAGE_CACHE_BYTES, config.store.preview_chars);
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
        let response_cache = Arc::new(ResponseCache::new(config.cache.max_bytes, config.cache.ttl));
        let context = Arc::new(ContextEngine::new(&config));
        let passthrough = if config.passthrough.enabled() {
            Some(upstream::build_passthrough_client(
                config.passthrough.allow_loopback,
                crate::config::Timeouts::default().connect,
            )?)
        } else {
            None
        };
        let alerts = AlertEngine::new(&config.alerts);
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
        })
    }
}

/// The paths of [`router`]. Everything else is admin surface (see `crate::auth`): keep the two in step.
pub const PROXY_PATHS: [&str; 4] = [
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/models",
    "/models",
];

pub fn is_proxy_path(path: &str) -> bool {
    PROXY_PATHS.contains(&path)
}

/// The proxy routes, each served with and without the `/v1` prefix.
pub fn router(state: Arc<ProxyState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
        .route("/models", get(list_models))
        .with_state(state)
}

/// Answers for paths and methods no route serves, in the OpenAI error format.
pub async fn not_found(request: Request) -> Response {
    ProxyError::NotFound {
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
    }
    .into_response()
}

pub async fn method_not_allowed(request: Request) -> Response {
    ProxyError::MethodNotAllowed(request.method().to_string()).into_response()
}

async fn list_models(State(state): State<Arc<ProxyState>>) -> Response {
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

async fn chat_completions(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    match forward_chat(&state, request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(
                code = error.code(),
                status = error.status().as_u16(),
                "{error}"
            );
            error.into_response()
        }
    }
}

async fn forward_chat(state: &ProxyState, request: Request) -> Result<Response, ProxyError> {
    let started = Instant::now();
    let started_at_ms = unix_ms();
    let (parts, body) = request.into_parts();
    let limit = state.config.server.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let bytes = read_body(body, limit).await?;

    let mut view = request::inspect(&bytes)?;
    let requested = view.model.clone();
    let requested = requested.as_str();
    let target = parts.headers.get(passthrough::TARGET_HEADER);
    let is_passthrough = target.is_some();
    let passthrough_upstream;
    let (model, upstream) = match target {
        Some(target) => {
            let (model, upstream) = passthrough_route(state, target, requested)?;
            passthrough_upstream = upstream;
            (model, &passthrough_upstream)
        }
        None => {
            let Some(model) = state.catalog.resolve(requested).cloned() else {
                return Err(ProxyError::UnknownModel {
                    model: requested.to_string(),
                    suggestions: state.catalog.suggestions(requested),
                });
            };
            let Some(upstream) = state.upstreams.get(&model.provider) else {
                return Err(ProxyError::UnknownModel {
                    model: requested.to_string(),
                    suggestions: Vec::new(),
                });
            };
            (model, upstream)
        }
    };
    let provider = &upstream.provider;
    let client_session = parts
        .headers
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .and_then(request::clean_session_id)
        .or(view.client_session.take());

    // Context transforms rewrite the messages they change (only when some transform is on).
    let mut bytes = bytes;
    let mut context_outcome = None;
    let context_header = match parts.headers.get(CONTEXT_HEADER) {
        Some(value) => Some(value.to_str().map_err(|_| {
            ProxyError::InvalidRequest(format!("`{CONTEXT_HEADER}` must be ASCII"))
        })?),
        None => None,
    };
    let mut keep_for_preview = None;
    if state.context.may_apply(context_header) {
        keep_for_preview = Some((bytes.clone(), view.layout.clone()));
        let resolved = state
            .context
            .resolve(context_header, client_session.as_deref(), &model)
            .map_err(|e| ProxyError::InvalidRequest(format!("`{CONTEXT_HEADER}`: {e}")))?;
        if resolved.enabled.any() && !view.layout.messages.is_empty() {
            let (rewritten, outcome) = context_step(
                state,
                &model,
                &bytes,
                &view,
                resolved,
                client_session.clone(),
            )
            .await;
            if let Some((body, ranges)) = rewritten {
                let old_end = view.layout.messages.last().map_or(0, |r| r.end);
                let delta = body.len() as isize - bytes.len() as isize;
                view.model_range = context::shift(view.model_range.clone(), old_end, delta);
                for tool in &mut view.layout.tools {
                    *tool = context::shift(tool.clone(), old_end, delta);
                }
                view.layout.messages = ranges;
                bytes = body;
            }
            context_outcome = Some(Box::new(outcome));
        }
    }

    // The client's bytes go upstream as they are unless something must change: the model id (spliced), the
    // usage request (spliced; the tracker hides the extra chunk), or broken tool calls (re-encoded).
    let rename = requested != model.upstream_id;
    let accounting_on = state.config.server.token_accounting;
    let inject_usage =
        accounting_on && view.streaming && provider.stream_usage && !view.client_asked_usage;
    let (plain_body, injected_body, fixes) =
        if view.needs_tool_fix || (inject_usage && view.has_stream_options) {
            rebuild_body(
                &bytes,
                rename.then_some(model.upstream_id.as_str()),
                inject_usage,
            )?
        } else {
            let plain = if rename {
                let id = serde_json::to_vec(&model.upstream_id).unwrap_or_default();
                request::splice(&bytes, view.model_range.clone(), &id)
            } else {
                bytes.clone()
            };
            let injected = if inject_usage {
                request::request_usage(&plain)
            } else {
                None
            };
            (plain, injected, ToolCallFixes::default())
        };
    let streaming = view.streaming;

    // Pass-through answers are never cached: the cache key does not include the target or the client's key.
    let virtual_key = parts.extensions.get::<crate::auth::VirtualKey>();
    let cache_wanted = !is_passthrough
        && cache::wanted(
            parts
                .headers
                .get(CACHE_HEADER)
                .and_then(|v| v.to_str().ok()),
            model.cache.unwrap_or(state.config.cache.enabled),
            state.config.cache.client_opt_in,
        );
    let cache_key = cache_wanted
        .then(|| {
            cache::cache_key(
                &bytes,
                &model.upstream_id,
                state.config.cache.deterministic_only,
            )
        })
        .flatten()
        .map(|key| cache::scoped_key(key, virtual_key.map(|k| &*k.0), state.config.cache.shared));

    let tokenizer = state.accounting.tokenizer_for(&model);
    let prompt_job = state
        .accounting
        .prompt_job(bytes, view.layout, tokenizer.tokenizer.clone());
    let prompt_job = if accounting_on {
        prompt_job
    } else {
        prompt_job.disabled()
    };
    let mut context = RequestContext {
        id: state.accounting.next_id(),
        started,
        started_at_ms,
        model: Arc::clone(&model),
        tokenizer,
        streaming,
        attempts: 0,
        tool_call_fixes: fixes.total(),
        usage_injected: injected_body.is_some(),
        status: 0,
        upstream_headers_us: None,
        upstream_us: None,
        overhead_us: None,
        client_session,
        cache_store: None,
        cache_hit: false,
        virtual_key: virtual_key.map(|k| k.0.to_string()),
        context: context_outcome,
    };
    if let Some((body, layout)) = keep_for_preview {
        state.context.remember(context::RecentBody {
            record_id: context.id,
            body,
            layout,
            model: Arc::clone(&model),
        });
    }

    if let Some(key) = cache_key {
        if let Some(hit) = state.response_cache.get(key) {
            return answer_from_cache(state, context, prompt_job, &hit, view.client_asked_usage);
        }
        if !streaming {
            context.cache_store = Some((Arc::clone(&state.response_cache), key));
        }
    }

    let prepared = match &provider.base_url {
        BaseUrl::Ready(base_url) => upstream_uri(base_url, parts.uri.query()).and_then(|uri| {
            let mut headers = headers::upstream_request_headers(&parts.headers);
            headers.remove(CONTEXT_HEADER);
            if is_passthrough {
                // The client's own key for the target: `X-Target-Authorization` when given (required when
                // `Authorization` carries a virtual key, which the guard has removed), else its `Authorization`.
                if let Some(key) = parts.headers.get(passthrough::TARGET_AUTH_HEADER) {
                    let mut key = key.clone();
                    key.set_sensitive(true);
                    headers.insert(header::AUTHORIZATION, key);
                }
            } else {
                apply_credentials(
                    &mut headers,
                    provider,
                    state.config.server.forward_client_key,
                )?;
            }
            Ok((uri, headers))
        }),
        BaseUrl::Missing { var } => Err(ProxyError::MissingBaseUrlVar {
            provider: provider.key.clone(),
            var: var.clone(),
        }),
    };
    let (uri, headers) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            return Err(failed(state, context, prompt_job.start(), error));
        }
    };

    let ready_at = Instant::now();
    if let Some(limiter) = &upstream.limiter {
        match limiter.reserve(tokio::time::Instant::now()) {
            Ok(wait) if wait.is_zero() => {}
            Ok(wait) => {
                tracing::debug!(provider = %provider.key, wait_ms = wait.as_millis() as u64, "waiting for the provider's budget");
                tokio::time::sleep(wait).await;
            }
            Err(refusal) => {
                let error = ProxyError::RateLimited {
                    provider: provider.key.clone(),
                    limit: refusal.limit,
                    retry_after: refusal.retry_after,
                };
                return Err(failed(state, context, prompt_job.start(), error));
            }
        }
    }

    let mut outgoing = OutgoingRequest {
        uri,
        headers,
        body: injected_body.unwrap_or_else(|| plain_body.clone()),
    };
    let sent_at = Instant::now();
    let (mut answer, prompt) = prompt_job
        .beside(upstream::send_with_retries(
            &upstream.client,
            provider,
            &outgoing,
            &upstream.throttled,
        ))
        .await;
    // A strict provider may refuse `stream_options`: ask once more exactly as the client did.
    if context.usage_injected
        && let Ok(refused) = &answer
        && matches!(refused.response.status().as_u16(), 400 | 422)
    {
        tracing::info!(provider = %provider.key, "provider refused stream_options.include_usage; sending the request unchanged");
        context.usage_injected = false;
        let attempts = refused.attempts;
        outgoing.body = plain_body;
        answer =
            upstream::send_with_retries(&upstream.client, provider, &outgoing, &upstream.throttled)
                .await;
        if let Ok(again) = &mut answer {
            again.attempts += attempts;
        }
    }
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            return Err(failed(state, context, prompt, error));
        }
    };

    let headers_at = Instant::now();
    let (mut response_parts, incoming) = answer.response.into_parts();
    context.attempts = answer.attempts;
    context.upstream_us = Some(headers_at.duration_since(sent_at).as_micros() as u64);
    context.status = response_parts.status.as_u16();
    context.upstream_headers_us = Some(started.elapsed().as_micros() as u64);
    response_parts.headers = headers::client_response_headers(&response_parts.headers);
    if let ApiKey::Ready(secret) = &provider.api_key {
        headers::drop_echoed_secret(&mut response_parts.headers, secret.expose().as_bytes());
    }
    if context.usage_injected {
        // The body may lose an event: its length is no longer the upstream's.
        response_parts.headers.remove(header::CONTENT_LENGTH);
    }
    let event_stream = response_parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    // Time in the proxy: before sending, and from the upstream's headers to ours (the body streams after).
    let overhead = ready_at.duration_since(started) + headers_at.elapsed();
    let overhead_us = overhead.as_micros() as u64;
    context.overhead_us = Some(overhead_us);
    response_parts
        .headers
        .insert(OVERHEAD_HEADER, HeaderValue::from(overhead_us));
    let tracker = Tracker::new(
        Arc::clone(&state.accounting),
        context,
        prompt,
        event_stream,
        accounting_on,
    );
    let body = ForwardBody::new(
        incoming,
        provider.timeouts.idle,
        provider.key.clone(),
        tracker,
    )
    .on_connection(
        parts
            .extensions
            .get::<Arc<crate::limits::Connection>>()
            .cloned(),
    );
    Ok(Response::from_parts(response_parts, Body::new(body)))
}

/// Bodies larger than this are transformed on the blocking pool (their counts may need tokenising).
const INLINE_CONTEXT_LIMIT: usize = 32 * 1024;
/// Largest transcript sent to a summary model.
const MAX_SUMMARY_INPUT_CHARS: usize = 200_000;

/// Runs the context transforms. Never fails the request: on any error the body goes on unchanged and the
/// error is in the outcome.
async fn context_step(
    state: &ProxyState,
    model: &Arc<Model>,
    bytes: &Bytes,
    view: &request::ChatRequestView,
    resolved: context::Resolved,
    client_session: Option<String>,
) -> (Option<context::Rendered>, ContextOutcome) {
    let engine = Arc::clone(&state.context);
    let accounting = Arc::clone(&state.accounting);
    let tokenizer = accounting.tokenizer_for(model).tokenizer;
    let plan_request = context::PlanRequest {
        body: bytes.clone(),
        layout: view.layout.clone(),
        resolved,
        window: model.max_context_size,
        conversation_key: context::conversation_key(client_session.as_deref(), bytes, &view.layout),
        dry_run: false,
    };
    let blocking = bytes.len() > INLINE_CONTEXT_LIMIT || !tokenizer.is_ready();
    let plan = if blocking {
        let (engine, accounting, tokenizer) = (
            Arc::clone(&engine),
            Arc::clone(&accounting),
            tokenizer.clone(),
        );
        match tokio::task::spawn_blocking(move || {
            let counter = context::conversation::Counter {
                tokenizer: &tokenizer,
                cache: accounting.message_cache(),
            };
            engine.plan(plan_request, &counter)
        })
        .await
        {
            Ok(plan) => plan,
            Err(error) => {
                return (
                    None,
                    state
                        .context
                        .failed(&format!("context step failed: {error}")),
                );
            }
        }
    } else {
        let counter = context::conversation::Counter {
            tokenizer: &tokenizer,
            cache: accounting.message_cache(),
        };
        engine.plan(plan_request, &counter)
    };
    let llm = match (
        engine.summary_model(),
        plan.summary_input(MAX_SUMMARY_INPUT_CHARS),
    ) {
        (Some(summary_model), Some(transcript)) => {
            let config = &engine.config.compaction;
            Some(
                summary::summarize(
                    state,
                    summary_model,
                    transcript,
                    config.summary_max_tokens,
                    config.summary_timeout,
                    client_session,
                )
                .await,
            )
        }
        _ => None,
    };
    if let Some(Err(error)) = &llm {
        tracing::warn!(%error, "compaction summary failed; the request goes on uncompacted");
    }
    let finish = move || {
        let counter = context::conversation::Counter {
            tokenizer: &tokenizer,
            cache: accounting.message_cache(),
        };
        engine.finish(plan, llm, &counter)
    };
    if blocking {
        match tokio::task::spawn_blocking(finish).await {
            Ok(done) => done,
            Err(error) => (
                None,
                state
                    .context
                    .failed(&format!("context step failed: {error}")),
            ),
        }
    } else {
        finish()
    }
}

/// Answers from the response cache: the stored JSON, or for a streaming request the same replayed as SSE;
/// recorded like any request, with `cache_hit` and no cost.
fn answer_from_cache(
    state: &ProxyState,
    mut context: RequestContext,
    prompt_job: crate::accounting::PromptJob,
    hit: &cache::CachedAnswer,
    include_usage: bool,
) -> Result<Response, ProxyError> {
    let (body, content_type) = if context.streaming {
        let replay = cache::replay_sse(&hit.body, include_usage)
            .ok_or_else(|| ProxyError::InvalidRequest("cached answer unreadable".to_string()))?;
        (replay, "text/event-stream")
    } else {
        (hit.body.clone(), "application/json")
    };
    context.cache_hit = true;
    context.status = 200;
    let overhead_us = context.started.elapsed().as_micros() as u64;
    context.overhead_us = Some(overhead_us);
    let streaming = context.streaming;
    let counting = state.config.server.token_accounting;
    let mut tracker = match &hit.counts {
        Some(counts) if counting => {
            Tracker::replayed(Arc::clone(&state.accounting), context, counts)
        }
        _ => Tracker::new(
            Arc::clone(&state.accounting),
            context,
            prompt_job.later(),
            streaming,
            counting,
        ),
    };
    let _ = tracker.on_data(&body);
    tracker.finish(tracker::Outcome::Complete);
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_HEADER, HeaderValue::from_static("hit"));
    headers.insert(OVERHEAD_HEADER, HeaderValue::from(overhead_us));
    Ok(response)
}

/// Checks a pass-through target (allowlist, scheme, literal address) and builds its one-off model and
/// provider. Names are checked again when resolved, by the pass-through client's resolver.
fn passthrough_route(
    state: &ProxyState,
    target: &HeaderValue,
    requested: &str,
) -> Result<(Arc<crate::config::Model>, Upstream), ProxyError> {
    use crate::config::{Model, Prices, Provider, ProviderKind, RetryPolicy, Timeouts};
    let Some(client) = &state.passthrough else {
        return Err(ProxyError::PassthroughDisabled);
    };
    let settings = &state.config.passthrough;
    let text = target
        .to_str()
        .map_err(|_| ProxyError::InvalidTarget("the header is not text".to_string()))?;
    let target = passthrough::parse_target(text).map_err(ProxyError::InvalidTarget)?;
    let loopback_name =
        target.host == "localhost" || target.ip().is_some_and(|ip| ip.is_loopback());
    let plain_http_allowed = settings.allow_loopback && loopback_name;
    if !(target.https || plain_http_allowed) {
        return Err(ProxyError::InvalidTarget(
            "the target must use https:// (plain http only to loopback, with [passthrough] allow_loopback)"
                .to_string(),
        ));
    }
    if !settings.allowed.iter().any(|p| p.matches(&target)) {
        return Err(ProxyError::TargetNotAllowed(target.base_url()));
    }
    if let Some(ip) = target.ip()
        && let Some(reason) = passthrough::forbidden_reason(ip, settings.allow_loopback)
    {
        return Err(ProxyError::ForbiddenTarget(format!(
            "`{}` is {reason}",
            target.host
        )));
    }
    let key = format!("passthrough:{}", target.authority());
    let model = Arc::new(Model {
        key: requested.to_string(),
        provider: key.clone(),
        upstream_id: requested.to_string(),
        max_context_size: 0,
        tokenizer: crate::config::default_tokenizer(requested),
        prices: Prices::default(),
        capabilities: Vec::new(),
        cache: Some(false),
        context: Default::default(),
    });
    let provider = Arc::new(Provider {
        key,
        kind: ProviderKind::OpenAiCompatible,
        base_url: BaseUrl::Ready(target.base_url()),
        api_key: ApiKey::None,
        timeouts: Timeouts::default(),
        // A refused or failed connection is not retried: the client chose the target and sees the error.
        retry: RetryPolicy {
            max_attempts: 1,
            initial_backoff: std::time::Duration::ZERO,
            max_backoff: std::time::Duration::ZERO,
            deadline: std::time::Duration::ZERO,
        },
        requests_per_minute: None,
        tokens_per_minute: None,
        rate_limit_max_wait: std::time::Duration::ZERO,
        stream_usage: true,
    });
    Ok((
        model,
        Upstream {
            provider,
            client: client.clone(),
            limiter: None,
            // Pass-through targets are not providers of the catalog: their 429s are not watched.
            throttled: Arc::new(AtomicU64::new(0)),
        },
    ))
}

/// Records a request the proxy itself answered with `error` (after routing), and hands the error back.
fn failed(
    state: &ProxyState,
    context: RequestContext,
    prompt: PromptCounting,
    error: ProxyError,
) -> ProxyError {
    tracker::record_proxy_error(
        &state.accounting,
        context,
        prompt,
        error.code(),
        error.status().as_u16(),
    );
    error
}

fn encode(json: &Value) -> Result<Bytes, ProxyError> {
    serde_json::to_vec(json)
        .map(Bytes::from)
        .map_err(|e| ProxyError::InvalidRequest(format!("cannot re-encode the request: {e}")))
}

/// The slow path: parse into a tree, rename the model, mend tool calls, ask for usage; re-encode. Returns the
/// body as the client meant it (mended), the same with the usage request, and what was mended.
fn rebuild_body(
    bytes: &[u8],
    upstream_id: Option<&str>,
    inject_usage: bool,
) -> Result<(Bytes, Option<Bytes>, ToolCallFixes), ProxyError> {
    let mut json: Value = serde_json::from_slice(bytes).map_err(|e| ProxyError::InvalidJson {
        message: e.to_string(),
        line: e.line(),
        column: e.column(),
    })?;
    let Some(object) = json.as_object_mut() else {
        return Err(ProxyError::InvalidRequest(
            "the body must be a JSON object".to_string(),
        ));
    };
    if let Some(id) = upstream_id {
        object.insert("model".to_string(), Value::String(id.to_string()));
    }
    let fixes = toolcalls::normalize_tool_calls(&mut json);
    let plain = encode(&json)?;
    let injected = match (inject_usage, json.as_object_mut()) {
        (true, Some(object)) => {
            let options = object
                .entry("stream_options")
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if !options.is_object() {
                *options = Value::Object(serde_json::Map::new());
            }
            if let Some(options) = options.as_object_mut() {
                options.insert("include_usage".to_string(), Value::Bool(true));
            }
            Some(encode(&json)?)
        }
        _ => None,
    };
    Ok((plain, injected, fixes))
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ProxyError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(error) if crate::limits::is_body_timeout(error.as_ref()) => {
            Err(ProxyError::BodyTimeout)
        }
        Err(error) => Err(ProxyError::BodyRead(error.to_string())),
    }
}

/// Puts the right `Authorization` on the upstream request: the provider's key when it has one; otherwise the
/// client's own key when forwarding is allowed; otherwise a clear 503 naming the missing variable.
fn apply_credentials(
    headers: &mut http::HeaderMap,
    provider: &Provider,
    forward_client_key: bool,
) -> Result<(), ProxyError> {
    let client_sent_key = headers.contains_key(header::AUTHORIZATION);
    match &provider.api_key {
        ApiKey::Ready(secret) => {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", secret.expose())).map_err(|_| {
                    ProxyError::InvalidRequest(format!(
                        "provider `{}` has an API key that is not a valid header",
                        provider.key
                    ))
                })?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        ApiKey::Missing { var } => {
            if !(forward_client_key && client_sent_key) {
                return Err(ProxyError::MissingApiKey {
                    provider: provider.key.clone(),
                    var: var.clone(),
                });
            }
        }
        ApiKey::None => {
            if !forward_client_key {
                headers.remove(header::AUTHORIZATION);
            }
        }
    }
    Ok(())
}

fn upstream_uri(base_url: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    let text = match query {
        Some(q) => format!("{base_url}/chat/completions?{q}"),
        None => format!("{base_url}/chat/completions"),
    };
    text.parse::<Uri>()
        .map_err(|e| ProxyError::InvalidRequest(format!("cannot build the upstream URL: {e}")))
}
