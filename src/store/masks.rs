//! Originals of masked output: written by the writer thread (queued without waiting on the request path),
//! read back by `GET /api/mask/{hash}`. With a key configured, content is sealed with ChaCha20-Poly1305 (a
//! random nonce per row, the hash as associated data) and no plain preview is stored.

use std::sync::Arc;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;

use super::db::{Db, RowExt, Value};
use super::{StoreError, StoreSink};
use crate::context::masking::{MaskSink, MaskedOriginal, head_and_tail};

/// The key that seals masked originals.
#[derive(Clone)]
pub struct MaskKey(Arc<LessSafeKey>);

impl MaskKey {
    pub fn new(key: &[u8; 32]) -> Option<MaskKey> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, key).ok()?;
        Some(MaskKey(Arc::new(LessSafeKey::new(key))))
    }

    /// `nonce ‖ ciphertext ‖ tag`.
    fn seal(&self, hash: &str, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(hash.as_bytes()),
                &mut sealed,
            )
            .ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn open(&self, hash: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, body) = sealed.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = body.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(hash.as_bytes()), &mut buffer)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// Writes one original (kept once: the first write of a hash wins), on either backend.
pub fn insert(
    db: &dyn Db,
    original: &MaskedOriginal,
    key: Option<&MaskKey>,
) -> Result<(), StoreError> {
    let (content, preview, encrypted) = match key {
        Some(key) => {
            let sealed = key
                .seal(&original.hash, original.content.as_bytes())
                .ok_or_else(|| StoreError::Other("cannot encrypt a masked original".into()))?;
            (sealed, None, true)
        }
        None => (
            original.content.as_bytes().to_vec(),
            Some(original.preview.as_str()),
            false,
        ),
    };
    db.execute(
        "INSERT INTO masked_content (hash, created_at, role, tool, tokens, preview, content, encrypted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (hash) DO NOTHING",
        &[
            Value::Text(&original.hash),
            Value::Int(original.created_at_ms),
            Value::Text(original.role),
            original.tool.as_deref().into(),
            Value::Int(super::sessions::clamp(original.tokens)),
            preview.into(),
            Value::Blob(&content),
            encrypted.into(),
        ],
    )?;
    Ok(())
}

/// A masked original as the API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct MaskedRow {
    pub hash: String,
    pub created_at_ms: i64,
    pub role: String,
    pub tool: Option<String>,
    pub tokens: i64,
    pub preview: String,
    pub content: String,
    pub encrypted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MaskReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the original is encrypted and no context.encryption_key is configured")]
    NoKey,
    #[error("the original cannot be decrypted with the configured context.encryption_key")]
    WrongKey,
}

pub fn get(
    db: &dyn Db,
    hash: &str,
    key: Option<&MaskKey>,
    preview_chars: usize,
) -> Result<Option<MaskedRow>, MaskReadError> {
    let Some(row) = db.first(
        "SELECT created_at, role, tool, tokens, preview, content, encrypted FROM masked_content WHERE hash = ?1",
        &[Value::Text(hash)],
    )?
    else {
        return Ok(None);
    };
    let (created_at_ms, role, tool, tokens, preview, content, encrypted) = (
        row.int(0)?,
        row.text(1)?,
        row.opt_text(2)?,
        row.int(3)?,
        row.opt_text(4)?,
        row.blob(5)?,
        row.int(6)? != 0,
    );
    let content = if encrypted {
        let key = key.ok_or(MaskReadError::NoKey)?;
        key.open(hash, &content).ok_or(MaskReadError::WrongKey)?
    } else {
        content
    };
    let content = String::from_utf8_lossy(&content).into_owned();
    let preview = preview.unwrap_or_else(|| head_and_tail(&content, preview_chars));
    Ok(Some(MaskedRow {
        hash: hash.to_string(),
        created_at_ms,
        role,
        tool,
        tokens,
        preview,
        content,
        encrypted,
    }))
}

/// The masking step's sink: originals go to the writer's queue; a full queue refuses them.
pub struct StoreMasks {
    pub sink: Arc<StoreSink>,
    pub key: Option<MaskKey>,
}

impl MaskSink for StoreMasks {
    fn keep(&self, original: MaskedOriginal) -> bool {
        let key = self.key.clone();
        let bytes = original.content.len() + original.preview.len() + 128;
        self.sink.try_execute_sized(bytes, move |state| {
            let result = state.with_db(|db| insert(db, &original, key.as_ref()));
            if let Err(error) = result {
                tracing::warn!(%error, hash = %original.hash, "cannot keep a masked original");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn original() -> MaskedOriginal {
        MaskedOriginal {
            hash: "00112233445566778899aabbccddeeff".into(),
            content: "secret tool output".into(),
            tokens: 1234,
            preview: "secret".into(),
            role: "tool",
            tool: Some("grep".into()),
            created_at_ms: 1,
        }
    }

    #[test]
    fn sealed_at_rest_and_opened_with_the_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::Store::open(&dir.path().join("db")).unwrap();
        let conn = store.connection();
        let key = MaskKey::new(&[7u8; 32]).unwrap();
        insert(conn, &original(), Some(&key)).unwrap();
        let raw: Vec<u8> = conn
            .query_row("SELECT content FROM masked_content", [], |r| r.get(0))
            .unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("secret"));
        let hash = &original().hash;
        let row = get(conn, hash, Some(&key), 50).unwrap().unwrap();
        assert_eq!(row.content, "secret tool output");
        assert!(row.encrypted);
        assert!(matches!(
            get(conn, hash, None, 50),
            Err(MaskReadError::NoKey)
        ));
        let other = MaskKey::new(&[8u8; 32]).unwrap();
        assert!(matches!(
            get(conn, hash, Some(&other), 50),
            Err(MaskReadError::WrongKey)
        ));
        assert!(get(conn, "ff", Some(&key), 50).unwrap().is_none());
        // Plain when no key: the first write of a hash wins.
        insert(conn, &original(), None).unwrap();
        assert!(get(conn, hash, Some(&key), 50).unwrap().unwrap().encrypted);
    }
}
