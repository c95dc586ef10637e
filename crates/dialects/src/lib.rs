//! The client APIs kimi-proxy speaks, and exact translation between them.
//!
//! kimi-proxy's pipeline talks to providers in the provider's own dialect. When a client speaks another API
//! than its provider, the pipeline translates at the two edges: the request on the way in, the answer (JSON or
//! event stream, one event at a time) on the way out. This crate holds those translations as pure functions
//! and small state machines over bytes: no I/O, no tokio, nothing of the proxy's state.
//!
//! - [`Dialect`]: which API a request or a provider speaks.
//! - `anthropic`: Anthropic Messages ⇄ chat completions.
//! - `responses`: OpenAI Responses ⇄ chat completions.

pub mod anthropic;
pub mod responses;

/// The wire API a client or a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// OpenAI chat completions (`POST /v1/chat/completions`), spoken by most providers.
    Chat,
    /// Anthropic Messages (`POST /v1/messages`).
    Messages,
    /// OpenAI Responses (`POST /v1/responses`).
    Responses,
}

impl Dialect {
    /// The API a request on `path` speaks (with or without the `/v1` prefix): Anthropic's Messages and OpenAI's
    /// Responses have their own paths, everything else is chat completions. Used for errors produced before a
    /// request reaches its handler (an auth refusal, an unknown route).
    pub fn of_path(path: &str) -> Dialect {
        let path = path.strip_prefix("/v1").unwrap_or(path);
        if path == "/messages" || path.starts_with("/messages/") {
            Dialect::Messages
        } else if path == "/responses" || path.starts_with("/responses/") {
            Dialect::Responses
        } else {
            Dialect::Chat
        }
    }

    /// The name recorded per request and shown on the dashboard.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Chat => "chat",
            Dialect::Messages => "messages",
            Dialect::Responses => "responses",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Dialect;

    #[test]
    fn each_api_is_known_by_its_path() {
        assert_eq!(Dialect::of_path("/v1/messages"), Dialect::Messages);
        assert_eq!(
            Dialect::of_path("/messages/count_tokens"),
            Dialect::Messages
        );
        assert_eq!(Dialect::of_path("/v1/responses/resp_1"), Dialect::Responses);
        assert_eq!(Dialect::of_path("/v1/chat/completions"), Dialect::Chat);
        assert_eq!(Dialect::of_path("/v1/messagesx"), Dialect::Chat);
    }
}
