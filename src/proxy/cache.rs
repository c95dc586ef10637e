//! Exact-match response cache (off by default): a deterministic request asked again gets the stored answer
//! without calling the provider. Only successful non-streaming answers are stored; a streaming request may be
//! answered from one, replayed as SSE. Bounded by bytes, entries expire after a TTL, errors are never stored.
//!
//! With `[cluster] response_cache = true` the answers are also shared by every instance on the cluster's Redis
//! ([`SharedTier`]): a local miss asks Redis (within `redis_timeout_ms`; no answer is a miss), and an answer
//! stored here is also written there, with the same TTL, by a background task fed through a bounded queue (full:
//! the write is dropped and counted, never waited for).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use xxhash_rust::xxh3::Xxh3;

use super::shared_limit::RedisLink;
use crate::accounting::tracker::{CompletionHook, StoredCounts};

/// A stored answer: the upstream's JSON body, exactly as it came, and what its request's record counted — a
/// hit reuses those figures instead of tokenizing the same prompt and answer again.
pub struct CachedAnswer {
    pub body: Bytes,
    pub counts: Option<StoredCounts>,
}

pub struct ResponseCache {
    cache: moka::sync::Cache<u128, Arc<CachedAnswer>>,
    hits: AtomicU64,
    misses: AtomicU64,
    stored: AtomicU64,
    shared: Option<SharedTier>,
}

/// Answers waiting to be written to Redis; beyond this the newest is dropped (and counted).
const SHARED_WRITE_QUEUE: usize = 256;

/// The tier every instance shares through Redis. Only the answer's bytes are shared: an instance answering from
/// it counts the tokens itself, as the instance that stored it did.
struct SharedTier {
    link: Arc<RedisLink>,
    writes: tokio::sync::mpsc::Sender<(u128, Bytes)>,
    /// Larger answers stay local.
    max_entry_bytes: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Reads that got no answer in time or an error (served as misses).
    failures: AtomicU64,
    written: Arc<AtomicU64>,
    write_failures: Arc<AtomicU64>,
    dropped: AtomicU64,
}

