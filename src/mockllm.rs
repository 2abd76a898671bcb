//! `warren mock-llm`: a local stand-in for an OpenAI-compatible
//! `POST /v1/chat/completions`, for trying and testing LLM agents with no
//! network and no API key.
//!
//! It decides like a (very) small model: when the last user message names an
//! agent that one of the request's `transfer_to_NAME` tools hands off to
//! ("I want to talk to agent B." and `transfer_to_agent_b`), it answers with
//! that tool call; otherwise with text. Started with an expected key, it
//! answers 401 to a request without `Authorization: Bearer KEY`, as the real
//! service does. Every request is recorded, so tests can see what an agent
//! sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The `Authorization` header, as sent.
    pub authorization: Option<String>,
    /// The JSON body.
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    api_key: Option<String>,
    requests: Mutex<Vec<Recorded>>,
}

/// A running mock; it stops when dropped.
pub struct MockLlm {
    /// The base URL an agent is configured with (`http://127.0.0.1:PORT/v1`).
    pub base_url: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl MockLlm {
    /// Serves on `addr` (port 0 picks a free one). With `api_key`, only
    /// requests that carry it as a bearer token are answered.
    pub async fn start(addr: SocketAddr, api_key: Option<String>) -> Result<Self> {
        let (mock, serve) = Self::bind(addr, api_key).await?;
        tokio::spawn(serve);
        Ok(mock)
    }

    /// Binds `addr`; the returned future serves until the mock is dropped.
    pub async fn bind(
        addr: SocketAddr,
        api_key: Option<String>,
    ) -> Result<(Self, impl Future<Output = Result<()>>)> {
        let shared = Arc::new(Shared {
            api_key,
            ..Default::default()
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the mock LLM to {addr}"))?;
        let bound = listener.local_addr()?;
        let stop = CancellationToken::new();
        let serve = {
            let stop = stop.clone();
            async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .context("the mock LLM failed")
            }
        };
        let mock = MockLlm {
            base_url: format!("http://{bound}/v1"),
            shared,
            stop,
        };
        Ok((mock, serve))
    }

    /// The requests received so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    shared.requests.lock().unwrap().push(Recorded {
        authorization: authorization.clone(),
        body: body.clone(),
    });
    if let Some(key) = &shared.api_key
        && authorization.as_deref() != Some(&format!("Bearer {key}"))
    {
        let error = json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}});
        return (StatusCode::UNAUTHORIZED, Json(error)).into_response();
    }
    let Some(model) = body["model"].as_str() else {
        let error = json!({"error": {"message": "you must provide a model parameter", "type": "invalid_request_error"}});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    };
    Json(answer(model, &body)).into_response()
}

/// The completion for a request: a transfer tool call when the last user
/// message names one of the tools' agents, text otherwise.
pub fn answer(model: &str, request: &Value) -> Value {
    let last_user = request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let said = crate::names::normalise(last_user);
    let transfer = request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str())
        .find(|name| {
            name.strip_prefix("transfer_to_")
                .is_some_and(|agent| said.contains(agent))
        });
    let message = match transfer {
        Some(tool) => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": "call_mock_1",
                "type": "function",
                "function": {"name": tool, "arguments": "{}"}
            }]
        }),
        None => json!({
            "role": "assistant",
            "content": format!("(mock model) You said: \"{last_user}\". Ask for another agent by name and I will transfer you."),
        }),
    };
    let finish = if transfer.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_agent_with_a_tool_is_a_transfer_and_anything_else_text() {
        let request = |text: &str| {
            json!({
                "model": "m",
                "messages": [{"role": "system", "content": "triage"}, {"role": "user", "content": text}],
                "tools": [{"type": "function", "function": {"name": "transfer_to_agent_b"}}]
            })
        };
        let a = answer("m", &request("I want to talk to agent B."));
        assert_eq!(a["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            a["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "transfer_to_agent_b"
        );
        let a = answer("m", &request("What is the weather?"));
        assert_eq!(a["choices"][0]["finish_reason"], "stop");
        assert!(
            a["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .contains("What is the weather?")
        );
        // No tool for the agent named: text.
        let a = answer("m", &request("put me through to agent C"));
        assert_eq!(a["choices"][0]["finish_reason"], "stop");
    }
}
