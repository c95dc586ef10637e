//! Session-less pass-through: a client names a provider outside the catalog with `X-Target-Base-URL` and brings
//! its own key. Only allowlisted URLs are reached, over https (http only to loopback, and only when allowed),
//! and never an internal address: names are resolved by [`CheckedResolver`], which refuses private, loopback,
//! link-local, CGNAT, unique-local and metadata addresses, and the connection goes to exactly the addresses it
//! checked (no second lookup a rebinding DNS server could answer differently).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use tower_service::Service;

use super::error::ProxyError;

/// The header naming the target base URL (e.g. `https://api.example.com/v1`).
pub const TARGET_HEADER: &str = "x-target-base-url";
/// The provider key for the target when `Authorization` carries a virtual key.
pub const TARGET_AUTH_HEADER: &str = "x-target-authorization";

/// A canonical target: lowercase scheme and host, explicit port, path without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// `/` when empty; never ends with `/` otherwise.
    pub path: String,
}

impl Target {
    fn default_port(&self) -> u16 {
        if self.https { 443 } else { 80 }
    }

    /// `host` or `host:port` when the port is not the scheme's default, IPv6 in brackets.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The base URL requests go to (`/chat/completions` is appended).
    pub fn base_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let path = if self.path == "/" { "" } else { &self.path };
        format!("{scheme}://{}{path}", self.authority())
    }

    /// The literal IP of the target, when its host is one: the usual forms, and the numeric IPv4 forms a system
    /// resolver also accepts (`127.1`, `0x7f000001`, `2130706433`, `017700000001`), so they are refused as the
    /// address they are rather than resolved.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host
            .parse()
            .ok()
            .or_else(|| numeric_ipv4(&self.host).map(IpAddr::V4))
    }
}

/// An IPv4 address in the forms of `inet_aton`: one to four parts, each decimal, octal (a leading `0`) or hex
/// (`0x`), the last one filling the remaining bytes.
pub fn numeric_ipv4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let value = if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            if hex.is_empty() {
                0
            } else {
                u64::from_str_radix(hex, 16).ok()?
            }
        } else if part.len() > 1 && part.starts_with('0') {
            u64::from_str_radix(&part[1..], 8).ok()?
        } else {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse::<u64>().ok()?
        };
        values.push(value);
    }
    let (last, leading) = values.split_last()?;
    if leading.iter().any(|&v| v > 255) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if last_bits < 64 && *last >= (1u64 << last_bits) {
        return None;
    }
    let mut address = *last;
    for (i, &value) in leading.iter().enumerate() {
        address |= value << (24 - 8 * i as u32);
    }
    u32::try_from(address).ok().map(Ipv4Addr::from)
}

