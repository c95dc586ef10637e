//! Session-less pass-through (`X-Target-Base-URL`) end to end: off by default, allowlist, https only, internal
//! addresses refused after resolution, loopback reachable only when allowed, recorded like any request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{MockUpstream, Proxy, chat_body, client, mock_config};
use reqwest::StatusCode;

async fn error_of(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn with_passthrough(mock: &MockUpstream, section: &str, extra: &str) -> String {
    format!("{}\n[passthrough]\n{section}\n", mock_config(mock, extra))
}

async fn send(proxy: &Proxy, target: &str, stream: bool) -> reqwest::Response {
    client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-target-base-url", target)
        .bearer_auth("sk-client-own-key")
        .json(&chat_body("vendor-model-7", stream))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn pass_through_is_off_by_default() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&mock_config(&mock, ""), &[("MOCK_KEY", "k")]).await;
    let (status, code, message) = error_of(send(&proxy, &mock.base_url(), false).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code, "passthrough_disabled");
    assert!(message.contains("[passthrough] allowed"), "{message}");
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn loopback_target_when_allowed_reaches_the_mock_and_is_recorded() {
    let mock = MockUpstream::start().await.unwrap();
    let config = with_passthrough(
        &mock,
        "allowed = [\"http://127.0.0.1:*/v1\"]\nallow_loopback = true",
        "",
    );
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "catalog-provider-key")]).await;

    let answer = send(&proxy, &mock.base_url(), false).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    // The client's own key goes to the target, never the catalog's; the routing header stays here.
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-client-own-key")
    );
    assert_eq!(seen.header("x-target-base-url"), None);
    assert_eq!(seen.json().unwrap()["model"], "vendor-model-7");

    let streamed = send(&proxy, &mock.base_url(), true).await;
    assert_eq!(streamed.status(), StatusCode::OK);
    let text = streamed.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    let records = common::recent_records(&proxy, 2).await;
    let provider = format!("passthrough:127.0.0.1:{}", mock.addr().port());
    for record in &records[..2] {
        assert_eq!(record["provider"], provider.as_str());
        assert_eq!(record["model"], "vendor-model-7");
        assert_eq!(record["status"], 200);
        assert!(record["prompt_tokens"].as_u64().unwrap() > 0, "{record}");
        assert!(
            record["completion_tokens"].as_u64().unwrap() > 0,
            "{record}"
        );
    }

    // Outside the allowlist (another path, another scheme).
    let (status, code, _) = error_of(
        send(
            &proxy,
            &format!("http://127.0.0.1:{}/v2", mock.addr().port()),
            false,
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "target_not_allowed")
    );
    let (status, code, _) = error_of(send(&proxy, "https://api.example.com/v1", false).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "target_not_allowed")
    );
    let (status, code, _) = error_of(send(&proxy, "ftp://127.0.0.1/v1", false).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_target")
    );
    // Loopback does not open private ranges.
    let (status, code, _) = error_of(send(&proxy, "http://10.0.0.1/v1", false).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_target")
    );
}

#[tokio::test]
async fn internal_addresses_and_plain_http_are_refused() {
    let mock = MockUpstream::start().await.unwrap();
    let port = mock.addr().port();
    let config = with_passthrough(
        &mock,
        "allowed = [\"http://127.0.0.1:*/*\", \"https://localhost:*/*\", \"https://127.0.0.1:*/*\", \
         \"https://10.0.0.1/*\", \"https://169.254.169.254/*\", \"https://[fd00:ec2::254]/*\", \
         \"https://[::ffff:127.0.0.1]:*/*\"]",
        "",
    );
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;

    // Plain http, even allowlisted, needs allow_loopback.
    let (status, code, message) = error_of(send(&proxy, &mock.base_url(), false).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_target")
    );
    assert!(message.contains("https"), "{message}");

    // A name that resolves to loopback is refused after resolution: nothing is sent.
    let (status, code, message) =
        error_of(send(&proxy, &format!("https://localhost:{port}/v1"), false).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "target_address_forbidden")
    );
    assert!(
        message.contains("localhost") && message.contains("loopback"),
        "{message}"
    );

    for (target, reason) in [
        (format!("https://127.0.0.1:{port}/v1"), "loopback"),
        (format!("https://[::ffff:127.0.0.1]:{port}/v1"), "loopback"),
        ("https://10.0.0.1/v1".to_string(), "private"),
        ("https://169.254.169.254/latest".to_string(), "metadata"),
        ("https://[fd00:ec2::254]/v1".to_string(), "metadata"),
    ] {
        let (status, code, message) = error_of(send(&proxy, &target, false).await).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "target_address_forbidden"),
            "{target}"
        );
        assert!(message.contains(reason), "{target}: {message}");
    }
    assert!(mock.requests().is_empty(), "no byte reached the target");

    // The refusal after resolution is recorded like any request.
    let records = common::recent_records(&proxy, 1).await;
    assert!(
        records.iter().any(
            |r| r["provider"] == format!("passthrough:localhost:{port}").as_str()
                && r["status"] == 403
        ),
        "{records:?}"
    );
}

