//! What must hold for any input, checked by the fuzz targets (`cargo +nightly fuzz run NAME`) and, on stable,
//! by `tests/fuzz_corpora.rs` over the seed corpora and random inputs. Each check panics on a violation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use kimi_proxy::config::{Config, describe};
use kimi_proxy::proxy::cache::cache_key;
use kimi_proxy::proxy::request::{inspect, request_usage, splice};
use kimi_proxy::proxy::route::Catalog;
use kimi_proxy::proxy::toolcalls::{normalize_tool_calls, repair_json};
use kimi_proxy::tokens::Tokenizer;
use kimi_proxy::tokens::stream::{CompletionCounter, IncrementalCounter, SseParser};
use serde_json::Value;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let tokenizer = Tokenizer::cl100k_base();
        tokenizer.warm();
        tokenizer
    })
}

/// Cuts `len` bytes into chunks whose sizes come from `sizes` (1..=16 each, cycling).
fn chunk_lengths(sizes: &[u8], len: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut total = 0;
    let mut i = 0;
    while total < len {
        let size = sizes
            .get(i % sizes.len().max(1))
            .map_or(7, |b| usize::from(b % 16) + 1);
        let size = size.min(len - total);
        out.push(size);
        total += size;
        i += 1;
    }
    out
}

/// Every event found with its `end` offset, and the count of skipped (oversized) events.
fn parse_sse(max: usize, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, u64) {
    let mut parser = SseParser::new(max);
    let mut events = Vec::new();
    for chunk in chunks {
        let mut last_end = 0;
        parser.feed(chunk, |event| {
            assert!(
                event.end <= chunk.len() && event.end >= last_end,
                "event end out of order"
            );
            last_end = event.end;
            assert!(
                event.data.len() <= max,
                "an event larger than the limit was kept"
            );
            events.push(event.data.to_vec());
        });
    }
    (events, parser.skipped_events)
}

/// The SSE parser finds the same events whatever the chunking, never keeps an event over its limit, and the
/// completion counter takes any event; the incremental token counter ends equal to counting the whole text.
pub fn sse(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let max = 16 + usize::from(first) * 8;
    let whole = parse_sse(max, &[rest]);
    let mut chunks = Vec::new();
    let mut at = 0;
    for len in chunk_lengths(rest, rest.len()) {
        chunks.push(&rest[at..at + len]);
        at += len;
    }
    let pieces = parse_sse(max, &chunks);
    assert_eq!(whole, pieces, "chunking changed the events");

    let mut counter = CompletionCounter::new(tokenizer().clone());
    for event in &whole.0 {
        counter.on_event(event);
    }
    let running = counter.running();
    let total = counter.finish().total();
    assert!(
        running <= total,
        "running count {running} above the final {total}"
    );

    let text = String::from_utf8_lossy(rest);
    let mut incremental = IncrementalCounter::new();
    let mut start = 0;
    let mut sizes = chunk_lengths(rest, text.len()).into_iter();
    while start < text.len() {
        let mut end = (start + sizes.next().unwrap_or(1)).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        incremental.push(tokenizer(), &text[start..end]);
        start = end;
    }
    assert_eq!(
        incremental.finish(tokenizer()),
        tokenizer().count(&text),
        "incremental count differs from the whole count"
    );
}

