//! Cline's task history: `taskHistory.json` in the extension's global storage (`state/`) or the Cline CLI's data
//! directory (`~/.cline/data/state/`).
//!
//! Format from cline/cline `src/shared/HistoryItem.ts` (`apps/vscode/src/shared/HistoryItem.ts` today): a JSON
//! array of `{ id, ts, task, tokensIn, tokensOut, cacheWrites?, cacheReads?, totalCost, cwdOnTaskInitialization?,
//! modelId? }`; the path from `apps/vscode/src/sdk/legacy-state-reader.ts` (`<data dir>/state/taskHistory.json`).
//! One entry per task, an aggregate that grows while the task runs: the file is rewritten whole, so it is read
//! whole each time it changes and its entries replace earlier reads (same key: the task id).

use std::io;
use std::path::Path;

use serde::Deserialize;

use crate::{Cursor, FileRead, UsageEntry, file_identity};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryItem {
    id: String,
    ts: f64,
    #[serde(default)]
    tokens_in: Option<f64>,
    #[serde(default)]
    tokens_out: Option<f64>,
    #[serde(default)]
    cache_writes: Option<f64>,
    #[serde(default)]
    cache_reads: Option<f64>,
    #[serde(default)]
    total_cost: Option<f64>,
    #[serde(default)]
    cwd_on_task_initialization: Option<String>,
    #[serde(default)]
    model_id: Option<String>,
}

fn count(v: Option<f64>) -> u64 {
    v.filter(|v| v.is_finite() && *v > 0.0)
        .map_or(0, |v| v as u64)
}

fn modified_ms(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn read(
    path: &Path,
    cursor: &Cursor,
    sink: &mut dyn FnMut(UsageEntry),
) -> io::Result<FileRead> {
    let meta = std::fs::metadata(path)?;
    let stamp = (meta.len(), modified_ms(&meta));
    let mut out = FileRead {
        cursor: Cursor {
            offset: meta.len(),
            identity: file_identity(&meta),
            state: None,
            stamp: Some(stamp),
        },
        ..FileRead::default()
    };
    if cursor.stamp == Some(stamp) {
        return Ok(out);
    }
    let bytes = std::fs::read(path)?;
    out.bytes = bytes.len() as u64;
    // Cline writes the file whole; a read racing the write may see a torn document: counted, retried later.
    let Ok(items) = serde_json::from_slice::<Vec<serde_json::Value>>(&bytes) else {
        out.malformed = 1;
        out.cursor.stamp = None;
        return Ok(out);
    };
    for item in items {
        let Ok(item) = serde_json::from_value::<HistoryItem>(item) else {
            out.malformed += 1;
            continue;
        };
        if !item.ts.is_finite() {
            out.malformed += 1;
            continue;
        }
        out.entries += 1;
        sink(UsageEntry {
            key: item.id.clone(),
            timestamp_ms: item.ts as i64,
            session: Some(item.id),
            project: item.cwd_on_task_initialization.filter(|s| !s.is_empty()),
            model: item.model_id.filter(|s| !s.is_empty()),
            message_id: None,
            request_id: None,
            input_tokens: count(item.tokens_in),
            output_tokens: count(item.tokens_out),
            cache_creation_tokens: count(item.cache_writes),
            cache_creation_1h_tokens: 0,
            cache_read_tokens: count(item.cache_reads),
            reasoning_tokens: 0,
            agent_cost_usd: item.total_cost.filter(|c| c.is_finite()),
            sidechain: false,
        });
    }
    Ok(out)
}
