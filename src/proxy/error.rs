//! Errors the proxy itself produces, rendered through the one HTTP error type (`crate::http_error`) in the
//! OpenAI error format so every client SDK can read them.
//! Errors that come from the upstream are never rewritten: their status and body pass through.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

pub use crate::http_error::{ErrorSource, HttpError, PROXY_ERROR_HEADER};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request body is not valid JSON: {message} (line {line}, column {column})")]
    InvalidJson {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error(
        "the request body did not arrive in time (see [server] body_read_timeout_ms and body_idle_timeout_ms)"
    )]
    BodyTimeout,
    #[error("{}", unknown_model_message(.model, .suggestions))]
    UnknownModel {
        model: String,
        suggestions: Vec<String>,
    },
    #[error(
        "provider `{provider}` has no API key: environment variable {var} is not set (set it, or send your own key in the Authorization header)"
    )]
    MissingApiKey { provider: String, var: String },
    #[error(
        "provider `{provider}` is not usable: environment variable {var} (used in its base_url) is not set"
    )]
    MissingBaseUrlVar { provider: String, var: String },
    #[error("upstream `{provider}` is unreachable: {reason}")]
    UpstreamUnreachable { provider: String, reason: String },
    #[error("upstream `{provider}` did not answer within {timeout_ms} ms ({phase})")]
    UpstreamTimeout {
        provider: String,
        phase: &'static str,
        timeout_ms: u128,
    },
    #[error(
        "provider `{provider}` budget ({limit}) is used up: retry in {} s",
        retry_after.as_secs_f64().ceil()
    )]
    RateLimited {
        provider: String,
        limit: &'static str,
        retry_after: std::time::Duration,
    },
    #[error(
        "pass-through (X-Target-Base-URL) is disabled: list the allowed targets in [passthrough] allowed"
    )]
    PassthroughDisabled,
    #[error("invalid X-Target-Base-URL: {0}")]
    InvalidTarget(String),
    #[error("X-Target-Base-URL `{0}` is not in [passthrough] allowed")]
    TargetNotAllowed(String),
    #[error("X-Target-Base-URL refused: {0}")]
    ForbiddenTarget(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// A Responses request the translation to chat completions refuses (or an answer it cannot translate),
    /// answered with the OpenAI error the API itself would give (e.g. the 404 of an unknown
    /// `previous_response_id`).
    #[error("{}", .0.message)]
    Responses(kimi_dialects::responses::TranslateError),
}

