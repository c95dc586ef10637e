#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use std::time::Duration;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

#[test]
fn builtin_catalog_covers_the_promised_providers() {
    let config = Config::from_sources(None, &env_of(&[])).unwrap();
    for provider in [
        "moonshot",
        "kimi-code",
        "nvidia",
        "openrouter",
        "mistral",
        "groq",
        "cerebras",
        "siliconflow",
        "gemini",
        "deepseek",
        "openai",
        "cloudflare",
    ] {
        assert!(
            config.providers.contains_key(provider),
            "missing provider {provider}"
        );
        assert!(
            config.models.values().any(|m| m.provider == provider),
            "provider {provider} has no model"
        );
    }
    assert_eq!(config.models["nvidia/kimi-k2.5"].max_context_size, 262_144);
    assert_eq!(
        config.models["openai/gpt-4o"].tokenizer,
        TokenizerSpec::O200kBase
    );
    assert_eq!(
        config.models["moonshot/kimi-k2.5"].tokenizer,
        TokenizerSpec::Cl100kBase
    );
    assert_eq!(
        config.models["nvidia/gpt-oss-120b"].tokenizer,
        TokenizerSpec::O200kBase
    );
}

#[test]
fn unset_variables_are_reported_not_sent() {
    let config = Config::from_sources(None, &env_of(&[("NVIDIA_API_KEY", "nv-secret")])).unwrap();
    assert!(
        matches!(&config.providers["nvidia"].api_key, ApiKey::Ready(s) if s.expose() == "nv-secret")
    );
    assert_eq!(
        config.providers["openai"].api_key,
        ApiKey::Missing {
            var: "OPENAI_API_KEY".into()
        }
    );
    assert_eq!(
        config.providers["cloudflare"].base_url,
        BaseUrl::Missing {
            var: "CLOUDFLARE_ACCOUNT_ID".into()
        }
    );
    let missing = config.missing_variables();
    assert!(missing.contains(&("openai".to_string(), "OPENAI_API_KEY".to_string())));
    assert!(!missing.iter().any(|(p, _)| p == "nvidia"));
}

#[test]
fn empty_variable_counts_as_unset() {
    let config = Config::from_sources(None, &env_of(&[("OPENAI_API_KEY", "")])).unwrap();
    assert!(matches!(
        config.providers["openai"].api_key,
        ApiKey::Missing { .. }
    ));
}

#[test]
fn user_file_overrides_single_fields_and_adds_entries() {
    let user = r#"
        [providers.nvidia]
        requests_per_minute = 20
        [providers.nvidia.timeouts]
        idle_ms = 5000

        [providers.local]
        base_url = "http://127.0.0.1:11434/v1/"

        [models."local/qwen"]
        provider = "local"
        model = "qwen2.5-coder:7b"
        max_context_size = 32768
        tokenizer = { file = "/tmp/vocab.tiktoken", pattern = "\\w+" }
    "#;
    let config = Config::from_sources(Some(("config.toml", user)), &env_of(&[])).unwrap();
    let nvidia = &config.providers["nvidia"];
    assert_eq!(nvidia.requests_per_minute, Some(20));
    assert_eq!(nvidia.timeouts.idle, Duration::from_secs(5));
    assert_eq!(
        nvidia.base_url,
        BaseUrl::Ready("https://integrate.api.nvidia.com/v1".into())
    );
    let local = &config.providers["local"];
    assert_eq!(
        local.base_url,
        BaseUrl::Ready("http://127.0.0.1:11434/v1".into())
    );
    assert_eq!(local.api_key, ApiKey::None);
    assert!(matches!(
        config.models["local/qwen"].tokenizer,
        TokenizerSpec::File { .. }
    ));
    assert!(
        config.models.contains_key("openai/gpt-4o"),
        "built-ins are kept"
    );
}

#[test]
fn builtin_catalog_can_be_switched_off() {
    let user = r#"
        builtin_catalog = false
        [providers.mock]
        base_url = "http://127.0.0.1:9/v1"
        [models."mock/m"]
        provider = "mock"
        max_context_size = 1000
    "#;
    let config = Config::from_sources(Some(("c.toml", user)), &env_of(&[])).unwrap();
    assert_eq!(config.providers.len(), 1);
    assert_eq!(config.models.len(), 1);
    assert_eq!(config.models["mock/m"].upstream_id, "m");
}

