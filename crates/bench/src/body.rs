//! The deterministic chat request used by every scenario: a system message plus a user message of mixed
//! English prose and code, about 16 KB of JSON (roughly 4k tokens).

use bytes::Bytes;
use serde_json::json;

/// The model id sent in the body, both directly and through the proxy (the proxy resolves the bare upstream
/// id, so the body passes unchanged).
pub const MODEL: &str = "mock-model";

/// Target size of the whole JSON body, in bytes.
pub const TARGET_BYTES: usize = 16 * 1024;

const PROSE: &[&str] = &[
    "The proxy forwards every request to the provider that serves the model and streams the answer back.",
    "Latency matters most when an agent issues hundreds of small tool calls in a row.",
    "Each response is read to the end before the next request is sent on the same connection.",
    "A histogram keeps every sample at a fixed relative precision, so the tail stays visible.",
    "When the upstream is slow, the client should see exactly the same slowness and nothing more.",
    "Please review the following change and point out anything that could break under load.",
    "The configuration file lists providers, their base URLs and the models they serve.",
    "Token usage is counted from the final usage event of a stream or from the JSON answer.",
    "Retries stop as soon as the client could have seen a byte of the answer.",
    "Keep the explanation short, but mention every edge case you find in the code below.",
    "Connection pooling avoids a TCP handshake for every request to the same upstream host.",
    "An idle server should use little memory, and a busy one should grow only with its work.",
];

const CODE: &[&str] = &[
    "fn parse_header(line: &str) -> Option<(&str, &str)> { line.split_once(':') }",
    "let mut buf = Vec::with_capacity(4096);",
    "for (i, chunk) in body.chunks(1024).enumerate() { hasher.update(chunk); seen += i; }",
    "if status.is_server_error() { return Err(Error::Upstream(status.as_u16())); }",
    "def tokens(text):\n    return [t for t in text.split() if t]",
    "match event { Event::Data(bytes) => out.extend_from_slice(&bytes), Event::Done => break }",
    "const TIMEOUT: Duration = Duration::from_secs(30);",
    "SELECT model, SUM(prompt_tokens) FROM usage GROUP BY model ORDER BY 2 DESC;",
    "export function retry(fn, n) { return fn().catch(e => n > 0 ? retry(fn, n - 1) : Promise.reject(e)); }",
    "impl Drop for Guard { fn drop(&mut self) { let _ = self.child.start_kill(); } }",
    "#[derive(Debug, Clone, Serialize)]\nstruct Usage { prompt_tokens: u64, completion_tokens: u64 }",
    "while let Some(frame) = body.frame().await { total += frame?.data_ref().map_or(0, |d| d.len()); }",
];

/// A small deterministic generator (xorshift64*), so the body is identical on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        let len = u64::try_from(items.len()).unwrap_or(1).max(1);
        let index = usize::try_from(self.next() % len).unwrap_or(0);
        items.get(index).copied().unwrap_or_default()
    }
}

/// Appends prose and code lines until `out` holds at least `bytes` bytes.
fn fill(rng: &mut Rng, out: &mut String, bytes: usize) {
    let mut line = 0u64;
    while out.len() < bytes {
        line += 1;
        if rng.next().is_multiple_of(3) {
            out.push_str("```\n");
            for _ in 0..(1 + rng.next() % 4) {
                out.push_str(rng.pick(CODE));
                out.push('\n');
            }
            out.push_str("```\n");
        } else {
            out.push_str(&format!("{line}. "));
            for _ in 0..(1 + rng.next() % 3) {
                out.push_str(rng.pick(PROSE));
                out.push(' ');
            }
            out.push('\n');
        }
    }
}

/// The chat completion request body; `stream` selects SSE (with usage requested, as agents do).
pub fn chat_body(stream: bool) -> Bytes {
    chat_body_at(stream, 0.2)
}

/// The system and user texts of the benchmark request (about 16 KB together).
fn texts() -> (String, String) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut system = String::from(
        "You are a careful senior engineer. Answer precisely, cite the lines you refer to, and prefer \
         small, verifiable changes.\n",
    );
    fill(&mut rng, &mut system, 2 * 1024);
    let mut user = String::from("Here is the context for my question.\n");
    // JSON escaping adds a little (newlines, quotes); leave room for the envelope.
    fill(&mut rng, &mut user, TARGET_BYTES - system.len() - 1024);
    user.push_str("\nWhat is the most likely cause of the slowdown, and how would you fix it?");
    (system, user)
}

/// The same body with another `temperature` (the response cache keeps only `temperature: 0` answers).
pub fn chat_body_at(stream: bool, temperature: f64) -> Bytes {
    let (system, user) = texts();
    let mut body = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ],
        "temperature": temperature,
        "max_tokens": 512,
    });
    if stream && let Some(map) = body.as_object_mut() {
        map.insert("stream".into(), json!(true));
        map.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// The same request in the OpenAI Responses API (`POST /v1/responses`): the system text as `instructions`,
/// the user text as an input message, the same temperature and output limit (`max_output_tokens`).
pub fn responses_body(stream: bool) -> Bytes {
    let (system, user) = texts();
    let mut body = json!({
        "model": MODEL,
        "instructions": system,
        "input": [{"role": "user", "content": user}],
        "temperature": 0.2,
        "max_output_tokens": 512,
        "store": false,
    });
    if stream && let Some(map) = body.as_object_mut() {
        map.insert("stream".into(), json!(true));
    }
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// The Anthropic-native model's upstream id (served by the mock's Anthropic mode through a `type = "anthropic"`
/// provider in the proxy's configuration).
pub const NATIVE_MODEL: &str = "claude-mock";

/// The same request in Anthropic's Messages API (`POST /v1/messages`) for `model`: the system text as `system`,
/// the user text as a message, the same temperature and `max_tokens`, non-streaming.
pub fn messages_body(model: &str) -> Bytes {
    let (system, user) = texts();
    let body = json!({
        "model": model,
        "system": system,
        "messages": [{"role": "user", "content": user}],
        "temperature": 0.2,
        "max_tokens": 512,
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_deterministic_json_of_about_16_kb() {
        let a = chat_body(false);
        let b = chat_body(false);
        assert_eq!(a, b);
        assert!(
            a.len() > 15 * 1024 && a.len() < 18 * 1024,
            "{} bytes",
            a.len()
        );
        let value: serde_json::Value = serde_json::from_slice(&a).unwrap_or_default();
        assert_eq!(value["model"], MODEL);
        assert_eq!(value["messages"].as_array().map(Vec::len), Some(2));
        assert!(value.get("stream").is_none());
        let streaming: serde_json::Value =
            serde_json::from_slice(&chat_body(true)).unwrap_or_default();
        assert_eq!(streaming["stream"], true);
    }
}
