//! One dashboard connection: the `init` snapshot, then the hub's events in order, and the client's requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::protocol::{self, Envelope, Init, RequestView};
use super::{Frame, Hub};
use crate::monitor::{Metric, Window};
use crate::store::StoreError;
use crate::store::query;

/// A socket that accepts nothing for this long is cut off.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
const PING_EVERY: Duration = Duration::from_secs(20);
/// Frames written before one flush.
const MAX_BATCH: usize = 256;
/// Clients only send small commands.
const MAX_CLIENT_MESSAGE: usize = 4096;
/// Bytes read from a client at once. tungstenite zeroes this much of its input buffer on every read attempt,
/// and the client loop makes one per batch of events: with its default (128 KiB) that zeroing was a quarter of
/// the proxy's CPU in the dashboards benchmark. A larger command still arrives, in several reads.
const READ_BUFFER: usize = 1024;
/// Most a client's socket may have queued for writing (snapshots, events, the pongs its pings ask for): beyond
/// it the client is cut off. A snapshot is a few hundred KiB at most.
const MAX_WRITE_BUFFER: usize = 4 << 20;
/// Messages a client may send (pings included): a burst of this many...
const MESSAGE_BURST: f64 = 60.0;
/// ...and this many a second after it. A dashboard sends a command now and then; more is a flood: cut off.
const MESSAGES_PER_SECOND: f64 = 20.0;
/// A client gets at most one fresh snapshot this often; commands in between are coalesced into one snapshot
/// at the end of the interval (each builds a full snapshot: the store's queries and the serialisation).
const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);
/// Sessions and requests in a snapshot.
const INIT_SESSIONS: u32 = 50;
const INIT_RECENT: usize = 100;
const INIT_SESSION_REQUESTS: u32 = 200;

#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct Params {
    /// `Date.getTimezoneOffset()` of the browser: minutes to add to local time to get UTC.
    tz_offset_min: Option<i64>,
    session_id: Option<i64>,
}

/// Client → server commands.
#[derive(Deserialize)]
#[serde(tag = "type")]
enum Command {
    #[serde(rename = "resync")]
    Resync,
    #[serde(rename = "select_session")]
    SelectSession { session_id: Option<i64> },
}

pub(crate) async fn upgrade(
    State(hub): State<Arc<Hub>>,
    params: Result<Query<Params>, QueryRejection>,
    ws: WebSocketUpgrade,
) -> Response {
    let params = match params {
        Ok(Query(params)) => params,
        Err(rejection) => return rejection.into_response(),
    };
    let max = hub.state.config.server.limits().max_dashboards;
    let Some(guard) = hub.try_connect(max) else {
        tracing::warn!(
            max_dashboards = max,
            "too many dashboards connected: refusing another"
        );
        return too_many_dashboards(max);
    };
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(READ_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| serve(socket, hub, params, guard))
}

/// 503 in the error format of every other answer.
fn too_many_dashboards(max: usize) -> Response {
    let body = serde_json::json!({"error": {
        "message": format!("{max} dashboards are connected already ([server] max_dashboards)"),
        "type": "server_busy",
        "param": null,
        "code": "too_many_dashboards",
    }});
    let mut response = (http::StatusCode::SERVICE_UNAVAILABLE, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(5u32));
    response
}

/// Why a connection ended.
enum End {
    ClientLeft,
    TooSlow,
    /// The client sent more messages than its budget allows.
    Flooding,
    ServerClosing,
}

/// What a client may send: a token bucket over all its messages (pings included).
struct MessageBudget {
    tokens: f64,
    at: tokio::time::Instant,
}

impl MessageBudget {
    fn new() -> Self {
        Self {
            tokens: MESSAGE_BURST,
            at: tokio::time::Instant::now(),
        }
    }

