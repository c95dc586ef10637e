//! Error bodies: Anthropic's `{"type":"error","error":{"type","message"}}` and chat's
//! `{"error":{"message","type","param","code"}}`.
//!
//! Anthropic's error type per status: <https://docs.claude.com/en/api/errors> (400 invalid_request_error, 401
//! authentication_error, 403 permission_error, 404 not_found_error, 413 request_too_large, 429 rate_limit_error,
//! 500 api_error, 529 overloaded_error); 402 billing_error and 504 timeout_error from anthropics/anthropic-sdk-python
//! `src/anthropic/types/shared/error_type.py`.

use serde_json::{Value, json};

use super::to_bytes;

/// Anthropic's error `type` for an HTTP status. Unlisted 4xx are `invalid_request_error` (as the docs say
/// Anthropic does), 503 is `overloaded_error` (a chat provider's "overloaded"), other 5xx `api_error`.
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// An Anthropic error body for `status` with `message`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    to_bytes(&error_value(error_type_for_status(status), message))
}

pub(crate) fn error_value(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Longest upstream text kept as an error message when the body is not a JSON error.
const MAX_RAW_MESSAGE: usize = 2000;

fn raw_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.len() <= MAX_RAW_MESSAGE {
        return text.to_owned();
    }
    let mut end = MAX_RAW_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The message of a chat error object (`{"error":{"message"}}`, `{"error":"…"}`, `{"message":"…"}`).
pub(crate) fn chat_error_message(value: &Value) -> Option<String> {
    let err = value.get("error").unwrap_or(value);
    match err {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("message").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// Anthropic's error type for a chat error object seen without a status (inside a stream): from a numeric
/// `code` (OpenRouter puts the status there), else from the `type`/`code` words, else `api_error`.
pub(crate) fn chat_error_type(value: &Value) -> &'static str {
    let err = value.get("error").unwrap_or(value);
    if let Some(code) = err
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        && (400..=599).contains(&code)
    {
        return error_type_for_status(code);
    }
    let words = [err.get("type"), err.get("code")];
    for w in words.iter().flatten().filter_map(|w| w.as_str()) {
        let kind = match w {
            "invalid_request_error" | "invalid_request" | "context_length_exceeded" => {
                "invalid_request_error"
            }
            "authentication_error" | "invalid_api_key" => "authentication_error",
            "permission_error" | "permission_denied" => "permission_error",
            "not_found_error" | "model_not_found" => "not_found_error",
            "rate_limit_error" | "rate_limit_exceeded" | "insufficient_quota" => "rate_limit_error",
            "overloaded_error" | "overloaded" | "engine_overloaded_error" | "server_overloaded" => {
                "overloaded_error"
            }
            _ => continue,
        };
        return kind;
    }
    "api_error"
}

/// Translates a chat provider's error answer (status and body) into an Anthropic error body. The type follows
/// the status; the provider's message is kept (or the body's text when it is not a JSON error).
pub fn chat_error_to_messages(status: u16, body: &[u8]) -> Vec<u8> {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .as_ref()
        .and_then(chat_error_message)
        .unwrap_or_else(|| raw_message(body));
    error_body(status, &message)
}

/// The chat error body for `status`: `type` is Anthropic's error type (the chat format leaves its words free),
/// `code` the one OpenAI uses for the statuses that have one.
pub(crate) fn chat_error_value(status: Option<u16>, kind: &str, message: &str) -> Value {
    let code = match status {
        Some(401) => Value::from("invalid_api_key"),
        Some(429) => Value::from("rate_limit_exceeded"),
        _ => Value::Null,
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// Translates an Anthropic error answer (status and body) into a chat error body, keeping the message and the
/// Anthropic error type.
pub fn messages_error_to_chat(status: u16, body: &[u8]) -> Vec<u8> {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map_or_else(|| raw_message(body), str::to_owned);
    let kind = err
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| error_type_for_status(status));
    to_bytes(&chat_error_value(Some(status), kind, &message))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn types_per_status() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
        ] {
            assert_eq!(error_type_for_status(status), kind, "{status}");
        }
        assert_eq!(
            error_body(429, "slow down"),
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#
                .to_vec()
        );
    }

    #[test]
    fn chat_errors_become_anthropic_errors() {
        let body = br#"{"error":{"message":"Invalid Authentication","type":"invalid_authentication_error","code":null}}"#;
        assert_eq!(
            chat_error_to_messages(401, body),
            br#"{"type":"error","error":{"type":"authentication_error","message":"Invalid Authentication"}}"#.to_vec()
        );
        assert_eq!(
            chat_error_to_messages(502, b"<html>Bad Gateway</html>"),
            br#"{"type":"error","error":{"type":"api_error","message":"<html>Bad Gateway</html>"}}"#.to_vec()
        );
        let long = vec![b'x'; 5000];
        let v: Value = serde_json::from_slice(&chat_error_to_messages(500, &long)).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().len() < 2100);
    }

    #[test]
    fn anthropic_errors_become_chat_errors() {
        let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#;
        assert_eq!(
            messages_error_to_chat(529, body),
            br#"{"error":{"message":"Overloaded","type":"overloaded_error","param":null,"code":null}}"#.to_vec()
        );
        let v: Value = serde_json::from_slice(&messages_error_to_chat(429, b"nope")).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    }

    #[test]
    fn stream_error_types() {
        assert_eq!(
            chat_error_type(&json!({"error":{"message":"x","code":429}})),
            "rate_limit_error"
        );
        assert_eq!(
            chat_error_type(&json!({"error":{"message":"x","type":"server_overloaded"}})),
            "overloaded_error"
        );
        assert_eq!(
            chat_error_type(&json!({"error":{"message":"x"}})),
            "api_error"
        );
    }
}
