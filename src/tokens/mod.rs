//! Token counting: tiktoken-identical encoders embedded in the binary (bpe-openai), counting of chat requests
//! with a per-message cache, incremental counting of streamed output, and provider usage parsing.
//!
//! Everything counted here is *ordinary* text: a literal `<|endoftext|>` in a user message is text, as the
//! provider sees it, never a special token.

pub mod cache;
pub mod chat;
pub mod stream;
pub mod usage;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;

/// A tokenizer: one of the two embedded OpenAI encodings, or a tiktoken-format vocabulary loaded from disk.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Inner,
    name: Arc<str>,
}

#[derive(Clone)]
enum Inner {
    Builtin(Builtin),
    Loaded(Arc<bpe_openai::Tokenizer>),
}

/// The embedded encodings. Each is decoded on first use (cl100k ~20 ms and ~31 MB, o200k ~50 ms and ~66 MB),
/// so a proxy that only serves cl100k models never pays for o200k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Builtin {
    Cl100k,
    O200k,
}

static CL100K_READY: AtomicBool = AtomicBool::new(false);
static O200K_READY: AtomicBool = AtomicBool::new(false);

impl Builtin {
    fn flag(self) -> &'static AtomicBool {
        match self {
            Builtin::Cl100k => &CL100K_READY,
            Builtin::O200k => &O200K_READY,
        }
    }

    fn get(self) -> &'static bpe_openai::Tokenizer {
        let tokenizer = match self {
            Builtin::Cl100k => bpe_openai::cl100k_base(),
            Builtin::O200k => bpe_openai::o200k_base(),
        };
        let flag = self.flag();
        if !flag.load(Ordering::Relaxed) {
            flag.store(true, Ordering::Release);
        }
        tokenizer
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read vocabulary {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("vocabulary {path}, line {line}: {reason}")]
    Vocabulary {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("vocabulary {path}: ranks must run 0..n without gaps (rank {rank} is missing)")]
    RankGap { path: String, rank: usize },
    #[error("pre-tokenizer pattern: {0}")]
    Pattern(String),
    #[error("vocabulary {0}: could not build a collision-free token table")]
    Build(String),
}

impl Tokenizer {
    /// GPT-3.5/4's encoding. The vocabulary is embedded and decoded on first use, never downloaded.
    pub fn cl100k_base() -> Tokenizer {
        Tokenizer {
            inner: Inner::Builtin(Builtin::Cl100k),
            name: Arc::from("cl100k_base"),
        }
    }

    /// GPT-4o/4.1/5, o-series and gpt-oss's encoding.
    pub fn o200k_base() -> Tokenizer {
        Tokenizer {
            inner: Inner::Builtin(Builtin::O200k),
            name: Arc::from("o200k_base"),
        }
    }