    /// Spends one message; false when the budget is used up.
    fn spend(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * MESSAGES_PER_SECOND;
        self.tokens = (self.tokens + refill).min(MESSAGE_BURST);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

async fn serve(
    mut socket: WebSocket,
    hub: Arc<Hub>,
    mut params: Params,
    _guard: super::ClientGuard,
) {
    let mut frames = hub.subscribe();
    let mut last = match send_init(&mut socket, &hub, &params).await {
        Ok(seq) => seq,
        Err(end) => return finish(socket, &hub, end).await,
    };
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    let mut budget = MessageBudget::new();
    // The next fresh snapshot is not sent before this; `snapshot_due` is a command waiting for it.
    let mut next_snapshot = tokio::time::Instant::now() + SNAPSHOT_EVERY;
    let mut snapshot_due = false;
    // When each frame of the batch in hand was published; kept across batches (one allocation per client).
    let mut published = Vec::new();
    let end = loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Ok(frame) => {
                    let forwarded = forward(&mut socket, frame, &mut frames, &mut last, &mut published).await;
                    if let Err(end) = forwarded {
                        break end;
                    }
                    let written = std::time::Instant::now();
                    hub.state.accounting.monitor.record_all(
                        Metric::Delivery,
                        published
                            .drain(..)
                            .map(|at| written.saturating_duration_since(at).as_micros() as u64),
                    );
                }
                // The client fell more than the ring behind: cut it off, it reconnects with a fresh snapshot.
                Err(RecvError::Lagged(_)) => break End::TooSlow,
                Err(RecvError::Closed) => break End::ServerClosing,
            },
            message = socket.recv() => {
                if matches!(message, Some(Ok(_))) && !budget.spend() {
                    break End::Flooding;
                }
                match message {
                    Some(Ok(Message::Text(text))) => {
                        match serde_json::from_str::<Command>(&text) {
                            Ok(Command::Resync) => {}
                            Ok(Command::SelectSession { session_id }) => params.session_id = session_id,
                            Err(_) => continue,
                        }
                        // Both commands are answered with a fresh snapshot: now, or once the interval since
                        // the last one has passed (several commands in between get one snapshot).
                        if tokio::time::Instant::now() < next_snapshot {
                            snapshot_due = true;
                            continue;
                        }
                        match send_init(&mut socket, &hub, &params).await {
                            Ok(seq) => last = seq,
                            Err(end) => break end,
                        }
                        next_snapshot = tokio::time::Instant::now() + SNAPSHOT_EVERY;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::ClientLeft,
                    Some(Ok(_)) => {}
                }
            },
            () = tokio::time::sleep_until(next_snapshot), if snapshot_due => {
                snapshot_due = false;
                match send_init(&mut socket, &hub, &params).await {
                    Ok(seq) => last = seq,
                    Err(end) => break end,
                }
                next_snapshot = tokio::time::Instant::now() + SNAPSHOT_EVERY;
            }
            _ = ping.tick() => {
                if let Err(end) = send(&mut socket, Message::Ping(bytes::Bytes::new())).await {
                    break end;
                }
            }
            () = hub.closing.cancelled() => break End::ServerClosing,
        }
    };
    finish(socket, &hub, end).await;
}

async fn finish(mut socket: WebSocket, hub: &Hub, end: End) {
    let (code, reason) = match end {
        End::ClientLeft => return,
        End::TooSlow => {
            hub.count_cut_off();
            tracing::debug!("dashboard client too slow: disconnected");
            (close_code::POLICY, "too slow")
        }
        End::Flooding => {
            hub.count_cut_off();
            tracing::info!("dashboard client sent too many messages: disconnected");
            (close_code::POLICY, "too many messages")
        }
        End::ServerClosing => (close_code::AWAY, "server shutting down"),
    };
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(close)).await;
}

/// Writes `first` and every frame already waiting behind it, then flushes once: a burst of events costs one
/// write to the socket, not one per event. Frames the client already has (up to `last`) are skipped.
async fn forward(
    socket: &mut WebSocket,
    first: Frame,
    frames: &mut broadcast::Receiver<Frame>,
    last: &mut u64,
    published: &mut Vec<std::time::Instant>,
) -> Result<(), End> {
    let batch = async {
        let mut next = Some(first);
        let mut written = 0usize;
        while let Some(Frame {
            seq,
            text,
            published: at,
        }) = next.take()
        {
            if seq > *last {
                socket
                    .feed(Message::Text(text))
                    .await
                    .map_err(|_| End::ClientLeft)?;
                *last = seq;
                published.push(at);
                written += 1;
            }
            if written < MAX_BATCH {
                next = match frames.try_recv() {
                    Ok(frame) => Some(frame),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Lagged(_)) => return Err(End::TooSlow),
                    Err(TryRecvError::Closed) => None,
                };
            }
        }
        socket.flush().await.map_err(|_| End::ClientLeft)
    };
    match tokio::time::timeout(SEND_TIMEOUT, batch).await {
        Ok(result) => result,
        Err(_) => Err(End::TooSlow),
    }
}

async fn send(socket: &mut WebSocket, message: Message) -> Result<(), End> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::ClientLeft),
        Err(_) => Err(End::TooSlow),
    }
}

