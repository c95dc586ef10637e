//! A provider that speaks the Responses API itself (`api = "responses"`): a Responses client's request goes
//! to `{base_url}/responses` as it was sent (the model id written in), the answer comes back byte for byte,
//! streamed or not, and the record reads the provider's own Responses usage (cached and reasoning tokens
//! included) and prices it. The mock answers `/v1/responses` as OpenAI does (crates/mock-upstream
//! `responses.rs`), and keeps what it made with `store`: the stored-response routes
//! (`GET`/`DELETE /v1/responses/{id}`, `…/cancel`, `…/input_items`) go to the provider that made the id.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{MockUpstream, Proxy, client, mock_config, read_body, recent_records, send};
use serde_json::{Value, json};

/// The mock as a Responses provider, with prices so the record has a cost.
fn native_config(mock: &MockUpstream) -> String {
    native_config_with(mock, "")
}

/// [`native_config`] with `extra` lines.
fn native_config_with(mock: &MockUpstream, extra: &str) -> String {
    mock_config(mock, extra)
        .replace(
            "[providers.mock]\n",
            "[providers.mock]\napi = \"responses\"\n",
        )
        .replace(
            "max_context_size = 100000\n",
            "max_context_size = 100000\ninput_price = 2.0\noutput_price = 8.0\ncached_input_price = 0.5\n",
        )
}

async fn start() -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&native_config(&mock), &[("MOCK_KEY", "k")]).await;
    (mock, proxy)
}

