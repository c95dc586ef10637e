//! Tool-call hygiene: agents resend assistant `tool_calls` that strict providers reject (no `id`, arguments as an
//! object, arguments that are almost JSON). Each is mended here, before the request goes upstream.
//!
//! Generated ids are derived from the call's content, not random: agents resend the whole conversation every
//! turn, and a stable id keeps the provider's prompt cache and our conversation matching intact.

use serde_json::{Map, Value};

/// What [`normalize_tool_calls`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ToolCallFixes {
    pub ids_added: u32,
    pub arguments_serialized: u32,
    pub arguments_repaired: u32,
    /// Assistant tool-call messages given back the reasoning the client dropped (see `proxy::reasoning`).
    pub reasoning_restored: u32,
}

impl ToolCallFixes {
    pub fn total(&self) -> u32 {
        self.ids_added
            + self.arguments_serialized
            + self.arguments_repaired
            + self.reasoning_restored
    }
}

/// Mends every `messages[].tool_calls[]` entry of a chat request in place.
pub fn normalize_tool_calls(request: &mut Value) -> ToolCallFixes {
    let mut fixes = ToolCallFixes::default();
    let Some(messages) = request.get_mut("messages").and_then(Value::as_array_mut) else {
        return fixes;
    };
    for (message_index, message) in messages.iter_mut().enumerate() {
        let Some(calls) = message.get_mut("tool_calls").and_then(Value::as_array_mut) else {
            continue;
        };
        for (call_index, call) in calls.iter_mut().enumerate() {
            let Some(call) = call.as_object_mut() else {
                continue;
            };
            if let Some(function) = call.get_mut("function").and_then(Value::as_object_mut) {
                fix_arguments(function, &mut fixes);
            }
            let has_id = matches!(call.get("id"), Some(Value::String(id)) if !id.is_empty());
            if !has_id {
                let id = stable_call_id(message_index, call_index, call);
                call.insert("id".to_string(), Value::String(id));
                if !call.contains_key("type") {
                    call.insert("type".to_string(), Value::String("function".to_string()));
                }
                fixes.ids_added += 1;
            }
        }
    }
    if fixes.total() > 0 {
        tracing::debug!(
            ids_added = fixes.ids_added,
            arguments_serialized = fixes.arguments_serialized,
            arguments_repaired = fixes.arguments_repaired,
            "tool calls repaired"
        );
    }
    fixes
}

fn fix_arguments(function: &mut Map<String, Value>, fixes: &mut ToolCallFixes) {
    let Some(arguments) = function.get_mut("arguments") else {
        return;
    };
    let replacement = match &*arguments {
        Value::String(text) => {
            if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                return;
            }
            let Some(repaired) = repair_json(text) else {
                return;
            };
            fixes.arguments_repaired += 1;
            repaired.to_string()
        }
        Value::Null => return,
        other => {
            fixes.arguments_serialized += 1;
            other.to_string()
        }
    };
    *arguments = Value::String(replacement);
}

/// `call_` + 24 hex digits of an FNV-1a hash of the call's position and content.
fn stable_call_id(message_index: usize, call_index: usize, call: &Map<String, Value>) -> String {
    let function = call
        .get("function")
        .map(Value::to_string)
        .unwrap_or_default();
    let mut hash = fnv1a(0xcbf2_9ce4_8422_2325, &message_index.to_le_bytes());
    hash = fnv1a(hash, &call_index.to_le_bytes());
    hash = fnv1a(hash, function.as_bytes());
    let extra = fnv1a(hash, b"#");
    format!("call_{hash:016x}{:08x}", extra as u32)
}

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Parses almost-JSON as models emit it: single-quoted strings, unquoted keys, trailing commas, Python's
/// `True`/`False`/`None`, and several objects written one after the other (merged into one). Nothing is ever
/// evaluated. Returns `None` when the text cannot be read unambiguously, or when it is empty-ish (then `{}`).
pub fn repair_json(text: &str) -> Option<Value> {
    if text.trim().is_empty() {
        return Some(Value::Object(Map::new()));
    }
    let mut parser = Lenient {
        bytes: text.as_bytes(),
        text,
        pos: 0,
        depth: 0,
    };
    let mut values = Vec::new();
    loop {
        parser.skip_ws();
        if parser.pos >= parser.bytes.len() {
            break;
        }
        values.push(parser.value()?);
        parser.skip_ws();
        // Tolerate separators between concatenated objects: `{..},{..}` or `{..};{..}`.
        while matches!(parser.peek(), Some(b',' | b';')) {
            parser.pos += 1;
            parser.skip_ws();
        }
    }
    match values.len() {
        0 => None,
        1 => values.pop(),
        _ => {
            let mut merged = Map::new();
            for value in values {
                match value {
                    Value::Object(object) => merged.extend(object),
                    _ => return None,
                }
            }
            Some(Value::Object(merged))
        }
    }
}

