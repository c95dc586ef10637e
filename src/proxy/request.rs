//! Reading a chat request without building it: the hot path scans the body once with borrowed types (no tree,
//! no allocation per message), and changes it — the model id, the usage request — by splicing bytes. Only a
//! request whose tool calls need mending is parsed into a tree and re-encoded.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::ProxyError;

/// What the proxy needs to know about a chat request.
#[derive(Debug)]
pub struct ChatRequestView {
    pub model: String,
    /// Byte range of the `model` value (with its quotes) in the body.
    pub model_range: Range<usize>,
    pub streaming: bool,
    pub has_stream_options: bool,
    pub client_asked_usage: bool,
    /// Some assistant tool call lacks an id or carries arguments that are not a JSON string.
    pub needs_tool_fix: bool,
    /// Some assistant message with tool calls carries no reasoning (`reasoning_content` absent, null or empty):
    /// for a model that needs its reasoning back, the proxy may restore it.
    pub reasoning_missing: bool,
    /// Where each message and each tool definition lies in the body: token counting hashes these slices
    /// without parsing the body again.
    pub layout: RequestLayout,
    /// The conversation id the client gave in the body: `metadata.session_id`, else `user`.
    pub client_session: Option<String>,
}

/// Longest client-given session id kept.
pub const MAX_SESSION_ID: usize = 128;

/// A client-given session id, if usable: trimmed, non-empty, printable, bounded.
pub fn clean_session_id(raw: &str) -> Option<String> {
    let id = raw.trim();
    (!id.is_empty() && id.len() <= MAX_SESSION_ID && !id.chars().any(char::is_control))
        .then(|| id.to_string())
}

pub use crate::tokens::chat::RequestLayout;

/// The common shape, read in one pass: messages and tools as lists of raw slices.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    tools: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    user: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

/// Any other shape (messages not a list, say): still forwarded, the provider will judge it.
#[derive(Deserialize)]
struct LoosePeek<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream_options: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PeekMessage<'a> {
    #[serde(borrow, default)]
    tool_calls: Option<Vec<PeekCall<'a>>>,
    #[serde(borrow, default)]
    reasoning_content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PeekCall<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    function: Option<PeekFunction<'a>>,
}

#[derive(Deserialize)]
struct PeekFunction<'a> {
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

/// Scans `body` (once, in the usual case). Errors are the client's: invalid JSON (with line and column), not
/// an object, no model.
pub fn inspect(body: &[u8]) -> Result<ChatRequestView, ProxyError> {
    check_structure(body)?;
    let mut read_loosely = false;
    let peek: Peek<'_> = match serde_json::from_slice(body) {
        Ok(peek) => peek,
        // A key the proxy reads, given twice: which copy counts is up to each parser, so the proxy could
        // count, record and route one and the provider read the other. Refused, whatever the key.
        Err(error) if is_duplicate_key(&error) => {
            return Err(ProxyError::InvalidRequest(format!(
                "{}: each key may appear once",
                error
                    .to_string()
                    .split(" at line")
                    .next()
                    .unwrap_or_default()
            )));
        }
        Err(error) => match serde_json::from_slice::<LoosePeek<'_>>(body) {
            Ok(loose) => {
                read_loosely = true;
                Peek {
                    model: loose.model,
                    stream: loose.stream,
                    stream_options: loose.stream_options,
                    messages: None,
                    tools: None,
                    user: None,
                    metadata: None,
                }
            }
            // Tell a syntax error (where) from valid JSON of the wrong shape (what).
            Err(_) => {
                return Err(
                    match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                        Err(syntax) => ProxyError::InvalidJson {
                            message: syntax.to_string(),
                            line: syntax.line(),
                            column: syntax.column(),
                        },
                        Ok(_) => ProxyError::InvalidRequest(format!(
                            "the body must be a chat request object: {error}"
                        )),
                    },
                );
            }
        },
    };
    // serde also reads a struct from an array (fields by position): `["m"]` must not pass for `{"model":"m"}`.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ProxyError::InvalidRequest(
            "the body must be a chat request object, not an array".to_string(),
        ));
    }
    let Some(raw_model) = peek.model else {
        return Err(ProxyError::InvalidRequest(
            "`model` is required".to_string(),
        ));
    };
    let Ok(model) = serde_json::from_str::<Cow<'_, str>>(raw_model.get()) else {
        return Err(ProxyError::InvalidRequest(
            "`model` must be a string".to_string(),
        ));
    };
    let streaming = peek.stream.is_some_and(|raw| raw.get() == "true");
    let client_asked_usage = peek.stream_options.is_some_and(|raw| {
        serde_json::from_str::<serde_json::Value>(raw.get())
            .ok()
            .and_then(|v| v.get("include_usage").and_then(serde_json::Value::as_bool))
            == Some(true)
    });
    let messages = peek.messages.unwrap_or_default();
    // Read loosely (a repeated key, say), the messages were not looked at: the full parse will judge them.
    let (needs_tool_fix, reasoning_missing) = if read_loosely {
        let named = may_name_tool_calls(body);
        (named, named)
    } else {
        scan_tool_calls(&messages)
    };
    let layout = RequestLayout {
        messages: messages.iter().map(|m| offset_in(body, m.get())).collect(),
        tools: peek
            .tools
            .unwrap_or_default()
            .iter()
            .map(|t| offset_in(body, t.get()))
            .collect(),
    };
    let from_metadata = peek.metadata.and_then(|raw| {
        serde_json::from_str::<serde_json::Value>(raw.get())
            .ok()?
            .get("session_id")?
            .as_str()
            .and_then(clean_session_id)
    });
    let from_user = peek
        .user
        .and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok())
        .and_then(|user| clean_session_id(&user));
    Ok(ChatRequestView {
        client_session: from_metadata.or(from_user),
        model: model.into_owned(),
        model_range: offset_in(body, raw_model.get()),
        streaming,
        has_stream_options: peek.stream_options.is_some(),
        client_asked_usage,
        needs_tool_fix,
        reasoning_missing,
        layout,
    })
}

