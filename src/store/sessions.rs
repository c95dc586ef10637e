//! Which session a request belongs to — decided in the writer thread, in the order records arrive.
//!
//! 1. An explicit client id (`X-Session-Id`, `metadata.session_id`, `user`) names the session (created on first
//!    sight, source `client`).
//! 2. Otherwise an active session (activated through the API, or the default one in `session_mode = "active"`)
//!    takes the request.
//! 3. Otherwise the request continues the conversation whose *latest* request is the longest prefix of its
//!    messages (agents resend the whole history plus the answer and a new user message or tool results).
//!    A request that matches no conversation's latest request — a new task, an edited or compacted history, a
//!    second agent — starts a new session (source `conversation`).
//!
//! The conversation index is in memory and bounded: for each session it keeps one rolling hash (its latest
//! request's message list); the least recently continued conversations are forgotten first.

use std::collections::{HashMap, HashSet, VecDeque};

use super::StoreError;
use super::db::{Db, RowExt, Value};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::accounting::RequestRecord;
use crate::config::SessionMode;

/// Conversations remembered for matching.
pub const DEFAULT_CONVERSATIONS: usize = 10_000;
/// Client ids remembered without a database lookup.
const CLIENT_CACHE: usize = 10_000;
/// At most this many prefixes of one request are looked up (from the longest).
const MAX_PREFIX_SCAN: usize = 4096;
const PREFIX_SEED: u64 = 0x6b69_6d69_7072_6f78;

/// Rolling hashes of a request's message prefixes: `out[k - 1]` identifies the first `k` messages.
pub fn prefix_hashes(message_hashes: &[u64]) -> Vec<u64> {
    let mut acc = PREFIX_SEED;
    message_hashes
        .iter()
        .map(|h| {
            acc = xxh3_64_with_seed(&h.to_le_bytes(), acc);
            acc
        })
        .collect()
}

/// The conversation tip of a request with these message hashes: its last prefix hash, as stored in
/// `sessions.conversation_tip` (the bits of the `u64`, as SQL integers are signed).
pub fn conversation_tip(message_hashes: &[u64]) -> Option<i64> {
    prefix_hashes(message_hashes)
        .last()
        .map(|&tip| i64::from_ne_bytes(tip.to_ne_bytes()))
}

/// Prefixes looked up in the database at once (the longest first), and at most in all: a conversation longer
/// than that continued elsewhere is matched on its latest messages only.
const STORED_SCAN_CHUNK: usize = 64;
const MAX_STORED_SCAN: usize = 512;

struct Tip {
    session: i64,
    stamp: u64,
}

/// Bounded map from "the message list of a conversation's latest request" to its session.
pub struct ConversationIndex {
    capacity: usize,
    tips: HashMap<u64, Tip>,
    tip_of: HashMap<i64, u64>,
    /// Insertion order for eviction; entries whose stamp no longer matches are stale and skipped.
    order: VecDeque<(u64, u64)>,
    clock: u64,
}

