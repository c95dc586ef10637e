//! Model resolution: which catalog model (and so which provider) serves a request's `model`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{ApiKey, Config, Model, ModelAlias};

/// Lookup tables built once from the configuration.
pub struct Catalog {
    /// `[model_aliases]`, most specific first, each with its model.
    aliases: Vec<(ModelAlias, Arc<Model>)>,
    by_name: HashMap<String, Arc<Model>>,
    by_name_lower: HashMap<String, Arc<Model>>,
    models: Vec<Arc<Model>>,
}

impl Catalog {
    /// Names resolve in order: catalog key, `provider/upstream-id`, bare upstream id. When several providers
    /// serve the same upstream id, a provider with a usable key wins, then the first by catalog key.
    pub fn new(config: &Config) -> Catalog {
        let key_ready = |m: &Model| {
            config
                .providers
                .get(&m.provider)
                .is_some_and(|p| matches!(p.api_key, ApiKey::Ready(_)))
        };
        // A bare upstream id served both by a chat provider and by its Anthropic-compatible twin (`kimi-k2.5` at
        // `moonshot` and `moonshot-anthropic`) means the chat one: the name kept what it meant before the twin.
        let chat_kind = |m: &Model| {
            config
                .providers
                .get(&m.provider)
                .is_some_and(|p| p.kind == crate::config::ProviderKind::OpenAiCompatible)
        };
        let mut by_name: HashMap<String, Arc<Model>> = HashMap::new();
        // Lowest priority first; later inserts override earlier ones.
        let mut upstream: Vec<&Arc<Model>> = config.models.values().collect();
        upstream.sort_by(|a, b| {
            (key_ready(a), chat_kind(a), &b.key).cmp(&(key_ready(b), chat_kind(b), &a.key))
        });
        for m in upstream {
            by_name.insert(m.upstream_id.clone(), m.clone());
        }
        for m in config.models.values() {
            by_name.insert(format!("{}/{}", m.provider, m.upstream_id), m.clone());
        }
        for m in config.models.values() {
            by_name.insert(m.key.clone(), m.clone());
        }
        let by_name_lower = by_name
            .iter()
            .map(|(name, m)| (name.to_lowercase(), m.clone()))
            .collect();
        let aliases = config
            .model_aliases
            .iter()
            .filter_map(|a| Some((a.clone(), config.models.get(&a.target)?.clone())))
            .collect();
        Catalog {
            aliases,
            by_name,
            by_name_lower,
            models: config.models.values().cloned().collect(),
        }
    }

    /// The model a client's name stands for: an alias first (the user said so), then a catalog name.
    pub fn resolve(&self, name: &str) -> Option<&Arc<Model>> {
        if !self.aliases.is_empty()
            && let Some((_, model)) = self.aliases.iter().find(|(a, _)| a.matches(name))
        {
            return Some(model);
        }
        self.by_name
            .get(name)
            .or_else(|| self.by_name_lower.get(&name.to_lowercase()))
    }

    /// Up to three catalog keys that look like `name`, best first.
    pub fn suggestions(&self, name: &str) -> Vec<String> {
        let needle = name.to_lowercase();
        let mut scored: Vec<(f64, &str)> = self
            .models
            .iter()
            .map(|m| {
                let key = m.key.to_lowercase();
                let id = m.upstream_id.to_lowercase();
                let short = key.rsplit('/').next().unwrap_or(&key).to_string();
                let mut score = strsim::jaro_winkler(&needle, &key)
                    .max(strsim::jaro_winkler(&needle, &id))
                    .max(strsim::jaro_winkler(&needle, &short));
                if !needle.is_empty() && (key.contains(&needle) || id.contains(&needle)) {
                    score = score.max(0.9);
                }
                (score, m.key.as_str())
            })
            .filter(|(score, _)| *score >= 0.7)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        scored
            .into_iter()
            .take(3)
            .map(|(_, k)| k.to_string())
            .collect()
    }

