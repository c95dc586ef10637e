//! A deterministic, OpenAI-compatible mock upstream.
//!
//! Used by kimi-proxy's end-to-end tests and benchmarks. Routes (with or
//! without the `/v1` prefix): `GET /models`, `POST /chat/completions`, `POST /messages` and
//! `POST /messages/count_tokens` (Anthropic's Messages API; see `anthropic.rs`), and `POST /responses` (OpenAI's
//! Responses API: a Response object, or its event stream from `response.created` to `response.completed`;
//! see `responses.rs`), with the stored responses' routes `GET`/`DELETE /responses/{id}`,
//! `POST /responses/{id}/cancel` and `GET /responses/{id}/input_items`.
//! Behaviour comes from [`MockConfig`] and per-request headers:
//!
//! - `x-mock-chunks`, `x-mock-chunk-delay-ms`, `x-mock-ttft-ms`: stream shape.
//! - `x-mock-usage: requested | always | none`: when usage is reported (`always`: a `choices: []` usage chunk
//!   ends every stream, asked for or not, as OpenRouter does).
//! - `x-mock-stream-body: fixed`: a stream sent as one body with a `Content-Length` (buffering gateways).
//! - `x-mock-reasoning: N`, `x-mock-tool-call: 1`: extra deltas.
//! - `x-mock-status`, `x-mock-retry-after`, `x-mock-fail-times`, `x-mock-key`:
//!   OpenAI-format errors, optionally only for the first N requests of a key.
//! - `x-mock-delay-ms`: delay before the response headers.
//! - `x-mock-fault: close-mid-stream | stall | stall-headers | garbage`.
//! - `x-mock-body-kb: N`: pad the JSON answer's content to N KiB.
//! - `x-mock-cache-read: N`, `x-mock-cache-write: N` (Anthropic mode): the prompt-cache figures in `usage`.
//! - `x-mock-echo-authorization` (any value): the answer carries the request's `Authorization` back in a header
//!   of the same name, as a careless gateway might (the proxy must remove it).
//!
//! With [`MockConfig::required_key`], requests without that bearer key get a 401.
//!
//! Anthropic-native mode: `POST /messages` and `POST /messages/count_tokens` answer as Anthropic's Messages
//! API (JSON, or its event stream; errors in its format; `x-api-key` for [`MockConfig::required_key`]), with
//! the same headers where they make sense (see the `anthropic` module).
//!
//! Invalid header values are ignored.

mod anthropic;
mod handler;
mod options;
mod payload;
mod responses;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use payload::sse_chunk_text;

/// How many requests the recording ring keeps.
pub const REQUEST_RING_CAPACITY: usize = 64;

/// The per-key failure counters are cleared once they reach this many keys.
const FAIL_KEYS_LIMIT: usize = 10_000;

/// Server-wide defaults; each can be overridden per request by a header.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Number of content chunks (`x-mock-chunks`).
    pub default_chunks: usize,
    /// Delay between streamed chunks (`x-mock-chunk-delay-ms`).
    pub default_chunk_delay: Duration,
    /// Delay between the response headers and the first SSE event (`x-mock-ttft-ms`).
    pub default_ttft: Duration,
    /// When set, every request must carry `Authorization: Bearer <key>`; others get an OpenAI-style 401.
    pub required_key: Option<String>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            default_chunks: 8,
            default_chunk_delay: Duration::ZERO,
            default_ttft: Duration::ZERO,
            required_key: None,
        }
    }
}

/// Counters observable by tests.
#[derive(Debug, Default)]
pub struct MockStats {
    /// Every request received (any route).
    pub requests: AtomicU64,
    /// SSE bodies that started.
    pub streams_started: AtomicU64,
    /// SSE bodies that emitted `data: [DONE]`.
    pub streams_completed: AtomicU64,
    /// SSE bodies dropped before completion because the client went away
    /// (deliberate faults are not counted).
    pub streams_cancelled: AtomicU64,
}

impl MockStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One request as received by the mock.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// The URI path (without the query string).
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// Header names are lowercased; values are lossily decoded as UTF-8.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RecordedRequest {
    /// The first value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// State shared by all handlers of one mock server.
pub(crate) struct Shared {
    pub(crate) config: MockConfig,
    pub(crate) stats: Arc<MockStats>,
    ring: Mutex<VecDeque<RecordedRequest>>,
    fail_counts: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
    shutdown: watch::Receiver<bool>,
    /// Responses kept for `GET`/`DELETE /responses/{id}`, `…/cancel` and `…/input_items` (Responses mode).
    pub(crate) kept: Arc<Mutex<responses::Kept>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn record(&self, req: RecordedRequest) {
        let mut ring = lock(&self.ring);
        while ring.len() >= REQUEST_RING_CAPACITY {
            ring.pop_front();
        }
        ring.push_back(req);
    }

    /// Returns true when the request keyed `key` must still fail
    /// (the first `times` requests of each key fail).
    pub(crate) fn should_fail(&self, key: &str, times: u64) -> bool {
        let mut counts = lock(&self.fail_counts);
        if !counts.contains_key(key) && counts.len() >= FAIL_KEYS_LIMIT {
            counts.clear();
        }
        let seen = counts.entry(key.to_owned()).or_insert(0);
        if *seen < times {
            *seen += 1;
            true
        } else {
            false
        }
    }

    pub(crate) fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }
}

/// A running mock server. Dropping it shuts the server down: the listener is
/// closed, idle connections are closed and in-flight responses are aborted.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MockUpstream {
    /// Starts a server on `127.0.0.1:0` with the default configuration.
    pub async fn start() -> std::io::Result<MockUpstream> {
        Self::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), MockConfig::default()).await
    }

    /// Starts a server on `addr` with `config`.
    pub async fn start_with(addr: SocketAddr, config: MockConfig) -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            stats: Arc::new(MockStats::default()),
            ring: Mutex::new(VecDeque::with_capacity(REQUEST_RING_CAPACITY)),
            fail_counts: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            shutdown: shutdown_rx.clone(),
            kept: Arc::default(),
        });
        let app = Router::new()
            .fallback(handler::handle)
            .with_state(Arc::clone(&shared));
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let mut signal_rx = shutdown_rx;
        let task = tokio::spawn(async move {
            let signal = async move {
                let _ = signal_rx.wait_for(|stop| *stop).await;
            };
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await;
        });
        Ok(MockUpstream {
            addr,
            shared,
            shutdown_tx,
            task,
        })
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<MockStats> {
        Arc::clone(&self.shared.stats)
    }

    /// The last (at most [`REQUEST_RING_CAPACITY`]) requests, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.ring).iter().cloned().collect()
    }

    /// The most recent request.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.shared.ring).back().cloned()
    }

    /// Serves until ctrl-c (or SIGTERM on unix), then shuts down.
    pub async fn serve_forever(self) {
        wait_for_termination().await;
        drop(self);
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        self.task.abort();
    }
}

#[cfg(unix)]
async fn wait_for_termination() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_termination() {
    let _ = tokio::signal::ctrl_c().await;
}
