//! Provider request budgets shared by several instances through Redis (`[cluster] redis`).
//!
//! The budget is a GCRA (the same rule as the local limiter in `ratelimit.rs`: a full minute's budget may be used
//! in a burst, then one request per interval) kept in one Redis key per provider and decided atomically by a Lua
//! script. An instance does not ask Redis for every request: it takes a *lease* of `local_allowance` requests at
//! once and admits from it locally (an uncontended lock, no network); when the lease runs half empty a background
//! task takes the next one. A request waits on Redis only when its instance holds no lease at all, and then no
//! longer than `redis_timeout`. Leased requests are taken from the shared budget before they are admitted, so the
//! fleet never admits more than the budget; unused leases expire after [`LEASE_TTL`], so it admits at most
//! `local_allowance` fewer per instance.
//!
//! When Redis does not answer in time, `on_redis_error` decides: `open` (default) — the instance applies the
//! budget alone with its local limiter, as without Redis; `closed` — the request gets a 429. Either way it is
//! counted (`/api/stats` → `rate_limits.<provider>.shared`) and logged (at most once a minute), and Redis is asked
//! again in the background, at most once per [`RETRY_DOWN`], while requests go on without waiting for it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{OnceCell, watch};
use tokio::time::Instant;

use super::ratelimit::{RateLimiter, Refusal};
use crate::config::{ClusterConfig, RedisFailure};
use crate::util::LogThrottle;

/// Unused leased requests are given up after this long, so an idle instance's lease cannot be spent in a later
/// window on top of what the others took meanwhile.
pub const LEASE_TTL: Duration = Duration::from_secs(1);
/// While Redis is unreachable, it is asked again (in the background) at most this often per budget.
pub const RETRY_DOWN: Duration = Duration::from_secs(1);
/// The first connection (in the background) may take this long; a request never waits for it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MINUTE: Duration = Duration::from_secs(60);
/// Admissions remembered for `requests_last_minute` (the statistic saturates there).
const MAX_ADMITTED_SAMPLES: usize = 65_536;

/// GCRA, "take up to n now", atomically in Redis. KEYS[1]: the budget; ARGV: emission interval (µs per request),
/// burst (requests at once), requests wanted. Returns {granted, µs until the next request is free}.
///
/// The time is the Redis server's (`TIME`), in whole microseconds (exact in a Lua double), so instances whose clocks
/// differ still share one clock. A script that calls `TIME` and then writes is replicated by its effects, the
/// default since Redis 5 and the only mode since Redis 7 (https://redis.io/docs/latest/develop/interact/
/// programmability/eval-intro/, "Script replication"). The rule follows go-redis/redis_rate's `allowAtMost`
/// (GCRA with a burst; remaining = (now - (tat - burst·interval)) / interval), in integers. The key expires when
/// its theoretical arrival time has passed: a budget fully refilled needs no state.
const GCRA_SCRIPT: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local free = math.floor((now + burst * interval - tat) / interval)
if free < 0 then free = 0 end
local granted = math.min(free, want)
if granted > 0 then
  tat = tat + granted * interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
local retry = tat - (burst - 1) * interval - now
if retry < 0 then retry = 0 end
return {granted, retry}
";

/// The instance's Redis client, shared by every budget.
pub struct RedisLink {
    client: redis::Client,
    manager: OnceCell<redis::aio::ConnectionManager>,
    script: redis::Script,
    timeout: Duration,
    prefix: String,
    failure: RedisFailure,
    shown: String,
    log: LogThrottle,
}