#[test]
fn unknown_key_is_an_error_with_line_and_name() {
    let user =
        "[server]\nlisten = \"127.0.0.1:8000\"\n\n[providers.nvidia]\nrequests_per_minut = 40\n";
    let err = Config::from_sources(Some(("my.toml", user)), &env_of(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("my.toml"), "{err}");
    assert!(err.contains("requests_per_minut"), "{err}");
    assert!(err.contains("line 5"), "{err}");
}

#[test]
fn inconsistent_entries_are_all_reported() {
    let user = r#"
        [providers.bad]
        base_url = "ftp://example.com"
        [models."x/y"]
        provider = "nowhere"
        max_context_size = 10
        [models."x/z"]
        provider = "nvidia"
    "#;
    let err = Config::from_sources(Some(("c.toml", user)), &env_of(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("providers.bad.base_url"), "{err}");
    assert!(err.contains("no provider named `nowhere`"), "{err}");
    assert!(err.contains("models.\"x/z\".max_context_size"), "{err}");
}

#[test]
fn secrets_never_show_in_debug_or_description() {
    let config =
        Config::from_sources(None, &env_of(&[("OPENAI_API_KEY", "sk-canary-123")])).unwrap();
    assert!(!format!("{config:?}").contains("sk-canary-123"));
    assert!(!describe(&config).contains("sk-canary-123"));
}

#[test]
fn expand_vars_handles_several_and_literal_text() {
    let env = env_of(&[("A", "1"), ("B", "2")]);
    assert_eq!(expand_vars("x${A}y${B}z", &env).unwrap(), "x1y2z");
    assert_eq!(expand_vars("no vars", &env).unwrap(), "no vars");
    assert_eq!(expand_vars("${C}", &env).unwrap_err(), "C");
    assert_eq!(expand_vars("tail ${", &env).unwrap(), "tail ${");
}

#[test]
fn connection_limits_and_cache_scope_have_defaults_and_are_checked() {
    let config = Config::from_sources(None, &env_of(&[])).unwrap();
    let limits = config.server.limits();
    assert_eq!(limits.body_read_timeout, Duration::from_secs(60));
    assert_eq!(limits.body_idle_timeout, Duration::from_secs(15));
    assert_eq!(limits.write_timeout, Duration::from_secs(30));
    assert_eq!(limits.idle_timeout, Duration::from_secs(60));
    assert_eq!(limits.http2_keep_alive_interval, Duration::from_secs(20));
    assert_eq!(limits.http2_keep_alive_timeout, Duration::from_secs(20));
    assert_eq!(
        limits.max_connections_per_ip,
        config.server.max_connections / 4
    );
    assert_eq!(limits.max_dashboards, 32);
    assert!(!config.cache.shared);
    assert!(config.cache.client_opt_in);

    let text = "[server]\nmax_connections = 100\nbody_read_timeout_ms = 5000\nmax_dashboards = 2\n\
                [cache]\nscope = \"shared\"\nclient_opt_in = false\n";
    let config = Config::from_sources(Some(("test", text)), &env_of(&[])).unwrap();
    assert_eq!(config.server.limits().max_connections_per_ip, 25);
    assert_eq!(
        config.server.limits().body_read_timeout,
        Duration::from_secs(5)
    );
    assert_eq!(config.server.limits().max_dashboards, 2);
    assert!(config.cache.shared);
    assert!(!config.cache.client_opt_in);

    for bad in [
        "[server]\nwrite_timeout_ms = 0\n",
        "[server]\nbody_idle_timeout_ms = 0\n",
        "[server]\nmax_connections_per_ip = 0\n",
        "[server]\nmax_dashboards = 0\n",
        "[cache]\nscope = \"everyone\"\n",
    ] {
        let error = Config::from_sources(Some(("test", bad)), &env_of(&[]))
            .err()
            .map(|e| e.to_string());
        assert!(error.is_some(), "accepted: {bad}");
    }
}

#[test]
fn the_store_url_is_a_postgresql_url_and_a_secret() {
    let user = "[store]\nurl = \"postgres://kimi:pw-canary-9@db.internal:5432/kimi\"\n";
    let config = Config::from_sources(Some(("c.toml", user)), &env_of(&[])).unwrap();
    assert_eq!(
        config.store.url.as_ref().map(|u| u.expose()),
        Some("postgres://kimi:pw-canary-9@db.internal:5432/kimi")
    );
    assert!(!format!("{config:?}").contains("pw-canary-9"));
    let err = Config::from_sources(
        Some(("c.toml", "[store]\nurl = \"mysql://x@y/z\"\n")),
        &env_of(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("store.url must be a PostgreSQL URL"), "{err}");
}

#[test]
fn a_shared_response_cache_needs_the_cluster_redis() {
    let err = Config::from_sources(
        Some(("c.toml", "[cluster]\nresponse_cache = true\n")),
        &env_of(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cluster.response_cache needs cluster.redis"),
        "{err}"
    );
    let config = Config::from_sources(
        Some((
            "c.toml",
            "[cluster]\nredis = \"redis://127.0.0.1:6379\"\nresponse_cache = true\n",
        )),
        &env_of(&[]),
    )
    .unwrap();
    assert!(config.cluster.response_cache);
}
