//! From text to [`Config`]: both files are parsed as TOML tables that keep their spans, the user's is merged
//! over the catalog's, and the result is deserialized once into the typed sections.
//!
//! Merge rule: tables (sections, `[providers.x]`, `[models."x"]`, `timeouts`, `[model_aliases]`, …) merge key by
//! key, recursively; any other value — a string, a number, an array, an inline value of another type — is
//! replaced whole by the user's. So `[providers.nvidia] requests_per_minute = 20` changes that one field, and
//! `capabilities = ["tools"]` replaces the catalog's list. `builtin_catalog = false` drops the catalog.
//!
//! Positions: the catalog's spans are moved past the end of the user's text before merging, so every span in the
//! merged tree says which file it came from, and an error (unknown key, wrong type) is reported with the file
//! and line it points into.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{
    AlertsConfig, BUILTIN_CATALOG, CacheConfig, ClusterConfig, Config, ConfigError, EnvSource,
    LedgersConfig, Model, ModelAlias, PassthroughConfig, Provider, ServerConfig, StoreConfig,
    TelemetryConfig,
    context::{ContextConfig, SummaryMode},
};

/// The whole document after the merge.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Document {
    /// `false` drops the built-in catalog: only the user's providers and models exist (read before the merge).
    #[allow(dead_code)]
    builtin_catalog: Option<bool>,
    server: ServerConfig,
    store: StoreConfig,
    cache: CacheConfig,
    context: ContextConfig,
    passthrough: PassthroughConfig,
    alerts: AlertsConfig,
    ledgers: LedgersConfig,
    cluster: ClusterConfig,
    telemetry: TelemetryConfig,
    providers: BTreeMap<String, Provider>,
    models: BTreeMap<String, Model>,
    /// A model name or glob pattern → a catalog key.
    model_aliases: BTreeMap<String, String>,
}

/// One input text and where its spans start in the merged tree.
#[derive(Clone, Copy)]
struct Source<'a> {
    origin: &'a str,
    text: &'a str,
    offset: usize,
}

pub fn load(user: Option<(&str, &str)>, env: &dyn EnvSource) -> Result<Config, ConfigError> {
    load_over(BUILTIN_CATALOG, user, env)
}

/// [`load`] over another catalog text (tests use a broken one).
fn load_over(
    catalog: &str,
    user: Option<(&str, &str)>,
    env: &dyn EnvSource,
) -> Result<Config, ConfigError> {
    let user = user.map(|(origin, text)| Source {
        origin,
        text,
        offset: 0,
    });
    let catalog = Source {
        origin: "built-in catalog",
        text: catalog,
        offset: user.as_ref().map_or(0, |u| u.text.len() + 1),
    };
    let mut root = parse(&catalog)?;
    let keep_catalog = match &user {
        None => true,
        Some(user) => {
            let over = parse(user)?;
            let keep = !matches!(
                over.get_ref().get("builtin_catalog").map(Spanned::get_ref),
                Some(DeValue::Boolean(false))
            );
            if keep {
                let span = over.span();
                let mut merged = shift_table(root.into_inner(), catalog.offset);
                merge(&mut merged, over.into_inner());
                root = Spanned::new(span, merged);
            } else {
                root = over;
            }
            keep
        }
    };
    let sources: Vec<Source<'_>> = user
        .into_iter()
        .chain(keep_catalog.then_some(catalog))
        .collect();
    let document = Document::deserialize(toml::de::Deserializer::from(root))
        .map_err(|e| render(e, &sources))?;
    document.resolve(env)
}

/// A parse error's span is in the text's own terms.
fn parse<'a>(source: &Source<'a>) -> Result<Spanned<DeTable<'a>>, ConfigError> {
    DeTable::parse(source.text).map_err(|e| {
        let own = Source {
            offset: 0,
            ..*source
        };
        render(e, &[own])
    })
}

/// `over` into `base`: tables merge key by key, anything else is replaced (with `over`'s key and span).
fn merge<'a>(base: &mut DeTable<'a>, over: DeTable<'a>) {
    for (key, value) in over {
        let value = match base.remove(&key) {
            Some(old) => {
                let span = value.span();
                match (old.into_inner(), value.into_inner()) {
                    (DeValue::Table(mut merged), DeValue::Table(new)) => {
                        merge(&mut merged, new);
                        Spanned::new(span, DeValue::Table(merged))
                    }
                    (_, new) => Spanned::new(span, new),
                }
            }
            None => value,
        };
        base.insert(key, value);
    }
}

