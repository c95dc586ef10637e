//! Test harness: the real `kimi-proxy` binary on an ephemeral port, in front of the project's mock upstream.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub use mock_upstream::MockUpstream;

pub mod pg;

pub const BIN: &str = env!("CARGO_BIN_EXE_kimi-proxy");

/// A running proxy process. Killed on drop.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts the binary with `config` (TOML) and exactly the environment `env` (nothing inherited, so no real
    /// key on the machine can leak into a test).
    pub async fn start(config: &str, env: &[(&str, &str)]) -> Proxy {
        Self::start_with_args(config, env, &[]).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("proxy.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// A config with only the mock provider: `mock/model` → upstream id `mock-model`, key from `$MOCK_KEY`.
pub fn mock_config(mock: &MockUpstream, extra: &str) -> String {
    format!(
        r#"
builtin_catalog = false

[server]
shutdown_grace_ms = 3000

[providers.mock]
base_url = "{base}"
api_key = "${{MOCK_KEY}}"
[providers.mock.retry]
max_attempts = 3
initial_backoff_ms = 10
max_backoff_ms = 40
deadline_ms = 5000

[models."mock/model"]
provider = "mock"
model = "mock-model"
max_context_size = 100000

{extra}
"#,
        base = mock.base_url()
    )
}

/// The config snippet of an Anthropic-native provider on the mock (its Anthropic mode): provider `mock-anthropic`
/// (`type = "anthropic"`, key from `$MOCK_KEY`, `provider_extra` lines added to it) with the model
/// `mock-anthropic/claude-mock` (upstream id `claude-mock`, priced: input 1, cached input 0.1, cache write 1.25,
/// output 5 USD per million tokens). Goes into [`mock_config`]'s `extra`.
pub fn anthropic_provider(mock: &MockUpstream, provider_extra: &str) -> String {
    format!(
        r#"
[providers.mock-anthropic]
type = "anthropic"
base_url = "http://{addr}"
api_key = "${{MOCK_KEY}}"
{provider_extra}

[models."mock-anthropic/claude-mock"]
provider = "mock-anthropic"
model = "claude-mock"
max_context_size = 200000
input_price = 1.0
cached_input_price = 0.1
cache_write_price = 1.25
output_price = 5.0
"#,
        addr = mock.addr()
    )
}

/// The proxy in front of the mock with [`mock_config`] and `extra`, the provider key `mock-provider-key`.
pub async fn start_proxy(mock: &MockUpstream, extra: &str) -> Proxy {
    Proxy::start(
        &mock_config(mock, extra),
        &[("MOCK_KEY", "mock-provider-key")],
    )
    .await
}

/// A response's `Content-Type` (empty when none).
pub fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn chat_body(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello."}
        ]
    })
}

impl Proxy {
    /// Like [`Proxy::start`], with extra `serve` arguments (e.g. `--db FILE`).
    pub async fn start_with_args(config: &str, env: &[(&str, &str)], args: &[&str]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .env_clear()
            .env("KIMI_PROXY_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn kimi-proxy");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("proxy did not start within 20 s")
            .unwrap()
            .expect("proxy exited before listening");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("listening line")
            .parse()
            .expect("address");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Proxy { child, addr, dir }
    }

    /// Sends SIGTERM, as a service manager stopping the proxy would.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("the proxy is still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// The database of a proxy started without `--db`.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("data").join("kimi-proxy.db")
    }
}

/// A plain chat request (see [`chat_body`]) through the proxy, answered `200`.
pub async fn assert_answers(proxy: &Proxy, model: &str) {
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body(model, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

/// Reads a response body to its end; returns the bytes and whether it ended cleanly (not cut mid-stream).
pub async fn read_body(response: reqwest::Response) -> (Vec<u8>, bool) {
    use futures_util::StreamExt as _;
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => return (received, false),
        }
    }
    (received, true)
}

