//! Where each agent keeps its records, and finding the record files under a directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::Agent;

/// The environment, injectable for tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<OsString>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name).filter(|v| !v.is_empty())
    }
}

/// The directories (or files) `agent` writes its records to, per its source; those that exist.
pub fn default_roots(agent: Agent, env: &dyn Env) -> Vec<PathBuf> {
    let home = env.var("HOME").map(PathBuf::from);
    let in_home = |rel: &str| home.as_ref().map(|h| h.join(rel));
    let mut roots: Vec<PathBuf> = Vec::new();
    match agent {
        // ccusage `adapter/claude/paths.rs`: `$CLAUDE_CONFIG_DIR` (comma-separated), else `$XDG_CONFIG_HOME/claude`
        // (`~/.config/claude`) and `~/.claude`; records under `projects/`.
        Agent::ClaudeCode => {
            if let Some(dirs) = env.var("CLAUDE_CONFIG_DIR") {
                for dir in dirs.to_string_lossy().split(',').map(str::trim) {
                    if !dir.is_empty() {
                        roots.push(claude_projects(Path::new(dir)));
                    }
                }
            } else {
                let xdg = env
                    .var("XDG_CONFIG_HOME")
                    .map(PathBuf::from)
                    .or_else(|| in_home(".config"));
                roots.extend(xdg.map(|x| x.join("claude/projects")));
                roots.extend(in_home(".claude/projects"));
            }
        }
        // codex-rs: `$CODEX_HOME` (default `~/.codex`), `sessions/` and `archived_sessions/`.
        Agent::Codex => {
            let base = env
                .var("CODEX_HOME")
                .map(PathBuf::from)
                .or_else(|| in_home(".codex"));
            if let Some(base) = base {
                roots.push(base.join("sessions"));
                roots.push(base.join("archived_sessions"));
            }
        }
        // Cline CLI: `$CLINE_DATA_DIR`, else `$CLINE_DIR/data`, else `~/.cline/data` (legacy-state-reader.ts);
        // the VS Code extension (publisher.name `saoudrizwan.claude-dev`) keeps `state/` in its global storage.
        Agent::Cline => {
            let data = env
                .var("CLINE_DATA_DIR")
                .map(PathBuf::from)
                .or_else(|| env.var("CLINE_DIR").map(|d| PathBuf::from(d).join("data")))
                .or_else(|| in_home(".cline/data"));
            roots.extend(data.map(|d| d.join("state")));
            for editor in ["Code", "Code - Insiders", "VSCodium", "Cursor", "Windsurf"] {
                for base in [".config", "Library/Application Support"] {
                    roots.extend(in_home(&format!(
                        "{base}/{editor}/User/globalStorage/saoudrizwan.claude-dev/state"
                    )));
                }
            }
        }
        // Continue: `$CONTINUE_GLOBAL_DIR`, else `~/.continue`; `dev_data/`.
        Agent::Continue => {
            let base = env
                .var("CONTINUE_GLOBAL_DIR")
                .map(PathBuf::from)
                .or_else(|| in_home(".continue"));
            roots.extend(base.map(|b| b.join("dev_data")));
        }
        // Kimi CLI: `$KIMI_SHARE_DIR`, else `~/.kimi`; `sessions/`.
        Agent::KimiCli => {
            let base = env
                .var("KIMI_SHARE_DIR")
                .map(PathBuf::from)
                .or_else(|| in_home(".kimi"));
            roots.extend(base.map(|b| b.join("sessions")));
        }
    }
    roots.retain(|r| r.exists());
    roots.dedup();
    roots
}

/// A Claude config directory's `projects/`, or the path itself when it already is one (or a file).
fn claude_projects(dir: &Path) -> PathBuf {
    let projects = dir.join("projects");
    if projects.is_dir() {
        projects
    } else {
        dir.to_path_buf()
    }
}

/// Adds the record files of `agent` at or under `root` to `files`. A Claude config directory given as the root
/// is read from its `projects/`.
pub fn files_under(agent: Agent, root: &Path, files: &mut Vec<PathBuf>) {
    let root = if agent == Agent::ClaudeCode {
        claude_projects(root)
    } else {
        root.to_path_buf()
    };
    if root.is_file() {
        files.push(root);
        return;
    }
    walk(agent, &root, files, 0);
}

fn walk(agent: Agent, dir: &Path, files: &mut Vec<PathBuf>, depth: usize) {
    if depth > 16 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            walk(agent, &path, files, depth + 1);
        } else if kind.is_file() && agent.is_record_file(&path) {
            files.push(path);
        }
    }
}
