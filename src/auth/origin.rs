//! What a browser may do: which `Host` names are served (against DNS rebinding), which `Origin`s may call
//! (same origin or the configured allowlist), and no cross-site state change.

use http::{HeaderMap, HeaderValue, Method, Uri, header};

/// Why a request was refused before reaching a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A `Host` name that is neither an IP literal, localhost, nor allowed: the signature of DNS rebinding.
    Host(String),
    /// A browser request from another site that is not allowlisted.
    Origin(String),
    /// `Sec-Fetch-Site: cross-site` on a state-changing request.
    CrossSite,
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::Host(host) => format!(
                "Host `{host}` is not served: add it to [server] allowed_hosts if this is the proxy's own name"
            ),
            Refusal::Origin(origin) => format!(
                "requests from origin `{origin}` are refused: add it to [server] cors_allowed_origins to allow it"
            ),
            Refusal::CrossSite => {
                "cross-site requests may not change state (Sec-Fetch-Site: cross-site)".to_string()
            }
        }
    }
}

pub struct Policy {
    /// Normalised `scheme://host[:port]`.
    origins: Vec<String>,
    /// Lowercase host names (no port) served besides IP literals and localhost.
    hosts: Vec<String>,
}

impl Policy {
    pub fn new(origins: Vec<String>, hosts: Vec<String>) -> Policy {
        Policy { origins, hosts }
    }

    pub fn cors_enabled(&self) -> bool {
        !self.origins.is_empty()
    }

    /// Checks a request. `Ok(Some(origin))`: a cross-origin request from an allowlisted origin (answer with CORS
    /// headers for it); `Ok(None)`: same origin or no browser involved.
    pub fn check(
        &self,
        headers: &HeaderMap,
        method: &Method,
        uri: &Uri,
    ) -> Result<Option<HeaderValue>, Refusal> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()));
        if let Some(host) = host
            && !self.host_allowed(host)
        {
            return Err(Refusal::Host(printable(host)));
        }
        let mut allowlisted = None;
        if let Some(origin) = headers.get(header::ORIGIN) {
            let text = origin.to_str().unwrap_or("");
            if self.origins.iter().any(|o| o.eq_ignore_ascii_case(text)) {
                allowlisted = Some(origin.clone());
            } else if !host.is_some_and(|host| same_origin(text, host)) {
                return Err(Refusal::Origin(printable(text)));
            }
        }
        let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe
            && allowlisted.is_none()
            && headers
                .get("sec-fetch-site")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        {
            return Err(Refusal::CrossSite);
        }
        Ok(allowlisted)
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
        name.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.hosts.contains(&name)
    }
}

/// The host of `host[:port]` (IPv6 without brackets).
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    }
}

/// `authority` with the scheme's default port removed, lowercase.
fn canonical_authority(authority: &str, scheme: &str) -> String {
    let lower = authority.to_ascii_lowercase();
    let default = match scheme {
        "https" | "wss" => ":443",
        _ => ":80",
    };
    match lower.strip_suffix(default) {
        Some(stripped) => stripped.to_string(),
        None => lower,
    }
}

/// Whether `origin` (`scheme://authority`) names the same host and port as the request's `Host`.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https") || authority.contains(['/', '@']) {
        return false;
    }
    // The proxy serves plain HTTP; behind a TLS terminator the browser's origin is https on the same authority.
    canonical_authority(authority, &scheme) == canonical_authority(host, &scheme)
}

/// Untrusted header text as it may appear in an error message.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn policy() -> Policy {
        Policy::new(
            vec!["https://app.example.com".to_string()],
            vec!["proxy.lan".to_string()],
        )
    }

    fn check(pairs: &[(&'static str, &'static str)], method: Method) -> Result<bool, Refusal> {
        policy()
            .check(&headers(pairs), &method, &Uri::from_static("/api/stats"))
            .map(|o| o.is_some())
    }

    #[test]
    fn hosts_against_dns_rebinding() {
        for ok in [
            "127.0.0.1:8000",
            "localhost:8000",
            "LOCALHOST",
            "[::1]:8000",
            "10.0.0.5:8000",
            "proxy.lan:8000",
            "app.localhost",
        ] {
            assert!(policy().host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example:8000", "localhost.evil.com", "proxy.lan.evil"] {
            assert!(!policy().host_allowed(bad), "{bad}");
        }
        assert!(matches!(
            check(&[("host", "rebind.evil.com:8000")], Method::GET),
            Err(Refusal::Host(_))
        ));
    }

    #[test]
    fn origins() {
        let host = ("host", "127.0.0.1:8000");
        assert_eq!(check(&[host], Method::POST), Ok(false));
        assert_eq!(
            check(&[host, ("origin", "http://127.0.0.1:8000")], Method::POST),
            Ok(false)
        );
        assert_eq!(
            check(&[host, ("origin", "https://app.example.com")], Method::POST),
            Ok(true)
        );
        for bad in [
            "http://evil.com",
            "null",
            "http://127.0.0.1:8001",
            "http://127.0.0.1:8000@evil.com",
        ] {
            let origin = ("origin", bad);
            assert!(
                matches!(check(&[host, origin], Method::GET), Err(Refusal::Origin(_))),
                "{bad}"
            );
        }
        // Default ports.
        assert_eq!(
            check(
                &[("host", "localhost"), ("origin", "http://localhost:80")],
                Method::GET
            ),
            Ok(false)
        );
    }

    #[test]
    fn cross_site_state_changes_are_refused() {
        let pairs = [("host", "localhost:1"), ("sec-fetch-site", "cross-site")];
        assert_eq!(check(&pairs, Method::GET), Ok(false));
        assert_eq!(check(&pairs, Method::POST), Err(Refusal::CrossSite));
        assert_eq!(check(&pairs, Method::DELETE), Err(Refusal::CrossSite));
        let same = [("host", "localhost:1"), ("sec-fetch-site", "same-origin")];
        assert_eq!(check(&same, Method::POST), Ok(false));
    }
}
