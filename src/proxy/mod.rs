//! The OpenAI-compatible proxy: routes, request normalisation, forwarding.
//!
//! A request flows one way: read (bounded) → parse → resolve the model → mend tool calls → forward → stream the
//! answer back frame by frame.

pub mod body;
pub mod error;
pub mod headers;
pub mod route;
pub mod toolcalls;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderValue, Uri, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;

use crate::config::{ApiKey, BaseUrl, Config, Provider};
use body::ForwardBody;
use error::ProxyError;
use route::Catalog;
use upstream::{HttpClient, OutgoingRequest};

/// A provider with its pooled client.
pub struct Upstream {
    pub provider: Arc<Provider>,
    pub client: HttpClient,
}

/// Shared, read-only state of the proxy routes.
pub struct ProxyState {
    pub config: Arc<Config>,
    pub catalog: Catalog,
    pub upstreams: HashMap<String, Upstream>,
    /// `/v1/models` never changes while the process runs: rendered once.
    models_json: Bytes,
}

impl ProxyState {
    pub fn new(config: Arc<Config>) -> Result<ProxyState, upstream::ClientBuildError> {
        let catalog = Catalog::new(&config);
        let mut upstreams = HashMap::new();
        for (key, provider) in &config.providers {
            upstreams.insert(
                key.clone(),
                Upstream {
                    provider: provider.clone(),
                    client: upstream::build_client(provider)?,
                },
            );
        }
        let models_json = Bytes::from(render_models(&catalog).to_string());
        Ok(ProxyState {
            config,
            catalog,
            upstreams,
            models_json,
        })
    }
}

/// The proxy routes, each served with and without the `/v1` prefix.
pub fn router(state: Arc<ProxyState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
        .route("/models", get(list_models))
        .with_state(state)
}

/// Answers for paths and methods no route serves, in the OpenAI error format.
pub async fn not_found(request: Request) -> Response {
    ProxyError::NotFound {
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
    }
    .into_response()
}

pub async fn method_not_allowed(request: Request) -> Response {
    ProxyError::MethodNotAllowed(request.method().to_string()).into_response()
}

async fn list_models(State(state): State<Arc<ProxyState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        state.models_json.clone(),
    )
        .into_response()
}

fn render_models(catalog: &Catalog) -> Value {
    let data: Vec<Value> = catalog
        .models()
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.key,
                "object": "model",
                "created": 0,
                "owned_by": m.provider,
                "upstream_id": m.upstream_id,
                "context_length": m.max_context_size,
                "capabilities": m.capabilities,
            })
        })
        .collect();
    serde_json::json!({ "object": "list", "data": data })
}

async fn chat_completions(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    match forward_chat(&state, request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(
                code = error.code(),
                status = error.status().as_u16(),
                "{error}"
            );
            error.into_response()
        }
    }
}

async fn forward_chat(state: &ProxyState, request: Request) -> Result<Response, ProxyError> {
    let (parts, body) = request.into_parts();
    let limit = state.config.server.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let bytes = read_body(body, limit).await?;

    let mut json: Value = serde_json::from_slice(&bytes).map_err(|e| ProxyError::InvalidJson {
        message: e.to_string(),
        line: e.line(),
        column: e.column(),
    })?;
    let Some(object) = json.as_object() else {
        return Err(ProxyError::InvalidRequest(
            "the body must be a JSON object".to_string(),
        ));
    };
    let Some(requested) = object.get("model").and_then(Value::as_str) else {
        return Err(ProxyError::InvalidRequest(
            "`model` is required and must be a string".to_string(),
        ));
    };

    let Some(model) = state.catalog.resolve(requested).cloned() else {
        return Err(ProxyError::UnknownModel {
            model: requested.to_string(),
            suggestions: state.catalog.suggestions(requested),
        });
    };
    let Some(upstream) = state.upstreams.get(&model.provider) else {
        return Err(ProxyError::UnknownModel {
            model: requested.to_string(),
            suggestions: Vec::new(),
        });
    };
    let provider = &upstream.provider;
    let base_url = match &provider.base_url {
        BaseUrl::Ready(url) => url,
        BaseUrl::Missing { var } => {
            return Err(ProxyError::MissingBaseUrlVar {
                provider: provider.key.clone(),
                var: var.clone(),
            });
        }
    };

    // Rewrite the body only when something must change; otherwise the client's bytes go upstream as they are.
    let rename = requested != model.upstream_id;
    if rename && let Some(object) = json.as_object_mut() {
        object.insert(
            "model".to_string(),
            Value::String(model.upstream_id.clone()),
        );
    }
    let fixes = toolcalls::normalize_tool_calls(&mut json);
    let body = if rename || fixes.total() > 0 {
        Bytes::from(
            serde_json::to_vec(&json)
                .map_err(|e| ProxyError::InvalidRequest(format!("cannot re-encode: {e}")))?,
        )
    } else {
        bytes
    };

    let mut headers = headers::upstream_request_headers(&parts.headers);
    apply_credentials(
        &mut headers,
        provider,
        state.config.server.forward_client_key,
    )?;

    let uri = upstream_uri(base_url, parts.uri.query())?;
    let outgoing = OutgoingRequest { uri, headers, body };
    let answer = upstream::send_with_retries(&upstream.client, provider, &outgoing).await?;

    let (mut response_parts, incoming) = answer.response.into_parts();
    response_parts.headers = headers::client_response_headers(&response_parts.headers);
    let body = ForwardBody::new(incoming, provider.timeouts.idle, provider.key.clone());
    Ok(Response::from_parts(response_parts, Body::new(body)))
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ProxyError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(error) => Err(ProxyError::BodyRead(error.to_string())),
    }
}

/// Puts the right `Authorization` on the upstream request: the provider's key when it has one; otherwise the
/// client's own key when forwarding is allowed; otherwise a clear 503 naming the missing variable.
fn apply_credentials(
    headers: &mut http::HeaderMap,
    provider: &Provider,
    forward_client_key: bool,
) -> Result<(), ProxyError> {
    let client_sent_key = headers.contains_key(header::AUTHORIZATION);
    match &provider.api_key {
        ApiKey::Ready(secret) => {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", secret.expose())).map_err(|_| {
                    ProxyError::InvalidRequest(format!(
                        "provider `{}` has an API key that is not a valid header",
                        provider.key
                    ))
                })?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        ApiKey::Missing { var } => {
            if !(forward_client_key && client_sent_key) {
                return Err(ProxyError::MissingApiKey {
                    provider: provider.key.clone(),
                    var: var.clone(),
                });
            }
        }
        ApiKey::None => {
            if !forward_client_key {
                headers.remove(header::AUTHORIZATION);
            }
        }
    }
    Ok(())
}

fn upstream_uri(base_url: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    let text = match query {
        Some(q) => format!("{base_url}/chat/completions?{q}"),
        None => format!("{base_url}/chat/completions"),
    };
    text.parse::<Uri>()
        .map_err(|e| ProxyError::InvalidRequest(format!("cannot build the upstream URL: {e}")))
}
