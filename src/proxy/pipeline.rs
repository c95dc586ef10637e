//! The request pipeline: one request passes through named phases over one [`Exchange`], in the spirit of
//! pingora's `ProxyHttp` phases.
//!
//! ```text
//! read → parse → route → shape → cache → admit → send → respond
//!                  │
//!                  └─ from here on, a failure in any phase is recorded as a request, in one place (`fail`)
//! ```
//!
//! - **read**: the body, bounded (declared and actual length).
//! - **parse**: the client's request in its own dialect ([`Dialect`]): chat completions scanned once without a
//!   JSON tree ([`request::inspect`]); another API peeked at by its [`ClientAdapter`] (model, stream, session).
//! - **route**: the catalog model and its provider, or a pass-through target.
//! - **shape**: another API's request translated into the provider's; context transforms, the model id,
//!   tool-call mending, the usage request; the client's bytes go upstream unchanged when nothing needs changing.
//! - **cache**: a stored answer, when caching applies.
//! - **admit**: the provider's credentials and budgets.
//! - **send**: the upstream call with its retries (and one retry without the usage request for a provider
//!   that refuses it).
//! - **respond**: headers, then the body frame by frame through the tracker.
//!
//! Where a client speaks another API than its provider, an adapter translates at the two edges: the request
//! after **parse** (client dialect → provider dialect) and the answer in **respond** (provider dialect → client
//! dialect, one event at a time). Accounting always reads the provider's answer in the provider's dialect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Uri, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use kimi_dialects::Dialect;

use super::body::ForwardBody;
use super::dialect::{self, ClientAdapter, Parsed};
use super::error::ProxyError;
use super::reasoning::ReasoningCapture;
use super::request;
use super::shared_limit::Acquire;
use super::toolcalls::ToolCallFixes;
use super::upstream::{self, OutgoingRequest, UpstreamResponse};
use super::{
    CACHE_HEADER, OVERHEAD_HEADER, ProxyState, Upstream, cache, client_app, headers, passthrough,
};
use super::{shape, unix_ms};
use crate::accounting::tracker::{self, RequestContext, Tracker};
use crate::accounting::{PromptCounting, PromptJob, Refusal};
use crate::config::{ApiKey, BaseUrl, Model, Provider, ProviderApi, ProviderKind};
use crate::context::{self, CONTEXT_HEADER};
use crate::tokens::stream::AnswerFormat;

/// One request on its way through the phases.
pub struct Exchange<'s> {
    state: &'s ProxyState,
    started: Instant,
    started_at_ms: i64,
    /// The API the client speaks: its request is read and its answers and errors are written in it.
    client: Dialect,
    /// What differs for a client API other than chat completions (translation at the edges).
    adapter: ClientAdapter,
    /// Set when a chat request went to an Anthropic-native provider translated: its answer comes back as chat.
    provider_answer: Option<kimi_dialects::anthropic::AnswerContext>,
    /// Known from routing on: whatever happens next, the request is recorded.
    record: Option<Recording>,
    /// The client's connection (set by the server): tells a client that stopped reading from one that left.
    connection: Option<Arc<crate::limits::Connection>>,
    /// What a refusal before routing reports: the method and path, and the client application.
    method: String,
    path: String,
    client_app: Option<String>,
    /// The provider speaks the client's API: the request goes to it as the client sent it (but for the
    /// model id), the answer comes back byte for byte.
    pub(crate) native: bool,
}

/// What the record of a routed request holds until its answer starts.
struct Recording {
    context: RequestContext,
    /// `None` until the prompt's final bytes are known (shape); a failure before that counts no prompt.
    prompt: Option<Prompt>,
}

enum Prompt {
    Queued(PromptJob),
    Counting(PromptCounting),
}

impl Prompt {
    fn start(self) -> PromptCounting {
        match self {
            Prompt::Queued(job) => job.start(),
            Prompt::Counting(counting) => counting,
        }
    }
}

/// Where a request goes.
pub struct Route<'s> {
    pub model: Arc<Model>,
    upstream: RoutedUpstream<'s>,
}

enum RoutedUpstream<'s> {
    Catalog(&'s Upstream),
    /// A one-off provider for an `X-Target-Base-URL` target.
    Passthrough(Box<Upstream>),
}

impl Route<'_> {
    pub fn upstream(&self) -> &Upstream {
        match &self.upstream {
            RoutedUpstream::Catalog(upstream) => upstream,
            RoutedUpstream::Passthrough(upstream) => upstream,
        }
    }

    pub(crate) fn provider(&self) -> &Provider {
        &self.upstream().provider
    }

    pub(crate) fn is_passthrough(&self) -> bool {
        matches!(self.upstream, RoutedUpstream::Passthrough(_))
    }
}

/// The request as it goes upstream.
struct Shaped {
    /// The body as the client meant it (model mapped, tool calls mended).
    plain: Bytes,
    /// The same with the usage request, when the proxy asks for usage.
    with_usage: Option<Bytes>,
    streaming: bool,
    client_asked_usage: bool,
    cache_key: Option<u128>,
}

/// Serves one chat completions request.
pub async fn chat_completions(state: &ProxyState, request: Request) -> Response {
    serve(state, Dialect::Chat, request).await
}

/// Serves one request of a client speaking `client`.
pub async fn serve(state: &ProxyState, client: Dialect, request: Request) -> Response {
    let mut exchange = Exchange::new(state, client);
    match exchange.run(request).await {
        Ok(response) => response,
        Err(error) => exchange.fail(error),
    }
}

