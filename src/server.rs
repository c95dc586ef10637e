//! The listening socket, the start of every part (store, alerts, live hub), and graceful shutdown. The routes
//! are in `crate::routes`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::Instrument;

use crate::admin::StoreApi;
use crate::config::Config;
use crate::limits::{
    BodyDeadlineHit, Connection, ConnectionLimits, CountedBody, DeadlineBody, IpShares, WatchedIo,
};
use crate::live::Hub;
use crate::proxy::{self, ProxyState};
use crate::store::masks::{MaskKey, StoreMasks};
use crate::store::{StoreError, StoreSink, WriterOptions};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] crate::net::ClientBuildError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
}

/// How long a shutdown waits for the records of the last requests.
const RECORDS_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

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
    // The instance id defaults to the host name and the port actually bound (`--listen …:0` included).
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let config = {
        let mut named = (*config).clone();
        named.cluster.instance_id = Some(config.cluster.with_instance(port));
        Arc::new(named)
    };
    let state = Arc::new(ProxyState::new(Arc::clone(&config))?);
    let sink = start_store(&config, &state).await?;
    let fleet = join_fleet(&config, &state, sink.as_ref());
    // `service.instance.id` in traces: the fleet's instance id.
    let telemetry = crate::telemetry::start(&config, config.cluster.with_instance(port))?.map(
        |(telemetry_sink, task)| {
            let _ = state.telemetry.set(Arc::clone(telemetry_sink.counters()));
            state.accounting.add_sink(telemetry_sink);
            task
        },
    );
    let mask_key = config
        .context
        .encryption_key
        .as_ref()
        .and_then(|key| crate::config::context::parse_key(key.expose()))
        .and_then(|key| MaskKey::new(&key));
    if let Some(sink) = &sink {
        state.context.masks.set_sink(Arc::new(StoreMasks {
            sink: Arc::clone(sink),
            key: mask_key.clone(),
        }));
        let retention = config.store.responses_retention.as_millis();
        state
            .responses
            .set_backing(Arc::new(crate::store::responses::StoreResponses::new(
                Arc::clone(sink),
                i64::try_from(retention).unwrap_or(i64::MAX),
            )));
        load_context_settings(sink, &state).await;
    }
    let store = sink.as_ref().map(|sink| {
        StoreApi::new(
            Arc::clone(sink),
            Arc::clone(&state.context),
            mask_key.clone(),
        )
    });
    let alerts = start_alerts(&state, sink.as_ref()).await;
    let result = run(&config, Arc::clone(&state), store, listener, shutdown).await;
    // Alert writes still pending go to the store before it closes.
    alerts.cancel();
    // Leaving the fleet releases the leadership at once (another instance takes it on its next try).
    if let Some(fleet) = fleet {
        let _ = tokio::task::spawn_blocking(move || fleet.stop()).await;
    }
    if sink.is_some() || telemetry.is_some() {
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
    }
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    if let Some(sink) = sink {
        let _ = tokio::task::spawn_blocking(move || sink.shutdown()).await;
    }
    result
}

/// Loads the sessions' context settings and the active session into the proxy's memory.
async fn load_context_settings(sink: &Arc<StoreSink>, state: &Arc<ProxyState>) {
    match sink.sessions_with_settings().await {
        Ok(rows) => {
            let sessions = &state.context.sessions;
            for row in rows {
                if row.active {
                    sessions.set_active(Some(row.id));
                }
                if let Some(toggles) = row
                    .settings
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<crate::config::context::Toggles>(s).ok())
                {
                    sessions.set(
                        row.id,
                        row.client_key.as_deref(),
                        crate::context::sessions::SessionContext {
                            toggles,
                            compact_next: false,
                        },
                    );
                }
            }
        }
        Err(error) => tracing::warn!(%error, "cannot load the sessions' context settings"),
    }
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
    let location = match &config.store.url {
        Some(url) => crate::store::pg::Location::parse(url.expose())?,
        None => {
            crate::store::pg::Location::Sqlite(config.store.path.clone().unwrap_or_else(|| {
                crate::cli::default_data_dir().join(crate::cli::DEFAULT_DB_FILE)
            }))
        }
    };
    let options = WriterOptions::for_config(config);
    let shown = location.to_string();
    let sink = tokio::task::spawn_blocking(move || StoreSink::start_at(&location, options))
        .await
        .map_err(|e| ServerError::Store(StoreError::Other(format!("store start failed: {e}"))))??;
    state
        .accounting
        .add_sink(Arc::clone(&sink) as Arc<dyn crate::accounting::RecordSink>);
    tracing::info!(path = %shown, session_mode = config.store.session_mode.as_str(), "store open");
    Ok(Some(sink))
}

