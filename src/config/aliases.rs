//! `[model_aliases]`: model names a client sends (Claude Code's `claude-sonnet-4-5-20250929`, say) mapped to
//! catalog models, by exact name or glob pattern (`*` any run of characters, `?` one character).
//!
//! ```toml
//! [model_aliases]
//! "claude-*" = "moonshot/kimi-k2.5"
//! "claude-haiku-*" = "moonshot/kimi-k2-turbo-preview"
//! ```
//!
//! The most specific pattern wins: an exact name before any pattern, then the pattern with the most literal
//! characters, then the one with fewer wildcards, then the first in name order.

/// One alias: a name or pattern and the catalog model it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelAlias {
    pub pattern: String,
    /// A catalog key (checked when the configuration is validated).
    pub target: String,
}

impl ModelAlias {
    pub fn is_exact(&self) -> bool {
        !self.pattern.contains(['*', '?'])
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.pattern.as_bytes(), name.as_bytes())
    }

    /// Orders the most specific first (see the module comment).
    fn specificity(&self) -> (bool, usize, usize) {
        let wildcards = self.pattern.matches(['*', '?']).count();
        (
            self.is_exact(),
            self.pattern.len() - wildcards,
            usize::MAX - wildcards,
        )
    }
}

/// Sorts aliases most specific first, so the first match is the one that wins.
pub fn by_specificity(mut aliases: Vec<ModelAlias>) -> Vec<ModelAlias> {
    aliases.sort_by(|a, b| {
        b.specificity()
            .cmp(&a.specificity())
            .then_with(|| a.pattern.cmp(&b.pattern))
    });
    aliases
}

/// `*` and `?` glob matching, iterative with one backtrack point (linear in practice, no recursion).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(aliases: &'a [ModelAlias], name: &str) -> Option<&'a ModelAlias> {
        aliases.iter().find(|a| a.matches(name))
    }

    fn alias(pattern: &str, target: &str) -> ModelAlias {
        ModelAlias {
            pattern: pattern.to_string(),
            target: target.to_string(),
        }
    }

    #[test]
    fn globs_match_runs_and_single_characters() {
        assert!(glob_match(b"claude-*", b"claude-sonnet-4-5"));
        assert!(glob_match(b"claude-*", b"claude-"));
        assert!(!glob_match(b"claude-*", b"claud"));
        assert!(glob_match(b"*haiku*", b"claude-3-5-haiku-20241022"));
        assert!(glob_match(b"gpt-4?", b"gpt-4o"));
        assert!(!glob_match(b"gpt-4?", b"gpt-4"));
        assert!(glob_match(b"a*b*c", b"axxbyyc"));
        assert!(!glob_match(b"a*b*c", b"axxbyy"));
        assert!(glob_match(b"exact", b"exact"));
        assert!(!glob_match(b"exact", b"exactly"));
    }

    #[test]
    fn the_most_specific_alias_wins() {
        let aliases = by_specificity(vec![
            alias("claude-*", "big"),
            alias("claude-haiku-*", "small"),
            alias("*", "any"),
            alias("claude-haiku-4-5", "exact"),
        ]);
        let target = |name: &str| find(&aliases, name).map(|a| a.target.as_str());
        assert_eq!(target("claude-sonnet-4-5-20250929"), Some("big"));
        assert_eq!(target("claude-haiku-4-5-20251001"), Some("small"));
        assert_eq!(target("claude-haiku-4-5"), Some("exact"));
        assert_eq!(target("gpt-4o"), Some("any"));
        assert_eq!(find(&aliases[..1], "gpt-4o"), None);
    }
}
