//! Exact-match response cache (off by default): a deterministic request asked again gets the stored answer
//! without calling the provider. Only successful non-streaming answers are stored; a streaming request may be
//! answered from one, replayed as SSE. Bounded by bytes, entries expire after a TTL, errors are never stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use xxhash_rust::xxh3::xxh3_128;

/// A stored answer: the upstream's JSON body, exactly as it came.
pub struct CachedAnswer {
    pub body: Bytes,
}

pub struct ResponseCache {
    cache: moka::sync::Cache<u128, Arc<CachedAnswer>>,
    hits: AtomicU64,
    misses: AtomicU64,
    stored: AtomicU64,
}

#[derive(Debug, Serialize)]
pub struct ResponseCacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub stored: u64,
    pub hit_rate: f64,
}

/// Bookkeeping counted per entry on top of its body.
const ENTRY_OVERHEAD: u32 = 256;

impl ResponseCache {
    pub fn new(max_bytes: u64, ttl: Duration) -> ResponseCache {
        ResponseCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, answer: &Arc<CachedAnswer>| {
                    u32::try_from(answer.body.len())
                        .unwrap_or(u32::MAX)
                        .saturating_add(ENTRY_OVERHEAD)
                })
                .time_to_live(ttl)
                .build(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stored: AtomicU64::new(0),
        }
    }

    pub fn get(&self, key: u128) -> Option<Arc<CachedAnswer>> {
        let found = self.cache.get(&key);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn put(&self, key: u128, body: Bytes) {
        self.stored.fetch_add(1, Ordering::Relaxed);
        self.cache.insert(key, Arc::new(CachedAnswer { body }));
    }

    pub fn stats(&self) -> ResponseCacheStats {
        // moka updates its counts lazily; settle them so the figures are exact (a stats read is rare).
        self.cache.run_pending_tasks();
        let hits = self.hits.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        ResponseCacheStats {
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
            hits,
            misses,
            stored: self.stored.load(Ordering::Relaxed),
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
        }
    }
}

/// The cache key of a request, or `None` when it may not be cached: not an object, several choices, or — when
/// only deterministic requests are cached — a temperature other than 0. The key covers everything that shapes
/// the answer: the upstream model and every field except transport ones (`stream`, `stream_options`) and
/// attribution (`user`, `metadata`), with object keys sorted so the client's key order does not matter.
pub fn cache_key(body: &[u8], upstream_id: &str, deterministic_only: bool) -> Option<u128> {
    let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    if request
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n != 1)
    {
        return None;
    }
    if deterministic_only {
        let temperature = request.get("temperature").and_then(Value::as_f64);
        if temperature != Some(0.0) {
            return None;
        }
    }
    for transport in ["stream", "stream_options", "user", "metadata"] {
        request.remove(transport);
    }
    request.insert("model".to_string(), Value::String(upstream_id.to_string()));
    let canonical = canonical(Value::Object(request));
    Some(xxh3_128(canonical.to_string().as_bytes()))
}

fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        // `0` and `0.0` mean the same to every provider.
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
            _ => Value::Number(n),
        },
        other => other,
    }
}

