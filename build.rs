//! Builds the dashboard (`dashboard/`, TypeScript bundled by esbuild) into `OUT_DIR/dashboard` and writes
//! `OUT_DIR/dashboard_assets.rs`, which `src/dashboard` includes: the page ships inside the binary.
//!
//! Needs Node.js and npm. `npm ci` runs when `dashboard/node_modules` is missing or older than
//! `package-lock.json`. `KIMI_PROXY_NO_DASHBOARD=1` builds without them and embeds a page that says so.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

const SKIP_VAR: &str = "KIMI_PROXY_NO_DASHBOARD";

fn main() {
    if let Err(message) = run() {
        eprintln!("\nerror: {message}\n");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let root = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env("OUT_DIR")?);
    let ui = root.join("dashboard");
    for watched in [
        "src",
        "public",
        "index.html",
        "build.mjs",
        "tsconfig.json",
        "package.json",
        "package-lock.json",
    ] {
        println!("cargo:rerun-if-changed=dashboard/{watched}");
    }
    println!("cargo:rerun-if-env-changed={SKIP_VAR}");

    let dist = out.join("dashboard");
    let skip = std::env::var(SKIP_VAR).is_ok_and(|v| !v.is_empty() && v != "0");
    if skip {
        write_placeholder(&dist)?;
    } else {
        check_tool("node")?;
        check_tool("npm")?;
        if needs_install(&ui) {
            run_tool(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&ui),
                "npm ci (installing the dashboard's packages from package-lock.json)",
            )?;
        }
        run_tool(
            Command::new("node")
                .arg("build.mjs")
                .arg(&dist)
                .current_dir(&ui),
            "node build.mjs (type check and bundle of the dashboard)",
        )?;
    }
    write_manifest(&dist, &out.join("dashboard_assets.rs"), !skip)
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set (build.rs runs under cargo)"))
}

fn check_tool(tool: &str) -> Result<(), String> {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        Ok(())
    } else {
        Err(format!(
            "building kimi-proxy needs `{tool}`, which was not found: the dashboard is a TypeScript front end \
             built with Node.js and npm.\n       Install Node.js 18 or newer with npm (Debian/Ubuntu: `apt-get \
             install nodejs npm`; others: https://nodejs.org), then build again.\n       To build without the \
             dashboard instead, set {SKIP_VAR}=1 (the page then says it is missing)."
        ))
    }
}

/// `npm ci` when `node_modules` is missing or the lockfile changed after the last install.
fn needs_install(ui: &Path) -> bool {
    let installed = modified(&ui.join("node_modules").join(".package-lock.json"));
    let lock = modified(&ui.join("package-lock.json"));
    match (installed, lock) {
        (Some(installed), Some(lock)) => lock > installed,
        _ => true,
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn run_tool(command: &mut Command, what: &str) -> Result<(), String> {
    // A build script's stdout is read by cargo: the tools' output goes to stderr.
    command.stdout(Stdio::from(std::io::stderr()));
    let status = command
        .status()
        .map_err(|e| format!("{what} could not start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status}); its output is above"))
    }
}

fn write_placeholder(dist: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dist.join("assets")).map_err(|e| format!("{}: {e}", dist.display()))?;
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>kimi-proxy</title></head>\n\
         <body><h1>kimi-proxy</h1><p>This binary was built without its dashboard ({SKIP_VAR} was set). \
         Install Node.js and npm and build again to get it. The proxy and the JSON API work as usual.</p></body></html>\n"
    );
    std::fs::write(dist.join("index.html"), page).map_err(|e| format!("{}: {e}", dist.display()))
}

/// The Rust side of the embedding: `INDEX` and every file of `assets/` by name.
fn write_manifest(dist: &Path, target: &Path, built: bool) -> Result<(), String> {
    let index = dist.join("index.html");
    let index_bytes = std::fs::read(&index).map_err(|e| format!("{}: {e}", index.display()))?;
    let mut names: Vec<String> = std::fs::read_dir(dist.join("assets"))
        .map_err(|e| format!("{}: {e}", dist.display()))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut code = String::new();
    let _ = writeln!(
        code,
        "/// Whether the front end was built (false with {SKIP_VAR})."
    );
    let _ = writeln!(code, "pub const BUILT: bool = {built};");
    let _ = writeln!(
        code,
        "/// The index page's validator, a hash of its bytes (it names the hashed assets)."
    );
    let _ = writeln!(
        code,
        "pub const INDEX_ETAG: &str = \"\\\"{:016x}\\\"\";",
        fnv1a(&index_bytes)
    );
    let _ = writeln!(
        code,
        "pub const INDEX: &[u8] = include_bytes!({:?});",
        index.display().to_string()
    );
    let _ = writeln!(code, "/// Content-hashed files under `/assets/`.");
    let _ = writeln!(code, "pub const ASSETS: &[(&str, &[u8])] = &[");
    for name in &names {
        let path = dist.join("assets").join(name);
        let _ = writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        );
    }
    let _ = writeln!(code, "];");
    std::fs::write(target, code).map_err(|e| format!("{}: {e}", target.display()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
