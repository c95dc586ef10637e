//! The fuzz targets' checks (`fuzz/src/checks.rs`) on stable: every seed of `fuzz/corpus/<target>/`, and a
//! bounded number of random inputs and seed mutations per target (proptest). `cargo +nightly fuzz run` explores
//! much further; this keeps the invariants checked on every `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::Path;

use proptest::prelude::*;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds.sort();
    seeds
}

/// A seed with a few bytes overwritten, inserted or removed: close enough to valid input to get past the
/// parsers' first checks.
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds(target);
    let count = seeds.len();
    (
        0..count,
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 0..8),
    )
        .prop_map(move |(which, edits)| {
            let mut bytes = seeds[which].clone();
            for (at, kind, byte) in edits {
                if bytes.is_empty() {
                    bytes.push(byte);
                    continue;
                }
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => {
                        bytes.remove(i);
                    }
                }
            }
            bytes
        })
}

/// Mutated seeds, arbitrary bytes, and text drawn from the characters that matter to the parsers.
fn inputs(target: &'static str, alphabet: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => mutated(target),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        2 => prop::string::string_regex(alphabet).unwrap().prop_map(String::into_bytes),
    ]
}

fn run_seeds(target: &str, check: fn(&[u8])) {
    for seed in seeds(target) {
        check(&seed);
    }
}

#[test]
fn sse_seeds() {
    run_seeds("sse", checks::sse);
}

#[test]
fn request_seeds() {
    run_seeds("request", checks::request);
}

#[test]
fn toolcalls_seeds() {
    run_seeds("toolcalls", checks::toolcalls);
}

#[test]
fn config_seeds() {
    run_seeds("config", checks::config);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sse_random(input in inputs("sse", r"[ -~data:\n\r{}\[\]é🎉 ]{0,200}")) {
        checks::sse(&input);
    }

    #[test]
    fn request_random(input in inputs("request", r#"[{}\[\]":, a-z0-9\\]{0,120}"#)) {
        checks::request(&input);
    }

    #[test]
    fn toolcalls_random(input in inputs("toolcalls", r#"[{}\[\]"':,; a-zA-Z0-9.+\-\\]{0,80}"#)) {
        checks::toolcalls(&input);
    }

    #[test]
    fn config_random(input in inputs("config", r#"[\[\]"=.\n a-z_0-9${}]{0,120}"#)) {
        checks::config(&input);
    }
}