const MAX_DEPTH: usize = 128;

struct Lenient<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl Lenient<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b) = self.peek() {
            if b.is_ascii_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn value(&mut self) -> Option<Value> {
        self.skip_ws();
        match self.peek()? {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' | b'\'' => self.string().map(Value::String),
            b'-' | b'+' | b'.' | b'0'..=b'9' => self.number(),
            _ => {
                let word = self.identifier()?;
                match word {
                    "true" | "True" => Some(Value::Bool(true)),
                    "false" | "False" => Some(Value::Bool(false)),
                    "null" | "None" | "undefined" => Some(Value::Null),
                    _ => None,
                }
            }
        }
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn object(&mut self) -> Option<Value> {
        self.enter()?;
        self.pos += 1; // '{'
        let mut map = Map::new();
        loop {
            self.skip_ws();
            match self.peek()? {
                b'}' => {
                    self.pos += 1;
                    break;
                }
                b',' => {
                    self.pos += 1;
                    continue;
                }
                b'"' | b'\'' => {
                    let key = self.string()?;
                    map.insert(key, self.after_key()?);
                }
                _ => {
                    let key = self.identifier()?.to_string();
                    map.insert(key, self.after_key()?);
                }
            }
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {}
                _ => return None,
            }
        }
        self.depth -= 1;
        Some(Value::Object(map))
    }

    fn after_key(&mut self) -> Option<Value> {
        self.skip_ws();
        if self.peek()? != b':' {
            return None;
        }
        self.pos += 1;
        self.value()
    }

