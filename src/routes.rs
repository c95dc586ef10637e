//! Every route of the product, and nothing else: the proxy's (clients of the LLM APIs; virtual keys; errors in
//! the client's API format) and the admin surface's (the dashboard, `/api/*`, `/ws`, `/metrics`; the admin
//! token). The auth guard is told which paths are proxy paths from the same table the proxy router is built
//! from, so the two cannot drift apart.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::routing::{MethodRouter, get, post};

use crate::admin;
use crate::admin::StoreApi;
use crate::auth::{self, Auth};
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
    /// OpenAI Responses: create (translated to chat completions), and the stored responses.
    Responses,
    Response,
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
    ("/responses/{id}/input_items", Endpoint::ResponseInputItems),
];

fn handler(endpoint: Endpoint) -> MethodRouter<Arc<ProxyState>> {
    match endpoint {
        Endpoint::ChatCompletions => post(proxy::chat_completions),
        Endpoint::Messages => post(proxy::messages),
        Endpoint::MessagesCountTokens => post(proxy::count_tokens),
        Endpoint::Models => get(proxy::list_models),
        Endpoint::Responses => post(proxy::create_response),
        Endpoint::Response => get(proxy::dialect::responses::get_response)
            .delete(proxy::dialect::responses::delete_response),
        Endpoint::ResponseInputItems => get(proxy::dialect::responses::input_items),
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

/// The proxy surface alone.
pub fn proxy(state: Arc<ProxyState>) -> Router {
    let mut router = Router::new();
    for (path, endpoint) in PROXY {
        router = router
            .route(&format!("/v1{path}"), handler(*endpoint))
            .route(path, handler(*endpoint));
    }
    router.with_state(state)
}

/// The dashboards' WebSocket.
pub fn dashboards(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/ws", get(live::socket::upgrade))
        .with_state(hub)
}

/// The admin surface: everything that is not a proxy route. The guard protects it by path (only the proxy
/// paths and `/login`, `/logout` are exempt), whatever router a route is in.
fn admin(state: &Arc<ProxyState>, store: Option<Arc<StoreApi>>, hub: Option<Arc<Hub>>) -> Router {
    let mut router = Router::new()
        .route("/", get(crate::dashboard::index))
        .route("/index.html", get(crate::dashboard::index))
        .route("/assets/{file}", get(crate::dashboard::asset))
        .merge(
            Router::new()
                .route("/api/requests/recent", get(admin::stats::recent_requests))
                .route("/api/requests/live", get(admin::stats::live_requests))
                .route("/api/tokens", get(admin::stats::token_stats))
                .route("/api/stats", get(admin::stats::stats))
                .route("/metrics", get(admin::stats::metrics))
                .with_state(Arc::clone(state)),
        )
        .merge(
            Router::new()
                .route("/api/alerts", get(admin::alerts::list))
                .route("/api/alerts/{id}/ack", post(admin::alerts::ack))
                .with_state(Arc::clone(&state.alerts)),
        );
    if let Some(store) = store {
        use admin::context as ctx;
        use admin::sessions as s;
        router = router.merge(
            Router::new()
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
                .with_state(store),
        );
    }
    if let Some(hub) = hub {
        router = router.merge(dashboards(hub));
    }
    router
}

/// Every route of the product behind the auth guard, with the fallbacks for unknown paths and methods.
pub fn app(state: Arc<ProxyState>, store: Option<Arc<StoreApi>>, hub: Option<Arc<Hub>>) -> Router {
    let auth = Arc::new(Auth::new(&state.config, proxy_paths()));
    let mut app = proxy(Arc::clone(&state)).merge(admin(&state, store, hub));
    if auth.admin_token_set() {
        app = app.merge(
            Router::new()
                .route("/login", get(auth::login::page).post(auth::login::login))
                .route("/logout", post(auth::login::logout))
                .with_state(Arc::clone(&auth)),
        );
    }
    let (for_not_found, for_not_allowed) = (Arc::clone(&state), Arc::clone(&state));
    app.fallback(move |request| proxy::not_found(for_not_found, request))
        .method_not_allowed_fallback(move |request| {
            proxy::method_not_allowed(for_not_allowed, request)
        })
        // Outermost, so it sees every request, the fallbacks included: Host/Origin/CORS rules everywhere,
        // virtual keys on the proxy paths, the admin token on every other path.
        .layer(axum::middleware::from_fn_with_state(auth, auth::guard))
}
