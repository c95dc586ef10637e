//! The listening socket, the router that assembles every route, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Auth};
use crate::config::Config;
use crate::live::Hub;
use crate::proxy::{self, ProxyState};
use crate::store::api::StoreApi;
use crate::store::{StoreError, StoreSink, WriterOptions};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] proxy::upstream::ClientBuildError),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long a shutdown waits for the records of the last requests.
const RECORDS_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Every route of the product (without the store's).
pub fn app(state: Arc<ProxyState>) -> Router {
    app_with_store(state, None)
}

/// Every route of the product, the store's included when it runs (no live hub: see [`app_with_hub`]).
pub fn app_with_store(state: Arc<ProxyState>, store: Option<Arc<StoreApi>>) -> Router {
    app_with_hub(state, store, None)
}

/// Every route of the product: the proxy, the admin surface (APIs, the dashboard's WebSocket when a hub runs),
/// all behind the auth guard.
pub fn app_with_hub(
    state: Arc<ProxyState>,
    store: Option<Arc<StoreApi>>,
    hub: Option<Arc<Hub>>,
) -> Router {
    let auth = Arc::new(Auth::new(&state.config));
    let mut app = proxy::router(Arc::clone(&state)).merge(admin_router(state, store, hub));
    if auth.admin_token_set() {
        app = app.merge(auth::login_router(Arc::clone(&auth)));
    }
    app.fallback(proxy::not_found)
        .method_not_allowed_fallback(proxy::method_not_allowed)
        // Outermost, so it sees every request, the fallbacks included: Host/Origin/CORS rules everywhere,
        // virtual keys on the proxy paths, the admin token on every other path.
        .layer(axum::middleware::from_fn_with_state(auth, auth::guard))
}

/// The admin surface: every route that is not a proxy route (the dashboard and its assets, `/api/*`, `/ws`,
/// `/metrics`). Add new non-proxy routes here. The guard protects them by path whatever router they are in
/// (only `proxy::PROXY_PATHS` and `/login` are exempt), so a route merged elsewhere is protected too.
fn admin_router(
    state: Arc<ProxyState>,
    store: Option<Arc<StoreApi>>,
    hub: Option<Arc<Hub>>,
) -> Router {
    let mut admin = crate::api::router(state).merge(crate::dashboard::router());
    if let Some(store) = store {
        admin = admin.merge(crate::store::api::router(store));
    }
    if let Some(hub) = hub {
        admin = admin.merge(crate::live::router(hub));
    }
    admin
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Serves until `shutdown` is cancelled, then stops accepting and lets in-flight requests finish for at most
/// the configured grace period.
pub async fn serve(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let state = Arc::new(ProxyState::new(Arc::clone(&config))?);
    let sink = start_store(&config, &state).await?;
    let store = sink.as_ref().map(|sink| StoreApi::new(Arc::clone(sink)));
    let result = run(&config, Arc::clone(&state), store, listener, shutdown).await;
    if let Some(sink) = sink {
        // The last records are finished on tasks of their own (a prompt count may still be running): wait for
        // them (bounded), then commit everything queued before the process ends.
        let deadline = tokio::time::Instant::now() + RECORDS_GRACE;
        while state.accounting.unfinished() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let left = state.accounting.unfinished();
        if left > 0 {
            tracing::warn!(records = left, "shutting down without the last records");
        }
        let _ = tokio::task::spawn_blocking(move || sink.shutdown()).await;
    }
    result
}

/// Opens the database and registers its sink, when the store is enabled.
async fn start_store(
    config: &Config,
    state: &ProxyState,
) -> Result<Option<Arc<StoreSink>>, ServerError> {
    if !config.store.enabled {
        tracing::info!("store disabled: requests are not persisted");
        return Ok(None);
    }
    let path = config
        .store
        .path
        .clone()
        .unwrap_or_else(|| crate::cli::default_data_dir().join(crate::cli::DEFAULT_DB_FILE));
    let options = WriterOptions::for_config(config);
    let shown = path.display().to_string();
    let sink = tokio::task::spawn_blocking(move || StoreSink::start(&path, options))
        .await
        .map_err(|e| ServerError::Store(StoreError::Other(format!("store start failed: {e}"))))??;
    state
        .accounting
        .add_sink(Arc::clone(&sink) as Arc<dyn crate::accounting::RecordSink>);
    tracing::info!(path = %shown, session_mode = config.store.session_mode.as_str(), "store open");
    Ok(Some(sink))
}

async fn run(
    config: &Config,
    state: Arc<ProxyState>,
    store: Option<Arc<StoreApi>>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let grace = config.server.shutdown_grace;
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let hub = Hub::start(Arc::clone(&state), store.clone());
    let stop = shutdown.clone();
    let closing = Arc::clone(&hub);
    let server = axum::serve(listener, app_with_hub(state, store, Some(hub)))
        .with_graceful_shutdown(async move {
            stop.cancelled().await;
            // Dashboards are told the server goes away; they would otherwise hold the shutdown up.
            closing.close();
        });
    let mut task = tokio::spawn(async move { server.await });
    tokio::select! {
        result = &mut task => return finish(result),
        () = shutdown.cancelled() => {}
    }
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: waiting for in-flight requests"
    );
    match tokio::time::timeout(grace, &mut task).await {
        Ok(result) => finish(result),
        Err(_) => {
            task.abort();
            tracing::warn!("grace period over: remaining requests were cut");
            Ok(())
        }
    }
}

fn finish(result: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), ServerError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServerError::Serve(e)),
        Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::warn!(%error, "cannot watch SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