/// Parses and canonicalises the `X-Target-Base-URL` value.
pub fn parse_target(text: &str) -> Result<Target, String> {
    let text = text.trim();
    if text.len() > 2048 {
        return Err("the target URL is longer than 2048 characters".to_string());
    }
    let uri: http::Uri = text
        .parse()
        .map_err(|_| format!("`{}` is not a URL", printable(text)))?;
    let https = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the target URL must start with https://".to_string()),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| "the target URL has no host".to_string())?;
    if authority.as_str().contains('@') {
        return Err("the target URL may not contain credentials".to_string());
    }
    if uri.query().is_some() {
        return Err("the target URL may not contain a query".to_string());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err("the target URL has no host".to_string());
    }
    let path = uri.path().trim_end_matches('/');
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
        || path.contains(['%', '\\'])
    {
        return Err(
            "the target URL path may not contain dot segments or percent-encoding".to_string(),
        );
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(Target {
        https,
        host,
        port,
        path: if path.is_empty() {
            "/".to_string()
        } else {
            path.to_string()
        },
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPattern {
    /// No port in the pattern: the scheme's default.
    Default,
    Exact(u16),
    Any,
}

/// One `[passthrough] allowed` entry: `scheme://host[:port]/path`, where `*` in the host matches within the host
/// only and `*` in the path matches any characters. A pattern without a path allows every path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPattern {
    https: bool,
    host: String,
    port: PortPattern,
    path: Option<String>,
    text: String,
}

impl TargetPattern {
    pub fn parse(text: &str) -> Result<TargetPattern, String> {
        let lower = text.trim().to_ascii_lowercase();
        let (https, rest) = if let Some(rest) = lower.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = lower.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("`{text}` must start with https:// or http://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{text}`: unclosed `[`"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(p) => PortPattern::Exact(
                p.parse()
                    .map_err(|_| format!("`{text}`: `{p}` is not a port"))?,
            ),
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.*:".contains(&b));
        // A host of wildcards only (`*`, `**`, `*.*`) allows every host: refused, like no allowlist at all.
        let wildcard_only = host.bytes().all(|b| b"*.:".contains(&b));
        if !host_ok || wildcard_only || host.contains('@') {
            return Err(format!(
                "`{text}`: the host must be a name, an IP, or a pattern like *.example.com"
            ));
        }
        let path = path.map(|p| {
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() {
                "/".to_string()
            } else {
                trimmed.to_string()
            }
        });
        Ok(TargetPattern {
            https,
            host: host.trim_end_matches('.').to_string(),
            port,
            path,
            text: text.trim().to_string(),
        })
    }

    pub fn matches(&self, target: &Target) -> bool {
        let port_ok = match self.port {
            PortPattern::Default => target.port == target.default_port(),
            PortPattern::Exact(p) => target.port == p,
            PortPattern::Any => true,
        };
        self.https == target.https
            && port_ok
            && glob(&self.host, &target.host)
            && self.path.as_deref().is_none_or(|p| glob(p, &target.path))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// `*` matches any run of characters; everything else literally.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Why an address may not be reached, or `None` when it may.
pub fn forbidden_reason(ip: IpAddr, allow_loopback: bool) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4, allow_loopback),
        IpAddr::V6(v6) => forbidden_v6(v6, allow_loopback),
    }
}

fn forbidden_v4(ip: Ipv4Addr, allow_loopback: bool) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        return (!allow_loopback).then_some("a loopback address");
    }
    // Cloud metadata: 169.254.169.254 (most clouds; link-local anyway) and Azure's WireServer.
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(168, 63, 129, 16) {
        return Some("a cloud metadata address");
    }
    if ip.is_link_local() {
        return Some("a link-local address");
    }
    if ip.is_private() {
        return Some("a private address");
    }
    if a == 100 && (64..128).contains(&b) {
        return Some("a carrier-grade NAT (shared) address");
    }
    if a == 0 || ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        return Some("a reserved, broadcast or multicast address");
    }
    // IETF protocol assignments (192.0.0.0/24), documentation ranges, benchmarking (198.18.0.0/15).
    if (a, b, c) == (192, 0, 0) || ip.is_documentation() || (a == 198 && (b == 18 || b == 19)) {
        return Some("a special-purpose address");
    }
    None
}

fn forbidden_v6(ip: Ipv6Addr, allow_loopback: bool) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4, allow_loopback);
    }
    let s = ip.segments();
    if ip.is_loopback() {
        return (!allow_loopback).then_some("a loopback address");
    }
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        return Some("a cloud metadata address");
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return Some("a reserved or multicast address");
    }
    if s[0] & 0xfe00 == 0xfc00 {
        return Some("a unique-local address");
    }
    if s[0] & 0xffc0 == 0xfe80 || s[0] & 0xffc0 == 0xfec0 {
        return Some("a link-local address");
    }
    // Addresses that embed an IPv4 one: IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96), 6to4 (2002::/16).
    let embedded = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        return forbidden_v4(embedded(s[6], s[7]), allow_loopback)
            .or(Some("an IPv4-compatible address"));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(embedded(s[6], s[7]), allow_loopback);
    }
    // IPv4-translated (::ffff:0:a.b.c.d, RFC 2765): never a public target.
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return forbidden_v4(embedded(s[6], s[7]), allow_loopback)
            .or(Some("an IPv4-translated address"));
    }
    // Local-use NAT64 (64:ff9b:1::/48, RFC 8215): translated inside one network.
    if s[..3] == [0x64, 0xff9b, 1] {
        return Some("a local-use NAT64 address");
    }
    if s[0] == 0x2002 {
        return forbidden_v4(embedded(s[1], s[2]), allow_loopback);
    }
    // Teredo tunnels, documentation (2001:db8::/32), discard-only (100::/64).
    if (s[0], s[1]) == (0x2001, 0) || (s[0], s[1]) == (0x2001, 0x0db8) || s[..4] == [0x100, 0, 0, 0]
    {
        return Some("a special-purpose address");
    }
    None
}

