//! Peer gateways measured beside kimi-proxy (`--peers litellm,portkey`).
//!
//! Each peer is installed at a pinned version into a throw-away directory under the bench's work dir
//! (`bench-results/peers/` by default; reused when it already holds that version), configured to route
//! `mock-model` to the same mock upstream as kimi-proxy, and started on a free loopback port. A peer that
//! cannot be installed, started or used is reported as such, and the run goes on without it. Every install
//! step and every wait is bounded; the peer processes (and anything they spawned) are killed when the
//! [`PeerServer`] is stopped or dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http::{HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::procs;

/// LiteLLM release installed by default: the newest on PyPI whose `[proxy]` extra resolves there (1.108.8 and
/// later pin `litellm-proxy`, `litellm-proxy-extras` or `litellm-enterprise` builds that PyPI does not serve).
pub const LITELLM_VERSION: &str = "1.108.7";
/// `@portkey-ai/gateway` release installed by default (the npm `latest` tag when this was written).
pub const PORTKEY_VERSION: &str = "1.15.2";
/// The gateway's own lockfile resolves `@hono/node-server` 1.13.5; a fresh `npm install` picks the newest 1.x,
/// with which every streamed answer fails on Node (`TypeError: immutable`, Portkey-AI/gateway issue 1389), so
/// the bench pins it back with an npm `overrides` entry.
pub const HONO_NODE_SERVER_VERSION: &str = "1.13.5";

/// Bounds of the install steps and of the start.
const PIP_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const NPM_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const SHORT_TIMEOUT: Duration = Duration::from_secs(120);
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Written into an install directory once its install succeeded: what was installed.
const MARKER: &str = ".kimi-bench-installed";

/// The key the peers send upstream (the mock accepts any key; kimi-proxy uses the same one).
const UPSTREAM_KEY: &str = "bench-key";

/// Node preload: the gateway's start script has no host option and listens on every interface; this makes
/// `server.listen(port)` bind 127.0.0.1 only.
const LOOPBACK_PRELOAD: &str = "\
// Written by kimi-bench: bind every listening socket without an explicit host to 127.0.0.1.
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^[0-9]+$/.test(args[0]))) {
    if (args[1] === undefined || args[1] === null) args[1] = '127.0.0.1';
    else if (typeof args[1] !== 'string') args.splice(1, 0, '127.0.0.1');
  }
  return listen.apply(this, args);
};
";

/// The peer gateways the bench knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Peer {
    Litellm,
    Portkey,
}

impl Peer {
    /// Column name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Litellm => "litellm",
            Peer::Portkey => "portkey",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Peer::Litellm => "LiteLLM proxy",
            Peer::Portkey => "Portkey AI gateway",
        }
    }
}

/// Pinned versions (overridable on the command line).
#[derive(Clone, Debug)]
pub struct Versions {
    pub litellm: String,
    pub portkey: String,
}

/// What the report says about one peer: how it was installed, configured and started, or why it was not measured.
#[derive(Clone, Debug)]
pub struct PeerReport {
    pub peer: Peer,
    /// What runs, with its runtime.
    pub version: String,
    /// How it was installed (markdown).
    pub install: String,
    /// Configuration bullets (markdown).
    pub config: Vec<String>,
    /// A configuration file shown verbatim: (path, language, text).
    pub config_file: Option<(String, &'static str, String)>,
    /// The command line it was started with.
    pub command: String,
    /// How the bench's requests reach it.
    pub requests: String,
    /// Anything the reader should know about its figures.
    pub notes: Vec<String>,
    /// Why it was not measured.
    pub failure: Option<String>,
}

impl PeerReport {
    fn new(peer: Peer) -> PeerReport {
        PeerReport {
            peer,
            version: String::new(),
            install: String::new(),
            config: Vec::new(),
            config_file: None,
            command: String::new(),
            requests: String::new(),
            notes: Vec::new(),
            failure: None,
        }
    }
}

/// An installed peer, ready to start.
enum Install {
    Litellm { venv: PathBuf },
    Portkey { dir: PathBuf },
}

/// A peer after its install step: the report so far and, if the install worked, what to start.
pub struct Prepared {
    pub report: PeerReport,
    install: Option<Install>,
}

/// Where the peers live: the absolute path (for the child processes) and the path as the user gave it (for the
/// report).
#[derive(Clone, Debug)]
pub struct WorkDir {
    pub abs: PathBuf,
    pub shown: PathBuf,
}

impl WorkDir {
    pub fn create(shown: &Path) -> anyhow::Result<WorkDir> {
        std::fs::create_dir_all(shown)
            .with_context(|| format!("cannot create {}", shown.display()))?;
        let abs = shown
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", shown.display()))?;
        Ok(WorkDir {
            abs,
            shown: shown.to_path_buf(),
        })
    }