impl RedisLink {
    /// `None` without `[cluster] redis`; an unusable URL is an error (nothing is connected yet: the first use
    /// connects, in the background).
    pub fn new(cluster: &ClusterConfig) -> Result<Option<Arc<RedisLink>>, String> {
        let Some(url) = &cluster.redis else {
            return Ok(None);
        };
        let shown = cluster.redis_shown().unwrap_or_default();
        let client = redis::Client::open(url.expose())
            .map_err(|e| format!("cluster.redis ({shown}): {e}"))?;
        Ok(Some(Arc::new(RedisLink {
            client,
            manager: OnceCell::new(),
            script: redis::Script::new(GCRA_SCRIPT),
            timeout: cluster.redis_timeout,
            prefix: cluster.key_prefix.clone(),
            failure: cluster.on_redis_error,
            shown,
            log: LogThrottle::new(),
        })))
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The connection, made on first use (in a background task: a refill or [`RedisLink::warm_up`]) within
    /// [`CONNECT_TIMEOUT`], with the script loaded so that each call is one `EVALSHA`. Later reconnections are the
    /// manager's own; a command waits at most the link's timeout.
    async fn connection(&self) -> Result<redis::aio::ConnectionManager, String> {
        let manager = self
            .manager
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(self.timeout.max(Duration::from_millis(250))))
                    .set_number_of_retries(1);
                let connect = async {
                    let mut manager =
                        redis::aio::ConnectionManager::new_with_config(self.client.clone(), config)
                            .await?;
                    self.script.load_async(&mut manager).await?;
                    Ok::<_, redis::RedisError>(manager)
                };
                match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                    Ok(Ok(manager)) => Ok(manager),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(format!("cannot connect within {CONNECT_TIMEOUT:?}")),
                }
            })
            .await?;
        Ok(manager.clone())
    }

    /// Connects in the background (at start), so the first requests find Redis ready.
    pub fn warm_up(self: &Arc<Self>) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let this = Arc::clone(self);
            runtime.spawn(async move {
                if let Err(error) = this.connection().await {
                    tracing::warn!(redis = %this.shown, %error, "Redis unreachable at start: budgets are applied per instance until it answers");
                }
            });
        }
    }

    /// `<prefix>:<kind>:<name>`: the keys of everything this fleet shares.
    pub fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }

    /// Runs `script` on `key` with integer arguments (`EVALSHA`, loading it first when Redis does not know it),
    /// within the link's timeout (from a background task: it may wait for the connection).
    pub async fn run_script<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        key: &str,
        args: &[i64],
    ) -> Result<T, String> {
        let mut connection = self.connection().await?;
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        let call = invocation.invoke_async::<T>(&mut connection);
        match tokio::time::timeout(self.timeout.max(Duration::from_millis(250)), call).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// `GET key` within the link's timeout (a connection not made yet is waited for no longer either).
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let call = async {
            let mut connection = self.connection().await?;
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(&mut connection)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// `SET key value PX ttl` (from a background task: it may wait for the connection).
    pub async fn set_bytes(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), String> {
        let mut connection = self.connection().await?;
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut command = redis::cmd("SET");
        command.arg(key).arg(value).arg("PX").arg(millis);
        let call = command.query_async::<()>(&mut connection);
        match tokio::time::timeout(self.timeout.max(Duration::from_millis(250)), call).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Runs the GCRA script: requests granted now (≤ `want`) and the wait until the next one is free.
    async fn take(
        &self,
        key: &str,
        interval_us: u64,
        burst: u32,
        want: u32,
    ) -> Result<(u32, Duration), String> {
        let mut connection = self.connection().await?;
        let mut invocation = self.script.key(key);
        invocation.arg(interval_us).arg(burst).arg(want);
        let call = invocation.invoke_async::<(i64, i64)>(&mut connection);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((granted, retry_us))) => Ok((
                u32::try_from(granted.max(0)).unwrap_or(0),
                Duration::from_micros(u64::try_from(retry_us.max(0)).unwrap_or(0)),
            )),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// What a shared budget decided for one request.
#[derive(Debug, PartialEq)]
pub enum Acquire {
    /// Admitted (from the lease, possibly after waiting within `rate_limit_max_wait_ms`).
    Admitted,
    /// Over the budget beyond `rate_limit_max_wait_ms`, or Redis unreachable with `on_redis_error = "closed"`.
    Refused(Refusal),
    /// Redis unreachable with `on_redis_error = "open"`: the caller applies the local limiter.
    Local,
}

/// The next thing a request does, decided under the lease's lock.
enum Step {
    Admitted,
    Unavailable,
    Refused(Duration),
    Sleep(Instant),
    AwaitRefill(watch::Receiver<u64>),
}

struct Lease {
    /// Requests taken from Redis and not admitted yet.
    slots: u32,
    expires: Instant,
    /// A refill task is running.
    refilling: bool,
    /// Redis said the budget is spent until then.
    blocked_until: Option<Instant>,
    /// Redis did not answer: until this instant requests do not wait for it.
    down_until: Option<Instant>,
    /// When this instance admitted its requests of the last minute (at most the budget's), for the stats.
    admitted: VecDeque<Instant>,
}

#[derive(Default)]
struct Counters {
    /// Admitted from a lease without waiting for Redis.
    local: AtomicU64,
    /// Admitted after waiting for a Redis answer.
    waited: AtomicU64,
    refused: AtomicU64,
    /// Script calls, and the ones that failed or timed out.
    calls: AtomicU64,
    failures: AtomicU64,
    /// Requests decided without Redis because it was unreachable (local limiter, or refused when closed).
    unavailable: AtomicU64,
}

/// The counters of one shared budget (`/api/stats` → `rate_limits.<provider>.shared`).
#[derive(Debug, Serialize)]
pub struct SharedUsage {
    pub redis: String,
    pub local_allowance: u32,
    pub leased: u32,
    pub admitted_from_lease: u64,
    pub admitted_after_wait: u64,
    pub refused: u64,
    pub redis_calls: u64,
    pub redis_failures: u64,
    /// Requests decided while Redis was unreachable (`on_redis_error`).
    pub redis_unavailable: u64,
    pub on_redis_error: &'static str,
}

/// One provider's `requests_per_minute`, shared through Redis.
pub struct SharedRate {
    link: Arc<RedisLink>,
    key: String,
    interval_us: u64,
    burst: u32,
    allowance: u32,
    max_wait: Duration,
    lease: Mutex<Lease>,
    /// Bumped after each refill, for the requests waiting on it.
    news: watch::Sender<u64>,
    /// The budget applied alone when Redis is unreachable and `on_redis_error = "open"`.
    fallback: RateLimiter,
    counters: Counters,
}

impl SharedRate {
    /// The shared form of `provider`'s budget of `rpm` requests a minute.
    pub fn new(
        link: &Arc<RedisLink>,
        provider: &str,
        rpm: u32,
        allowance: u32,
        max_wait: Duration,
    ) -> Option<Arc<SharedRate>> {
        let rpm = rpm.max(1);
        let allowance = if allowance == 0 {
            (rpm / 100).max(1)
        } else {
            allowance.min(rpm)
        };
        let fallback = RateLimiter::new(Some(rpm), None, max_wait)?;
        let (news, _) = watch::channel(0);
        Some(Arc::new(SharedRate {
            link: Arc::clone(link),
            key: format!("{}:rpm:{provider}", link.prefix),
            // Whole microseconds: budgets above 60,000,000 a minute are 60,000,000.
            interval_us: (60_000_000 / u64::from(rpm)).max(1),
            burst: rpm,
            allowance,
            max_wait,
            lease: Mutex::new(Lease {
                slots: 0,
                expires: Instant::now(),
                refilling: false,
                blocked_until: None,
                down_until: None,
                admitted: VecDeque::new(),
            }),
            news,
            fallback,
            counters: Counters::default(),
        }))
    }

    /// Decides one request: from the lease when it holds one (no network), else after one Redis answer
    /// (bounded by `redis_timeout`), else by `on_redis_error`.
    pub async fn acquire(self: &Arc<Self>) -> Acquire {
        let deadline = Instant::now() + self.max_wait;
        let mut waited = false;
        loop {
            let now = Instant::now();
            // Decided under the lock, carried out after it (no lock is held across an await).
            match self.step(now, deadline) {
                Step::Admitted => {
                    let counter = if waited {
                        &self.counters.waited
                    } else {
                        &self.counters.local
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return Acquire::Admitted;
                }
                Step::Unavailable => return self.unavailable(),
                Step::Refused(retry_after) => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    return Acquire::Refused(Refusal {
                        retry_after,
                        limit: "requests_per_minute",
                    });
                }
                Step::Sleep(until) => {
                    waited = true;
                    tokio::time::sleep_until(until).await;
                }
                Step::AwaitRefill(mut news) => {
                    waited = true;
                    // The refill answers within the link's timeout (or fails): a little margin for its task.
                    let patience = self.link.timeout + Duration::from_millis(20);
                    if tokio::time::timeout(patience, news.changed())
                        .await
                        .is_err()
                    {
                        return self.unavailable();
                    }
                }
            }
        }
    }

    fn step(self: &Arc<Self>, now: Instant, deadline: Instant) -> Step {
        let mut lease = self.lease.lock();
        if lease.expires <= now {
            lease.slots = 0;
        }
        if lease.slots > 0 {
            lease.slots -= 1;
            while lease
                .admitted
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= MINUTE)
                || lease.admitted.len() >= MAX_ADMITTED_SAMPLES
            {
                lease.admitted.pop_front();
            }
            lease.admitted.push_back(now);
            if lease.slots <= self.allowance / 2
                && !lease.refilling
                && lease.blocked_until.is_none_or(|t| t <= now)
            {
                lease.refilling = true;
                self.spawn_refill();
            }
            return Step::Admitted;
        }
        if let Some(until) = lease.down_until {
            if now >= until {
                // Redis was down: ask again in the background; this request does not wait for it.
                lease.down_until = Some(now + RETRY_DOWN);
                if !lease.refilling {
                    lease.refilling = true;
                    self.spawn_refill();
                }
            }
            return Step::Unavailable;
        }
        if let Some(until) = lease.blocked_until
            && until > now
        {
            return if until > deadline {
                Step::Refused(until - now)
            } else {
                Step::Sleep(until)
            };
        }
        let news = self.news.subscribe();
        if !lease.refilling {
            lease.refilling = true;
            self.spawn_refill();
        }
        Step::AwaitRefill(news)
    }

    /// Redis cannot be asked: `on_redis_error` decides (counted).
    fn unavailable(&self) -> Acquire {
        self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
        match self.link.failure {
            RedisFailure::Open => Acquire::Local,
            RedisFailure::Closed => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                Acquire::Refused(Refusal {
                    retry_after: RETRY_DOWN,
                    limit: "requests_per_minute",
                })
            }
        }
    }

    /// The local limiter used when Redis is unreachable and `on_redis_error = "open"`.
    pub fn fallback(&self) -> &RateLimiter {
        &self.fallback
    }

    fn spawn_refill(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.refill().await });
    }

    /// Takes the next lease from Redis; wakes whoever waits for it.
    async fn refill(&self) {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let result = self
            .link
            .take(&self.key, self.interval_us, self.burst, self.allowance)
            .await;
        let now = Instant::now();
        {
            let mut lease = self.lease.lock();
            lease.refilling = false;
            match &result {
                Ok((granted, retry)) => {
                    if lease.down_until.take().is_some() {
                        tracing::info!(redis = %self.link.shown, budget = %self.key, "Redis answers again: the budget is shared again");
                    }
                    if lease.expires <= now {
                        lease.slots = 0;
                    }
                    lease.slots += granted;
                    lease.expires = now + LEASE_TTL;
                    // Short of the lease: no new one before Redis says one is free (at least 1 ms, so an answer
                    // of "none, now" cannot turn into a storm of calls).
                    lease.blocked_until = (*granted < self.allowance)
                        .then(|| now + (*retry).max(Duration::from_millis(1)));
                }
                Err(_) => {
                    lease.down_until = Some(now + RETRY_DOWN);
                }
            }
        }
        if let Err(error) = result {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            if self.link.log.ready(Duration::from_secs(60)) {
                tracing::warn!(
                    redis = %self.link.shown,
                    budget = %self.key,
                    %error,
                    failures = self.counters.failures.load(Ordering::Relaxed),
                    on_redis_error = failure_name(self.link.failure),
                    "Redis unreachable: the shared budget is not applied"
                );
            }
        }
        self.news.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Requests this instance admitted through the shared budget in the last minute.
    pub fn admitted_last_minute(&self) -> usize {
        let now = Instant::now();
        self.lease
            .lock()
            .admitted
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < MINUTE)
            .count()
    }

    pub fn usage(&self) -> SharedUsage {
        let c = &self.counters;
        let leased = {
            let lease = self.lease.lock();
            if lease.expires > Instant::now() {
                lease.slots
            } else {
                0
            }
        };
        SharedUsage {
            redis: self.link.shown.clone(),
            local_allowance: self.allowance,
            leased,
            admitted_from_lease: c.local.load(Ordering::Relaxed),
            admitted_after_wait: c.waited.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            redis_calls: c.calls.load(Ordering::Relaxed),
            redis_failures: c.failures.load(Ordering::Relaxed),
            redis_unavailable: c.unavailable.load(Ordering::Relaxed),
            on_redis_error: failure_name(self.link.failure),
        }
    }
}

fn failure_name(failure: RedisFailure) -> &'static str {
    match failure {
        RedisFailure::Open => "open",
        RedisFailure::Closed => "closed",
    }
}
