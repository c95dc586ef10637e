//! OpenTelemetry traces over OTLP/HTTP (`[telemetry] otlp_endpoint`): one span per proxied request, a child span
//! per upstream attempt, built from the finished [`RequestRecord`] and exported in batches by one task.
//!
//! The request path only offers the record to a bounded queue (`try_send`; full = a counted drop), exactly as
//! the store does: spans are built, encoded and sent off it. Spans are made from the record after the fact
//! (explicit start and end times) rather than through a live tracer, so the request path holds no span and pays
//! nothing while telemetry is off.
//!
//! Attributes follow the OpenTelemetry semantic conventions v1.37.0: GenAI client spans
//! (<https://github.com/open-telemetry/semantic-conventions/blob/v1.37.0/docs/gen-ai/gen-ai-spans.md>:
//! `gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.usage.*`,
//! `gen_ai.response.finish_reasons`, `server.address`, `error.type`) and HTTP spans
//! (<https://github.com/open-telemetry/semantic-conventions/blob/v1.37.0/docs/http/http-spans.md>:
//! `http.request.method`, `http.response.status_code`, `http.request.resend_count`). `gen_ai.system`, the
//! provider's name before v1.37.0, is set too for backends still reading it. No header, key, prompt or answer
//! text is ever an attribute.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use rand::Rng;
use tokio::sync::mpsc;

use crate::accounting::{RecordSink, RequestRecord};
use crate::config::{BaseUrl, Config, TelemetryConfig};

/// The largest answer read from the collector (an `ExportTraceServiceResponse` is a few bytes).
const MAX_COLLECTOR_ANSWER: usize = 64 * 1024;
/// Longest a shutdown waits for the last export.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);
/// Failed exports are logged at most this often.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);

/// What became of the spans.
#[derive(Debug, Default)]
pub struct TelemetryCounters {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full (the collector slower than the traffic, or down).
    pub dropped: AtomicU64,
    /// Spans lost with an export the collector refused or never answered.
    pub failed: AtomicU64,
}

impl TelemetryCounters {
    /// For `/api/stats`.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "spans_exported": self.exported.load(Ordering::Relaxed),
            "spans_dropped": self.dropped.load(Ordering::Relaxed),
            "spans_failed": self.failed.load(Ordering::Relaxed),
        })
    }
}

/// The [`RecordSink`] that turns finished requests into spans.
pub struct TelemetrySink {
    queue: mpsc::Sender<Arc<RequestRecord>>,
    counters: Arc<TelemetryCounters>,
}

impl TelemetrySink {
    pub fn counters(&self) -> &Arc<TelemetryCounters> {
        &self.counters
    }
}