/// What `inspect` reports points at the right bytes, splicing a new model keeps the JSON valid and changes
/// only the model, the usage request is valid JSON, and mending tool calls is flagged beforehand and idempotent.
pub fn request(data: &[u8]) {
    let Ok(view) = inspect(data) else {
        return;
    };
    let original: Value = match serde_json::from_slice(data) {
        Ok(value) => value,
        // JSON's grammar allows a lone surrogate escape (`\ud800`, or a high one followed by anything but a low
        // one) and a number of any size (`9E99999999`, beyond f64); the body is forwarded as the client sent it,
        // but serde_json builds no tree of it.
        Err(error)
            if error.to_string().contains("unicode code point")
                || error.to_string().contains("surrogate")
                || error.to_string().contains("end of hex escape")
                || error.to_string().contains("number out of range") =>
        {
            return;
        }
        Err(error) => panic!("inspect accepted invalid JSON: {error}"),
    };
    let model_bytes = data
        .get(view.model_range.clone())
        .expect("model range out of bounds");
    let model: String =
        serde_json::from_slice(model_bytes).expect("model range is not a JSON string");
    assert_eq!(model, view.model);
    for range in view.layout.messages.iter().chain(&view.layout.tools) {
        let slice = data.get(range.clone()).expect("layout range out of bounds");
        serde_json::from_slice::<Value>(slice).expect("layout range is not a JSON value");
    }

    let renamed = splice(data, view.model_range.clone(), br#""provider/renamed""#);
    let mut expected = original.clone();
    expected["model"] = Value::String("provider/renamed".to_string());
    let spliced: Value = serde_json::from_slice(&renamed).expect("splice made invalid JSON");
    assert_eq!(spliced, expected, "splice changed more than the model");

    if !view.has_stream_options {
        let with_usage = request_usage(data).expect("an object without stream_options");
        let value: Value =
            serde_json::from_slice(&with_usage).expect("usage request made invalid JSON");
        assert_eq!(value["stream_options"]["include_usage"], Value::Bool(true));
    }

    // The response cache's key reads the body as JSON does: the same request re-encoded (key order and escapes
    // changed) keeps its key. Re-encoding drops a repeated key, but such a request has no key at all.
    if let Some(key) = cache_key(data, "upstream", false) {
        let encoded = serde_json::to_vec(&original).expect("re-encode");
        assert_eq!(
            cache_key(&encoded, "upstream", false),
            Some(key),
            "re-encoding changed the cache key"
        );
    }

    let mut mended = original;
    let fixes = normalize_tool_calls(&mut mended);
    if fixes.total() > 0 {
        assert!(
            view.needs_tool_fix,
            "tool calls were mended but inspect did not flag them"
        );
    }
    let encoded = serde_json::to_vec(&mended).expect("re-encode");
    let again = inspect(&encoded).expect("the mended request no longer inspects");
    assert_eq!(again.model, view.model);
    let mut twice = mended.clone();
    assert_eq!(
        normalize_tool_calls(&mut twice).total(),
        0,
        "mending is not idempotent"
    );
    assert_eq!(twice, mended);
}

/// Repaired JSON is JSON (it survives a round trip), valid JSON reads exactly as JSON, and a repaired argument
/// placed in a request comes out as a string that parses.
pub fn toolcalls(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let repaired = repair_json(text);
    if let Some(value) = &repaired {
        let round: Value =
            serde_json::from_str(&value.to_string()).expect("repair made invalid JSON");
        assert_eq!(&round, value);
    }
    if let Ok(strict) = serde_json::from_str::<Value>(text) {
        assert_eq!(
            repaired.as_ref(),
            Some(&strict),
            "valid JSON was read differently"
        );
    }
    let mut request = serde_json::json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": text}}]}]});
    let fixes = normalize_tool_calls(&mut request);
    let arguments = request["messages"][0]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .expect("arguments stay a string");
    if fixes.arguments_repaired > 0 {
        serde_json::from_str::<Value>(arguments).expect("repaired arguments do not parse");
    } else {
        assert_eq!(arguments, text);
    }
}

/// Any TOML text is accepted or refused without a panic; an accepted configuration describes itself and every
/// model resolves by its own key.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| {
        name.len()
            .is_multiple_of(2)
            .then(|| format!("value-of-{name}"))
    };
    let Ok(config) = Config::from_sources(Some(("fuzz.toml", text)), &env) else {
        return;
    };
    assert!(!describe(&config).is_empty());
    let catalog = Catalog::new(&config);
    for (key, model) in &config.models {
        let found = catalog
            .resolve(key)
            .expect("a model does not resolve by its key");
        assert_eq!(&found.key, key);
        assert_eq!(&model.key, key);
    }
}
