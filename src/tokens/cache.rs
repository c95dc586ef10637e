//! Per-message token cache. Agents resend the whole conversation every turn; with this cache a turn only
//! tokenises the messages it has not seen before.

use std::sync::atomic::{AtomicU64, Ordering};

/// Whose text a cached count is, for the prompt breakdown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    System,
    #[default]
    User,
    Assistant,
    Tool,
    ToolSchema,
}

/// The counted parts of one message (without the per-request framing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageTokens {
    pub role: Role,
    /// Role, name and the per-message framing.
    pub framing: u32,
    /// Text content (exact for the tokenizer).
    pub text: u32,
    /// Assistant tool calls: names and arguments (exact) plus their formatting (estimated).
    pub tool_calls: u32,
    /// Images and other non-text parts (estimated).
    pub media: u32,
    /// Whether any part of this count is an estimate.
    pub estimated: bool,
}

impl MessageTokens {
    pub fn total(&self) -> u64 {
        u64::from(self.framing)
            + u64::from(self.text)
            + u64::from(self.tool_calls)
            + u64::from(self.media)
    }
}

/// A bounded concurrent cache (TinyLFU admission, so one huge conversation cannot flush everyone else's).
pub struct MessageCache {
    cache: moka::sync::Cache<u128, MessageTokens>,
    max_entries: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Approximate memory per entry: key, value and moka's bookkeeping.
pub const BYTES_PER_ENTRY: u64 = 96;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CacheStats {
    pub entries: u64,
    pub max_entries: u64,
    pub approx_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: f64,
}

impl MessageCache {
    /// `max_bytes` bounds the memory; the entry limit follows from it.
    pub fn new(max_bytes: u64) -> Self {
        let max_entries = (max_bytes / BYTES_PER_ENTRY).max(16);
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .build(),
            max_entries,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get_or_count(
        &self,
        key: u128,
        count: impl FnOnce() -> MessageTokens,
    ) -> (MessageTokens, bool) {
        if let Some(found) = self.cache.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return (found, true);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let counted = count();
        self.cache.insert(key, counted);
        (counted, false)
    }

    pub fn stats(&self) -> CacheStats {
        let hits = self.hits.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        let entries = self.cache.entry_count();
        CacheStats {
            entries,
            max_entries: self.max_entries,
            approx_bytes: entries * BYTES_PER_ENTRY,
            hits,
            misses,
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_once_and_reports_hits() {
        let cache = MessageCache::new(1 << 20);
        let mut calls = 0;
        for _ in 0..3 {
            let (t, _) = cache.get_or_count(7, || {
                calls += 1;
                MessageTokens {
                    text: 5,
                    ..Default::default()
                }
            });
            assert_eq!(t.text, 5);
        }
        assert_eq!(calls, 1);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (2, 1));
    }

    #[test]
    fn stays_bounded() {
        let cache = MessageCache::new(16 * BYTES_PER_ENTRY);
        for key in 0..10_000u128 {
            cache.get_or_count(key, MessageTokens::default);
        }
        cache.cache.run_pending_tasks();
        assert!(cache.stats().entries <= 16, "{:?}", cache.stats());
    }
}