    fn show(&self, name: &str) -> String {
        self.shown.join(name).display().to_string()
    }
}

/// Installs `peer` (or finds it installed); never fails: a failure is written into the report.
pub async fn prepare(peer: Peer, work: &WorkDir, versions: &Versions) -> Prepared {
    let mut report = PeerReport::new(peer);
    eprintln!("kimi-bench: preparing peer {}", peer.name());
    let started = Instant::now();
    let install = match peer {
        Peer::Litellm => install_litellm(work, &versions.litellm, &mut report).await,
        Peer::Portkey => install_portkey(work, &versions.portkey, &mut report).await,
    };
    match install {
        Ok(install) => {
            eprintln!(
                "kimi-bench: peer {} ready to start ({:.0} s): {}",
                peer.name(),
                started.elapsed().as_secs_f64(),
                report.version
            );
            Prepared {
                report,
                install: Some(install),
            }
        }
        Err(err) => {
            let message = format!("could not be installed: {err:#}");
            eprintln!("kimi-bench: peer {} {message}", peer.name());
            report.failure = Some(message);
            Prepared {
                report,
                install: None,
            }
        }
    }
}

async fn install_litellm(
    work: &WorkDir,
    version: &str,
    report: &mut PeerReport,
) -> anyhow::Result<Install> {
    let venv = work.abs.join("litellm-venv");
    let requirement = format!("litellm[proxy]=={version}");
    let log = work.abs.join("litellm-install.log");
    let python_bin = venv.join("bin").join("python");
    let entry = venv.join("bin").join("litellm");
    let marker = venv.join(MARKER);
    let base_python = std::env::var("KIMI_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let steps = format!(
        "`{base_python} -m venv {venv}` then `{venv}/bin/python -m pip install --disable-pip-version-check \
         --no-input '{requirement}'` (log: `{log}`)",
        venv = work.show("litellm-venv"),
        log = work.show("litellm-install.log"),
    );
    let installed = std::fs::read_to_string(&marker).unwrap_or_default();
    if installed.trim() == requirement && entry.is_file() && python_bin.is_file() {
        report.install = format!("reused the virtual environment installed earlier by {steps}");
    } else {
        let _ = std::fs::remove_file(&marker);
        if !python_bin.is_file() {
            let mut cmd = Command::new(&base_python);
            cmd.arg("-m").arg("venv").arg(&venv);
            run_step(cmd, &log, SHORT_TIMEOUT, "python -m venv").await?;
        }
        let mut cmd = Command::new(&python_bin);
        cmd.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            &requirement,
        ]);
        eprintln!(
            "kimi-bench: pip install '{requirement}' into {} (first time: several minutes)",
            work.show("litellm-venv")
        );
        run_step(cmd, &log, PIP_TIMEOUT, "pip install").await?;
        std::fs::write(&marker, &requirement)
            .with_context(|| format!("cannot write {}", marker.display()))?;
        report.install = format!("installed for this run: {steps}");
    }
    if !entry.is_file() {
        bail!("{} is missing after the install", entry.display());
    }
    let python = output_of(Command::new(&python_bin).arg("--version"))
        .await
        .unwrap_or_else(|err| format!("Python (version unknown: {err:#})"));
    report.version = format!("litellm {version} (PyPI `{requirement}`), {python}");
    Ok(Install::Litellm { venv })
}

fn portkey_package_json(version: &str) -> String {
    format!(
        "{{\n  \"name\": \"kimi-bench-portkey\",\n  \"private\": true,\n  \"description\": \"kimi-bench throw-away \
         install of the Portkey gateway\",\n  \"dependencies\": {{ \"@portkey-ai/gateway\": \"{version}\" }},\n  \
         \"overrides\": {{ \"@hono/node-server\": \"{HONO_NODE_SERVER_VERSION}\" }}\n}}\n"
    )
}

