//! Provider budgets, enforced before sending: requests per minute (GCRA, so a full minute's budget may be used in
//! a burst but never more), and tokens per minute (a bucket charged with each request's real tokens once known).
//! A request that would exceed a budget waits, up to a configured maximum; beyond it the client gets a 429 with
//! `Retry-After` — the provider is never hit over its limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

pub struct RateLimiter {
    rpm: Option<u32>,
    tpm: Option<u32>,
    max_wait: Duration,
    state: Mutex<State>,
    /// The token budget is shared (`shared_tokens.rs`): tokens charged here and not yet added to the fleet's.
    sharing: AtomicBool,
    unsynced: AtomicU64,
}

struct State {
    /// GCRA theoretical arrival time of the next request.
    tat: Option<Instant>,
    /// Token bucket level (may go negative: debt from requests that used more than was left).
    tokens: f64,
    refilled_at: Instant,
    /// When the requests of the last minute were admitted (bounded by the budget), for the stats.
    admitted: VecDeque<Instant>,
    tokens_last_minute: VecDeque<(Instant, u64)>,
}

/// Why a request may not go now.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub retry_after: Duration,
    pub limit: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub requests_per_minute: Option<u32>,
    pub requests_last_minute: usize,
    pub tokens_per_minute: Option<u32>,
    pub tokens_last_minute: u64,
    pub max_wait_ms: u64,
    /// Shared through Redis (`[cluster] redis`): the shared budget's counters; the requests counted above are
    /// this instance's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<super::shared_limit::SharedUsage>,
    /// `tokens_per_minute` shared through Redis: the sync's counters; the tokens counted above are this
    /// instance's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_tokens: Option<super::shared_tokens::SharedTokensUsage>,
}

const MINUTE: Duration = Duration::from_secs(60);
/// Entries kept for the tokens-per-minute statistics.
const MAX_TOKEN_SAMPLES: usize = 4096;

impl RateLimiter {
    pub fn new(rpm: Option<u32>, tpm: Option<u32>, max_wait: Duration) -> Option<RateLimiter> {
        if rpm.is_none() && tpm.is_none() {
            return None;
        }
        let now = Instant::now();
        Some(RateLimiter {
            rpm,
            tpm,
            max_wait,
            state: Mutex::new(State {
                tat: None,
                tokens: f64::from(tpm.unwrap_or(0)),
                refilled_at: now,
                admitted: VecDeque::new(),
                tokens_last_minute: VecDeque::new(),
            }),
            sharing: AtomicBool::new(false),
            unsynced: AtomicU64::new(0),
        })
    }

    pub fn tokens_per_minute(&self) -> Option<u32> {
        self.tpm
    }

    /// The tokens charged since the last call, for the fleet's bucket (from now on they are counted).
    pub fn take_unsynced(&self) -> u64 {
        self.sharing.store(true, Ordering::Relaxed);
        self.unsynced.swap(0, Ordering::Relaxed)
    }

    /// Tokens taken by [`RateLimiter::take_unsynced`] that did not reach the fleet's bucket.
    pub fn return_unsynced(&self, tokens: u64) {
        self.unsynced.fetch_add(tokens, Ordering::Relaxed);
    }

    /// The fleet's bucket holds `level` tokens (spending of this instance synced up to now included): the local
    /// bucket follows it, less what was charged here since.
    pub fn follow(&self, level: f64, now: Instant) {
        let Some(tpm) = self.tpm else {
            return;
        };
        let mut state = self.state.lock();
        let pending = self.unsynced.load(Ordering::Relaxed) as f64;
        state.tokens = (level - pending).min(f64::from(tpm));
        state.refilled_at = now;
    }