    /// Loads a tiktoken-format vocabulary (`base64-token rank` per line, e.g. Kimi K2's `tiktoken.model`) with its
    /// pre-tokenizer `pattern` as written for tiktoken. This takes a while for large vocabularies: call it
    /// off the request path.
    pub fn from_tiktoken_file(path: &Path, pattern: &str) -> Result<Tokenizer, TokenizerError> {
        let shown = path.display().to_string();
        let data = std::fs::read_to_string(path).map_err(|source| TokenizerError::Read {
            path: shown.clone(),
            source,
        })?;
        let tokens = parse_tiktoken(&data, &shown)?;
        let patterns = lookahead_patterns(pattern)?;
        let bpe = build_bpe(tokens).ok_or_else(|| TokenizerError::Build(shown.clone()))?;
        let refs: Vec<(&str, bool)> = patterns.iter().map(|(p, l)| (p.as_str(), *l)).collect();
        let tokenizer = bpe_openai::Tokenizer::new_lookahead(bpe, &refs, false)
            .map_err(|e| TokenizerError::Pattern(e.to_string()))?;
        Ok(Tokenizer {
            inner: Inner::Loaded(Arc::new(tokenizer)),
            name: Arc::from(format!("file:{shown}")),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn bpe(&self) -> &bpe_openai::Tokenizer {
        match &self.inner {
            Inner::Builtin(b) => b.get(),
            Inner::Loaded(t) => t,
        }
    }

    /// Whether the vocabulary is decoded: using a tokenizer that is not ready blocks the caller while it
    /// decodes, which an async worker must not do.
    pub fn is_ready(&self) -> bool {
        match &self.inner {
            Inner::Builtin(b) => b.flag().load(Ordering::Acquire),
            Inner::Loaded(_) => true,
        }
    }

    /// Decodes the vocabulary now (call it where blocking is fine).
    pub fn warm(&self) {
        let _ = self.bpe();
    }

    /// The number of tokens of `text` as ordinary text.
    pub fn count(&self, text: &str) -> usize {
        self.bpe().count(text)
    }

    /// Token ids, identical to tiktoken's `encode_ordinary`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe().encode(text)
    }

    /// The pre-tokenizer's pieces; BPE never merges across them, which makes incremental counting possible.
    pub fn split<'a>(&'a self, text: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.bpe().split(text)
    }

    /// Tokens of one pre-tokenized piece.
    pub fn count_piece(&self, piece: &str) -> usize {
        self.bpe().bpe.count(piece.as_bytes())
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tokenizer").field(&self.name).finish()
    }
}

/// Reads `base64 rank` lines into tokens ordered by rank.
fn parse_tiktoken(data: &str, path: &str) -> Result<Vec<Vec<u8>>, TokenizerError> {
    let mut ranked: Vec<(usize, Vec<u8>)> = Vec::new();
    for (index, line) in data.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let err = |reason: String| TokenizerError::Vocabulary {
            path: path.to_string(),
            line: index + 1,
            reason,
        };
        let mut fields = line.split_whitespace();
        let (Some(token), Some(rank)) = (fields.next(), fields.next()) else {
            return Err(err("expected `<base64 token> <rank>`".to_string()));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(token)
            .map_err(|e| err(format!("bad base64: {e}")))?;
        let rank: usize = rank
            .parse()
            .map_err(|_| err(format!("bad rank `{rank}`")))?;
        ranked.push((rank, bytes));
    }
    ranked.sort_by_key(|(rank, _)| *rank);
    for (expected, (rank, _)) in ranked.iter().enumerate() {
        if *rank != expected {
            return Err(TokenizerError::RankGap {
                path: path.to_string(),
                rank: expected,
            });
        }
    }
    Ok(ranked.into_iter().map(|(_, bytes)| bytes).collect())
}

/// `bpe` asserts that its token hashes do not collide; try the factor bpe-openai uses for OpenAI's
/// vocabularies, then a few others, catching that assertion instead of letting a user file crash the process.
fn build_bpe(tokens: Vec<Vec<u8>>) -> Option<bpe::byte_pair_encoding::BytePairEncoding> {
    const FACTORS: [u64; 4] = [
        17_846_336_922_010_275_747,
        1,
        0x9e37_79b9_7f4a_7c15,
        0xff51_afd7_ed55_8ccd,
    ];
    for factor in FACTORS {
        let attempt = tokens.clone();
        let built = std::panic::catch_unwind(move || {
            bpe::byte_pair_encoding::BytePairEncoding::from_dictionary(attempt, Some(factor))
        });
        if let Ok(bpe) = built {
            return Some(bpe);
        }
    }
    None
}

/// tiktoken patterns use `\s+(?!\S)`, a look-ahead the `regex` engines lack. bpe-openai emulates it with
/// three patterns tried in order: the alternatives before it plus `\s+$`; `\s+\s` whose last character is
/// dropped; and the alternatives after it. This rewrites a user's pattern the same way.
fn lookahead_patterns(pattern: &str) -> Result<Vec<(String, bool)>, TokenizerError> {
    let alternatives = split_top_level(pattern);
    let lookahead = r"\s+(?!\S)";
    let Some(position) = alternatives.iter().position(|a| a == lookahead) else {
        if pattern.contains("(?!") || pattern.contains("(?=") || pattern.contains("(?<") {
            return Err(TokenizerError::Pattern(
                "only the tiktoken look-ahead `\\s+(?!\\S)` is supported".to_string(),
            ));
        }
        return Ok(vec![(pattern.to_string(), false)]);
    };
    let before = alternatives[..position]
        .iter()
        .map(String::as_str)
        .chain([r"\s+$"]);
    let first = before.collect::<Vec<_>>().join("|");
    let mut patterns = vec![(first, false), (r"\s+\s".to_string(), true)];
    let after = alternatives[position + 1..].join("|");
    if !after.is_empty() {
        if after.contains("(?!") || after.contains("(?=") {
            return Err(TokenizerError::Pattern(
                "only the tiktoken look-ahead `\\s+(?!\\S)` is supported".to_string(),
            ));
        }
        patterns.push((after, false));
    }
    Ok(patterns)
}

/// Splits a regex on `|` outside groups and character classes.
fn split_top_level(pattern: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let (mut depth, mut class) = (0usize, 0usize);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
                continue;
            }
            '[' => class += 1,
            ']' if class > 0 => class -= 1,
            '(' if class == 0 => depth += 1,
            ')' if class == 0 => depth = depth.saturating_sub(1),
            '|' if class == 0 && depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    /// cl100k's pattern as tiktoken writes it.
    const CL100K_TIKTOKEN_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    #[test]
    fn known_counts() {
        let cl = Tokenizer::cl100k_base();
        assert_eq!(cl.encode("hello world"), vec![15339, 1917]);
        assert_eq!(
            cl.count("<|endoftext|>"),
            7,
            "special-token text counts as ordinary text"
        );
        let o = Tokenizer::o200k_base();
        assert_eq!(o.encode("hello world"), vec![24912, 2375]);
    }