impl<'s> Exchange<'s> {
    pub fn new(state: &'s ProxyState, client: Dialect) -> Exchange<'s> {
        Exchange {
            state,
            started: Instant::now(),
            started_at_ms: unix_ms(),
            client,
            adapter: ClientAdapter::for_dialect(client),
            provider_answer: None,
            record: None,
            connection: None,
            method: String::new(),
            path: String::new(),
            client_app: None,
            native: false,
        }
    }

    async fn run(&mut self, request: Request) -> Result<Response, ProxyError> {
        let (parts, body) = request.into_parts();
        self.note_request(&parts);
        let bytes = self.read(&parts, body).await?;
        let parsed = self.parse(&parts, &bytes).await?;
        let route = self.route(&parts, parsed.model())?;
        self.open_record(&parts, &route, parsed.streaming(), parsed.client_session());
        if self.speaks_client_api(&route) {
            return self.run_native(&parts, &route, bytes, &parsed).await;
        }
        let native = self.is_native(&route);
        self.native = native;
        let shaped = if native {
            self.shape_native(&parts, &route, bytes, parsed.streaming())
                .await?
        } else {
            self.shape(&parts, &route, bytes, parsed).await?
        };
        if let Some(hit) = self.cache(&shaped).await {
            if native {
                // Stored in the client's API: as it is.
                return Ok(hit);
            }
            return Ok(self.adapter.answer(hit).await);
        }
        let (uri, headers) = self.admit(&parts, &route).await?;
        let ready_at = Instant::now();
        let answer = self.send(&route, uri, headers, shaped).await?;
        let response = self.respond(&route, answer, ready_at);
        if native {
            // The provider's answer is already in the client's API: byte for byte.
            return Ok(response);
        }
        // An Anthropic provider's answer becomes chat's first, then the client's.
        let response = match self.provider_answer.take() {
            Some(ctx) => {
                dialect::messages::native_answer_to_chat(response, ctx, &route.provider().key).await
            }
            None => response,
        };
        Ok(self.adapter.answer(response).await)
    }

    /// The client speaks the provider's own API (an Anthropic client, an Anthropic-native provider): the request
    /// goes as it came, the answer comes back as it is.
    fn is_native(&self, route: &Route<'_>) -> bool {
        self.client == Dialect::Messages && route.provider().kind == ProviderKind::Anthropic
    }

    /// The proxy's own calls (compaction summaries) are chat requests sent as they are: not to an Anthropic
    /// provider.
    fn check_provider_api(&self, route: &Route<'_>) -> Result<(), ProxyError> {
        if route.provider().kind == ProviderKind::Anthropic {
            return Err(ProxyError::InvalidRequest(format!(
                "model `{}` is served by an Anthropic Messages provider, which the proxy's own calls do not use",
                route.model.key
            )));
        }
        Ok(())
    }

    /// Whether the routed provider speaks the client's API itself (a Responses client and a provider with
    /// `api = "responses"`; never a pass-through target, whose API is chat).
    fn speaks_client_api(&self, route: &Route<'_>) -> bool {
        self.client == Dialect::Responses
            && !route.is_passthrough()
            && route.provider().api == ProviderApi::Responses
    }

    /// A request passed through in its own API: shape only writes the upstream model id (as for chat) and
    /// prepares the prompt estimate; no context transforms, no response cache (both read chat requests);
    /// admit, send and respond as for chat, with the tracker reading the provider's Responses events. The
    /// answer goes back as the provider sent it: no adapter after the tracker. State (`store`,
    /// `previous_response_id`) stays with the provider.
    async fn run_native(
        &mut self,
        parts: &Parts,
        route: &Route<'_>,
        bytes: Bytes,
        parsed: &Parsed,
    ) -> Result<Response, ProxyError> {
        self.native = true;
        let shaped = self.shape_responses_native(route, bytes, parsed);
        let (uri, headers) = self.admit(parts, route).await?;
        let ready_at = Instant::now();
        let answer = self.send(route, uri, headers, shaped).await?;
        let response = self.respond(route, answer, ready_at);
        let keeps = match &self.adapter {
            ClientAdapter::Responses(adapter) => adapter.provider_keeps(),
            _ => false,
        };
        if !(keeps && response.status().is_success()) {
            return Ok(response);
        }
        // The provider keeps the response: which provider made its id is noted as the answer passes, for the
        // stored-response routes.
        let event_stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let length = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let store = Arc::clone(&self.state.responses);
        let provider = route.provider().key.as_str();
        Ok(response.map(|body| {
            Body::new(dialect::responses_stored::NativeIdTap::new(
                body,
                store,
                provider,
                event_stream,
                length,
            ))
        }))
    }

    fn shape_responses_native(
        &mut self,
        route: &Route<'_>,
        bytes: Bytes,
        parsed: &Parsed,
    ) -> Shaped {
        let state = self.state;
        let model = &route.model;
        let (range, continues) = match &self.adapter {
            ClientAdapter::Responses(adapter) => (adapter.model_range(), adapter.continues()),
            _ => (0..0, false),
        };
        let plain = if parsed.model() != model.upstream_id && !range.is_empty() {
            let id = serde_json::to_vec(&model.upstream_id).unwrap_or_default();
            request::splice(&bytes, range, &id)
        } else {
            bytes.clone()
        };
        // The prompt estimate counts the request's chat form, made where the count runs (beside the send). A
        // follow-up's history is the provider's: its estimate would be partial, so none is made.
        let accounting_on = state.config.server.token_accounting && !continues;
        let tokenizer = state.accounting.tokenizer_for(model);
        let target = kimi_dialects::responses::ChatTarget::new(model.upstream_id.clone());
        let job = state
            .accounting
            .prompt_job(bytes, Default::default(), tokenizer.tokenizer)
            .derived(Box::new(move |body: &[u8]| {
                let mut translated =
                    kimi_dialects::responses::request_to_chat(body, &target, Some(&[])).ok()?;
                let chat = Bytes::from(std::mem::take(&mut translated.body));
                let view = request::inspect(&chat).ok()?;
                Some((chat, view.layout))
            }));
        let job = if accounting_on { job } else { job.disabled() };
        if let Some(record) = &mut self.record {
            record.context.answer_format = AnswerFormat::Responses;
            // The observers read chat answers.
            record.context.observer = None;
            record.prompt = Some(Prompt::Queued(job));
        }
        Shaped {
            plain,
            with_usage: None,
            streaming: parsed.streaming(),
            client_asked_usage: false,
            cache_key: None,
        }
    }

    /// What a refusal before routing reports: the method and path, and the client application.
    pub(crate) fn note_request(&mut self, parts: &Parts) {
        self.method = parts.method.to_string();
        self.path = parts.uri.path().to_string();
        self.client_app = client_app::client_app(&parts.headers);
        self.connection = parts
            .extensions
            .get::<Arc<crate::limits::Connection>>()
            .cloned();
    }

    pub(crate) fn state(&self) -> &'s ProxyState {
        self.state
    }