    fn array(&mut self) -> Option<Value> {
        self.enter()?;
        self.pos += 1; // '['
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            match self.peek()? {
                b']' => {
                    self.pos += 1;
                    break;
                }
                b',' => {
                    self.pos += 1;
                    continue;
                }
                _ => items.push(self.value()?),
            }
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {}
                _ => return None,
            }
        }
        self.depth -= 1;
        Some(Value::Array(items))
    }

    fn identifier(&mut self) -> Option<&str> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'-' {
                self.pos += 1;
            } else {
                break;
            }
        }
        (self.pos > start).then(|| &self.text[start..self.pos])
    }

    fn number(&mut self) -> Option<Value> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E') {
                self.pos += 1;
            } else {
                break;
            }
        }
        let literal = self.text[start..self.pos].trim_start_matches('+');
        serde_json::from_str::<serde_json::Number>(literal)
            .ok()
            .map(Value::Number)
            .or_else(|| {
                literal
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
            })
    }

    /// Four hex digits after `\u`.
    fn hex4(&mut self) -> Option<u32> {
        let hex = self.text.get(self.pos..self.pos + 4)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.pos += 4;
        u32::from_str_radix(hex, 16).ok()
    }

    /// The character of a `\u` escape: a surrogate pair joins its second half (`\ud83c\udf89` is one emoji);
    /// a lone surrogate becomes U+FFFD.
    fn unicode_escape(&mut self, code: u32) -> char {
        if (0xD800..0xDC00).contains(&code) && self.text.get(self.pos..self.pos + 2) == Some("\\u")
        {
            let save = self.pos;
            self.pos += 2;
            match self.hex4() {
                Some(low @ 0xDC00..0xE000) => {
                    let joined = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    return char::from_u32(joined).unwrap_or('\u{fffd}');
                }
                _ => self.pos = save,
            }
        }
        char::from_u32(code).unwrap_or('\u{fffd}')
    }

    fn string(&mut self) -> Option<String> {
        let quote = self.peek()?;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let rest = self.text.get(self.pos..)?;
            let mut chars = rest.chars();
            let c = chars.next()?;
            self.pos += c.len_utf8();
            match c {
                c if c as u32 == u32::from(quote) => return Some(out),
                '\\' => {
                    let escaped = self.text.get(self.pos..)?.chars().next()?;
                    self.pos += escaped.len_utf8();
                    match escaped {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        '0' => out.push('\0'),
                        'u' => {
                            let code = self.hex4()?;
                            out.push(self.unicode_escape(code));
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Mending re-encodes the request: a number must come out as the value it went in as. serde_json's default
    /// float parser is off by an ulp on inputs like these (the fuzzer found `299e033`); `float_roundtrip` is on.
    #[test]
    fn numbers_survive_a_reencoding_exactly() {
        for literal in [
            "299e033",
            "2.9899999999999998e35",
            "0.1",
            "1.7976931348623157e308",
            "5e-324",
        ] {
            let expected: f64 = literal.parse().unwrap();
            let repaired = repair_json(literal).unwrap();
            assert_eq!(repaired.as_f64(), Some(expected), "{literal}");
            let again: Value = serde_json::from_str(&repaired.to_string()).unwrap();
            assert_eq!(again, repaired, "{literal}");
        }
    }

    #[test]
    fn unicode_escapes_join_surrogate_pairs() {
        assert_eq!(
            repair_json(r"{'e': '\ud83c\udf89', 'lone': '\ud800x', 'a': '\u00e9'}"),
            Some(json!({"e": "🎉", "lone": "\u{fffd}x", "a": "é"}))
        );
        assert_eq!(repair_json(r"{'bad': '\u12'}"), None);
    }

    #[test]
    fn repairs_common_model_mistakes() {
        let cases = [
            ("{'city': 'Paris'}", json!({"city": "Paris"})),
            (
                "{city: \"Paris\", days: 3,}",
                json!({"city": "Paris", "days": 3}),
            ),
            ("{\"a\": [1, 2, 3,],}", json!({"a": [1, 2, 3]})),
            ("{\"a\": 1}{\"b\": 2}", json!({"a": 1, "b": 2})),
            (
                "{\"a\": 1} {\"b\": True, \"c\": None}",
                json!({"a": 1, "b": true, "c": null}),
            ),
            (
                "{'say': 'it\\'s \"fine\"'}",
                json!({"say": "it's \"fine\""}),
            ),
            ("", json!({})),
        ];
        for (input, expected) in cases {
            assert_eq!(repair_json(input), Some(expected), "input: {input}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for input in [
            "{\"a\": }",
            "os.system('rm -rf /')",
            "{\"a\": 1",
            "[1] {\"a\": 1}",
            "{a b}",
        ] {
            assert_eq!(repair_json(input), None, "input: {input}");
        }
        let deep = "[".repeat(10_000);
        assert_eq!(repair_json(&deep), None);
    }

    #[test]
    fn normalizes_a_request() {
        let mut request = json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [
                    {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}},
                    {"id": "call_ok", "type": "function", "function": {"name": "g", "arguments": "{'y': 2,}"}},
                    {"id": "call_fine", "type": "function", "function": {"name": "h", "arguments": "{\"z\":3}"}}
                ]}
            ]
        });
        let fixes = normalize_tool_calls(&mut request);
        assert_eq!(
            fixes,
            ToolCallFixes {
                ids_added: 1,
                arguments_serialized: 1,
                arguments_repaired: 1,
                reasoning_restored: 0,
            }
        );
        let calls = &request["messages"][1]["tool_calls"];
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(calls[0]["function"]["arguments"], "{\"x\":1}");
        assert_eq!(calls[1]["function"]["arguments"], "{\"y\":2}");
        assert_eq!(calls[2]["function"]["arguments"], "{\"z\":3}");

        // The same conversation sent again gets the same id.
        let mut again = json!({"messages": [{"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]}]});
        normalize_tool_calls(&mut again);
        assert_eq!(again["messages"][1]["tool_calls"][0]["id"], calls[0]["id"]);
    }

    #[test]
    fn clean_request_is_untouched() {
        let mut request = json!({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]});
        let before = request.clone();
        assert_eq!(normalize_tool_calls(&mut request).total(), 0);
        assert_eq!(request, before);
    }

    proptest! {
        #[test]
        fn never_panics_on_any_input(s in "\\PC{0,200}") {
            let _ = repair_json(&s);
        }

        #[test]
        fn valid_json_round_trips(v in arb_json()) {
            let text = v.to_string();
            prop_assert_eq!(repair_json(&text), Some(v));
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-zA-Z0-9 '\"\\\\\u{e9}\u{4e16}]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,6}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