/// `/api/stats` → `response_cache.shared`.
#[derive(Debug, Serialize)]
pub struct SharedCacheStats {
    pub redis: String,
    pub hits: u64,
    pub misses: u64,
    pub read_failures: u64,
    pub written: u64,
    pub write_failures: u64,
    pub dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct ResponseCacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub stored: u64,
    pub hit_rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedCacheStats>,
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
            shared: None,
        }
    }

    /// The same, also shared through `link` (call within the runtime: the writer task starts here). Entries keep
    /// the local TTL in Redis too; what Redis holds is bounded by that TTL and the server's own `maxmemory`.
    pub fn shared(max_bytes: u64, ttl: Duration, link: Arc<RedisLink>) -> ResponseCache {
        let mut cache = ResponseCache::new(max_bytes, ttl);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("no runtime: the response cache is not shared");
            return cache;
        };
        let (writes, mut queue) = tokio::sync::mpsc::channel::<(u128, Bytes)>(SHARED_WRITE_QUEUE);
        let written = Arc::new(AtomicU64::new(0));
        let write_failures = Arc::new(AtomicU64::new(0));
        let task_link = Arc::clone(&link);
        let (task_written, task_failures) = (Arc::clone(&written), Arc::clone(&write_failures));
        runtime.spawn(async move {
            let log = crate::util::LogThrottle::new();
            while let Some((key, body)) = queue.recv().await {
                let name = task_link.key("cache", &format!("{key:032x}"));
                match task_link.set_bytes(&name, &body, ttl).await {
                    Ok(()) => task_written.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        if log.ready(std::time::Duration::from_secs(60)) {
                            tracing::warn!(redis = %task_link.shown(), %error, "shared response cache: write failed");
                        }
                        task_failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
        cache.shared = Some(SharedTier {
            link,
            writes,
            max_entry_bytes: usize::try_from(max_bytes / 8).unwrap_or(usize::MAX),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            written,
            write_failures,
            dropped: AtomicU64::new(0),
        });
        cache
    }

    /// [`ResponseCache::get`], then on a miss the shared tier (an answer found there is kept locally too).
    pub async fn get_or_shared(&self, key: u128) -> Option<Arc<CachedAnswer>> {
        if let Some(found) = self.get(key) {
            return Some(found);
        }
        let shared = self.shared.as_ref()?;
        let name = shared.link.key("cache", &format!("{key:032x}"));
        match shared.link.get_bytes(&name).await {
            Ok(Some(body)) => {
                shared.hits.fetch_add(1, Ordering::Relaxed);
                let answer = Arc::new(CachedAnswer {
                    body: Bytes::from(body),
                    counts: None,
                });
                self.cache.insert(key, Arc::clone(&answer));
                Some(answer)
            }
            Ok(None) => {
                shared.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(_) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                None
            }
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

    pub fn put(&self, key: u128, body: Bytes, counts: Option<StoredCounts>) {
        self.stored.fetch_add(1, Ordering::Relaxed);
        if let Some(shared) = &self.shared
            && body.len() <= shared.max_entry_bytes
            && shared.writes.try_send((key, body.clone())).is_err()
        {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.cache
            .insert(key, Arc::new(CachedAnswer { body, counts }));
    }

    /// Shared reads and writes that failed (`[cluster] response_cache`).
    pub fn shared_failures(&self) -> u64 {
        self.shared.as_ref().map_or(0, |shared| {
            shared.failures.load(Ordering::Relaxed) + shared.write_failures.load(Ordering::Relaxed)
        })
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
            shared: self.shared.as_ref().map(|shared| SharedCacheStats {
                redis: shared.link.shown().to_string(),
                hits: shared.hits.load(Ordering::Relaxed),
                misses: shared.misses.load(Ordering::Relaxed),
                read_failures: shared.failures.load(Ordering::Relaxed),
                written: shared.written.load(Ordering::Relaxed),
                write_failures: shared.write_failures.load(Ordering::Relaxed),
                dropped: shared.dropped.load(Ordering::Relaxed),
            }),
        }
    }
}

/// The cache key of a request, or `None` when it may not be cached: not an object, several choices, or — when
/// only deterministic requests are cached — a temperature other than 0. The key covers everything that shapes
/// the answer: the upstream model and every field except transport ones (`stream`, `stream_options`) and
/// attribution (`user`, `metadata`), so that neither the client's key order nor its string escapes nor `0` vs
/// `0.0` matter. It is computed in one pass over the body, without building a tree or writing JSON back: each
/// value is hashed as it is read, and an object's hash is that of its entries sorted by key.
/// Stores a complete answer with its counts under the request's key (the tracker calls it when the answer ends).
pub struct StoreOnComplete {
    pub cache: Arc<ResponseCache>,
    pub key: u128,
}

impl CompletionHook for StoreOnComplete {
    fn complete(&self, body: Bytes, counts: StoredCounts) {
        self.cache.put(self.key, body, Some(counts));
    }
}

pub fn cache_key(body: &[u8], upstream_id: &str, deterministic_only: bool) -> Option<u128> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let top =
        serde::de::DeserializeSeed::deserialize(Top { upstream_id }, &mut deserializer).ok()?;
    deserializer.end().ok()?;
    if top.n.is_some_and(|n| n != 1.0) {
        return None;
    }
    if deterministic_only && top.temperature != Some(0.0) {
        return None;
    }
    Some(top.hash)
}

/// Whether a request uses the response cache: the client's `x-kimi-proxy-cache` header (`on` only when the
/// config lets clients opt in; `off` always), else the model's setting, else `[cache] enabled`.
pub fn wanted(header: Option<&str>, configured: bool, client_opt_in: bool) -> bool {
    match header {
        Some("on" | "1" | "true") => client_opt_in || configured,
        Some("off" | "0" | "false") => false,
        _ => configured,
    }
}

/// The key of a request as one client sees it: `client` (the virtual key's name) is part of it unless the
/// cache is shared, so one key holder never gets an answer cached for another.
pub fn scoped_key(key: u128, client: Option<&str>, shared: bool) -> u128 {
    match client {
        Some(name) if !shared => {
            let mut hasher = Xxh3::new();
            hasher.update(&key.to_le_bytes());
            hasher.update(b"\0client\0");
            hasher.update(name.as_bytes());
            hasher.digest128()
        }
        _ => key,
    }
}

/// The key of a request in another client API than chat (`api`, e.g. `messages`), with the request headers
/// that change its answer (Anthropic's `anthropic-version` and `anthropic-beta`): a chat request and an
/// Anthropic one with the same fields never share an entry, and the answer format is the API's.
pub fn api_key(key: u128, api: &str, headers: &[&[u8]]) -> u128 {
    let mut hasher = Xxh3::new();
    hasher.update(&key.to_le_bytes());
    hasher.update(b"\0api\0");
    hasher.update(api.as_bytes());
    for value in headers {
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(value);
    }
    hasher.digest128()
}

/// Tags that keep values of different kinds apart in the hash.
const TAG_NULL: u8 = 0;
const TAG_BOOL: u8 = 1;
const TAG_INT: u8 = 2;
const TAG_FLOAT: u8 = 3;
const TAG_STRING: u8 = 4;
const TAG_ARRAY: u8 = 5;
const TAG_OBJECT: u8 = 6;

fn tagged(tag: u8, bytes: &[u8]) -> u128 {
    let mut hasher = Xxh3::new();
    hasher.update(&[tag]);
    hasher.update(bytes);
    hasher.digest128()
}

/// Numbers that are integers (`0`, `0.0`, `-3`) hash alike; the rest by their bits.
fn number_hash(value: f64) -> u128 {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        tagged(TAG_INT, &(value as i128).to_le_bytes())
    } else {
        tagged(TAG_FLOAT, &value.to_bits().to_le_bytes())
    }
}

/// One value read and hashed; numbers keep their value (the top level needs `temperature` and `n`).
struct Hashed {
    hash: u128,
    number: Option<f64>,
}

impl Hashed {
    fn of(hash: u128) -> Hashed {
        Hashed { hash, number: None }
    }
}

impl<'de> serde::Deserialize<'de> for Hashed {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Hashed, D::Error> {
        deserializer.deserialize_any(ValueHasher)
    }
}

struct ValueHasher;

impl<'de> serde::de::Visitor<'de> for ValueHasher {
    type Value = Hashed;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Hashed, E> {
        Ok(Hashed::of(tagged(TAG_NULL, &[])))
    }

    fn visit_bool<E>(self, value: bool) -> Result<Hashed, E> {
        Ok(Hashed::of(tagged(TAG_BOOL, &[u8::from(value)])))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Hashed, E> {
        Ok(Hashed {
            hash: tagged(TAG_INT, &i128::from(value).to_le_bytes()),
            number: Some(value as f64),
        })
    }

    fn visit_u64<E>(self, value: u64) -> Result<Hashed, E> {
        Ok(Hashed {
            hash: tagged(TAG_INT, &i128::from(value).to_le_bytes()),
            number: Some(value as f64),
        })
    }

    fn visit_f64<E>(self, value: f64) -> Result<Hashed, E> {
        Ok(Hashed {
            hash: number_hash(value),
            number: Some(value),
        })
    }

    fn visit_str<E>(self, value: &str) -> Result<Hashed, E> {
        Ok(Hashed::of(tagged(TAG_STRING, value.as_bytes())))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Hashed, A::Error> {
        let mut hasher = Xxh3::new();
        hasher.update(&[TAG_ARRAY]);
        while let Some(item) = seq.next_element::<Hashed>()? {
            hasher.update(&item.hash.to_le_bytes());
        }
        Ok(Hashed::of(hasher.digest128()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Hashed, A::Error> {
        let mut entries: Vec<(Key<'de>, u128)> = Vec::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value = map.next_value::<Hashed>()?;
            entries.push((key, value.hash));
        }
        object_hash(&mut entries).map(Hashed::of)
    }
}

/// An object's hash: its entries sorted by key, each key with its value's hash. A key given twice makes the
/// request uncacheable: which one counts is up to the provider's parser, and sorting would hide their order.
fn object_hash<E: serde::de::Error>(entries: &mut [(Key<'_>, u128)]) -> Result<u128, E> {
    entries.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    if entries
        .windows(2)
        .any(|pair| pair[0].0.as_str() == pair[1].0.as_str())
    {
        return Err(E::custom("a key given twice"));
    }
    let mut hasher = Xxh3::new();
    hasher.update(&[TAG_OBJECT]);
    for (key, hash) in entries.iter() {
        hasher.update(&(key.as_str().len() as u64).to_le_bytes());
        hasher.update(key.as_str().as_bytes());
        hasher.update(&hash.to_le_bytes());
    }
    Ok(hasher.digest128())
}

/// An object key, borrowed from the body unless it had escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(key) => key,
            Key::Owned(key) => key,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Key<'de>, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(key))
            }
            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(key.to_string()))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The request object: hashed like any object, but without the transport fields, with the upstream model id
/// in place of the client's, and with `temperature` and `n` kept.
struct Top<'a> {
    upstream_id: &'a str,
}

struct TopHash {
    hash: u128,
    temperature: Option<f64>,
    n: Option<f64>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Top<'_> {
    type Value = TopHash;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<TopHash, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Top<'_> {
    type Value = TopHash;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a chat request object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TopHash, A::Error> {
        let mut entries: Vec<(Key<'de>, u128)> = Vec::with_capacity(8);
        let (mut temperature, mut n) = (None, None);
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.as_str() {
                "stream" | "stream_options" | "user" | "metadata" | "model" => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
                _ => {}
            }
            let value = map.next_value::<Hashed>()?;
            match key.as_str() {
                "temperature" => temperature = value.number,
                "n" => n = value.number,
                _ => {}
            }
            entries.push((key, value.hash));
        }
        entries.push((
            Key::Borrowed("model"),
            tagged(TAG_STRING, self.upstream_id.as_bytes()),
        ));
        Ok(TopHash {
            hash: object_hash(&mut entries)?,
            temperature,
            n,
        })
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

/// One Anthropic SSE event: `event: NAME\ndata: JSON\n\n`.
fn messages_event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// A stored Anthropic Message replayed as the event stream a streaming Anthropic client expects
/// (<https://docs.claude.com/en/api/messages-streaming>, the order the mock's Anthropic mode follows too):
/// `message_start` (the message with no content yet, its usage with `output_tokens` 0), per content block
/// `content_block_start` / one delta / `content_block_stop` — `text_delta` for text, `thinking_delta` then
/// `signature_delta` for thinking, `input_json_delta` with the input's JSON for `tool_use` and
/// `server_tool_use`; any other block (`redacted_thinking`, server tool results) whole in its
/// `content_block_start`, as Anthropic streams them — then `message_delta` (`stop_reason`, `stop_sequence`, the
/// usage) and `message_stop`.
pub fn replay_messages_sse(body: &[u8]) -> Option<Bytes> {
    let message: Value = serde_json::from_slice(body).ok()?;
    if message.get("type").and_then(Value::as_str) != Some("message") {
        return None;
    }
    let blocks = message.get("content")?.as_array()?;
    let usage = message.get("usage").cloned().unwrap_or(Value::Null);
    let mut start_usage = usage.clone();
    if let Some(fields) = start_usage.as_object_mut() {
        fields.insert("output_tokens".into(), Value::from(0));
    }
    let mut start = message.clone();
    if let Some(fields) = start.as_object_mut() {
        fields.insert("content".into(), Value::Array(Vec::new()));
        fields.insert("stop_reason".into(), Value::Null);
        fields.insert("stop_sequence".into(), Value::Null);
        fields.insert("usage".into(), start_usage);
    }
    let mut out = Vec::with_capacity(body.len() * 2);
    messages_event(
        &mut out,
        "message_start",
        &serde_json::json!({"type": "message_start", "message": start}),
    );
    for (index, block) in blocks.iter().enumerate() {
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        let field = |name: &str| block.get(name).cloned().unwrap_or(Value::Null);
        let (opening, deltas): (Value, Vec<Value>) = match kind {
            "text" => {
                let mut opening = block.clone();
                if let Some(fields) = opening.as_object_mut() {
                    fields.insert("text".into(), Value::from(""));
                }
                let delta = serde_json::json!({"type": "text_delta", "text": field("text")});
                (opening, vec![delta])
            }
            "thinking" => (
                serde_json::json!({"type": "thinking", "thinking": "", "signature": ""}),
                vec![
                    serde_json::json!({"type": "thinking_delta", "thinking": field("thinking")}),
                    serde_json::json!({"type": "signature_delta", "signature": field("signature")}),
                ],
            ),
            "tool_use" | "server_tool_use" => {
                let mut opening = block.clone();
                if let Some(fields) = opening.as_object_mut() {
                    fields.insert("input".into(), Value::Object(Map::new()));
                }
                let input = block
                    .get("input")
                    .map_or_else(String::new, Value::to_string);
                let delta = serde_json::json!({"type": "input_json_delta", "partial_json": input});
                (opening, vec![delta])
            }
            _ => (block.clone(), Vec::new()),
        };
        messages_event(
            &mut out,
            "content_block_start",
            &serde_json::json!({"type": "content_block_start", "index": index, "content_block": opening}),
        );
        for delta in deltas {
            messages_event(
                &mut out,
                "content_block_delta",
                &serde_json::json!({"type": "content_block_delta", "index": index, "delta": delta}),
            );
        }
        messages_event(
            &mut out,
            "content_block_stop",
            &serde_json::json!({"type": "content_block_stop", "index": index}),
        );
    }
    messages_event(
        &mut out,
        "message_delta",
        &serde_json::json!({
            "type": "message_delta",
            "delta": {
                "stop_reason": message.get("stop_reason").cloned().unwrap_or(Value::Null),
                "stop_sequence": message.get("stop_sequence").cloned().unwrap_or(Value::Null),
            },
            "usage": usage,
        }),
    );
    messages_event(
        &mut out,
        "message_stop",
        &serde_json::json!({"type": "message_stop"}),
    );
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
    fn keys_ignore_escapes_and_number_forms_but_not_nesting() {
        let plain = br#"{"model":"a","temperature":0,"messages":[{"role":"user","content":"A\u00e9 1.5"}],"max_tokens":10}"#;
        let escaped = br#"{"max_tokens":10.0,"messages":[{"content":"\u0041\u00E9 1.5","role":"user"}],"temperature":0.0,"model":"b"}"#;
        let (a, b) = (cache_key(plain, "up", true), cache_key(escaped, "up", true));
        assert!(a.is_some());
        assert_eq!(a, b);
        // Same strings, different structure: a string vs a one-element list, an object vs its entries.
        let listed = br#"{"model":"a","temperature":0,"messages":[{"role":["user"],"content":"A\u00e9 1.5"}],"max_tokens":10}"#;
        assert_ne!(a, cache_key(listed, "up", true));
        assert_ne!(a, cache_key(plain, "other-upstream", true));
        assert_ne!(
            cache_key(br#"{"temperature":0,"x":1.5}"#, "m", true),
            cache_key(br#"{"temperature":0,"x":1.25}"#, "m", true)
        );
        // Not JSON, trailing bytes, not an object: not cacheable.
        assert_eq!(cache_key(br#"{"temperature":0"#, "m", true), None);
        assert_eq!(cache_key(br#"{"temperature":0} x"#, "m", true), None);
        assert_eq!(cache_key(b"\"s\"", "m", false), None);
        // A key given twice, at the top or deeper: the provider decides which counts, so never cached (the two
        // orders would otherwise share a key and one answer).
        assert_eq!(
            cache_key(br#"{"temperature":0,"x":1,"x":2}"#, "m", true),
            None
        );
        assert_eq!(
            cache_key(
                br#"{"temperature":0,"messages":[{"content":"a","content":"b"}]}"#,
                "m",
                true
            ),
            None
        );
        assert!(cache_key(br#"{"temperature":0,"x":1,"y":{"x":2}}"#, "m", true).is_some());
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
            cache.put(k, Bytes::from(vec![b'x'; 1000]), None);
        }
        cache.cache.run_pending_tasks();
        assert!(cache.stats().bytes <= 10_000, "{:?}", cache.stats());
    }

    #[test]
    fn expires_after_the_ttl() {
        let cache = ResponseCache::new(1 << 20, Duration::from_millis(50));
        cache.put(1, Bytes::from_static(b"{}"), None);
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

    #[test]
    fn an_anthropic_request_never_shares_a_key_with_chat_nor_across_betas() {
        let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "temperature": 0});
        let chat = key(body, true).unwrap();
        let messages = api_key(chat, "messages", &[b"2023-06-01", b""]);
        assert_ne!(messages, chat);
        assert_eq!(messages, api_key(chat, "messages", &[b"2023-06-01", b""]));
        assert_ne!(
            messages,
            api_key(chat, "messages", &[b"2023-06-01", b"context-1m-2025-08-07"])
        );
        // The header boundary counts: ("ab", "") is not ("a", "b").
        assert_ne!(
            api_key(chat, "messages", &[b"ab", b""]),
            api_key(chat, "messages", &[b"a", b"b"])
        );
    }

    #[test]
    fn a_stored_message_replays_as_anthropics_event_stream() {
        let message = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-mock",
            "content": [
                {"type": "thinking", "thinking": "Hmm.", "signature": "c2ln"},
                {"type": "text", "text": "Hello"},
                {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"a": 1}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 5, "cache_read_input_tokens": 2, "output_tokens": 7}
        });
        let replay = replay_messages_sse(&serde_json::to_vec(&message).unwrap()).unwrap();
        let text = String::from_utf8(replay.to_vec()).unwrap();
        let events: Vec<(String, Value)> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once("\ndata: ").unwrap();
                (
                    name.strip_prefix("event: ").unwrap().to_string(),
                    serde_json::from_str(data).unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[0].1["message"]["content"], json!([]));
        assert_eq!(events[0].1["message"]["usage"]["output_tokens"], 0);
        assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 5);
        assert_eq!(events[3].1["delta"]["signature"], "c2ln");
        assert_eq!(events[6].1["delta"]["text"], "Hello");
        assert_eq!(events[8].1["content_block"]["input"], json!({}));
        assert_eq!(events[9].1["delta"]["partial_json"], "{\"a\":1}");
        assert_eq!(events[11].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[11].1["usage"], message["usage"]);
        assert!(replay_messages_sse(b"{\"object\":\"chat.completion\"}").is_none());
    }
}
