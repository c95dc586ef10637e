//! Access control end to end: the real binary, real sockets. Binding, the admin token (bearer and login
//! session), Host/Origin/Sec-Fetch-Site rules, CORS, virtual keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{MockUpstream, Proxy, chat_body, client, mock_config};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};

const TOKEN: &str = "admin-token-0123456789abcdef";

fn no_redirect() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn with_token(mock: &MockUpstream, extra: &str) -> Proxy {
    Proxy::start(
        &mock_config(mock, extra),
        &[
            ("MOCK_KEY", "mock-provider-key"),
            ("KIMI_PROXY_ADMIN_TOKEN", TOKEN),
        ],
    )
    .await
}

async fn error_code(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn listening_beyond_loopback_needs_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "builtin_catalog = false\n").unwrap();
    let run = |token: Option<&str>| {
        let mut command = tokio::process::Command::new(common::BIN);
        command
            .args(["serve", "--listen", "0.0.0.0:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(token) = token {
            command.env("KIMI_PROXY_ADMIN_TOKEN", token);
        }
        command.spawn().unwrap()
    };

    let refused = tokio::time::timeout(Duration::from_secs(20), run(None).wait_with_output())
        .await
        .expect("the proxy must exit")
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("admin token"), "{stderr}");
    assert!(stderr.contains("KIMI_PROXY_ADMIN_TOKEN"), "{stderr}");
    assert!(String::from_utf8_lossy(&refused.stdout).is_empty());

    // A token that is too short is refused too.
    let short = tokio::time::timeout(
        Duration::from_secs(20),
        run(Some("short")).wait_with_output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 16"));

    // With a token it listens.
    let mut child = run(Some(TOKEN));
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(line.contains("listening on http://0.0.0.0:"), "{line}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn admin_surface_requires_the_token() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = with_token(&mock, "").await;
    let http = no_redirect();

    for path in [
        "/api/stats",
        "/metrics",
        "/api/sessions",
        "/api/requests/recent",
        "/ws",
        "/",
    ] {
        let response = http.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"kimi-proxy\""
        );
        assert_eq!(error_code(response).await, "invalid_api_key");

        let wrong = http
            .get(proxy.url(path))
            .bearer_auth("admin-token-0123456789abcdeX")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    for path in [
        "/api/stats",
        "/metrics",
        "/api/sessions",
        "/api/requests/recent",
        "/",
    ] {
        let response = http
            .get(proxy.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert_eq!(response.headers()["x-frame-options"], "DENY");
    }
    // A state-changing call with the bearer works (same-origin rules do not apply to non-browsers).
    let created = http
        .post(proxy.url("/api/sessions"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"name": "with bearer"}))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{}", created.status());

    // A browser navigating to the dashboard goes to the login page, and comes back after.
    let page = http
        .get(proxy.url("/?tab=sessions"))
        .header(header::ACCEPT, "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        page.headers()[header::LOCATION],
        "/login?next=%2F%3Ftab%3Dsessions"
    );
    // The API never redirects.
    let api = http
        .get(proxy.url("/api/stats"))
        .header(header::ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);

    // The proxy routes do not need the admin token (no virtual keys configured).
    let chat = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), StatusCode::OK);
    assert!(chat.headers().get("content-security-policy").is_none());
}