    // --- read ---------------------------------------------------------------------------------------------

    pub(crate) async fn read(&self, parts: &Parts, body: Body) -> Result<Bytes, ProxyError> {
        let limit = self.state.config.server.max_body_bytes;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        read_body(body, limit).await
    }

    // --- parse --------------------------------------------------------------------------------------------

    /// A chat request is scanned; another client API's is peeked at for routing and translated in shape.
    async fn parse(&mut self, parts: &Parts, bytes: &Bytes) -> Result<Parsed, ProxyError> {
        match self.adapter {
            ClientAdapter::None => match self.client {
                Dialect::Chat => Ok(Parsed::Chat(request::inspect(bytes)?)),
                // Not served: no adapter for it.
                Dialect::Messages | Dialect::Responses => Err(ProxyError::NotFound {
                    method: "POST".to_string(),
                    path: format!("({} API)", self.client.as_str()),
                }),
            },
            _ => {
                let state = self.state;
                let peek = self.adapter.peek(state, &parts.headers, bytes).await?;
                Ok(Parsed::Foreign(peek))
            }
        }
    }

    // --- route --------------------------------------------------------------------------------------------

    pub(crate) fn route(&self, parts: &Parts, requested: &str) -> Result<Route<'s>, ProxyError> {
        let state = self.state;
        if let Some(target) = parts.headers.get(passthrough::TARGET_HEADER) {
            let (model, upstream) = passthrough::route(state, target, requested)?;
            return Ok(Route {
                model,
                upstream: RoutedUpstream::Passthrough(Box::new(upstream)),
            });
        }
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
        Ok(Route {
            model,
            upstream: RoutedUpstream::Catalog(upstream),
        })
    }

    /// From here on the request is recorded, whatever phase fails.
    fn open_record(
        &mut self,
        parts: &Parts,
        route: &Route<'_>,
        streaming: bool,
        body_session: Option<&str>,
    ) {
        let state = self.state;
        let mut context = RequestContext::new(
            state.accounting.next_id(),
            self.started,
            self.started_at_ms,
            Arc::clone(&route.model),
            state.accounting.tokenizer_for(&route.model),
            streaming,
        );
        context.client_session = parts
            .headers
            .get("x-session-id")
            .and_then(|v| v.to_str().ok())
            .and_then(request::clean_session_id)
            .or_else(|| body_session.map(str::to_string));
        context.virtual_key = parts
            .extensions
            .get::<crate::auth::VirtualKey>()
            .map(|k| k.0.to_string());
        context.client_app = self.client_app.clone();
        context.client_api = self.client.as_str();
        if route.model.reasoning_echo {
            context.observer = Some(Box::new(ReasoningCapture::new(Arc::clone(
                &state.reasoning,
            ))));
        }
        self.record = Some(Recording {
            context,
            prompt: None,
        });
    }

    fn context_mut(&mut self) -> Option<&mut RequestContext> {
        self.record.as_mut().map(|r| &mut r.context)
    }

    // --- shape --------------------------------------------------------------------------------------------

    async fn shape(
        &mut self,
        parts: &Parts,
        route: &Route<'_>,
        bytes: Bytes,
        parsed: Parsed,
    ) -> Result<Shaped, ProxyError> {
        let state = self.state;
        // Another client API's request becomes the provider's chat request here, once the target is known.
        let (bytes, mut view) = match parsed {
            Parsed::Chat(view) => (bytes, view),
            Parsed::Foreign(_) => {
                let translated = self.adapter.translate(state, route, &bytes).await?;
                let dropped_tools = self.adapter.dropped_tools();
                let client_saw = self.adapter.client_saw();
                if let Some(context) = self.context_mut() {
                    context.dropped_tools = dropped_tools;
                    context.client_saw = client_saw;
                }
                translated
            }
        };
        let model = &route.model;
        let provider = route.provider();
        let client_session = self
            .record
            .as_ref()
            .and_then(|r| r.context.client_session.clone());

        // Context transforms rewrite the messages they change (only when some transform is on).
        let mut bytes = bytes;
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
                .resolve(context_header, client_session.as_deref(), model)
                .map_err(|e| ProxyError::InvalidRequest(format!("`{CONTEXT_HEADER}`: {e}")))?;
            if resolved.enabled.any() && !view.layout.messages.is_empty() {
                let (rewritten, outcome) =
                    shape::context_step(state, model, &bytes, &view, resolved, client_session)
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
                if let Some(context) = self.context_mut() {
                    context.savings = Some(Box::new(outcome));
                }
            }
        }

        // The client's bytes go upstream as they are unless something must change: the model id (spliced), the
        // usage request (spliced; the tracker hides the extra chunk), or broken tool calls (re-encoded). Only
        // what the proxy itself asked for is removed from the answer: nothing is asked of a provider that sends
        // its usage anyway, or when the client asked.
        let rename = view.model != model.upstream_id;
        let accounting_on = state.config.server.token_accounting;
        let anthropic_provider = provider.kind == ProviderKind::Anthropic;
        let inject_usage = accounting_on
            && !anthropic_provider
            && view.streaming
            && provider.stream_usage
            && !provider.usage_always
            && !view.client_asked_usage;
        let restore_reasoning =
            (model.reasoning_echo && view.reasoning_missing).then_some(state.reasoning.as_ref());
        let (plain, with_usage, fixes) = if view.needs_tool_fix
            || restore_reasoning.is_some()
            || (inject_usage && view.has_stream_options)
        {
            shape::rebuild_body(
                &bytes,
                rename.then_some(model.upstream_id.as_str()),
                inject_usage,
                restore_reasoning,
            )?
        } else {
            let plain = if rename {
                let id = serde_json::to_vec(&model.upstream_id).unwrap_or_default();
                request::splice(&bytes, view.model_range.clone(), &id)
            } else {
                bytes.clone()
            };
            let with_usage = if inject_usage {
                request::request_usage(&plain)
            } else {
                None
            };
            (plain, with_usage, ToolCallFixes::default())
        };

        // An Anthropic-native provider gets the shaped chat request in its own API (and is not cached: the
        // response cache holds chat answers).
        let (plain, cache_key) = if anthropic_provider {
            let (body, ctx, dropped) = dialect::messages::chat_to_native(route, &plain)?;
            self.provider_answer = Some(ctx);
            if let Some(context) = self.context_mut() {
                context.provider_messages = true;
                context.dropped_fields += dropped;
            }
            (body, None)
        } else {
            (plain, self.cache_key(parts, route, &bytes))
        };
        let tokenizer = state.accounting.tokenizer_for(model);
        let job = state
            .accounting
            .prompt_job(bytes, view.layout, tokenizer.tokenizer);
        let job = if accounting_on { job } else { job.disabled() };
        if let Some(record) = &mut self.record {
            record.context.tool_call_fixes = fixes.total();
            record.context.usage_injected = with_usage.is_some();
            record.prompt = Some(Prompt::Queued(job));
            if let Some((body, layout)) = keep_for_preview {
                state.context.remember(context::RecentBody {
                    record_id: record.context.id,
                    body,
                    layout,
                    model: Arc::clone(model),
                });
            }
        }
        Ok(Shaped {
            plain,
            with_usage,
            streaming: view.streaming,
            client_asked_usage: view.client_asked_usage,
            cache_key,
        })
    }

    /// An Anthropic-native provider's request: the client's bytes (model mapped, fields the provider does not
    /// take removed). The prompt is counted on its chat form, as chat requests are, for the record's estimate
    /// and calibration (the provider's usage is what counts). Cached as chat requests are, in Anthropic's format.
    async fn shape_native(
        &mut self,
        parts: &Parts,
        route: &Route<'_>,
        bytes: Bytes,
        streaming: bool,
    ) -> Result<Shaped, ProxyError> {
        let state = self.state;
        let provider = route.provider();
        let bytes = self.context_native(parts, route, bytes).await?;
        let (body, dropped) = dialect::messages::native_body(
            &bytes,
            &route.model.upstream_id,
            &provider.anthropic_drop_fields,
        );
        let tokenizer = state.accounting.tokenizer_for(&route.model);
        let job = state
            .accounting
            .prompt_job(bytes, Default::default(), tokenizer.tokenizer)
            .derived(dialect::messages::chat_form_for_count(route));
        let job = if state.config.server.token_accounting {
            job
        } else {
            job.disabled()
        };
        if let Some(record) = &mut self.record {
            record.context.provider_messages = true;
            record.context.dropped_fields += dropped;
            record.prompt = Some(Prompt::Queued(job));
        }
        // The same rules as chat's (opt-in, scope), keyed on what goes upstream, apart from chat's entries and
        // with the Anthropic headers that change the answer.
        let cache_key = self.cache_key(parts, route, &body).map(|key| {
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .map_or(&b""[..], HeaderValue::as_bytes)
            };
            cache::api_key(
                key,
                Dialect::Messages.as_str(),
                &[header("anthropic-version"), header("anthropic-beta")],
            )
        });
        Ok(Shaped {
            plain: body,
            with_usage: None,
            streaming,
            client_asked_usage: false,
            cache_key,
        })
    }

    /// The context transforms on a native Messages request, when the context settings turn them on:
    /// observation masking and masking of its `tool_result` blocks, then compaction (chat's decision and
    /// summary, the summary a `user` turn).
    async fn context_native(
        &mut self,
        parts: &Parts,
        route: &Route<'_>,
        bytes: Bytes,
    ) -> Result<Bytes, ProxyError> {
        let state = self.state;
        let header = match parts.headers.get(CONTEXT_HEADER) {
            Some(value) => Some(value.to_str().map_err(|_| {
                ProxyError::InvalidRequest(format!("`{CONTEXT_HEADER}` must be ASCII"))
            })?),
            None => None,
        };
        if !state.context.may_apply(header) {
            return Ok(bytes);
        }
        let session = self
            .record
            .as_ref()
            .and_then(|r| r.context.client_session.clone());
        let resolved = state
            .context
            .resolve(header, session.as_deref(), &route.model)
            .map_err(|e| ProxyError::InvalidRequest(format!("`{CONTEXT_HEADER}`: {e}")))?;
        let (bytes, masked) = if resolved.enabled.masking || resolved.enabled.observation {
            let started = Instant::now();
            let tokenizer = state.accounting.tokenizer_for(&route.model).tokenizer;
            match context::anthropic::apply(
                &bytes,
                &resolved,
                &state.context.config,
                &tokenizer,
                &state.context.masks,
            ) {
                Some((body, mut outcome)) => {
                    outcome.elapsed_us = started.elapsed().as_micros() as u64;
                    (Bytes::from(body), Some(outcome))
                }
                None => (bytes, None),
            }
        } else {
            (bytes, None)
        };
        let (bytes, outcome) = if resolved.enabled.compaction {
            // Reported with compaction's outcome (and counted once, by it).
            match shape::native_compaction_step(
                state,
                &route.model,
                &bytes,
                resolved,
                session,
                masked.clone(),
            )
            .await
            {
                Some((Some((body, _)), outcome)) => (body, Some(outcome)),
                Some((None, outcome)) => (bytes, Some(outcome)),
                None => {
                    if let Some(outcome) = &masked {
                        state.context.count(outcome);
                    }
                    (bytes, masked)
                }
            }
        } else {
            if let Some(outcome) = &masked {
                state.context.count(outcome);
            }
            (bytes, masked)
        };
        if let Some(outcome) = outcome
            && let Some(context) = self.context_mut()
        {
            context.savings = Some(Box::new(outcome));
        }
        Ok(bytes)
    }

    // --- cache --------------------------------------------------------------------------------------------

    /// The response cache's key for this request, when caching applies. Pass-through answers are never cached:
    /// the key does not include the target or the client's key.
    fn cache_key(&self, parts: &Parts, route: &Route<'_>, bytes: &[u8]) -> Option<u128> {
        let config = &self.state.config.cache;
        let wanted = !route.is_passthrough()
            && cache::wanted(
                parts
                    .headers
                    .get(CACHE_HEADER)
                    .and_then(|v| v.to_str().ok()),
                route.model.cache.unwrap_or(config.enabled),
                config.client_opt_in,
            );
        if !wanted {
            return None;
        }
        // Scoped to the client's virtual key unless the config shares the cache: one key holder never gets
        // another's answer.
        let virtual_key = parts.extensions.get::<crate::auth::VirtualKey>();
        cache::cache_key(bytes, &route.model.upstream_id, config.deterministic_only)
            .map(|key| cache::scoped_key(key, virtual_key.map(|k| &*k.0), config.shared))
    }

    /// Answers from the response cache on a hit; on a miss of a non-streaming request, arranges for the answer
    /// to be stored.
    async fn cache(&mut self, shaped: &Shaped) -> Option<Response> {
        let key = shaped.cache_key?;
        let cache = &self.state.response_cache;
        match cache.get_or_shared(key).await {
            Some(hit) => {
                let record = self.record.take()?;
                Some(self.answer_from_cache(record, &hit, shaped.client_asked_usage))
            }
            None => {
                if !shaped.streaming
                    && let Some(context) = self.context_mut()
                {
                    context.on_complete = Some(Box::new(cache::StoreOnComplete {
                        cache: Arc::clone(cache),
                        key,
                    }));
                }
                None
            }
        }
    }

    /// The stored JSON, or for a streaming request the same replayed as SSE; recorded like any request, with
    /// `cache_hit` and no cost.
    fn answer_from_cache(
        &self,
        record: Recording,
        hit: &cache::CachedAnswer,
        include_usage: bool,
    ) -> Response {
        let state = self.state;
        let Recording {
            mut context,
            prompt,
        } = record;
        let streaming = context.streaming;
        let replayed = if self.native {
            cache::replay_messages_sse(&hit.body)
        } else {
            cache::replay_sse(&hit.body, include_usage)
        };
        let (body, content_type) = if streaming {
            match replayed {
                Some(replay) => (replay, "text/event-stream"),
                None => {
                    // An entry that cannot be replayed is a fault of the proxy's own: say so, and record it.
                    let error = ProxyError::InvalidRequest("cached answer unreadable".to_string());
                    let prompt = prompt.map_or(PromptCounting::nothing(), Prompt::start);
                    record_failure(state, context, prompt, &error);
                    return dialect::error_response(self.client, error);
                }
            }
        } else {
            (hit.body.clone(), "application/json")
        };
        context.cache_hit = true;
        context.status = 200;
        let overhead_us = context.started.elapsed().as_micros() as u64;
        context.overhead_us = Some(overhead_us);
        let counting = state.config.server.token_accounting;
        let mut tracker = match (&hit.counts, prompt) {
            (Some(counts), _) if counting => {
                Tracker::replayed(Arc::clone(&state.accounting), context, counts)
            }
            (_, prompt) => {
                let prompt = match prompt {
                    Some(Prompt::Queued(job)) => job.later(),
                    Some(Prompt::Counting(counting)) => counting,
                    None => PromptCounting::nothing(),
                };
                Tracker::new(
                    Arc::clone(&state.accounting),
                    context,
                    prompt,
                    streaming,
                    counting,
                )
            }
        };
        let _ = tracker.on_data(&body);
        tracker.finish(tracker::Outcome::Complete);
        let mut response = Response::new(Body::from(body));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(CACHE_HEADER, HeaderValue::from_static("hit"));
        headers.insert(OVERHEAD_HEADER, HeaderValue::from(overhead_us));
        response
    }

    // --- admit --------------------------------------------------------------------------------------------

    /// The upstream URL and headers with the right credentials, once the provider's budget allows the request.
    async fn admit(
        &mut self,
        parts: &Parts,
        route: &Route<'_>,
    ) -> Result<(Uri, HeaderMap), ProxyError> {
        let provider = route.provider();
        let headers = self.upstream_headers(parts, route)?;
        // The query is the client API's (Anthropic's `?beta=true`); it goes only to a provider of the same API.
        let query = match self.adapter {
            ClientAdapter::None => parts.uri.query(),
            _ if self.native => parts.uri.query(),
            _ => None,
        };
        let path = match provider.kind {
            // Its base URL is what `ANTHROPIC_BASE_URL` would be: the SDKs append `/v1/messages`.
            ProviderKind::Anthropic => "/v1/messages",
            ProviderKind::OpenAiCompatible if self.native => "/responses",
            ProviderKind::OpenAiCompatible => "/chat/completions",
        };
        let uri = upstream_uri(provider, path, query)?;
        if let Some(shared) = &route.upstream().shared {
            match shared.acquire().await {
                Acquire::Admitted => {}
                Acquire::Refused(refusal) => {
                    return Err(ProxyError::RateLimited {
                        provider: provider.key.clone(),
                        limit: refusal.limit,
                        retry_after: refusal.retry_after,
                    });
                }
                // Redis unreachable, `on_redis_error = "open"`: this instance applies the budget alone.
                Acquire::Local => take_budget(shared.fallback(), provider).await?,
            }
        }
        if let Some(limiter) = &route.upstream().limiter {
            take_budget(limiter, provider).await?;
        }
        Ok((uri, headers))
    }

    /// The client's headers cleaned for the provider, with its API's headers and the right credentials.
    pub(crate) fn upstream_headers(
        &mut self,
        parts: &Parts,
        route: &Route<'_>,
    ) -> Result<HeaderMap, ProxyError> {
        let provider = route.provider();
        let mut headers = headers::upstream_request_headers(&parts.headers);
        headers.remove(CONTEXT_HEADER);
        let anthropic_provider = provider.kind == ProviderKind::Anthropic;
        if !self.native {
            self.adapter.upstream_headers(&mut headers);
        }
        if anthropic_provider {
            let dropped = dialect::messages::native_headers(
                &mut headers,
                provider.anthropic_betas.as_deref(),
            );
            if let Some(context) = self.context_mut() {
                context.dropped_fields += dropped;
            }
        }
        if route.is_passthrough() {
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
                self.state.config.server.forward_client_key,
            )?;
        }
        Ok(headers)
    }

    // --- send ---------------------------------------------------------------------------------------------

    /// Sends with retries while the prompt is counted beside it. A strict provider may refuse
    /// `stream_options`: then the request goes once more exactly as the client sent it.
    async fn send(
        &mut self,
        route: &Route<'_>,
        uri: Uri,
        headers: HeaderMap,
        shaped: Shaped,
    ) -> Result<UpstreamResponse, ProxyError> {
        let upstream = route.upstream();
        let provider = route.provider();
        let mut outgoing = OutgoingRequest {
            method: http::Method::POST,
            uri,
            headers,
            body: shaped.with_usage.unwrap_or_else(|| shaped.plain.clone()),
        };
        let mut trail = Vec::new();
        let send = upstream::send_traced(
            &upstream.client,
            provider,
            &outgoing,
            &upstream.throttled,
            &mut trail,
        );
        let prompt = self.record.as_mut().and_then(|r| r.prompt.take());
        let mut answer = match prompt {
            Some(Prompt::Queued(job)) => {
                let (answer, counting) = job.beside(send).await;
                if let Some(record) = &mut self.record {
                    record.prompt = Some(Prompt::Counting(counting));
                }
                answer
            }
            other => {
                if let Some(record) = &mut self.record {
                    record.prompt = other;
                }
                send.await
            }
        };
        let usage_injected = self
            .record
            .as_ref()
            .is_some_and(|r| r.context.usage_injected);
        if usage_injected
            && let Ok(refused) = &answer
            && matches!(refused.response.status().as_u16(), 400 | 422)
        {
            tracing::info!(provider = %provider.key, "provider refused stream_options.include_usage; sending the request unchanged");
            if let Some(context) = self.context_mut() {
                context.usage_injected = false;
            }
            let attempts = refused.attempts;
            trail = refused.trail.clone();
            outgoing.body = shaped.plain;
            answer = upstream::send_traced(
                &upstream.client,
                provider,
                &outgoing,
                &upstream.throttled,
                &mut trail,
            )
            .await;
            if let Ok(again) = &mut answer {
                again.attempts += attempts;
            }
        }
        if answer.is_err() {
            // What the failed send tried, for the failure's record and trace.
            let started = self.started;
            if let Some(context) = self.context_mut() {
                context.attempts = trail.len() as u32;
                context.upstream_attempts = attempt_offsets(started, &trail);
            }
        }
        answer
    }

    // --- respond ------------------------------------------------------------------------------------------

    /// The upstream's status and headers (cleaned), then its body frame by frame through the tracker.
    fn respond(
        &mut self,
        route: &Route<'_>,
        answer: UpstreamResponse,
        ready_at: Instant,
    ) -> Response {
        let state = self.state;
        let provider = route.provider();
        let headers_at = Instant::now();
        let Some(Recording {
            mut context,
            prompt,
        }) = self.record.take()
        else {
            // Unreachable: every routed request has a record. Answer anyway, uncounted.
            let (parts, incoming) = answer.response.into_parts();
            return Response::from_parts(parts, Body::new(incoming));
        };
        let (mut response_parts, incoming) = answer.response.into_parts();
        context.attempts = answer.attempts;
        context.upstream_attempts = attempt_offsets(self.started, &answer.trail);
        context.upstream_us = Some(headers_at.duration_since(ready_at).as_micros() as u64);
        context.status = response_parts.status.as_u16();
        context.upstream_headers_us = Some(self.started.elapsed().as_micros() as u64);
        response_parts.headers = headers::client_response_headers(&response_parts.headers);
        if let ApiKey::Ready(secret) = &provider.api_key {
            headers::drop_echoed_secret(&mut response_parts.headers, secret.expose().as_bytes());
        }
        let may_rewrite = context.usage_injected;
        if may_rewrite {
            // The body may lose an event: its length is no longer the upstream's.
            response_parts.headers.remove(header::CONTENT_LENGTH);
        }
        let event_stream = response_parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        // Time in the proxy: before sending, and from the upstream's headers to ours (the body streams after).
        let overhead = ready_at.duration_since(self.started) + headers_at.elapsed();
        let overhead_us = overhead.as_micros() as u64;
        context.overhead_us = Some(overhead_us);
        response_parts
            .headers
            .insert(OVERHEAD_HEADER, HeaderValue::from(overhead_us));
        let prompt = prompt.map_or(PromptCounting::nothing(), Prompt::start);
        let tracker = Tracker::new(
            Arc::clone(&state.accounting),
            context,
            prompt,
            event_stream,
            state.config.server.token_accounting,
        );
        let body = ForwardBody::new(
            incoming,
            provider.timeouts.idle,
            provider.key.clone(),
            tracker,
            may_rewrite,
        )
        .on_connection(self.connection.take());
        Response::from_parts(response_parts, Body::new(body))
    }

    // --- fail ---------------------------------------------------------------------------------------------

    /// The one place a failed request ends: logged, recorded when it was routed, answered in the client's
    /// dialect.
    pub fn fail(mut self, error: ProxyError) -> Response {
        self.note_failure(&error);
        dialect::error_response(self.client, error)
    }

    /// Logs a failure and records it when the request was routed (once: the record is taken).
    fn note_failure(&mut self, error: &ProxyError) {
        tracing::info!(
            code = error.code(),
            status = error.status().as_u16(),
            source = error.source_of_fault().as_str(),
            client_api = self.client.as_str(),
            "{error}"
        );
        match self.record.take() {
            Some(Recording {
                mut context,
                prompt,
            }) => {
                // The proxy's own error is what the client sees: nothing to wait for.
                context.client_saw = None;
                let prompt = prompt.map_or(PromptCounting::nothing(), Prompt::start);
                record_failure(self.state, context, prompt, error);
            }
            None => self.state.accounting.refused(Refusal {
                at_ms: unix_ms(),
                method: std::mem::take(&mut self.method),
                path: std::mem::take(&mut self.path),
                status: error.status().as_u16(),
                code: error.code(),
                message: error.to_string(),
                client_app: self.client_app.take(),
            }),
        }
    }
}

