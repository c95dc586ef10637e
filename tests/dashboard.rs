//! The dashboard: the page and its assets as the binary serves them, and (in `browser_end_to_end`) the page in a
//! real headless Chromium against the real proxy and the mock upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{MockUpstream, Proxy, client, mock_config};

const CSP: &str = "default-src 'self'; connect-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' \
                   data:; font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; \
                   form-action 'self'";

fn asset_paths(html: &str) -> Vec<String> {
    html.split("\"/assets/")
        .skip(1)
        .map(|rest| format!("/assets/{}", rest.split('"').next().unwrap()))
        .collect()
}

#[tokio::test]
async fn page_and_assets_are_served_with_strict_headers() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&mock_config(&mock, ""), &[("MOCK_KEY", "k")]).await;
    let http = client();

    let index = http.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    let headers = index.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["content-security-policy"], CSP);
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let html = index.text().await.unwrap();
    assert!(
        html.contains("<title>kimi-proxy dashboard</title>"),
        "{html}"
    );
    // no inline script or style: the CSP would block them
    assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains(" style="));

    let again = http
        .get(proxy.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    let assets = asset_paths(&html);
    assert!(assets.iter().any(|a| a.ends_with(".js")), "{assets:?}");
    assert!(assets.iter().any(|a| a.ends_with(".css")), "{assets:?}");
    for path in &assets {
        let response = http.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let expected = match path.rsplit('.').next().unwrap() {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "svg" => "image/svg+xml",
            other => panic!("unexpected asset type {other}"),
        };
        assert_eq!(response.headers()["content-type"], expected, "{path}");
        assert_eq!(
            response.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert!(!response.bytes().await.unwrap().is_empty());
    }

    let missing = http
        .get(proxy.url("/assets/app-NOPE.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