/// On PostgreSQL, joins the other instances on the database: the fleet connection (live view of their
/// requests, stats snapshots, the alert leader). `None` on SQLite, or when the thread cannot start.
fn join_fleet(
    config: &Config,
    state: &Arc<ProxyState>,
    sink: Option<&Arc<StoreSink>>,
) -> Option<Arc<crate::store::fleet::Fleet>> {
    let crate::store::pg::Location::Postgres(url) = sink?.location() else {
        return None;
    };
    let instance: Arc<str> = Arc::from(config.cluster.instance_id.as_deref().unwrap_or_default());
    let snapshot_state = Arc::downgrade(state);
    let hooks = crate::store::fleet::FleetHooks {
        snapshot: Box::new(move || {
            snapshot_state
                .upgrade()
                .map(|state| crate::admin::stats::instance_snapshot(&state))
                .unwrap_or_default()
        }),
        context: state
            .alerts
            .enabled()
            .then(|| state.alerts.context_listener()),
    };
    match crate::store::fleet::Fleet::start(url, instance, hooks) {
        Ok(fleet) => {
            state.alerts.follow(Arc::clone(&fleet));
            let _ = state.fleet.set(Arc::clone(&fleet));
            Some(fleet)
        }
        Err(error) => {
            tracing::error!(%error, "cannot join the fleet: this instance sees only its own requests and fires its alerts alone");
            None
        }
    }
}

/// Connects the alert engine to the store and starts its evaluation task; cancel the token to stop it.
async fn start_alerts(state: &Arc<ProxyState>, sink: Option<&Arc<StoreSink>>) -> CancellationToken {
    let stop = CancellationToken::new();
    let engine = Arc::clone(&state.alerts);
    if let Some(sink) = sink {
        let (engine, sink) = (Arc::clone(&engine), Arc::clone(sink));
        let attached = tokio::task::spawn_blocking(move || engine.attach_store(&sink)).await;
        match attached {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "alerts: cannot read the alerts table"),
            Err(error) => tracing::warn!(%error, "alerts: store connection failed"),
        }
    }
    let sources = crate::alerts::Sources {
        monitor: Arc::clone(&state.accounting.monitor),
        throttled: state.throttle_counters(),
        store: sink.cloned(),
        redis_failures: state.redis_failures(),
    };
    let _ = engine.start(sources, stop.clone());
    stop
}

async fn run(
    config: &Config,
    state: Arc<ProxyState>,
    store: Option<Arc<StoreApi>>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let grace = config.server.shutdown_grace;
    let hub = Hub::start(
        Arc::clone(&state),
        store.as_ref().map(|api| Arc::clone(&api.sink)),
    );
    if let Some(fleet) = state.fleet.get() {
        fleet.set_listener(Arc::clone(&hub) as Arc<dyn crate::store::fleet::FleetListener>);
    }
    // Every log line of a request names the instance that served it (a fleet's logs are read together).
    let span = tracing::info_span!(
        "instance",
        instance = %config.cluster.instance_id.as_deref().unwrap_or_default()
    );
    let app = crate::routes::app(state, store, Arc::clone(&hub));
    let builder = Arc::new(connection_builder(&config.server));
    // One permit per open client connection: bounds what idle or slow clients can hold, and tells shutdown
    // when every connection has finished.
    let max = config
        .server
        .max_connections
        .min(Semaphore::MAX_PERMITS)
        .min(u32::MAX as usize);
    let permits = Arc::new(Semaphore::new(max));
    let shares = IpShares::new(config.server.limits().max_connections_per_ip);
    let deadlines = Deadlines {
        first_byte: config.server.header_read_timeout,
        limits: config.server.limits(),
    };
    let mut refused = RefusedConnections::default();
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refused.note(max);
            drop(tcp);
            continue;
        };
        // One address may hold only its share of the slots (loopback clients are exempt: they are this machine).
        let Some(share) = shares.take(remote.ip()) else {
            refused.note_address(remote, config.server.limits().max_connections_per_ip);
            drop(tcp);
            continue;
        };
        // The slot is held for as long as the connection is used, an upgraded WebSocket included.
        let connection = Connection::new(Some(permit), share);
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        tokio::spawn(
            serve_connection(
                Arc::clone(&builder),
                app.clone(),
                tcp,
                remote,
                shutdown.clone(),
                connection,
                deadlines,
            )
            .instrument(span.clone()),
        );
    }
    drop(listener);
    // Dashboards are told the server goes away; they would otherwise hold the shutdown up.
    hub.close();
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: waiting for in-flight requests"
    );
    let deadline = tokio::time::Instant::now() + grace;
    // Upgraded connections (dashboards) hold their permit until they close: the hub tells them to.
    while hub.clients() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let all = max as u32;
    if tokio::time::timeout_at(deadline, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("grace period over: remaining requests were cut");
    }
    Ok(())
}

/// HTTP/1 and HTTP/2 (prior knowledge) on one port, with upgrades (WebSocket). The header-read timeout also
/// closes HTTP/1 connections that sit idle between requests; HTTP/2 connections are pinged, and closed when
/// the client does not answer (the idle timeout in [`serve_http`] closes those that answer but send nothing).
fn connection_builder(server: &crate::config::ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(MAX_HTTP2_HEADER_BYTES)
        .max_concurrent_streams(MAX_HTTP2_STREAMS)
        .keep_alive_interval(server.limits().http2_keep_alive_interval)
        .keep_alive_timeout(server.limits().http2_keep_alive_timeout);
    builder
}

