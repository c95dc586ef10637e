//! Building, starting and stopping the two servers under test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root: where `cargo build` runs and `git` is asked for the commit.
pub fn workspace_root() -> PathBuf {
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    match compiled.canonicalize() {
        Ok(root) if root.join("Cargo.toml").is_file() => root,
        _ => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    }
}

/// The target directory: `CARGO_TARGET_DIR`, else the one this binary was built into
/// (`target/<profile>/kimi-bench` → `target`).
fn target_dir(root: &Path) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return Ok(if dir.is_absolute() {
            dir
        } else {
            root.join(dir)
        });
    }
    let exe = std::env::current_exe().context("cannot locate the kimi-bench executable")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no target directory above it", exe.display()))
}

/// Paths of the two release binaries.
pub struct Binaries {
    pub proxy: PathBuf,
    pub mock: PathBuf,
}

/// Runs `cargo build --release -p kimi-proxy -p mock-upstream` (unless `skip_build`) and locates the binaries.
pub fn build(root: &Path, skip_build: bool) -> anyhow::Result<Binaries> {
    if !skip_build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("kimi-bench: cargo build --release -p kimi-proxy -p mock-upstream");
        let status = std::process::Command::new(&cargo)
            .args([
                "build",
                "--release",
                "-p",
                "kimi-proxy",
                "-p",
                "mock-upstream",
            ])
            .current_dir(root)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("cannot run {}", Path::new(&cargo).display()))?;
        if !status.success() {
            bail!("cargo build --release -p kimi-proxy -p mock-upstream failed ({status})");
        }
    }
    let release = target_dir(root)?.join("release");
    let binaries = Binaries {
        proxy: release.join(format!("kimi-proxy{}", std::env::consts::EXE_SUFFIX)),
        mock: release.join(format!("mock-upstream{}", std::env::consts::EXE_SUFFIX)),
    };
    for path in [&binaries.proxy, &binaries.mock] {
        if !path.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release -p kimi-proxy -p mock-upstream`",
                path.display()
            );
        }
    }
    Ok(binaries)
}

/// A running server. Killed when dropped, so an error anywhere stops both servers.
pub struct Server {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub pid: u32,
    pub log: PathBuf,
    child: Child,
}

impl Server {
    /// Spawns `bin args`, waits for the stdout line containing `marker`, and parses the address after the
    /// first `http://` in it. Stdout keeps being drained; stderr goes to `log`.
    pub async fn start(
        name: &'static str,
        bin: &Path,
        args: &[&str],
        log: &Path,
        marker: &str,
    ) -> anyhow::Result<Server> {
        Server::start_with_env(name, bin, args, &[], log, marker).await
    }

    /// [`Server::start`] with extra environment variables (e.g. allocator options).
    pub async fn start_with_env(
        name: &'static str,
        bin: &Path,
        args: &[&str],
        env: &[(String, String)],
        log: &Path,
        marker: &str,
    ) -> anyhow::Result<Server> {
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(bin)
            .args(args)
            .env("KIMI_PROXY_LOG", "warn")
            .env("MOCK_KEY", "bench-key")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().context("the child exited at once")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        // From here on `server` owns the child: any early return kills it.
        let mut server = Server {
            name,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid,
            log: log.to_path_buf(),
            child,
        };
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if line.contains(marker) {
                    return Ok(parse_listen_line(&line));
                }
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        server.addr = match addr {
            Ok(Ok(Some(addr))) => addr,
            Ok(Ok(None)) => bail!(
                "{name} exited before listening; its log {} says:\n{}",
                log.display(),
                log_tail(log)
            ),
            Ok(Err(err)) => bail!("reading {name}'s stdout: {err}"),
            Err(_) => bail!(
                "{name} did not print its listening line within {START_TIMEOUT:?}; log:\n{}",
                log_tail(log)
            ),
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(server)
    }

    /// Fails if the server has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log {} says:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// Kills the server and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
    }
}

/// `... http://127.0.0.1:PORT/v1` or `... http://127.0.0.1:PORT (...)` → the socket address.
pub fn parse_listen_line(line: &str) -> Option<SocketAddr> {
    let rest = line.split_once("http://")?.1;
    let end = rest
        .find(|c: char| c == '/' || c.is_whitespace())
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(20);
    lines.get(from..).unwrap_or_default().join("\n")
}

/// The command line of a kimi-proxy under test: an ephemeral loopback port, its configuration file and its data
/// directory.
pub fn proxy_args<'a>(config: &'a str, data_dir: &'a str) -> [&'a str; 7] {
    [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        config,
        "--data-dir",
        data_dir,
    ]
}

