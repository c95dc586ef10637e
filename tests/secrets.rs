//! The secrets canary: the whole product (real binary, debug logs, store, WebSocket) runs with a canary provider
//! key, admin token and virtual key; every output is collected — responses (headers and bodies) of the proxy
//! routes, errors, the APIs, exports, metrics, the dashboard, the WebSocket stream, the log, `check-config`, and
//! the database files — and none may contain a secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{MockUpstream, Proxy, chat_body, client, mock_config};
use futures_util::StreamExt;
use mock_upstream::MockConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PROVIDER_KEY: &str = "sk-CANARY-provider-4f1d9a7c2e";
const ADMIN_TOKEN: &str = "CANARY-admin-token-8b3e5d0a91";
const VIRTUAL_KEY: &str = "vk-CANARY-client-6c2f7e19d4";

/// `(what, model, stream, key, extra header, expected status)`.
type Case<'a> = (
    &'a str,
    &'a str,
    bool,
    &'a str,
    Option<(&'a str, &'a str)>,
    u16,
);

/// Everything the product said, as text.
#[derive(Default)]
struct Haystack(String);

impl Haystack {
    async fn response(&mut self, what: &str, response: reqwest::Response) -> u16 {
        let status = response.status().as_u16();
        self.0.push_str(&format!("\n== {what} {status}\n"));
        for (name, value) in response.headers() {
            self.0.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        let body = response.bytes().await.unwrap();
        self.0.push_str(&String::from_utf8_lossy(&body));
        status
    }

    fn add(&mut self, what: &str, text: &str) {
        self.0.push_str(&format!("\n== {what}\n{text}"));
    }
}

#[tokio::test]
async fn no_secret_appears_in_any_output() {
    let mock = MockUpstream::start_with(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            required_key: Some(PROVIDER_KEY.to_string()),
            ..MockConfig::default()
        },
    )
    .await
    .unwrap();
    let config = mock_config(
        &mock,
        r#"
[[server.client_keys]]
name = "canary-client"
key = "${CANARY_VIRTUAL_KEY}"

[providers.dead]
base_url = "http://127.0.0.1:9/v1"
api_key = "${MOCK_KEY}"
[providers.dead.retry]
max_attempts = 1

[models."dead/model"]
provider = "dead"
model = "dead-model"
max_context_size = 1000
"#,
    )
    .replace(
        "[server]\n",
        "[server]\nadmin_token = \"${CANARY_ADMIN}\"\n",
    );
    let env = [
        ("MOCK_KEY", PROVIDER_KEY),
        ("CANARY_ADMIN", ADMIN_TOKEN),
        ("CANARY_VIRTUAL_KEY", VIRTUAL_KEY),
    ];
    let proxy = Proxy::start(&config, &env).await;
    let mut out = Haystack::default();

