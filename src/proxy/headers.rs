//! Header handling per RFC 9110 §7.6.1: hop-by-hop headers belong to one connection and are never forwarded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};

use crate::util::LogThrottle;

/// Headers that are hop-by-hop by definition, whatever `Connection` says.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including every header that `Connection` lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The client's headers as they go upstream: hop-by-hop, `Host` and framing removed (the client library sets
/// them for the new connection and body), and `Accept-Encoding` removed so the upstream answers in identity
/// encoding: bodies pass through untouched and stay readable for token accounting.
pub fn upstream_request_headers(client: &HeaderMap) -> HeaderMap {
    let mut headers = client.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ACCEPT_ENCODING);
    // Pass-through routing headers are for the proxy; the target key goes out as `Authorization`.
    headers.remove(super::passthrough::TARGET_HEADER);
    headers.remove(super::passthrough::TARGET_AUTH_HEADER);
    headers
}

/// The upstream's headers as they go back to the client: hop-by-hop ones removed, and those that would act
/// for the proxy's own origin: an upstream's cookies (one could be named like the login cookie) and CORS
/// grants (the proxy decides what browsers may read, `[server] cors_allowed_origins`). No sniffing either.
pub fn client_response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = upstream.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::SET_COOKIE);
    let cors: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in cors {
        headers.remove(name);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    headers
}

/// Removes every header whose value contains `secret`: an upstream (or a debugging gateway in front of it) that
/// echoes the request's `Authorization` must not hand the provider key to the client.
pub fn drop_echoed_secret(headers: &mut HeaderMap, secret: &[u8]) {
    if secret.is_empty() {
        return;
    }
    let finder = memchr::memmem::Finder::new(secret);
    let echoed: Vec<HeaderName> = headers
        .iter()
        .filter(|(_, value)| finder.find(value.as_bytes()).is_some())
        .map(|(name, _)| name.clone())
        .collect();
    for name in echoed {
        // An upstream that echoes does so on every answer: one warning a minute says it without flooding the log.
        let removed = ECHOES_REMOVED.fetch_add(1, Ordering::Relaxed) + 1;
        if ECHO_WARNING.ready(Duration::from_secs(60)) {
            tracing::warn!(
                header = %name,
                removed_so_far = removed,
                "upstream echoed the provider key in a response header: removed (warned at most once a minute)"
            );
        } else {
            tracing::debug!(header = %name, "upstream echoed the provider key: removed");
        }
        headers.remove(name);
    }
}

static ECHO_WARNING: LogThrottle = LogThrottle::new();
static ECHOES_REMOVED: AtomicU64 = AtomicU64::new(0);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    #[test]
    fn connection_listed_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        h.insert("retry-after", HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert_eq!(h.get("x-request-id").unwrap(), "abc");
        assert_eq!(h.get("retry-after").unwrap(), "3");
    }

    #[test]
    fn echoed_keys_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("x-echo", HeaderValue::from_static("Bearer sk-secret-1"));
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        drop_echoed_secret(&mut h, b"sk-secret-1");
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-request-id"));
    }

    #[test]
    fn upstream_headers_drop_host_and_encoding() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:8000"));
        h.insert("content-length", HeaderValue::from_static("12"));
        h.insert("accept-encoding", HeaderValue::from_static("gzip"));
        h.insert("x-custom", HeaderValue::from_static("kept"));
        let out = upstream_request_headers(&h);
        assert_eq!(out.len(), 1);
        assert_eq!(out.get("x-custom").unwrap(), "kept");
    }
}