/// serde's error for a struct field given twice (`duplicate field `messages``).
fn is_duplicate_key(error: &serde_json::Error) -> bool {
    error.is_data() && error.to_string().starts_with("duplicate field `")
}

/// Deepest nesting of arrays and objects accepted, as serde_json's own limit: parts the scan skips (unknown
/// fields) are not depth-checked by serde, and a provider should never receive what the proxy would refuse.
pub const MAX_NESTING: usize = 128;

/// Refuses bodies that are not UTF-8 or nest deeper than [`MAX_NESTING`], with where: the scan skips the
/// fields it does not need without checking either. Cheap: string contents are skipped with `memchr`.
fn check_structure(body: &[u8]) -> Result<(), ProxyError> {
    if let Err(error) = std::str::from_utf8(body) {
        return Err(invalid_at(body, error.valid_up_to(), "invalid UTF-8"));
    }
    let mut depth = 0usize;
    let mut pos = 0;
    while pos < body.len() {
        match body[pos] {
            b'"' => {
                // Skip to the closing quote, stepping over escapes.
                pos += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &body[pos.min(body.len())..]) {
                        Some(offset) if body[pos + offset] == b'\\' => pos += offset + 2,
                        Some(offset) => {
                            pos += offset;
                            break;
                        }
                        None => return Ok(()), // unterminated: serde reports it
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(invalid_at(
                        body,
                        pos,
                        &format!("nesting deeper than {MAX_NESTING} levels"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        pos += 1;
    }
    Ok(())
}

fn invalid_at(body: &[u8], offset: usize, what: &str) -> ProxyError {
    let before = &body[..offset.min(body.len())];
    let line = memchr::memchr_iter(b'\n', before).count() + 1;
    let column = offset
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    ProxyError::InvalidJson {
        message: what.to_string(),
        line,
        column,
    }
}

/// Where `part` (a slice of `body`) lies in `body`.
pub(crate) fn offset_in(body: &[u8], part: &str) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
    start..start + part.len()
}

/// Whether [`normalize_tool_calls`](super::toolcalls::normalize_tool_calls) could change anything: it may say
/// yes when nothing needs mending (the body is then re-encoded for nothing), never no when something does.
/// Whether some tool call needs mending, and whether some message with tool calls lacks its reasoning.
fn scan_tool_calls(messages: &[&RawValue]) -> (bool, bool) {
    let (mut needs_fix, mut reasoning_missing) = (false, false);
    // Cheap pre-check: most messages have no tool call at all.
    for message in messages
        .iter()
        .filter(|m| m.get().starts_with('{') && may_name_tool_calls(m.get().as_bytes()))
    {
        match serde_json::from_str::<PeekMessage<'_>>(message.get()) {
            Ok(message) => {
                let calls = message.tool_calls.unwrap_or_default();
                needs_fix |= calls.iter().any(call_needs_fix);
                let no_reasoning = message
                    .reasoning_content
                    .is_none_or(|r| matches!(r.get(), "null" | "\"\""));
                reasoning_missing |= !calls.is_empty() && no_reasoning;
            }
            // An odd shape (a repeated key, a call that is not an object): let the full parse judge.
            Err(_) => {
                needs_fix = true;
                reasoning_missing = true;
            }
        }
        if needs_fix && reasoning_missing {
            break;
        }
    }
    (needs_fix, reasoning_missing)
}

/// Whether `message` may hold a `tool_calls` key: spelt plainly, or with letters written as `\u00XX` escapes
/// (JSON allows it; encoders only do it for `<`, `>`, `&` and non-ASCII, which this does not match).
fn may_name_tool_calls(message: &[u8]) -> bool {
    // Built once: a searcher costs more to build than to run on a short message.
    static TOOL_CALLS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"tool_calls\""));
    static ESCAPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\\u00"));
    TOOL_CALLS.find(message).is_some()
        || ESCAPE
            .find_iter(message)
            .any(|at| matches!(message.get(at + 4), Some(b'5' | b'6' | b'7')))
}

fn call_needs_fix(call: &PeekCall<'_>) -> bool {
    let id_ok = call
        .id
        .is_some_and(|id| id.get().starts_with('"') && id.get() != "\"\"");
    let arguments_ok = match call.function.as_ref().and_then(|f| f.arguments) {
        None => true,
        Some(raw) if raw.get() == "null" => true,
        Some(raw) => serde_json::from_str::<Cow<'_, str>>(raw.get())
            .is_ok_and(|text| serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok()),
    };
    !(id_ok && arguments_ok)
}

/// `body` with `range` replaced by `replacement`.
pub fn splice(body: &[u8], range: Range<usize>, replacement: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + replacement.len());
    out.extend_from_slice(&body[..range.start]);
    out.extend_from_slice(replacement);
    out.extend_from_slice(&body[range.end..]);
    out.freeze()
}