    pub fn models(&self) -> &[Arc<Model>] {
        &self.models
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn catalog(env: &[(&str, &str)]) -> Catalog {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Catalog::new(&Config::from_sources(None, &lookup).unwrap())
    }

    #[test]
    fn resolves_key_provider_path_and_upstream_id() {
        let c = catalog(&[]);
        assert_eq!(
            c.resolve("nvidia/kimi-k2.5").unwrap().key,
            "nvidia/kimi-k2.5"
        );
        assert_eq!(
            c.resolve("nvidia/moonshotai/kimi-k2.5").unwrap().key,
            "nvidia/kimi-k2.5"
        );
        assert_eq!(
            c.resolve("kimi-for-coding").unwrap().key,
            "kimi-code/kimi-for-coding"
        );
        assert_eq!(c.resolve("GPT-4o").unwrap().key, "openai/gpt-4o");
        assert!(c.resolve("no-such-model").is_none());
    }

    #[test]
    fn ambiguous_upstream_id_prefers_a_provider_with_a_key() {
        // moonshotai/kimi-k2.5 is served by nvidia and openrouter.
        assert_eq!(
            c_key(&[("OPENROUTER_API_KEY", "k")]),
            "openrouter/kimi-k2.5"
        );
        assert_eq!(c_key(&[("NVIDIA_API_KEY", "k")]), "nvidia/kimi-k2.5");
        fn c_key(env: &[(&str, &str)]) -> String {
            catalog(env)
                .resolve("moonshotai/kimi-k2.5")
                .unwrap()
                .key
                .clone()
        }
    }

    #[test]
    fn a_bare_id_means_the_chat_provider_over_its_anthropic_twin() {
        let env = [("MOONSHOT_API_KEY", "k"), ("DEEPSEEK_API_KEY", "k")];
        let c = catalog(&env);
        assert_eq!(c.resolve("kimi-k2.5").unwrap().key, "moonshot/kimi-k2.5");
        assert_eq!(
            c.resolve("deepseek-chat").unwrap().key,
            "deepseek/deepseek-chat"
        );
        assert_eq!(
            c.resolve("moonshot-anthropic/kimi-k2.5").unwrap().key,
            "moonshot-anthropic/kimi-k2.5"
        );
    }

    #[test]
    fn aliases_route_claude_code_names_before_catalog_names() {
        let user = r#"
[model_aliases]
"claude-*" = "nvidia/kimi-k2.5"
"claude-haiku-*" = "openai/gpt-4o"
"gpt-4o" = "nvidia/kimi-k2.5"
"#;
        let c = Catalog::new(&Config::from_sources(Some(("test", user)), &|_: &str| None).unwrap());
        let key = |name: &str| c.resolve(name).map(|m| m.key.clone());
        assert_eq!(
            key("claude-sonnet-4-5-20250929").as_deref(),
            Some("nvidia/kimi-k2.5")
        );
        assert_eq!(
            key("claude-haiku-4-5-20251001").as_deref(),
            Some("openai/gpt-4o")
        );
        assert_eq!(key("gpt-4o").as_deref(), Some("nvidia/kimi-k2.5"));
        assert_eq!(key("openai/gpt-4o").as_deref(), Some("openai/gpt-4o"));
    }

    #[test]
    fn an_alias_to_an_unknown_model_is_a_configuration_error() {
        let user = "[model_aliases]\n\"claude-*\" = \"nowhere/model\"\n";
        let error = Config::from_sources(Some(("test", user)), &|_: &str| None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("model_aliases.\"claude-*\": no model named `nowhere/model`"),
            "{error}"
        );
    }

    #[test]
    fn suggestions_are_close_names() {
        let c = catalog(&[]);
        let s = c.suggestions("kimi-k2.5");
        assert!(!s.is_empty());
        assert!(s.iter().all(|k| k.contains("kimi")), "{s:?}");
        assert!(c.suggestions("zzzzzzzzzzzzzzzz").len() <= 3);
    }
}