/// GET `path` on the proxy and parse the JSON answer.
/// `GET path`: the status and the JSON body (`null` when the body is not JSON).
pub async fn get_with_status(proxy: &Proxy, path: &str) -> (u16, serde_json::Value) {
    let response = client().get(proxy.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// `METHOD path` with an optional JSON body: the status and the JSON answer (`null` when not JSON).
pub async fn send(
    proxy: &Proxy,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client().request(method, proxy.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// Waits (up to 15 s) until the proxy's store writer has written at least `n` records.
pub async fn wait_written(proxy: &Proxy, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, stats) = get_with_status(proxy, "/api/stats/store").await;
        if stats["writer"]["written"].as_u64().unwrap_or(0) >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not written: {stats}\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn get_json<T: serde::de::DeserializeOwned>(proxy: &Proxy, path: &str) -> T {
    client()
        .get(proxy.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits (up to 5 s) until at least `n` finished records are visible, and returns the newest first.
pub async fn recent_records(proxy: &Proxy, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let list: Vec<serde_json::Value> = get_json(proxy, "/api/requests/recent?limit=100").await;
        if list.len() >= n {
            return list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} records",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A one-trick upstream on loopback: reads each request's head (and a `Content-Length` body), answers with
/// exactly `response` (raw HTTP, which should say `Connection: close`), and closes. For answers the mock
/// upstream cannot give (redirects, cookies, arbitrary headers).
pub async fn raw_upstream(response: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut received = Vec::new();
                let mut buf = [0u8; 4096];
                let read = async {
                    loop {
                        let n = stream.read(&mut buf).await.ok()?;
                        if n == 0 {
                            return None;
                        }
                        received.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&received).to_ascii_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if received.len() >= end + 4 + length {
                                return Some(());
                            }
                        }
                    }
                };
                if tokio::time::timeout(Duration::from_secs(10), read)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    let _ = stream.write_all(response).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Runs a one-shot `kimi-proxy` command (`import`, `report`, `sessions`, …) with exactly the environment `env`,
/// and returns its output; fails the test when it does not succeed.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = std::process::Command::new(BIN);
    command.args(args).env_clear();
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("run kimi-proxy");
    assert!(
        output.status.success(),
        "kimi-proxy {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// A Python virtual environment under `target/` holding `packages` (pip requirement strings), made once and
/// reused by later runs (a marker file records what was installed). Returns the venv's `python`. Panics with
/// what to install when `python3 -m venv` is unavailable (Debian: `python3-venv`; `.ci/run` installs it).
pub fn python_venv(name: &str, packages: &[&str]) -> PathBuf {
    use std::process::Command as Std;
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let venv = root.join(name);
    let python = venv.join("bin").join("python");
    let marker = venv.join("kimi-installed.txt");
    let wanted = packages.join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) && python.exists() {
        return python;
    }
    // Built beside and renamed into place, so a half-made venv is never taken for a finished one.
    let building = root.join(format!("{name}.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    std::fs::create_dir_all(root).unwrap();
    let status = Std::new("python3")
        .args(["-m", "venv"])
        .arg(&building)
        .status()
        .expect("python3 is needed for the SDK tests");
    assert!(
        status.success(),
        "`python3 -m venv` failed: install python3-venv (Debian/Ubuntu) or run .ci/run as root"
    );
    let status = Std::new(building.join("bin").join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(packages)
        .status()
        .unwrap();
    assert!(status.success(), "pip install {packages:?} failed");
    std::fs::write(building.join("kimi-installed.txt"), &wanted).unwrap();
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::rename(&building, &venv).unwrap();
    python
}

/// `package` installed from npm (once, reused by later runs) under `target/<dir>`, with `ready(prefix)` saying
/// whether an install there works. Returns the prefix; `None` — said loudly — only when the machine has no
/// `npm`.
pub fn npm_install(
    dir: &str,
    package: &str,
    ready: &dyn Fn(&std::path::Path) -> bool,
) -> Option<PathBuf> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let prefix = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(dir);
    if ready(&prefix) {
        return Some(prefix);
    }
    let has_npm = std::process::Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_npm {
        eprintln!("\n!!! SKIPPED: npm is not installed, so the {package} test cannot run\n");
        return None;
    }
    std::fs::create_dir_all(&prefix).unwrap();
    let output = std::process::Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&prefix)
        .arg(package)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "npm install {package} failed (registry unreachable?):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(ready(&prefix), "the installed {package} does not run");
    Some(prefix)
}

/// The Codex CLI (`@openai/codex` from npm, under the target directory): its `codex` command.
pub fn codex_cli() -> Option<PathBuf> {
    let bin = |prefix: &std::path::Path| prefix.join("node_modules/.bin/codex");
    let prefix = npm_install("codex-npm", "@openai/codex", &|prefix| bin(prefix).exists())?;
    Some(bin(&prefix))
}

/// A Messages request (Anthropic's API) as Claude Code would send it: a system prompt, one user turn.
pub fn messages_body(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "max_tokens": 1024,
        "stream": stream,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Say hello."}]
    })
}

/// POSTs `body` to `/v1/messages` (or `path`) with Anthropic's headers (`x-api-key`, `anthropic-version`) and
/// the `extra` headers.
pub async fn post_messages(
    proxy: &Proxy,
    path: &str,
    body: &serde_json::Value,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client()
        .post(proxy.url(path))
        .header("x-api-key", "sk-ant-client-key")
        .header("anthropic-version", "2023-06-01")
        .json(body);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// An event stream split into `(event name, data as JSON)` pairs, in order.
pub fn sse_events(body: &[u8]) -> Vec<(String, serde_json::Value)> {
    let text = String::from_utf8_lossy(body);
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            let data = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data}"));
            (name, data)
        })
        .collect()
}

/// A Python with the official SDK `package` (`openai`, `anthropic`) from PyPI, in the venv `venv` under the
/// target directory (made on first use by [`python_venv`]). `None` — said loudly — only when the machine has no
/// `python3`.
pub fn sdk_python(venv: &str, package: &str) -> Option<PathBuf> {
    let has_python = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_python {
        eprintln!(
            "\n!!! SKIPPED: python3 is not installed, so the {package} SDK test cannot run (.ci/run installs it)\n"
        );
        return None;
    }
    Some(python_venv(venv, &[package]))
}

/// A Python with the official Anthropic SDK (see [`sdk_python`]).
pub fn anthropic_sdk_python() -> Option<PathBuf> {
    sdk_python("anthropic-sdk-venv", "anthropic")
}

/// The Claude Code CLI (`@anthropic-ai/claude-code` from npm, installed once under the target directory), as the
/// command that runs it: `node …/cli-wrapper.cjs` (the package's own fallback launcher, which works whether or not
/// npm ran its postinstall). `None` — said loudly — only when the machine has no `npm`.
pub fn claude_code_cli() -> Option<Vec<String>> {
    let wrapper = |prefix: &std::path::Path| {
        prefix.join("node_modules/@anthropic-ai/claude-code/cli-wrapper.cjs")
    };
    let works = |prefix: &std::path::Path| {
        std::fs::create_dir_all(prefix.join("home")).is_ok()
            && std::process::Command::new("node")
                .arg(wrapper(prefix))
                .arg("--version")
                .env("HOME", prefix.join("home"))
                .output()
                .is_ok_and(|o| o.status.success())
    };
    let prefix = npm_install("claude-code", "@anthropic-ai/claude-code", &works)?;
    Some(vec![
        "node".to_string(),
        wrapper(&prefix).to_str().unwrap().to_string(),
    ])
}

/// Runs `tests/clients/anthropic_sdk.py` (the official Anthropic SDK: messages whole and streamed, tools,
/// thinking, count_tokens, errors) with `python` against the proxy, asking for `model`; fails the test with the
/// script's output and the proxy log's tail unless every check passed.
pub async fn run_anthropic_sdk_script(python: &std::path::Path, proxy: &Proxy, model: &str) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/anthropic_sdk.py"
    );
    let output = tokio::process::Command::new(python)
        .arg(script)
        .env("PROXY_URL", proxy.url(""))
        .env("MODEL", model)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("all checks passed"),
        "the SDK script failed:\n{stdout}\n{}\nproxy log tail:\n{}",
        String::from_utf8_lossy(&output.stderr),
        proxy
            .log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Runs `tests/clients/openai_responses_sdk.py` (the official OpenAI SDK's `client.responses`: create plain and
/// streamed, tool round trips with `previous_response_id`, retrieve, input items, cancel, delete) with `python`
/// against the proxy, asking for `model`; `native` when its provider speaks Responses itself. Returns what the
/// script saw; fails the test with its output unless every check passed.
pub async fn run_openai_responses_sdk_script(
    python: &std::path::Path,
    proxy: &Proxy,
    model: &str,
    native: bool,
) -> serde_json::Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/openai_responses_sdk.py"
    );
    let output = tokio::process::Command::new(python)
        .arg(script)
        .env_clear()
        .env("BASE_URL", proxy.url("/v1"))
        .env("MODEL", model)
        .env("NATIVE", if native { "1" } else { "0" })
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "the SDK script failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The stored `requests` rows (every column) as the API shows them, once the writer has written `n`: each
/// session's `GET /api/sessions/{id}/requests`.
pub async fn stored_requests(proxy: &Proxy, n: u64) -> Vec<serde_json::Value> {
    wait_written(proxy, n).await;
    let (status, sessions) = get_with_status(proxy, "/api/sessions?limit=100").await;
    assert_eq!(status, 200, "{sessions}");
    let mut rows = Vec::new();
    for session in sessions["data"].as_array().unwrap() {
        let path = format!("/api/sessions/{}/requests?limit=100", session["id"]);
        let (status, list) = get_with_status(proxy, &path).await;
        assert_eq!(status, 200, "{list}");
        rows.extend(list["data"].as_array().unwrap().iter().cloned());
    }
    rows
}

/// The provider-extra lines for [`anthropic_provider`] that make [`adapted_anthropic_request`] lose two
/// things: one beta feature and one field.
pub const ADAPTING_PROVIDER: &str = "anthropic_betas = [\"claude-code-20250219\"]\nanthropic_drop_fields = [\"context_management\"]";

/// An Anthropic request to the native mock model through `proxy` (its provider set up with
/// [`ADAPTING_PROVIDER`]) that loses one beta feature and one field on the way, and whose answer reports 50
/// cache-write and 200 cache-read tokens.
pub async fn adapted_anthropic_request(proxy: &Proxy) {
    let response = client()
        .post(proxy.url("/v1/messages"))
        .header("x-api-key", "sk-ant-client-key")
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,context-management-2025-06-27",
        )
        .header("x-mock-cache-write", "50")
        .header("x-mock-cache-read", "200")
        .json(&serde_json::json!({
            "model": "claude-mock",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Say hello."}],
            "context_management": {"edits": []}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
}

/// A user message whose request to `mock-small` makes the mock report about `tokens` tokens of context (the
/// mock counts a prompt as its body's bytes / 4, plus one token per answer chunk: send `x-mock-chunks: 8`).
pub fn sized_prompt(tokens: usize) -> String {
    let overhead = r#"{"model":"mock-small","messages":[{"role":"user","content":""}]}"#.len();
    "x".repeat((tokens * 4).saturating_sub(overhead + 4 * 8))
}