fn shift_table(table: DeTable<'_>, by: usize) -> DeTable<'_> {
    table
        .into_iter()
        .map(|(key, value)| {
            let span = moved(key.span(), by);
            (Spanned::new(span, key.into_inner()), shift(value, by))
        })
        .collect()
}

fn shift(value: Spanned<DeValue<'_>>, by: usize) -> Spanned<DeValue<'_>> {
    let span = moved(value.span(), by);
    let inner = match value.into_inner() {
        DeValue::Table(table) => DeValue::Table(shift_table(table, by)),
        DeValue::Array(mut array) => {
            for item in array.iter_mut() {
                let taken = std::mem::replace(item, Spanned::new(0..0, DeValue::Boolean(false)));
                *item = shift(taken, by);
            }
            DeValue::Array(array)
        }
        other => other,
    };
    Spanned::new(span, inner)
}

fn moved(span: Range<usize>, by: usize) -> Range<usize> {
    span.start + by..span.end + by
}

/// The error as the TOML parser words it, against the file its span points into.
fn render(mut error: toml::de::Error, sources: &[Source<'_>]) -> ConfigError {
    let at = error.span().map_or(0, |span| span.start);
    let source = sources
        .iter()
        .rev()
        .find(|s| s.offset <= at)
        .or(sources.first());
    let Some(source) = source else {
        return ConfigError::Parse {
            origin: "configuration".to_string(),
            message: error.to_string(),
        };
    };
    let message = if source.offset == 0 {
        error.set_input(Some(source.text));
        error.to_string()
    } else {
        // The parser's excerpt needs the span in the source's own terms, which an error cannot be given back.
        let line = source.text[..(at - source.offset).min(source.text.len())]
            .matches('\n')
            .count()
            + 1;
        format!("line {line}: {}", error.message())
    };
    ConfigError::Parse {
        origin: source.origin.to_string(),
        message,
    }
}

impl Document {
    /// Each section resolves and checks itself; then what spans sections (models → providers, aliases and the
    /// summary model → models). All problems are reported together.
    fn resolve(mut self, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        self.server.resolve(env, &mut errors);
        self.store.resolve(&mut errors);
        self.cache.validate(&mut errors);
        self.alerts.resolve(env, &mut errors);
        self.ledgers.resolve(&mut errors);
        self.cluster.resolve(env, &mut errors);
        self.telemetry.resolve(env, &mut errors);
        self.context.resolve(env, &mut errors);

        let mut providers = BTreeMap::new();
        for (key, mut provider) in self.providers {
            if provider.resolve(&key, env, &mut errors) {
                providers.insert(key, Arc::new(provider));
            }
        }
        let mut models = BTreeMap::new();
        for (key, mut model) in self.models {
            if model.resolve(&key, &providers, &mut errors) {
                models.insert(key, Arc::new(model));
            }
        }
        if let SummaryMode::Model(name) = &self.context.compaction.summary
            && !models.contains_key(name)
        {
            errors.push(format!(
                "context.compaction.summary.model: no model named `{name}` in the catalog"
            ));
        }
        let mut aliases = Vec::new();
        for (pattern, target) in self.model_aliases {
            if pattern.trim().is_empty() {
                errors.push("model_aliases: an empty name".to_string());
            } else if !models.contains_key(&target) {
                errors.push(format!(
                    "model_aliases.\"{pattern}\": no model named `{target}` in the catalog"
                ));
            } else {
                aliases.push(ModelAlias { pattern, target });
            }
        }

        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        Ok(Config {
            model_aliases: super::aliases::by_specificity(aliases),
            server: self.server,
            passthrough: self.passthrough,
            store: self.store,
            cache: self.cache,
            alerts: self.alerts,
            ledgers: self.ledgers,
            cluster: self.cluster,
            telemetry: self.telemetry,
            context: self.context,
            providers,
            models,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load_text(catalog: &str, user: &str) -> Result<Config, ConfigError> {
        load_over(catalog, Some(("user.toml", user)), &|_: &str| None)
    }

    const CATALOG: &str = "[providers.p]\nbase_url = \"http://127.0.0.1:1/v1\"\n\n\
                           [models.\"p/m\"]\nprovider = \"p\"\nmax_context_size = 100\n\
                           capabilities = [\"tools\", \"vision\"]\ncontext = { masking = true }\n";

    #[test]
    fn tables_merge_key_by_key_and_other_values_are_replaced() {
        let user = "[models.\"p/m\"]\ncapabilities = [\"thinking\"]\nmax_context_size = 50\n\
                    context = { compaction = true }\n[models.\"p/n\"]\nprovider = \"p\"\nmax_context_size = 9\n";
        let config = load_text(CATALOG, user).unwrap();
        let m = &config.models["p/m"];
        assert_eq!(m.capabilities, ["thinking"], "an array is replaced whole");
        assert_eq!(m.max_context_size, 50);
        assert_eq!(m.provider, "p", "untouched keys stay");
        assert_eq!(m.context.masking, Some(true), "inline tables merge too");
        assert_eq!(m.context.compaction, Some(true));
        assert!(config.models.contains_key("p/n"));
    }

    #[test]
    fn errors_name_the_file_and_line_they_point_into() {
        // The user's wrong type, in an entry the catalog defines.
        let user = "\n[models.\"p/m\"]\nmax_context_size = \"big\"\n";
        let error = load_text(CATALOG, user).unwrap_err().to_string();
        assert!(error.starts_with("user.toml: "), "{error}");
        assert!(error.contains("line 3"), "{error}");
        // A value the user did not touch, wrong in the catalog: the catalog's line, not the user's.
        let broken = "[providers.p]\nbase_url = \"http://127.0.0.1:1/v1\"\nidle = 1\n";
        let error = load_text(broken, "[server]\nlisten = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("built-in catalog: line 3: "), "{error}");
        assert!(error.contains("unknown field `idle`"), "{error}");
    }

    #[test]
    fn the_catalog_can_be_left_out() {
        let user = "builtin_catalog = false\n[providers.q]\nbase_url = \"http://127.0.0.1:2\"\n";
        let config = load_text(CATALOG, user).unwrap();
        assert_eq!(config.providers.keys().collect::<Vec<_>>(), ["q"]);
        assert!(config.models.is_empty());
    }
}
