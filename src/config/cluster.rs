//! `[cluster]`: what several instances share beyond the database — provider request budgets through Redis.

use std::time::Duration;

use serde::Deserialize;

use super::{EnvSource, Secret, expand_vars, units};

pub const DEFAULT_CLUSTER_KEY_PREFIX: &str = "kimi-proxy";
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 50;

/// What a request does when Redis cannot be asked in time (`[cluster] on_redis_error`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RedisFailure {
    /// The instance applies each budget alone, as without Redis (counted and logged).
    #[default]
    Open,
    /// The request is refused with a 429 (counted and logged).
    Closed,
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[USER:PASSWORD@]HOST:PORT[/DB]`: providers' `requests_per_minute` budgets are shared by every
    /// instance on this Redis. A secret (it may carry a password); `${VAR}` is expanded.
    pub redis: Option<Secret>,
    /// Keys are `<prefix>:rpm:<provider>`; instances sharing budgets use the same prefix.
    pub key_prefix: String,
    /// Requests an instance takes from Redis at once and then admits without asking (0: 1 % of the budget, at
    /// least 1). The fleet may admit up to this many fewer per instance than the budget, never more.
    pub local_allowance: u32,
    /// Longest a request waits for Redis; beyond it `on_redis_error` applies.
    #[serde(rename = "redis_timeout_ms", deserialize_with = "units::ms")]
    pub redis_timeout: Duration,
    /// `open` (default) or `closed`.
    #[serde(rename = "on_redis_error")]
    pub on_redis_error_name: Option<String>,
    #[serde(skip)]
    pub on_redis_error: RedisFailure,
    /// The response cache (`[cache]`) is shared by every instance on this Redis: an answer stored by one is a hit
    /// on the others. Needs `redis`.
    pub response_cache: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: None,
            key_prefix: DEFAULT_CLUSTER_KEY_PREFIX.to_string(),
            local_allowance: 0,
            redis_timeout: Duration::from_millis(DEFAULT_REDIS_TIMEOUT_MS),
            on_redis_error_name: None,
            on_redis_error: RedisFailure::Open,
            response_cache: false,
        }
    }
}

impl ClusterConfig {
    pub(super) fn resolve(&mut self, env: &dyn EnvSource, errors: &mut Vec<String>) {
        if let Some(url) = &self.redis {
            match expand_vars(url.expose(), env) {
                // Parsed only (nothing is connected while the configuration loads); the client's own message
                // names no password.
                Ok(value) => match redis::Client::open(value.as_str()) {
                    Ok(_) => self.redis = Some(Secret::new(value)),
                    Err(error) => errors.push(format!(
                        "cluster.redis must be a Redis URL (redis://HOST:PORT[/DB]): {error}"
                    )),
                },
                Err(error) => errors.push(format!("cluster.redis: {error}")),
            }
        }
        if self.response_cache && self.redis.is_none() {
            errors.push("cluster.response_cache needs cluster.redis".into());
        }
        if self.key_prefix.trim().is_empty() {
            errors.push("cluster.key_prefix must not be empty".into());
        }
        if self.redis_timeout.is_zero() {
            errors.push("cluster.redis_timeout_ms must be at least 1".into());
        }
        self.on_redis_error = match self.on_redis_error_name.as_deref() {
            None | Some("open") => RedisFailure::Open,
            Some("closed") => RedisFailure::Closed,
            Some(other) => {
                errors.push(format!(
                    "cluster.on_redis_error: `{other}` is neither `open` nor `closed`"
                ));
                RedisFailure::Open
            }
        };
    }

    /// The Redis URL without its password, for logs.
    pub fn redis_shown(&self) -> Option<String> {
        let url = self.redis.as_ref()?.expose();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Some("redis://…".into());
        };
        let rest = match rest.rsplit_once('@') {
            Some((_, host)) => host,
            None => rest,
        };
        Some(format!("{scheme}://{rest}"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_redis_url_is_shown_without_its_password_and_checked() {
        let mut cluster = ClusterConfig {
            redis: Some(Secret::new(
                "redis://kimi:s3cret@cache.internal:6380/2".into(),
            )),
            ..ClusterConfig::default()
        };
        let mut errors = Vec::new();
        cluster.resolve(&|_: &str| None, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            cluster.redis_shown().unwrap(),
            "redis://cache.internal:6380/2"
        );
        assert!(!format!("{cluster:?}").contains("s3cret"));

        let mut bad = ClusterConfig {
            redis: Some(Secret::new("http://cache.internal".into())),
            on_redis_error_name: Some("maybe".into()),
            ..ClusterConfig::default()
        };
        bad.resolve(&|_: &str| None, &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(|e| !e.contains("s3cret")));
    }
}
