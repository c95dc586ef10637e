//! `[telemetry]`: OpenTelemetry traces over OTLP/HTTP, off unless an endpoint is set.

use std::time::Duration;

use serde::Deserialize;

use super::{EnvSource, expand_vars, units};

pub const DEFAULT_SERVICE_NAME: &str = "kimi-proxy";

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base (`http://host:4318`); spans go to `{otlp_endpoint}/v1/traces`. `${VAR}`
    /// is expanded. Unset: no traces.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Spans waiting for export; beyond it new ones are dropped (counted), never waited for.
    pub queue: usize,
    /// Spans per export request at most.
    pub batch: usize,
    /// Longest a finished request's span waits before its batch is sent.
    #[serde(rename = "export_interval_ms", deserialize_with = "units::ms")]
    pub export_interval: Duration,
    /// One export request's deadline (retries included).
    #[serde(rename = "export_timeout_ms", deserialize_with = "units::ms")]
    pub export_timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: DEFAULT_SERVICE_NAME.to_string(),
            queue: 4096,
            batch: 512,
            export_interval: Duration::from_millis(1000),
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl TelemetryConfig {
    pub(super) fn resolve(&mut self, env: &dyn EnvSource, errors: &mut Vec<String>) {
        if let Some(endpoint) = &self.otlp_endpoint {
            match expand_vars(endpoint, env) {
                Ok(value) => {
                    let value = value.trim_end_matches('/').to_string();
                    let parsed = value.parse::<http::Uri>();
                    let scheme_ok = parsed.as_ref().is_ok_and(|uri| {
                        matches!(uri.scheme_str(), Some("http" | "https"))
                            && uri.authority().is_some()
                    });
                    if scheme_ok {
                        self.otlp_endpoint = Some(value);
                    } else {
                        errors.push(format!(
                            "telemetry.otlp_endpoint must be an http(s) URL (http://host:4318), not `{value}`"
                        ));
                    }
                }
                Err(name) => errors.push(format!(
                    "telemetry.otlp_endpoint: the environment variable `{name}` is not set"
                )),
            }
        }
        if self.service_name.trim().is_empty() {
            errors.push("telemetry.service_name must not be empty".into());
        }
        for (name, zero) in [
            ("queue", self.queue == 0),
            ("batch", self.batch == 0),
            ("export_interval_ms", self.export_interval.is_zero()),
            ("export_timeout_ms", self.export_timeout.is_zero()),
        ] {
            if zero {
                errors.push(format!("telemetry.{name} must be at least 1"));
            }
        }
    }

    /// The URL spans are posted to (OTLP/HTTP's default path for traces).
    pub fn traces_url(&self) -> Option<String> {
        self.otlp_endpoint
            .as_ref()
            .map(|base| format!("{base}/v1/traces"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn resolved(endpoint: &str) -> (TelemetryConfig, Vec<String>) {
        let mut config = TelemetryConfig {
            otlp_endpoint: Some(endpoint.to_string()),
            ..TelemetryConfig::default()
        };
        let mut errors = Vec::new();
        let env = |name: &str| (name == "COLLECTOR").then(|| "collector:4318".to_string());
        config.resolve(&env, &mut errors);
        (config, errors)
    }

    #[test]
    fn endpoint_is_checked_and_expanded() {
        let (config, errors) = resolved("http://${COLLECTOR}/");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            config.traces_url().unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(resolved("collector:4318").1.len(), 1);
        assert_eq!(resolved("http://${UNSET}").1.len(), 1);
        assert!(TelemetryConfig::default().traces_url().is_none());
    }
}
