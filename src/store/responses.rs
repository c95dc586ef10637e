//! Stored Responses (`store: true`): written by the writer thread (queued without waiting on the request
//! path), read back on a miss of the proxy's in-memory index and by `GET /v1/responses/{id}`. Rows older than
//! the retention are never read and are deleted as new ones are written.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::value::RawValue;

use super::db::{Db, RowExt, Value};
use super::{Readers, StoreError, StoreSink, unix_ms};

/// One stored response: the Response object as the client got it, and the conversation up to and including
/// its output (what a follow-up's `previous_response_id` continues), both as JSON text.
#[derive(Debug)]
pub struct StoredResponse {
    pub id: String,
    pub created_at_ms: i64,
    pub response: Box<RawValue>,
    /// `items_to_store`: the conversation the request saw, then the response's output items.
    pub items: Box<RawValue>,
    /// Where this request's own input items lie in `items` (`input_items` lists them).
    pub input: Range<usize>,
}

impl StoredResponse {
    /// Bytes held, for the memory bound and the writer queue's.
    pub fn weight(&self) -> usize {
        self.id.len() + self.response.get().len() + self.items.get().len() + 64
    }
}

/// Where stored responses persist (the database: [`StoreResponses`]). Calls that read or wait are
/// made on the blocking pool.
pub trait ResponseBacking: Send + Sync {
    /// Queues `stored` for writing without waiting; false when the queue refused it.
    fn keep(&self, stored: Arc<StoredResponse>) -> bool;
    /// Reads a stored response that has not expired (blocking).
    fn load(&self, id: &str) -> Result<Option<StoredResponse>, StoreError>;
    /// Deletes a stored response (blocking); true when there was one.
    fn delete(&self, id: &str) -> Result<bool, StoreError>;
}

/// How often the writer deletes expired rows (at most), piggybacking on an insert.
const PRUNE_EVERY_MS: i64 = 3_600_000;

/// Writes one stored response (a second write of an id replaces it), on either backend.
pub fn insert(db: &dyn Db, stored: &StoredResponse) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO responses (id, created_at, response, items, input_from, input_to)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at, response = excluded.response,
             items = excluded.items, input_from = excluded.input_from, input_to = excluded.input_to",
        &[
            Value::Text(&stored.id),
            Value::Int(stored.created_at_ms),
            Value::Text(stored.response.get()),
            Value::Text(stored.items.get()),
            Value::Int(stored.input.start as i64),
            Value::Int(stored.input.end as i64),
        ],
    )?;
    Ok(())
}

/// The stored response `id`, unless it was written before `not_before_ms`.
pub fn get(
    db: &dyn Db,
    id: &str,
    not_before_ms: i64,
) -> Result<Option<StoredResponse>, StoreError> {
    let Some(row) = db.first(
        "SELECT created_at, response, items, input_from, input_to FROM responses
         WHERE id = ?1 AND created_at >= ?2",
        &[Value::Text(id), Value::Int(not_before_ms)],
    )?
    else {
        return Ok(None);
    };
    let raw = |text: String| {
        serde_json::value::RawValue::from_string(text)
            .map_err(|e| StoreError::Other(format!("stored response {id} unreadable: {e}")))
    };
    let (from, to) = (row.int(3)?, row.int(4)?);
    Ok(Some(StoredResponse {
        id: id.to_string(),
        created_at_ms: row.int(0)?,
        response: raw(row.text(1)?)?,
        items: raw(row.text(2)?)?,
        input: usize::try_from(from).unwrap_or(0)..usize::try_from(to).unwrap_or(0),
    }))
}

/// Deletes the stored response `id`; true when there was one.
pub fn delete(db: &dyn Db, id: &str) -> Result<bool, StoreError> {
    Ok(db.execute("DELETE FROM responses WHERE id = ?1", &[Value::Text(id)])? > 0)
}

/// Deletes every stored response written before `before_ms`; how many.
pub fn prune(db: &dyn Db, before_ms: i64) -> Result<u64, StoreError> {
    db.execute(
        "DELETE FROM responses WHERE created_at < ?1",
        &[Value::Int(before_ms)],
    )
}

/// The proxy's Responses state backed by the database: writes through the writer's queue, reads from the
/// read-only pool (on the blocking pool, never on an async worker).
pub struct StoreResponses {
    pub sink: Arc<StoreSink>,
    pub readers: Arc<Readers>,
    /// Stored responses older than this are gone.
    pub retention_ms: i64,
    last_prune_ms: Arc<AtomicI64>,
}

impl StoreResponses {
    pub fn new(sink: Arc<StoreSink>, retention_ms: i64) -> StoreResponses {
        let readers = Arc::new(Readers::at(sink.location()));
        StoreResponses {
            sink,
            readers,
            retention_ms,
            last_prune_ms: Arc::new(AtomicI64::new(0)),
        }
    }
}

impl ResponseBacking for StoreResponses {
    fn keep(&self, stored: Arc<StoredResponse>) -> bool {
        let bytes = stored.weight();
        let retention_ms = self.retention_ms;
        let last_prune = Arc::clone(&self.last_prune_ms);
        self.sink.try_execute_sized(bytes, move |state| {
            let result = state.with_db(|db| {
                insert(db, &stored)?;
                let now = unix_ms();
                if now - last_prune.load(Ordering::Relaxed) >= PRUNE_EVERY_MS {
                    last_prune.store(now, Ordering::Relaxed);
                    prune(db, now - retention_ms)?;
                }
                Ok(())
            });
            if let Err(error) = result {
                tracing::warn!(%error, id = %stored.id, "cannot keep a stored response");
            }
        })
    }

    fn load(&self, id: &str) -> Result<Option<StoredResponse>, StoreError> {
        let not_before = unix_ms() - self.retention_ms;
        self.readers.with_db(|db| get(db, id, not_before))
    }

    fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.sink
            .execute_blocking(move |state| state.with_db(|db| delete(db, &id)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::value::RawValue;

    fn stored(id: &str, at: i64) -> StoredResponse {
        StoredResponse {
            id: id.into(),
            created_at_ms: at,
            response: RawValue::from_string(r#"{"id":"x","output":[]}"#.into()).unwrap(),
            items: RawValue::from_string(r#"[{"type":"message"}]"#.into()).unwrap(),
            input: 0..1,
        }
    }

    #[test]
    fn a_stored_response_reads_back_until_it_expires_or_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::Store::open(&dir.path().join("db")).unwrap();
        let conn = store.connection();
        insert(conn, &stored("resp_a", 1_000)).unwrap();
        let back = get(conn, "resp_a", 0).unwrap().unwrap();
        assert_eq!(back.items.get(), r#"[{"type":"message"}]"#);
        assert_eq!(back.input, 0..1);
        assert!(get(conn, "resp_a", 1_001).unwrap().is_none(), "expired");
        assert!(get(conn, "resp_b", 0).unwrap().is_none());
        assert!(delete(conn, "resp_a").unwrap());
        assert!(!delete(conn, "resp_a").unwrap());
        insert(conn, &stored("resp_old", 5)).unwrap();
        insert(conn, &stored("resp_new", 50)).unwrap();
        assert_eq!(prune(conn, 10).unwrap(), 1);
        assert!(get(conn, "resp_new", 0).unwrap().is_some());
    }
}
