//! Login sessions of the admin surface. A cookie holds a random id and its HMAC under a per-process key, never
//! the admin token: a forged or stolen-then-logged-out cookie is refused, and a restart logs everyone out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;
use rand::RngCore;
use ring::hmac;

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "kimi_proxy_session";

/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at most; the oldest is dropped beyond it, so logins cannot grow memory.
const MAX_SESSIONS: usize = 256;

const ID_BYTES: usize = 16;
/// Domain separation: the same key also authenticates tokens.
const SESSION_CONTEXT: &[u8] = b"kimi-proxy session v1:";

pub struct Sessions {
    key: hmac::Key,
    live: Mutex<HashMap<[u8; ID_BYTES], Instant>>,
}

impl Sessions {
    pub fn new(key: hmac::Key) -> Sessions {
        Sessions {
            key,
            live: Mutex::new(HashMap::new()),
        }
    }

    fn tag(&self, id: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(SESSION_CONTEXT);
        ctx.update(id);
        ctx.sign()
    }

    /// Starts a session and returns the cookie value.
    pub fn create(&self) -> String {
        let mut id = [0u8; ID_BYTES];
        rand::rng().fill_bytes(&mut id);
        let now = Instant::now();
        {
            let mut live = self.live.lock();
            live.retain(|_, expires| *expires > now);
            if live.len() >= MAX_SESSIONS
                && let Some(oldest) = live.iter().min_by_key(|(_, e)| **e).map(|(id, _)| *id)
            {
                live.remove(&oldest);
            }
            live.insert(id, now + SESSION_TTL);
        }
        let mut value = id.to_vec();
        value.extend_from_slice(self.tag(&id).as_ref());
        URL_SAFE_NO_PAD.encode(value)
    }

    /// The session id of a valid, live cookie value.
    fn verify(&self, value: &str) -> Option<[u8; ID_BYTES]> {
        let bytes = URL_SAFE_NO_PAD.decode(value.as_bytes()).ok()?;
        if bytes.len() != ID_BYTES + 32 {
            return None;
        }
        let (id, tag) = bytes.split_at(ID_BYTES);
        // Constant time: nothing about a valid tag leaks through timing.
        let mut ctx = Vec::with_capacity(SESSION_CONTEXT.len() + ID_BYTES);
        ctx.extend_from_slice(SESSION_CONTEXT);
        ctx.extend_from_slice(id);
        hmac::verify(&self.key, &ctx, tag).ok()?;
        let id: [u8; ID_BYTES] = id.try_into().ok()?;
        let live = self.live.lock();
        live.get(&id).filter(|e| **e > Instant::now()).map(|_| id)
    }

    pub fn is_valid(&self, value: &str) -> bool {
        self.verify(value).is_some()
    }

    /// Ends the session of `value`, if it is one.
    pub fn remove(&self, value: &str) {
        if let Some(id) = self.verify(value) {
            self.live.lock().remove(&id);
        }
    }
}

/// The value of the session cookie in a `Cookie` header, if any.
pub fn cookie_value(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim())
}

/// The `Cookie` header without the session cookie (it must never reach a provider); `None` when nothing is
/// left.
pub fn without_session_cookie(value: &str) -> Option<String> {
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').map_or(*pair, |(n, _)| n) != COOKIE_NAME)
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(hmac::Key::new(hmac::HMAC_SHA256, b"test key"))
    }

    #[test]
    fn created_sessions_verify_and_logout_revokes() {
        let s = sessions();
        let cookie = s.create();
        assert!(s.is_valid(&cookie));
        s.remove(&cookie);
        assert!(!s.is_valid(&cookie));
    }

    #[test]
    fn forged_and_foreign_cookies_are_refused() {
        let s = sessions();
        let cookie = s.create();
        let mut bytes = URL_SAFE_NO_PAD.decode(&cookie).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(!s.is_valid(&URL_SAFE_NO_PAD.encode(&bytes)));
        assert!(!s.is_valid("not base64 !"));
        assert!(!s.is_valid(""));
        // Same id and a valid tag under another key (another process) is refused.
        let other = sessions();
        assert!(!other.is_valid(&cookie));
    }

    #[test]
    fn sessions_are_bounded() {
        let s = sessions();
        let first = s.create();
        for _ in 0..MAX_SESSIONS {
            s.create();
        }
        assert!(!s.is_valid(&first));
        assert!(s.live.lock().len() <= MAX_SESSIONS);
    }

    #[test]
    fn cookie_parsing() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            http::HeaderValue::from_static("a=1; kimi_proxy_session=abc ; b=2"),
        );
        assert_eq!(cookie_value(&h), Some("abc"));
        assert_eq!(
            without_session_cookie("a=1; kimi_proxy_session=abc; b=2").as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(without_session_cookie("kimi_proxy_session=abc"), None);
    }
}
