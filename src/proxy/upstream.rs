//! One pooled HTTP client per provider, and sending with retries that stop once the client could have seen a
//! byte.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::Full;
use hyper::body::Incoming;
use rand::Rng;
use tokio::time::Instant;

use super::error::ProxyError;
use crate::config::{Provider, RetryPolicy};
use crate::net::{HttpClient, find_forbidden};

/// Everything needed to (re)build the upstream request for each attempt.
pub struct OutgoingRequest {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The upstream's answer, with how many attempts it took.
pub struct UpstreamResponse {
    pub response: Response<Incoming>,
    pub attempts: u32,
    /// Each attempt: its start, its length, its status (`None`: could not connect). For the trace.
    pub trail: Vec<AttemptTiming>,
}

/// One attempt of [`send_with_retries`], as the trace shows it.
#[derive(Debug, Clone, Copy)]
pub struct AttemptTiming {
    pub started: std::time::Instant,
    pub took: Duration,
    pub status: Option<u16>,
    /// Why no status came back: `timeout` (connect or first byte) or `connect` (refused, unreachable, TLS…).
    pub failure: Option<&'static str>,
}

/// Statuses worth another attempt: rate limits and transient gateway failures, and Anthropic's 529
/// `overloaded_error` ("the API is temporarily overloaded", <https://docs.claude.com/en/api/errors>).
fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504 | 529)
}

/// Sends `request`, retrying connect failures and retryable statuses with exponential backoff and jitter,
/// honouring `Retry-After`, within the provider's retry deadline. Nothing of the response has reached the
/// client while this runs, so retrying is always safe here; once this returns, no retry ever happens.
///
/// Every 429 answer, retried or not, is counted in `throttled` (for the alerts' 429-burst rule).
pub async fn send_with_retries(
    client: &HttpClient,
    provider: &Provider,
    request: &OutgoingRequest,
    throttled: &AtomicU64,
) -> Result<UpstreamResponse, ProxyError> {
    send_traced(client, provider, request, throttled, &mut Vec::new()).await
}

/// [`send_with_retries`], each attempt noted in `trail` as it ends: what a failed send leaves there is what
/// its trace shows (a successful one moves it into [`UpstreamResponse::trail`]).
pub async fn send_traced(
    client: &HttpClient,
    provider: &Provider,
    request: &OutgoingRequest,
    throttled: &AtomicU64,
    trail: &mut Vec<AttemptTiming>,
) -> Result<UpstreamResponse, ProxyError> {
    let started = Instant::now();
    let policy = &provider.retry;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let attempt_started = std::time::Instant::now();
        let mut builder = Request::builder()
            .method(request.method.clone())
            .uri(request.uri.clone());
        if let Some(headers) = builder.headers_mut() {
            headers.clone_from(&request.headers);
            headers.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(request.body.len()),
            );
        }
        let outgoing = builder.body(Full::new(request.body.clone())).map_err(|e| {
            ProxyError::InvalidRequest(format!("cannot build the upstream request: {e}"))
        })?;

        let result =
            tokio::time::timeout(provider.timeouts.first_byte, client.request(outgoing)).await;
        let wait = match result {
            Err(_) => {
                trail.push(AttemptTiming {
                    started: attempt_started,
                    took: attempt_started.elapsed(),
                    status: None,
                    failure: Some("timeout"),
                });
                return Err(ProxyError::UpstreamTimeout {
                    provider: provider.key.clone(),
                    phase: "waiting for the response headers",
                    timeout_ms: provider.timeouts.first_byte.as_millis(),
                });
            }
            Ok(Ok(response)) => {
                trail.push(AttemptTiming {
                    started: attempt_started,
                    took: attempt_started.elapsed(),
                    status: Some(response.status().as_u16()),
                    failure: None,
                });
                if response.status() == StatusCode::TOO_MANY_REQUESTS {
                    throttled.fetch_add(1, Ordering::Relaxed);
                }
                if !retryable_status(response.status()) {
                    return Ok(UpstreamResponse {
                        response,
                        attempts: attempt,
                        trail: std::mem::take(trail),
                    });
                }
                let wait =
                    retry_after(response.headers()).unwrap_or_else(|| backoff(policy, attempt));
                if !may_retry(policy, attempt, started, wait) {
                    return Ok(UpstreamResponse {
                        response,
                        attempts: attempt,
                        trail: std::mem::take(trail),
                    });
                }
                tracing::debug!(
                    provider = %provider.key,
                    status = response.status().as_u16(),
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "retrying"
                );
                wait
            }
            Ok(Err(error)) => {
                trail.push(AttemptTiming {
                    started: attempt_started,
                    took: attempt_started.elapsed(),
                    status: None,
                    failure: Some(if is_timeout(&error) {
                        "timeout"
                    } else {
                        "connect"
                    }),
                });
                if let Some(forbidden) = find_forbidden(&error) {
                    return Err(ProxyError::ForbiddenTarget(forbidden.to_string()));
                }
                let timed_out = is_timeout(&error);
                let connect = error.is_connect();
                let wait = backoff(policy, attempt);
                // Only failures to connect are retried: after the request was sent the provider may already
                // be generating (and billing) an answer.
                if !(connect && may_retry(policy, attempt, started, wait)) {
                    return Err(if timed_out {
                        ProxyError::UpstreamTimeout {
                            provider: provider.key.clone(),
                            phase: "connecting",
                            timeout_ms: provider.timeouts.connect.as_millis(),
                        }
                    } else {
                        ProxyError::UpstreamUnreachable {
                            provider: provider.key.clone(),
                            reason: describe_error(&error),
                        }
                    });
                }
                tracing::debug!(provider = %provider.key, attempt, error = %describe_error(&error), "retrying");
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn may_retry(policy: &RetryPolicy, attempt: u32, started: Instant, wait: Duration) -> bool {
    attempt < policy.max_attempts && started.elapsed() + wait <= policy.deadline
}

/// Exponential backoff with "equal jitter": half the step is fixed, half random, so retries from many clients
/// spread out without ever collapsing to zero.
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let step = policy
        .initial_backoff
        .saturating_mul(1u32 << exponent)
        .min(policy.max_backoff);
    let half = step / 2;
    let jitter = rand::rng().random_range(0..=half.as_micros() as u64);
    half + Duration::from_micros(jitter)
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(86_400.0)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn is_timeout(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        if e.to_string().contains("timed out") {
            return true;
        }
        source = e.source();
    }
    false
}

/// The error and its causes on one line.
fn describe_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let cause = e.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            deadline: Duration::from_secs(10),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy();
        for attempt in 1..10 {
            let step = Duration::from_millis((100u64 << (attempt - 1)).min(1000));
            let b = backoff(&p, attempt);
            assert!(b >= step / 2 && b <= step, "attempt {attempt}: {b:?}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
