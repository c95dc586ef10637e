//! `[context]`: which context transforms run, with what thresholds. Everything is off unless enabled here, for a
//! model (`[models."x".context]`), for a session (API) or for one request (`x-kimi-context` header).

use std::time::Duration;

use serde::Deserialize;

use crate::config::{EnvSource, Secret, expand_vars, units};

pub const DEFAULT_MASK_THRESHOLD_TOKENS: u64 = 1000;
pub const DEFAULT_MASK_PREVIEW_CHARS: usize = 200;
pub const DEFAULT_KEEP_LAST_TOOL_TURNS: usize = 8;
pub const DEFAULT_COMPACTION_THRESHOLD: f64 = 0.85;
pub const DEFAULT_KEEP_LAST_EXCHANGES: usize = 2;
pub const DEFAULT_COMPACTION_COOLDOWN_SECS: u64 = 60;
pub const DEFAULT_MAX_CONSECUTIVE: u32 = 3;
pub const DEFAULT_SUMMARY_MAX_TOKENS: u64 = 2000;
pub const DEFAULT_SUMMARY_TIMEOUT_MS: u64 = 60_000;

/// The `[context]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContextConfig {
    pub masking: MaskingConfig,
    pub observation: ObservationConfig,
    pub compaction: CompactionConfig,
    /// As written (usually `"${VAR}"`); [`ContextConfig::encryption_key`] is the key in force.
    #[serde(rename = "encryption_key")]
    pub encryption_key_template: Option<Secret>,
    /// 32-byte key (hex or base64) that encrypts masked originals at rest.
    #[serde(skip)]
    pub encryption_key: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskingConfig {
    pub enabled: bool,
    /// A result with more tokens than this is masked.
    pub threshold_tokens: u64,
    /// Characters of the original kept in the placeholder.
    pub preview_chars: usize,
    /// Leave the messages after the last assistant message alone: the model has not read them yet.
    pub skip_current_turn: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObservationConfig {
    pub enabled: bool,
    /// Tool results of the last N tool turns (assistant messages with `tool_calls`) stay whole.
    pub keep_last_tool_turns: usize,
    /// Results that look like errors stay whole.
    pub keep_errors: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactionConfig {
    pub enabled: bool,
    /// Share of the model's context window (the request's prompt tokens) at which compaction starts.
    pub threshold: f64,
    /// Exchanges (a user message and everything after it up to the next one) kept verbatim at the end.
    pub keep_last_exchanges: usize,
    pub summary: SummaryMode,
    /// Longest summary, in tokens.
    pub summary_max_tokens: u64,
    /// How long an LLM summary may take before the original request goes on.
    #[serde(rename = "summary_timeout_ms", deserialize_with = "units::ms")]
    pub summary_timeout: Duration,
    /// No new compaction of the same conversation within this time (the last one is reused).
    #[serde(rename = "cooldown_secs", deserialize_with = "units::secs")]
    pub cooldown: Duration,
    /// New compactions in a row that left the request above the threshold; past this, no more are tried.
    pub max_consecutive: u32,
}

/// `summary = "extractive"` or `summary = { model = "<catalog key>" }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SummaryMode {
    /// A deterministic digest of the messages replaced.
    #[default]
    Extractive,
    /// A summary written by this catalog model, sent through the proxy's own upstream client.
    Model(String),
}

impl<'de> Deserialize<'de> for SummaryMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Name(String),
            Model(ModelForm),
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ModelForm {
            model: String,
        }
        match Written::deserialize(d)? {
            Written::Name(name) if name == "extractive" => Ok(SummaryMode::Extractive),
            Written::Name(other) => Err(serde::de::Error::custom(format!(
                "context.compaction.summary: `{other}` is not a summary mode (use \"extractive\" or {{ model = \"...\" }})"
            ))),
            Written::Model(m) => Ok(SummaryMode::Model(m.model)),
        }
    }
}