    #[test]
    fn pattern_rewrite_matches_bpe_openai() {
        let patterns = lookahead_patterns(CL100K_TIKTOKEN_PATTERN).unwrap();
        assert_eq!(patterns.len(), 3);
        assert!(patterns[0].0.ends_with(r"|\s+$"));
        assert_eq!(patterns[1], (r"\s+\s".to_string(), true));
        assert_eq!(patterns[2], (r"\s+".to_string(), false));
        assert!(lookahead_patterns(r"a(?=b)").is_err());
        assert_eq!(
            split_top_level(r"a|[|]|(b|c)|\|"),
            vec!["a", "[|]", "(b|c)", r"\|"]
        );
    }

    #[test]
    fn tiktoken_file_gives_the_same_ids_as_the_builtin() {
        // Write cl100k in tiktoken format from the oracle crate's copy and load it as a user file would.
        let oracle = &*ORACLE_CL100K;
        let mut lines = String::new();
        let builtin = Tokenizer::cl100k_base();
        let bpe = &builtin.bpe().bpe;
        for id in 0..bpe.num_tokens() as u32 {
            let bytes = bpe.token_bytes(id);
            lines.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
            lines.push_str(&format!(" {id}\n"));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cl100k.tiktoken");
        std::fs::write(&path, lines).unwrap();
        let loaded = Tokenizer::from_tiktoken_file(&path, CL100K_TIKTOKEN_PATTERN).unwrap();
        for text in [
            "Hello, world!  \n\n  x",
            "naïve café 世界 🎉👨‍👩‍👧",
            "   trailing   ",
            "it's 12345678 they'RE",
        ] {
            assert_eq!(
                loaded.encode(text),
                oracle.encode_ordinary(text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn bad_vocabulary_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        std::fs::write(&path, "YQ== 0\nYg== 2\n").unwrap();
        assert!(matches!(
            Tokenizer::from_tiktoken_file(&path, "x"),
            Err(TokenizerError::RankGap { .. })
        ));
        std::fs::write(&path, "!!! 0\n").unwrap();
        assert!(matches!(
            Tokenizer::from_tiktoken_file(&path, "x"),
            Err(TokenizerError::Vocabulary { .. })
        ));
        assert!(Tokenizer::from_tiktoken_file(&dir.path().join("missing"), "x").is_err());
    }

    /// The second implementation the property test compares against; built once (it takes ~1 s).
    static ORACLE_CL100K: std::sync::LazyLock<tiktoken_rs::CoreBPE> =
        std::sync::LazyLock::new(|| tiktoken_rs::cl100k_base().unwrap());
    static ORACLE_O200K: std::sync::LazyLock<tiktoken_rs::CoreBPE> =
        std::sync::LazyLock::new(|| tiktoken_rs::o200k_base().unwrap());

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn identical_to_tiktoken_rs(text in "(\\PC|[ \t\r\n]|'s|'RE|[0-9]{1,9}|\u{200d}|🎉){0,80}") {
            prop_assert_eq!(Tokenizer::cl100k_base().encode(&text), ORACLE_CL100K.encode_ordinary(&text));
            prop_assert_eq!(Tokenizer::o200k_base().encode(&text), ORACLE_O200K.encode_ordinary(&text));
        }
    }
}
