//! Provider token budgets (`tokens_per_minute`) shared by several instances through Redis (`[cluster] redis`).
//!
//! A token budget is charged after the fact, with what each answer really used, so there is nothing to lease as
//! for requests (`shared_limit.rs`). Each instance keeps admitting from its own bucket (`ratelimit.rs`, no
//! network on the request path) and a background task keeps that bucket at the fleet's level: every
//! [`SYNC_INTERVAL`] it adds the tokens this instance spent since the last sync to one bucket in Redis (a Lua
//! script, atomic, on the Redis server's clock) and takes back the fleet's level, less what was spent here
//! meanwhile. The fleet can overshoot by what the instances admit within one sync interval, as one instance
//! overshoots by the request that empties its bucket.
//!
//! When Redis does not answer, the instance goes on with its own bucket (the budget applied alone, as without
//! Redis; counted in `/api/stats` and logged at most once a minute), and the tokens not synced are added to
//! the fleet's bucket at the next sync that succeeds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::ratelimit::RateLimiter;
use super::shared_limit::RedisLink;
use crate::util::LogThrottle;

/// How often an instance syncs its bucket with the fleet's.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// The fleet's token bucket. KEYS[1]: the bucket; ARGV: capacity (the tokens per minute), tokens spent since
/// the last call. Refills at capacity per minute up to capacity, on the server's clock (`TIME`, replicated by
/// effects: see `shared_limit.rs`), then subtracts the spending (the level may go below zero: a debt, repaid
/// by the refill). Returns the level. The key outlives a full refill of its debt, then expires: a full bucket
/// needs no state.
const TOKEN_BUCKET_SCRIPT: &str = r"
local capacity = tonumber(ARGV[1])
local spent = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
if now > at then level = math.min(capacity, level + (now - at) * capacity / 60000000) end
level = level - spent
redis.call('HSET', KEYS[1], 'level', string.format('%.3f', level), 'at', string.format('%.0f', now))
local ttl = 120000
if level < 0 then ttl = ttl + math.ceil(-level * 60000 / capacity) end
redis.call('PEXPIRE', KEYS[1], ttl)
return string.format('%.3f', level)
";

/// One provider's `tokens_per_minute`, shared through Redis.
pub struct SharedTokens {
    link: Arc<RedisLink>,
    key: String,
    limiter: Arc<RateLimiter>,
    script: redis::Script,
    syncs: AtomicU64,
    failures: AtomicU64,
    /// The fleet's level at the last sync, in thousandths of a token (for the stats).
    fleet_level_milli: std::sync::atomic::AtomicI64,
}

/// `/api/stats` → `rate_limits.<provider>.shared_tokens`.
#[derive(Debug, Serialize)]
pub struct SharedTokensUsage {
    pub redis: String,
    pub sync_interval_ms: u64,
    pub redis_syncs: u64,
    pub redis_failures: u64,
    /// Tokens left in the fleet's bucket at the last sync (negative: a debt being repaid).
    pub fleet_tokens_left: f64,
}

impl SharedTokens {
    /// Shares `limiter`'s token budget (it must have one) and starts its sync task (within the runtime; without
    /// one, `None`: the budget stays per instance).
    pub fn start(
        link: &Arc<RedisLink>,
        provider: &str,
        limiter: &Arc<RateLimiter>,
    ) -> Option<Arc<SharedTokens>> {
        let tpm = limiter.tokens_per_minute()?;
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let shared = Arc::new(SharedTokens {
            link: Arc::clone(link),
            key: link.key("tpm", provider),
            limiter: Arc::clone(limiter),
            script: redis::Script::new(TOKEN_BUCKET_SCRIPT),
            syncs: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            fleet_level_milli: std::sync::atomic::AtomicI64::new(i64::from(tpm) * 1000),
        });
        let task = Arc::downgrade(&shared);
        runtime.spawn(async move {
            let log = LogThrottle::new();
            let mut ticks = tokio::time::interval(SYNC_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(shared) = task.upgrade() else {
                    return;
                };
                shared.sync(tpm, &log).await;
            }
        });
        Some(shared)
    }

    /// Adds this instance's spending to the fleet's bucket and follows the fleet's level.
    async fn sync(&self, tpm: u32, log: &LogThrottle) {
        let spent = self.limiter.take_unsynced();
        let result = self
            .link
            .run_script::<String>(&self.script, &self.key, &[i64::from(tpm), clamp(spent)])
            .await
            .and_then(|level| level.parse::<f64>().map_err(|e| e.to_string()));
        match result {
            Ok(level) => {
                self.syncs.fetch_add(1, Ordering::Relaxed);
                self.fleet_level_milli
                    .store((level * 1000.0) as i64, Ordering::Relaxed);
                self.limiter.follow(level, tokio::time::Instant::now());
            }
            Err(error) => {
                // Charged here already; charged to the fleet at the next sync that succeeds.
                self.limiter.return_unsynced(spent);
                self.failures.fetch_add(1, Ordering::Relaxed);
                if log.ready(Duration::from_secs(60)) {
                    tracing::warn!(redis = %self.link.shown(), key = %self.key, %error, "shared token budget: Redis unreachable, the budget is applied per instance meanwhile");
                }
            }
        }
    }

    pub fn usage(&self) -> SharedTokensUsage {
        SharedTokensUsage {
            redis: self.link.shown().to_string(),
            sync_interval_ms: SYNC_INTERVAL.as_millis() as u64,
            redis_syncs: self.syncs.load(Ordering::Relaxed),
            redis_failures: self.failures.load(Ordering::Relaxed),
            fleet_tokens_left: self.fleet_level_milli.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
