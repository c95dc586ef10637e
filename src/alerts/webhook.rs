//! POSTs fired and resolved alerts to a webhook: generic JSON, or Slack's / Discord's message shape.
//!
//! One sender task delivers events in order through a bounded queue (full: the event is dropped and counted).
//! Each delivery is retried with exponential backoff up to the configured attempts, each attempt under a
//! timeout; 2xx is delivered, other 4xx (but 429) are not worth retrying. The URL is a secret (Slack and
//! Discord put their token in it): it is never logged, nor shown in stats.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::Full;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AlertEvent, EventKind, Severity};
use crate::config::{WebhookConfig, WebhookFormat};
use crate::net::{HttpClient, build_https_client};

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    attempts: AtomicU64,
}

/// Webhook counters for `/api/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookStats {
    pub format: &'static str,
    /// Events delivered (a 2xx answer).
    pub delivered: u64,
    /// Events given up on after their attempts, or refused with a 4xx.
    pub failed: u64,
    /// Events not queued: the queue was full.
    pub dropped: u64,
    /// HTTP attempts made in total.
    pub attempts: u64,
}

pub struct Webhook {
    config: WebhookConfig,
    sender: mpsc::Sender<AlertEvent>,
    receiver: Mutex<Option<mpsc::Receiver<AlertEvent>>>,
    counters: Arc<Counters>,
}

impl Webhook {
    pub fn new(config: &WebhookConfig) -> Webhook {
        let (sender, receiver) = mpsc::channel(config.queue.max(1));
        Webhook {
            config: config.clone(),
            sender,
            receiver: Mutex::new(Some(receiver)),
            counters: Arc::new(Counters::default()),
        }
    }

    /// Queues an event without waiting; a full queue drops it (counted).
    pub fn offer(&self, event: &AlertEvent) {
        if self.sender.try_send(event.clone()).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                id = event.alert.id,
                "alert webhook queue full: event dropped"
            );
        }
    }

    pub fn stats(&self) -> WebhookStats {
        let c = &self.counters;
        WebhookStats {
            format: match self.config.format {
                WebhookFormat::Generic => "generic",
                WebhookFormat::Slack => "slack",
                WebhookFormat::Discord => "discord",
            },
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            attempts: c.attempts.load(Ordering::Relaxed),
        }
    }

    /// Starts the sender task (once); it stops at `shutdown`.
    pub fn start(&self, shutdown: CancellationToken) {
        let Some(mut receiver) = self.receiver.lock().take() else {
            return;
        };
        let uri = match self.config.url.expose().parse::<Uri>() {
            Ok(uri) => uri,
            Err(_) => {
                tracing::error!("alerts.webhook_url is not a valid URL; webhook off");
                return;
            }
        };
        let client = match build_https_client(self.config.timeout) {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "cannot build the webhook client; webhook off");
                return;
            }
        };
        let config = self.config.clone();
        let counters = Arc::clone(&self.counters);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = receiver.recv() => event,
                    () = shutdown.cancelled() => None,
                };
                let Some(event) = event else { break };
                let body = Bytes::from(render(config.format, &event));
                tokio::select! {
                    () = deliver(&client, &uri, &config, &counters, body, event.alert.id) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        });
    }
}

/// Sends one event, retrying transient failures.
async fn deliver(
    client: &HttpClient,
    uri: &Uri,
    config: &WebhookConfig,
    counters: &Counters,
    body: Bytes,
    id: i64,
) {
    let mut backoff = config.initial_backoff;
    for attempt in 1..=config.max_attempts {
        counters.attempts.fetch_add(1, Ordering::Relaxed);
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .header(
                header::USER_AGENT,
                HeaderValue::from_static("kimi-proxy-alerts"),
            )
            .body(Full::new(body.clone()));
        let Ok(request) = request else {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let outcome = tokio::time::timeout(config.timeout, client.request(request)).await;
        let retry = match outcome {
            Ok(Ok(response)) if response.status().is_success() => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(id, attempt, "alert webhook delivered");
                return;
            }
            Ok(Ok(response)) => {
                let status = response.status();
                tracing::warn!(
                    id,
                    attempt,
                    status = status.as_u16(),
                    "alert webhook refused"
                );
                status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
            }
            Ok(Err(error)) => {
                // The error's text may contain the host, never the path (where tokens live).
                tracing::warn!(id, attempt, error = %error, "alert webhook unreachable");
                true
            }
            Err(_) => {
                tracing::warn!(
                    id,
                    attempt,
                    timeout_ms = config.timeout.as_millis() as u64,
                    "alert webhook timed out"
                );
                true
            }
        };
        if !retry || attempt == config.max_attempts {
            break;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    counters.failed.fetch_add(1, Ordering::Relaxed);
}

/// The request body for `format`.
pub fn render(format: WebhookFormat, event: &AlertEvent) -> Vec<u8> {
    let value = match format {
        WebhookFormat::Generic => serde_json::to_value(event).unwrap_or_default(),
        WebhookFormat::Slack => serde_json::json!({ "text": summary(event) }),
        WebhookFormat::Discord => serde_json::json!({ "content": summary(event) }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// One line for chat webhooks.
fn summary(event: &AlertEvent) -> String {
    let alert = &event.alert;
    let what = match (event.event, alert.severity) {
        (EventKind::Resolved, _) => "RESOLVED",
        (_, Severity::Critical) => "CRITICAL",
        (_, Severity::Warning) => "WARNING",
        (_, Severity::Info) => "INFO",
    };
    format!(
        "[kimi-proxy] {what} {} #{}: {}",
        alert.kind.as_str(),
        alert.id,
        alert.message
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::alerts::{Alert, AlertKind};

    fn event() -> AlertEvent {
        AlertEvent {
            event: EventKind::Fired,
            alert: Alert {
                id: 3,
                kind: AlertKind::ErrorRate,
                severity: Severity::Critical,
                session_id: None,
                subject: None,
                message: "error rate 40%".into(),
                value: 0.4,
                threshold: 0.1,
                fired_at_ms: 1,
                resolved_at_ms: None,
                resolution: None,
                acked_at_ms: None,
            },
        }
    }

    #[test]
    fn formats() {
        let generic: serde_json::Value =
            serde_json::from_slice(&render(WebhookFormat::Generic, &event())).unwrap();
        assert_eq!(generic["event"], "fired");
        assert_eq!(generic["alert"]["kind"], "error_rate");
        assert_eq!(generic["alert"]["id"], 3);
        let slack: serde_json::Value =
            serde_json::from_slice(&render(WebhookFormat::Slack, &event())).unwrap();
        assert_eq!(
            slack["text"],
            "[kimi-proxy] CRITICAL error_rate #3: error rate 40%"
        );
        let discord: serde_json::Value =
            serde_json::from_slice(&render(WebhookFormat::Discord, &event())).unwrap();
        assert!(discord["content"].as_str().unwrap().contains("#3"));
    }
}
