//! Client APIs other than chat completions, at the pipeline's two edges.
//!
//! A request carries its client's dialect ([`Dialect`]); the providers speak chat completions. A
//! [`ClientAdapter`] lives in the pipeline's `Exchange` and does what differs per client API, and nothing
//! else:
//! - **parse**: [`ClientAdapter::peek`] reads what routing and the record need (the model, streaming, the
//!   session) without translating;
//! - **shape**: [`ClientAdapter::translate`] turns the request into the provider's chat request once the route
//!   is known (the target model's id and what it accepts);
//! - **admit**: [`ClientAdapter::upstream_headers`] removes the client API's own headers and maps its key;
//! - **respond**: [`ClientAdapter::answer`] turns the provider's answer (already seen by the accounting
//!   tracker, in the provider's dialect) into the client's — an event stream one event at a time;
//! - **fail**: [`error_response`] renders the proxy's errors in the client's format.
//!
//! Chat completions requests have [`ClientAdapter::None`]: the pipeline's chat path never enters this module.
//! Each other client API is one variant and one module: `messages` (Anthropic), `responses` (OpenAI
//! Responses, with its stored responses).

pub mod messages;
pub mod responses;
pub mod responses_stored;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::HeaderMap;
use kimi_dialects::Dialect;

use super::ProxyState;
use super::error::ProxyError;
use super::pipeline::Route;
use super::request::ChatRequestView;

/// What a request in another client API needs from the pipeline, for one exchange.
pub enum ClientAdapter {
    /// Chat completions: nothing to translate.
    None,
    /// Anthropic Messages.
    Messages(Box<messages::MessagesAdapter>),
    /// OpenAI Responses.
    Responses(Box<responses::ResponsesAdapter>),
}

/// What parse learnt of a request in another client API: enough to route it and open its record.
#[derive(Debug)]
pub struct Peek {
    /// The model the client asked for (routed, and reported back in the answer).
    pub model: String,
    pub streaming: bool,
    /// The conversation id the client gave (a header or the body).
    pub client_session: Option<String>,
}

/// What parse found.
pub enum Parsed {
    /// A chat completions request, scanned (the hot path).
    Chat(ChatRequestView),
    /// A request in another client API, translated in shape once routed.
    Foreign(Peek),
}

impl Parsed {
    /// The model name to route on.
    pub fn model(&self) -> &str {
        match self {
            Parsed::Chat(view) => &view.model,
            Parsed::Foreign(peek) => &peek.model,
        }
    }

    pub fn streaming(&self) -> bool {
        match self {
            Parsed::Chat(view) => view.streaming,
            Parsed::Foreign(peek) => peek.streaming,
        }
    }

    /// The conversation id the client gave in its request.
    pub fn client_session(&self) -> Option<&str> {
        match self {
            Parsed::Chat(view) => view.client_session.as_deref(),
            Parsed::Foreign(peek) => peek.client_session.as_deref(),
        }
    }
}

impl ClientAdapter {
    /// The adapter for a client dialect (`None` for chat completions, and for APIs not served yet).
    pub fn for_dialect(dialect: Dialect) -> ClientAdapter {
        match dialect {
            Dialect::Messages => ClientAdapter::Messages(Box::default()),
            Dialect::Responses => ClientAdapter::Responses(Box::default()),
            Dialect::Chat => ClientAdapter::None,
        }
    }

    /// Reads what routing needs from a request in the adapter's API (and what it continues: a Responses
    /// request's `previous_response_id`, looked up in the stored responses).
    pub async fn peek(
        &mut self,
        state: &ProxyState,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Peek, ProxyError> {
        match self {
            ClientAdapter::Messages(_) => messages::peek(headers, body),
            ClientAdapter::Responses(adapter) => adapter.peek(state, headers, body),
            ClientAdapter::None => Err(ProxyError::InvalidRequest(
                "no adapter for this client API".to_string(),
            )),
        }
    }

    /// The provider's chat request for a routed request, with its scan.
    pub async fn translate(
        &mut self,
        state: &ProxyState,
        route: &Route<'_>,
        body: &[u8],
    ) -> Result<(Bytes, ChatRequestView), ProxyError> {
        match self {
            ClientAdapter::Messages(adapter) => adapter.translate(route, body),
            ClientAdapter::Responses(adapter) => adapter.translate(state, route, body).await,
            ClientAdapter::None => Err(ProxyError::InvalidRequest(
                "no adapter for this client API".to_string(),
            )),
        }
    }

    /// The client API's own headers out of the upstream request (its key mapped to `Authorization`).
    pub fn upstream_headers(&self, headers: &mut HeaderMap) {
        match self {
            ClientAdapter::Messages(_) => messages::upstream_headers(headers),
            ClientAdapter::Responses(_) => responses::upstream_headers(headers),
            ClientAdapter::None => {}
        }
    }

    /// Where the record hears how a translated answer ended for the client (the Responses translation may end
    /// a 200 stream with `response.failed`, or refuse an answer).
    pub fn client_saw(
        &mut self,
    ) -> Option<tokio::sync::oneshot::Receiver<Option<crate::accounting::tracker::ClientSaw>>> {
        match self {
            ClientAdapter::Responses(adapter) => adapter.client_saw(),
            ClientAdapter::Messages(_) | ClientAdapter::None => None,
        }
    }

    /// Tools of the client's request the provider was not given (recorded per request).
    pub fn dropped_tools(&self) -> u32 {
        match self {
            ClientAdapter::Responses(adapter) => adapter.dropped_tools(),
            ClientAdapter::Messages(_) | ClientAdapter::None => 0,
        }
    }

    /// The provider's answer (already wrapped by the tracker) in the client's API.
    pub async fn answer(&mut self, response: Response) -> Response {
        match self {
            ClientAdapter::Messages(adapter) => adapter.answer(response).await,
            ClientAdapter::Responses(adapter) => adapter.answer(response).await,
            ClientAdapter::None => response,
        }
    }
}

/// A proxy error in the client's API format.
pub fn error_response(dialect: Dialect, error: ProxyError) -> Response {
    match dialect {
        Dialect::Messages => messages::error_response(error),
        Dialect::Chat | Dialect::Responses => error.into_response(),
    }
}
