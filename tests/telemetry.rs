//! OpenTelemetry traces end to end: the real binary with `[telemetry] otlp_endpoint` pointing at a small OTLP/HTTP
//! receiver inside the test (POST /v1/traces, protobuf decoded with `opentelemetry-proto`), the mock upstream
//! behind it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use common::{MockUpstream, Proxy, chat_body, client, mock_config, recent_records};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span};
use prost::Message;
use serde_json::Value;

/// What the receiver got: each export's raw body and its decoded request.
#[derive(Clone, Default)]
struct Received {
    exports: Arc<Mutex<Vec<(Bytes, ExportTraceServiceRequest)>>>,
}

impl Received {
    fn spans(&self) -> Vec<Span> {
        self.exports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, request)| request.resource_spans.iter())
            .flat_map(|resource| resource.scope_spans.iter())
            .flat_map(|scope| scope.spans.iter().cloned())
            .collect()
    }

    fn resource_attributes(&self) -> Vec<KeyValue> {
        let exports = self.exports.lock().unwrap();
        let (_, first) = exports.first().expect("no export");
        first.resource_spans[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .clone()
    }

    /// Waits (up to 10 s) until `n` request spans (no parent) arrived.
    async fn wait_roots(&self, n: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let roots: Vec<Span> = self
                .spans()
                .into_iter()
                .filter(|s| s.parent_span_id.is_empty())
                .collect();
            if roots.len() >= n {
                return roots;
            }
            assert!(
                Instant::now() < deadline,
                "only {} request spans",
                roots.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An OTLP/HTTP traces receiver on a random port (<https://opentelemetry.io/docs/specs/otlp/#otlphttp>:
/// `POST /v1/traces`, `application/x-protobuf`, an `ExportTraceServiceResponse` back).
async fn receiver() -> (String, Received) {
    let received = Received::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                let request = ExportTraceServiceRequest::decode(body.clone()).unwrap();
                sink.exports.lock().unwrap().push((body, request));
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn int(attributes: &[KeyValue], key: &str) -> i64 {
    match attr(attributes, key) {
        Some(any_value::Value::IntValue(v)) => *v,
        other => panic!("{key}: {other:?}"),
    }
}

fn string(attributes: &[KeyValue], key: &str) -> String {
    match attr(attributes, key) {
        Some(any_value::Value::StringValue(v)) => v.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

fn telemetry_config(endpoint: &str, extra: &str) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"proxy-under-test\"\nexport_interval_ms = 50\n{extra}"
    )
}

async fn post_chat(proxy: &Proxy, stream: bool, headers: &[(&str, &str)]) -> String {
    let mut request = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("mock/model", stream));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn each_request_is_a_span_with_genai_attributes_and_one_child_per_attempt() {
    let (endpoint, received) = receiver().await;
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(&mock, &telemetry_config(&endpoint, ""));
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "mock-provider-key")]).await;

    post_chat(&proxy, false, &[]).await;
    post_chat(&proxy, true, &[]).await;
    post_chat(
        &proxy,
        false,
        &[
            ("x-mock-status", "503"),
            ("x-mock-fail-times", "1"),
            ("x-mock-key", "telemetry-retry"),
        ],
    )
    .await;
    // The other client APIs: an Anthropic Messages stream and a Responses request, translated to chat.
    let messages = common::post_messages(
        &proxy,
        "/v1/messages",
        &common::messages_body("mock/model", true),
        &[],
    )
    .await;
    assert_eq!(messages.status(), 200);
    messages.bytes().await.unwrap();
    let responses = client()
        .post(proxy.url("/v1/responses"))
        .json(&serde_json::json!({"model": "mock/model", "input": "Say hello."}))
        .send()
        .await
        .unwrap();
    assert_eq!(responses.status(), 200);
    responses.bytes().await.unwrap();

    let records = recent_records(&proxy, 5).await;
    assert_eq!(records.len(), 5);
    let roots = received.wait_roots(5).await;
    let spans = received.spans();
    let mut retried = 0;
    for record in &records {
        let id = record["id"].as_i64().unwrap();
        let root = roots
            .iter()
            .find(|s| int(&s.attributes, "kimi_proxy.request.id") == id)
            .unwrap_or_else(|| panic!("no span for request {id}"));
        let a = &root.attributes;
        assert_eq!(root.name, "chat mock/model");
        assert_eq!(
            string(a, "kimi_proxy.client_api"),
            record["client_api"].as_str().unwrap()
        );
        assert_eq!(root.kind, span::SpanKind::Server as i32);
        assert_eq!(string(a, "gen_ai.operation.name"), "chat");
        assert_eq!(string(a, "gen_ai.provider.name"), "mock");
        assert_eq!(string(a, "gen_ai.request.model"), "mock/model");
        assert_eq!(string(a, "server.address"), "127.0.0.1");
        assert_eq!(int(a, "server.port"), i64::from(mock.addr().port()));
        assert_eq!(int(a, "http.response.status_code"), 200);
        // The proxy's recorded usage, exactly.
        assert_eq!(
            int(a, "gen_ai.usage.input_tokens"),
            record["prompt_tokens"].as_i64().unwrap()
        );
        assert_eq!(
            int(a, "gen_ai.usage.output_tokens"),
            record["completion_tokens"].as_i64().unwrap()
        );
        assert!(record["completion_tokens"].as_i64().unwrap() > 0);
        match attr(a, "gen_ai.response.finish_reasons") {
            Some(any_value::Value::ArrayValue(list)) => {
                let reasons: Vec<_> = list.values.iter().map(|v| v.value.clone()).collect();
                assert_eq!(
                    reasons,
                    vec![Some(any_value::Value::StringValue("stop".into()))]
                );
            }
            other => panic!("finish_reasons: {other:?}"),
        }
        assert!(attr(a, "error.type").is_none());
        assert!(root.end_time_unix_nano > root.start_time_unix_nano);

        let mut children: Vec<&Span> = spans
            .iter()
            .filter(|s| s.parent_span_id == root.span_id)
            .collect();
        children.sort_by_key(|s| s.start_time_unix_nano);
        let attempts = record["attempts"].as_u64().unwrap() as usize;
        assert_eq!(children.len(), attempts, "request {id}");
        for (n, child) in children.iter().enumerate() {
            assert_eq!(child.trace_id, root.trace_id);
            assert_eq!(child.kind, span::SpanKind::Client as i32);
            assert_eq!(string(&child.attributes, "http.request.method"), "POST");
            assert!(child.start_time_unix_nano >= root.start_time_unix_nano);
            assert!(child.end_time_unix_nano <= root.end_time_unix_nano);
            let last = n + 1 == children.len();
            let status = int(&child.attributes, "http.response.status_code");
            assert_eq!(status, if last { 200 } else { 503 });
            if n > 0 {
                assert_eq!(
                    int(&child.attributes, "http.request.resend_count"),
                    n as i64
                );
            }
        }
        if attempts == 2 {
            retried += 1;
            assert_eq!(
                string(&children[0].attributes, "error.type"),
                "503",
                "the failed attempt names its status"
            );
        }
    }
    assert_eq!(retried, 1, "the 503 once is retried once: {records:?}");
    let apis: std::collections::BTreeSet<String> = roots
        .iter()
        .map(|root| string(&root.attributes, "kimi_proxy.client_api"))
        .collect();
    assert_eq!(
        apis.into_iter().collect::<Vec<_>>(),
        ["chat", "messages", "responses"]
    );

    let resource = received.resource_attributes();
    assert_eq!(string(&resource, "service.name"), "proxy-under-test");
    assert!(string(&resource, "service.instance.id").ends_with(&format!(":{}", proxy.addr.port())));
    assert_eq!(
        string(&resource, "service.version"),
        env!("CARGO_PKG_VERSION")
    );

    // Nothing secret or private leaves: no key, no header, no prompt text.
    for (body, _) in received.exports.lock().unwrap().iter() {
        let text = String::from_utf8_lossy(body);
        for secret in [
            "mock-provider-key",
            "Say hello",
            "You are terse",
            "authorization",
        ] {
            assert!(
                !text.to_lowercase().contains(&secret.to_lowercase()),
                "{secret} exported"
            );
        }
    }
}

#[tokio::test]
async fn a_proxy_whose_collector_is_down_answers_every_request() {
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(
        &mock,
        &telemetry_config(
            &format!("http://{closed}"),
            "export_timeout_ms = 300\nqueue = 4\nbatch = 2\n",
        ),
    );
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "mock-provider-key")]).await;
    let started = Instant::now();
    let mut answers = Vec::new();
    for n in 0..40 {
        let proxy = &proxy;
        answers.push(async move { post_chat(proxy, n % 2 == 0, &[]).await });
    }
    let bodies = futures_util::future::join_all(answers).await;
    assert_eq!(bodies.len(), 40);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "requests waited for the collector: {:?}",
        started.elapsed()
    );
    let records: Vec<Value> = recent_records(&proxy, 40).await;
    assert!(records.iter().all(|r| r["status"] == 200));

    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains("OTLP export failed") {
        assert!(
            Instant::now() < deadline,
            "no export failure logged:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats: HashMap<String, Value> = common::get_json(&proxy, "/api/stats").await;
    let telemetry = &stats["telemetry"];
    let lost =
        telemetry["spans_dropped"].as_u64().unwrap() + telemetry["spans_failed"].as_u64().unwrap();
    assert!(lost > 0, "{telemetry}");
    assert_eq!(telemetry["spans_exported"], 0);
}

#[tokio::test]
async fn spans_still_queued_are_sent_when_the_proxy_stops() {
    let (endpoint, received) = receiver().await;
    let mock = MockUpstream::start().await.unwrap();
    // A batch would wait a minute: only the shutdown sends it.
    let config = mock_config(
        &mock,
        &format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\nexport_interval_ms = 60000\n"),
    );
    let mut proxy = Proxy::start(&config, &[("MOCK_KEY", "mock-provider-key")]).await;
    post_chat(&proxy, true, &[]).await;
    recent_records(&proxy, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(received.spans().is_empty());
    proxy.terminate();
    let status = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let roots = received.wait_roots(1).await;
    assert_eq!(
        string(&roots[0].attributes, "gen_ai.request.model"),
        "mock/model"
    );
}

#[tokio::test]
async fn a_send_that_never_connects_shows_each_failed_attempt() {
    let (endpoint, received) = receiver().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mock = MockUpstream::start().await.unwrap();
    let extra = format!(
        r#"
[providers.down]
base_url = "http://{closed}/v1"
[providers.down.retry]
max_attempts = 3
initial_backoff_ms = 5
max_backoff_ms = 10
deadline_ms = 5000

[models."down/model"]
provider = "down"
model = "down-model"
max_context_size = 100000

{}"#,
        telemetry_config(&endpoint, "")
    );
    let proxy = Proxy::start(&mock_config(&mock, &extra), &[("MOCK_KEY", "k")]).await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("down/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let record = &recent_records(&proxy, 1).await[0];
    assert_eq!(record["attempts"], 3, "{record}");
    let root = &received.wait_roots(1).await[0];
    assert_eq!(int(&root.attributes, "http.response.status_code"), 502);
    assert_eq!(
        string(&root.attributes, "error.type"),
        record["error_kind"].as_str().unwrap()
    );
    assert_eq!(
        root.status.as_ref().unwrap().code,
        opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32
    );
    let children: Vec<Span> = received
        .spans()
        .into_iter()
        .filter(|s| s.parent_span_id == root.span_id)
        .collect();
    assert_eq!(children.len(), 3);
    for child in &children {
        assert_eq!(string(&child.attributes, "error.type"), "connect");
        assert!(attr(&child.attributes, "http.response.status_code").is_none());
    }
}