/// The attempts of a send, timed from the request's arrival.
fn attempt_offsets(
    started: Instant,
    trail: &[upstream::AttemptTiming],
) -> Vec<crate::accounting::UpstreamAttempt> {
    trail
        .iter()
        .map(|attempt| crate::accounting::UpstreamAttempt {
            offset_us: attempt
                .started
                .saturating_duration_since(started)
                .as_micros() as u64,
            duration_us: attempt.took.as_micros() as u64,
            status: attempt.status,
            failure: attempt.failure,
        })
        .collect()
}

fn record_failure(
    state: &ProxyState,
    context: RequestContext,
    prompt: PromptCounting,
    error: &ProxyError,
) {
    tracker::record_proxy_error(
        &state.accounting,
        context,
        prompt,
        error.code(),
        error.status().as_u16(),
    );
}

/// A request the proxy makes on its own behalf (a compaction summary): the same admit and send phases as a
/// client's, recorded as a request of its own. Returns the status and the whole body (at most `max_bytes`).
pub async fn internal_call(
    state: &ProxyState,
    model_key: &str,
    body: Bytes,
    client_session: Option<String>,
    timeout: Duration,
    max_bytes: usize,
) -> Result<(u16, Bytes), ProxyError> {
    let mut exchange = Exchange::new(state, Dialect::Chat);
    exchange.method = "POST".to_string();
    exchange.path = "(compaction summary)".to_string();
    exchange.client_app = Some("kimi-proxy".to_string());
    let result = exchange
        .internal(model_key, body, client_session, timeout, max_bytes)
        .await;
    if let Err(error) = &result {
        exchange.note_failure(error);
    }
    result
}