/// `body` (an object without `stream_options`) with `"stream_options":{"include_usage":true}` as its first
/// member.
pub fn request_usage(body: &[u8]) -> Option<Bytes> {
    const MEMBER: &[u8] = br#""stream_options":{"include_usage":true},"#;
    let brace = body.iter().position(|b| !b.is_ascii_whitespace())?;
    (body[brace] == b'{').then(|| splice(body, brace + 1..brace + 1, MEMBER))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn reads_the_fields_and_where_the_model_is() {
        let body = br#" {"messages": [], "model": "nvidia/kimi-k2.5", "stream": true, "stream_options": {"include_usage": true}}"#;
        let view = inspect(body).unwrap();
        assert_eq!(view.model, "nvidia/kimi-k2.5");
        assert_eq!(&body[view.model_range.clone()], br#""nvidia/kimi-k2.5""#);
        assert!(view.streaming && view.has_stream_options && view.client_asked_usage);
        assert!(!view.needs_tool_fix);
        assert!(view.layout.messages.is_empty());
        assert_eq!(view.client_session, None);
    }

    #[test]
    fn session_ids_from_metadata_then_user() {
        let both =
            inspect(br#"{"model":"m","user":"u-1","metadata":{"session_id":"s-9"}}"#).unwrap();
        assert_eq!(both.client_session.as_deref(), Some("s-9"));
        let user = inspect(br#"{"model":"m","user":"  u-1 "}"#).unwrap();
        assert_eq!(user.client_session.as_deref(), Some("u-1"));
        let bad = inspect(br#"{"model":"m","user":"a\nb"}"#).unwrap();
        assert_eq!(bad.client_session, None);
    }

    #[test]
    fn layout_points_at_each_message_and_tool() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"a"}, {"role":"assistant","content":"b"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#;
        let view = inspect(body).unwrap();
        let slices: Vec<&[u8]> = view
            .layout
            .messages
            .iter()
            .map(|r| &body[r.clone()])
            .collect();
        assert_eq!(
            slices,
            [
                &br#"{"role":"user","content":"a"}"#[..],
                br#"{"role":"assistant","content":"b"}"#
            ]
        );
        assert_eq!(
            &body[view.layout.tools[0].clone()],
            br#"{"type":"function","function":{"name":"f"}}"#
        );
        // A body of another shape is still read (and forwarded).
        let odd = inspect(br#"{"model":"m","messages":"hi"}"#).unwrap();
        assert!(odd.layout.messages.is_empty());
    }

    #[test]
    fn escaped_model_names_keep_their_range() {
        let body = br#"{"model": "a\/b\u0063"}"#;
        let view = inspect(body).unwrap();
        assert_eq!(view.model, "a/bc");
        let renamed = splice(body, view.model_range, br#""x""#);
        assert_eq!(
            serde_json::from_slice::<Value>(&renamed).unwrap(),
            json!({"model": "x"})
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(matches!(
            inspect(b"{\"model\": \n ,}"),
            Err(ProxyError::InvalidJson { line: 2, .. })
        ));
        assert!(matches!(
            inspect(b"[1]"),
            Err(ProxyError::InvalidRequest(_))
        ));
        assert!(matches!(inspect(b"{}"), Err(ProxyError::InvalidRequest(_))));
        assert!(matches!(
            inspect(b"{\"model\": 5}"),
            Err(ProxyError::InvalidRequest(_))
        ));
        for array in [&br#"[""]"#[..], br#" ["m", true, null]"#] {
            assert!(matches!(inspect(array), Err(ProxyError::InvalidRequest(_))));
        }
    }

    #[test]
    fn detects_tool_calls_that_need_mending() {
        let ok = json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}]});
        assert!(
            !inspect(&serde_json::to_vec(&ok).unwrap())
                .unwrap()
                .needs_tool_fix
        );
        for broken in [
            json!({"type": "function", "function": {"name": "f", "arguments": "{}"}}),
            json!({"id": "", "type": "function", "function": {"name": "f", "arguments": "{}"}}),
            json!({"id": "a", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}),
            json!({"id": "a", "type": "function", "function": {"name": "f", "arguments": "{'x': 1}"}}),
        ] {
            let body =
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [broken]}]});
            assert!(
                inspect(&serde_json::to_vec(&body).unwrap())
                    .unwrap()
                    .needs_tool_fix,
                "{body}"
            );
        }
    }

    /// Odd but valid JSON that the mending still reads: inspect must flag whatever it would change.
    #[test]
    fn flags_tool_calls_in_odd_shapes_that_the_mending_reads() {
        let call = r#"{"function":{"name":"f","arguments":"{}"}}"#;
        let cases = [
            format!(r#"{{"model":"m","messages":[{{"tool\u005fcalls":[{call}]}}]}}"#),
            format!(r#"{{"model":"m","messages":[{{"\u0074ool_calls":[{call}]}}]}}"#),
            format!(r#"{{"model":"m","messages":[{{"tool_calls":[1,{call}]}}]}}"#),
            format!(r#"{{"model":"m","messages":[{{"tool_calls":[{{"function":5}},{call}]}}]}}"#),
            format!(r#"{{"model":"m","messages":[{{"tool_calls":[],"tool_calls":[{call}]}}]}}"#),
            r#"{"model":"m","messages":[{"tool_calls":[{"id":"a","id":"b","function":{"arguments":"{x:1}"}}]}]}"#
                .to_string(),
        ];
        for body in cases {
            let view = inspect(body.as_bytes()).unwrap();
            let mut value: Value = serde_json::from_str(&body).unwrap();
            let fixes = crate::proxy::toolcalls::normalize_tool_calls(&mut value);
            assert!(fixes.total() > 0, "nothing to mend in {body}");
            assert!(view.needs_tool_fix, "not flagged: {body}");
        }
        // HTML-safe escapes (as Go's encoder writes them) are not mistaken for a hidden key.
        let html =
            br#"{"model":"m","messages":[{"role":"user","content":"\u003cdiv\u003e \u0026"}]}"#;
        assert!(!inspect(html).unwrap().needs_tool_fix);
    }

    #[test]
    fn refuses_a_key_it_reads_given_twice() {
        for body in [
            r#"{"model":"m","messages":[],"messages":[{"role":"user","content":"hidden"}]}"#,
            r#"{"model":"m","messages":[],"\u006dessages":[]}"#,
            r#"{"model":"m","model":"n","messages":[]}"#,
            r#"{"model":"m","messages":[],"stream":false,"stream":true}"#,
            r#"{"model":"m","messages":[],"tools":[],"tools":[]}"#,
        ] {
            let result = inspect(body.as_bytes());
            assert!(
                matches!(&result, Err(ProxyError::InvalidRequest(m)) if m.contains("duplicate field")),
                "{body}: {result:?}"
            );
        }
        // Keys the proxy does not read are the provider's business.
        assert!(inspect(br#"{"model":"m","messages":[],"x":1,"x":2}"#).is_ok());
    }

    #[test]
    fn refuses_invalid_utf8_and_deep_nesting_anywhere() {
        let mut bad = br#"{"model":"m","x":"a"#.to_vec();
        bad.push(0xff);
        bad.extend_from_slice(br#""}"#);
        assert!(matches!(
            inspect(&bad),
            Err(ProxyError::InvalidJson {
                line: 1,
                column: 20,
                ..
            })
        ));
        let deep = |n: usize| {
            format!(r#"{{"model":"m","x":{}{}}}"#, "[".repeat(n), "]".repeat(n)).into_bytes()
        };
        assert!(inspect(&deep(MAX_NESTING - 1)).is_ok());
        assert!(matches!(
            inspect(&deep(MAX_NESTING)),
            Err(ProxyError::InvalidJson { .. })
        ));
        // Brackets and escaped quotes inside strings do not count.
        let text = format!(r#"{{"model":"m","x":"\"{}"}}"#, "[".repeat(1000));
        assert!(inspect(text.as_bytes()).is_ok());
    }

    #[test]
    fn usage_request_is_spliced_in() {
        let body = br#"  {"model":"m","stream":true}"#;
        let out = request_usage(body).unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["stream_options"]["include_usage"], true);
        assert_eq!(value["model"], "m");
        assert!(request_usage(b"[]").is_none());
    }
}
