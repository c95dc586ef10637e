//! Requests in flight, with their running token counts: what the dashboard shows counting up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use serde::Serialize;

/// One request in flight. The tracker updates `completion_tokens` as events pass (a relaxed store).
#[derive(Debug)]
pub struct LiveRequest {
    pub id: u64,
    pub started_at_ms: i64,
    pub model: String,
    pub provider: String,
    pub streaming: bool,
    pub completion_tokens: AtomicU64,
}

#[derive(Debug, Serialize)]
pub struct LiveSnapshot {
    pub id: u64,
    pub started_at_ms: i64,
    pub model: String,
    pub provider: String,
    pub streaming: bool,
    pub completion_tokens: u64,
}

/// Told when a request starts (the live dashboard). Called on the request path: must only hand the request
/// to a bounded queue, or return at once when nobody watches.
pub trait StartListener: Send + Sync {
    fn started(&self, request: &Arc<LiveRequest>);
}

/// The in-flight registry. Bounded by the number of open requests; each entry is removed when its record is
/// finished, whatever the outcome.
#[derive(Default)]
pub struct LiveRequests {
    open: Mutex<HashMap<u64, Arc<LiveRequest>>>,
    listener: OnceLock<Arc<dyn StartListener>>,
}

impl LiveRequests {
    pub fn insert(&self, request: Arc<LiveRequest>) {
        if let Some(listener) = self.listener.get() {
            listener.started(&request);
        }
        self.open.lock().insert(request.id, request);
    }

    /// Registers the one start listener (later calls are ignored).
    pub fn set_listener(&self, listener: Arc<dyn StartListener>) {
        let _ = self.listener.set(listener);
    }

    /// Visits each open request's id, start time and running completion count, without copying strings.
    pub fn each_progress(&self, mut f: impl FnMut(u64, i64, u64)) {
        for r in self.open.lock().values() {
            f(
                r.id,
                r.started_at_ms,
                r.completion_tokens.load(Ordering::Relaxed),
            );
        }
    }

    pub fn remove(&self, id: u64) {
        self.open.lock().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.open.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Oldest first.
    pub fn snapshot(&self) -> Vec<LiveSnapshot> {
        let mut all: Vec<LiveSnapshot> = self
            .open
            .lock()
            .values()
            .map(|r| LiveSnapshot {
                id: r.id,
                started_at_ms: r.started_at_ms,
                model: r.model.clone(),
                provider: r.provider.clone(),
                streaming: r.streaming,
                completion_tokens: r.completion_tokens.load(Ordering::Relaxed),
            })
            .collect();
        all.sort_by_key(|r| r.id);
        all
    }
}
