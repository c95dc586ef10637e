//! What the auth guard costs a proxy request: the same trivial route served with and without the guard, with no
//! virtual keys (Host/Origin rules only) and with four virtual keys (one HMAC verification per key).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use kimi_proxy::auth::{self, Auth};
use kimi_proxy::config::Config;
use tower::ServiceExt;

fn config(keys: usize) -> Config {
    let mut text = String::from("builtin_catalog = false\n");
    for i in 0..keys {
        text.push_str(&format!(
            "[[server.client_keys]]\nname = \"k{i}\"\nkey = \"virtual-key-{i}-0123456789abcdef\"\n"
        ));
    }
    Config::from_sources(Some(("bench", &text)), &|_: &str| None).unwrap()
}

fn router(guarded: Option<&Config>) -> Router {
    let router = Router::new().route("/v1/chat/completions", post(|| async { "ok" }));
    match guarded {
        Some(config) => router.layer(axum::middleware::from_fn_with_state(
            Arc::new(Auth::new(config, kimi_proxy::routes::proxy_paths())),
            auth::guard,
        )),
        None => router,
    }
}

fn request() -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("host", "127.0.0.1:8000")
        .header("authorization", "Bearer virtual-key-3-0123456789abcdef")
        .header("content-type", "application/json")
        .body(Body::empty())
        .unwrap()
}

fn guard(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let open = config(0);
    let keyed = config(4);
    let mut group = c.benchmark_group("auth_guard");
    for (name, app) in [
        ("no_guard", router(None)),
        ("guard_no_keys", router(Some(&open))),
        ("guard_4_virtual_keys", router(Some(&keyed))),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let response = runtime.block_on(app.clone().oneshot(request())).unwrap();
                assert_eq!(response.status(), 200);
                black_box(response);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, guard);
criterion_main!(benches);
