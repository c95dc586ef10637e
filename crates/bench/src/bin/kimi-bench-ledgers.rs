//! `kimi-bench-ledgers`: `kimi-proxy import claude-code` on a generated Claude Code ledger, MB/s and peak RSS,
//! with ccusage on the same files in the same run for reference.
//!
//! Generates `--mb` megabytes of Claude Code transcripts (entries shaped like Claude Code's, with realistic
//! message bodies so about 500 bytes of a line are usage and the rest content; sessions of `--entries-per-file`
//! entries; one subagent sidechain per ten sessions), then runs the release `kimi-proxy import claude-code --path
//! DIR --db FILE` into a fresh database, timing it and sampling its peak RSS (VmHWM), and, when `node` and an
//! installed ccusage are given (`--ccusage PATH/dist/index.js`), `ccusage daily --json --offline` on the same
//! directory. Prints a markdown table.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "kimi-bench-ledgers", about)]
struct Args {
    /// Size of the generated ledger in MB (the issue's target is 1024).
    #[arg(long, default_value_t = 100)]
    mb: u64,
    /// Entries per session file.
    #[arg(long, default_value_t = 2000)]
    entries_per_file: u64,
    /// Where the ledger and database go (kept, so a second run reuses the ledger).
    #[arg(long, default_value = "bench-results/ledgers")]
    dir: PathBuf,
    /// The kimi-proxy binary (default: target/release/kimi-proxy, built if missing).
    #[arg(long)]
    proxy: Option<PathBuf>,
    /// ccusage's `dist/index.js`, run with node on the same files for reference.
    #[arg(long)]
    ccusage: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ledger = args.dir.join(format!("claude-{}mb", args.mb));
    let bytes = if ledger.join("projects").exists() {
        dir_size(&ledger)
    } else {
        generate(&ledger, args.mb << 20, args.entries_per_file)?
    };
    let entries = count_lines(&ledger);
    let proxy = match args.proxy {
        Some(p) => p,
        None => {
            let p = PathBuf::from("target/release/kimi-proxy");
            if !p.exists() {
                let status = Command::new("cargo")
                    .args(["build", "--release", "--bin", "kimi-proxy"])
                    .status()?;
                if !status.success() {
                    bail!("cargo build --release failed");
                }
            }
            p
        }
    };
    let db = args.dir.join("import.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let mut import = Command::new(&proxy);
    import
        .args(["import", "claude-code", "--json", "--path"])
        .arg(&ledger)
        .arg("--db")
        .arg(&db)
        .env("KIMI_PROXY_LOG", "warn");
    let (ours, our_peak, out) = measure(import)?;
    let summary: serde_json::Value = serde_json::from_slice(&out).context("import output")?;
    let imported = summary["sources"][0]["imported"].as_u64().unwrap_or(0);

    let mut rows = vec![(
        "kimi-proxy import claude-code".to_string(),
        ours,
        our_peak,
        format!("{imported} imported"),
    )];
    if let Some(script) = &args.ccusage {
        let mut cc = Command::new("node");
        cc.arg(script)
            .args(["daily", "--json", "--offline"])
            .env("CLAUDE_CONFIG_DIR", &ledger);
        let (theirs, their_peak, out) = measure(cc)?;
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        rows.push((
            "ccusage daily --json --offline".to_string(),
            theirs,
            their_peak,
            format!("output tokens {}", v["totals"]["outputTokens"]),
        ));
    }

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Ledger: {:.1} MB, {entries} lines, in {}\n",
        bytes as f64 / 1e6,
        ledger.display()
    )?;
    writeln!(out, "| run | seconds | MB/s | peak RSS (MB) | result |")?;
    writeln!(out, "| --- | ---: | ---: | ---: | --- |")?;
    for (name, time, peak, note) in rows {
        let secs = time.as_secs_f64();
        writeln!(
            out,
            "| {name} | {secs:.2} | {:.1} | {} | {note} |",
            bytes as f64 / 1e6 / secs,
            peak.map_or("?".to_string(), |p| format!("{:.1}", p as f64 / 1e6)),
        )?;
    }
    Ok(())
}

/// Runs `command` to its end; its wall time, peak RSS (VmHWM, sampled until exit) and standard output.
fn measure(mut command: Command) -> anyhow::Result<(Duration, Option<u64>, Vec<u8>)> {
    let start = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn")?;
    let pid = child.id();
    let mut stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let mut peak = None;
    loop {
        if let Some(hwm) = vm_hwm(pid) {
            peak = Some(peak.map_or(hwm, |p: u64| p.max(hwm)));
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("{command:?} failed: {status}");
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let out = reader.join().unwrap_or_default();
    Ok((elapsed, peak, out))
}

fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += dir_size(&p);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}

fn count_lines(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += count_lines(&p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                total += memchr_count(&bytes);
            }
        }
    }
    total
}

fn memchr_count(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Writes about `target` bytes of transcripts: per session a user line and assistant lines with usage.
fn generate(root: &Path, target: u64, per_file: u64) -> anyhow::Result<u64> {
    let projects = root.join("projects");
    let filler = "lorem ipsum dolor sit amet, consectetur adipiscing elit ".repeat(4);
    let mut written = 0u64;
    let mut n = 0u64;
    let mut session = 0u64;
    let start_ms: i64 = 1_735_689_600_000; // 2025-01-01T00:00:00Z
    while written < target {
        let project = projects.join(format!("-home-u-project-{}", session % 20));
        std::fs::create_dir_all(&project)?;
        let sid = format!("{session:08x}-0000-4000-8000-{session:012x}");
        let sidechain = session % 10 == 9;
        let path = if sidechain {
            let d = project.join(&sid).join("subagents");
            std::fs::create_dir_all(&d)?;
            d.join("agent-0.jsonl")
        } else {
            project.join(format!("{sid}.jsonl"))
        };
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for _ in 0..per_file {
            let ts = jiff_like(start_ms + (n as i64) * 7_000);
            let user = format!(
                r#"{{"parentUuid":null,"isSidechain":{sidechain},"userType":"external","cwd":"/home/u/project-{p}","sessionId":"{sid}","version":"1.0.98","type":"user","message":{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"toolu_{n}","content":"{filler}"}}]}},"uuid":"u{n}","timestamp":"{ts}"}}"#,
                p = session % 20
            );
            let assistant = format!(
                r#"{{"parentUuid":"u{n}","isSidechain":{sidechain},"userType":"external","cwd":"/home/u/project-{p}","sessionId":"{sid}","version":"1.0.98","gitBranch":"main","type":"assistant","message":{{"id":"msg_{n:016x}","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{{"type":"text","text":"{filler}"}}],"stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":{i},"cache_creation_input_tokens":{c},"cache_read_input_tokens":{r},"cache_creation":{{"ephemeral_5m_input_tokens":{c},"ephemeral_1h_input_tokens":0}},"output_tokens":{o},"service_tier":"standard"}}}},"requestId":"req_{n:016x}","uuid":"a{n}","timestamp":"{ts}"}}"#,
                p = session % 20,
                i = 3 + n % 50,
                c = n % 5000,
                r = 10_000 + n % 90_000,
                o = 50 + n % 2000,
            );
            writeln!(file, "{user}")?;
            writeln!(file, "{assistant}")?;
            written += user.len() as u64 + assistant.len() as u64 + 2;
            n += 1;
            if written >= target {
                break;
            }
        }
        file.flush()?;
        session += 1;
    }
    Ok(written)
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (civil-from-days, no time crate needed).
fn jiff_like(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}