async fn post(url: String, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().post(url).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// The same request through the proxy (model `mock/model`) and straight to the mock (its upstream id
/// `mock-model`, which the proxy writes in): both bodies, read to their end.
async fn proxied_and_direct(
    mock: &MockUpstream,
    proxy: &Proxy,
    body: &Value,
    headers: &[(&str, &str)],
) -> (Vec<u8>, Vec<u8>) {
    let proxied = post(proxy.url("/v1/responses"), body, headers).await;
    assert_eq!(proxied.status(), 200);
    let (proxied, clean) = read_body(proxied).await;
    assert!(clean);
    let mut direct_body = body.clone();
    direct_body["model"] = json!("mock-model");
    let direct = post(
        format!("{}/responses", mock.base_url()),
        &direct_body,
        headers,
    )
    .await;
    assert_eq!(direct.status(), 200);
    let (direct, clean) = read_body(direct).await;
    assert!(clean);
    (proxied, direct)
}

#[tokio::test]
async fn a_json_answer_is_the_providers_byte_for_byte_and_its_usage_is_recorded() {
    let (mock, proxy) = start().await;
    // The response the request continues, kept by the provider (which answers 404 for one it does not keep).
    let first = post(
        format!("{}/responses", mock.base_url()),
        &json!({"model": "mock-model", "input": "First."}),
        &[("x-mock-id", "kept-by-the-provider")],
    )
    .await;
    assert_eq!(first.status(), 200);
    let body = json!({"model": "mock/model", "instructions": "Be terse.", "input": "Say hello.",
        "store": true, "previous_response_id": "resp_kept-by-the-provider"});
    let headers = [
        ("x-mock-id", "fixed"),
        ("x-mock-chunks", "4"),
        ("x-mock-reasoning", "2"),
        ("x-mock-cached-tokens", "8"),
    ];
    let (proxied, direct) = proxied_and_direct(&mock, &proxy, &body, &headers).await;
    assert_eq!(
        String::from_utf8_lossy(&proxied),
        String::from_utf8_lossy(&direct)
    );

    // What the provider received: the client's request on its own path, the upstream id written in; the
    // `previous_response_id` it keeps the state of went on (the proxy's store was not asked: it has no such
    // response and would have answered 404).
    let sent = mock.requests();
    let upstream = &sent[sent.len() - 2];
    assert_eq!(upstream.path, "/v1/responses");
    let mut expected = body.clone();
    expected["model"] = json!("mock-model");
    assert_eq!(upstream.json().unwrap(), expected);

    let answer: Value = serde_json::from_slice(&proxied).unwrap();
    let usage = &answer["usage"];
    let records = recent_records(&proxy, 1).await;
    let record = &records[0];
    assert_eq!(record["client_api"], "responses");
    assert_eq!(record["status"], 200);
    assert_eq!(record["error_kind"], Value::Null, "{record}");
    assert_eq!(record["prompt_reported"], usage["input_tokens"]);
    assert_eq!(record["completion_reported"], usage["output_tokens"]);
    assert_eq!(record["cached_reported"], 8);
    assert_eq!(record["reasoning_reported"], 2);
    assert_eq!(record["finish_reason"], "stop");
    assert!(
        record["completion_estimated"].as_u64().unwrap() > 0,
        "{record}"
    );
    let (input, output) = (
        usage["input_tokens"].as_f64().unwrap(),
        usage["output_tokens"].as_f64().unwrap(),
    );
    let cost = ((input - 8.0) * 2.0 + 8.0 * 0.5 + output * 8.0) / 1e6;
    assert!(
        (record["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
        "{record}"
    );
}

#[tokio::test]
async fn a_streamed_answer_is_the_providers_byte_for_byte_and_its_usage_is_recorded() {
    let (mock, proxy) = start().await;
    let body = json!({"model": "mock/model", "input": "Weather in Paris?", "stream": true,
        "store": false,
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
                  {"type": "web_search"}]});
    let headers = [
        ("x-mock-id", "fixed"),
        ("x-mock-chunks", "6"),
        ("x-mock-reasoning", "3"),
        ("x-mock-tool-call", "1"),
        ("x-mock-cached-tokens", "5"),
    ];
    let (proxied, direct) = proxied_and_direct(&mock, &proxy, &body, &headers).await;
    assert_eq!(
        String::from_utf8_lossy(&proxied),
        String::from_utf8_lossy(&direct)
    );
    // The provider's own event order, hosted tool and all: nothing translated, nothing dropped.
    let events = common::sse_events(&proxied);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..2], ["response.created", "response.in_progress"]);
    assert_eq!(names.last(), Some(&"response.completed"));
    let sent = mock.requests();
    let upstream = sent[sent.len() - 2].json().unwrap();
    assert_eq!(upstream["tools"][1]["type"], "web_search");

    let usage = &events.last().unwrap().1["response"]["usage"];
    let records = recent_records(&proxy, 1).await;
    let record = &records[0];
    assert_eq!(record["client_api"], "responses");
    assert!(record["streaming"].as_bool().unwrap());
    assert_eq!(record["error_kind"], Value::Null, "{record}");
    assert_eq!(record["dropped_tools"], 0);
    assert_eq!(record["prompt_reported"], usage["input_tokens"]);
    assert_eq!(record["completion_reported"], usage["output_tokens"]);
    assert_eq!(record["cached_reported"], 5);
    assert_eq!(record["reasoning_reported"], 3);
    assert_eq!(record["finish_reason"], "tool_calls");
    assert!(
        record["reasoning_estimated"].as_u64().unwrap() > 0,
        "{record}"
    );
    // The prompt was estimated too (from the request's chat form), beside the provider's figure.
    assert!(record["prompt_estimated"].as_u64().unwrap() > 0, "{record}");
    assert!(record["cost_usd"].as_f64().unwrap() > 0.0, "{record}");
}

#[tokio::test]
async fn chat_clients_of_a_responses_provider_still_use_chat_completions() {
    let (mock, proxy) = start().await;
    common::assert_answers(&proxy, "mock/model").await;
    assert_eq!(mock.last_request().unwrap().path, "/v1/chat/completions");
}