/// Builds and sends the snapshot; answers the sequence number it is consistent with. The number is read
/// before anything else: every event numbered up to it happened before the snapshot was read.
async fn send_init(socket: &mut WebSocket, hub: &Arc<Hub>, params: &Params) -> Result<u64, End> {
    let seq = hub.last_seq();
    let started = std::time::Instant::now();
    let text = match snapshot(hub, params, seq).await {
        Ok(text) => text,
        Err(error) => {
            tracing::warn!(%error, "dashboard snapshot failed");
            return Err(End::ServerClosing);
        }
    };
    hub.state
        .accounting
        .monitor
        .record(Metric::Broadcast, started.elapsed().as_micros() as u64);
    send(socket, Message::Text(Utf8Bytes::from(text))).await?;
    Ok(seq)
}

/// What the store contributes to a snapshot.
#[derive(Default)]
struct Stored {
    active: Option<i64>,
    sessions: Vec<query::Session>,
    total: i64,
    today: protocol::Today,
    saved: protocol::Saved,
    session_requests: Vec<serde_json::Map<String, serde_json::Value>>,
}

async fn snapshot(hub: &Arc<Hub>, params: &Params, seq: u64) -> Result<String, StoreError> {
    let now = crate::util::unix_ms();
    let since = local_midnight_ms(now, params.tz_offset_min.unwrap_or(0));
    let stored = match &hub.store {
        Some(store) => {
            let readers = Arc::clone(&store.readers);
            let selected = params.session_id;
            tokio::task::spawn_blocking(move || {
                readers.with_db(|conn| read_store(conn, since, selected))
            })
            .await
            .map_err(|e| StoreError::Other(format!("snapshot task failed: {e}")))??
        }
        None => Stored::default(),
    };
    let accounting = &hub.state.accounting;
    let sessions_of: HashMap<u64, Option<i64>> = hub.sessions_of();
    let recent_records = accounting.recent(INIT_RECENT);
    let recent = recent_records
        .iter()
        .map(|r| RequestView::of(r, sessions_of.get(&r.id).copied().flatten()))
        .collect();
    let totals = &accounting.totals;
    let init = Init {
        server: protocol::ServerInfo {
            version: env!("CARGO_PKG_VERSION"),
            started_at_ms: hub.started_at_ms,
            store: hub.store.is_some(),
        },
        active_session_id: stored.active,
        sessions: stored.sessions,
        sessions_total: stored.total,
        today: hub.store.is_some().then_some(protocol::Today {
            since_ms: since,
            ..stored.today
        }),
        totals: protocol::Totals {
            requests: totals.requests.load(std::sync::atomic::Ordering::Relaxed),
            prompt_tokens: totals
                .prompt_tokens
                .load(std::sync::atomic::Ordering::Relaxed),
            completion_tokens: totals
                .completion_tokens
                .load(std::sync::atomic::Ordering::Relaxed),
            cost_usd: totals
                .cost_micro_usd
                .load(std::sync::atomic::Ordering::Relaxed) as f64
                / 1e6,
        },
        saved: if hub.store.is_some() {
            stored.saved
        } else {
            protocol::Saved {
                tokens_saved: totals
                    .tokens_saved
                    .load(std::sync::atomic::Ordering::Relaxed),
                cost_saved_usd: totals
                    .cost_saved_micro_usd
                    .load(std::sync::atomic::Ordering::Relaxed)
                    as f64
                    / 1e6,
            }
        },
        recent,
        selected_session_id: params.session_id,
        session_requests: stored.session_requests,
        live: accounting.in_flight.snapshot(),
        accuracy: accuracy(hub, &recent_records),
        models: protocol::models(&hub.state.config),
        alerts: hub.state.alerts.active(),
        stats: stats(hub),
    };
    serde_json::to_string(&Envelope {
        kind: "init",
        seq,
        ts: now,
        data: init,
    })
    .map_err(|e| StoreError::Other(format!("cannot serialise the snapshot: {e}")))
}

fn read_store(
    conn: &dyn crate::store::db::Db,
    since: i64,
    selected: Option<i64>,
) -> Result<Stored, StoreError> {
    let sessions = query::list_sessions(
        conn,
        query::SessionSort::LastActivity,
        query::Order::Desc,
        INIT_SESSIONS,
        0,
    )?;
    let totals = query::totals_since(conn, since)?;
    let today = protocol::Today {
        since_ms: since,
        requests: totals.requests,
        prompt_tokens: totals.prompt_tokens,
        completion_tokens: totals.completion_tokens,
        cached_tokens: totals.cached_tokens,
        cost_usd: totals.cost_usd,
    };
    let (tokens_saved, cost_saved_usd) = query::saved_totals(conn)?;
    let saved = protocol::Saved {
        tokens_saved,
        cost_saved_usd,
    };
    let session_requests = match selected {
        Some(id) => query::list_requests(
            conn,
            &query::RequestFilter {
                session: Some(id),
                ..Default::default()
            },
            INIT_SESSION_REQUESTS,
            0,
        )?,
        None => Vec::new(),
    };
    Ok(Stored {
        active: query::active_session(conn)?.map(|s| s.id),
        sessions,
        total: query::count_sessions(conn)?,
        today,
        saved,
        session_requests,
    })
}