#[tokio::test]
async fn with_virtual_keys_the_target_key_comes_from_its_own_header() {
    let mock = MockUpstream::start().await.unwrap();
    let config = with_passthrough(
        &mock,
        "allowed = [\"http://127.0.0.1:*/v1\"]\nallow_loopback = true",
        "[[server.client_keys]]\nname = \"team\"\nkey = \"${TEAM_KEY}\"\n",
    );
    let team_key = "vk-team-0123456789abcdef";
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k"), ("TEAM_KEY", team_key)]).await;
    let answer = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-target-base-url", mock.base_url())
        .header("x-target-authorization", "Bearer sk-target-key")
        .bearer_auth(team_key)
        .json(&chat_body("vendor-model-7", false))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.header("authorization"), Some("Bearer sk-target-key"));
    assert_eq!(seen.header("x-target-authorization"), None);
    let records = common::recent_records(&proxy, 1).await;
    assert_eq!(records[0]["virtual_key"], "team");

    // Without the virtual key, no pass-through either.
    let refused = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-target-base-url", mock.base_url())
        .bearer_auth("sk-target-key")
        .json(&chat_body("vendor-model-7", false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}

/// The numeric forms of an IPv4 address a resolver also accepts are refused as that address (403), not looked up.
#[tokio::test]
async fn numeric_host_forms_are_refused_like_the_address() {
    let mock = MockUpstream::start().await.unwrap();
    let port = mock.addr().port();
    let forms = ["127.1", "0x7f000001", "2130706433", "017700000001"];
    let allowed: Vec<String> = forms
        .iter()
        .map(|form| format!("\"https://{form}:*/*\""))
        .collect();
    let config = with_passthrough(&mock, &format!("allowed = [{}]", allowed.join(", ")), "");
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    for form in forms {
        let target = format!("https://{form}:{port}/v1");
        let (status, code, message) = error_of(send(&proxy, &target, false).await).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "target_address_forbidden"),
            "{target}: {message}"
        );
        assert!(message.contains("loopback"), "{target}: {message}");
    }
    assert!(mock.requests().is_empty());
}

#[test]
fn allow_all_patterns_are_refused_in_the_config() {
    for pattern in ["https://**/*", "https://*/*"] {
        let text = format!("[passthrough]\nallowed = [\"{pattern}\"]\n");
        let no_env = |_: &str| None::<String>;
        let error = kimi_proxy::config::Config::from_sources(Some(("test", &text)), &no_env).err();
        assert!(error.is_some(), "{pattern} was accepted");
    }
}

/// A target's redirect reaches the client as it is and is recorded as complete; the target's cookies (even
/// one named like the login cookie) and CORS grants do not pass, and the answer is not to be sniffed.
#[tokio::test]
async fn a_targets_redirect_passes_without_its_cookies_or_cors_grants() {
    let target = common::raw_upstream(
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: https://elsewhere.example/v1\r\n\
          Set-Cookie: kimi_proxy_session=planted; Path=/; HttpOnly\r\n\
          Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Credentials: true\r\n\
          Content-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mock = MockUpstream::start().await.unwrap();
    let config = with_passthrough(
        &mock,
        "allowed = [\"http://127.0.0.1:*/*\"]\nallow_loopback = true",
        "",
    );
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    let no_redirect = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirect
        .post(proxy.url("/v1/chat/completions"))
        .header("x-target-base-url", format!("http://{target}/v1"))
        .bearer_auth("sk-client-own-key")
        .json(&chat_body("vendor-model-7", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    let headers = response.headers().clone();
    assert_eq!(headers["location"], "https://elsewhere.example/v1");
    assert!(headers.get("set-cookie").is_none(), "{headers:?}");
    assert!(
        !headers
            .keys()
            .any(|k| k.as_str().starts_with("access-control-")),
        "{headers:?}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    response.bytes().await.unwrap();
    let records = common::recent_records(&proxy, 1).await;
    assert_eq!(records[0]["status"], 307, "{records:?}");
    assert!(records[0]["error_kind"].is_null(), "{records:?}");
}