/// Writes `config` to `<scratch>/<file>.toml` and starts a kimi-proxy under test on it, with the data directory
/// `<scratch>/<file>-data`, `extra` arguments after [`proxy_args`] (e.g. `--db URL`) and its log `<file>.log` in
/// `log_dir`.
pub async fn start_proxy(
    name: &'static str,
    bin: &Path,
    (scratch, log_dir, file): (&Path, &Path, &str),
    config: &str,
    extra: &[&str],
) -> anyhow::Result<Server> {
    let config_path = scratch.join(format!("{file}.toml"));
    std::fs::write(&config_path, config)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let config_arg = config_path.to_string_lossy().into_owned();
    let data_arg = scratch
        .join(format!("{file}-data"))
        .to_string_lossy()
        .into_owned();
    let mut args = proxy_args(&config_arg, &data_arg).to_vec();
    args.extend_from_slice(extra);
    let server = Server::start(
        name,
        bin,
        &args,
        &log_dir.join(format!("{file}.log")),
        "kimi-proxy listening on",
    )
    .await?;
    eprintln!("kimi-bench: {name} on {} (pid {})", server.addr, server.pid);
    Ok(server)
}

/// The proxy's configuration: the mock as a chat provider serving `mock/model` as `mock-model`, and as an
/// Anthropic-native provider (`type = "anthropic"`, its Anthropic mode) serving `mock-anthropic/claude-mock`. With
/// `accounting_and_store` false, `[server] token_accounting = false` and `[store] enabled = false` are added
/// (each table once).
pub fn proxy_config(mock: SocketAddr, accounting_and_store: bool) -> String {
    let off = if accounting_and_store {
        ""
    } else {
        "\n[server]\ntoken_accounting = false\n\n[store]\nenabled = false\n"
    };
    format!(
        "builtin_catalog = false\n\
         {off}\
         \n\
         [providers.mock]\n\
         base_url = \"http://{mock}/v1\"\n\
         api_key = \"${{MOCK_KEY}}\"\n\
         \n\
         [models.\"mock/model\"]\n\
         provider = \"mock\"\n\
         model = \"mock-model\"\n\
         max_context_size = 262144\n\
         \n\
         [providers.mock-anthropic]\n\
         type = \"anthropic\"\n\
         base_url = \"http://{mock}\"\n\
         api_key = \"${{MOCK_KEY}}\"\n\
         \n\
         [models.\"mock-anthropic/claude-mock\"]\n\
         provider = \"mock-anthropic\"\n\
         model = \"claude-mock\"\n\
         max_context_size = 262144\n"
    )
}

/// The default configuration with the mock provider's `requests_per_minute` budget shared on Redis
/// (`[cluster]`, keys under `prefix`): a budget far above any rate the machine reaches, so nothing waits, and a
/// local allowance of 100 so each instance still renews its lease from Redis every 50 or so requests.
pub fn shared_budget_config(mock: SocketAddr, redis: &str, prefix: &str) -> String {
    let key = "api_key = \"${MOCK_KEY}\"\n";
    let base = proxy_config(mock, true).replacen(
        key,
        &format!("{key}requests_per_minute = 1000000000\n"),
        1,
    );
    format!(
        "{base}\n[cluster]\nredis = \"{redis}\"\nkey_prefix = \"{prefix}\"\nlocal_allowance = 100\n"
    )
}

/// The configuration of the caching proxy (cache scenario): the default one with the response cache on for
/// the model.
pub fn cache_proxy_config(mock: SocketAddr) -> String {
    format!("{}cache = true\n", proxy_config(mock, true))
}

/// Resident set size of `pid` in bytes (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_kb(&status, "VmRSS:").map(|kb| kb * 1024)
}

/// Peak resident set size of `pid` in bytes (`VmHWM`).
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_kb(&status, "VmHWM:").map(|kb| kb * 1024)
}

/// `root` and all its live descendants (from the parent pids in /proc/*/stat), `root` first.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| parent_pid(&stat))
            {
                parents.push((pid, ppid));
            }
        }
    }
    descendants_of(root, &parents)
}

/// `root` followed by every pid whose chain of parents in `parents` (pid, ppid) reaches it.
fn descendants_of(root: u32, parents: &[(u32, u32)]) -> Vec<u32> {
    let mut tree = vec![root];
    let mut next = 0;
    // Bounded: each pid is added at most once, and the list only grows from `parents`.
    while let Some(&pid) = tree.get(next) {
        for &(child, ppid) in parents {
            if ppid == pid && !tree.contains(&child) {
                tree.push(child);
            }
        }
        next += 1;
    }
    tree
}

