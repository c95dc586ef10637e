//! Outgoing targets named by clients (`X-Target-Base-URL`) and the operator's allowlist patterns for them.

use std::net::{IpAddr, Ipv4Addr};

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

fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}