fn unknown_model_message(model: &str, suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        format!("The model `{model}` does not exist in the kimi-proxy catalog.")
    } else {
        format!(
            "The model `{model}` does not exist in the kimi-proxy catalog. Closest matches: {}.",
            suggestions.join(", ")
        )
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::InvalidJson { .. }
            | ProxyError::InvalidRequest(_)
            | ProxyError::BodyRead(_)
            | ProxyError::InvalidTarget(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UnknownModel { .. } | ProxyError::NotFound { .. } => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::MissingApiKey { .. } | ProxyError::MissingBaseUrlVar { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden(_)
            | ProxyError::PassthroughDisabled
            | ProxyError::TargetNotAllowed(_)
            | ProxyError::ForbiddenTarget(_) => StatusCode::FORBIDDEN,
            ProxyError::Responses(error) => {
                StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST)
            }
        }
    }

    /// Who was at fault.
    pub fn source_of_fault(&self) -> ErrorSource {
        match self {
            ProxyError::InvalidJson { .. }
            | ProxyError::InvalidRequest(_)
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BodyRead(_)
            | ProxyError::BodyTimeout
            | ProxyError::UnknownModel { .. }
            | ProxyError::InvalidTarget(_)
            | ProxyError::TargetNotAllowed(_)
            | ProxyError::ForbiddenTarget(_)
            | ProxyError::Unauthorized(_)
            | ProxyError::Forbidden(_)
            | ProxyError::NotFound { .. }
            | ProxyError::MethodNotAllowed(_) => ErrorSource::Client,
            ProxyError::MissingApiKey { .. }
            | ProxyError::MissingBaseUrlVar { .. }
            | ProxyError::RateLimited { .. }
            | ProxyError::PassthroughDisabled => ErrorSource::Proxy,
            ProxyError::UpstreamUnreachable { .. } | ProxyError::UpstreamTimeout { .. } => {
                ErrorSource::Upstream
            }
            ProxyError::Responses(error) if error.status >= 500 => ErrorSource::Upstream,
            ProxyError::Responses(_) => ErrorSource::Client,
        }
    }

    /// OpenAI's `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::NOT_FOUND
            | StatusCode::REQUEST_TIMEOUT => "invalid_request_error",
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::UNAUTHORIZED => "invalid_request_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::SERVICE_UNAVAILABLE => "configuration_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            _ => "upstream_error",
        }
    }

    /// A stable machine-readable code (`error.code`), also the value of the `x-kimi-proxy-error` header.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::InvalidJson { .. } => "invalid_json",
            ProxyError::InvalidRequest(_) => "invalid_request",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BodyRead(_) => "body_read_error",
            ProxyError::BodyTimeout => "body_timeout",
            ProxyError::UnknownModel { .. } => "model_not_found",
            ProxyError::MissingApiKey { .. } => "missing_api_key",
            ProxyError::MissingBaseUrlVar { .. } => "missing_base_url_variable",
            ProxyError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::RateLimited { .. } => "rate_limit_exceeded",
            ProxyError::NotFound { .. } => "not_found",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::Unauthorized(_) => "invalid_api_key",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::PassthroughDisabled => "passthrough_disabled",
            ProxyError::InvalidTarget(_) => "invalid_target",
            ProxyError::TargetNotAllowed(_) => "target_not_allowed",
            ProxyError::ForbiddenTarget(_) => "target_address_forbidden",
            ProxyError::Responses(error) => match error.code.as_deref() {
                Some("previous_response_not_found") => "previous_response_not_found",
                Some("unsupported_tool_choice") => "unsupported_tool_choice",
                _ if error.status >= 500 => "upstream_answer_untranslatable",
                _ if error.status == 404 => "not_found",
                _ => "invalid_request",
            },
        }
    }

    /// The error as every HTTP surface renders it.
    pub fn to_http(&self) -> HttpError {
        HttpError {
            status: self.status(),
            kind: self.error_type(),
            code: self.code(),
            message: self.to_string(),
            param: matches!(self, ProxyError::UnknownModel { .. }).then_some("model"),
            source: self.source_of_fault(),
        }
    }

    pub fn body_json(&self) -> serde_json::Value {
        if let ProxyError::Responses(error) = self {
            return error.to_value();
        }
        self.to_http().body_json()
    }
}

impl ProxyError {
    /// The headers every rendering of the error carries, whatever the client's API: the proxy's error code
    /// and, for a budget refusal, `Retry-After`.
    pub fn decorate(&self, headers: &mut http::HeaderMap) {
        headers.insert(PROXY_ERROR_HEADER, HeaderValue::from_static(self.code()));
        if let ProxyError::RateLimited { retry_after, .. } = self {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let mut response = match &self {
            // The translation's own error body (its `param` and `code` are the API's).
            ProxyError::Responses(_) => {
                let mut response = (self.status(), axum::Json(self.body_json())).into_response();
                response.headers_mut().insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                response
            }
            _ => self.to_http().into_response(),
        };
        self.decorate(response.headers_mut());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_renders_openai_shape() {
        let errors = [
            ProxyError::InvalidJson {
                message: "x".into(),
                line: 1,
                column: 2,
            },
            ProxyError::BodyTooLarge { limit: 10 },
            ProxyError::UnknownModel {
                model: "m".into(),
                suggestions: vec!["a".into()],
            },
            ProxyError::MissingApiKey {
                provider: "p".into(),
                var: "V".into(),
            },
            ProxyError::UpstreamUnreachable {
                provider: "p".into(),
                reason: "r".into(),
            },
            ProxyError::UpstreamTimeout {
                provider: "p".into(),
                phase: "first byte",
                timeout_ms: 5,
            },
        ];
        let statuses = [400, 413, 404, 503, 502, 504];
        for (e, status) in errors.iter().zip(statuses) {
            assert_eq!(e.status().as_u16(), status);
            let body = e.body_json();
            assert!(body["error"]["message"].is_string());
            assert!(body["error"]["type"].is_string());
            assert!(body["error"]["code"].is_string());
        }
    }

    #[test]
    fn missing_key_names_the_variable() {
        let e = ProxyError::MissingApiKey {
            provider: "nvidia".into(),
            var: "NVIDIA_API_KEY".into(),
        };
        assert!(e.to_string().contains("NVIDIA_API_KEY"));
        assert!(e.to_string().contains("nvidia"));
    }
}
