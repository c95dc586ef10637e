//! Every route of the product, and nothing else: the proxy's (clients of the LLM APIs; virtual keys; errors in
//! the client's API format) and the admin surface's (the dashboard, `/api/*`, `/ws`, `/metrics`; the admin
//! token). The auth guard is told which paths are proxy paths from the same table the proxy router is built
//! from, so the two cannot drift apart.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{MethodRouter, get, post};

use crate::admin;
use crate::admin::StoreApi;
use crate::alerts::AlertEngine;
use crate::auth::{self, Auth};
use crate::context::ContextEngine;
use crate::live::{self, Hub};
use crate::proxy::{self, ProxyState};

/// An endpoint of the proxy surface.
#[derive(Clone, Copy)]
enum Endpoint {
    ChatCompletions,
    /// Anthropic Messages (Claude Code, the Anthropic SDKs).
    Messages,
    MessagesCountTokens,
    Models,
    /// OpenAI Responses: create (translated to chat completions, or passed to a provider that speaks it), and the
    /// stored responses (answered here, or by the Responses provider that keeps them).
    Responses,
    Response,
    ResponseCancel,
    ResponseInputItems,
}

/// The proxy's routes, each served under `/v1` and without it (clients differ in how they join base URLs).
const PROXY: &[(&str, Endpoint)] = &[
    ("/chat/completions", Endpoint::ChatCompletions),
    ("/messages", Endpoint::Messages),
    ("/messages/count_tokens", Endpoint::MessagesCountTokens),
    ("/models", Endpoint::Models),
    ("/responses", Endpoint::Responses),
    ("/responses/{id}", Endpoint::Response),
    ("/responses/{id}/cancel", Endpoint::ResponseCancel),
    ("/responses/{id}/input_items", Endpoint::ResponseInputItems),
];

/// The application's state, built once; each handler takes the narrow part it needs (`State<Arc<ProxyState>>`,
/// `State<Arc<AlertEngine>>`, `admin::Store`, …) through `FromRef`.
#[derive(Clone)]
pub struct AppState {
    pub proxy: Arc<ProxyState>,
    pub auth: Arc<Auth>,
    pub hub: Arc<Hub>,
    /// `None` when `[store] enabled = false`: the store's routes then answer 404 ([`admin::Store`]).
    pub store: Option<Arc<StoreApi>>,
}

impl FromRef<AppState> for Arc<ProxyState> {
    fn from_ref(state: &AppState) -> Arc<ProxyState> {
        Arc::clone(&state.proxy)
    }
}

impl FromRef<AppState> for Arc<AlertEngine> {
    fn from_ref(state: &AppState) -> Arc<AlertEngine> {
        Arc::clone(&state.proxy.alerts)
    }
}

impl FromRef<AppState> for Arc<ContextEngine> {
    fn from_ref(state: &AppState) -> Arc<ContextEngine> {
        Arc::clone(&state.proxy.context)
    }
}

impl FromRef<AppState> for Arc<Auth> {
    fn from_ref(state: &AppState) -> Arc<Auth> {
        Arc::clone(&state.auth)
    }
}

impl FromRef<AppState> for Arc<Hub> {
    fn from_ref(state: &AppState) -> Arc<Hub> {
        Arc::clone(&state.hub)
    }
}

impl FromRef<AppState> for Option<Arc<StoreApi>> {
    fn from_ref(state: &AppState) -> Option<Arc<StoreApi>> {
        state.store.clone()
    }
}

fn handler<S>(endpoint: Endpoint) -> MethodRouter<S>
where
    Arc<ProxyState>: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    match endpoint {
        Endpoint::ChatCompletions => post(proxy::chat_completions),
        Endpoint::Messages => post(proxy::messages),
        Endpoint::MessagesCountTokens => post(proxy::count_tokens),
        Endpoint::Models => get(proxy::list_models),
        Endpoint::Responses => post(proxy::create_response),
        Endpoint::Response => get(proxy::dialect::responses_stored::get_response)
            .delete(proxy::dialect::responses_stored::delete_response),
        Endpoint::ResponseCancel => post(proxy::dialect::responses_stored::cancel_response),
        Endpoint::ResponseInputItems => get(proxy::dialect::responses_stored::input_items),
    }
}