/// A stored chat completion replayed as the event stream a streaming client expects: per choice a role and
/// content delta (tool calls and reasoning included), the finish reason, the usage chunk when asked for, `[DONE]`.
pub fn replay_sse(body: &[u8], include_usage: bool) -> Option<Bytes> {
    let completion: Value = serde_json::from_slice(body).ok()?;
    let id = completion.get("id").cloned().unwrap_or(Value::Null);
    let created = completion.get("created").cloned().unwrap_or(Value::Null);
    let model = completion.get("model").cloned().unwrap_or(Value::Null);
    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut object = serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
        });
        if let (Some(usage), Some(map)) = (usage, object.as_object_mut()) {
            map.insert("usage".to_string(), usage.clone());
        }
        format!("data: {object}\n\n")
    };
    let mut out = String::new();
    for choice in completion
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let index = choice.get("index").cloned().unwrap_or(Value::from(0));
        let message = choice.get("message").cloned().unwrap_or(Value::Null);
        let mut delta = Map::new();
        delta.insert("role".to_string(), Value::from("assistant"));
        for field in ["content", "reasoning_content"] {
            if let Some(value) = message.get(field).filter(|v| !v.is_null()) {
                delta.insert(field.to_string(), value.clone());
            }
        }
        if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
            let indexed: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let mut call = call.clone();
                    if let Some(map) = call.as_object_mut() {
                        map.insert("index".to_string(), Value::from(i));
                    }
                    call
                })
                .collect();
            delta.insert("tool_calls".to_string(), Value::Array(indexed));
        }
        out.push_str(&chunk(
            serde_json::json!([{"index": index, "delta": delta, "finish_reason": null}]),
            None,
        ));
        let finish = choice
            .get("finish_reason")
            .cloned()
            .unwrap_or(Value::from("stop"));
        out.push_str(&chunk(
            serde_json::json!([{"index": index, "delta": {}, "finish_reason": finish}]),
            None,
        ));
    }
    if include_usage && let Some(usage) = completion.get("usage") {
        out.push_str(&chunk(serde_json::json!([]), Some(usage)));
    }
    out.push_str("data: [DONE]\n\n");
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn key(body: Value, deterministic: bool) -> Option<u128> {
        cache_key(&serde_json::to_vec(&body).unwrap(), "up", deterministic)
    }

    #[test]
    fn keys_ignore_transport_and_key_order_but_not_content() {
        let a = key(
            json!({"model": "a", "temperature": 0, "messages": [{"role": "user", "content": "x"}]}),
            true,
        );
        let b = key(
            json!({"messages": [{"content": "x", "role": "user"}], "stream": true, "temperature": 0.0, "model": "b", "user": "u"}),
            true,
        );
        assert!(a.is_some());
        assert_eq!(a, b);
        let c = key(
            json!({"model": "a", "temperature": 0, "messages": [{"role": "user", "content": "y"}]}),
            true,
        );
        assert_ne!(a, c);
    }

    #[test]
    fn only_deterministic_single_answers() {
        assert_eq!(key(json!({"model": "a", "messages": []}), true), None);
        assert_eq!(
            key(
                json!({"model": "a", "temperature": 0.7, "messages": []}),
                true
            ),
            None
        );
        assert!(
            key(
                json!({"model": "a", "temperature": 0.7, "messages": []}),
                false
            )
            .is_some()
        );
        assert_eq!(
            key(
                json!({"model": "a", "temperature": 0, "n": 3, "messages": []}),
                true
            ),
            None
        );
        assert_eq!(cache_key(b"[1]", "m", false), None);
    }

    #[test]
    fn bounded_by_bytes() {
        let cache = ResponseCache::new(10_000, Duration::from_secs(60));
        for k in 0..100u128 {
            cache.put(k, Bytes::from(vec![b'x'; 1000]));
        }
        cache.cache.run_pending_tasks();
        assert!(cache.stats().bytes <= 10_000, "{:?}", cache.stats());
    }

    #[test]
    fn expires_after_the_ttl() {
        let cache = ResponseCache::new(1 << 20, Duration::from_millis(50));
        cache.put(1, Bytes::from_static(b"{}"));
        assert!(cache.get(1).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(cache.get(1).is_none());
    }

    #[test]
    fn replays_a_completion_as_sse() {
        let body = json!({"id": "c1", "created": 1, "model": "m", "choices": [{"index": 0, "message": {"role": "assistant",
            "content": "hello", "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}});
        let sse = replay_sse(&serde_json::to_vec(&body).unwrap(), true).unwrap();
        let text = String::from_utf8(sse.to_vec()).unwrap();
        let events: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0]["choices"][0]["delta"]["content"], "hello");
        assert_eq!(
            events[0]["choices"][0]["delta"]["tool_calls"][0]["index"],
            0
        );
        assert_eq!(events[1]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(events[2]["usage"]["total_tokens"], 4);
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
}
