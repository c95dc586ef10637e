//! The one error type every HTTP surface answers with (the proxy routes, the guard, the admin API), rendered in
//! the OpenAI error format that every client SDK reads: `{"error": {"message", "type", "param", "code"}}`, with
//! `x-kimi-proxy-error: <code>` so a client can tell the proxy's own errors from the provider's. It also says who
//! was at fault, as pingora's `ErrorSource` does. Clients of other APIs (Anthropic Messages) get the same error
//! rendered in their format by their adapter.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// Marks a response whose error was produced by kimi-proxy rather than by the provider.
pub const PROXY_ERROR_HEADER: &str = "x-kimi-proxy-error";

/// Who caused an error: the client (a request the proxy cannot serve as sent), the proxy (its configuration, its
/// own limits, its store), or the upstream (unreachable, too slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    Client,
    Proxy,
    Upstream,
}

impl ErrorSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorSource::Client => "client",
            ErrorSource::Proxy => "proxy",
            ErrorSource::Upstream => "upstream",
        }
    }
}

/// An error answered over HTTP.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    /// OpenAI's `error.type` (`invalid_request_error`, `permission_error`, …).
    pub kind: &'static str,
    /// A stable machine-readable code (`error.code`, and the `x-kimi-proxy-error` header).
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, when one is (`error.param`).
    pub param: Option<&'static str>,
    pub source: ErrorSource,
}

impl HttpError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> HttpError {
        let source = if status.is_server_error() {
            ErrorSource::Proxy
        } else {
            ErrorSource::Client
        };
        HttpError {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            source,
        }
    }

    /// A 400 the client caused.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        )
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::NOT_FOUND, "not_found_error", code, message)
    }

    /// A 401: no or a wrong credential.
    pub fn unauthorized(message: impl Into<String>) -> HttpError {
        HttpError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            message,
        )
    }

    /// A 403: the request is not allowed (origin, host, target).
    pub fn forbidden(message: impl Into<String>) -> HttpError {
        HttpError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "forbidden",
            message,
        )
    }

    pub fn body_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl HttpError {
    /// The error in the format of the API the client speaks: Anthropic's for a Messages client, OpenAI's
    /// otherwise (chat completions and Responses share it).
    pub fn into_response_for(self, dialect: kimi_dialects::Dialect) -> Response {
        if dialect != kimi_dialects::Dialect::Messages {
            return self.into_response();
        }
        let body = kimi_dialects::anthropic::error_body(self.status.as_u16(), &self.message);
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(PROXY_ERROR_HEADER, HeaderValue::from_static(self.code));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body_json())).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(PROXY_ERROR_HEADER, HeaderValue::from_static(self.code));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renders_the_openai_error_shape_with_its_code() {
        let response =
            HttpError::bad_request("invalid_parameter", "limit must be a number").into_response();
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()[PROXY_ERROR_HEADER], "invalid_parameter");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        let error = HttpError::unauthorized("no key").body_json();
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert_eq!(error["error"]["code"], "invalid_api_key");
        assert!(error["error"]["param"].is_null());
    }
}
