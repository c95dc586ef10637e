#![allow(clippy::unwrap_used)]
use std::net::{IpAddr, Ipv4Addr};

use hyper_util::client::legacy::connect::dns::Name;
use tower_service::Service;

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
