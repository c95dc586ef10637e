//! Session-less pass-through: a client names a provider outside the catalog with `X-Target-Base-URL` and brings
//! its own key. Only allowlisted URLs are reached, over https (http only to loopback, and only when allowed),
//! and never an internal address: names are resolved by [`CheckedResolver`], which refuses private, loopback,
//! link-local, CGNAT, unique-local and metadata addresses, and the connection goes to exactly the addresses it
//! checked (no second lookup a rebinding DNS server could answer differently).

use super::error::ProxyError;
use crate::net::{forbidden_reason, parse_target};

/// The header naming the target base URL (e.g. `https://api.example.com/v1`).
pub const TARGET_HEADER: &str = "x-target-base-url";
/// The provider key for the target when `Authorization` carries a virtual key.
pub const TARGET_AUTH_HEADER: &str = "x-target-authorization";
/// Checks a pass-through target (allowlist, scheme, literal address) and builds its one-off model and
/// provider. Names are checked again when resolved, by the pass-through client's resolver.
pub fn route(
    state: &super::ProxyState,
    target: &http::HeaderValue,
    requested: &str,
) -> Result<(std::sync::Arc<crate::config::Model>, super::Upstream), ProxyError> {
    use crate::config::{ApiKey, BaseUrl, Model, Provider, ProviderKind, RetryPolicy, Timeouts};
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    let Some(client) = &state.passthrough else {
        return Err(ProxyError::PassthroughDisabled);
    };
    let settings = &state.config.passthrough;
    let text = target
        .to_str()
        .map_err(|_| ProxyError::InvalidTarget("the header is not text".to_string()))?;
    let target = parse_target(text).map_err(ProxyError::InvalidTarget)?;
    let loopback_name =
        target.host == "localhost" || target.ip().is_some_and(|ip| ip.is_loopback());
    let plain_http_allowed = settings.allow_loopback && loopback_name;
    if !(target.https || plain_http_allowed) {
        return Err(ProxyError::InvalidTarget(
            "the target must use https:// (plain http only to loopback, with [passthrough] allow_loopback)"
                .to_string(),
        ));
    }
    if !settings.allowed.iter().any(|p| p.matches(&target)) {
        return Err(ProxyError::TargetNotAllowed(target.base_url()));
    }
    if let Some(ip) = target.ip()
        && let Some(reason) = forbidden_reason(ip, settings.allow_loopback)
    {
        return Err(ProxyError::ForbiddenTarget(format!(
            "`{}` is {reason}",
            target.host
        )));
    }
    let key = format!("passthrough:{}", target.authority());
    let model = Arc::new(Model {
        key: requested.to_string(),
        provider: key.clone(),
        upstream_id: requested.to_string(),
        max_context_size: 0,
        tokenizer: crate::config::default_tokenizer(requested),
        cache: Some(false),
        ..Model::default()
    });
    let provider = Arc::new(Provider {
        key,
        kind: ProviderKind::OpenAiCompatible,
        base_url: BaseUrl::Ready(target.base_url()),
        api_key: ApiKey::None,
        timeouts: Timeouts::default(),
        // A refused or failed connection is not retried: the client chose the target and sees the error.
        retry: RetryPolicy {
            max_attempts: 1,
            initial_backoff: std::time::Duration::ZERO,
            max_backoff: std::time::Duration::ZERO,
            deadline: std::time::Duration::ZERO,
        },
        rate_limit_max_wait: std::time::Duration::ZERO,
        stream_usage: true,
        ..Provider::default()
    });
    Ok((
        model,
        super::Upstream {
            provider,
            client: client.clone(),
            limiter: None,
            shared: None,
            shared_tokens: None,
            // Pass-through targets are not providers of the catalog: their 429s are not watched.
            throttled: Arc::new(AtomicU64::new(0)),
        },
    ))
}
