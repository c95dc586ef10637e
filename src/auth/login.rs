//! `GET /login` (a form), `POST /login` (token → session cookie), `POST /logout`. The page has no script and
//! no inline style, so it works under the admin Content-Security-Policy.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;

use super::Auth;
use super::session::{COOKIE_NAME, SESSION_TTL, cookie_value};

/// A login form is tiny; anything bigger is refused unread.
const MAX_FORM_BYTES: usize = 8 * 1024;

#[derive(Deserialize)]
struct PageQuery {
    next: Option<String>,
}

/// Where to go after logging in: only a local path (never `//host` or a scheme: no open redirect).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.len() <= 512
                && n.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"\\\"'<>`".contains(&b)) =>
        {
            n
        }
        _ => "/",
    }
}

pub fn redirect_to_login(target: &str) -> Response {
    let next: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("next", safe_next(Some(target)))
        .finish();
    see_other(&format!("/login?{next}"))
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn render(next: &str, failed: bool) -> Response {
    let notice = if failed {
        "<p role=\"alert\">That token is not right.</p>\n"
    } else {
        ""
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>kimi-proxy: log in</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><link rel=\"icon\" href=\"data:,\"></head>\n<body>\n<h1>kimi-proxy</h1>\n{notice}\
         <form method=\"post\" action=\"/login\">\n<label for=\"token\">Admin token</label>\n\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\n\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\n<button type=\"submit\">Log in</button>\n</form>\n\
         </body></html>\n",
        escape(next)
    );
    let status = if failed {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut response = (status, html).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in super::ADMIN_SECURITY_HEADERS {
        h.insert(
            http::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

pub(crate) async fn page(State(auth): State<Arc<Auth>>, request: Request) -> Response {
    let next = Query::<PageQuery>::try_from_uri(request.uri())
        .ok()
        .and_then(|q| q.0.next);
    let next = safe_next(next.as_deref());
    if auth.admin_authenticated(request.headers()) {
        return see_other(next);
    }
    render(next, false)
}

pub(crate) async fn login(State(auth): State<Arc<Auth>>, request: Request) -> Response {
    let Ok(body) = to_bytes(request.into_body(), MAX_FORM_BYTES).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "login form too large").into_response();
    };
    let mut token = None;
    let mut next = None;
    for (name, value) in form_urlencoded::parse(&body) {
        match name.as_ref() {
            "token" => token = Some(value.into_owned()),
            "next" => next = Some(value.into_owned()),
            _ => {}
        }
    }
    let next = safe_next(next.as_deref()).to_string();
    if !token.as_deref().is_some_and(|t| auth.is_admin_token(t)) {
        tracing::warn!("failed admin login");
        return render(&next, true);
    }
    let value = auth.sessions.create();
    let cookie = format!(
        "{COOKIE_NAME}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut response = see_other(&next);
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

pub(crate) async fn logout(State(auth): State<Arc<Auth>>, request: Request<Body>) -> Response {
    if let Some(value) = cookie_value(request.headers()) {
        auth.sessions.remove(value);
    }
    let mut response = see_other("/login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "kimi_proxy_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_local_path_only() {
        assert_eq!(safe_next(Some("/api/stats?x=1")), "/api/stats?x=1");
        for bad in [
            "//evil.com",
            "https://evil.com",
            "/\\evil.com",
            "/a\"><script>",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
