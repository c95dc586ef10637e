//! Outgoing connections: the pooled HTTPS client, and the address checks that keep client-named targets off
//! internal networks (pass-through: names are resolved by [`CheckedResolver`], which refuses private, loopback,
//! link-local, CGNAT, unique-local and metadata addresses, and the connection goes to exactly the addresses it
//! checked — no second lookup a rebinding DNS server could answer differently). Below the configuration (which
//! parses allowlist patterns) and above nothing of the product.

mod client;
mod resolver;
mod target;

pub use client::{ClientBuildError, HttpClient, build_https_client, build_passthrough_client};
pub use resolver::{
    CheckedResolver, ForbiddenAddress, ResolveError, find_forbidden, forbidden_reason,
};
pub use target::{Target, TargetPattern, numeric_ipv4, parse_target};

#[cfg(test)]
mod tests;
