//! What to store for `previous_response_id`, and the API's answer for an unknown id.
//!
//! A follow-up request naming `previous_response_id` continues the stored conversation: the API prepends the
//! previous response's input and output items to the new input (instructions are not carried over:
//! `previous_response_id` docs, "the instructions from a previous response will not be carried over to the
//! next response"). The proxy stores, per response id, the whole conversation up to and including that
//! response's output, so one lookup gives the follow-up's `previous`.

use serde_json::Value;

use super::error::TranslateError;
use super::request::Translated;

/// The items to store under the response id when `translated.store` is true: the conversation the request
/// saw (the previous response's stored items, then this request's input items, normalised) followed by the
/// response's `output` items. `response` is the final Response object ([`chat_to_response`](super::chat_to_response)'s
/// result, or [`StreamTranslator::final_response`](super::StreamTranslator::final_response)). Pass the result
/// as `previous` when a request names this response as `previous_response_id`.
pub fn items_to_store(translated: &Translated, response: &Value) -> Vec<Value> {
    let output = response
        .get("output")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut items = Vec::with_capacity(translated.conversation.len() + output.len());
    items.extend(translated.conversation.iter().cloned());
    items.extend(output.iter().cloned());
    items
}

pub(crate) fn previous_not_found_error(id: &str) -> TranslateError {
    TranslateError {
        status: 404,
        kind: "invalid_request_error",
        message: format!("Previous response with id '{id}' not found."),
        param: Some("previous_response_id".into()),
        code: Some("previous_response_not_found".into()),
    }
}

/// The API's answer when `previous_response_id` names no stored response (unknown or expired): HTTP 404 and
/// `{"error":{"message":"Previous response with id '…' not found.","type":"invalid_request_error",
/// "param":"previous_response_id","code":"previous_response_not_found"}}`.
pub fn previous_not_found(id: &str) -> (u16, Vec<u8>) {
    let error = previous_not_found_error(id);
    (error.status, error.body())
}
