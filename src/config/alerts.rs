//! `[alerts]`: rules, evaluation interval, webhook. The file writes shares as percents (80 = 80 %), converted
//! while deserializing.

use std::time::Duration;

use serde::Deserialize;

use super::{EnvSource, Secret, expand_vars, units};

/// Alert rules (`[alerts]`). A rule whose threshold is 0 (or, for context, whose list is empty) is off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    pub enabled: bool,
    /// How often rules are evaluated (on a background task, never on the request path; at least 10 ms).
    #[serde(rename = "interval_ms", deserialize_with = "units::ms")]
    pub interval: Duration,
    /// Shares of the context window, ascending; each fires once per session when crossed upward.
    #[serde(deserialize_with = "units::percents")]
    pub context_thresholds: Vec<f64>,
    /// Context thresholds from this share up are `critical`, those below `warning`.
    #[serde(
        rename = "context_critical_percent",
        deserialize_with = "units::percent"
    )]
    pub context_critical: f64,
    /// A context alert resolves when the session drops this share below its threshold (or is deleted).
    #[serde(
        rename = "context_hysteresis_percent",
        deserialize_with = "units::percent"
    )]
    pub context_hysteresis: f64,
    /// p95 end-to-end latency over `latency_window` above this, for `latency_for`, fires (0: off).
    pub latency_p95_ms: u64,
    #[serde(rename = "latency_window_secs", deserialize_with = "units::secs")]
    pub latency_window: Duration,
    #[serde(rename = "latency_for_secs", deserialize_with = "units::secs")]
    pub latency_for: Duration,
    /// Error share over `error_rate_window` (with at least `error_rate_min_requests` requests) that fires, and
    /// the share below which it resolves (half the firing share unless given).
    #[serde(rename = "error_rate_percent", deserialize_with = "units::percent")]
    pub error_rate: f64,
    #[serde(skip)]
    pub error_rate_clear: f64,
    #[serde(
        rename = "error_rate_clear_percent",
        deserialize_with = "units::percent_opt"
    )]
    pub error_rate_clear_given: Option<f64>,
    #[serde(rename = "error_rate_window_secs", deserialize_with = "units::secs")]
    pub error_rate_window: Duration,
    pub error_rate_min_requests: u64,
    /// This many upstream 429 answers from one provider within the window fire (0: off).
    pub upstream_429_count: u64,
    #[serde(rename = "upstream_429_window_secs", deserialize_with = "units::secs")]
    pub upstream_429_window: Duration,
    /// Resident memory budget in bytes (0: off); resolves below 90 % of it.
    #[serde(rename = "rss_budget_mb", deserialize_with = "units::mb")]
    pub rss_budget_bytes: u64,
    /// Store queue depth, as a share of its capacity, that fires (0: off); resolves below half of it.
    #[serde(rename = "store_backlog_percent", deserialize_with = "units::percent")]
    pub store_backlog: f64,
    /// Records dropped by the store within this window fire (resolves once a window passes without drops).
    #[serde(rename = "store_dropped_window_secs", deserialize_with = "units::secs")]
    pub store_dropped_window: Duration,
    /// The file's flat `webhook_*` keys; [`AlertsConfig::webhook`] is what the alert engine uses.
    pub webhook_url: Option<Secret>,
    pub webhook_format: WebhookFormat,
    #[serde(rename = "webhook_timeout_ms", deserialize_with = "units::ms")]
    pub webhook_timeout: Duration,
    pub webhook_max_attempts: u32,
    #[serde(rename = "webhook_backoff_ms", deserialize_with = "units::ms")]
    pub webhook_backoff: Duration,
    pub webhook_queue: usize,
    #[serde(skip)]
    pub webhook: Option<WebhookConfig>,
}

