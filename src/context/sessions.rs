//! Per-session context settings, readable on the request path without touching the database.
//!
//! A request is matched to a session the way the store will file it when the proxy can tell on arrival: by
//! the client's session id (`X-Session-Id`, `metadata.session_id`, `user`), else the active session. Sessions
//! recognised only later by their message prefix cannot be matched before sending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use parking_lot::RwLock;
use serde::Serialize;

use crate::config::context::Toggles;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SessionContext {
    pub toggles: Toggles,
    /// Compact the session's next request whatever its size (a manual compaction).
    pub compact_next: bool,
}

#[derive(Default)]
struct Inner {
    by_session: HashMap<i64, SessionContext>,
    by_client: HashMap<String, i64>,
}

/// Session settings with the client id each session is known by.
#[derive(Default)]
pub struct SessionToggles {
    inner: RwLock<Inner>,
    /// Any session has settings: the only thing the request path reads when none has.
    any: AtomicBool,
    /// The active session (0: none), mirrored from the store.
    active: AtomicI64,
}

impl SessionToggles {
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    pub fn set_active(&self, id: Option<i64>) {
        self.active.store(id.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn active(&self) -> Option<i64> {
        Some(self.active.load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    /// Sets (or, with empty toggles and no pending compaction, clears) a session's settings.
    pub fn set(&self, id: i64, client_key: Option<&str>, context: SessionContext) {
        let mut inner = self.inner.write();
        if let Some(key) = client_key {
            inner.by_client.insert(key.to_string(), id);
        }
        if context.toggles.is_empty() && !context.compact_next {
            inner.by_session.remove(&id);
        } else {
            inner.by_session.insert(id, context);
        }
        self.any
            .store(!inner.by_session.is_empty(), Ordering::Relaxed);
    }

    pub fn get(&self, id: i64) -> SessionContext {
        self.inner
            .read()
            .by_session
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets a deleted session.
    pub fn forget(&self, id: i64) {
        let mut inner = self.inner.write();
        inner.by_session.remove(&id);
        inner.by_client.retain(|_, v| *v != id);
        self.any
            .store(!inner.by_session.is_empty(), Ordering::Relaxed);
    }

    /// The settings of the session a request goes to, and whether a manual compaction is due (taken: it
    /// happens once).
    pub fn lookup(&self, client_session: Option<&str>) -> (Toggles, bool) {
        if !self.any() {
            return (Toggles::default(), false);
        }
        let id = {
            let inner = self.inner.read();
            match client_session {
                Some(key) => inner.by_client.get(key).copied(),
                None => self.active(),
            }
        };
        let Some(id) = id else {
            return (Toggles::default(), false);
        };
        let found = self.inner.read().by_session.get(&id).cloned();
        match found {
            Some(context) if context.compact_next => {
                let mut inner = self.inner.write();
                if let Some(entry) = inner.by_session.get_mut(&id) {
                    entry.compact_next = false;
                }
                (context.toggles, true)
            }
            Some(context) => (context.toggles, false),
            None => (Toggles::default(), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_sessions_and_the_active_one() {
        let registry = SessionToggles::default();
        assert_eq!(registry.lookup(Some("a")), (Toggles::default(), false));
        let on = Toggles {
            masking: Some(true),
            ..Toggles::default()
        };
        registry.set(
            1,
            Some("a"),
            SessionContext {
                toggles: on,
                compact_next: false,
            },
        );
        registry.set(
            2,
            None,
            SessionContext {
                toggles: Toggles::default(),
                compact_next: true,
            },
        );
        assert_eq!(registry.lookup(Some("a")), (on, false));
        assert_eq!(registry.lookup(Some("b")), (Toggles::default(), false));
        assert_eq!(registry.lookup(None), (Toggles::default(), false));
        registry.set_active(Some(2));
        assert_eq!(registry.lookup(None), (Toggles::default(), true));
        // Once only.
        assert_eq!(registry.lookup(None), (Toggles::default(), false));
        registry.forget(1);
        assert_eq!(registry.lookup(Some("a")), (Toggles::default(), false));
    }
}