async fn install_portkey(
    work: &WorkDir,
    version: &str,
    report: &mut PeerReport,
) -> anyhow::Result<Install> {
    let dir = work.abs.join("portkey");
    let log = work.abs.join("portkey-install.log");
    let package_json = portkey_package_json(version);
    let entry = portkey_entry(&dir);
    let marker = dir.join(MARKER);
    let steps = format!(
        "`npm install --no-audit --no-fund` in `{dir}` with a generated `package.json` \
         (`\"@portkey-ai/gateway\": \"{version}\"`, and `\"overrides\": {{\"@hono/node-server\": \
         \"{HONO_NODE_SERVER_VERSION}\"}}`: newer `@hono/node-server` 1.x breaks every streamed answer on Node, \
         Portkey-AI/gateway issue 1389); npm wrote `package-lock.json` there (log: `{log}`)",
        dir = work.show("portkey"),
        log = work.show("portkey-install.log"),
    );
    let installed = std::fs::read_to_string(&marker).unwrap_or_default();
    if installed == package_json && entry.is_file() {
        report.install = format!("reused the install made earlier by {steps}");
    } else {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let _ = std::fs::remove_file(&marker);
        std::fs::write(dir.join("package.json"), &package_json)
            .with_context(|| format!("cannot write {}/package.json", dir.display()))?;
        let mut cmd = Command::new("npm");
        cmd.args(["install", "--no-audit", "--no-fund", "--no-update-notifier"])
            .current_dir(&dir);
        eprintln!(
            "kimi-bench: npm install @portkey-ai/gateway@{version} in {}",
            work.show("portkey")
        );
        run_step(cmd, &log, NPM_TIMEOUT, "npm install").await?;
        std::fs::write(&marker, &package_json)
            .with_context(|| format!("cannot write {}", marker.display()))?;
        report.install = format!("installed for this run: {steps}");
    }
    if !entry.is_file() {
        bail!("{} is missing after the install", entry.display());
    }
    let gateway = package_version(&dir.join("node_modules/@portkey-ai/gateway/package.json"))
        .unwrap_or_else(|| "unknown".into());
    let hono = package_version(&dir.join("node_modules/@hono/node-server/package.json"))
        .unwrap_or_else(|| "unknown".into());
    let node = output_of(Command::new("node").arg("--version"))
        .await
        .unwrap_or_else(|err| format!("unknown ({err:#})"));
    report.version = format!(
        "@portkey-ai/gateway {gateway} (npm), @hono/node-server {hono}, Node.js {}",
        node.trim_start_matches('v')
    );
    Ok(Install::Portkey { dir })
}

fn portkey_entry(dir: &Path) -> PathBuf {
    dir.join("node_modules/@portkey-ai/gateway/build/start-server.js")
}

/// `version` of an npm `package.json`.
fn package_version(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("version")?.as_str().map(str::to_owned)
}

/// Runs one install step to completion, its output appended to `log`; bounded by `timeout`.
async fn run_step(
    mut cmd: Command,
    log: &Path,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let _ = writeln!(file, "\n$ {what}");
    let stderr = file
        .try_clone()
        .with_context(|| format!("cannot reopen {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("cannot run {what}"))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => bail!(
            "{what} failed ({status}); the end of {}:\n{}",
            log.display(),
            log_tail(log, 12)
        ),
        Ok(Err(err)) => bail!("waiting for {what}: {err}"),
        Err(_) => {
            let _ = child.kill().await;
            bail!(
                "{what} did not finish within {} s; the end of {}:\n{}",
                timeout.as_secs(),
                log.display(),
                log_tail(log, 12)
            )
        }
    }
}

/// The trimmed stdout (or stderr, if stdout is empty) of a short command.
async fn output_of(cmd: &mut Command) -> anyhow::Result<String> {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(SHORT_TIMEOUT, cmd.output())
        .await
        .context("timed out")??;
    let text = if output.stdout.is_empty() {
        output.stderr
    } else {
        output.stdout
    };
    Ok(String::from_utf8_lossy(&text).trim().to_owned())
}