impl Default for MaskingConfig {
    fn default() -> Self {
        MaskingConfig {
            enabled: false,
            threshold_tokens: DEFAULT_MASK_THRESHOLD_TOKENS,
            preview_chars: DEFAULT_MASK_PREVIEW_CHARS,
            skip_current_turn: true,
        }
    }
}

impl Default for ObservationConfig {
    fn default() -> Self {
        ObservationConfig {
            enabled: false,
            keep_last_tool_turns: DEFAULT_KEEP_LAST_TOOL_TURNS,
            keep_errors: true,
        }
    }
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            enabled: false,
            threshold: DEFAULT_COMPACTION_THRESHOLD,
            keep_last_exchanges: DEFAULT_KEEP_LAST_EXCHANGES,
            summary: SummaryMode::Extractive,
            summary_max_tokens: DEFAULT_SUMMARY_MAX_TOKENS,
            summary_timeout: Duration::from_millis(DEFAULT_SUMMARY_TIMEOUT_MS),
            cooldown: Duration::from_secs(DEFAULT_COMPACTION_COOLDOWN_SECS),
            max_consecutive: DEFAULT_MAX_CONSECUTIVE,
        }
    }
}

/// Which transforms are on. `None` defers to the layer below (request → session → model → config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Toggles {
    pub masking: Option<bool>,
    pub observation: Option<bool>,
    pub compaction: Option<bool>,
}

impl Toggles {
    /// `self` where it says something, `below` elsewhere.
    pub fn over(self, below: Toggles) -> Toggles {
        Toggles {
            masking: self.masking.or(below.masking),
            observation: self.observation.or(below.observation),
            compaction: self.compaction.or(below.compaction),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.masking.is_none() && self.observation.is_none() && self.compaction.is_none()
    }

    /// Parses the `x-kimi-context` header: `off`/`none`, `all`, or a comma list of `mask`, `observe`,
    /// `compact`, each optionally prefixed with `-` to turn it off. Listed transforms are turned on; with
    /// at least one positive item, unlisted ones are turned off.
    pub fn parse_header(text: &str) -> Result<Toggles, String> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "off" | "none" | "0" | "false" => {
                return Ok(Toggles {
                    masking: Some(false),
                    observation: Some(false),
                    compaction: Some(false),
                });
            }
            "all" | "on" => {
                return Ok(Toggles {
                    masking: Some(true),
                    observation: Some(true),
                    compaction: Some(true),
                });
            }
            _ => {}
        }
        let mut toggles = Toggles::default();
        let mut positive = false;
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (on, name) = match item.strip_prefix('-') {
                Some(name) => (false, name),
                None => (true, item),
            };
            positive |= on;
            let slot = match name.to_ascii_lowercase().as_str() {
                "mask" | "masking" => &mut toggles.masking,
                "observe" | "observation" => &mut toggles.observation,
                "compact" | "compaction" => &mut toggles.compaction,
                other => {
                    return Err(format!(
                        "unknown context transform `{other}` (use mask, observe, compact, all or off)"
                    ));
                }
            };
            *slot = Some(on);
        }
        if positive {
            for slot in [
                &mut toggles.masking,
                &mut toggles.observation,
                &mut toggles.compaction,
            ] {
                slot.get_or_insert(false);
            }
        }
        Ok(toggles)
    }
}

/// The transforms that run for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enabled {
    pub masking: bool,
    pub observation: bool,
    pub compaction: bool,
}

impl Enabled {
    pub fn any(&self) -> bool {
        self.masking || self.observation || self.compaction
    }
}

impl ContextConfig {
    /// The configured defaults as toggles (the bottom layer).
    pub fn toggles(&self) -> Toggles {
        Toggles {
            masking: Some(self.masking.enabled),
            observation: Some(self.observation.enabled),
            compaction: Some(self.compaction.enabled),
        }
    }

    /// Could anything ever run? When not, the proxy skips the context step without looking at anything else.
    pub fn anything_possible(&self, model_toggles_any: bool) -> bool {
        self.masking.enabled
            || self.observation.enabled
            || self.compaction.enabled
            || model_toggles_any
    }
}

