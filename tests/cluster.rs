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
    ) + "\n[alerts]\ninterval_ms = 100\n";
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
    // And alerted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alerts: Value = get_json(&proxy, "/api/alerts").await;
        if alerts.to_string().contains("redis_unavailable") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no redis_unavailable alert: {alerts}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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

#[tokio::test]
async fn an_answer_cached_by_one_instance_is_a_hit_on_the_other() {
    if !redis_up().await {
        return;
    }
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(
        &mock,
        &format!(
            "[cluster]\nredis = \"redis://{}\"\nkey_prefix = \"{}\"\nresponse_cache = true\n\n[cache]\nenabled = true\nttl_secs = 60\n",
            redis_addr(),
            prefix("cache")
        ),
    );
    let a = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    let b = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    let mut body = chat_body("mock/model", false);
    body["temperature"] = serde_json::json!(0);
    let ask = |proxy: &Proxy, body: &Value| {
        client()
            .post(proxy.url("/v1/chat/completions"))
            .json(body)
            .send()
    };

    let first = ask(&a, &body).await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("x-kimi-proxy-cache").is_none());
    let first_body = first.bytes().await.unwrap();
    // A's answer reaches Redis from a background writer once its record is finished.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats: Value = get_json(&a, "/api/stats").await;
        if stats["response_cache"]["shared"]["written"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never written: {stats}\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let second = ask(&b, &body).await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-kimi-proxy-cache"], "hit", "{}", b.log());
    assert_eq!(
        second.bytes().await.unwrap(),
        first_body,
        "A's bytes, exactly"
    );
    let requests = || {
        mock.stats()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(requests(), 1, "the provider was asked once for both");

    // B counted the answer it served from the shared entry itself, like A did.
    let records_a = common::recent_records(&a, 1).await;
    let records_b = common::recent_records(&b, 1).await;
    assert_eq!(records_b[0]["cache_hit"], true);
    assert_eq!(
        records_b[0]["completion_tokens"], records_a[0]["completion_tokens"],
        "{records_a:?}\n{records_b:?}"
    );
    let shared = get_json::<Value>(&b, "/api/stats").await["response_cache"]["shared"].clone();
    assert_eq!(shared["hits"], 1, "{shared}");
    assert_eq!(shared["read_failures"], 0, "{shared}");

    // Another request is a miss on both tiers and goes to the provider.
    body["messages"][1]["content"] = Value::from("Say goodbye.");
    assert_eq!(ask(&b, &body).await.unwrap().status(), 200);
    assert_eq!(requests(), 2);
    let shared = get_json::<Value>(&b, "/api/stats").await["response_cache"]["shared"].clone();
    assert_eq!(shared["misses"], 1, "{shared}");
}

#[tokio::test]
async fn an_unreachable_shared_cache_is_a_miss_and_the_request_is_served() {
    // Nothing listens on a port bound and released at once: every shared read fails.
    let mock = MockUpstream::start().await.unwrap();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let config = mock_config(
        &mock,
        &format!(
            "[cluster]\nredis = \"redis://{dead}\"\nresponse_cache = true\nredis_timeout_ms = 50\n\n[cache]\nenabled = true\nttl_secs = 60\n"
        ),
    );
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    let mut body = chat_body("mock/model", false);
    body["temperature"] = serde_json::json!(0);
    let started = Instant::now();
    let answer = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the request did not wait on Redis beyond its timeout"
    );
    let shared = get_json::<Value>(&proxy, "/api/stats").await["response_cache"]["shared"].clone();
    assert_eq!(shared["read_failures"], 1, "{shared}");
    assert!(!shared.to_string().contains("password"), "{shared}");
}

#[tokio::test]
async fn an_instance_refuses_once_the_fleet_has_spent_the_token_budget() {
    if !redis_up().await {
        return;
    }
    let mock = MockUpstream::start().await.unwrap();
    const TPM: u64 = 400;
    let config = mock_config(
        &mock,
        &format!(
            "[cluster]\nredis = \"redis://{}\"\nkey_prefix = \"{}\"\n",
            redis_addr(),
            prefix("tokens")
        ),
    )
    .replace(
        "[providers.mock.retry]",
        &format!("tokens_per_minute = {TPM}\nrate_limit_max_wait_ms = 0\n\n[providers.mock.retry]"),
    );
    let a = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    let b = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;

    // Alternate between the instances, each request after the last one's tokens were synced (100 ms), until
    // both refuse.
    let mut spent = [0u64; 2];
    let mut refused = [false; 2];
    for i in 0..100 {
        if refused == [true, true] {
            break;
        }
        let which = i % 2;
        let proxy = if which == 0 { &a } else { &b };
        match chat(proxy).await {
            200 => {
                let record = common::recent_records(proxy, 1).await.remove(0);
                spent[which] += record["prompt_tokens"].as_u64().unwrap()
                    + record["completion_tokens"].as_u64().unwrap();
            }
            429 => refused[which] = true,
            other => panic!("status {other}\n{}\n{}", a.log(), b.log()),
        }
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    assert_eq!(refused, [true, true], "spent {spent:?}");
    let per_request = spent[0].max(spent[1]) / 2;
    // Alone, each instance would spend the whole budget; shared, the fleet spends it once (plus what refills
    // during the test, 400 a minute, and the request that empties the bucket on each instance).
    assert!(
        spent[0] < TPM && spent[1] < TPM,
        "each instance refused before spending the budget alone: {spent:?}"
    );
    assert!(
        spent[0] + spent[1] <= TPM + TPM / 4 + 2 * per_request.max(50),
        "the fleet spent {spent:?} of a budget of {TPM}"
    );
    let stats: Value = get_json(&b, "/api/stats").await;
    let shared = &stats["rate_limits"]["mock"]["shared_tokens"];
    assert!(shared["redis_syncs"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(shared["redis_failures"], 0, "{stats}");
}