impl RecordSink for TelemetrySink {
    fn offer(&self, record: &Arc<RequestRecord>) {
        if self.queue.try_send(Arc::clone(record)).is_err() {
            let spans = 1 + record.upstream_attempts.len() as u64;
            self.counters.dropped.fetch_add(spans, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// The running export task: stop it to send what is queued (bounded by the export timeout).
pub struct TelemetryTask {
    stop: tokio_util::sync::CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl TelemetryTask {
    /// Sends the spans still queued, then ends the task; gives up after `SHUTDOWN_WAIT` (a collector that is
    /// down does not hold the process).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(SHUTDOWN_WAIT, &mut self.done)
            .await
            .is_err()
        {
            self.done.abort();
            tracing::warn!("telemetry: the last spans were not sent before shutdown");
        }
    }
}

/// Starts the export task when `[telemetry] otlp_endpoint` is set; `None` otherwise. Call within the runtime.
pub fn start(
    config: &Config,
    instance_id: String,
) -> Result<Option<(Arc<TelemetrySink>, TelemetryTask)>, TelemetryError> {
    let settings = &config.telemetry;
    let Some(url) = settings.traces_url() else {
        return Ok(None);
    };
    let client = crate::net::build_https_client(Duration::from_secs(5))
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    // Protobuf, not JSON: OTLP/HTTP's default encoding that every collector accepts, about half the bytes,
    // and no serde layer over the generated types to compile.
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(settings.export_timeout)
        .with_http_client(Collector { client })
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attributes([
            KeyValue::new("service.instance.id", instance_id),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    exporter.set_resource(&resource);
    let (queue, receiver) = mpsc::channel(settings.queue);
    let counters = Arc::new(TelemetryCounters::default());
    let builder = SpanBuilder::new(config);
    let stop = tokio_util::sync::CancellationToken::new();
    let done = tokio::spawn(export_loop(
        receiver,
        (exporter, builder),
        settings.clone(),
        Arc::clone(&counters),
        stop.clone(),
    ));
    tracing::info!(endpoint = %url, "OpenTelemetry traces exported over OTLP/HTTP");
    Ok(Some((
        Arc::new(TelemetrySink { queue, counters }),
        TelemetryTask { stop, done },
    )))
}

/// Collects records into batches (up to `batch`, or what came within `export_interval` of the first) and sends
/// each. While one is being sent the queue holds the next, and drops beyond it.
async fn export_loop(
    mut receiver: mpsc::Receiver<Arc<RequestRecord>>,
    (exporter, builder): (opentelemetry_otlp::SpanExporter, SpanBuilder),
    settings: TelemetryConfig,
    counters: Arc<TelemetryCounters>,
    stop: tokio_util::sync::CancellationToken,
) {
    static LOG: crate::util::LogThrottle = crate::util::LogThrottle::new();
    let mut records = Vec::with_capacity(settings.batch);
    let mut stopping = false;
    while !stopping {
        tokio::select! {
            received = receiver.recv() => match received {
                Some(first) => records.push(first),
                None => return,
            },
            () = stop.cancelled() => stopping = true,
        }
        let deadline = tokio::time::Instant::now() + settings.export_interval;
        while records.len() < settings.batch {
            if stopping {
                match receiver.try_recv() {
                    Ok(record) => records.push(record),
                    Err(_) => break,
                }
                continue;
            }
            tokio::select! {
                received = tokio::time::timeout_at(deadline, receiver.recv()) => match received {
                    Ok(Some(record)) => records.push(record),
                    Ok(None) | Err(_) => break,
                },
                () = stop.cancelled() => stopping = true,
            }
        }
        if records.is_empty() {
            continue;
        }
        let spans: Vec<SpanData> = records
            .drain(..)
            .flat_map(|record| builder.spans(&record))
            .collect();
        let count = spans.len() as u64;
        match exporter.export(spans).await {
            Ok(()) => {
                counters.exported.fetch_add(count, Ordering::Relaxed);
            }
            Err(error) => {
                counters.failed.fetch_add(count, Ordering::Relaxed);
                if LOG.ready(FAILURE_LOG_EVERY) {
                    tracing::warn!(
                        %error,
                        spans_failed = counters.failed.load(Ordering::Relaxed),
                        spans_dropped = counters.dropped.load(Ordering::Relaxed),
                        "OTLP export failed; spans lost (requests are unaffected)"
                    );
                }
            }
        }
    }
}

/// Makes the spans of one record.
struct SpanBuilder {
    scope: InstrumentationScope,
    /// Provider key → its host and port, for `server.address`/`server.port`.
    servers: HashMap<String, (String, u16)>,
}

impl SpanBuilder {
    fn new(config: &Config) -> SpanBuilder {
        let servers = config
            .providers
            .values()
            .filter_map(|provider| {
                let BaseUrl::Ready(url) = &provider.base_url else {
                    return None;
                };
                let uri = url.parse::<http::Uri>().ok()?;
                let host = uri.host()?.to_string();
                let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                    Some("http") => 80,
                    _ => 443,
                });
                Some((provider.key.clone(), (host, port)))
            })
            .collect();
        SpanBuilder {
            scope: InstrumentationScope::builder("kimi-proxy")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            servers,
        }
    }

    /// The request's span, then one child per upstream attempt.
    fn spans(&self, record: &RequestRecord) -> Vec<SpanData> {
        let mut rng = rand::rng();
        let trace_id = TraceId::from(rng.random::<u128>().max(1));
        let root_id = span_id(&mut rng);
        let start = UNIX_EPOCH + Duration::from_millis(record.started_at_ms.max(0) as u64);
        let end = start + Duration::from_micros(record.latency_us);
        let server = self.servers.get(&record.provider);

        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.provider.name", record.provider.clone()),
            KeyValue::new("gen_ai.system", record.provider.clone()),
            KeyValue::new("gen_ai.request.model", record.model.clone()),
            KeyValue::new("gen_ai.usage.input_tokens", record.prompt_tokens as i64),
            KeyValue::new(
                "gen_ai.usage.output_tokens",
                record.completion_tokens as i64,
            ),
            KeyValue::new("http.response.status_code", i64::from(record.status)),
            KeyValue::new("kimi_proxy.request.id", record.id as i64),
            KeyValue::new("kimi_proxy.upstream_model", record.upstream_model.clone()),
            KeyValue::new("kimi_proxy.client_api", record.client_api),
            KeyValue::new("kimi_proxy.streaming", record.streaming),
            KeyValue::new("kimi_proxy.cache_hit", record.cache_hit),
            KeyValue::new("kimi_proxy.tokens_estimated", record.tokens_estimated),
            KeyValue::new("kimi_proxy.cost_usd", record.cost_usd),
            KeyValue::new("kimi_proxy.attempts", i64::from(record.attempts)),
        ];
        if let Some(reason) = &record.finish_reason {
            attributes.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(Array::String(vec![StringValue::from(reason.clone())])),
            ));
        }
        if let Some(ttft) = record.ttft_us {
            attributes.push(KeyValue::new("kimi_proxy.ttft_us", ttft as i64));
        }
        if let Some((host, port)) = server {
            attributes.push(KeyValue::new("server.address", host.clone()));
            attributes.push(KeyValue::new("server.port", i64::from(*port)));
        }
        let error = record
            .error_kind
            .clone()
            .or_else(|| (record.status >= 400).then(|| record.status.to_string()));
        let status = match &error {
            Some(kind) if record.error_kind.is_some() || record.status >= 500 => {
                Status::error(kind.clone())
            }
            _ => Status::Unset,
        };
        if let Some(kind) = error {
            attributes.push(KeyValue::new("error.type", kind));
        }
        let mut spans = Vec::with_capacity(1 + record.upstream_attempts.len());
        spans.push(self.span(
            SpanContext::new(
                trace_id,
                root_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            SpanId::INVALID,
            (SpanKind::Server, format!("chat {}", record.model)),
            (start, end),
            attributes,
            status,
        ));

        for (index, attempt) in record.upstream_attempts.iter().enumerate() {
            let attempt_start = start + Duration::from_micros(attempt.offset_us);
            let attempt_end = attempt_start + Duration::from_micros(attempt.duration_us);
            let mut attributes = vec![KeyValue::new("http.request.method", "POST")];
            if index > 0 {
                attributes.push(KeyValue::new("http.request.resend_count", index as i64));
            }
            if let Some((host, port)) = server {
                attributes.push(KeyValue::new("server.address", host.clone()));
                attributes.push(KeyValue::new("server.port", i64::from(*port)));
            }
            let status = match attempt.status {
                Some(code) => {
                    attributes.push(KeyValue::new("http.response.status_code", i64::from(code)));
                    if code >= 400 {
                        attributes.push(KeyValue::new("error.type", code.to_string()));
                        Status::error(code.to_string())
                    } else {
                        Status::Unset
                    }
                }
                None => {
                    let failure = attempt.failure.unwrap_or("connect");
                    attributes.push(KeyValue::new("error.type", failure));
                    Status::error(failure)
                }
            };
            spans.push(self.span(
                SpanContext::new(
                    trace_id,
                    span_id(&mut rng),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::default(),
                ),
                root_id,
                (SpanKind::Client, "POST".to_string()),
                (attempt_start, attempt_end),
                attributes,
                status,
            ));
        }
        spans
    }

    fn span(
        &self,
        context: SpanContext,
        parent: SpanId,
        (kind, name): (SpanKind, String),
        (start, end): (SystemTime, SystemTime),
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanData {
        SpanData {
            span_context: context,
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: kind,
            name: name.into(),
            start_time: start,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

fn span_id(rng: &mut impl Rng) -> SpanId {
    SpanId::from(rng.random::<u64>().max(1))
}

/// The exporter's HTTP transport: the proxy's own pooled hyper client (rustls, the tokio runtime), so no
/// second HTTP stack is built in.
#[derive(Debug)]
struct Collector {
    client: crate::net::HttpClient,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Collector {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let response = self
            .client
            .request(http::Request::from_parts(parts, Full::new(body)))
            .await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_COLLECTOR_ANSWER)
            .collect()
            .await?
            .to_bytes();
        Ok(http::Response::from_parts(parts, body))
    }
}
