//! The listening socket, the router that assembles every route, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::proxy::{self, ProxyState};

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
}

/// Every route of the product.
pub fn app(state: Arc<ProxyState>) -> Router {
    let api = crate::api::router(Arc::clone(&state.accounting));
    proxy::router(state)
        .merge(api)
        .fallback(proxy::not_found)
        .method_not_allowed_fallback(proxy::method_not_allowed)
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
    let grace = config.server.shutdown_grace;
    let state = Arc::new(ProxyState::new(config)?);
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let stop = shutdown.clone();
    let server = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move { stop.cancelled().await });
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
