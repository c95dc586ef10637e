//! Which application sent a request, read from its headers: shown per request and per session, so that four
//! sessions all named "say hi" can be told apart (Claude Code, Codex, an SDK script…).
//!
//! Sources for the names matched:
//! - Claude Code sends `User-Agent: claude-cli/2.1.197 (external, sdk-cli)`; Codex `codex_exec/0.171.0 (…)`
//!   (both captured against the proxy, shared/reference/client-apis.md).
//! - The OpenAI and Anthropic SDKs send `<Client>/<Language> <version>`, e.g. `OpenAI/Python 1.57.0`,
//!   `OpenAI/JS 6.49.0`, `Anthropic/Python 2.16.0` (openai-python `_base_client.py` `user_agent`).
//! - `X-Title` is OpenRouter's app-attribution header; Cline sends `X-Title: Cline` from its provider clients
//!   (cline/cline `src/core/api/providers/*.ts`). An explicit app name wins over the HTTP library's.

use http::HeaderMap;

/// Longest name kept.
const MAX_NAME: usize = 48;

/// The application's name and version, when the headers say.
pub fn client_app(headers: &HeaderMap) -> Option<String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(title) = text("x-title").and_then(clean) {
        return Some(title);
    }
    let agent = text("user-agent")?;
    let (product, rest) = agent.split_once('/').unwrap_or((agent, ""));
    let version = rest.split([' ', '(']).find(|v| !v.is_empty()).unwrap_or("");
    let named = |name: &str, version: &str| clean(format!("{name} {version}").trim());
    match product {
        "claude-cli" => named("Claude Code", version),
        "codex_exec" | "codex_cli_rs" | "codex-tui" => named("Codex", version),
        "OpenAI" | "Anthropic" => {
            // `OpenAI/Python 1.57.0`: the language, then the version.
            let mut words = rest.split_whitespace();
            let language = match words.next() {
                Some("JS") => "Node",
                Some(other) => other,
                None => "",
            };
            let version = words.next().unwrap_or("");
            named(&format!("{product} {language} SDK"), version)
        }
        _ => clean(agent.split_whitespace().next().unwrap_or(agent)),
    }
}

/// Printable ASCII, bounded; `None` when nothing is left.
fn clean(text: &str) -> Option<String> {
    let kept: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_NAME)
        .collect();
    let kept = kept.trim();
    (!kept.is_empty()).then(|| kept.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn app(pairs: &[(&'static str, &'static str)]) -> Option<String> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        client_app(&headers)
    }

    #[test]
    fn agents_are_named_from_their_user_agent() {
        let ua = "user-agent";
        assert_eq!(
            app(&[(ua, "claude-cli/2.1.197 (external, sdk-cli)")]).as_deref(),
            Some("Claude Code 2.1.197")
        );
        assert_eq!(
            app(&[(ua, "codex_exec/0.171.0 (Debian 12; x86_64)")]).as_deref(),
            Some("Codex 0.171.0")
        );
        assert_eq!(
            app(&[(ua, "OpenAI/Python 1.57.0")]).as_deref(),
            Some("OpenAI Python SDK 1.57.0")
        );
        assert_eq!(
            app(&[(ua, "OpenAI/JS 6.49.0")]).as_deref(),
            Some("OpenAI Node SDK 6.49.0")
        );
        assert_eq!(app(&[(ua, "curl/8.5.0")]).as_deref(), Some("curl/8.5.0"));
    }

    #[test]
    fn an_explicit_app_title_wins_and_nothing_unprintable_is_kept() {
        assert_eq!(
            app(&[("x-title", "Cline"), ("user-agent", "OpenAI/JS 4.1.0")]).as_deref(),
            Some("Cline")
        );
        assert_eq!(app(&[]), None);
        let long = "a".repeat(200);
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", long.parse().unwrap());
        assert_eq!(client_app(&headers).unwrap().len(), MAX_NAME);
    }
}
