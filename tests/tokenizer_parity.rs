//! Parity of the embedded tokenizers with OpenAI's Python `tiktoken`.
//!
//! `tests/data/tokenizer/corpus.jsonl` is a generated multilingual/code/emoji/whitespace/adversarial corpus
//! (`scripts/tokenizer-parity/make_corpus.py`); the `expected-*.jsonl` files hold the token ids that the real
//! `tiktoken` 0.14.0 produced for each document with `encode_ordinary`
//! (`scripts/tokenizer-parity/expected_ids.py`). Every document must encode to exactly those ids.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use kimi_proxy::tokens::Tokenizer;
use serde_json::Value;

/// Every category `make_corpus.py` generates; each must appear as an id prefix (`<category>-<n>`).
const CATEGORIES: &[&str] = &[
    "prose_en",
    "prose_fr",
    "prose_de",
    "prose_es",
    "prose_pt",
    "prose_ru",
    "prose_ar",
    "prose_hi",
    "prose_tr",
    "prose_vi",
    "prose_el",
    "prose_he",
    "cjk_zh",
    "cjk_ja",
    "cjk_ko",
    "code_rust",
    "code_python",
    "code_js",
    "code_sql",
    "code_shell",
    "json",
    "emoji",
    "whitespace",
    "digits",
    "line_endings",
    "contractions",
    "unicode_random",
    "markdown",
    "chat",
    "adversarial",
];

const MIN_CORPUS_BYTES: usize = 1_000_000;

struct Doc {
    id: String,
    text: String,
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer")
}

/// One JSON value per line. Lines are split on `\n` only (JSON escapes every control character, and the texts
/// contain U+2028/U+0085, which must not be treated as line breaks).
fn read_jsonl(name: &str) -> Vec<Value> {
    let path = data_dir().join(name);
    let data = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    data.split('\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}, line {}: {e}", n + 1))
        })
        .collect()
}

fn corpus() -> Vec<Doc> {
    read_jsonl("corpus.jsonl")
        .into_iter()
        .map(|v| Doc {
            id: v["id"].as_str().expect("corpus: id").to_owned(),
            text: v["text"].as_str().expect("corpus: text").to_owned(),
        })
        .collect()
}

fn expected(encoding: &str) -> Vec<(String, Vec<u32>)> {
    read_jsonl(&format!("expected-{encoding}.jsonl"))
        .into_iter()
        .map(|v| {
            let id = v["id"].as_str().expect("expected: id").to_owned();
            let ids = v["ids"]
                .as_array()
                .expect("expected: ids")
                .iter()
                .map(|x| {
                    u32::try_from(x.as_u64().expect("expected: id is an integer"))
                        .expect("id fits u32")
                })
                .collect();
            (id, ids)
        })
        .collect()
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Describes the first difference between `want` and `got` for the document `doc`. The text offset is estimated
/// proportionally from the token index (without a decoder the exact byte offset is unknown), so the snippet
/// is wide.
fn describe(doc: &Doc, want: &[u32], got: &[u32]) -> String {
    let first = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| want.len().min(got.len()));
    let approx = if want.is_empty() {
        0
    } else {
        first * doc.text.len() / want.len()
    };
    let start = floor_boundary(&doc.text, approx.saturating_sub(80));
    let end = floor_boundary(&doc.text, approx + 80);
    let window =
        |v: &[u32]| v[first.saturating_sub(3).min(v.len())..(first + 5).min(v.len())].to_vec();
    format!(
        "{}: first difference at token {first} (expected {} tokens, got {}); expected[..] {:?} vs got[..] {:?} \
         (from token {}); text around byte ~{approx}: {:?}",
        doc.id,
        want.len(),
        got.len(),
        window(want),
        window(got),
        first.saturating_sub(3),
        &doc.text[start..end],
    )
}

fn check(encoding: &str, tokenizer: &Tokenizer) {
    let docs = corpus();
    let want = expected(encoding);
    assert_eq!(
        docs.len(),
        want.len(),
        "expected-{encoding}.jsonl has {} documents, corpus has {}: regenerate with scripts/tokenizer-parity/expected_ids.py",
        want.len(),
        docs.len()
    );
    let mut failures = Vec::new();
    let mut tokens = 0usize;
    for (doc, (id, ids)) in docs.iter().zip(&want) {
        assert_eq!(
            &doc.id, id,
            "expected-{encoding}.jsonl is not in corpus order"
        );
        let got = tokenizer.encode(&doc.text);
        tokens += ids.len();
        if &got != ids {
            failures.push(describe(doc, ids, &got));
        }
    }
    assert!(
        failures.is_empty(),
        "{encoding}: {} of {} documents differ from tiktoken:\n{}",
        failures.len(),
        docs.len(),
        failures.join("\n")
    );
    assert!(tokens > 0, "{encoding}: no tokens checked");
}

#[test]
fn corpus_is_large_and_covers_every_category() {
    let docs = corpus();
    let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
    assert!(
        bytes >= MIN_CORPUS_BYTES,
        "corpus has {bytes} bytes of text, want at least {MIN_CORPUS_BYTES}"
    );
    for category in CATEGORIES {
        let prefix = format!("{category}-");
        assert!(
            docs.iter().any(|d| d.id.starts_with(&prefix)
                && d.id[prefix.len()..].bytes().all(|b| b.is_ascii_digit())),
            "corpus has no document of category {category}"
        );
    }
    let mut ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), docs.len(), "corpus ids are not unique");
}

#[test]
fn cl100k_base_matches_tiktoken() {
    check("cl100k_base", &Tokenizer::cl100k_base());
}

#[test]
fn o200k_base_matches_tiktoken() {
    check("o200k_base", &Tokenizer::o200k_base());
}
