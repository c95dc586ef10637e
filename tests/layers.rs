//! The layers of `src/`, checked. Top-level modules are ordered from the leaves up; a module uses only modules
//! below it, so no import cycle can form. The graph is read from the sources (`crate::<module>` paths outside
//! comments and test code). An edge that goes up fails the test: move the shared piece down instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first: the data flows up this list (tokens and config at the bottom, the server at the top).
const LAYERS: &[&str] = &[
    "util",
    "http_error",
    "tokens",
    "net",
    "config",
    "limits",
    "monitor",
    "context",
    "accounting",
    "store",
    "telemetry",
    "alerts",
    "auth",
    "proxy",
    "ledgers",
    "live",
    "admin",
    "dashboard",
    "routes",
    "cli",
    "server",
];

fn source_without_comments_and_tests(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .filter(|line| {
            let trimmed = line.trim_start();
            !(trimmed.starts_with("//") || trimmed.starts_with("///") || trimmed.starts_with("//!"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            // Files that only hold a module's tests.
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// Top-level module → the top-level modules it uses.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path.clone());
        } else {
            continue;
        }
        modules.insert(name, files);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, files) in &modules {
        let mut uses = BTreeSet::new();
        for file in files {
            let text = source_without_comments_and_tests(&std::fs::read_to_string(file).unwrap());
            for (at, _) in text.match_indices("crate::") {
                let rest = &text[at + "crate::".len()..];
                let used: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if used != *module && names.contains(&used) {
                    uses.insert(used);
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

#[test]
fn every_module_is_in_a_layer() {
    let graph = module_graph();
    let unplaced: Vec<_> = graph
        .keys()
        .filter(|m| !LAYERS.contains(&m.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "add these modules to LAYERS: {unplaced:?}"
    );
}

#[test]
fn modules_use_only_modules_below_them() {
    let graph = module_graph();
    let layer = |m: &str| LAYERS.iter().position(|l| *l == m).unwrap_or(usize::MAX);
    let mut up = BTreeSet::new();
    for (from, uses) in &graph {
        for to in uses {
            if layer(to) >= layer(from) {
                up.insert((from.clone(), to.clone()));
            }
        }
    }
    assert!(
        up.is_empty(),
        "these modules use a module above them (an import cycle in the making): {up:?}"
    );
}

#[test]
fn the_leaves_stay_leaves() {
    let graph = module_graph();
    assert_eq!(
        graph["util"],
        BTreeSet::new(),
        "util must use no other module"
    );
    let tokens: Vec<_> = graph["tokens"].iter().collect();
    assert!(
        graph["tokens"].iter().all(|m| m == "util"),
        "tokens uses {tokens:?}"
    );
}

/// SQL lives in `src/store`, behind named functions: no other module writes a statement.
#[test]
fn sql_only_inside_the_store() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let statements = [
        "\"SELECT ",
        "\"INSERT ",
        "\"UPDATE ",
        "\"DELETE FROM",
        "\"CREATE TABLE",
        "\"PRAGMA ",
    ];
    let outside: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(src.join("store")))
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap().to_uppercase();
            statements.iter().any(|s| text.contains(&s.to_uppercase()))
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(outside.is_empty(), "SQL outside src/store: {outside:?}");
}