/// The last `lines` non-empty lines of a log, each cut to 300 characters.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<String> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match line.char_indices().nth(300) {
            Some((cut, _)) => format!("{}…", line.get(..cut).unwrap_or_default()),
            None => line.to_owned(),
        })
        .collect();
    let from = all.len().saturating_sub(lines);
    all.get(from..).unwrap_or_default().join("\n")
}

/// A free port on 127.0.0.1 (bound and released; the peer binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A random master key for LiteLLM (it refuses to start without one), from the standard library's random hasher
/// seeds.
fn random_key() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut key = String::from("sk-kimi-bench-");
    for i in 0..4u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(i);
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        key.push_str(&format!("{:016x}", hasher.finish()));
    }
    key
}

fn header(name: &'static str, value: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    Ok((
        HeaderName::from_static(name),
        HeaderValue::from_str(value).with_context(|| format!("invalid {name} header"))?,
    ))
}

/// The LiteLLM proxy's config.yaml: one model, the mock, nothing else.
fn litellm_config(mock: SocketAddr) -> String {
    format!(
        "# Written by kimi-bench for one run: route mock-model to the bench's mock upstream, nothing else.\n\
         model_list:\n\
        \x20 - model_name: mock-model\n\
        \x20   litellm_params:\n\
        \x20     model: openai/mock-model\n\
        \x20     api_base: http://{mock}/v1\n\
        \x20     api_key: {UPSTREAM_KEY}\n\
         litellm_settings:\n\
        \x20 telemetry: false\n\
        \x20 callbacks: []\n\
        \x20 success_callback: []\n\
        \x20 failure_callback: []\n\
         general_settings:\n\
        \x20 master_key: os.environ/LITELLM_MASTER_KEY\n\
        \x20 # the x-mock-* request headers shape the mock's answer: pass them on, as kimi-proxy does\n\
        \x20 forward_client_headers_to_llm_api: true\n\
        \x20 disable_spend_logs: true\n\
        \x20 disable_error_logs: true\n"
    )
}

/// A running peer gateway. Killed (with any process it spawned) when stopped or dropped.
pub struct PeerServer {
    pub peer: Peer,
    pub addr: SocketAddr,
    pub pid: u32,
    /// Headers every request to this peer carries.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    log: PathBuf,
    child: Child,
}

/// Starts a prepared peer against `mock`, waits until it answers, and fills in the report's configuration and
/// command line. `None` (with the reason in the report) if it was not installed or did not come up.
pub async fn start(
    prepared: &mut Prepared,
    mock: SocketAddr,
    work: &WorkDir,
    log_dir: &Path,
) -> Option<PeerServer> {
    let install = prepared.install.as_ref()?;
    let peer = prepared.report.peer;
    let result = match install {
        Install::Litellm { venv } => {
            start_litellm(venv, mock, work, log_dir, &mut prepared.report).await
        }
        Install::Portkey { dir } => {
            start_portkey(dir, mock, work, log_dir, &mut prepared.report).await
        }
    };
    match result {
        Ok(server) => {
            eprintln!(
                "kimi-bench: {} on {} (pid {})",
                peer.name(),
                server.addr,
                server.pid
            );
            Some(server)
        }
        Err(err) => {
            let message = format!("could not be started: {err:#}");
            eprintln!("kimi-bench: peer {} {message}", peer.name());
            prepared.report.failure = Some(message);
            None
        }
    }
}