fn cookie_of(headers: &HeaderMap) -> String {
    let set = headers[header::SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn login_sets_a_session_cookie_and_logout_ends_it() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = with_token(&mock, "").await;
    let http = no_redirect();

    let page = http
        .get(proxy.url("/login?next=/api/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("<form method=\"post\" action=\"/login\">"));
    assert!(html.contains("value=\"/api/stats\""));
    assert!(!html.contains("<script"));

    let wrong = http
        .post(proxy.url("/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("token=nope&next=%2Fapi%2Fstats")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(header::SET_COOKIE).is_none());

    let ok = http
        .post(proxy.url("/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}&next=%2Fapi%2Fstats"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(ok.headers()[header::LOCATION], "/api/stats");
    let set = ok.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains(TOKEN), "the cookie must not be the token");
    let cookie = cookie_of(ok.headers());
    assert!(cookie.starts_with("kimi_proxy_session="));

    for path in ["/api/stats", "/"] {
        let page = http
            .get(proxy.url(path))
            .header(header::COOKIE, &cookie)
            .header(header::ACCEPT, "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK, "{path}");
    }
    // A forged cookie is not a session.
    let forged = http
        .get(proxy.url("/api/stats"))
        .header(header::COOKIE, format!("{cookie}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    // Logged in, the login page sends you on.
    let again = http
        .get(proxy.url("/login"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::SEE_OTHER);

    let logout = http
        .post(proxy.url("/logout"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::SEE_OTHER);
    assert!(
        logout.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = http
        .get(proxy.url("/api/stats"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    // The login form cannot be posted from another site.
    let cross = http
        .post(proxy.url("/login"))
        .header(header::ORIGIN, "https://evil.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    assert!(cross.headers().get(header::SET_COOKIE).is_none());
}

#[tokio::test]
async fn browsers_from_other_sites_are_refused() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&mock_config(&mock, ""), &[("MOCK_KEY", "k")]).await;
    let http = no_redirect();
    let own = format!("http://{}", proxy.addr);

    // Same origin and no origin pass.
    let same = http
        .get(proxy.url("/api/stats"))
        .header(header::ORIGIN, &own)
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), StatusCode::OK);
    assert!(
        same.headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );

    // A WebSocket-style upgrade from a foreign page.
    for path in ["/ws", "/api/stats"] {
        let upgrade = http
            .get(proxy.url(path))
            .header(header::ORIGIN, "https://evil.example")
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap();
        assert_eq!(upgrade.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(error_code(upgrade).await, "forbidden");
    }

    // A cross-site form post to a state-changing endpoint: by Origin, and by Sec-Fetch-Site alone.
    let form = http
        .post(proxy.url("/api/sessions"))
        .header(header::ORIGIN, "https://evil.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("name=pwned")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::FORBIDDEN);
    let fetch_site = http
        .delete(proxy.url("/api/sessions/1"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(fetch_site.status(), StatusCode::FORBIDDEN);
    let sessions: serde_json::Value = common::get_json(&proxy, "/api/sessions").await;
    assert_eq!(
        sessions["data"].as_array().map(Vec::len),
        Some(0),
        "{sessions}"
    );

    // A foreign page cannot spend the provider keys either (a text/plain POST needs no preflight).
    let chat = http
        .post(proxy.url("/v1/chat/completions"))
        .header(header::ORIGIN, "https://evil.example")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(chat_body("mock/model", false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(chat).await, "forbidden");
    assert_eq!(
        mock.stats()
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 is same-origin with itself,
    // but its Host is refused.
    let rebinding = http
        .post(proxy.url("/v1/chat/completions"))
        .header(
            header::HOST,
            format!("rebind.evil.example:{}", proxy.addr.port()),
        )
        .header(
            header::ORIGIN,
            format!("http://rebind.evil.example:{}", proxy.addr.port()),
        )
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rebinding.status(), StatusCode::FORBIDDEN);
    let localhost = http
        .get(proxy.url("/api/stats"))
        .header(header::HOST, format!("localhost:{}", proxy.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(localhost.status(), StatusCode::OK);
}

#[tokio::test]
async fn cors_is_off_by_default_and_on_for_allowlisted_origins() {
    let mock = MockUpstream::start().await.unwrap();
    let http = no_redirect();
    let preflight = |proxy: &Proxy, origin: &str| {
        http.request(reqwest::Method::OPTIONS, proxy.url("/v1/chat/completions"))
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization, content-type",
            )
            .send()
    };

    let off = Proxy::start(&mock_config(&mock, ""), &[("MOCK_KEY", "k")]).await;
    let refused = preflight(&off, "https://app.example.com").await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(
        refused
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
    let plain = http.get(off.url("/v1/models")).send().await.unwrap();
    assert!(
        plain
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
    drop(off);

    let on = Proxy::start(
        &mock_config(&mock, "").replace(
            "[server]\n",
            "[server]\ncors_allowed_origins = [\"https://App.Example.com/\"]\n",
        ),
        &[("MOCK_KEY", "k")],
    )
    .await;
    let ok = preflight(&on, "https://app.example.com").await.unwrap();
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        ok.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example.com"
    );
    assert!(
        ok.headers()[header::ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        ok.headers()
            .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
            .is_none()
    );
    let chat = http
        .post(on.url("/v1/chat/completions"))
        .header(header::ORIGIN, "https://app.example.com")
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), StatusCode::OK);
    assert_eq!(
        chat.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example.com"
    );
    let other = preflight(&on, "https://other.example.com").await.unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    assert!(
        other
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
}

const CI_KEY: &str = "vk-ci-0123456789abcdef";
const ALICE_KEY: &str = "vk-alice-0123456789abcdef";

fn virtual_keys_config(mock: &MockUpstream) -> String {
    mock_config(
        mock,
        r#"
[[server.client_keys]]
name = "ci"
key = "${CI_KEY}"

[[server.client_keys]]
name = "alice"
key = "${ALICE_KEY}"

[providers.nokey]
base_url = "MOCK_BASE"
api_key = "${UNSET_PROVIDER_KEY}"

[models."nokey/model"]
provider = "nokey"
model = "mock-model"
max_context_size = 1000
"#,
    )
    .replace("MOCK_BASE", &mock.base_url())
}

#[tokio::test]
async fn virtual_keys_guard_the_proxy_routes_and_name_the_requests() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(
        &virtual_keys_config(&mock),
        &[
            ("MOCK_KEY", "mock-provider-key"),
            ("CI_KEY", CI_KEY),
            ("ALICE_KEY", ALICE_KEY),
        ],
    )
    .await;
    let http = client();
    let chat = |key: Option<&str>, model: &str| {
        let mut request = http
            .post(proxy.url("/v1/chat/completions"))
            .json(&chat_body(model, false));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };

    for key in [
        None,
        Some("vk-ci-0123456789abcdeX"),
        Some("mock-provider-key"),
    ] {
        let refused = chat(key, "mock/model").await.unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(refused.headers()["x-kimi-proxy-error"], "invalid_api_key");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("virtual key")
        );
    }
    let models = http.get(proxy.url("/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), StatusCode::UNAUTHORIZED);
    assert!(mock.requests().is_empty(), "nothing reaches the provider");

    let ok = chat(Some(CI_KEY), "mock/model").await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    ok.bytes().await.unwrap();
    let sent = mock.last_request().unwrap();
    assert_eq!(
        sent.header("authorization"),
        Some("Bearer mock-provider-key")
    );
    let streamed = http
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(ALICE_KEY)
        .json(&chat_body("mock/model", true))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::OK);
    streamed.bytes().await.unwrap();
    let models = http
        .get(proxy.url("/v1/models"))
        .bearer_auth(ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), StatusCode::OK);

    // A provider without a key: the virtual key is never forwarded in its place.
    let before = mock.requests().len();
    let nokey = chat(Some(CI_KEY), "nokey/model").await.unwrap();
    assert_eq!(nokey.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(nokey.headers()["x-kimi-proxy-error"], "missing_api_key");
    assert_eq!(mock.requests().len(), before);
    for request in mock.requests() {
        let auth = request.header("authorization").unwrap_or_default();
        assert!(
            !auth.contains(CI_KEY) && !auth.contains(ALICE_KEY),
            "{auth}"
        );
    }

    // The key's name is on its records, in memory and in the store.
    let records = common::recent_records(&proxy, 3).await;
    let mut names: Vec<&str> = records
        .iter()
        .map(|r| r["virtual_key"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["alice", "ci", "ci"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sessions: serde_json::Value = common::get_json(&proxy, "/api/sessions").await;
        let mut stored = Vec::new();
        for session in sessions["data"].as_array().unwrap() {
            let id = session["id"].as_i64().unwrap();
            let requests: serde_json::Value =
                common::get_json(&proxy, &format!("/api/sessions/{id}/requests")).await;
            for r in requests["data"].as_array().unwrap() {
                stored.push(r["virtual_key"].as_str().unwrap_or("-").to_string());
            }
        }
        if stored.iter().any(|n| n == "alice") && stored.iter().any(|n| n == "ci") {
            assert!(
                stored.iter().all(|n| n == "alice" || n == "ci"),
                "{stored:?}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "stored: {stored:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a temperature-0 chat request as `key`, asking for the cache; returns the cache header and the body.
async fn cached_chat(proxy: &Proxy, key: &str) -> (Option<String>, String) {
    let mut body = chat_body("mock/model", false);
    body["temperature"] = serde_json::json!(0);
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("x-kimi-proxy-cache", "on")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let hit = response
        .headers()
        .get("x-kimi-proxy-cache")
        .map(|v| v.to_str().unwrap().to_string());
    (hit, response.text().await.unwrap())
}

/// Waits until the proxy has finished `n` records (an answer is cached when its record is finished).
async fn wait_records(proxy: &Proxy, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list: Vec<serde_json::Value> = client()
            .get(proxy.url("/api/requests/recent?limit=100"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if list.len() >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} records",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_response_cache_never_crosses_virtual_keys() {
    let mock = MockUpstream::start().await.unwrap();
    let env = [
        ("MOCK_KEY", "mock-provider-key"),
        ("CI_KEY", CI_KEY),
        ("ALICE_KEY", ALICE_KEY),
    ];
    let proxy = Proxy::start(&virtual_keys_config(&mock), &env).await;
    let (hit, _) = cached_chat(&proxy, ALICE_KEY).await;
    assert_eq!(hit, None);
    wait_records(&proxy, 1).await;
    // Alice's own replay is a hit; another key holder's identical request is not.
    let (hit, _) = cached_chat(&proxy, ALICE_KEY).await;
    assert_eq!(hit.as_deref(), Some("hit"));
    let (hit, _) = cached_chat(&proxy, CI_KEY).await;
    assert_eq!(
        hit, None,
        "one virtual key got an answer cached for another"
    );
    assert_eq!(mock.requests().len(), 2);

    // `scope = "shared"` shares them on purpose.
    let config = virtual_keys_config(&mock) + "\n[cache]\nscope = \"shared\"\n";
    let shared = Proxy::start(&config, &env).await;
    cached_chat(&shared, ALICE_KEY).await;
    wait_records(&shared, 1).await;
    let (hit, _) = cached_chat(&shared, CI_KEY).await;
    assert_eq!(hit.as_deref(), Some("hit"));

    // `client_opt_in = false`: the header cannot turn the cache on.
    let config = virtual_keys_config(&mock) + "\n[cache]\nclient_opt_in = false\n";
    let closed = Proxy::start(&config, &env).await;
    cached_chat(&closed, ALICE_KEY).await;
    wait_records(&closed, 1).await;
    let (hit, _) = cached_chat(&closed, ALICE_KEY).await;
    assert_eq!(hit, None, "a client turned the cache on against the config");
}

/// Refusals (401, 403) and every proxy-route answer tell browsers not to sniff them.
#[tokio::test]
async fn refusals_and_proxy_answers_carry_nosniff() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(
        &virtual_keys_config(&mock),
        &[
            ("MOCK_KEY", "mock-provider-key"),
            ("CI_KEY", CI_KEY),
            ("ALICE_KEY", ALICE_KEY),
            ("KIMI_PROXY_ADMIN_TOKEN", TOKEN),
        ],
    )
    .await;
    let http = client();
    let unauthorized = http.get(proxy.url("/v1/models")).send().await.unwrap();
    let forbidden = http
        .post(proxy.url("/v1/chat/completions"))
        .header("origin", "https://evil.example")
        .bearer_auth(CI_KEY)
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    let admin_unauthorized = http.get(proxy.url("/api/stats")).send().await.unwrap();
    let models = http
        .get(proxy.url("/v1/models"))
        .bearer_auth(CI_KEY)
        .send()
        .await
        .unwrap();
    let chat = http
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    let unknown = http
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&chat_body("no/such-model", false))
        .send()
        .await
        .unwrap();
    for (what, response, status) in [
        ("401 on a proxy route", unauthorized, 401),
        ("403 for a foreign origin", forbidden, 403),
        ("401 on an admin route", admin_unauthorized, 401),
        ("the model list", models, 200),
        ("a chat answer", chat, 200),
        ("a proxy error", unknown, 404),
    ] {
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_eq!(
            response
                .headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{what}: {:?}",
            response.headers()
        );
    }
}