/// Where fired and resolved alerts are POSTed.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// A secret: Slack and Discord webhook URLs carry their token.
    pub url: Secret,
    pub format: WebhookFormat,
    /// Per attempt.
    pub timeout: Duration,
    pub max_attempts: u32,
    /// First wait between attempts; doubles each time.
    pub initial_backoff: Duration,
    /// Events waiting for delivery; more are dropped (and counted).
    pub queue: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"event": "fired"|"resolved", "alert": {…}}`.
    #[default]
    Generic,
    /// `{"text": "…"}` (Slack incoming webhooks).
    Slack,
    /// `{"content": "…"}` (Discord webhooks).
    Discord,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            interval: Duration::from_secs(1),
            context_thresholds: vec![0.80, 0.90, 0.95],
            context_critical: 0.95,
            context_hysteresis: 0.05,
            latency_p95_ms: 5000,
            latency_window: Duration::from_secs(60),
            latency_for: Duration::from_secs(300),
            error_rate: 0.10,
            error_rate_clear: 0.05,
            error_rate_clear_given: None,
            error_rate_window: Duration::from_secs(60),
            error_rate_min_requests: 20,
            upstream_429_count: 5,
            upstream_429_window: Duration::from_secs(60),
            rss_budget_bytes: 1024 * 1024 * 1024,
            store_backlog: 0.5,
            store_dropped_window: Duration::from_secs(60),
            webhook_url: None,
            webhook_format: WebhookFormat::Generic,
            webhook_timeout: Duration::from_millis(5_000),
            webhook_max_attempts: 5,
            webhook_backoff: Duration::from_millis(500),
            webhook_queue: 256,
            webhook: None,
        }
    }
}

impl AlertsConfig {
    /// Orders the thresholds, derives the clearing share, builds the webhook, and checks the values.
    pub fn resolve(&mut self, env: &dyn EnvSource, errors: &mut Vec<String>) {
        self.context_thresholds.retain(|v| *v > 0.0);
        self.context_thresholds.sort_by(f64::total_cmp);
        self.context_thresholds.dedup();
        self.error_rate_clear = self.error_rate_clear_given.unwrap_or(self.error_rate / 2.0);
        if self.error_rate > 0.0 && self.error_rate_clear > self.error_rate {
            errors.push(
                "alerts.error_rate_clear_percent must not exceed alerts.error_rate_percent"
                    .to_string(),
            );
        }
        for (name, zero) in [
            ("interval_ms", self.interval.is_zero()),
            ("latency_window_secs", self.latency_window.is_zero()),
            ("error_rate_window_secs", self.error_rate_window.is_zero()),
            (
                "upstream_429_window_secs",
                self.upstream_429_window.is_zero(),
            ),
            (
                "store_dropped_window_secs",
                self.store_dropped_window.is_zero(),
            ),
            ("webhook_timeout_ms", self.webhook_timeout.is_zero()),
            ("webhook_max_attempts", self.webhook_max_attempts == 0),
            ("webhook_queue", self.webhook_queue == 0),
        ] {
            if zero {
                errors.push(format!("alerts.{name} must be greater than 0"));
            }
        }
        self.interval = self.interval.max(Duration::from_millis(10));
        self.error_rate_min_requests = self.error_rate_min_requests.max(1);
        self.webhook = match self.webhook_url.as_ref().map(Secret::expose) {
            None | Some("") => None,
            Some(template) => match expand_vars(template, env) {
                Ok(url) => {
                    // The URL is a secret: errors name the problem, never the URL.
                    let usable = url.parse::<http::Uri>().is_ok_and(|uri| {
                        matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
                    });
                    if !usable {
                        errors.push(
                            "alerts.webhook_url is not an http:// or https:// URL".to_string(),
                        );
                    }
                    usable.then(|| WebhookConfig {
                        url: Secret::new(url),
                        format: self.webhook_format,
                        timeout: self.webhook_timeout,
                        max_attempts: self.webhook_max_attempts.max(1),
                        initial_backoff: self.webhook_backoff,
                        queue: self.webhook_queue.max(1),
                    })
                }
                Err(var) => {
                    tracing::warn!(var = %var, "alerts.webhook_url names an unset variable; no webhook");
                    None
                }
            },
        };
    }
}