async fn start_litellm(
    venv: &Path,
    mock: SocketAddr,
    work: &WorkDir,
    log_dir: &Path,
    report: &mut PeerReport,
) -> anyhow::Result<PeerServer> {
    let port = free_port()?;
    let config = litellm_config(mock);
    let config_path = work.abs.join("litellm-config.yaml");
    std::fs::write(&config_path, &config)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let key = random_key();
    let port_arg = port.to_string();
    let mut cmd = Command::new(venv.join("bin").join("litellm"));
    cmd.arg("--config")
        .arg(&config_path)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port_arg,
            "--num_workers",
            "1",
        ])
        .current_dir(&work.abs)
        .env("LITELLM_MASTER_KEY", &key)
        .env("LITELLM_LOG", "ERROR")
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_HOST")
        .env_remove("REDIS_URL");
    report.config_file = Some((work.show("litellm-config.yaml"), "yaml", config));
    report.config = vec![
        "environment: `LITELLM_LOG=ERROR`; `LITELLM_LOCAL_MODEL_COST_MAP=True` (use the bundled model price \
         list instead of fetching it at start, there is no network here); `LITELLM_MASTER_KEY` = a random \
         per-run key (this version refuses to start without a master key); `DATABASE_URL`, `REDIS_HOST` and \
         `REDIS_URL` removed"
            .into(),
        "no database, no cache, no callbacks or logging integrations; one worker process (`--num_workers 1`, \
         also its default) under uvicorn, its default server; everything else at LiteLLM's defaults"
            .into(),
    ];
    report.command = format!(
        "LITELLM_LOG=ERROR LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_MASTER_KEY=sk-… {}/bin/litellm --config {} \
         --host 127.0.0.1 --port {port} --num_workers 1",
        work.show("litellm-venv"),
        work.show("litellm-config.yaml")
    );
    report.requests =
        "`POST /v1/chat/completions` with `Authorization: Bearer <master key>`; the same body and \
                       `x-mock-*` headers as the other sides"
            .into();
    let headers = vec![header("authorization", &format!("Bearer {key}"))?];
    spawn_and_wait(
        Peer::Litellm,
        cmd,
        port,
        "/health/liveliness",
        headers,
        &log_dir.join("litellm.log"),
    )
    .await
}

async fn start_portkey(
    dir: &Path,
    mock: SocketAddr,
    work: &WorkDir,
    log_dir: &Path,
    report: &mut PeerReport,
) -> anyhow::Result<PeerServer> {
    let port = free_port()?;
    let preload = dir.join("loopback.cjs");
    std::fs::write(&preload, LOOPBACK_PRELOAD)
        .with_context(|| format!("cannot write {}", preload.display()))?;
    let mut cmd = Command::new("node");
    cmd.arg("--require")
        .arg(&preload)
        .arg(portkey_entry(dir))
        .arg(format!("--port={port}"))
        .arg("--headless")
        .current_dir(dir);
    let custom_host = format!("http://{mock}/v1");
    let forward = "x-mock-chunks,x-mock-chunk-delay-ms";
    report.config = vec![
        "no config file: the gateway is configured per request, by headers (below); no cache, retries, \
         guardrails or logging sinks are asked for, so it passes requests straight to the custom host"
            .into(),
        "`--headless` (no web UI, no log stream); `loopback.cjs` (written by the bench) makes the server bind \
         127.0.0.1, since the start script has no host option; one Node.js process"
            .into(),
        "its stream relay waits 25 ms before passing on the first event of every stream (a fixed delay in the \
         gateway's code, not a setting), which shows in its TTFT"
            .into(),
    ];
    report.config_file = std::fs::read_to_string(dir.join("package.json"))
        .ok()
        .map(|text| {
            (
                format!("{}/package.json", work.show("portkey")),
                "json",
                text,
            )
        });
    report.command = format!(
        "cd {} && node --require ./loopback.cjs node_modules/@portkey-ai/gateway/build/start-server.js \
         --port={port} --headless",
        work.show("portkey")
    );
    report.requests = format!(
        "`POST /v1/chat/completions` with `x-portkey-provider: openai`, `x-portkey-custom-host: {custom_host}`, \
         `Authorization: Bearer {UPSTREAM_KEY}` and `x-portkey-forward-headers: {forward}` (Portkey forwards \
         only the headers named there); the same body and `x-mock-*` headers as the other sides"
    );
    let headers = vec![
        header("x-portkey-provider", "openai")?,
        header("x-portkey-custom-host", &custom_host)?,
        header("authorization", &format!("Bearer {UPSTREAM_KEY}"))?,
        header("x-portkey-forward-headers", forward)?,
    ];
    spawn_and_wait(
        Peer::Portkey,
        cmd,
        port,
        "/",
        headers,
        &log_dir.join("portkey.log"),
    )
    .await
}