    // A dashboard client on the WebSocket for the whole run.
    let mut request = format!("ws://{}/ws", proxy.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let frames = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&frames);
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                sink.lock().unwrap().push(text.to_string());
            }
        }
    });

    // The proxy routes: success, streaming, and every kind of error.
    let http = client();
    let chat = |model: &str, stream: bool, key: &str, extra: Option<(&str, &str)>| {
        let mut request = http
            .post(proxy.url("/v1/chat/completions"))
            .bearer_auth(key)
            // The mock answers with the Authorization it received, as a careless gateway might.
            .header("x-mock-echo-authorization", "1")
            .json(&chat_body(model, stream));
        if let Some((name, value)) = extra {
            request = request.header(name, value);
        }
        request.send()
    };
    let cases: [Case; 6] = [
        ("json", "mock/model", false, VIRTUAL_KEY, None, 200),
        ("stream", "mock/model", true, VIRTUAL_KEY, None, 200),
        (
            "bad virtual key",
            "mock/model",
            false,
            "vk-wrong-0123456789abc",
            None,
            401,
        ),
        (
            "upstream 401",
            "mock/model",
            false,
            VIRTUAL_KEY,
            Some(("x-mock-status", "401")),
            401,
        ),
        (
            "upstream 500",
            "mock/model",
            true,
            VIRTUAL_KEY,
            Some(("x-mock-status", "500")),
            500,
        ),
        ("unreachable", "dead/model", false, VIRTUAL_KEY, None, 502),
    ];
    for (what, model, stream, key, extra, expected) in cases {
        let status = out
            .response(what, chat(model, stream, key, extra).await.unwrap())
            .await;
        assert_eq!(status, expected, "{what}");
    }
    // The key really went upstream (so the checks below can fail), and the mock echoed it back.
    let sent = mock.requests();
    assert!(
        sent.iter()
            .any(|r| r.header("authorization") == Some(&format!("Bearer {PROVIDER_KEY}")))
    );

    // Wait until the records are in the database.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats: serde_json::Value = client()
            .get(proxy.url("/api/stats/store"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["writer"]["written"].as_u64().unwrap_or(0) >= 5 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every admin view, export and page.
    let sessions: serde_json::Value = client()
        .get(proxy.url("/api/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut paths: Vec<String> = [
        "/api/requests/recent?limit=100",
        "/api/requests/live",
        "/api/stats",
        "/api/tokens",
        "/api/stats/store",
        "/metrics",
        "/api/sessions",
        "/api/export?format=csv",
        "/api/export?format=json",
        "/",
        "/v1/models",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    for session in sessions["data"].as_array().unwrap() {
        let id = session["id"].as_i64().unwrap();
        paths.push(format!("/api/sessions/{id}"));
        paths.push(format!("/api/sessions/{id}/requests"));
        paths.push(format!("/api/sessions/{id}/export?format=csv"));
        paths.push(format!("/api/sessions/{id}/export?format=json"));
    }
    assert!(!sessions["data"].as_array().unwrap().is_empty());
    for path in &paths {
        let key = if path == "/v1/models" {
            VIRTUAL_KEY
        } else {
            ADMIN_TOKEN
        };
        let response = client()
            .get(proxy.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let status = out.response(path, response).await;
        assert_eq!(status, 200, "{path}");
    }
    // Unauthenticated and login answers.
    for path in ["/api/stats", "/login"] {
        let response = client().get(proxy.url(path)).send().await.unwrap();
        out.response(path, response).await;
    }
    let login = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(proxy.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(out.response("login", login).await, 303);

    // The WebSocket saw the requests.
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.abort();
    let frames = frames.lock().unwrap().join("\n");
    assert!(frames.contains("\"init\""), "{frames}");
    assert!(frames.contains("mock/model"), "{frames}");
    out.add("websocket", &frames);

    // check-config, the log, the database files.
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, &config).unwrap();
    let mut check = std::process::Command::new(common::BIN);
    check
        .arg("check-config")
        .arg("--config")
        .arg(&config_path)
        .env_clear();
    for (k, v) in env {
        check.env(k, v);
    }
    let checked = check.output().unwrap();
    assert!(checked.status.success());
    out.add(
        "check-config stdout",
        &String::from_utf8_lossy(&checked.stdout),
    );
    out.add(
        "check-config stderr",
        &String::from_utf8_lossy(&checked.stderr),
    );

    let log = proxy.log();
    assert!(log.contains("DEBUG"), "the log runs at debug level");
    out.add("log", &log);
    let data = proxy.db_path();
    let mut db_bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut path = data.clone().into_os_string();
        path.push(suffix);
        db_bytes.extend(std::fs::read(path).unwrap_or_default());
    }
    assert!(db_bytes.len() > 4096);
    assert!(
        memchr::memmem::find(&db_bytes, b"canary-client").is_some(),
        "the database holds the key's name"
    );

    for (name, secret) in [
        ("provider key", PROVIDER_KEY),
        ("admin token", ADMIN_TOKEN),
        ("virtual key", VIRTUAL_KEY),
    ] {
        if let Some(at) = out.0.find(secret) {
            let start = out.0[..at].rfind("\n== ").unwrap_or(0);
            panic!(
                "the {name} leaked: {}",
                &out.0[start..(at + 200).min(out.0.len())]
            );
        }
        assert!(
            memchr::memmem::find(&db_bytes, secret.as_bytes()).is_none(),
            "the {name} is in the database"
        );
    }
}