    /// Reserves a slot for one request: `Ok(wait)` (possibly zero) to sleep before sending, or the refusal.
    pub fn reserve(&self, now: Instant) -> Result<Duration, Refusal> {
        let mut state = self.state.lock();
        let mut wait = Duration::ZERO;
        let mut limit = "";
        if let Some(tpm) = self.tpm {
            let per_second = f64::from(tpm) / 60.0;
            let elapsed = now
                .saturating_duration_since(state.refilled_at)
                .as_secs_f64();
            state.tokens = (state.tokens + elapsed * per_second).min(f64::from(tpm));
            state.refilled_at = now;
            if state.tokens < 0.0 {
                wait = Duration::from_secs_f64(-state.tokens / per_second.max(f64::MIN_POSITIVE));
                limit = "tokens_per_minute";
            }
        }
        let mut new_tat = None;
        if let Some(rpm) = self.rpm {
            let interval = MINUTE / rpm.max(1);
            let tolerance = interval * rpm.saturating_sub(1);
            let tat = state.tat.unwrap_or(now).max(now);
            let allowed_at = tat.checked_sub(tolerance).unwrap_or(now);
            let rpm_wait = allowed_at.saturating_duration_since(now);
            if rpm_wait > wait {
                wait = rpm_wait;
                limit = "requests_per_minute";
            }
            new_tat = Some(tat + interval);
        }
        if wait > self.max_wait {
            return Err(Refusal {
                retry_after: wait,
                limit,
            });
        }
        if let Some(tat) = new_tat {
            state.tat = Some(tat);
        }
        let admitted_at = now + wait;
        state.admitted.push_back(admitted_at);
        while state
            .admitted
            .front()
            .is_some_and(|t| admitted_at.saturating_duration_since(*t) >= MINUTE)
        {
            state.admitted.pop_front();
        }
        Ok(wait)
    }

    /// Charges the tokens a finished request really used.
    pub fn charge(&self, tokens: u64, now: Instant) {
        if self.tpm.is_none() {
            return;
        }
        if self.sharing.load(Ordering::Relaxed) {
            self.unsynced.fetch_add(tokens, Ordering::Relaxed);
        }
        let mut state = self.state.lock();
        state.tokens -= tokens as f64;
        state.tokens_last_minute.push_back((now, tokens));
        while state.tokens_last_minute.len() > MAX_TOKEN_SAMPLES
            || state
                .tokens_last_minute
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= MINUTE)
        {
            state.tokens_last_minute.pop_front();
        }
    }

    pub fn usage(&self) -> Usage {
        let now = Instant::now();
        let state = self.state.lock();
        Usage {
            requests_per_minute: self.rpm,
            requests_last_minute: state
                .admitted
                .iter()
                .filter(|t| now.saturating_duration_since(**t) < MINUTE)
                .count(),
            tokens_per_minute: self.tpm,
            tokens_last_minute: state
                .tokens_last_minute
                .iter()
                .filter(|(t, _)| now.saturating_duration_since(*t) < MINUTE)
                .map(|(_, n)| n)
                .sum(),
            max_wait_ms: self.max_wait.as_millis() as u64,
            shared: None,
            shared_tokens: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_per_minute_allows_a_burst_then_spaces_requests() {
        let limiter = RateLimiter::new(Some(60), None, Duration::from_millis(1500)).unwrap();
        let start = Instant::now();
        for _ in 0..60 {
            assert_eq!(limiter.reserve(start), Ok(Duration::ZERO));
        }
        // The 61st must wait one interval (1 s); the 62nd two — over the 1.5 s maximum: refused.
        assert_eq!(limiter.reserve(start), Ok(Duration::from_secs(1)));
        let refused = limiter.reserve(start).unwrap_err();
        assert_eq!(refused.limit, "requests_per_minute");
        assert_eq!(refused.retry_after, Duration::from_secs(2));
        // A refused request took no slot: a second later one slot is free again.
        assert_eq!(
            limiter.reserve(start + Duration::from_secs(1)),
            Ok(Duration::from_secs(1))
        );
        assert_eq!(limiter.usage().requests_last_minute, 62);
    }

    #[test]
    fn tokens_per_minute_waits_for_the_debt_to_refill() {
        let limiter = RateLimiter::new(None, Some(6000), Duration::from_secs(5)).unwrap();
        let start = Instant::now();
        assert_eq!(limiter.reserve(start), Ok(Duration::ZERO));
        limiter.charge(6000 + 200, start); // 200 tokens of debt, refilled at 100/s
        assert_eq!(limiter.reserve(start), Ok(Duration::from_secs(2)));
        limiter.charge(1000, start);
        let refused = limiter.reserve(start).unwrap_err();
        assert_eq!(refused.limit, "tokens_per_minute");
        assert_eq!(limiter.usage().tokens_last_minute, 7200);
    }

    #[test]
    fn no_budget_no_limiter() {
        assert!(RateLimiter::new(None, None, Duration::ZERO).is_none());
    }
}