#[tokio::test]
async fn an_unknown_api_is_a_config_error() {
    let mock = MockUpstream::start().await.unwrap();
    let config =
        mock_config(&mock, "").replace("[providers.mock]\n", "[providers.mock]\napi = \"grpc\"\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(common::BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env_clear()
        .env("MOCK_KEY", "k")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    // The parser points at the line: `api = "grpc"`, and says what is accepted.
    assert!(text.contains("api = \"grpc\""), "{text}");
    assert!(text.contains("expected `chat` or `responses`"), "{text}");
}

#[tokio::test]
async fn a_responses_provider_gets_codexs_headers() {
    let (mock, proxy) = start().await;
    let headers = [
        ("originator", "codex_exec"),
        ("session-id", "s-1"),
        ("x-codex-window-id", "s-1:0"),
    ];
    let body = json!({"model": "mock/model", "input": "hi"});
    let response = post(proxy.url("/v1/responses"), &body, &headers).await;
    assert_eq!(response.status(), 200);
    let sent = mock.last_request().unwrap();
    for (name, value) in headers {
        assert_eq!(sent.header(name), Some(value), "{name}");
    }
}

#[tokio::test]
async fn the_stored_response_routes_go_to_the_provider_that_made_the_response() {
    let (mock, proxy) = start().await;
    let body = json!({"model": "mock/model", "input": "Say hello."});
    let created: Value = post(proxy.url("/v1/responses"), &body, &[])
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();

    // Retrieve: the provider's object, byte for byte what it answers directly; the provider's key went with it.
    let proxied = client()
        .get(proxy.url(&format!(
            "/v1/responses/{id}?include[]=message.output_text.logprobs"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200);
    let proxied = proxied.bytes().await.unwrap();
    let sent = mock.last_request().unwrap();
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("GET", format!("/v1/responses/{id}").as_str())
    );
    assert_eq!(
        sent.query.as_deref(),
        Some("include[]=message.output_text.logprobs")
    );
    assert_eq!(sent.header("authorization"), Some("Bearer k"));
    let direct = client()
        .get(format!("{}/responses/{id}", mock.base_url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(proxied, direct);
    assert_eq!(serde_json::from_slice::<Value>(&proxied).unwrap(), created);

    // Input items, without `/v1` too.
    let (status, items) = send(&proxy, "GET", &format!("/responses/{id}/input_items"), None).await;
    assert_eq!(status, 200, "{items}");
    assert_eq!(items["object"], "list");
    assert_eq!(items["data"][0]["content"][0]["text"], "Say hello.");

    // Cancel: the provider's own refusal of a response that was not made in the background.
    let (status, refused) = send(&proxy, "POST", &format!("/v1/responses/{id}/cancel"), None).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        refused["error"]["message"],
        "Cannot cancel a synchronous response."
    );
    assert_eq!(
        mock.last_request().unwrap().path,
        format!("/v1/responses/{id}/cancel")
    );

    // Delete, then it is gone: the provider's 404, in OpenAI's format.
    let (status, deleted) = send(&proxy, "DELETE", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(
        deleted,
        json!({"id": id, "object": "response", "deleted": true})
    );
    let (status, gone) = send(&proxy, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["error"]["type"], "invalid_request_error");
    assert!(
        gone["error"]["message"].as_str().unwrap().contains(&id),
        "{gone}"
    );

    // None of these calls is a request of the record: only the create is.
    let records = recent_records(&proxy, 1).await;
    assert_eq!(records.len(), 1, "{records:?}");
}

#[tokio::test]
async fn a_streamed_responses_id_is_noted_and_a_background_one_can_be_cancelled() {
    let (_mock, proxy) = start().await;
    let body = json!({"model": "mock/model", "input": "Say hello.", "stream": true});
    let (bytes, clean) = read_body(post(proxy.url("/v1/responses"), &body, &[]).await).await;
    assert!(clean);
    let events = common::sse_events(&bytes);
    let id = events[0].1["response"]["id"].as_str().unwrap().to_string();
    let (status, retrieved) = send(&proxy, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, 200, "{retrieved}");
    assert_eq!(retrieved, events.last().unwrap().1["response"]);

    let body = json!({"model": "mock/model", "input": "Write a long story.", "background": true});
    let queued: Value = post(proxy.url("/v1/responses"), &body, &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queued["status"], "queued");
    let id = queued["id"].as_str().unwrap();
    let (status, cancelled) =
        send(&proxy, "POST", &format!("/v1/responses/{id}/cancel"), None).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
}

#[tokio::test]
async fn a_response_the_proxy_did_not_see_is_asked_of_each_responses_provider() {
    let (mock_a, mock_b) = (
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
    );
    let extra = format!(
        r#"
[providers.other]
api = "responses"
base_url = "{base}"
api_key = "${{MOCK_KEY}}"

[models."other/model"]
provider = "other"
model = "other-model"
max_context_size = 100000
"#,
        base = mock_b.base_url()
    );
    let config = native_config_with(&mock_a, &extra);
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;

    // Made at provider `other` behind the proxy's back (or before a restart): `mock` is asked first (the
    // providers' keys in order), answers 404, then `other` answers.
    let made: Value = post(
        format!("{}/responses", mock_b.base_url()),
        &json!({"model": "other-model", "input": "hi"}),
        &[],
    )
    .await
    .json()
    .await
    .unwrap();
    let id = made["id"].as_str().unwrap();
    let (status, found) = send(&proxy, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["id"], id);
    assert_eq!(
        mock_a.last_request().unwrap().path,
        format!("/v1/responses/{id}")
    );
    // Noted: the next call goes straight to `other`.
    let asked_a = mock_a.requests().len();
    let (status, _) = send(
        &proxy,
        "GET",
        &format!("/v1/responses/{id}/input_items"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(mock_a.requests().len(), asked_a);

    // Made through the proxy at `other`: noted as it passed, `mock` is never asked.
    let through: Value = post(
        proxy.url("/v1/responses"),
        &json!({"model": "other/model", "input": "hi"}),
        &[],
    )
    .await
    .json()
    .await
    .unwrap();
    let id = through["id"].as_str().unwrap();
    let (status, _) = send(&proxy, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(mock_a.requests().len(), asked_a);
    // The same for a streamed answer (the id is in its first event).
    let streamed = post(
        proxy.url("/v1/responses"),
        &json!({"model": "other/model", "input": "hi", "stream": true}),
        &[],
    )
    .await;
    let (bytes, clean) = read_body(streamed).await;
    assert!(clean);
    let events = common::sse_events(&bytes);
    let id = events[0].1["response"]["id"].as_str().unwrap();
    let (status, _) = send(&proxy, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(mock_a.requests().len(), asked_a);

    // `store: false`: nothing noted (the provider keeps nothing) and every provider says 404.
    let unkept: Value = post(
        proxy.url("/v1/responses"),
        &json!({"model": "other/model", "input": "hi", "store": false}),
        &[],
    )
    .await
    .json()
    .await
    .unwrap();
    let id = unkept["id"].as_str().unwrap();
    let (status, missing) = send(&proxy, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(
        mock_a.last_request().unwrap().path,
        format!("/v1/responses/{id}")
    );

    // An id that is not one never reaches a provider.
    let asked_a = mock_a.requests().len();
    let (status, _) = send(&proxy, "GET", "/v1/responses/resp%2F..%2Fmodels", None).await;
    assert_eq!(status, 404);
    assert_eq!(mock_a.requests().len(), asked_a);
}

/// The official OpenAI Python SDK (latest from PyPI, in a venv under `target/`) through the proxy to the mock
/// speaking Responses: `responses.create` plain and streamed, tool round trips with `previous_response_id`,
/// `retrieve`, `input_items.list`, `cancel` (refused, then a background response cancelled), `delete` and the
/// 404s a deleted id then gets — every call answered by the provider.
#[tokio::test]
async fn the_openai_python_sdk_speaks_responses_through_the_proxy_to_a_responses_provider() {
    let Some(python) =
        tokio::task::spawn_blocking(|| common::sdk_python("openai-sdk-venv", "openai"))
            .await
            .unwrap()
    else {
        return;
    };
    let (mock, proxy) = start().await;
    let seen = common::run_openai_responses_sdk_script(&python, &proxy, "mock/model", true).await;
    // The provider's own answers: its upstream model id, its not-found and cancel errors.
    assert_eq!(seen["text"]["model"], "mock-model", "{seen}");
    assert_eq!(
        seen["not_found"]["code"], "previous_response_not_found",
        "{seen}"
    );
    assert_eq!(
        seen["cancel_refused"]["message"], "Cannot cancel a synchronous response.",
        "{seen}"
    );
    assert_eq!(seen["cancelled"], "cancelled", "{seen}");
    let text_id = seen["text"]["id"].as_str().unwrap();
    let asked: Vec<(String, String)> = mock
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .filter(|(_, path)| path.contains(text_id))
        .collect();
    for expected in [
        ("GET", format!("/v1/responses/{text_id}")),
        ("GET", format!("/v1/responses/{text_id}/input_items")),
        ("POST", format!("/v1/responses/{text_id}/cancel")),
        ("DELETE", format!("/v1/responses/{text_id}")),
    ] {
        assert!(
            asked
                .iter()
                .any(|(m, p)| m == expected.0 && *p == expected.1),
            "{expected:?} not in {asked:?}"
        );
    }
    assert!(
        mock.requests()
            .iter()
            .all(|r| r.path != "/v1/chat/completions")
    );
    let records = recent_records(&proxy, 8).await;
    assert!(records.iter().all(|r| r["client_api"] == "responses"));
}
