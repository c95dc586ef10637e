//! OpenAI-format errors for requests that cannot be translated.
//!
//! Shape: `{"error":{"message","type","param","code"}}`, as the OpenAI API answers (and as the SDK's
//! `openai.APIStatusError` reads it: `body["error"]["message"]` etc.).

use serde_json::{Value, json};

/// A request the translation refuses, with the HTTP status and the OpenAI error fields to answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslateError {
    /// HTTP status for the client (400 for a bad request, 404 for an unknown `previous_response_id`).
    pub status: u16,
    /// `error.type`, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// `error.message`, for humans.
    pub message: String,
    /// `error.param`: the request field at fault, if one is.
    pub param: Option<String>,
    /// `error.code`, machine-readable, if any.
    pub code: Option<String>,
}

impl TranslateError {
    /// A 400 `invalid_request_error` about `param`.
    pub(crate) fn invalid(
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        Self {
            status: 400,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.map(str::to_owned),
            code: code.map(str::to_owned),
        }
    }

    /// The error as a JSON value (`{"error":{…}}`).
    pub fn to_value(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }

    /// The error body's bytes, ready to send with [`TranslateError::status`].
    pub fn body(&self) -> Vec<u8> {
        error_body(
            self.kind,
            &self.message,
            self.param.as_deref(),
            self.code.as_deref(),
        )
    }
}

impl std::fmt::Display for TranslateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.kind, self.message)
    }
}

impl std::error::Error for TranslateError {}

/// An OpenAI-format error body: `{"error":{"message","type","param","code"}}`.
pub fn error_body(kind: &str, message: &str, param: Option<&str>, code: Option<&str>) -> Vec<u8> {
    let value = json!({
        "error": { "message": message, "type": kind, "param": param, "code": code }
    });
    serde_json::to_vec(&value).unwrap_or_else(|_| b"{\"error\":{}}".to_vec())
}
