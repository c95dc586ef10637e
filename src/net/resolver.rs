//! Which addresses may be reached, and a resolver that checks every address a name resolves to.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use tower_service::Service;

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
