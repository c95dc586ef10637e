//! Continue's dev data: `$CONTINUE_GLOBAL_DIR` (else `~/.continue`) `/dev_data/<schema>/tokensGenerated.jsonl`.
//!
//! From continuedev/continue `core/data/log.ts` (`logLocalData` appends one JSON line per event to
//! `getDevDataFilePath(name, "0.2.0")`, `core/util/paths.ts`: `dev_data/<schema>/<event>.jsonl`) and
//! `packages/config-yaml/src/schemas/data/tokensGenerated/` (`model`, `provider`, `promptTokens`,
//! `generatedTokens`, with the base fields `createdAt`, `eventName`, `schema`; older lines carry `timestamp`).
//! Continue records no cache split and no cost: `promptTokens` is the whole input.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{LineReader, UsageEntry, offset_key, parse_timestamp_ms};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    #[serde(borrow, default)]
    created_at: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    prompt_tokens: Option<f64>,
    #[serde(default)]
    generated_tokens: Option<f64>,
}

pub(crate) struct Reader {
    path: PathBuf,
}

impl Reader {
    pub(crate) fn new(path: &Path) -> Reader {
        Reader {
            path: path.to_path_buf(),
        }
    }
}

fn count(v: Option<f64>) -> u64 {
    v.filter(|v| v.is_finite() && *v > 0.0)
        .map_or(0, |v| v as u64)
}

impl LineReader for Reader {
    fn line(&mut self, line: &[u8], offset: u64) -> Result<Option<UsageEntry>, ()> {
        let parsed: Line<'_> = serde_json::from_slice(line).map_err(|_| ())?;
        if parsed.prompt_tokens.is_none() && parsed.generated_tokens.is_none() {
            return Ok(None);
        }
        let Some(timestamp_ms) = parsed
            .created_at
            .as_deref()
            .or(parsed.timestamp.as_deref())
            .and_then(parse_timestamp_ms)
        else {
            return Err(());
        };
        Ok(Some(UsageEntry {
            key: offset_key(&self.path, offset),
            timestamp_ms,
            model: parsed.model.map(Cow::into_owned).filter(|m| !m.is_empty()),
            input_tokens: count(parsed.prompt_tokens),
            output_tokens: count(parsed.generated_tokens),
            ..UsageEntry::default()
        }))
    }
}