impl Toggles {
    /// The resolved toggles as JSON booleans.
    pub fn resolve_json(self) -> serde_json::Value {
        let on = self.resolve();
        serde_json::json!({
            "masking": on.masking,
            "observation": on.observation,
            "compaction": on.compaction,
        })
    }

    pub fn resolve(self) -> Enabled {
        Enabled {
            masking: self.masking.unwrap_or(false),
            observation: self.observation.unwrap_or(false),
            compaction: self.compaction.unwrap_or(false),
        }
    }
}

impl ContextConfig {
    /// Expands the encryption key and checks the values; problems are pushed to `errors` (the summary model is
    /// checked against the catalog by the caller).
    pub fn resolve(&mut self, env: &dyn EnvSource, errors: &mut Vec<String>) {
        let threshold = self.compaction.threshold;
        if !(threshold > 0.0 && threshold <= 1.0) {
            errors.push(format!(
                "context.compaction.threshold must be in (0, 1], not {threshold}"
            ));
        }
        if self.masking.threshold_tokens == 0 {
            errors.push("context.masking.threshold_tokens must be at least 1".to_string());
        }
        if self.compaction.summary_max_tokens == 0 {
            errors.push("context.compaction.summary_max_tokens must be at least 1".to_string());
        }
        self.encryption_key = match self.encryption_key_template.as_ref().map(Secret::expose) {
            None | Some("") => None,
            Some(template) => match expand_vars(template, env) {
                Ok(value) => {
                    if parse_key(&value).is_none() {
                        errors.push(
                            "context.encryption_key must be 32 bytes as 64 hex digits or base64"
                                .to_string(),
                        );
                    }
                    Some(Secret::new(value))
                }
                Err(var) => {
                    errors.push(format!(
                        "context.encryption_key: environment variable `{var}` is not set"
                    ));
                    None
                }
            },
        };
    }
}

/// A 32-byte key from 64 hex digits or base64.
pub fn parse_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        return Some(key);
    }
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn header_forms() {
        let off = Toggles::parse_header("off").unwrap();
        assert_eq!(off.resolve(), Enabled::default());
        let some = Toggles::parse_header("mask, observe").unwrap();
        assert_eq!(
            some.resolve(),
            Enabled {
                masking: true,
                observation: true,
                compaction: false
            }
        );
        let minus = Toggles::parse_header("-compact").unwrap();
        assert_eq!(minus.compaction, Some(false));
        assert_eq!(minus.masking, None);
        assert!(Toggles::parse_header("squash").is_err());
    }

    #[test]
    fn layers_fall_through() {
        let config = Toggles {
            masking: Some(true),
            observation: Some(false),
            compaction: Some(false),
        };
        let session = Toggles {
            observation: Some(true),
            ..Toggles::default()
        };
        let request = Toggles {
            masking: Some(false),
            ..Toggles::default()
        };
        let on = request.over(session).over(config).resolve();
        assert_eq!(
            on,
            Enabled {
                masking: false,
                observation: true,
                compaction: false
            }
        );
    }

    #[test]
    fn keys_and_validation() {
        assert_eq!(parse_key(&"ab".repeat(32)).unwrap()[0], 0xab);
        assert!(parse_key("short").is_none());
        let mut errors = Vec::new();
        let mut config: ContextConfig =
            toml::from_str("[compaction]\nthreshold = 1.5\n[masking]\nthreshold_tokens = 0")
                .unwrap();
        config.resolve(&|_: &str| None, &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
        // A bad summary mode is refused while reading, with its line.
        let error = toml::from_str::<ContextConfig>("[compaction]\nsummary = \"abstractive\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 2") && error.contains("abstractive"),
            "{error}"
        );
        let config: ContextConfig =
            toml::from_str("[compaction]\nsummary = { model = \"m/x\" }").unwrap();
        assert_eq!(config.compaction.summary, SummaryMode::Model("m/x".into()));
        assert!(toml::from_str::<ContextConfig>("[masking]\nenable = true").is_err());
    }
}