impl Exchange<'_> {
    async fn internal(
        &mut self,
        model_key: &str,
        body: Bytes,
        client_session: Option<String>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<(u16, Bytes), ProxyError> {
        let state = self.state;
        let view = request::inspect(&body)?;
        let parts = internal_parts();
        let route = self.route(&parts, model_key)?;
        self.check_provider_api(&route)?;
        self.open_record(
            &parts,
            &route,
            view.streaming,
            view.client_session.as_deref(),
        );
        let tokenizer = state.accounting.tokenizer_for(&route.model);
        let job = state
            .accounting
            .prompt_job(body.clone(), view.layout, tokenizer.tokenizer);
        if let Some(record) = &mut self.record {
            record.context.client_session = client_session;
            record.prompt = Some(Prompt::Queued(job));
        }
        let provider = route.provider();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        apply_credentials(&mut headers, provider, false)?;
        let uri = upstream_uri(provider, "/chat/completions", None)?;
        let shaped = Shaped {
            plain: body,
            with_usage: None,
            streaming: false,
            client_asked_usage: false,
            cache_key: None,
        };
        let ready_at = Instant::now();
        let exchange = async {
            let answer = self.send(&route, uri, headers, shaped).await?;
            let response = self.respond(&route, answer, ready_at);
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), max_bytes)
                .collect()
                .await
                .map_err(|e| ProxyError::UpstreamUnreachable {
                    provider: provider.key.clone(),
                    reason: format!("answer unreadable: {e}"),
                })?
                .to_bytes();
            Ok::<_, ProxyError>((status, body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::UpstreamTimeout {
                provider: provider.key.clone(),
                phase: "compaction summary",
                timeout_ms: timeout.as_millis(),
            }),
        }
    }
}

