//! The dashboard page at `/` and its assets under `/assets/`, embedded at build time (see `build.rs`).
//!
//! Assets carry a content hash in their name, so they are cached for a year; the index is revalidated (ETag)
//! on every load, so a new binary's page is picked up at once. Every answer carries a strict
//! Content-Security-Policy: scripts, styles and connections (the `/ws` socket included) only from this origin.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));
}

/// Whether this binary carries the real dashboard (false when built with `KIMI_PROXY_NO_DASHBOARD`).
pub const BUILT: bool = embedded::BUILT;

pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; font-src 'self'; object-src 'none'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

pub(crate) async fn index(request_headers: HeaderMap) -> Response {
    let fresh = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == embedded::INDEX_ETAG));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            embedded::INDEX,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::ETAG, HeaderValue::from_static(embedded::INDEX_ETAG));
    secure(headers);
    response
}

pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    let Some((_, bytes)) = embedded::ASSETS.iter().find(|(name, _)| *name == file) else {
        let mut response = (
            StatusCode::NOT_FOUND,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            "no such asset\n",
        )
            .into_response();
        secure(response.headers_mut());
        return response;
    };
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(&file)),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
        ],
        *bytes,
    )
        .into_response();
    secure(response.headers_mut());
    response
}

fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it browsers send `Origin: null` on the page's own POST/PATCH/DELETE calls, which
    // the origin check refuses. `same-origin` still sends nothing to other origins.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn content_type(file: &str) -> &'static str {
    match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        Some("json" | "map") => "application/json",
        Some("html") => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_by_extension() {
        assert_eq!(
            content_type("app-3EN3M27C.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("app-B7OA6GTL.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("favicon-5a0371ecfa.svg"), "image/svg+xml");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }

    #[test]
    fn the_index_names_only_embedded_assets() {
        let html = String::from_utf8_lossy(embedded::INDEX);
        let mut named = 0;
        for part in html.split("/assets/").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .collect();
            assert!(
                embedded::ASSETS.iter().any(|(n, _)| *n == name),
                "index.html names /assets/{name}, which is not embedded"
            );
            named += 1;
        }
        if BUILT {
            assert!(
                named >= 2,
                "the built index names its script and stylesheet"
            );
        }
    }
}