/// The parent pid from the text of /proc/PID/stat (`pid (comm) state ppid ...`; comm may hold spaces).
fn parent_pid(stat: &str) -> Option<u32> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Summed resident set size of `pids` in bytes (`None` if none could be read).
pub fn rss_sum(pids: &[u32]) -> Option<u64> {
    let sizes: Vec<u64> = pids.iter().filter_map(|&pid| rss_bytes(pid)).collect();
    (!sizes.is_empty()).then(|| sizes.iter().sum())
}

/// Summed peak resident set size (`VmHWM`) of `pids` in bytes: an upper bound of the tree's peak.
pub fn peak_rss_sum(pids: &[u32]) -> Option<u64> {
    let sizes: Vec<u64> = pids.iter().filter_map(|&pid| peak_rss_bytes(pid)).collect();
    (!sizes.is_empty()).then(|| sizes.iter().sum())
}

fn status_field_kb(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
}

/// The soft limit on open files (from /proc/self/limits).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Makes sure `needed` files can be open at once (raising the soft limit up to the hard one); the servers
/// started afterwards inherit the limit.
pub fn ensure_open_files(needed: u64) -> anyhow::Result<u64> {
    let current = open_files_limit().unwrap_or(0);
    if current >= needed {
        return Ok(current);
    }
    let raised = rlimit::increase_nofile_limit(needed).unwrap_or(current);
    let now = open_files_limit().unwrap_or(raised);
    if now < needed {
        bail!(
            "the open-files limit is {now}, but this run needs {needed} (the proxy holds two sockets per \
             stream); raise it with `ulimit -n {needed}` (or ask for a higher hard limit) or pass \
             `--streams` with smaller counts"
        );
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_listening_lines() {
        assert_eq!(
            parse_listen_line("mock-upstream listening on http://127.0.0.1:41234/v1"),
            Some(SocketAddr::from(([127, 0, 0, 1], 41234)))
        );
        assert_eq!(
            parse_listen_line(
                "kimi-proxy listening on http://127.0.0.1:8000 (OpenAI base URL: http://127.0.0.1:8000/v1)"
            ),
            Some(SocketAddr::from(([127, 0, 0, 1], 8000)))
        );
        assert_eq!(parse_listen_line("starting"), None);
    }

    #[test]
    fn walks_process_trees() {
        let parents = [(10, 1), (11, 10), (12, 11), (13, 1), (14, 10)];
        assert_eq!(descendants_of(10, &parents), vec![10, 11, 14, 12]);
        assert_eq!(descendants_of(13, &parents), vec![13]);
        assert_eq!(parent_pid("42 (node (worker) x) S 7 42 42 0 -1"), Some(7));
        let me = std::process::id();
        assert_eq!(process_tree(me).first(), Some(&me));
        assert!(rss_sum(&[me]).is_some_and(|b| b > 0));
    }

    #[test]
    fn off_config_has_each_table_once() {
        let mock = SocketAddr::from(([127, 0, 0, 1], 9));
        let on = proxy_config(mock, true);
        assert!(!on.contains("[server]") && !on.contains("[store]"));
        let off = proxy_config(mock, false);
        assert_eq!(off.matches("[server]").count(), 1);
        assert_eq!(off.matches("[store]").count(), 1);
        assert!(off.contains("token_accounting = false"));
        assert!(off.contains("enabled = false"));
        assert!(off.starts_with("builtin_catalog = false\n"));
        let shared = shared_budget_config(mock, "redis://127.0.0.1:6379", "kimi-bench-1");
        let budget = shared.find("requests_per_minute").unwrap_or(0);
        assert!(shared.find("[providers.mock]").is_some_and(|p| p < budget));
        assert!(
            shared
                .find("[models.\"mock/model\"]")
                .is_some_and(|m| budget < m)
        );
        assert_eq!(shared.matches("requests_per_minute").count(), 1);
        assert!(shared.ends_with(
            "\n[cluster]\nredis = \"redis://127.0.0.1:6379\"\nkey_prefix = \"kimi-bench-1\"\nlocal_allowance = 100\n"
        ));
        let cached = cache_proxy_config(mock);
        assert!(cached.ends_with("max_context_size = 262144\ncache = true\n"));
    }

    #[test]
    fn reads_status_fields() {
        let status = "Name:\tkimi-proxy\nVmHWM:\t   20480 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(status_field_kb(status, "VmRSS:"), Some(12345));
        assert_eq!(status_field_kb(status, "VmHWM:"), Some(20480));
        assert_eq!(status_field_kb(status, "VmSwap:"), None);
    }
}