/// Request parts for a call the proxy makes itself: no client headers, no extensions.
fn internal_parts() -> Parts {
    let (parts, ()) = http::Request::new(()).into_parts();
    parts
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

/// Puts the provider's key on the upstream request, in the header its API takes: `Authorization: Bearer` for
/// chat completions; `x-api-key` for an Anthropic-native provider (Anthropic's header, which the
/// Anthropic-compatible endpoints of Moonshot, Kimi Code and DeepSeek take too: api-docs.deepseek.com/guides/anthropic_api
/// lists `x-api-key` as "Fully Supported"), the client's `Authorization` removed. Without a provider key, the
/// client's own key goes when forwarding is allowed; otherwise a clear 503 names the missing variable.
pub(crate) fn apply_credentials(
    headers: &mut HeaderMap,
    provider: &Provider,
    forward_client_key: bool,
) -> Result<(), ProxyError> {
    let anthropic = provider.kind == ProviderKind::Anthropic;
    let client_sent_key = headers.contains_key(header::AUTHORIZATION)
        || (anthropic && headers.contains_key("x-api-key"));
    match &provider.api_key {
        ApiKey::Ready(secret) => {
            let text = if anthropic {
                secret.expose().to_string()
            } else {
                format!("Bearer {}", secret.expose())
            };
            let mut value = HeaderValue::from_str(&text).map_err(|_| {
                ProxyError::InvalidRequest(format!(
                    "provider `{}` has an API key that is not a valid header",
                    provider.key
                ))
            })?;
            value.set_sensitive(true);
            if anthropic {
                headers.remove(header::AUTHORIZATION);
                headers.insert("x-api-key", value);
            } else {
                headers.insert(header::AUTHORIZATION, value);
            }
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
                if anthropic {
                    headers.remove("x-api-key");
                }
            }
        }
    }
    Ok(())
}

