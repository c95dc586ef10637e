//! Several instances sharing provider budgets through Redis (`[cluster] redis`): two real proxy processes on the
//! machine's Redis (`KIMI_TEST_REDIS`, default 127.0.0.1:6379), each test under keys of its own. Skipped, and
//! said so, when no Redis answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::pg::PgRelay;
use common::{MockUpstream, Proxy, chat_body, client, get_json, mock_config};
use serde_json::Value;

fn redis_addr() -> String {
    std::env::var("KIMI_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

/// Whether a Redis answers `PING` at [`redis_addr`]; prints why not.
async fn redis_up() -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut socket = tokio::net::TcpStream::connect(redis_addr()).await?;
        socket.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 16];
        let n = socket.read(&mut buf).await?;
        Ok::<bool, std::io::Error>(buf[..n].starts_with(b"+PONG"))
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(true)) => true,
        other => {
            eprintln!("SKIPPED: no Redis answers at {} ({other:?})", redis_addr());
            false
        }
    }
}

/// Keys of this test run only.
fn prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("kp-test-{test}-{}-{nanos}", std::process::id())
}

/// The mock provider with a budget of `rpm` requests a minute (no waiting: over it, a 429 at once), and
/// `[cluster]` on `redis` with `cluster_extra`.
fn config(mock: &MockUpstream, rpm: u32, redis: &str, cluster_extra: &str) -> String {
    mock_config(
        mock,
        &format!("[cluster]\nredis = \"redis://{redis}\"\n{cluster_extra}\n"),
    )
    .replace(
        "[providers.mock.retry]",
        &format!(
            "requests_per_minute = {rpm}\nrate_limit_max_wait_ms = 0\n\n[providers.mock.retry]"
        ),
    )
}

async fn chat(proxy: &Proxy) -> u16 {
    client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn shared_stats(proxy: &Proxy) -> Value {
    let stats: Value = get_json(proxy, "/api/stats").await;
    stats["rate_limits"]["mock"]["shared"].clone()
}

#[tokio::test]
async fn two_instances_share_one_budget() {
    if !redis_up().await {
        return;
    }
    let mock = MockUpstream::start().await.unwrap();
    const RPM: u32 = 30;
    const ALLOWANCE: u32 = 3;
    let config = config(
        &mock,
        RPM,
        &redis_addr(),
        &format!(
            "key_prefix = \"{}\"\nlocal_allowance = {ALLOWANCE}",
            prefix("share")
        ),
    );
    let a = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    let b = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;

    let started = Instant::now();
    let (mut admitted, mut refused) = ([0u32; 2], [0u32; 2]);
    for i in 0..(3 * RPM) {
        let which = (i % 2) as usize;
        match chat(if which == 0 { &a } else { &b }).await {
            200 => admitted[which] += 1,
            429 => refused[which] += 1,
            other => panic!("status {other}\n{}\n{}", a.log(), b.log()),
        }
    }
    let elapsed = started.elapsed();
    let total = admitted[0] + admitted[1];
    // GCRA frees one more request every 60 s / RPM = 2 s after the burst.
    let freed = (elapsed.as_secs_f64() / (60.0 / f64::from(RPM))).ceil() as u32;
    // Each instance alone would admit RPM (2 × RPM together); shared, the fleet admits the budget, less at most
    // one lease per instance that was taken and not used.
    assert!(
        total <= RPM + freed,
        "admitted {admitted:?} (refused {refused:?}) in {elapsed:?}: over the shared budget of {RPM}"
    );
    assert!(
        total + 2 * ALLOWANCE >= RPM,
        "admitted {admitted:?} (refused {refused:?}): under the budget by more than the leases"
    );
    assert!(
        admitted[0] > 0 && admitted[1] > 0,
        "both instances admit: {admitted:?}"
    );
    assert_eq!(
        mock.stats()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        u64::from(total),
        "the provider saw exactly the admitted requests"
    );
    for proxy in [&a, &b] {
        let shared = shared_stats(proxy).await;
        assert_eq!(shared["local_allowance"], ALLOWANCE, "{shared}");
        assert_eq!(shared["redis_failures"], 0, "{shared}");
        assert!(
            shared["admitted_from_lease"].as_u64().unwrap() > 0,
            "{shared}"
        );
        assert!(!shared.to_string().contains("password"), "{shared}");
    }
}

#[tokio::test]
async fn redis_down_fails_open_counted_and_logged_then_shares_again() {
    if !redis_up().await {
        return;
    }
    let relay = PgRelay::start_to(redis_addr()).await;
    let mock = MockUpstream::start().await.unwrap();
    let config = config(
        &mock,
        1000,
        &format!("127.0.0.1:{}", relay.port),
        &format!(
            "key_prefix = \"{}\"\nlocal_allowance = 1\nredis_timeout_ms = 100",
            prefix("down")
        ),
    );
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    for _ in 0..5 {
        assert_eq!(chat(&proxy).await, 200);
    }
    let before = shared_stats(&proxy).await;
    assert_eq!(before["redis_failures"], 0, "{before}");
    assert!(before["redis_calls"].as_u64().unwrap() >= 1, "{before}");

    relay.down();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(chat(&proxy).await, 200, "{}", proxy.log());
        slowest = slowest.max(started.elapsed());
    }
    // Served throughout: a request waits for Redis at most its timeout (100 ms), then goes on without it.
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    let down = shared_stats(&proxy).await;
    assert!(down["redis_failures"].as_u64().unwrap() >= 1, "{down}");
    assert!(down["redis_unavailable"].as_u64().unwrap() >= 1, "{down}");
    assert_eq!(down["on_redis_error"], "open", "{down}");
    let log = proxy.log();
    assert!(log.contains("Redis unreachable"), "{log}");

    relay.up();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(chat(&proxy).await, 200);
        if proxy.log().contains("Redis answers again") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = shared_stats(&proxy).await["redis_calls"].as_u64().unwrap();
    for _ in 0..3 {
        assert_eq!(chat(&proxy).await, 200);
    }
    let after = shared_stats(&proxy).await;
    assert!(after["redis_calls"].as_u64().unwrap() > calls, "{after}");
}

#[tokio::test]
async fn redis_down_fails_closed_when_configured() {
    if !redis_up().await {
        return;
    }
    let relay = PgRelay::start_to(redis_addr()).await;
    let mock = MockUpstream::start().await.unwrap();
    let config = config(
        &mock,
        1000,
        &format!("127.0.0.1:{}", relay.port),
        &format!(
            "key_prefix = \"{}\"\nlocal_allowance = 1\nredis_timeout_ms = 100\non_redis_error = \"closed\"",
            prefix("closed")
        ),
    );
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    assert_eq!(chat(&proxy).await, 200);
    relay.down();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(chat(&proxy).await);
    }
    // At most the request that found one leased request left goes; the others are refused.
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 4,
        "{statuses:?}"
    );
    let shared = shared_stats(&proxy).await;
    assert_eq!(shared["on_redis_error"], "closed", "{shared}");
    assert!(shared["refused"].as_u64().unwrap() >= 4, "{shared}");
}
