//! Flattening of Responses tool names into chat function names, and back.
//!
//! Responses groups tools: Codex sends `{"type":"namespace","name":NS,"description":…,"tools":[{"type":
//! "function","name":T,…}]}` (openai/codex `codex-rs/tools/src/responses_api.rs`, `ResponsesApiNamespace`), and
//! the model's call comes back as a `function_call` item with `name: T` and `namespace: NS`
//! (openai-python `types/responses/response_function_tool_call.py`). Chat completions knows only flat function
//! names, which providers limit to `^[a-zA-Z0-9_-]{1,64}$` (OpenAI's documented rule, followed by Moonshot,
//! DeepSeek and the NIM/OpenRouter gateways). A namespaced tool becomes `NS__T`; a name that would be invalid,
//! too long or already taken becomes a truncated, sanitised form with a hash suffix. [`ToolNames`] keeps the
//! exact reverse map, so every chat name the proxy hands out maps back to the client's `(namespace, name)`.

use std::collections::HashMap;

/// Longest function name providers accept.
pub(crate) const MAX_TOOL_NAME: usize = 64;
/// Separator between a namespace and a tool in a flattened name.
const SEPARATOR: &str = "__";

/// A tool as the client names it: `name`, inside `namespace` when it came from a `namespace` tool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ToolRef {
    pub namespace: Option<String>,
    pub name: String,
}

/// The two-way map between client tool names and the flat names sent to the chat provider.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolNames {
    to_chat: HashMap<ToolRef, String>,
    to_client: HashMap<String, ToolRef>,
}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// FNV-1a over the parts, with a separator byte that cannot occur in UTF-8 text.
fn fnv1a(parts: &[&str], salt: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |byte: u8| {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    };
    for part in parts {
        for &b in part.as_bytes() {
            feed(b);
        }
        feed(0xff);
    }
    for b in salt.to_le_bytes() {
        feed(b);
    }
    hash
}

impl ToolNames {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no tool was registered.
    pub fn is_empty(&self) -> bool {
        self.to_client.is_empty()
    }

    /// How many tools are registered.
    pub fn len(&self) -> usize {
        self.to_client.len()
    }

    /// Registers the client tool `(namespace, name)` and returns its chat name (the same one on every call).
    /// A plain, valid, free name is kept as is; `NS__T` for a namespaced tool when valid and free; otherwise
    /// a sanitised prefix and a 8-hex-digit hash, at most [`MAX_TOOL_NAME`] bytes, never colliding.
    pub fn insert(&mut self, namespace: Option<&str>, name: &str) -> String {
        let key = ToolRef {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        };
        if let Some(existing) = self.to_chat.get(&key) {
            return existing.clone();
        }
        let natural = match namespace {
            Some(ns) => format!("{ns}{SEPARATOR}{name}"),
            None => name.to_owned(),
        };
        let natural_ok = !natural.is_empty()
            && natural.len() <= MAX_TOOL_NAME
            && natural.chars().all(valid_char)
            && !self.to_client.contains_key(&natural);
        let chat = if natural_ok {
            natural
        } else {
            let sanitised: String = natural
                .chars()
                .map(|c| if valid_char(c) { c } else { '_' })
                .collect();
            // 64 = prefix (≤ 55) + '_' + 8 hex digits. The sanitised text is ASCII, so any byte cut is a char cut.
            let prefix = &sanitised[..sanitised.len().min(MAX_TOOL_NAME - 9)];
            let parts = [namespace.unwrap_or(""), name];
            let mut salt = 0u32;
            loop {
                let hash = fnv1a(&parts, salt) & 0xffff_ffff;
                let candidate = format!("{prefix}_{hash:08x}");
                if !self.to_client.contains_key(&candidate) {
                    break candidate;
                }
                salt = salt.wrapping_add(1);
            }
        };
        self.to_client.insert(chat.clone(), key.clone());
        self.to_chat.insert(key, chat.clone());
        chat
    }

    /// The chat name of a registered client tool.
    pub fn chat_name(&self, namespace: Option<&str>, name: &str) -> Option<&str> {
        let key = ToolRef {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        };
        self.to_chat.get(&key).map(String::as_str)
    }

    /// The client's `(namespace, name)` for a chat name. A name the proxy never handed out (a model inventing
    /// a tool) comes back unchanged, without a namespace, so the client sees what the model said.
    pub fn client(&self, chat_name: &str) -> ToolRef {
        self.to_client
            .get(chat_name)
            .cloned()
            .unwrap_or_else(|| ToolRef {
                namespace: None,
                name: chat_name.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_namespaced_names() {
        let mut names = ToolNames::new();
        assert_eq!(names.insert(None, "shell"), "shell");
        assert_eq!(names.insert(Some("mcp__fs"), "read"), "mcp__fs__read");
        assert_eq!(names.insert(Some("mcp__fs"), "read"), "mcp__fs__read");
        assert_eq!(
            names.client("mcp__fs__read"),
            ToolRef {
                namespace: Some("mcp__fs".into()),
                name: "read".into()
            }
        );
        assert_eq!(names.client("unknown").name, "unknown");
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn collisions_long_and_invalid_names_get_a_hash() {
        let mut names = ToolNames::new();
        assert_eq!(names.insert(None, "a__b"), "a__b");
        let other = names.insert(Some("a"), "b");
        assert_ne!(other, "a__b");
        assert!(other.starts_with("a__b_"), "{other}");
        let long = names.insert(Some(&"n".repeat(60)), "tool");
        assert!(long.len() <= MAX_TOOL_NAME);
        let dotted = names.insert(Some("github.com"), "search issues");
        assert!(dotted.chars().all(valid_char), "{dotted}");
        assert_eq!(names.client(&dotted).name, "search issues");
        assert_eq!(names.client(&other).namespace.as_deref(), Some("a"));
    }
}
