//! What a response-cache hit costs inside the proxy, sockets excluded: the cache key of a ~16 KB agent request,
//! and the whole chat route answering from the cache (`proxy::router` served in process, the record of the
//! request included), against a handler that does what the mock upstream does for the same request (parse the
//! body, answer fixed bytes). The entry is stored by a real miss, so a hit reuses its stored counts as in the
//! product. The end-to-end latency over loopback is the `kimi-bench --scenarios cache` scenario.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::post;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::BodyExt;
use kimi_proxy::config::Config;
use kimi_proxy::proxy::{self, ProxyState, cache};
use tower::ServiceExt;

/// A request shaped like an agent's: a system prompt and a long user message of prose and code (newlines to
/// escape), temperature 0, about 16 KB.
fn body() -> Bytes {
    let mut user = String::new();
    let mut line = 0;
    while user.len() < 13_000 {
        line += 1;
        user.push_str(&format!(
            "{line}. The proxy forwards every request to the provider that serves the model.\n\
             ```\nfn parse(line: &str) -> Option<(&str, &str)> {{ line.split_once(':') }}\n```\n"
        ));
    }
    let request = serde_json::json!({
        "model": "mock-model",
        "messages": [
            {"role": "system", "content": "You are a careful senior engineer.\n".repeat(60)},
            {"role": "user", "content": user},
        ],
        "temperature": 0,
        "max_tokens": 512,
    });
    Bytes::from(serde_json::to_vec(&request).unwrap())
}

/// A stored answer like the mock's (about 0.8 KB).
fn answer() -> Bytes {
    let content: String = (0..64).map(|i| format!("tok{i} ")).collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": "mock-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 4000, "completion_tokens": 64, "total_tokens": 4064},
        }))
        .unwrap(),
    )
}

fn state(upstream: std::net::SocketAddr) -> Arc<ProxyState> {
    let text = format!(
        "builtin_catalog = false\n\
         [providers.mock]\nbase_url = \"http://{upstream}/v1\"\napi_key = \"key\"\n\
         [models.\"mock/model\"]\nprovider = \"mock\"\nmodel = \"mock-model\"\n\
         max_context_size = 262144\ncache = true\n"
    );
    let text = text.as_str();
    let config = Config::from_sources(Some(("bench", text)), &|_: &str| None).unwrap();
    Arc::new(ProxyState::new(Arc::new(config)).unwrap())
}

fn request(body: &Bytes) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Body::from(body.clone()))
        .unwrap()
}

fn hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = body();
    let answer = answer();
    let mut group = c.benchmark_group("response_cache");
    group.bench_function("cache_key_16kb", |b| {
        b.iter(|| black_box(cache::cache_key(black_box(&body), "mock-model", true)))
    });

    let like_the_mock = {
        let answer = answer.clone();
        Router::new().route(
            "/v1/chat/completions",
            post(move |body: Bytes| {
                let answer = answer.clone();
                async move {
                    let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    black_box(request);
                    answer
                }
            }),
        )
    };
    // The entry is stored the way the proxy stores it: one miss forwarded to the same handler on a socket, so
    // the entry carries its request's counts like any entry.
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let upstream = listener.local_addr().unwrap();
    let like_the_mock_served = like_the_mock.clone();
    runtime.spawn(async move { axum::serve(listener, like_the_mock_served).await });
    let state = state(upstream);
    let cached = kimi_proxy::routes::proxy_routes().with_state(Arc::clone(&state));
    let key = cache::cache_key(&body, "mock-model", true).unwrap();
    runtime.block_on(async {
        let response = cached.clone().oneshot(request(&body)).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        while state.response_cache.get(key).is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    assert!(
        state
            .response_cache
            .get(key)
            .is_some_and(|hit| hit.counts.is_some())
    );
    for (name, app, hit_expected) in [
        ("handler_like_the_mock", like_the_mock, false),
        ("proxy_cache_hit", cached, true),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let response = app.clone().oneshot(request(&body)).await.unwrap();
                    assert_eq!(response.status(), 200);
                    assert_eq!(
                        response.headers().get(proxy::CACHE_HEADER).is_some(),
                        hit_expected
                    );
                    let bytes = response.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(bytes, answer);
                    // Let the record of the request be built (a task the proxy spawns): its CPU counts too.
                    tokio::task::yield_now().await;
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hit);
criterion_main!(benches);
