//! `warren mock-llm`: a local stand-in for an OpenAI-compatible
//! `POST /v1/chat/completions`, for trying and testing LLM agents with no
//! network and no API key.
//!
//! It checks every request's history as the real API does (see
//! [`check_history`]): a `tool` message must answer a call of an earlier
//! assistant turn, and every call must be answered before the conversation
//! goes on; a history that breaks the rules gets the real API's 400.
//!
//! It decides like a (very) small model, from the turns since the last user
//! message:
//! 1. when the user wrote an id (`#42`), each offered tool that is not a
//!    transfer and was not called yet is called with `{"id": "42"}`;
//! 2. when the user names an agent that one of the `transfer_to_NAME` tools
//!    hands off to ("I want to talk to agent B." and `transfer_to_agent_b`)
//!    and it was not called yet, that tool is called;
//! 3. otherwise it answers with text: what the user said, or, after tool
//!    results, the last one.
//!
//! Started with an expected key, it answers 401 to a request without
//! `Authorization: Bearer KEY`, as the real service does. Every request is
//! recorded, so tests can see what an agent sent.

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
    /// The `Content-Length` and `Transfer-Encoding` headers, as sent.
    pub content_length: Option<String>,
    pub transfer_encoding: Option<String>,
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
    let header = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    shared.requests.lock().unwrap().push(Recorded {
        authorization: authorization.clone(),
        content_length: header(header::CONTENT_LENGTH),
        transfer_encoding: header(header::TRANSFER_ENCODING),
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
    if let Err(message) = check_history(&body["messages"]) {
        let error = json!({"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": null}});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    }
    Json(answer(model, &body)).into_response()
}

/// The OpenAI rules for tool calls in a history, with the real API's
/// wording: every `tool` message answers a call of the assistant turn before
/// it (not one already answered), and an assistant turn's calls are all
/// answered by the `tool` messages right after it.
pub fn check_history(messages: &Value) -> Result<(), String> {
    let Some(messages) = messages.as_array() else {
        return Err("'messages' must be an array".into());
    };
    let mut open: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        if role == "tool" {
            let id = m["tool_call_id"].as_str().unwrap_or_default();
            match open.iter().position(|c| c == id) {
                Some(at) => {
                    open.remove(at);
                }
                None => {
                    return Err(format!(
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'. (messages[{i}], tool_call_id '{id}')"
                    ));
                }
            }
            continue;
        }
        if !open.is_empty() {
            return Err(format!(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {} (before messages[{i}])",
                open.join(", ")
            ));
        }
        if role == "assistant"
            && let Some(calls) = m["tool_calls"].as_array()
        {
            for c in calls {
                let (Some(id), Some(_)) = (c["id"].as_str(), c["function"]["name"].as_str()) else {
                    return Err(format!(
                        "Invalid value for 'tool_calls' in messages[{i}]: each call needs an id and a function name"
                    ));
                };
                open.push(id.to_string());
            }
        }
    }
    if !open.is_empty() {
        return Err(format!(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
            open.join(", ")
        ));
    }
    Ok(())
}

/// The completion for a request (see the module doc for how it decides).
pub fn answer(model: &str, request: &Value) -> Value {
    let messages: &[Value] = request["messages"].as_array().map_or(&[], |m| m.as_slice());
    let last_user_at = messages.iter().rposition(|m| m["role"] == "user");
    let last_user = last_user_at
        .and_then(|i| messages[i]["content"].as_str())
        .unwrap_or("");
    let since = &messages[last_user_at.map_or(0, |i| i + 1)..];
    let called: Vec<&str> = since
        .iter()
        .filter_map(|m| m["tool_calls"].as_array())
        .flatten()
        .filter_map(|c| c["function"]["name"].as_str())
        .collect();
    let tools: Vec<&str> = request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str())
        .filter(|name| !called.contains(name))
        .collect();
    let said = crate::names::normalise(last_user);
    let id = last_user
        .split('#')
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
        })
        .filter(|id| !id.is_empty());
    let local = id.as_ref().and_then(|id| {
        tools
            .iter()
            .find(|name| !name.starts_with("transfer_to_"))
            .map(|name| (*name, json!({ "id": id }).to_string()))
    });
    let transfer = tools
        .iter()
        .find(|name| {
            name.strip_prefix("transfer_to_")
                .is_some_and(|agent| said.contains(agent))
        })
        .map(|name| (*name, "{}".to_string()));
    let call = local.or(transfer);
    let message = match &call {
        Some((tool, arguments)) => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": format!("call_mock_{}", messages.len()),
                "type": "function",
                "function": {"name": tool, "arguments": arguments}
            }]
        }),
        None => {
            let result = since.iter().rev().find(|m| m["role"] == "tool");
            let text = match result {
                Some(r) => format!(
                    "(mock model) Done: {}",
                    r["content"].as_str().unwrap_or_default()
                ),
                None => format!(
                    "(mock model) You said: \"{last_user}\". Ask for another agent by name and I will transfer you."
                ),
            };
            json!({"role": "assistant", "content": text})
        }
    };
    let finish = if call.is_some() { "tool_calls" } else { "stop" };
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

    #[test]
    fn local_tools_first_then_the_transfer_then_text() {
        let tools = json!([
            {"type": "function", "function": {"name": "lookup_order"}},
            {"type": "function", "function": {"name": "transfer_to_refunds"}}
        ]);
        let mut messages =
            vec![json!({"role": "user", "content": "refund order #42 please, refunds"})];
        let mut names = Vec::new();
        for _ in 0..3 {
            let a = answer("m", &json!({"messages": messages, "tools": tools}));
            let m = a["choices"][0]["message"].clone();
            messages.push(m.clone());
            match m["tool_calls"][0]["function"]["name"].as_str() {
                Some(name) => {
                    names.push(name.to_string());
                    let id = m["tool_calls"][0]["id"].clone();
                    messages.push(json!({"role": "tool", "tool_call_id": id, "content": format!("{name} ok")}));
                    check_history(&json!(messages)).unwrap();
                }
                None => {
                    assert_eq!(m["content"], "(mock model) Done: transfer_to_refunds ok");
                    break;
                }
            }
        }
        assert_eq!(names, ["lookup_order", "transfer_to_refunds"]);
        assert_eq!(
            messages[1]["tool_calls"][0]["function"]["arguments"],
            r#"{"id":"42"}"#
        );
    }

    #[test]
    fn broken_histories_are_refused_like_the_real_api() {
        let call = json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]});
        let result = json!({"role": "tool", "tool_call_id": "c1", "content": "ok"});
        let user = json!({"role": "user", "content": "hi"});
        assert!(check_history(&json!([user, call, result, user])).is_ok());
        let e = check_history(&json!([user, result])).unwrap_err();
        assert!(
            e.contains("must be a response to a preceeding message with 'tool_calls'"),
            "{e}"
        );
        let e = check_history(&json!([user, call, user])).unwrap_err();
        assert!(e.contains("did not have response messages: c1"), "{e}");
        assert!(check_history(&json!([user, call])).is_err());
        assert!(check_history(&json!([user, call, result, result])).is_err());
    }
}