/// `{base_url}{path}` with the query, e.g. `/chat/completions`, `/responses` or `/v1/messages`.
pub(crate) fn upstream_uri(
    provider: &Provider,
    path: &str,
    query: Option<&str>,
) -> Result<Uri, ProxyError> {
    let base_url = match &provider.base_url {
        BaseUrl::Ready(base_url) => base_url,
        BaseUrl::Missing { var } => {
            return Err(ProxyError::MissingBaseUrlVar {
                provider: provider.key.clone(),
                var: var.clone(),
            });
        }
    };
    let text = match query {
        Some(q) => format!("{base_url}{path}?{q}"),
        None => format!("{base_url}{path}"),
    };
    text.parse::<Uri>()
        .map_err(|e| ProxyError::InvalidRequest(format!("cannot build the upstream URL: {e}")))
}

/// Takes a slot of a local budget: waits for it when it is near enough, else the 429.
async fn take_budget(
    limiter: &super::ratelimit::RateLimiter,
    provider: &crate::config::Provider,
) -> Result<(), ProxyError> {
    match limiter.reserve(tokio::time::Instant::now()) {
        Ok(wait) if wait.is_zero() => Ok(()),
        Ok(wait) => {
            tracing::debug!(provider = %provider.key, wait_ms = wait.as_millis() as u64, "waiting for the provider's budget");
            tokio::time::sleep(wait).await;
            Ok(())
        }
        Err(refusal) => Err(ProxyError::RateLimited {
            provider: provider.key.clone(),
            limit: refusal.limit,
            retry_after: refusal.retry_after,
        }),
    }
}
