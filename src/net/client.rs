//! The pooled HTTPS client every outgoing call uses (providers, pass-through targets, the alert webhook).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::resolver::CheckedResolver;

pub type HttpClient = Client<HttpsConnector<HttpConnector<CheckedResolver>>, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// The pass-through client: every name it resolves is checked against internal addresses, and it connects
/// to the addresses checked (see [`super::resolver`]). IP literals are checked before a request is sent.
pub fn build_passthrough_client(
    allow_loopback: bool,
    connect_timeout: Duration,
) -> Result<HttpClient, ClientBuildError> {
    build_with(CheckedResolver::checking(allow_loopback), connect_timeout)
}

/// A client for addresses the configuration names (providers, the alert webhook): keep-alive, HTTP/2 when the
/// server offers it through ALPN, TCP_NODELAY; names resolved plainly (the operator may name local servers).
pub fn build_https_client(connect_timeout: Duration) -> Result<HttpClient, ClientBuildError> {
    build_with(CheckedResolver::plain(), connect_timeout)
}

/// Idle connections kept per upstream host. Above the concurrency a busy agent setup reaches (fewer meant that at
/// 50 concurrent requests every request beyond the kept ones opened, then closed, a connection of its own); a
/// burst larger than this still reuses connections while it lasts, and idle ones close after 90 s.
const MAX_IDLE_PER_HOST: usize = 256;

fn build_with(
    resolver: CheckedResolver,
    connect_timeout: Duration,
) -> Result<HttpClient, ClientBuildError> {
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);

    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .build(https))
}