impl ConversationIndex {
    pub fn new(capacity: usize) -> ConversationIndex {
        ConversationIndex {
            capacity: capacity.max(1),
            tips: HashMap::new(),
            tip_of: HashMap::new(),
            order: VecDeque::new(),
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.tips.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tips.is_empty()
    }

    /// The session whose latest request is the longest prefix (possibly all) of the request with `prefixes`.
    pub fn find(&self, prefixes: &[u64]) -> Option<i64> {
        prefixes
            .iter()
            .rev()
            .take(MAX_PREFIX_SCAN)
            .find_map(|h| self.tips.get(h).map(|t| t.session))
    }

    /// `session`'s latest request is now the one whose whole message list hashes to `tip`.
    pub fn advance(&mut self, session: i64, tip: u64) {
        if let Some(old) = self.tip_of.insert(session, tip)
            && old != tip
            && self.tips.get(&old).is_some_and(|t| t.session == session)
        {
            self.tips.remove(&old);
        }
        self.clock += 1;
        let stamp = self.clock;
        if let Some(previous) = self.tips.insert(tip, Tip { session, stamp })
            && previous.session != session
            && self.tip_of.get(&previous.session) == Some(&tip)
        {
            // Another conversation ended on exactly these messages: the newer one owns them now.
            self.tip_of.remove(&previous.session);
        }
        self.order.push_back((tip, stamp));
        self.evict();
    }

    /// Forgets a session (deleted, or never committed).
    pub fn forget(&mut self, session: i64) {
        if let Some(tip) = self.tip_of.remove(&session)
            && self.tips.get(&tip).is_some_and(|t| t.session == session)
        {
            self.tips.remove(&tip);
        }
    }

    fn evict(&mut self) {
        while self.tips.len() > self.capacity {
            let Some((hash, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.tips.get(&hash).is_some_and(|t| t.stamp == stamp)
                && let Some(tip) = self.tips.remove(&hash)
                && self.tip_of.get(&tip.session) == Some(&hash)
            {
                self.tip_of.remove(&tip.session);
            }
        }
        if self.order.len() > 2 * self.capacity + 64 {
            let tips = &self.tips;
            self.order
                .retain(|(hash, stamp)| tips.get(hash).is_some_and(|t| t.stamp == *stamp));
        }
    }
}

/// The writer's session state: the conversation index, a cache of client ids, the active session.
pub struct SessionResolver {
    mode: SessionMode,
    preview_chars: usize,
    windows: HashMap<String, u64>,
    conversations: ConversationIndex,
    clients: HashMap<String, i64>,
    active: Option<i64>,
    /// Sessions known to exist in the current transaction.
    verified: HashSet<i64>,
    /// Sessions created in the current transaction (forgotten again if it fails).
    created: Vec<i64>,
    listener: Option<std::sync::Arc<dyn super::ContextListener>>,
}

/// What a new session starts with.
pub struct NewSession<'a> {
    pub name: Option<&'a str>,
    pub model: Option<&'a str>,
    pub source: &'static str,
    pub client_key: Option<&'a str>,
    pub created_at: i64,
    pub context_window: Option<u64>,
    pub active: bool,
    /// The application of the request that opened it.
    pub client_app: Option<&'a str>,
}

impl SessionResolver {
    /// `windows`: the context window of each catalog model, by key.
    pub fn new(
        mode: SessionMode,
        preview_chars: usize,
        windows: HashMap<String, u64>,
    ) -> SessionResolver {
        SessionResolver {
            mode,
            preview_chars,
            windows,
            conversations: ConversationIndex::new(DEFAULT_CONVERSATIONS),
            clients: HashMap::new(),
            active: None,
            verified: HashSet::new(),
            created: Vec::new(),
            listener: None,
        }
    }

    /// Who hears about committed context changes and deletions (kept across database reopenings).
    pub fn set_listener(&mut self, listener: std::sync::Arc<dyn super::ContextListener>) {
        self.listener = Some(listener);
    }

    pub fn notify_context(&self, updates: &[super::ContextUpdate]) {
        if let Some(listener) = &self.listener
            && !updates.is_empty()
        {
            listener.context(updates);
        }
    }

    pub fn notify_deleted(&self, ids: &[i64]) {
        if let Some(listener) = &self.listener
            && !ids.is_empty()
        {
            listener.deleted(ids);
        }
    }

    pub fn preview_chars(&self) -> usize {
        self.preview_chars
    }

    pub fn context_window(&self, model: &str) -> Option<u64> {
        self.windows.get(model).copied()
    }

    /// Sessions created by the current (or last committed) transaction.
    pub fn created(&self) -> &[i64] {
        &self.created
    }

    pub fn conversations(&self) -> usize {
        self.conversations.len()
    }

    /// Called at the start of each transaction: the active session may have changed (API, CLI).
    pub fn begin(&mut self, conn: &dyn Db) -> Result<(), StoreError> {
        self.verified.clear();
        self.created.clear();
        self.active = match conn.first("SELECT id FROM sessions WHERE active = 1 LIMIT 1", &[])? {
            Some(row) => Some(row.int(0)?),
            None => None,
        };
        if let Some(id) = self.active {
            self.verified.insert(id);
        }
        Ok(())
    }

    /// On PostgreSQL, checks in one query that the sessions this batch's records will be matched to still exist
    /// (instead of one `SELECT` per session as [`SessionResolver::resolve`] meets them: a round trip each to a
    /// server). SQLite is in process: nothing to save there.
    pub fn prefetch(
        &mut self,
        conn: &dyn Db,
        records: &[&std::sync::Arc<RequestRecord>],
    ) -> Result<(), StoreError> {
        if conn.dialect() != super::db::Dialect::Postgres {
            return Ok(());
        }
        let mut ids: Vec<i64> = Vec::new();
        for record in records {
            let candidate = if let Some(key) = record.client_session.as_deref() {
                self.clients.get(key).copied()
            } else if self.active.is_some() || self.mode == SessionMode::Active {
                None
            } else {
                self.conversations
                    .find(&prefix_hashes(&record.message_hashes))
            };
            if let Some(id) = candidate
                && !self.verified.contains(&id)
            {
                ids.push(id);
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        ids.sort_unstable();
        ids.dedup();
        let found = conn.query(
            "SELECT id FROM sessions WHERE id = ANY(?1::bigint[])",
            &[Value::Ints(&ids)],
        )?;
        for row in &found.rows {
            self.verified.insert(row.int(0)?);
        }
        Ok(())
    }

    /// The transaction failed: sessions it created do not exist.
    pub fn rollback(&mut self) {
        for id in std::mem::take(&mut self.created) {
            self.forget(id);
        }
        self.verified.clear();
        self.active = None;
    }

    /// Forgets every session: the database was replaced (its ids mean other sessions now).
    pub fn reset(&mut self) {
        self.conversations = ConversationIndex::new(DEFAULT_CONVERSATIONS);
        self.clients.clear();
        self.verified.clear();
        self.created.clear();
        self.active = None;
    }

    /// Forgets a deleted session.
    pub fn forget(&mut self, id: i64) {
        self.conversations.forget(id);
        self.clients.retain(|_, v| *v != id);
        self.verified.remove(&id);
        if self.active == Some(id) {
            self.active = None;
        }
    }

    /// The session of `record` (created when needed), `None` for a request without messages and no session.
    pub fn resolve(
        &mut self,
        conn: &dyn Db,
        record: &RequestRecord,
    ) -> Result<Option<i64>, StoreError> {
        let prefixes = prefix_hashes(&record.message_hashes);
        let session = if let Some(key) = record.client_session.as_deref() {
            Some(self.client(conn, key, record)?)
        } else if let Some(active) = self.active {
            Some(active)
        } else if self.mode == SessionMode::Active {
            let id = self.create(
                conn,
                &NewSession {
                    name: Some("default"),
                    model: None,
                    source: "active",
                    client_key: None,
                    created_at: record.started_at_ms,
                    context_window: self.context_window(&record.model),
                    active: true,
                    client_app: record.client_app.as_deref(),
                },
            )?;
            self.active = Some(id);
            Some(id)
        } else {
            let found = match self.conversations.find(&prefixes) {
                Some(id) if self.exists(conn, id)? => Some(id),
                Some(id) => {
                    self.forget(id);
                    self.find_stored(conn, &prefixes)?
                }
                None => self.find_stored(conn, &prefixes)?,
            };
            match found {
                Some(id) => Some(id),
                None if prefixes.is_empty() => None,
                None => {
                    let name = self.name_from_preview(record);
                    Some(self.create(
                        conn,
                        &NewSession {
                            name: name.as_deref(),
                            model: None,
                            source: "conversation",
                            client_key: None,
                            created_at: record.started_at_ms,
                            context_window: self.context_window(&record.model),
                            active: false,
                            client_app: record.client_app.as_deref(),
                        },
                    )?)
                }
            }
        };
        if let (Some(id), Some(&tip)) = (session, prefixes.last()) {
            self.conversations.advance(id, tip);
        }
        Ok(session)
    }

    /// The session whose stored tip is the longest of `prefixes`: a conversation another instance (or this one
    /// before a restart) served last, unknown to the in-memory index. Only a strict continuation matches (the
    /// request's whole message list is left out): the same opening prompt sent again days later is a new
    /// conversation, not the old session.
    fn find_stored(&mut self, conn: &dyn Db, prefixes: &[u64]) -> Result<Option<i64>, StoreError> {
        let earlier = &prefixes[..prefixes.len().saturating_sub(1)];
        let longest_first: Vec<i64> = earlier
            .iter()
            .rev()
            .take(MAX_STORED_SCAN)
            .map(|h| i64::from_ne_bytes(h.to_ne_bytes()))
            .collect();
        let placeholders: Vec<String> = (1..=STORED_SCAN_CHUNK).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "SELECT conversation_tip, id FROM sessions WHERE conversation_tip IN ({})",
            placeholders.join(", ")
        );
        for chunk in longest_first.chunks(STORED_SCAN_CHUNK) {
            // One statement for every chunk: a short chunk repeats its last prefix.
            let params: Vec<Value<'_>> = (0..STORED_SCAN_CHUNK)
                .map(|i| Value::Int(chunk[i.min(chunk.len() - 1)]))
                .collect();
            let found = conn.query(&sql, &params)?;
            let mut owners: HashMap<i64, i64> = HashMap::new();
            for row in &found.rows {
                // Two conversations that ended on the same messages: the newer session owns them.
                let (tip, id) = (row.int(0)?, row.int(1)?);
                let owner = owners.entry(tip).or_insert(id);
                *owner = (*owner).max(id);
            }
            if let Some(id) = chunk.iter().find_map(|tip| owners.get(tip).copied()) {
                self.verified.insert(id);
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    fn name_from_preview(&self, record: &RequestRecord) -> Option<String> {
        record
            .preview
            .as_deref()
            .and_then(|p| truncate_chars(p, self.preview_chars))
    }

    fn client(
        &mut self,
        conn: &dyn Db,
        key: &str,
        record: &RequestRecord,
    ) -> Result<i64, StoreError> {
        if let Some(&id) = self.clients.get(key) {
            if self.exists(conn, id)? {
                return Ok(id);
            }
            self.forget(id);
        }
        let found = match conn.first(
            "SELECT id FROM sessions WHERE client_key = ?1",
            &[Value::Text(key)],
        )? {
            Some(row) => Some(row.int(0)?),
            None => None,
        };
        let id = match found {
            Some(id) => {
                self.verified.insert(id);
                id
            }
            None => self.create(
                conn,
                &NewSession {
                    name: Some(key),
                    model: None,
                    source: "client",
                    client_key: Some(key),
                    created_at: record.started_at_ms,
                    context_window: self.context_window(&record.model),
                    active: false,
                    client_app: record.client_app.as_deref(),
                },
            )?,
        };
        if self.clients.len() >= CLIENT_CACHE {
            self.clients.clear();
        }
        self.clients.insert(key.to_string(), id);
        Ok(id)
    }

    fn exists(&mut self, conn: &dyn Db, id: i64) -> Result<bool, StoreError> {
        if self.verified.contains(&id) {
            return Ok(true);
        }
        let found = conn
            .first("SELECT 1 FROM sessions WHERE id = ?1", &[Value::Int(id)])?
            .is_some();
        if found {
            self.verified.insert(id);
        }
        Ok(found)
    }

    /// Inserts a session (deactivating any other when it is to be active). A client session another instance
    /// created meanwhile (same `client_key`) is taken, not duplicated: `ON CONFLICT DO NOTHING`, then read back.
    pub fn create(&mut self, conn: &dyn Db, new: &NewSession<'_>) -> Result<i64, StoreError> {
        if new.active {
            conn.execute("UPDATE sessions SET active = 0 WHERE active = 1", &[])?;
        }
        let inserted = conn.first(
            "INSERT INTO sessions (name, model, created_at, last_activity, source, client_key, context_window, active,
                                   client_app)
             VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (client_key) DO NOTHING
             RETURNING id",
            &[
                new.name.into(),
                new.model.into(),
                new.created_at.into(),
                new.source.into(),
                new.client_key.into(),
                new.context_window.map(clamp).into(),
                new.active.into(),
                new.client_app.into(),
            ],
        )?;
        let id = match (inserted, new.client_key) {
            (Some(row), _) => {
                let id = row.int(0)?;
                self.created.push(id);
                id
            }
            (None, Some(key)) => conn
                .first(
                    "SELECT id FROM sessions WHERE client_key = ?1",
                    &[Value::Text(key)],
                )?
                .ok_or_else(|| StoreError::Other(format!("session `{key}` vanished")))?
                .int(0)?,
            (None, None) => return Err(StoreError::Other("session not inserted".into())),
        };
        self.verified.insert(id);
        if new.active {
            self.active = Some(id);
        }
        Ok(id)
    }
}

/// `u64` → SQLite integer (saturating).
pub fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The first `chars` characters of `text`; `None` when `chars` is 0 or the text is empty.
pub fn truncate_chars(text: &str, chars: usize) -> Option<String> {
    if chars == 0 || text.is_empty() {
        return None;
    }
    Some(match text.char_indices().nth(chars) {
        Some((at, _)) => text[..at].to_string(),
        None => text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(ids: &[u64]) -> Vec<u64> {
        prefix_hashes(ids)
    }

    #[test]
    fn a_continuation_finds_its_conversation_and_moves_its_tip() {
        let mut index = ConversationIndex::new(100);
        let first = conv(&[1, 2]);
        assert_eq!(index.find(&first), None);
        index.advance(7, *first.last().unwrap_or(&0));
        // history + answer + new user message
        let second = conv(&[1, 2, 3, 4]);
        assert_eq!(index.find(&second), Some(7));
        index.advance(7, *second.last().unwrap_or(&0));
        // history + assistant tool calls + five tool results
        let third = conv(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(index.find(&third), Some(7));
        // the same request again (a retry) stays too
        assert_eq!(index.find(&second), Some(7));
    }

    #[test]
    fn an_edited_history_does_not_continue() {
        let mut index = ConversationIndex::new(100);
        index.advance(1, *conv(&[1, 2]).last().unwrap_or(&0));
        index.advance(1, *conv(&[1, 2, 3, 4]).last().unwrap_or(&0));
        // the last user message edited: [1, 2] is no longer the conversation's latest request
        assert_eq!(index.find(&conv(&[1, 2, 3, 5])), None);
        // compacted: a summary replaces the middle
        assert_eq!(index.find(&conv(&[1, 9, 10])), None);
    }

    #[test]
    fn parallel_conversations_are_told_apart() {
        let mut index = ConversationIndex::new(100);
        index.advance(1, *conv(&[10, 11]).last().unwrap_or(&0));
        index.advance(2, *conv(&[10, 21]).last().unwrap_or(&0));
        assert_eq!(index.find(&conv(&[10, 11, 12, 13])), Some(1));
        assert_eq!(index.find(&conv(&[10, 21, 22, 23])), Some(2));
    }

    #[test]
    fn the_index_is_bounded_and_forgets_the_least_recent() {
        let mut index = ConversationIndex::new(3);
        for session in 0..10_i64 {
            index.advance(session, *conv(&[session as u64]).last().unwrap_or(&0));
            // session 0 is continued every time: it stays
            index.advance(0, *conv(&[0, session as u64 + 100]).last().unwrap_or(&0));
        }
        assert!(index.len() <= 3);
        assert!(index.order.len() <= 2 * 3 + 64);
        assert_eq!(index.find(&conv(&[0, 109, 1])), Some(0));
        assert_eq!(index.find(&conv(&[1, 5])), None);
        index.forget(0);
        assert_eq!(index.find(&conv(&[0, 109, 1])), None);
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate_chars("héllo", 2).as_deref(), Some("hé"));
        assert_eq!(truncate_chars("hi", 10).as_deref(), Some("hi"));
        assert_eq!(truncate_chars("hi", 0), None);
    }
}