/// The start of the user's day, in Unix milliseconds, for a browser `getTimezoneOffset()` in minutes.
fn local_midnight_ms(now_ms: i64, tz_offset_min: i64) -> i64 {
    const DAY: i64 = 86_400_000;
    // Offsets beyond ±14 h do not exist.
    let offset = tz_offset_min.clamp(-14 * 60, 14 * 60) * 60_000;
    let local = now_ms - offset;
    local - local.rem_euclid(DAY) + offset
}

/// Estimate accuracy per model over the recent requests, with what calibration learnt.
fn accuracy(
    hub: &Hub,
    recent: &[Arc<crate::accounting::RequestRecord>],
) -> Vec<protocol::Accuracy> {
    #[derive(Default)]
    struct Sums {
        samples: u64,
        prompt: (f64, u64),
        completion: (f64, u64),
    }
    let mut by_model: std::collections::BTreeMap<&str, Sums> = Default::default();
    for record in recent {
        let sums = by_model.entry(&record.model).or_default();
        if let Some(a) = record.prompt_accuracy {
            sums.prompt.0 += a;
            sums.prompt.1 += 1;
        }
        if let Some(a) = record.completion_accuracy {
            sums.completion.0 += a;
            sums.completion.1 += 1;
        }
        if record.prompt_accuracy.is_some() || record.completion_accuracy.is_some() {
            sums.samples += 1;
        }
    }
    let calibration: HashMap<String, crate::accounting::Calibration> = hub
        .state
        .accounting
        .calibration_snapshot()
        .into_iter()
        .collect();
    let mean = |(sum, n): (f64, u64)| (n > 0).then(|| sum / n as f64);
    by_model
        .into_iter()
        .filter(|(_, s)| s.samples > 0)
        .map(|(model, sums)| {
            let learnt = calibration.get(model);
            protocol::Accuracy {
                model: model.to_string(),
                samples: sums.samples,
                prompt_accuracy: mean(sums.prompt),
                completion_accuracy: mean(sums.completion),
                ratio: learnt.and_then(|c| c.ratio()),
                calibration_samples: learnt.map_or(0, |c| c.samples),
            }
        })
        .collect()
}

/// The `stats` tick's data.
pub(super) fn stats(hub: &Hub) -> protocol::Stats {
    let accounting = &hub.state.accounting;
    // Only what the performance panel shows: the full snapshot (every metric and window) costs several times more.
    let snapshot = accounting.monitor.snapshot_of(
        &[Metric::Latency, Metric::Overhead, Metric::Ttft],
        &[Window::LastMinute],
        false,
    );
    let last_minute = |metric: &str| {
        snapshot
            .histograms
            .get(metric)
            .and_then(|w| w.get("last_minute"))
            .filter(|s| s.count > 0)
            .cloned()
    };
    let cache = hub.state.response_cache.stats();
    protocol::Stats {
        uptime_s: snapshot.uptime_s,
        requests_total: snapshot.requests_total,
        requests_per_s: snapshot.requests_per_s,
        error_rate: snapshot.error_rate,
        open_requests: accounting.in_flight.len(),
        rss_bytes: snapshot.rss_bytes,
        dashboard_clients: hub.clients(),
        store: hub.store.as_ref().map(|store| {
            let s = store.sink.stats();
            protocol::StoreStats {
                queue_depth: s.queued,
                dropped: s.dropped,
                healthy: s.healthy,
            }
        }),
        latency_us: last_minute("latency"),
        overhead_us: last_minute("overhead"),
        ttft_us: last_minute("ttft"),
        cache: protocol::CacheStats {
            hits: cache.hits,
            misses: cache.misses,
        },
        hub: protocol::HubStats {
            lost_events: hub.lost_events(),
            slow_clients_cut: hub.slow_clients_cut(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midnight_in_the_users_zone() {
        // 2026-01-02 03:04:05 UTC.
        let now = 1_767_323_045_000;
        let utc_midnight = 1_767_312_000_000;
        assert_eq!(local_midnight_ms(now, 0), utc_midnight);
        // UTC+1 (offset -60): local 04:04, local midnight = 23:00 UTC the day before.
        assert_eq!(local_midnight_ms(now, -60), utc_midnight - 3_600_000);
        // UTC-5 (offset 300): local 22:04 on Jan 1st, midnight = Jan 1st 05:00 UTC.
        assert_eq!(
            local_midnight_ms(now, 300),
            utc_midnight - 86_400_000 + 5 * 3_600_000
        );
    }
}
