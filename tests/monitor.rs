//! End-to-end tests of the proxy's own monitoring: the overhead header, `/api/stats`, `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{MockUpstream, Proxy, chat_body, client, get_json, mock_config, recent_records};
use serde_json::Value;

#[tokio::test]
async fn stats_and_metrics_reflect_the_traffic() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&mock_config(&mock, ""), &[("MOCK_KEY", "k")]).await;
    for i in 0..6 {
        let response = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("x-mock-chunks", "10")
            .json(&chat_body("mock/model", i == 0))
            .send()
            .await
            .unwrap();
        let overhead = response.headers()["x-kimi-proxy-overhead-us"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(overhead.parse::<u64>().is_ok(), "{overhead}");
        response.bytes().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let stats: Value = get_json(&proxy, "/api/stats").await;
        if stats["requests_total"] == 6 {
            break stats;
        }
        assert!(Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let latency = &stats["histograms_us"]["latency"];
    assert_eq!(latency["since_start"]["count"], 6);
    assert_eq!(latency["last_minute"]["count"], 6);
    assert!(
        latency["since_start"]["p99"].as_u64().unwrap()
            >= latency["since_start"]["p50"].as_u64().unwrap()
    );
    assert!(
        stats["histograms_us"]["inter_chunk_gap"]["since_start"]["count"]
            .as_u64()
            .unwrap()
            >= 10
    );
    assert_eq!(
        stats["histograms_us"]["overhead"]["since_start"]["count"],
        6
    );
    assert!(stats["rss_bytes"].as_u64().unwrap() > 1_000_000);
    assert!(stats["requests_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(stats["error_rate"], 0.0);
    assert_eq!(stats["by_model_us"]["mock/model"]["latency"]["count"], 6);

    let metrics = client().get(proxy.url("/metrics")).send().await.unwrap();
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    assert!(text.contains("kimi_proxy_requests_total 6"), "{text}");
    assert!(
        text.contains("kimi_proxy_latency_seconds_bucket{le=\"+Inf\"} 6"),
        "{text}"
    );
    assert!(
        text.contains(
            "kimi_proxy_latency_seconds_bucket{provider=\"mock\",model=\"model\",le=\"+Inf\"} 6"
        ),
        "{text}"
    );
    assert!(text.contains("kimi_proxy_open_requests 0"), "{text}");
}

#[tokio::test]
async fn provider_budgets_answer_429_with_retry_after_before_the_provider_is_hit() {
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(&mock, "").replace(
        "[providers.mock.retry]",
        "requests_per_minute = 2\nrate_limit_max_wait_ms = 300\n\n[providers.mock.retry]",
    );
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    let send = || {
        client()
            .post(proxy.url("/v1/chat/completions"))
            .json(&chat_body("mock/model", false))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(send().await.unwrap().status(), 200);
    }
    let refused = send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        refused.headers()["x-kimi-proxy-error"],
        "rate_limit_exceeded"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        mock.stats()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the provider never saw the third"
    );

    let stats: Value = get_json(&proxy, "/api/stats").await;
    assert_eq!(stats["rate_limits"]["mock"]["requests_per_minute"], 2);
    assert_eq!(stats["rate_limits"]["mock"]["requests_last_minute"], 2);
}

#[tokio::test]
async fn response_cache_answers_repeated_deterministic_requests() {
    let mock = MockUpstream::start().await.unwrap();
    let config = format!(
        "{}\n[cache]\nenabled = true\nttl_secs = 60\n",
        mock_config(&mock, "")
    );
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    let mut body = chat_body("mock/model", false);
    body["temperature"] = serde_json::json!(0);
    let send = |body: Value, headers: Vec<(&'static str, &'static str)>| {
        let mut request = client().post(proxy.url("/v1/chat/completions")).json(&body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        request.send()
    };
    let first = send(body.clone(), vec![]).await.unwrap();
    assert!(first.headers().get("x-kimi-proxy-cache").is_none());
    let first_body = first.bytes().await.unwrap();
    // The answer is stored when its record is finished (before the record is published): wait for the record
    // rather than a fixed time, which a loaded machine can exceed.
    let counted = recent_records(&proxy, 1).await.remove(0);
    let lookups = |stats: &Value| {
        stats["message_cache"]["hits"].as_u64().unwrap()
            + stats["message_cache"]["misses"].as_u64().unwrap()
    };
    let lookups_before_hits = lookups(&get_json(&proxy, "/api/stats").await);
    let second = send(body.clone(), vec![]).await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-kimi-proxy-cache"], "hit");
    assert_eq!(
        second.bytes().await.unwrap(),
        first_body,
        "the stored bytes, exactly"
    );
    assert_eq!(
        mock.stats()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // A streaming request is answered from the same entry, replayed as SSE.
    let mut streaming = body.clone();
    streaming["stream"] = Value::Bool(true);
    let replay = send(streaming, vec![]).await.unwrap();
    assert_eq!(replay.headers()["content-type"], "text/event-stream");
    let text = replay.text().await.unwrap();
    assert!(
        text.contains("\"chat.completion.chunk\"") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    // Both hits reuse the figures stored with the answer: the same counts, and not one tokenizer lookup.
    let after_hits = recent_records(&proxy, 3).await;
    for hit in &after_hits[..2] {
        assert_eq!(hit["cache_hit"], true);
        for field in [
            "prompt_estimated",
            "completion_estimated",
            "prompt_reported",
            "completion_reported",
            "preview",
        ] {
            assert_eq!(hit[field], counted[field], "{field}");
        }
    }
    assert!(counted["completion_reported"].as_u64().unwrap() > 0);
    assert_eq!(
        lookups(&get_json(&proxy, "/api/stats").await),
        lookups_before_hits
    );

    // Per request off, and non-deterministic requests, go upstream.
    send(body.clone(), vec![("x-kimi-proxy-cache", "off")])
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut warm = body.clone();
    warm["temperature"] = serde_json::json!(0.7);
    send(warm, vec![]).await.unwrap().bytes().await.unwrap();
    assert_eq!(
        mock.stats()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        3
    );

    // Errors are never stored: the same failing request reaches the provider each time.
    let mut other = body.clone();
    other["messages"][1]["content"] = Value::from("Something else.");
    for _ in 0..2 {
        let failing = send(other.clone(), vec![("x-mock-status", "500")])
            .await
            .unwrap();
        assert_eq!(failing.status(), 500);
        failing.bytes().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        mock.stats()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        5
    );

    let records = recent_records(&proxy, 7).await;
    let hits: Vec<&Value> = records.iter().filter(|r| r["cache_hit"] == true).collect();
    assert_eq!(hits.len(), 2);
    assert!(
        hits.iter()
            .all(|r| r["cost_usd"] == 0.0 && r["status"] == 200)
    );
    let stats: Value = get_json(&proxy, "/api/stats").await;
    assert_eq!(stats["response_cache"]["hits"], 2);
    assert_eq!(stats["response_cache"]["entries"], 1);
}
