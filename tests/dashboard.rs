//! The dashboard: the page and its assets as the binary serves them, and (in `browser_end_to_end`) the page in a
//! real headless Chromium against the real proxy and the mock upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{MockUpstream, Proxy, client, mock_config};

const CSP: &str = "default-src 'self'; connect-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' \
                   data:; font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; \
                   form-action 'self'";

fn asset_paths(html: &str) -> Vec<String> {
    html.split("\"/assets/")
        .skip(1)
        .map(|rest| format!("/assets/{}", rest.split('"').next().unwrap()))
        .collect()
}

#[tokio::test]
async fn page_and_assets_are_served_with_strict_headers() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&mock_config(&mock, ""), &[("MOCK_KEY", "k")]).await;
    let http = client();

    let index = http.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    let headers = index.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["content-security-policy"], CSP);
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "same-origin");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let html = index.text().await.unwrap();
    assert!(
        html.contains("<title>kimi-proxy dashboard</title>"),
        "{html}"
    );
    // no inline script or style: the CSP would block them
    assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains(" style="));

    let again = http
        .get(proxy.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    let assets = asset_paths(&html);
    assert!(assets.iter().any(|a| a.ends_with(".js")), "{assets:?}");
    assert!(assets.iter().any(|a| a.ends_with(".css")), "{assets:?}");
    for path in &assets {
        let response = http.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let expected = match path.rsplit('.').next().unwrap() {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "svg" => "image/svg+xml",
            other => panic!("unexpected asset type {other}"),
        };
        assert_eq!(response.headers()["content-type"], expected, "{path}");
        assert_eq!(
            response.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert!(!response.bytes().await.unwrap().is_empty());
    }

    let missing = http
        .get(proxy.url("/assets/app-NOPE.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// The page's WebSocket client logic (sequence checks, resync, backoff, silence) under Node's test runner with a
/// fake socket and fake timers: `dashboard/test/*.test.mjs`.
#[test]
fn websocket_client_logic() {
    let ui = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboard");
    let output = std::process::Command::new("node")
        .args(["--test", "test/"])
        .current_dir(&ui)
        .output()
        .expect("cannot run node (build.rs needs it too)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("# fail 0"),
        "node --test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Where the browser is: `KIMI_PROXY_CHROMIUM`, else Debian's `/usr/bin/chromium`.
fn chromium() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("KIMI_PROXY_CHROMIUM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    path.is_file().then_some(path)
}

/// The page in headless Chromium (playwright-core from the dashboard's own devDependencies, never a downloaded
/// browser): live updates of the gauge, the log (counting up while a stream runs) and the chart within one
/// second, session create/switch/rename/delete, exports that download, no console error, no CSP violation, all
/// behind the admin login; context savings shown per session and in total, the session's toggles changing what
/// goes upstream, and a manual compaction previewed and confirmed.
/// Screenshots land in `target/dashboard-e2e/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_end_to_end() {
    let Some(browser) = chromium() else {
        if std::env::var_os("KIMI_PROXY_SKIP_BROWSER_TESTS").is_some() {
            eprintln!(
                "browser_end_to_end skipped: KIMI_PROXY_SKIP_BROWSER_TESTS is set and Chromium is missing"
            );
            return;
        }
        panic!(
            "Chromium is missing: the dashboard's browser test needs Debian's `chromium` at /usr/bin/chromium \
             (`apt-get install chromium`) or KIMI_PROXY_CHROMIUM=PATH; set KIMI_PROXY_SKIP_BROWSER_TESTS=1 to skip it"
        );
    };
    let ui = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboard");
    assert!(
        ui.join("node_modules/playwright-core").is_dir(),
        "dashboard/node_modules is missing playwright-core: build.rs runs `npm ci` (is the lockfile in sync?)"
    );
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("dashboard-e2e");

    // With an admin token: the page is reached through the login page and works on its session cookie.
    let token = "e2e-admin-token-0123456789";
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(
        &mock_config(&mock, ""),
        &[("MOCK_KEY", "k"), ("KIMI_PROXY_ADMIN_TOKEN", token)],
    )
    .await;
    let run = tokio::process::Command::new("node")
        .arg("e2e/dashboard.mjs")
        .current_dir(&ui)
        .env("PROXY_URL", proxy.url(""))
        .env("CHROMIUM", &browser)
        .env("SHOTS", &shots)
        .env("MODEL", "mock/model")
        .env("ADMIN_TOKEN", token)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("the browser test did not finish within 120 s")
        .expect("cannot run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("[e2e] ok"),
        "dashboard e2e failed ({}); screenshots in {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nproxy log tail:\n{}",
        output.status,
        shots.display(),
        proxy
            .log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );

    // What the page's context settings did upstream: the requests it marked, as the mock received them.
    let received = |marker: &str| -> Vec<serde_json::Value> {
        let found = mock
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/chat/completions"))
            .filter_map(|r| r.json())
            .find(|body: &serde_json::Value| {
                body["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .and_then(|m| m["content"].as_str())
                    .is_some_and(|c| c.contains(marker))
            })
            .unwrap_or_else(|| panic!("no upstream request marked {marker}"));
        found["messages"].as_array().unwrap().clone()
    };
    let tool_contents = |messages: &[serde_json::Value]| -> Vec<String> {
        messages
            .iter()
            .filter(|m| m["role"] == "tool")
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .collect()
    };
    // Masking on from the page: every bulky read went up as a placeholder.
    let masked = tool_contents(&received("ctx-turn-masked"));
    assert_eq!(masked.len(), 6);
    assert!(
        masked.iter().all(|c| c.starts_with("[kimi-proxy masked")),
        "{masked:?}"
    );
    // Then off from the page: the next request went up as the client sent it.
    let plain = tool_contents(&received("ctx-turn-plain"));
    assert_eq!(plain.len(), 6);
    assert!(
        plain
            .iter()
            .enumerate()
            .all(|(t, c)| c.starts_with(&format!("src/f{t}.rs:0: ")) && c.lines().count() == 250),
        "{plain:?}"
    );
    // The confirmed compaction: the next request's middle replaced by a summary.
    let compacted = received("ctx-turn-compacted");
    assert!(compacted.len() < 16, "{} messages", compacted.len());
    assert!(
        compacted.iter().any(|m| m["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("[kimi-proxy compacted"))),
        "{compacted:?}"
    );
}