/// Spawns the peer with its output in `log`, then polls `GET health` on `port` until it answers 200, the
/// process exits, or [`START_TIMEOUT`] passes.
async fn spawn_and_wait(
    peer: Peer,
    mut cmd: Command,
    port: u16,
    health: &str,
    headers: Vec<(HeaderName, HeaderValue)>,
    log: &Path,
) -> anyhow::Result<PeerServer> {
    let file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let stderr = file
        .try_clone()
        .with_context(|| format!("cannot reopen {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", peer.name()))?;
    let pid = child.id().context("the peer exited at once")?;
    // From here on `server` owns the child: any early return kills it.
    let mut server = PeerServer {
        peer,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        pid,
        headers,
        log: log.to_path_buf(),
        child,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!(
                "{} exited ({status}) before answering; the end of {}:\n{}",
                peer.name(),
                log.display(),
                log_tail(log, 15)
            );
        }
        let last = match http_status(server.addr, health).await {
            Ok(200) => return Ok(server),
            Ok(status) => format!("GET {health} answered {status}"),
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            bail!(
                "{} did not answer GET {health} with 200 within {} s ({last}); the end of {}:\n{}",
                peer.name(),
                START_TIMEOUT.as_secs(),
                log.display(),
                log_tail(log, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The status code of `GET path` on `addr` (one short-lived connection, bounded).
async fn http_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let attempt = async {
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut head = [0u8; 32];
        let mut read = 0;
        while read < 12 {
            let n = tcp
                .read(head.get_mut(read..).unwrap_or_default())
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            read += n;
        }
        parse_status_line(head.get(..read).unwrap_or_default())
            .ok_or_else(|| "not an HTTP answer".to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head).ok()?;
    let rest = text.strip_prefix("HTTP/1.")?;
    rest.get(2..5)?.parse().ok()
}

impl PeerServer {
    /// Fails if the peer has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); the end of {}:\n{}",
                self.peer.name(),
                self.log.display(),
                log_tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// The peer's process and everything it spawned.
    pub fn pids(&self) -> Vec<u32> {
        procs::process_tree(self.pid)
    }

    /// Kills the peer (and its descendants) and reaps it.
    pub async fn stop(mut self) {
        self.kill_all();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    fn kill_all(&mut self) {
        // Descendants first (found through the live parent), by pid.
        let descendants: Vec<u32> = procs::process_tree(self.pid)
            .into_iter()
            .filter(|&pid| pid != self.pid)
            .collect();
        let _ = self.child.start_kill();
        for pid in descendants {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.kill_all();
        let _ = self.child.try_wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tails_are_short() -> anyhow::Result<()> {
        let path = std::env::temp_dir().join(format!("kimi-bench-tail-{}", std::process::id()));
        std::fs::write(&path, format!("a\n\nb\n{}\nc\n", "x".repeat(1_000)))?;
        let tail = log_tail(&path, 3);
        let _ = std::fs::remove_file(&path);
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines.first(), Some(&"b"));
        assert!(lines.get(1).is_some_and(|l| l.chars().count() == 301));
        assert_eq!(lines.get(2), Some(&"c"));
        Ok(())
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Service"), Some(503));
        assert_eq!(parse_status_line(b"SSH-2.0"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2"), None);
    }

    #[test]
    fn litellm_config_routes_mock_model_to_the_mock() {
        let config = litellm_config(SocketAddr::from(([127, 0, 0, 1], 4321)));
        assert!(config.contains("  - model_name: mock-model\n"));
        assert!(config.contains("      model: openai/mock-model\n"));
        assert!(config.contains("      api_base: http://127.0.0.1:4321/v1\n"));
        assert!(config.contains("      api_key: bench-key\n"));
        assert!(config.contains("  forward_client_headers_to_llm_api: true\n"));
    }

    #[test]
    fn portkey_package_pins_both_versions() -> anyhow::Result<()> {
        let json: serde_json::Value = serde_json::from_str(&portkey_package_json("1.2.3"))?;
        assert_eq!(json["dependencies"]["@portkey-ai/gateway"], "1.2.3");
        assert_eq!(
            json["overrides"]["@hono/node-server"],
            HONO_NODE_SERVER_VERSION
        );
        Ok(())
    }

    #[test]
    fn master_keys_differ() {
        let (a, b) = (random_key(), random_key());
        assert!(a.starts_with("sk-kimi-bench-") && a.len() == 14 + 64);
        assert_ne!(a, b);
    }

    #[test]
    fn free_ports_are_on_loopback() -> anyhow::Result<()> {
        let port = free_port()?;
        assert!(port > 0);
        Ok(())
    }
}