/// Requests one HTTP/2 connection may have in flight at once (each is bounded by the deadlines).
const MAX_HTTP2_STREAMS: u32 = 128;

/// Largest header block an HTTP/2 client may send (HTTP/1 is bounded by hyper's read buffer, ~400 KiB).
const MAX_HTTP2_HEADER_BYTES: u32 = 256 * 1024;

/// The deadlines every connection is served with.
#[derive(Clone, Copy)]
struct Deadlines {
    /// For the first byte (then hyper's header timeout takes over).
    first_byte: std::time::Duration,
    limits: ConnectionLimits,
}

async fn serve_connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    tcp: TcpStream,
    remote: SocketAddr,
    shutdown: CancellationToken,
    connection: Arc<Connection>,
    deadlines: Deadlines,
) {
    let Deadlines {
        first_byte: first_byte_timeout,
        limits,
    } = deadlines;
    // A client that connects and sends nothing is closed like one that sends its headers too slowly (hyper's
    // header timeout starts only once it knows the protocol).
    let mut first = [0u8; 1];
    match tokio::time::timeout(first_byte_timeout, tcp.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return, // closed or failed before sending anything
        Err(_) => {
            tracing::debug!(%remote, "client sent nothing: connection closed");
            return;
        }
    }
    // Boxed: the HTTP state machine is large, and a connection that never gets here should not pay for it.
    Box::pin(serve_http(
        builder, app, tcp, remote, shutdown, connection, limits,
    ))
    .await;
}

async fn serve_http(
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    tcp: TcpStream,
    remote: SocketAddr,
    shutdown: CancellationToken,
    connection: Arc<Connection>,
    limits: ConnectionLimits,
) {
    let watch = Arc::clone(&connection);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let in_flight = connection.request_started();
        let hit = Arc::new(BodyDeadlineHit::default());
        let mut request =
            request.map(|body| Body::new(DeadlineBody::new(body, &limits, Arc::clone(&hit))));
        request.extensions_mut().insert(ConnectInfo(remote));
        request.extensions_mut().insert(Arc::clone(&connection));
        let answer = app.clone().oneshot(request);
        async move {
            let response = match answer.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let response = if hit.hit() {
                body_timeout_response(remote)
            } else {
                response
            };
            Ok::<_, std::convert::Infallible>(
                response.map(|body| Body::new(CountedBody::new(body, in_flight))),
            )
        }
    });
    let io = WatchedIo::new(tcp, limits.write_timeout, Arc::clone(&watch));
    let http = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut http = std::pin::pin!(http);
    let idle = tokio::select! {
        result = http.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%remote, error = %error, "client connection ended with an error");
            }
            return;
        }
        () = shutdown.cancelled() => {
            http.as_mut().graceful_shutdown();
            false
        }
        () = crate::limits::idle(&watch, limits.idle_timeout) => {
            tracing::debug!(%remote, "connection idle: closing");
            http.as_mut().graceful_shutdown();
            true
        }
    };
    let finished = async {
        if let Err(error) = http.await {
            tracing::debug!(%remote, error = %error, "client connection ended with an error");
        }
    };
    if idle {
        // Nothing is in flight: the goodbye (HTTP/2 GOAWAY, whose PING the client must answer) gets a moment,
        // then the connection is dropped.
        if tokio::time::timeout(IDLE_CLOSE_GRACE, finished)
            .await
            .is_err()
        {
            tracing::debug!(%remote, "idle connection dropped without the client's goodbye");
        }
    } else {
        finished.await;
    }
}

/// How long an idle connection's graceful close may take before the connection is dropped.
const IDLE_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The answer to a request whose body missed its deadline (whatever the route made of the failed read): a 408
/// in the error format of every other answer, and the connection closed (the rest of the body is not read).
fn body_timeout_response(remote: SocketAddr) -> axum::response::Response {
    use axum::response::IntoResponse;
    tracing::info!(%remote, "request body too slow: 408");
    let mut response = proxy::error::ProxyError::BodyTimeout.into_response();
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// Accept errors are the machine's (out of descriptors, say), not a reason to stop serving: wait a little so
/// a full descriptor table does not spin the loop.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(%error, "cannot accept a connection");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

/// Counts connections closed because `max_connections` were open; logs at most once a second.
#[derive(Default)]
struct RefusedConnections {
    since_log: u64,
    last_log: Option<tokio::time::Instant>,
}

impl RefusedConnections {
    fn note(&mut self, max: usize) {
        self.since_log += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(1))
        {
            tracing::warn!(
                max_connections = max,
                refused = self.since_log,
                "too many client connections: closing new ones"
            );
            self.since_log = 0;
            self.last_log = Some(now);
        }
    }

    fn note_address(&mut self, remote: SocketAddr, share: usize) {
        let now = tokio::time::Instant::now();
        if self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(1))
        {
            tracing::warn!(
                client = %remote.ip(),
                max_connections_per_ip = share,
                "one client address holds its share of the connections: closing its new ones"
            );
            self.last_log = Some(now);
        }
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