/// A resolved name had a forbidden address.
#[derive(Debug, thiserror::Error)]
#[error("`{host}` resolves to {reason}")]
pub struct ForbiddenAddress {
    pub host: String,
    pub reason: &'static str,
}

/// The system resolver, then a check of every address it returned: one forbidden address refuses the name
/// (a name that mixes public and internal addresses is not trusted). With `check` off it only resolves (the
/// catalog's providers are configured by the operator and may well be local).
#[derive(Clone)]
pub struct CheckedResolver {
    inner: GaiResolver,
    check: Option<bool>,
}

impl CheckedResolver {
    /// Resolves without checking.
    pub fn plain() -> CheckedResolver {
        CheckedResolver {
            inner: GaiResolver::new(),
            check: None,
        }
    }

    /// Resolves and refuses internal addresses (loopback allowed only when `allow_loopback`).
    pub fn checking(allow_loopback: bool) -> CheckedResolver {
        CheckedResolver {
            inner: GaiResolver::new(),
            check: Some(allow_loopback),
        }
    }
}

type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, ResolveError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Forbidden(#[from] ForbiddenAddress),
    #[error("DNS lookup failed: {0}")]
    Io(#[from] std::io::Error),
}

impl Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ResolveError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> ResolveFuture {
        let check = self.check;
        let host = name.as_str().to_string();
        let lookup = self.inner.call(name);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup.await?.collect();
            if let Some(allow_loopback) = check {
                for addr in &addrs {
                    if let Some(reason) = forbidden_reason(addr.ip(), allow_loopback) {
                        return Err(ResolveError::Forbidden(ForbiddenAddress { host, reason }));
                    }
                }
            }
            Ok(addrs.into_iter())
        })
    }
}

/// The forbidden-address refusal somewhere in an error's causes.
pub fn find_forbidden<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ForbiddenAddress> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<ForbiddenAddress>() {
            return Some(found);
        }
        if let Some(ResolveError::Forbidden(found)) = e.downcast_ref::<ResolveError>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}

fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Checks a pass-through target (allowlist, scheme, literal address) and builds its one-off model and
/// provider. Names are checked again when resolved, by the pass-through client's resolver.
pub fn route(
    state: &super::ProxyState,
    target: &http::HeaderValue,
    requested: &str,
) -> Result<(std::sync::Arc<crate::config::Model>, super::Upstream), ProxyError> {
    use crate::config::{
        ApiKey, BaseUrl, Model, Prices, Provider, ProviderKind, RetryPolicy, Timeouts,
    };
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
        prices: Prices::default(),
        capabilities: Vec::new(),
        cache: Some(false),
        context: Default::default(),
        reasoning_echo: false,
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
        requests_per_minute: None,
        tokens_per_minute: None,
        rate_limit_max_wait: std::time::Duration::ZERO,
        stream_usage: true,
        usage_always: false,
        api: crate::config::ProviderApi::Chat,
    });
    Ok((
        model,
        super::Upstream {
            provider,
            client: client.clone(),
            limiter: None,
            // Pass-through targets are not providers of the catalog: their 429s are not watched.
            throttled: Arc::new(AtomicU64::new(0)),
        },
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn allowed(pattern: &str, url: &str) -> bool {
        TargetPattern::parse(pattern)
            .unwrap()
            .matches(&parse_target(url).unwrap())
    }

    #[test]
    fn targets_are_canonical() {
        let t = parse_target("HTTPS://API.Example.com:443/v1/").unwrap();
        assert_eq!(t.base_url(), "https://api.example.com/v1");
        let t = parse_target("http://[::1]:8080").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.base_url(), "http://[::1]:8080");
        for bad in [
            "ftp://x.com",
            "https://user:pw@x.com/v1",
            "https://x.com/v1?a=b",
            "https://x.com/v1/../admin",
            "https://x.com/v1/%2e%2e/admin",
            "/v1",
            "not a url",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns() {
        assert!(allowed(
            "https://api.example.com/*",
            "https://api.example.com/v1"
        ));
        assert!(allowed(
            "https://api.example.com/*",
            "https://api.example.com"
        ));
        assert!(allowed(
            "https://api.example.com",
            "https://api.example.com/anything"
        ));
        assert!(!allowed(
            "https://api.example.com/*",
            "http://api.example.com/v1"
        ));
        assert!(!allowed(
            "https://api.example.com/*",
            "https://api.example.com:8443/v1"
        ));
        assert!(allowed(
            "https://api.example.com:*/*",
            "https://api.example.com:8443/v1"
        ));
        assert!(allowed(
            "https://*.example.com/v1",
            "https://eu.example.com/v1"
        ));
        assert!(!allowed(
            "https://*.example.com/v1",
            "https://eu.example.com/v2"
        ));
        // `*` in the host never crosses into the path.
        assert!(!allowed(
            "https://*.example.com/*",
            "https://evil.com/x.example.com/v1"
        ));
        assert!(!allowed(
            "https://api.example.com/*",
            "https://api.example.com.evil.com/v1"
        ));
        assert!(TargetPattern::parse("ftp://x").is_err());
        assert!(TargetPattern::parse("https://*/v1").is_err());
        for allow_all in [
            "https://**/*",
            "https://*/*",
            "https://*.*/*",
            "https://***:*/*",
            "http://**",
        ] {
            assert!(TargetPattern::parse(allow_all).is_err(), "{allow_all}");
        }
        assert!(TargetPattern::parse("https://*.example.com/*").is_ok());
        assert!(TargetPattern::parse("https://x.com:abc/").is_err());
    }

    #[test]
    fn internal_addresses_are_forbidden() {
        for bad in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.100.100.200",
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            "::ffff:0:808:808",
            "64:ff9b:1::808:808",
            "64:ff9b:1:ffff::1",
            "168.63.129.16",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(forbidden_reason(ip, false).is_some(), "{bad}");
        }
        for good in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450::1"] {
            let ip: IpAddr = good.parse().unwrap();
            assert_eq!(forbidden_reason(ip, false), None, "{good}");
        }
        assert_eq!(forbidden_reason("127.0.0.1".parse().unwrap(), true), None);
        assert_eq!(forbidden_reason("::1".parse().unwrap(), true), None);
        assert!(forbidden_reason("10.0.0.1".parse().unwrap(), true).is_some());
        assert!(forbidden_reason("169.254.169.254".parse().unwrap(), true).is_some());
    }

    #[test]
    fn numeric_ipv4_forms_are_addresses() {
        let loopback = Some(Ipv4Addr::new(127, 0, 0, 1));
        for form in [
            "127.1",
            "0x7f000001",
            "2130706433",
            "017700000001",
            "127.0.1",
            "0x7f.1",
            "0177.0.0.1",
        ] {
            assert_eq!(numeric_ipv4(form), loopback, "{form}");
            let target = parse_target(&format!("https://{form}/v1")).unwrap();
            assert_eq!(target.ip(), loopback.map(IpAddr::V4), "{form}");
        }
        assert_eq!(numeric_ipv4("10.1"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        for name in [
            "api.example.com",
            "1e100.net",
            "",
            "1..2",
            "256.1.1.1",
            "4294967296",
            "0x1g",
            "08",
        ] {
            assert_eq!(numeric_ipv4(name), None, "{name}");
        }
    }

    #[tokio::test]
    async fn resolver_refuses_names_of_internal_addresses() {
        let mut checking = CheckedResolver::checking(false);
        let refused = checking
            .call("localhost".parse::<Name>().unwrap())
            .await
            .unwrap_err();
        assert!(matches!(refused, ResolveError::Forbidden(_)), "{refused}");
        assert!(find_forbidden(&refused).is_some());
        let mut loopback = CheckedResolver::checking(true);
        let addrs: Vec<_> = loopback
            .call("localhost".parse::<Name>().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