/// Every path of the proxy surface (with and without `/v1`).
pub fn proxy_paths() -> &'static [String] {
    static PATHS: LazyLock<Vec<String>> = LazyLock::new(|| {
        PROXY
            .iter()
            .flat_map(|(path, _)| [format!("/v1{path}"), (*path).to_string()])
            .collect()
    });
    &PATHS
}

/// The proxy surface, for any state that holds the proxy's (the benchmarks serve it alone).
pub fn proxy_routes<S>() -> Router<S>
where
    Arc<ProxyState>: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    let mut router = Router::new();
    for (path, endpoint) in PROXY {
        router = router
            .route(&format!("/v1{path}"), handler(*endpoint))
            .route(path, handler(*endpoint));
    }
    router
}

/// The dashboards' WebSocket, for any state that holds the hub.
pub fn dashboard_routes<S>() -> Router<S>
where
    Arc<Hub>: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new().route("/ws", get(live::socket::upgrade))
}

/// The admin surface: everything that is not a proxy route. The guard protects it by path (only the proxy
/// paths and `/login`, `/logout` are exempt), whatever router a route is in.
fn admin() -> Router<AppState> {
    use admin::context as ctx;
    use admin::sessions as s;
    Router::new()
        .route("/", get(crate::dashboard::index))
        .route("/index.html", get(crate::dashboard::index))
        .route("/assets/{file}", get(crate::dashboard::asset))
        .route("/api/requests/recent", get(admin::stats::recent_requests))
        .route("/api/requests/live", get(admin::stats::live_requests))
        .route("/api/tokens", get(admin::stats::token_stats))
        .route("/api/stats", get(admin::stats::stats))
        .route("/metrics", get(admin::stats::metrics))
        .route("/api/alerts", get(admin::alerts::list))
        .route("/api/alerts/{id}/ack", post(admin::alerts::ack))
        .route(
            "/api/sessions",
            get(s::list_sessions)
                .post(s::create_session)
                .delete(s::delete_sessions),
        )
        .route(
            "/api/sessions/{id}",
            get(s::get_session)
                .patch(s::rename_session)
                .delete(s::delete_session),
        )
        .route("/api/sessions/{id}/activate", post(s::activate))
        .route("/api/sessions/{id}/deactivate", post(s::deactivate))
        .route("/api/sessions/{id}/requests", get(s::session_requests))
        .route("/api/sessions/{id}/export", get(s::export_session))
        .route("/api/export", get(s::export_all))
        .route("/api/stats/store", get(s::store_stats))
        .route("/api/usage", get(admin::usage::usage))
        .route("/api/maintenance/retention", post(s::retention))
        .route("/api/mask/{hash}", get(ctx::get_mask))
        .route(
            "/api/sessions/{id}/context",
            get(ctx::get_settings).put(ctx::put_settings),
        )
        .route("/api/sessions/{id}/compact", post(ctx::compact))
        .route(
            "/api/sessions/{id}/compact/preview",
            post(ctx::compact_preview),
        )
        .merge(dashboard_routes())
}

/// Every route of the product behind the auth guard, with the fallbacks for unknown paths and methods.
pub fn app(proxy: Arc<ProxyState>, store: Option<Arc<StoreApi>>, hub: Arc<Hub>) -> Router {
    let auth = Arc::new(Auth::new(&proxy.config, proxy_paths()));
    let state = AppState {
        proxy,
        auth: Arc::clone(&auth),
        hub,
        store,
    };
    let mut app = proxy_routes().merge(admin());
    if auth.admin_token_set() {
        app = app
            .route("/login", get(auth::login::page).post(auth::login::login))
            .route("/logout", post(auth::login::logout));
    }
    let (for_not_found, for_not_allowed) = (Arc::clone(&state.proxy), Arc::clone(&state.proxy));
    app.fallback(move |request| proxy::not_found(for_not_found, request))
        .method_not_allowed_fallback(move |request| {
            proxy::method_not_allowed(for_not_allowed, request)
        })
        // Outermost, so it sees every request, the fallbacks included: Host/Origin/CORS rules everywhere,
        // virtual keys on the proxy paths, the admin token on every other path.
        .layer(axum::middleware::from_fn_with_state(auth, auth::guard))
        .with_state(state)
}
